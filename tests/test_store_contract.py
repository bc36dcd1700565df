"""One contract, two backends: every test here runs against MemoryStore and RedisStore.

``store_factory`` makes stores for node ids. Memory stores made by one test share one
:class:`MemoryBackend` (like processes sharing one Redis) whose clock is wall time plus an
offset the tests can move forward; Redis stores talk to a private, empty redis-server. Waiting
for time to pass (lock expiry, retention) is always a poll with a deadline: on memory each poll
moves the fake clock a little, on Redis it sleeps a little.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import orjson
import pytest
import redis

from node.core.config import CoreConfig
from node.core.core import Core
from node.core.workers import WorkerState
from node.errors import FencedError, LedgerRefusedError, NodeOwnedError, StoreUnavailableError
from node.model import Priority, Task, TaskSpec, TaskStatus, WorkerSpec
from node.store.base import LedgerEntry, LedgerState, OwnerToken, Store
from node.store.codec import WriteBatch, decode_task, decode_worker, encode_batch, encode_task, encode_worker
from node.store.keys import NodeKeys
from node.store.memory import MemoryBackend, MemoryStore
from node.store.redis_store import RedisStore
from tests.conftest import RedisServer

T = TypeVar("T")
NS = 1_000_000_000
HOST = socket.gethostname()


# ---------------------------------------------------------------------------- records


def make_task(
    tid: str,
    node: str = "n1",
    *,
    status: TaskStatus = TaskStatus.QUEUED,
    now_ns: int = 1_700_000_000 * NS,
    key: str | None = None,
    result: bytes | None = None,
) -> Task:
    spec = TaskSpec(
        type="resize",
        payload=b"\x00payload-" + tid.encode(),
        context={"tenant": "acme"},
        priority=Priority.HIGH,
        difficulty=2,
        required_capabilities=("gpu",),
        max_retries=3,
        idempotency_key=key,
    )
    t = Task(tid, spec, status, node, node, now_ns, queued_ns=now_ns)
    if status.terminal:
        t.finished_ns = now_ns
        t.result = result
    return t


def make_worker(wid: str, now_ns: int = 1_700_000_000 * NS, completed: int = 0) -> WorkerState:
    return WorkerState(
        id=wid,
        capabilities=frozenset({"gpu", "general"}),
        skill=5,
        concurrency=2,
        registered_ns=now_ns,
        last_seen_ns=now_ns,
        completed=completed,
    )


def upserts(*tasks: Task) -> list[tuple[str, bytes]]:
    return [(t.id, encode_task(t)) for t in tasks]


def by_id(raws: list[bytes]) -> dict[str, bytes]:
    return {decode_task(r).id: r for r in raws}


def ids_of(raws: list[bytes]) -> set[str]:
    return {decode_task(r).id for r in raws}


def dead_pid() -> int:
    """The pid of a process of ours that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    with pytest.raises(ProcessLookupError):
        os.kill(p.pid, 0)
    return p.pid


# ---------------------------------------------------------------------------- the factory


class Listener:
    """A subscriber of a node's event channel."""

    def __init__(self, factory: StoreFactory, node_id: str):
        self.f = factory
        self.node_id = node_id
        self._seen = 0
        self._pubsub: Any = None
        if factory.backend is not None:
            subs = factory.backend.subscribers
            subs[node_id] = subs.get(node_id, 0) + 1
            self._seen = len(factory.backend.published.get(node_id, []))
        else:
            self._pubsub = factory.raw().pubsub()
            self._pubsub.subscribe(NodeKeys(node_id).events)
            msg = self._pubsub.get_message(timeout=5)
            assert msg is not None and msg["type"] == "subscribe", msg

    def next_message(self, timeout_s: float = 5.0) -> bytes | None:
        if self.f.backend is not None:
            published = self.f.backend.published.get(self.node_id, [])
            if len(published) > self._seen:
                self._seen += 1
                return published[self._seen - 1]
            return None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
            if msg is not None:
                assert msg["type"] == "message", msg
                data: bytes = msg["data"]
                return data
        return None

    def close(self) -> None:
        if self.f.backend is not None:
            self.f.backend.subscribers[self.node_id] -= 1
        else:
            self._pubsub.close()


class StoreFactory:
    """Makes opened stores of one backend kind, runs the test's coroutines, closes everything."""

    def __init__(self, kind: str, redis_url: str | None):
        self.kind = kind
        self.url = redis_url
        self.offset_s = 0.0  # memory only: how far the fake clock is ahead of wall time
        self.backend = MemoryBackend(clock=self.clock) if kind == "memory" else None
        self.loop = asyncio.new_event_loop()
        self.stores: list[Store] = []
        self._raw: dict[str, redis.Redis] = {}
        self._listeners: list[Listener] = []

    # -- time

    def clock(self) -> float:
        return time.time() + self.offset_s

    def now_ns(self) -> int:
        return int(self.clock() * NS)

    async def tick(self, dt_s: float) -> None:
        """Let a little time pass: moves the fake clock on memory, sleeps on Redis."""
        if self.backend is not None:
            self.offset_s += dt_s
        else:
            await asyncio.sleep(dt_s)

    async def wait_for(self, cond: Callable[[], Awaitable[T]], what: str, timeout_s: float = 10.0) -> T:
        """Poll ``cond`` until it returns something truthy; fail after ``timeout_s`` of store time."""
        deadline = self.clock() + timeout_s
        real_deadline = time.monotonic() + timeout_s + 10
        while True:
            v = await cond()
            if v:
                return v
            if self.clock() > deadline or time.monotonic() > real_deadline:
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
            await self.tick(0.05)

    # -- stores

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    async def make(
        self,
        node_id: str = "n1",
        *,
        retention_s: float = 86400.0,
        bucket_s: int | None = None,
        url: str | None = None,
        open_: bool = True,
    ) -> Store:
        store: Store
        if self.backend is not None:
            store = MemoryStore(node_id, self.backend, retention_s=retention_s, bucket_s=bucket_s)
        else:
            store = RedisStore(node_id, url or self._url(), retention_s=retention_s, bucket_s=bucket_s)
        self.stores.append(store)
        if open_:
            await store.open()
        return store

    def _url(self) -> str:
        assert self.url is not None
        return self.url

    def raw(self, url: str | None = None) -> redis.Redis:
        """A plain redis-py client (Redis only), closed at teardown."""
        u = url or self._url()
        if u not in self._raw:
            self._raw[u] = redis.Redis.from_url(u, socket_timeout=5)
        return self._raw[u]

    def listen(self, node_id: str) -> Listener:
        lst = Listener(self, node_id)
        self._listeners.append(lst)
        return lst

    # -- direct access to the owner lock, as another process (or a crash) would leave it

    def set_owner(self, node_id: str, raw_token: str, epoch: int, ttl_s: float = 30.0) -> None:
        if self.backend is not None:
            d = self.backend.node(node_id)
            d.owner = (raw_token, self.clock() + ttl_s)
            d.epoch = epoch
        else:
            k = NodeKeys(node_id)
            self.raw().set(k.owner, raw_token, px=int(ttl_s * 1000))
            self.raw().set(k.epoch, epoch)

    def get_owner(self, node_id: str, url: str | None = None) -> str | None:
        if self.backend is not None:
            d = self.backend.node(node_id)
            if d.owner is None or d.owner[1] <= self.clock():
                return None
            return d.owner[0]
        v = self.raw(url).get(NodeKeys(node_id).owner)
        return None if v is None else v.decode()

    def drop_owner(self, node_id: str) -> None:
        """The lock vanishes (expired during a pause, or the server lost it); the epoch stays."""
        if self.backend is not None:
            self.backend.node(node_id).owner = None
        else:
            assert self.raw().delete(NodeKeys(node_id).owner) == 1

    def close(self) -> None:
        for lst in self._listeners:
            lst.close()
        for s in self.stores:
            self.loop.run_until_complete(s.close())
        for c in self._raw.values():
            c.close()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


@pytest.fixture(params=["memory", "redis"])
def store_factory(request: pytest.FixtureRequest) -> Iterator[StoreFactory]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    f = StoreFactory(request.param, url)
    yield f
    f.close()


redis_only = pytest.mark.parametrize("store_factory", ["redis"], indirect=True)


# ---------------------------------------------------------------------------- owner lock


def test_acquire_conflict_release_and_independent_nodes(store_factory: StoreFactory) -> None:
    f = store_factory

    async def body() -> None:
        a = await f.make("n1")
        b = await f.make("n1")
        other = await f.make("n2")
        tok = await a.acquire()
        assert isinstance(tok, OwnerToken)
        assert (tok.host, tok.pid) == (HOST, os.getpid())
        assert tok.epoch >= 1
        assert f.get_owner("n1") == tok.encode()

        with pytest.raises(NodeOwnedError) as ei:
            await b.acquire()
        msg = str(ei.value)
        assert f"pid {os.getpid()}" in msg and HOST in msg and "n1" in msg
        assert f.get_owner("n1") == tok.encode()  # the refused attempt changed nothing

        # Another node id is independent, with its own epoch counter.
        tok2 = await other.acquire()
        assert tok2.epoch == 1
        await other.write(WriteBatch(upserts=upserts(make_task("t-other", "n2")), now_ns=f.now_ns()))
        await a.write(WriteBatch(upserts=upserts(make_task("t-a")), now_ns=f.now_ns()))
        assert ids_of((await a.load()).tasks) == {"t-a"}
        assert ids_of((await other.load()).tasks) == {"t-other"}

        await a.release()
        assert f.get_owner("n1") is None
        tok_b = await b.acquire()
        assert tok_b.epoch == tok.epoch + 1  # every new owner bumps the fencing epoch
        assert tok_b.nonce != tok.nonce
        # A released store may not write any more.
        with pytest.raises(FencedError):
            await a.write(WriteBatch(upserts=upserts(make_task("t-late")), now_ns=f.now_ns()))
        assert ids_of((await b.load()).tasks) == {"t-a"}

    f.run(body())


def test_acquire_waits_for_the_holder_to_let_go(store_factory: StoreFactory) -> None:
    f = store_factory

    async def body() -> None:
        a = await f.make("n1")
        b = await f.make("n1")
        tok_a = await a.acquire()
        t0 = time.monotonic()
        with pytest.raises(NodeOwnedError):
            await b.acquire(wait_s=0.3)
        assert time.monotonic() - t0 >= 0.25  # it did wait before giving up

        waiter = asyncio.ensure_future(b.acquire(wait_s=10))
        await asyncio.sleep(0)
        assert not waiter.done()
        await a.release()
        tok_b = await asyncio.wait_for(waiter, 15)
        assert tok_b.epoch == tok_a.epoch + 1
        assert f.get_owner("n1") == tok_b.encode()

    f.run(body())


def test_lock_of_dead_local_process_is_taken_over(store_factory: StoreFactory) -> None:
    f = store_factory

    async def body() -> None:
        pid = dead_pid()
        stale = f"7|{HOST}|{pid}|deadbeef0000"
        f.set_owner("n1", stale, epoch=7)
        s = await f.make("n1")
        tok = await s.acquire()
        assert tok.epoch == 8
        assert (tok.host, tok.pid) == (HOST, os.getpid())
        assert f.get_owner("n1") == tok.encode()
        await s.write(WriteBatch(upserts=upserts(make_task("t1")), now_ns=f.now_ns()))
        assert ids_of((await s.load()).tasks) == {"t1"}

    f.run(body())


def test_lock_of_live_or_remote_process_is_not_taken_over(store_factory: StoreFactory) -> None:
    f = store_factory

    async def body() -> None:
        s = await f.make("n1")
        # A dead pid on another host: we cannot tell whether it is dead, so it is not ours to take.
        remote = f"3|elsewhere.example|{dead_pid()}|cafe00000000"
        f.set_owner("n1", remote, epoch=3)
        with pytest.raises(NodeOwnedError) as ei:
            await s.acquire()
        assert "elsewhere.example" in str(ei.value)
        assert f.get_owner("n1") == remote

        # A live process on this host keeps its lock until it dies; then the lock is taken over.
        child = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
        try:
            live = f"4|{HOST}|{child.pid}|beef00000000"
            f.set_owner("n1", live, epoch=4)
            with pytest.raises(NodeOwnedError) as ei:
                await s.acquire()
            assert f"pid {child.pid}" in str(ei.value) and HOST in str(ei.value)
            assert f.get_owner("n1") == live
        finally:
            child.kill()
            child.wait()
        tok = await s.acquire()
        assert tok.epoch == 5
        assert f.get_owner("n1") == tok.encode()

    f.run(body())


# ---------------------------------------------------------------------------- fencing


def full_batch(f: StoreFactory, tag: str, finish: Task | None = None, drop: str | None = None) -> WriteBatch:
    now = f.now_ns()
    return WriteBatch(
        upserts=upserts(make_task(f"{tag}-up", now_ns=now)),
        finished=[] if finish is None else upserts(finish),
        workers=[(f"{tag}-w", encode_worker(make_worker(f"{tag}-w", now)))],
        dropped_workers=[] if drop is None else [drop],
        idempotency=[(f"{tag}-key", f"{tag}-up")],
        counters={"submitted": 1, f"{tag}-only": 1},
        events=orjson.dumps([{"kind": "new_task", "task_id": f"{tag}-up"}]),
        now_ns=now,
    )


def test_expired_lock_taken_over_fences_the_old_owner(store_factory: StoreFactory) -> None:
    f = store_factory

    async def body() -> None:
        a = await f.make("n1")
        b = await f.make("n1")
        tok_a = await a.acquire(lock_ttl_s=0.3)
        t1 = make_task("t1", now_ns=f.now_ns())
        await a.write(
            WriteBatch(
                upserts=upserts(t1),
                workers=[("w1", encode_worker(make_worker("w1")))],
                counters={"submitted": 1},
                now_ns=f.now_ns(),
            )
        )

        async def b_takes_it() -> OwnerToken | None:
            try:
                return await b.acquire(lock_ttl_s=30)
            except NodeOwnedError:
                return None

        tok_b = await f.wait_for(b_takes_it, "A's lock to expire and B to acquire")
        assert tok_b.epoch == tok_a.epoch + 1
        listener = f.listen("n1")

        finished = make_task("t1", status=TaskStatus.COMPLETED, now_ns=f.now_ns(), result=b"r")
        with pytest.raises(FencedError):
            await a.write(full_batch(f, "stale", finish=finished, drop="w1"))
        with pytest.raises(FencedError):
            await a.refresh()

        # Nothing of A's batch was applied, and B still holds the node.
        snap = await b.load()
        assert ids_of(snap.tasks) == {"t1"}
        assert decode_task(snap.tasks[0]).status is TaskStatus.QUEUED
        assert [decode_worker(w).id for w in snap.workers] == ["w1"]
        assert snap.counters == {"submitted": 1}
        assert await b.get_finished(["t1", "stale-up"]) == {}
        assert await b.get_idempotency(["stale-key"]) == {}
        assert listener.next_message(timeout_s=0.2) is None
        assert f.get_owner("n1") == tok_b.encode()

        # A's release must not free B's lock.
        await a.release()
        assert f.get_owner("n1") == tok_b.encode()
        await b.write(WriteBatch(upserts=upserts(make_task("t2")), counters={"submitted": 1}, now_ns=f.now_ns()))
        await b.refresh()
        snap = await b.load()
        assert ids_of(snap.tasks) == {"t1", "t2"}
        assert snap.counters == {"submitted": 2}

    f.run(body())


def test_vanished_lock_is_taken_back_when_nobody_acquired_since(store_factory: StoreFactory) -> None:
    f = store_factory

    async def body() -> None:
        a = await f.make("n1")
        c = await f.make("n1")
        tok = await a.acquire()

        f.drop_owner("n1")
        await a.refresh()  # takes it back
        assert f.get_owner("n1") == tok.encode()
        with pytest.raises(NodeOwnedError):
            await c.acquire()

        f.drop_owner("n1")
        await a.write(WriteBatch(upserts=upserts(make_task("t1")), counters={"submitted": 1}, now_ns=f.now_ns()))
        assert f.get_owner("n1") == tok.encode()
        snap = await a.load()
        assert ids_of(snap.tasks) == {"t1"}
        assert snap.counters == {"submitted": 1}
        with pytest.raises(NodeOwnedError):
            await c.acquire()

    f.run(body())


def test_vanished_lock_is_not_taken_back_after_another_owner(store_factory: StoreFactory) -> None:
    f = store_factory

    async def body() -> None:
        a = await f.make("n1")
        b = await f.make("n1")
        tok_a = await a.acquire()
        f.drop_owner("n1")
        tok_b = await b.acquire()  # B served the node for a while, then let go
        assert tok_b.epoch == tok_a.epoch + 1
        await b.write(WriteBatch(upserts=upserts(make_task("t-b")), now_ns=f.now_ns()))
        await b.release()
        assert f.get_owner("n1") is None

        with pytest.raises(FencedError):
            await a.write(full_batch(f, "stale"))
        with pytest.raises(FencedError):
            await a.refresh()
        assert f.get_owner("n1") is None
        snap = await b.load()
        assert ids_of(snap.tasks) == {"t-b"}
        assert snap.workers == [] and snap.counters == {}
        assert await b.get_idempotency(["stale-key"]) == {}

    f.run(body())


def test_write_and_refresh_without_acquire_are_fenced(store_factory: StoreFactory) -> None:
    f = store_factory

    async def body() -> None:
        s = await f.make("n1")
        with pytest.raises(FencedError):
            await s.write(full_batch(f, "x"))
        with pytest.raises(FencedError):
            await s.refresh()
        snap = await s.load()
        assert snap.tasks == [] and snap.workers == [] and snap.counters == {}

    f.run(body())


# ---------------------------------------------------------------------------- writes and reads


def test_write_load_round_trip(store_factory: StoreFactory) -> None:
    f = store_factory

    async def body() -> None:
        s = await f.make("n1")
        await s.acquire()
        empty = await s.load()
        assert empty.tasks == [] and empty.workers == [] and empty.counters == {}

        now = f.now_ns()
        t1, t2, t3 = (make_task(f"t{i}", now_ns=now, key=f"k{i}") for i in (1, 2, 3))
        await s.write(
            WriteBatch(
                upserts=upserts(t1, t2, t3),
                workers=[(w, encode_worker(make_worker(w, now))) for w in ("w1", "w2")],
                idempotency=[("k1", "t1"), ("k2", "t2"), ("k3", "t3")],
                counters={"submitted": 3},
                now_ns=now,
            )
        )
        snap = await s.load()
        assert by_id(snap.tasks) == dict(upserts(t1, t2, t3))  # records come back byte for byte
        assert encode_task(decode_task(encode_task(t1))) == encode_task(t1)
        assert sorted(decode_worker(w).id for w in snap.workers) == ["w1", "w2"]
        assert snap.counters == {"submitted": 3}
        assert await s.get_idempotency(["k1", "k3", "nope"]) == {"k1": "t1", "k3": "t3"}
        assert await s.get_idempotency([]) == {}

        # An update replaces the record; t1 finishes; w1 is updated, w2 dropped; counters add up.
        t2.status = TaskStatus.ASSIGNED
        t2.assigned_worker = "w1"
        t2.attempt = 1
        done = make_task("t1", status=TaskStatus.COMPLETED, now_ns=f.now_ns(), key="k1", result=b"\x01ok")
        await s.write(
            WriteBatch(
                upserts=upserts(t2),
                finished=upserts(done),
                workers=[("w1", encode_worker(make_worker("w1", now, completed=1)))],
                dropped_workers=["w2"],
                counters={"submitted": 2, "completed": 1, "type:resize:completed": 1},
                now_ns=f.now_ns(),
            )
        )
        snap = await s.load()
        tasks = {t.id: t for t in map(decode_task, snap.tasks)}
        assert set(tasks) == {"t2", "t3"}
        assert tasks["t2"].status is TaskStatus.ASSIGNED and tasks["t2"].assigned_worker == "w1"
        workers = [decode_worker(w) for w in snap.workers]
        assert [(w.id, w.completed) for w in workers] == [("w1", 1)]
        assert snap.counters == {"submitted": 5, "completed": 1, "type:resize:completed": 1}
        found = await s.get_finished(["t1", "t2", "nope"])
        assert found == dict(upserts(done))
        assert await s.get_finished([]) == {}

        # Dropping an unknown worker and an empty counter delta are harmless.
        await s.write(WriteBatch(dropped_workers=["ghost"], counters={"completed": 0}, now_ns=f.now_ns()))
        assert (await s.load()).counters["completed"] == 1

        # Another store of the same node (the next process) sees the same data.
        await s.release()
        s2 = await f.make("n1")
        await s2.acquire()
        snap2 = await s2.load()
        assert sorted(snap2.tasks) == sorted(snap.tasks)
        assert snap2.counters == snap.counters
        assert set(await s2.get_finished(["t1"])) == {"t1"}

    f.run(body())


def test_core_outbox_round_trip(store_factory: StoreFactory) -> None:
    """Records made by the real core, encoded by encode_batch, reload into an equal core."""
    f = store_factory

    async def body() -> None:
        s = await f.make("n1")
        await s.acquire()
        core = Core(CoreConfig(node_id="n1"))
        now = f.now_ns()
        core.register_worker(WorkerSpec("w1", capabilities=("gpu",), skill=10, concurrency=4), now)
        ids = core.submit(
            [
                TaskSpec("resize", b"a", idempotency_key="key-a"),
                TaskSpec("resize", b"b", required_capabilities=("gpu",)),
                TaskSpec("encode", b"c", priority=Priority.CRITICAL),
            ],
            now,
        )
        await s.write(encode_batch(core.drain(), now, with_events=False))
        leases = core.claim("w1", 2, now + 1)
        assert len(leases) == 2
        core.complete(leases[0], b"done", now + 2)
        now2 = f.now_ns()
        batch = encode_batch(core.drain(), now2, with_events=True)
        assert batch.finished and batch.events is not None
        await s.write(batch)

        snap = await s.load()
        stored = by_id(snap.tasks)
        assert stored == {tid: encode_task(t) for tid, t in core.tasks.items()}
        assert set(stored) == set(ids) - {leases[0].task_id}
        found = await s.get_finished([leases[0].task_id])
        rec = decode_task(found[leases[0].task_id])
        assert rec.status is TaskStatus.COMPLETED and rec.result == b"done"
        assert snap.counters["completed"] == 1
        assert snap.counters[f"type:{rec.type}:completed"] == 1
        assert await s.get_idempotency(["key-a"]) == {"key-a": ids[0]}
        assert [decode_worker(w).id for w in snap.workers] == ["w1"]

        # A new core restored from the store holds the same tasks.
        core2 = Core(CoreConfig(node_id="n1"))
        core2.restore(map(decode_task, snap.tasks), map(decode_worker, snap.workers), f.now_ns())
        assert set(core2.tasks) == set(core.tasks)

    f.run(body())


def test_dead_letters_are_indexed_newest_first_and_leave_when_requeued(store_factory: StoreFactory) -> None:
    """Tasks failed for good by the real core are listed (newest first, paged, counted without a
    scan); a requeue takes one out in the same commit; entries past the retention are not listed."""
    f = store_factory

    async def body() -> None:
        s = await f.make("n1", retention_s=3600, bucket_s=600)
        await s.acquire()
        core = Core(CoreConfig(node_id="n1"))
        now = f.now_ns()
        core.register_worker(WorkerSpec("w1", concurrency=8), now)
        ids = core.submit([TaskSpec("resize", b"%d" % k) for k in range(4)], now)
        leases = {lease.task_id: lease for lease in core.claim("w1", 4, now)}
        core.complete(leases[ids[0]], b"ok", now + 1)
        for k, tid in enumerate(ids[1:]):  # failed for good, one millisecond apart
            core.fail(leases[tid], "boom", now + (k + 1) * 1_000_000, retry=False)
        await s.write(encode_batch(core.drain(), now + 5_000_000, with_events=False))
        assert await s.dead_letters(0, 10) == (3, [ids[3], ids[2], ids[1]])
        assert await s.dead_letters(1, 1) == (3, [ids[2]])
        assert await s.dead_letters(5, 10) == (3, [])

        record = decode_task((await s.get_finished([ids[2]]))[ids[2]])
        core.requeue(record, now + 6_000_000)
        await s.write(encode_batch(core.drain(), now + 6_000_000, with_events=False))
        assert await s.dead_letters(0, 10) == (2, [ids[3], ids[1]])
        (lease,) = core.claim("w1", 1, now + 6_000_000)
        core.complete(lease, b"ok at last", now + 6_500_000)
        # another one fails again, in one commit with its requeue: listed again
        record = decode_task((await s.get_finished([ids[1]]))[ids[1]])
        core.requeue(record, now + 7_000_000)
        (lease,) = core.claim("w1", 1, now + 7_000_000)
        core.fail(lease, "boom again", now + 8_000_000, retry=False)
        await s.write(encode_batch(core.drain(), now + 8_000_000, with_events=False))
        assert await s.dead_letters(0, 10) == (2, [ids[1], ids[3]])
        # an hour and more later, past the retention: not listed any more
        assert await s.dead_letters(0, 10, now_ns=now + 3601 * NS) == (0, [])

    f.run(body())


def test_batch_with_every_section_is_applied_whole(store_factory: StoreFactory) -> None:
    f = store_factory

    async def body() -> None:
        s = await f.make("n1")
        await s.acquire()
        await s.write(
            WriteBatch(
                upserts=upserts(make_task("old")),
                workers=[("gone", encode_worker(make_worker("gone")))],
                now_ns=f.now_ns(),
            )
        )
        listener = f.listen("n1")
        finished = make_task("old", status=TaskStatus.FAILED, now_ns=f.now_ns())
        batch = full_batch(f, "all", finish=finished, drop="gone")
        assert all(
            (batch.upserts, batch.finished, batch.workers, batch.dropped_workers, batch.idempotency, batch.counters)
        )
        await s.write(batch)
        snap = await s.load()
        assert ids_of(snap.tasks) == {"all-up"}
        assert [decode_worker(w).id for w in snap.workers] == ["all-w"]
        assert snap.counters == {"submitted": 1, "all-only": 1}
        assert set(await s.get_finished(["old", "all-up"])) == {"old"}
        assert await s.get_idempotency(["all-key"]) == {"all-key": "all-up"}
        assert listener.next_message() == batch.events

    f.run(body())


def test_dead_letters_with_hand_off_state_and_idempotency_keys_in_one_batch(store_factory: StoreFactory) -> None:
    """Every optional section at once: the script's keys shift with hand-off state (the dead
    letters' key stays 7th, idempotency keys move): each section still lands in its key; and far
    more dead letters than the script unpacks at once (7000)."""
    f = store_factory
    n = 9000

    async def body() -> None:
        s = await f.make("n1")
        await s.acquire()
        now = f.now_ns()
        failed = [make_task(f"d{i:05d}", status=TaskStatus.FAILED, now_ns=now) for i in range(n)]
        report = make_task("rep", status=TaskStatus.COMPLETED, now_ns=now)
        base = full_batch(f, "mix", finish=None)
        batch = dataclasses.replace(
            base,
            finished=upserts(*failed),
            dead=[(t.id, now // 1_000_000 + i) for i, t in enumerate(failed)],
            undead=["never-dead"],
            reports=upserts(report),
            refused=[("gone-id", now)],
            intents=[("mix-up", "n2")],
        )
        await s.write(batch)
        total, newest = await s.dead_letters(0, 3)
        assert (total, newest) == (n, [f"d{n - 1:05d}", f"d{n - 2:05d}", f"d{n - 3:05d}"])
        assert (await s.dead_letters(n - 1, 5))[1] == ["d00000"]
        snap = await s.load()
        assert ids_of(snap.tasks) == {"mix-up"}
        assert snap.handoffs == {"mix-up": "n2"}
        assert [decode_task(r).id for r in snap.reports] == ["rep"]
        assert set(snap.refused) == {"gone-id"}
        assert await s.get_idempotency(["mix-key"]) == {"mix-key": "mix-up"}
        assert snap.counters == {"submitted": 1, "mix-only": 1}
        # the requeue of all but one, in one batch
        await s.write(WriteBatch(undead=[t.id for t in failed[1:]], now_ns=f.now_ns()))
        assert await s.dead_letters(0, 10) == (1, ["d00000"])

    f.run(body())


def test_large_batches_are_applied_completely(store_factory: StoreFactory) -> None:
    """Far more items than the flush script unpacks at once (7000), in every section."""
    f = store_factory
    n = 20_000

    async def body() -> None:
        s = await f.make("n1")
        await s.acquire()
        now = f.now_ns()
        tasks = [make_task(f"t{i:05d}", now_ns=now) for i in range(n)]
        worker_raw = encode_worker(make_worker("w", now))
        await s.write(
            WriteBatch(
                upserts=upserts(*tasks),
                workers=[(f"w{i:05d}", worker_raw) for i in range(n)],
                idempotency=[(f"key{i:05d}", f"t{i:05d}") for i in range(n)],
                counters={f"c{i}": i + 1 for i in range(100)},
                now_ns=now,
            )
        )
        snap = await s.load()
        assert len(snap.tasks) == n
        assert ids_of(snap.tasks) == {t.id for t in tasks}
        assert len(snap.workers) == n
        assert snap.counters == {f"c{i}": i + 1 for i in range(100)}
        keys = [f"key{i:05d}" for i in range(n)]
        assert await s.get_idempotency(keys) == {f"key{i:05d}": f"t{i:05d}" for i in range(n)}

        # Finish all but the last, and drop every worker, in one batch.
        now2 = f.now_ns()
        for t in tasks:
            t.status = TaskStatus.COMPLETED
            t.finished_ns = now2
        await s.write(
            WriteBatch(
                finished=upserts(*tasks[:-1]),
                dropped_workers=[f"w{i:05d}" for i in range(n)],
                counters={"completed": n - 1},
                now_ns=now2,
            )
        )
        snap = await s.load()
        assert ids_of(snap.tasks) == {tasks[-1].id}
        assert snap.workers == []
        assert snap.counters["completed"] == n - 1
        found = await s.get_finished([t.id for t in tasks])
        assert len(found) == n - 1 and tasks[-1].id not in found
        assert decode_task(found["t00000"]).status is TaskStatus.COMPLETED

    f.run(body())


def test_finished_twice_newest_record_wins(store_factory: StoreFactory) -> None:
    """A task finished, requeued by hand and finished again in a later bucket: the newest counts."""
    f = store_factory

    async def body() -> None:
        s = await f.make("n1", retention_s=86400, bucket_s=3600)
        await s.acquire()
        earlier = f.now_ns() - 2 * 3600 * NS
        first = make_task("t1", status=TaskStatus.FAILED, now_ns=earlier)
        await s.write(WriteBatch(finished=upserts(first), now_ns=earlier))
        requeued = make_task("t1", status=TaskStatus.QUEUED, now_ns=f.now_ns())
        await s.write(WriteBatch(upserts=upserts(requeued), now_ns=f.now_ns()))
        assert ids_of((await s.load()).tasks) == {"t1"}
        second = make_task("t1", status=TaskStatus.COMPLETED, now_ns=f.now_ns(), result=b"2")
        await s.write(WriteBatch(finished=upserts(second), now_ns=f.now_ns()))
        assert (await s.load()).tasks == []
        found = await s.get_finished(["t1"])
        assert decode_task(found["t1"]).status is TaskStatus.COMPLETED

    f.run(body())


def test_retention_expires_finished_records_and_keys(store_factory: StoreFactory) -> None:
    f = store_factory
    retention_s, bucket_s = 2.0, 1

    async def body() -> None:
        s = await f.make("n1", retention_s=retention_s, bucket_s=bucket_s)
        await s.acquire()
        t0 = f.clock()
        done = make_task("t1", status=TaskStatus.COMPLETED, now_ns=f.now_ns(), key="k1")
        await s.write(
            WriteBatch(
                upserts=upserts(make_task("t2", key="k2")),
                finished=upserts(done),
                idempotency=[("k1", "t1")],
                now_ns=f.now_ns(),
            )
        )
        assert set(await s.get_finished(["t1"])) == {"t1"}
        assert await s.get_idempotency(["k1"]) == {"k1": "t1"}

        async def finished_gone() -> bool:
            return await s.get_finished(["t1"]) == {}

        async def key_gone() -> bool:
            return await s.get_idempotency(["k1"]) == {}

        await f.wait_for(key_gone, "the idempotency key to expire", timeout_s=retention_s + bucket_s + 5)
        assert f.clock() - t0 >= retention_s - 0.05, "idempotency key expired before the retention period"
        await f.wait_for(finished_gone, "the finished record to expire", timeout_s=retention_s + bucket_s + 5)
        assert f.clock() - t0 >= retention_s - 0.05, "finished record expired before the retention period"
        # Active tasks never expire.
        assert ids_of((await s.load()).tasks) == {"t2"}

    f.run(body())


def test_history_rows_in_minute_order(store_factory: StoreFactory) -> None:
    f = store_factory
    minute = 60_000

    async def body() -> None:
        s = await f.make("n1")
        base = int(f.clock() * 1000) // minute * minute - 10 * minute
        for i in (3, 0, 4, 1, 2):  # written out of order
            await s.append_history(base + i * minute, orjson.dumps({"minute": i}))
        await s.append_history(base + 2 * minute, orjson.dumps({"minute": 2, "again": True}))

        rows = await s.read_history(base + minute)
        assert [m for m, _ in rows] == [base + i * minute for i in (1, 2, 3, 4)]
        assert [orjson.loads(r) for _, r in rows] == [
            {"minute": 1},
            {"minute": 2, "again": True},  # a later row for the same minute wins
            {"minute": 3},
            {"minute": 4},
        ]
        assert [m for m, _ in await s.read_history(base)] == [base + i * minute for i in range(5)]
        assert await s.read_history(base + 5 * minute) == []
        other = await f.make("n2")
        assert await other.read_history(0) == []

    f.run(body())


def test_subscribers_and_events(store_factory: StoreFactory) -> None:
    f = store_factory

    async def body() -> None:
        s = await f.make("n1")
        await s.acquire()
        assert await s.subscribers() == 0
        listener = f.listen("n1")
        assert await s.subscribers() == 1
        assert await (await f.make("n2")).subscribers() == 0

        await s.write(WriteBatch(upserts=upserts(make_task("quiet")), now_ns=f.now_ns()))  # no events
        msg = orjson.dumps([{"kind": "new_task", "task_id": "t1"}])
        await s.write(WriteBatch(upserts=upserts(make_task("t1")), events=msg, now_ns=f.now_ns()))
        assert listener.next_message() == msg  # the first message: the quiet batch published nothing
        assert listener.next_message(timeout_s=0.2) is None
        # A batch of events alone is still a write.
        only = orjson.dumps([{"kind": "task_updated", "task_id": "t1"}])
        await s.write(WriteBatch(events=only, now_ns=f.now_ns()))
        assert listener.next_message() == only

    f.run(body())


# ---------------------------------------------------------------------------- Redis only


@redis_only
def test_redis_data_is_readable_with_plain_commands(store_factory: StoreFactory) -> None:
    f = store_factory

    async def body() -> None:
        s = await f.make("n1", retention_s=3600, bucket_s=60)
        tok = await s.acquire(lock_ttl_s=10)
        now = f.now_ns()
        done = make_task("t-done", status=TaskStatus.COMPLETED, now_ns=now)
        await s.write(
            WriteBatch(
                upserts=upserts(make_task("t1", now_ns=now)),
                finished=upserts(done),
                workers=[("w1", encode_worker(make_worker("w1", now)))],
                idempotency=[("k1", "t1")],
                counters={"submitted": 2},
                now_ns=now,
            )
        )
        r = f.raw()
        k = NodeKeys("n1")
        raw = r.hget("fc:n1:active", "t1")
        assert raw is not None
        rec = orjson.loads(raw)
        assert rec["id"] == "t1" and rec["status"] == "queued" and rec["v"] == 1
        assert r.hkeys(k.active) == [b"t1"]
        assert orjson.loads(r.hget(k.workers, "w1"))["id"] == "w1"
        assert r.hget(k.counters, "submitted") == b"2"
        assert r.get(k.idem("k1")) == b"t1"
        assert 0 < r.ttl(k.idem("k1")) <= 3600
        bucket = int(now / NS) // 60 * 60
        assert orjson.loads(r.hget(k.done(bucket), "t-done"))["status"] == "completed"
        assert r.ttl(k.done(bucket)) > 3600 - 5  # kept for the retention after its bucket ends
        assert r.get(k.owner) == tok.encode().encode()
        assert 0 < r.pttl(k.owner) <= 10_000
        assert r.get(k.epoch) == str(tok.epoch).encode()
        assert {key.decode() for key in r.keys("*")} <= {
            k.active,
            k.workers,
            k.counters,
            k.idem("k1"),
            k.done(bucket),
            k.owner,
            k.epoch,
        }

    f.run(body())


@redis_only
def test_redis_flush_is_atomic_for_readers(store_factory: StoreFactory) -> None:
    """A reader running MULTI reads while big batches are written never sees half a batch."""
    f = store_factory
    k = NodeKeys("n1")
    stop = threading.Event()
    samples: list[tuple[int, int]] = []

    def reader() -> None:
        c = redis.Redis.from_url(f._url(), socket_timeout=5)
        try:
            while not stop.is_set():
                n_active, n_counter = c.pipeline(transaction=True).hlen(k.active).hget(k.counters, "n").execute()
                samples.append((int(n_active), int(n_counter or 0)))
        finally:
            c.close()

    async def body() -> None:
        s = await f.make("n1")
        await s.acquire()
        th = threading.Thread(target=reader, daemon=True)
        th.start()
        try:
            await f.wait_for(lambda: asyncio.sleep(0, bool(samples)), "the reader's first sample")
            per = 5000
            for b in range(6):
                await s.write(
                    WriteBatch(
                        upserts=upserts(*(make_task(f"b{b}-{i}") for i in range(per))),
                        counters={"n": per},
                        now_ns=f.now_ns(),
                    )
                )
        finally:
            stop.set()
            th.join(10)
        assert not th.is_alive()
        assert samples
        torn = [x for x in samples if x[0] != x[1]]
        assert not torn, f"readers saw partial batches: {torn[:5]}"

    f.run(body())


def test_outage_raises_store_unavailable_and_recovers(
    store_factory: StoreFactory, request: pytest.FixtureRequest
) -> None:
    """Server down: every call raises StoreUnavailableError (never a raw client error); when the
    server is back (Redis: restarted on the same port, AOF on) the same store works again."""
    f = store_factory
    server: RedisServer | None = request.getfixturevalue("own_redis") if f.kind == "redis" else None
    url = None if server is None else server.url

    def down() -> None:
        if server is not None:
            server.kill()
        else:
            assert f.backend is not None
            f.backend.available = False

    def up() -> None:
        if server is not None:
            server.start()  # same port and directory: the AOF brings the data back
        else:
            assert f.backend is not None
            f.backend.available = True

    async def body() -> None:
        s = await f.make("n1", url=url)
        tok = await s.acquire()
        await s.write(WriteBatch(upserts=upserts(make_task("t1")), counters={"submitted": 1}, now_ns=f.now_ns()))
        await s.append_history(60_000, b"{}")

        down()
        batch = WriteBatch(upserts=upserts(make_task("t2")), counters={"submitted": 1}, now_ns=f.now_ns())
        with pytest.raises(StoreUnavailableError):
            await s.write(batch)
        with pytest.raises(StoreUnavailableError):
            await s.load()
        with pytest.raises(StoreUnavailableError):
            await s.ping()
        with pytest.raises(StoreUnavailableError):
            await s.refresh()
        with pytest.raises(StoreUnavailableError):
            await s.get_finished(["t1"])
        with pytest.raises(StoreUnavailableError):
            await s.get_idempotency(["k"])
        with pytest.raises(StoreUnavailableError):
            await s.append_history(120_000, b"{}")
        with pytest.raises(StoreUnavailableError):
            await s.read_history(0)
        with pytest.raises(StoreUnavailableError):
            await s.subscribers()
        fresh = await f.make("n1", url=url, open_=False)  # a store made while the server is down
        with pytest.raises(StoreUnavailableError):
            await fresh.open()
        with pytest.raises(StoreUnavailableError):
            await fresh.acquire()

        up()
        await s.ping()
        snap = await s.load()
        assert ids_of(snap.tasks) == {"t1"}
        assert snap.counters == {"submitted": 1}
        await s.refresh()  # the lock survived the outage (on Redis the scripts are loaded again)
        await s.write(batch)
        snap = await s.load()
        assert ids_of(snap.tasks) == {"t1", "t2"}
        assert snap.counters == {"submitted": 2}
        assert [m for m, _ in await s.read_history(0)] == [60_000]
        assert await s.subscribers() == 0
        await fresh.open()
        with pytest.raises(NodeOwnedError):
            await fresh.acquire()
        assert f.get_owner("n1", url) == tok.encode()

    f.run(body())


def test_hand_off_state_round_trips(store_factory: StoreFactory) -> None:
    """Hand-off intents, reports of adopted tasks (kept until acknowledged), ids declared unknown
    (kept 24 h), and results archived without touching counters: the same on both backends, in
    big batches too (beyond the Lua script's chunk of 7000 arguments)."""
    f = store_factory

    async def body() -> None:
        s = await f.make("n1")
        await s.acquire()
        now = f.now_ns()
        many = [make_task(f"r{i}", status=TaskStatus.COMPLETED, now_ns=now) for i in range(8000)]
        old_ns = now - 2 * 86_400 * NS
        await s.write(
            WriteBatch(
                reports=upserts(*many),
                refused=[("gone-long-ago", old_ns)] + [(f"u{i}", now) for i in range(7500)],
                intents=[(f"h{i}", "peer-2") for i in range(7200)],
                now_ns=now,
            )
        )
        snap = await s.load()
        assert len(snap.handoffs) == 7200 and snap.handoffs["h7"] == "peer-2"
        await s.write(WriteBatch(intents_done=[f"h{i}" for i in range(7199)], now_ns=f.now_ns()))
        assert (await s.load()).handoffs == {"h7199": "peer-2"}
        snap = await s.load()
        assert len(snap.reports) == 8000 and decode_task(snap.reports[0]).status is TaskStatus.COMPLETED
        assert len(snap.refused) == 7500 and snap.refused["u3"] == now and "gone-long-ago" not in snap.refused
        back = make_task("h1", status=TaskStatus.COMPLETED, now_ns=now, result=b"from the peer")
        await s.write(
            WriteBatch(reports_done=[f"r{i}" for i in range(7999)], finished=upserts(back), now_ns=f.now_ns())
        )
        snap = await s.load()
        assert [decode_task(r).id for r in snap.reports] == ["r7999"]
        assert snap.counters == {}  # archiving a result that came back counts nothing by itself
        assert decode_task((await s.get_finished(["h1"], now_ns=now))["h1"]).result == b"from the peer"

    f.run(body())


# ---------------------------------------------------------------------------- privacy ledger
#
# One entry per release, checked and recorded atomically: the release's rho plus that of every
# recorded release whose window ended after the oldest creation time of a task counting in it
# (m windows back from its start) must stay within the budget, and a window may not start before
# the last released one ended. Refused: nothing written.

WIN_US = 10_000_000  # 10 s windows


def ledger_entry(window: int, rho: float, *, window_us: int = WIN_US, at_ns: int = 0) -> LedgerEntry:
    return LedgerEntry(window, rho, at_ns, "gaussian", 13.5, window * window_us, (window + 1) * window_us)


def test_ledger_records_within_budget_and_refuses_beyond(store_factory: StoreFactory) -> None:
    f = store_factory

    async def body() -> None:
        s = await f.make("n1")
        await s.acquire()
        assert await s.ledger_read() == LedgerState()
        e10, e11 = ledger_entry(10, 0.4, at_ns=f.now_ns()), ledger_entry(11, 0.4)
        assert await s.ledger_record(e10, m=3, rho_budget=1.0) == 0.4
        assert await s.ledger_record(e11, m=3, rho_budget=1.0) == pytest.approx(0.8)
        state = await s.ledger_read()
        # window 12: a task created in window 10 would be in 10, 11 and 12: 1.2 > 1
        with pytest.raises(LedgerRefusedError, match="over budget"):
            await s.ledger_record(ledger_entry(12, 0.4), m=3, rho_budget=1.0)
        for w in (11, 10, 3):  # released already, or older: never (again)
            with pytest.raises(LedgerRefusedError, match="before the last released window ended"):
                await s.ledger_record(ledger_entry(w, 0.01), m=3, rho_budget=1.0)
        assert await s.ledger_read() == state  # refused: nothing written
        # window 13: windows 11..13 (window 10 is m windows back): 0.4 + 0.4
        assert await s.ledger_record(ledger_entry(13, 0.4), m=3, rho_budget=1.0) == pytest.approx(0.8)
        # window 14: 0.4 (window 13) + 0.6 = 1.0, the budget exactly: allowed
        assert await s.ledger_record(ledger_entry(14, 0.6), m=3, rho_budget=1.0) == 1.0
        state = await s.ledger_read()
        assert state.entries == (e10, e11, ledger_entry(13, 0.4), ledger_entry(14, 0.6))  # decoded exactly
        assert (state.releases, state.refused, state.last_window, state.last_end_us) == (4, 0, 14, 15 * WIN_US)
        assert state.rho_total == pytest.approx(1.8) and state.worst_rho == 1.0
        await s.ledger_refused()
        await s.ledger_refused()
        state = await s.ledger_read()
        assert (state.releases, state.refused, state.last_window) == (4, 2, 14)
        assert state.last_end_us == 15 * WIN_US  # counting a refusal keeps where the last release ended ...
        with pytest.raises(LedgerRefusedError, match="before the last released window ended"):
            await s.ledger_record(ledger_entry(14, 0.01), m=3, rho_budget=1.0)  # ... so 14 is still refused
        # a restart (a new store on the same data) reads the same ledger
        again = await f.make("n1")
        assert await again.ledger_read() == state
        if f.kind == "redis":  # readable with redis-cli
            r = f.raw()
            k = NodeKeys("n1")
            totals = {a.decode(): b.decode() for a, b in r.hgetall(k.privacy).items()}
            assert (totals["releases"], totals["refused"], totals["last_window"]) == ("4", "2", "14")
            assert totals["last_end_us"] == str(15 * WIN_US) and float(totals["worst_rho"]) == 1.0
            zs = r.zrange(k.privacy_releases, 0, -1, withscores=True)
            assert [(orjson.loads(m)["window"], score) for m, score in zs] == [
                (w, (w + 1) * WIN_US) for w in (10, 11, 13, 14)
            ]
            assert LedgerEntry.decode(zs[0][0]) == e10

    f.run(body())


def test_ledger_budget_edge_m_1_and_kept_history(store_factory: StoreFactory) -> None:
    f = store_factory

    async def body() -> None:
        s = await f.make("n1")
        await s.acquire()
        await s.ledger_record(ledger_entry(0, 0.5), m=2, rho_budget=1.0)
        with pytest.raises(LedgerRefusedError) as info:  # over by a hair (a relative 1e-15): refused
            await s.ledger_record(ledger_entry(1, 0.5 * (1 + 1e-15)), m=2, rho_budget=1.0)
        assert info.value.kind == "budget"
        await s.ledger_record(ledger_entry(1, 0.5), m=2, rho_budget=1.0)  # the budget exactly: allowed
        # m = 1: only the release itself counts; a gap between windows is fine
        for w in (2, 3, 7):
            assert await s.ledger_record(ledger_entry(w, 0.9), m=1, rho_budget=1.0) == 0.9
        with pytest.raises(LedgerRefusedError, match="over budget"):
            await s.ledger_record(ledger_entry(8, 1.1), m=1, rho_budget=1.0)
        # the history keeps `keep_s` (at least two horizons) back from the newest window's end;
        # the totals count every release
        await s.ledger_record(ledger_entry(9, 0.1), m=1, rho_budget=1.0, keep_s=7 * WIN_US / 1e6)
        state = await s.ledger_read()
        assert [e.window for e in state.entries] == [3, 7, 9]  # windows ending after 10 - 7 = 3
        assert (state.releases, state.last_window) == (6, 9)
        assert state.rho_total == pytest.approx(0.5 + 0.5 + 3 * 0.9 + 0.1)
        assert state.worst_rho == pytest.approx(1.0)
        # a release whose horizon reaches back before what was kept is refused: the ledger can no
        # longer say what its tasks spent (m = 8 from window 10 reaches back to window 3, which is
        # kept; m = 12 from window 11 to window 0, dropped)
        assert await s.ledger_record(ledger_entry(10, 0.01), m=8, rho_budget=5.0) == pytest.approx(1.91)
        with pytest.raises(LedgerRefusedError, match="no longer holds") as info:
            await s.ledger_record(ledger_entry(11, 0.01), m=12, rho_budget=5.0)
        assert info.value.kind == "budget"
        with pytest.raises(LedgerRefusedError) as info:
            await s.ledger_record(ledger_entry(10, 0.01), m=1, rho_budget=1.0)
        assert info.value.kind == "released"

    f.run(body())


def test_ledger_checks_the_budget_over_time_when_the_window_length_changes(store_factory: StoreFactory) -> None:
    """A run with 20 s windows released [0 s, 20 s); the next run has 10 s windows. A task created
    at 15 s counted in that release and may count in the new run's windows [20 s, 30 s) and
    [30 s, 40 s) (m = 3 of 10 s: created at 10 s or later): both must pay for the old release."""
    f = store_factory

    async def body() -> None:
        s = await f.make("n1")
        await s.acquire()
        await s.ledger_record(ledger_entry(0, 0.5, window_us=2 * WIN_US), m=3, rho_budget=1.0)
        with pytest.raises(LedgerRefusedError, match="before the last released window ended"):
            await s.ledger_record(ledger_entry(1, 0.1), m=3, rho_budget=1.0)  # [10 s, 20 s) overlaps it
        assert await s.ledger_record(ledger_entry(2, 0.3), m=3, rho_budget=1.0) == pytest.approx(0.8)
        with pytest.raises(LedgerRefusedError, match="over budget"):  # 0.5 + 0.3 + 0.3 for a task created at 15 s
            await s.ledger_record(ledger_entry(3, 0.3), m=3, rho_budget=1.0)
        # window [40 s, 50 s): tasks created at 20 s or later, after the old release ended
        assert await s.ledger_record(ledger_entry(4, 0.3), m=3, rho_budget=1.0) == pytest.approx(0.6)

    f.run(body())


def test_ledger_writes_need_the_owner_lock(store_factory: StoreFactory) -> None:
    f = store_factory

    async def body() -> None:
        a = await f.make("n1")
        with pytest.raises(FencedError):  # never acquired
            await a.ledger_record(ledger_entry(1, 0.1), m=3, rho_budget=1.0)
        await a.acquire()
        await a.ledger_record(ledger_entry(1, 0.1), m=3, rho_budget=1.0)
        await a.release()
        b = await f.make("n1")
        await b.acquire()
        with pytest.raises(FencedError):  # another process owns the node now
            await a.ledger_record(ledger_entry(2, 0.1), m=3, rho_budget=1.0)
        assert (await b.ledger_read()).releases == 1
        assert await b.ledger_record(ledger_entry(2, 0.1), m=3, rho_budget=1.0) == pytest.approx(0.2)

    f.run(body())


def test_ledger_outage_raises_store_unavailable_and_records_nothing(
    store_factory: StoreFactory, request: pytest.FixtureRequest
) -> None:
    f = store_factory
    server: RedisServer | None = request.getfixturevalue("own_redis") if f.kind == "redis" else None
    url = None if server is None else server.url

    def set_available(up: bool) -> None:
        if server is not None:
            server.start() if up else server.kill()
        else:
            assert f.backend is not None
            f.backend.available = up

    async def body() -> None:
        s = await f.make("n1", url=url)
        await s.acquire()
        await s.ledger_record(ledger_entry(1, 0.1), m=3, rho_budget=1.0)
        state = await s.ledger_read()
        set_available(False)
        with pytest.raises(StoreUnavailableError):
            await s.ledger_record(ledger_entry(2, 0.1), m=3, rho_budget=1.0)
        with pytest.raises(StoreUnavailableError):
            await s.ledger_refused()
        with pytest.raises(StoreUnavailableError):
            await s.ledger_read()
        set_available(True)
        assert await s.ledger_read() == state
        assert await s.ledger_record(ledger_entry(2, 0.1), m=3, rho_budget=1.0) == pytest.approx(0.2)

    f.run(body())
