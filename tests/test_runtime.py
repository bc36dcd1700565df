"""LocalNode through its Python API, on a private real Redis (and on MemoryStore where the store
is not the point)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import orjson
import pytest
import redis

from node import (
    CoreConfig,
    FedcoordError,
    FencedError,
    InvalidTransitionError,
    LocalNode,
    MemoryBackend,
    MemoryStore,
    NodeConfig,
    NodeOwnedError,
    NodeState,
    RedisStore,
    StaleLeaseError,
    StoreUnavailableError,
    TaskNotFoundError,
    TaskSpec,
    TaskStatus,
    ValidationError,
    WaitTimeoutError,
    WorkerNotFoundError,
    WorkerSpec,
)
from node.store.codec import WriteBatch
from node.store.keys import NodeKeys
from tests.conftest import RedisServer, async_wait_until, async_wait_until_async

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def fast_config(**core: Any) -> NodeConfig:
    core.setdefault("heartbeat_timeout_s", 5.0)
    return NodeConfig(core=CoreConfig(**core), tick_max_s=0.02, listener_check_s=0.05, seed=7)


def hgetall_json(r: redis.Redis, key: str) -> dict[str, Any]:
    return {k.decode(): orjson.loads(v) for k, v in r.hgetall(key).items()}


def done_records(r: redis.Redis, node_id: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in r.scan_iter(f"fc:{node_id}:done:*"):
        out.update(hgetall_json(r, key.decode()))
    return out


def test_lifecycle_is_durable_and_readable_with_redis_cli(redis_url: str, redis_server: RedisServer) -> None:
    r = redis_server.client()

    async def main() -> None:
        async with LocalNode.open("n1", redis_url, config=fast_config()) as node:
            ids = await node.submit([TaskSpec("echo", payload=b"hello"), TaskSpec("echo", priority="high")])
            active = hgetall_json(r, "fc:n1:active")
            assert set(active) == set(ids)  # acknowledged => in Redis
            assert active[ids[0]]["status"] == "queued"
            await node.register_worker(WorkerSpec("w1", concurrency=4))
            leases = await node.claim("w1", max_tasks=10)
            assert [lease.task_id for lease in leases] == [ids[1], ids[0]]  # HIGH before MEDIUM
            assert leases[1].payload == b"hello"
            assert hgetall_json(r, "fc:n1:active")[ids[0]]["status"] == "assigned"
            for lease in leases:
                await node.complete(lease, result=b"ok:" + lease.task_id.encode())
            assert r.hlen("fc:n1:active") == 0
            done = done_records(r, "n1")
            assert {done[i]["status"] for i in ids} == {"completed"}
            t = await node.get(ids[0])
            assert t.status is TaskStatus.COMPLETED and t.result == b"ok:" + ids[0].encode()
            counters = {k.decode(): int(v) for k, v in r.hgetall("fc:n1:counters").items()}
            assert counters["submitted"] == 2 and counters["completed"] == 2
            worker = orjson.loads(r.hget("fc:n1:workers", "w1"))
            assert worker["completed"] == 2

    run(main())
    r.close()


class GatedStore(MemoryStore):
    """A MemoryStore whose writes wait for a gate: shows when callers are acknowledged."""

    def __init__(self, node_id: str):
        super().__init__(node_id)
        self.gate = asyncio.Event()
        self.gate.set()
        self.writes: list[WriteBatch] = []

    async def write(self, batch: WriteBatch) -> None:
        await self.gate.wait()
        await super().write(batch)
        self.writes.append(batch)


def test_callers_are_acknowledged_only_after_the_write() -> None:
    async def main() -> None:
        store = GatedStore("n1")
        node = await LocalNode.start("n1", store=store, config=fast_config())
        try:
            store.gate.clear()
            submit = asyncio.create_task(node.submit([TaskSpec("t")]))
            await async_wait_until(lambda: node._committer.inflight is not None, what="the flush to start")
            assert not submit.done()  # its write is held at the gate
            assert store.backend.node("n1").active == {}
            store.gate.set()
            (tid,) = await submit
            assert tid in store.backend.node("n1").active
        finally:
            await node.close()

    run(main())


def test_concurrent_callers_share_group_commits() -> None:
    async def main() -> None:
        store = GatedStore("n1")
        node = await LocalNode.start("n1", store=store, config=fast_config())
        try:
            await node.register_worker(WorkerSpec("w", concurrency=500))
            ids = await node.submit([TaskSpec("t") for _ in range(300)])
            leases = await node.claim("w", 300)
            before = len(store.writes)
            await asyncio.gather(*(node.complete(lease) for lease in leases))
            commits = len(store.writes) - before
            assert 1 <= commits <= 5, commits  # 300 acknowledged completions, a handful of writes
            stats = await node.stats()
            assert stats.totals["completed"] == len(ids)
        finally:
            await node.close()

    run(main())


def test_invalid_batch_writes_nothing(redis_url: str, redis_server: RedisServer) -> None:
    r = redis_server.client()

    async def main() -> None:
        async with LocalNode.open("n1", redis_url, config=fast_config()) as node:
            with pytest.raises(ValidationError) as e:
                await node.submit([TaskSpec("ok"), TaskSpec("ok", difficulty=11), TaskSpec("ok")])
            assert e.value.field == "difficulty" and e.value.index == 1 and "1..10" in str(e.value)
            with pytest.raises(ValidationError) as e:
                await node.submit([TaskSpec("big", payload=b"x" * ((1 << 20) + 1))])
            assert e.value.field == "payload" and "bytes" in str(e.value)
            with pytest.raises(ValidationError, match="unknown task id"):
                await node.submit([TaskSpec("t", dependencies=["no-such-task"])])
            with pytest.raises(ValidationError) as e:
                await node.submit(TaskSpec("t"))  # type: ignore[arg-type]
            assert str(e.value) == "specs: expected a sequence of TaskSpec, got one TaskSpec (pass [spec])"
            assert r.hlen("fc:n1:active") == 0
            assert (await node.stats()).totals.get("submitted", 0) == 0

    run(main())
    r.close()


def test_not_found_and_illegal_transitions(redis_url: str) -> None:
    async def main() -> None:
        async with LocalNode.open("n1", redis_url, config=fast_config()) as node:
            with pytest.raises(TaskNotFoundError, match="task 'nope' not found"):
                await node.get("nope")
            with pytest.raises(WorkerNotFoundError):
                await node.claim("ghost", 1)
            with pytest.raises(TaskNotFoundError):
                await node.cancel("nope")
            (tid,) = await node.submit([TaskSpec("t")])
            await node.register_worker(WorkerSpec("w"))
            (lease,) = await node.claim("w", 1)
            await node.complete(lease)
            with pytest.raises(StaleLeaseError):
                await node.complete(lease)  # never applied twice
            with pytest.raises(InvalidTransitionError, match="completed"):
                await node.cancel(tid)
            with pytest.raises(InvalidTransitionError):
                await node.requeue(tid)
            assert (await node.stats()).totals["completed"] == 1

    run(main())


def test_waits_that_run_out_of_time_say_what_they_waited_for(redis_url: str) -> None:
    async def main() -> None:
        async with LocalNode.open("n1", redis_url, config=fast_config()) as node:
            (tid,) = await node.submit([TaskSpec("t")])
            with pytest.raises(WaitTimeoutError, match=re.escape(f"task '{tid}' is still queued after 0.05 s")) as ei:
                await node.wait(tid, timeout_s=0.05)
            assert isinstance(ei.value, TimeoutError)  # callers catching the builtin still catch it
            assert isinstance(ei.value, FedcoordError)
            async with node.subscribe() as sub:
                with pytest.raises(WaitTimeoutError, match=re.escape("no event within 0.05 s")):
                    await sub.get(0.05)
            await node.register_worker(WorkerSpec("w"))
            (lease,) = await node.claim("w", 1)
            await node.complete(lease, result=b"ok")
            assert (await node.wait(tid, timeout_s=5)).result == b"ok"  # a finished task returns at once

    run(main())


def test_a_malformed_redis_url_is_a_validation_error() -> None:
    async def main() -> None:
        with pytest.raises(ValidationError, match="redis_url: 'localhost:6379'") as ei:
            await LocalNode.start("n1", "localhost:6379")
        assert ei.value.field == "redis_url"

    run(main())


def test_dead_letter_requeue_and_dependencies_on_finished_tasks(redis_url: str) -> None:
    async def main() -> None:
        async with LocalNode.open("n1", redis_url, config=fast_config()) as node:
            await node.register_worker(WorkerSpec("w", concurrency=10))
            good, bad = await node.submit([TaskSpec("t"), TaskSpec("t", max_retries=0)])
            leases = {lease.task_id: lease for lease in await node.claim("w", 10)}
            await node.complete(leases[good])
            await node.fail(leases[bad], "disk full")
            dead = await node.get(bad)
            assert dead.status is TaskStatus.FAILED and dead.error == "disk full"
            # Both are now only in the store's archive: dependencies are resolved from there.
            after_good, after_bad = await node.submit(
                [TaskSpec("t", dependencies=[good]), TaskSpec("t", dependencies=[bad])]
            )
            assert (await node.get(after_good)).status is TaskStatus.QUEUED
            failed = await node.get(after_bad)
            assert failed.status is TaskStatus.FAILED and failed.error == f"dependency {bad} failed"
            await node.requeue(bad)
            again = await node.get(bad)
            assert again.status is TaskStatus.QUEUED and again.failures == 0
            claimed = {lease.task_id for lease in await node.claim("w", 10)}
            assert bad in claimed

    run(main())


def test_idempotency_key_survives_finish_and_restart(redis_url: str) -> None:
    async def main() -> None:
        async with LocalNode.open("n1", redis_url, config=fast_config()) as node:
            (a,) = await node.submit([TaskSpec("t", idempotency_key="order-17")])
            (b,) = await node.submit([TaskSpec("t", idempotency_key="order-17")])
            assert a == b
            await node.register_worker(WorkerSpec("w"))
            (lease,) = await node.claim("w", 1)
            await node.complete(lease)
        async with LocalNode.open("n1", redis_url, config=fast_config()) as node:
            (c,) = await node.submit([TaskSpec("t", idempotency_key="order-17")])
            assert c == a
            assert (await node.stats()).totals["submitted"] == 1

    run(main())


def test_waiting_claim_gets_new_work_and_best_scored_worker_wins(redis_url: str) -> None:
    async def main() -> None:
        async with LocalNode.open("n1", redis_url, config=fast_config()) as node:
            await node.register_worker(WorkerSpec("generalist", skill=10))
            await node.register_worker(WorkerSpec("coder", capabilities=["coding"], skill=10))
            waits = [asyncio.create_task(node.claim(w, 1, wait_s=10)) for w in ("generalist", "coder")]
            await async_wait_until(lambda: len(node._core.waiting_workers()) == 2, what="both claims to wait")
            (tid,) = await node.submit([TaskSpec("coding")])
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            assert waits[1] in done  # capability match scores +50
            assert [lease.task_id for lease in waits[1].result()] == [tid]
            (tid2,) = await node.submit([TaskSpec("anything")])
            assert [lease.task_id for lease in await waits[0]] == [tid2]
            # a waiting claim that times out returns nothing and stops waiting
            assert await node.claim("generalist", 1, wait_s=0.05) == []
            assert node._core.waiting_workers() == []

    run(main())


def test_timeout_retry_and_heartbeat_loss(redis_url: str) -> None:
    async def main() -> None:
        cfg = fast_config(heartbeat_timeout_s=0.3, backoff_base_s=0.05)
        async with LocalNode.open("n1", redis_url, config=cfg) as node:
            await node.register_worker(WorkerSpec("slow"))
            (tid,) = await node.submit([TaskSpec("t", timeout_s=0.1)])
            (lease,) = await node.claim("slow", 1)
            await node.start_task(lease)

            async def requeued() -> bool:
                t = await node.get(tid)
                return t.failures == 1 and t.status is TaskStatus.QUEUED

            await async_wait_until_async(requeued, what="the timed-out task to be requeued")
            t = await node.get(tid)
            assert t.error is not None and t.error.startswith("timed out after 0.1s")
            with pytest.raises(StaleLeaseError):
                await node.complete(lease)
            # a worker that stops heartbeating loses its lease to a live one
            await node.register_worker(WorkerSpec("live"))
            (lease2,) = await node.claim("slow", 1, wait_s=2)
            assert lease2.attempt == 2

            async def slow_lost_while_live_beats() -> bool:
                await node.heartbeat("live")
                return (await node.get(tid)).failures == 2

            await async_wait_until_async(slow_lost_while_live_beats, what="the silent worker to lose its lease")
            (lease3,) = await node.claim("live", 1, wait_s=2)
            assert lease3.task_id == tid and lease3.attempt == 3
            reply = await node.heartbeat("slow")
            assert (tid, 2) in reply.revoked
            await node.complete(lease3)
            assert (await node.get(tid)).status is TaskStatus.COMPLETED

    run(main())


def test_cancel_running_task_reaches_worker_on_heartbeat(redis_url: str) -> None:
    async def main() -> None:
        async with LocalNode.open("n1", redis_url, config=fast_config()) as node:
            parent, child = await node.submit([TaskSpec("t", id="parent"), TaskSpec("t", dependencies=["parent"])])
            await node.register_worker(WorkerSpec("w"))
            (lease,) = await node.claim("w", 1)
            assert await node.cancel(parent) is TaskStatus.ASSIGNED
            assert await node.cancel(parent) is TaskStatus.CANCELLED  # again: a no-op
            reply = await node.heartbeat("w")
            assert reply.revoked == ((parent, 1),)
            with pytest.raises(StaleLeaseError):
                await node.complete(lease)
            assert (await node.get(child)).status is TaskStatus.FAILED

    run(main())


def test_events_in_process_and_on_redis_pubsub(redis_url: str, redis_server: RedisServer) -> None:
    r = redis_server.client()
    ps = r.pubsub()
    ps.subscribe(NodeKeys("n1").events)
    assert ps.get_message(timeout=5)["type"] == "subscribe"

    async def main() -> list[tuple[str, str]]:
        async with LocalNode.open("n1", redis_url, config=fast_config()) as node:
            await async_wait_until(lambda: node._redis_listeners == 1, what="the node to see the subscriber")
            async with node.subscribe() as sub:
                (tid,) = await node.submit([TaskSpec("t")])
                await node.register_worker(WorkerSpec("w"))
                (lease,) = await node.claim("w", 1)
                await node.complete(lease)
                seen = [await sub.get(5) for _ in range(3)]
                assert all(e.task_id == tid for e in seen)
                return [(e.kind.value, e.status.value) for e in seen]

    kinds = run(main())
    assert kinds == [("new_task", "queued"), ("task_updated", "assigned"), ("task_updated", "completed")]
    published: list[tuple[str, str]] = []
    while len(published) < 3:
        msg = ps.get_message(timeout=5)
        assert msg is not None, "no event published on Redis"
        published += [(e["action"], e["status"]) for e in orjson.loads(msg["data"])]
    assert published == kinds
    ps.close()
    r.close()


def test_second_process_for_same_node_is_refused(redis_url: str) -> None:
    async def main() -> None:
        async with LocalNode.open("n1", redis_url, config=fast_config()):
            with pytest.raises(NodeOwnedError, match="already served by pid"):
                await LocalNode.start("n1", redis_url, config=fast_config())
            async with LocalNode.open("n2", redis_url, config=fast_config()) as other:
                assert other.state is NodeState.SERVING

    run(main())


def test_fenced_when_another_process_takes_over(redis_url: str, redis_server: RedisServer) -> None:
    r = redis_server.client()

    async def main() -> None:
        node = await LocalNode.start("n1", redis_url, config=fast_config())
        try:
            await node.submit([TaskSpec("t")])
            r.delete("fc:n1:owner")  # the lock expired while this process was paused...
            usurper = await LocalNode.start("n1", redis_url, config=fast_config())  # ...and another took over
            try:
                with pytest.raises(FencedError):
                    await node.submit([TaskSpec("late")])
                assert node.state is NodeState.FENCED
                with pytest.raises(FencedError):
                    await node.stats()
                assert len(usurper._core.tasks) == 1  # the late write never landed
            finally:
                await usurper.close()
        finally:
            await node.close()

    run(main())
    r.close()


def test_restart_restores_queues_leases_and_workers(redis_url: str) -> None:
    async def main() -> None:
        cfg = fast_config()
        async with LocalNode.open("n1", redis_url, config=cfg) as node:
            expiring = await node.submit([TaskSpec("x", timeout_s=0.05)])
            await node.register_worker(WorkerSpec("w", concurrency=5))
            (short,) = await node.claim("w", 1)
            ids = await node.submit([TaskSpec("t", priority=p) for p in ("low", "high", "medium", "critical")])
            (held,) = await node.claim("w", 1)
            assert held.task_id == ids[3] and short.task_id == expiring[0]
        # the short lease expires while no node runs
        await async_wait_until(lambda: time.time_ns() > short.deadline_ns, what="the lease deadline to pass")
        async with LocalNode.open("n1", redis_url, config=cfg) as node:
            assert (await node.get(held.task_id)).status is TaskStatus.ASSIGNED
            expired = await node.get(short.task_id)
            assert expired.status is TaskStatus.QUEUED and expired.failures == 1  # expired lease requeued...
            assert expired.not_before_ns > expired.created_ns  # ...after a backoff
            await node.complete(held)  # the lease survived the restart
            order = [lease.task_id for lease in await node.claim("w", 5)]
            assert order == [ids[1], ids[2], ids[0]]  # queues rebuilt in priority order
            assert [w.id for w in await node.workers()] == ["w"]

    run(main())


def test_store_unavailable_then_recovers_without_losing_acknowledged_work(own_redis: RedisServer) -> None:
    r = own_redis.client()

    async def main() -> None:
        async with LocalNode.open("n1", own_redis.url, config=fast_config()) as node:
            acked = await node.submit([TaskSpec("t") for _ in range(20)])
            own_redis.kill()
            with pytest.raises(Exception) as e:
                await node.submit([TaskSpec("t")])
            assert type(e.value).__name__ == "StoreUnavailableError"
            assert node.state is NodeState.DEGRADED
            with pytest.raises(Exception, match="unavailable"):
                await node.submit([TaskSpec("t")])
            own_redis.start()
            await async_wait_until(lambda: node.state is NodeState.SERVING, 20, "the node to recover")
            stored = {k.decode() for k in r.hkeys("fc:n1:active")}
            assert set(acked) <= stored
            assert set(node._core.tasks) == stored  # memory agrees with Redis
            more = await node.submit([TaskSpec("t")])
            assert set(more) <= {k.decode() for k in r.hkeys("fc:n1:active")}

    run(main())
    r.close()


def test_finished_tasks_expire_after_retention(redis_url: str) -> None:
    async def main() -> None:
        cfg = dataclasses.replace(fast_config(), retention_s=1.0)
        async with LocalNode.open("n1", redis_url, config=cfg) as node:
            (tid,) = await node.submit([TaskSpec("t")])
            await node.cancel(tid)
            assert (await node.get(tid)).status is TaskStatus.CANCELLED

            async def gone() -> bool:
                try:
                    await node.get(tid)
                except TaskNotFoundError:
                    return True
                return False

            await async_wait_until_async(gone, 10, "the finished task to expire")

    run(main())


def test_stats_and_report(redis_url: str) -> None:
    async def main() -> None:
        async with LocalNode.open("n1", redis_url, config=fast_config()) as node:
            await node.submit([TaskSpec("a", priority="high"), TaskSpec("a"), TaskSpec("b", priority="low")])
            await node.register_worker(WorkerSpec("w", concurrency=3))
            leases = await node.claim("w", 2)
            await node.complete(leases[0])
            await node.fail(leases[1], "boom", retry=False)
            s = await node.stats()
            assert s.active_by_status["queued"] == 1
            assert s.active_by_priority == {"critical": 0, "high": 0, "medium": 0, "low": 1}
            assert s.active_by_type == {"b": 1}
            assert s.totals["completed"] == 1 and s.totals["failed"] == 1 and s.totals["submitted"] == 3
            assert s.totals_by_type["a"] == {"completed": 1, "failed": 1}
            assert s.error_rate == 0.5 and s.failures_by_kind == {"task_error": 1}
            assert s.scaling.workers == 1
            rep = await node.report()
            assert rep.completed == 1 and rep.failed == 1
            assert rep.worker_stats["w"]["completed_tasks"] == 1 and rep.worker_stats["w"]["failed_tasks"] == 1
            assert rep.worker_stats["w"]["success_rate"] == 0.5

    run(main())


def test_dependency_finishing_while_submit_awaits_the_store(redis_url: str) -> None:
    class HeldLookups(RedisStore):
        """A real RedisStore whose idempotency lookups wait until the test lets them go."""

        def __init__(self, node_id: str, url: str):
            super().__init__(node_id, url)
            self.entered = asyncio.Event()
            self.go = asyncio.Event()

        async def get_idempotency(self, keys: Sequence[str]) -> dict[str, str]:
            self.entered.set()
            await self.go.wait()
            return await super().get_idempotency(keys)

    async def main() -> None:
        store = HeldLookups("n1", redis_url)
        async with LocalNode.open("n1", store=store, config=fast_config()) as node:
            await node.register_worker(WorkerSpec("w"))
            (parent,) = await node.submit([TaskSpec("a")])
            (lease,) = await node.claim("w", 1)
            # the idempotency key makes submit await a store lookup; the parent finishes meanwhile
            child = asyncio.create_task(node.submit([TaskSpec("b", dependencies=[parent], idempotency_key="k")]))
            await store.entered.wait()
            await node.complete(lease)
            store.go.set()
            (cid,) = await child
            assert (await node.get(cid)).status is TaskStatus.QUEUED

    run(main())


def test_a_failed_start_lets_go_of_the_lock() -> None:
    class FailingLoad(MemoryStore):
        async def iter_active(self):  # type: ignore[no-untyped-def,override]
            raise StoreUnavailableError("store went away during the load")
            yield  # pragma: no cover - makes this an async generator

    async def main() -> None:
        backend = MemoryBackend()
        with pytest.raises(StoreUnavailableError, match="during the load"):
            await LocalNode.start("n1", store=FailingLoad("n1", backend), config=fast_config())
        node = await LocalNode.start("n1", store=MemoryStore("n1", backend), config=fast_config())
        assert node.state is NodeState.SERVING  # not "already served by" the failed attempt
        await node.close()

    run(main())


def test_finished_tasks_are_found_by_the_node_s_clock_not_the_wall_clock(redis_url: str) -> None:
    """Writes file finished tasks under the bucket of the node's clock: lookups must search by
    it too (a node whose clock runs 3 h ahead of this machine's, say in a simulation)."""
    ahead_ns = 3 * 3600 * 1_000_000_000

    async def main() -> None:
        async with LocalNode.open(
            "n1", redis_url, config=fast_config(), clock_ns=lambda: time.time_ns() + ahead_ns
        ) as node:
            (tid,) = await node.submit([TaskSpec("t")])
            await node.register_worker(WorkerSpec("w"))
            (lease,) = await node.claim("w", 1)
            await node.complete(lease, result=b"ok")
            t = await node.get(tid)
            assert (t.status, t.result) == (TaskStatus.COMPLETED, b"ok")
            assert (await node.wait(tid, timeout_s=5)).result == b"ok"

    run(main())
