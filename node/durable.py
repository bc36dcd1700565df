"""The machinery under :class:`~node.runtime.LocalNode`: the core made durable by group commit.

Every mutating call runs the core synchronously, then waits for the *group commit* that makes
its change durable: a flusher task takes everything the core produced since the last commit
(from all concurrent callers), encodes it, and writes it in one atomic store write; all those
callers are acknowledged together when it returns. A caller is never told "done" before its
change is in the store.

If a write fails (store unreachable) the node stops taking calls (``StoreUnavailableError``),
throws its in-memory state away and, once the store answers again, reloads everything from it:
memory never diverges from what the store holds. Another process taking over the node id
(``FencedError``) stops this one for good. Timers: lease deadlines and retries (the ticker), the
owner lock, listeners of the event channel, per-minute history.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import gc
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.analytics import Analytics, MinuteRow
from node.core import Core, CoreConfig, Outbox
from node.embedded import EmbeddedRedis
from node.errors import (
    FedcoordError,
    FencedError,
    NodeClosedError,
    StoreError,
    StoreUnavailableError,
)
from node.events import EventHub
from node.model import Lease, Task, check_name
from node.store.base import Store
from node.store.codec import CorruptRecordError, decode_task, decode_worker, encode_batch

__all__ = ["DurableNode", "NodeConfig", "NodeState", "default_data_dir"]

log = logging.getLogger("fedcoord.node")


class NodeState(enum.StrEnum):
    STARTING = "starting"
    SERVING = "serving"
    DEGRADED = "degraded"  # the store failed; reloading from it once it answers
    FENCED = "fenced"  # another process owns this node id now
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Runtime settings of a node (the scheduling settings are in ``core``)."""

    core: CoreConfig = field(default_factory=CoreConfig)
    retention_s: float = 86400.0  # finished tasks are kept this long (rounded up to an hour bucket)
    lock_ttl_s: float = 10.0  # owner lock lifetime; refreshed every third of it
    lock_wait_s: float = 0.0  # how long start() waits for another owner to let go
    tick_max_s: float = 0.25  # timeouts and retries fire at most this late
    history: bool = True  # keep per-minute analytics in the store (24 h)
    listener_check_s: float = 1.0  # how often to look for subscribers of the event channel
    seed: int | None = None  # random seed (ids, backoff jitter); None: from the OS
    # After loading, move what was loaded out of the garbage collector's sight (gc.freeze):
    # long-lived task records then cost nothing in later collections. Process-wide.
    gc_freeze: bool = True
    # Collector thresholds set at start (process-wide), or None to leave them alone. Every task
    # allocates a few objects; with Python's default (700, 10, 10) the collector runs every few
    # hundred tasks and rescans young tasks again and again.
    gc_thresholds: tuple[int, int, int] | None = (50_000, 20, 100)


def default_data_dir(node_id: str) -> Path:
    base = os.environ.get("FEDCOORD_HOME") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "fedcoord"
    )
    return Path(base) / "nodes" / node_id


class DurableNode:
    """State, group commit, failure handling, reload and timers of a node (no public calls)."""

    def __init__(
        self,
        node_id: str,
        store: Store,
        *,
        config: NodeConfig | None = None,
        embedded: EmbeddedRedis | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ):
        self.node_id = check_name("node_id", node_id)
        self.config = cfg = config or NodeConfig()
        self._core_cfg = dataclasses.replace(cfg.core, node_id=self.node_id)
        self._store = store
        self._embedded = embedded
        self._clock = clock_ns
        self._last_ns = 0
        self._rng = random.Random(cfg.seed if cfg.seed is not None else int.from_bytes(os.urandom(8), "big"))
        self._core = Core(self._core_cfg, random.Random(self._rng.getrandbits(64)))
        self._state = NodeState.STARTING
        self._cause: BaseException | None = None
        self._pending: list[asyncio.Future[None]] = []
        self._inflight: Outbox | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()  # set by close(): background loops end
        self._flush_lock = asyncio.Lock()
        self._claim_waits: dict[str, asyncio.Future[list[Lease]]] = {}
        self._watchers: dict[str, list[asyncio.Future[Task]]] = {}
        self._hub = EventHub()
        self._redis_listeners = 0
        self._analytics = Analytics(self.node_id, self._now())
        self._background: list[asyncio.Task[None]] = []
        self._flusher_task: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self.corrupt_records = 0

    async def _boot(self) -> None:
        if self.config.gc_thresholds is not None:
            gc.set_threshold(*self.config.gc_thresholds)
        store = self._store
        await store.open()
        warning = getattr(store, "durability_warning", None)
        if warning:
            log.warning("%s", warning)
        await store.acquire(wait_s=self.config.lock_wait_s, lock_ttl_s=self.config.lock_ttl_s)
        await self._reload()
        self._state = NodeState.SERVING
        self._flusher_task = asyncio.create_task(self._flusher(), name=f"fc-flusher-{self.node_id}")
        for fn in (self._ticker, self._lock_keeper, self._listener_check):
            self._background.append(asyncio.create_task(fn(), name=f"fc-{fn.__name__}-{self.node_id}"))
        log.info(
            "node %s serving from %s: %d active tasks, %d workers",
            self.node_id,
            store.description,
            len(self._core.tasks),
            len(self._core.workers),
        )

    async def _shutdown(self, *, release: bool) -> None:
        if self._flusher_task is not None:
            self._flusher_task.cancel()
            await asyncio.gather(self._flusher_task, return_exceptions=True)
        self._fail_all(NodeClosedError(f"node {self.node_id!r} is closed"))
        self._hub.close_all()
        if release:
            with contextlib.suppress(StoreError):
                await self._store.release()
        with contextlib.suppress(StoreError):
            await self._store.close()
        if self._embedded is not None:
            self._embedded.stop()
        self._state = NodeState.CLOSED

    @property
    def state(self) -> NodeState:
        return self._state

    @property
    def store(self) -> Store:
        return self._store

    @property
    def embedded(self) -> EmbeddedRedis | None:
        return self._embedded

    def _now(self) -> int:
        t = max(self._clock(), self._last_ns)  # monotonic for the core even if the wall clock steps back
        self._last_ns = t
        return t

    def _check(self) -> Core:
        if self._state is NodeState.SERVING:
            return self._core
        if self._state is NodeState.DEGRADED:
            raise StoreUnavailableError(
                f"node {self.node_id!r}: {self._store.description} is unavailable ({self._cause}); "
                "nothing is acknowledged until it is back (the node retries on its own)"
            )
        if self._state is NodeState.FENCED:
            raise FencedError(f"node {self.node_id!r} was taken over by another process ({self._cause})")
        if self._state is NodeState.STARTING:
            raise NodeClosedError(f"node {self.node_id!r} is still starting")
        raise NodeClosedError(f"node {self.node_id!r} is closed")

    def _commit(self) -> asyncio.Future[None]:
        """A future that resolves when everything the core did so far is durable."""
        fut = asyncio.get_running_loop().create_future()
        self._pending.append(fut)
        self._wake.set()
        return fut

    async def _flusher(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._state is not NodeState.SERVING:
                continue
            await self._flush_once()

    async def _flush_once(self) -> None:
        async with self._flush_lock:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        waiters, self._pending = self._pending, []
        out = self._core.drain()
        if not out:
            for f in waiters:
                if not f.done():
                    f.set_result(None)
            return
        now = self._now()
        self._inflight = out
        try:
            batch = encode_batch(out, now, with_events=self._redis_listeners > 0)
            await self._store.write(batch)
        except (StoreError, FedcoordError) as e:
            self._inflight = None
            self._fail(waiters, out, e)
            self._degrade(e)
            return
        except Exception as e:  # a bug (say, in encoding): never acknowledge, and say so loudly
            log.exception("node %s: group commit failed unexpectedly", self.node_id)
            self._inflight = None
            err = StoreUnavailableError(f"group commit failed: {e!r}")
            self._fail(waiters, out, err)
            self._degrade(err)
            return
        self._inflight = None
        for f in waiters:
            if not f.done():
                f.set_result(None)
        if out.grants:
            self._deliver_grants(out)
        self._analytics.record(out, now, batch.counters)
        if out.finished and self._watchers:
            self._notify_watchers(out)
        if self._hub and out.events:
            self._hub.publish(out.event_list())

    def _fail(self, waiters: list[asyncio.Future[None]], out: Outbox, err: BaseException) -> None:
        _reject(waiters, err)
        _reject((self._claim_waits.pop(wid) for wid in out.grants if wid in self._claim_waits), err)

    def _fail_all(self, err: BaseException) -> None:
        waiters, self._pending = self._pending, []
        _reject(waiters, err)
        _reject(self._claim_waits.values(), err)
        self._claim_waits.clear()
        for futs in self._watchers.values():
            _reject(futs, err)
        self._watchers.clear()

    def _degrade(self, err: BaseException) -> None:
        if self._state is not NodeState.SERVING:
            return
        self._cause = err
        if isinstance(err, FencedError):
            self._state = NodeState.FENCED
            log.error("node %s: %s; stopping", self.node_id, err)
            self._fail_all(err)
            return
        self._state = NodeState.DEGRADED
        log.error("node %s: store write failed (%s); refusing calls until it is back", self.node_id, err)
        self._fail_all(StoreUnavailableError(str(err)))
        self._core.drain()  # what the core did since is not durable; the reload replaces it
        self._recovery = asyncio.create_task(self._recover(), name=f"fc-recover-{self.node_id}")

    async def _recover(self) -> None:
        delay = 0.05
        while self._state is NodeState.DEGRADED:
            if self._embedded is not None and self._embedded.ensure_running():
                log.warning("node %s: embedded redis-server restarted", self.node_id)
            try:
                await self._store.ping()
                await self._store.reconnect()
                await self._store.refresh()
                await self._reload()
            except FencedError as e:
                self._cause = e
                self._state = NodeState.FENCED
                log.error("node %s: %s; stopping", self.node_id, e)
                return
            except (StoreError, OSError) as e:
                log.debug("node %s: store still unavailable: %s", self.node_id, e)
                if await self._pause(delay):  # backing off while an external service is down
                    return
                delay = min(delay * 2, 2.0)
                continue
            except Exception:  # a bug must not end recovery silently: say so, and keep trying
                log.exception("node %s: reload after a store failure failed; retrying", self.node_id)
                if await self._pause(2.0):
                    return
                continue
            self._state = NodeState.SERVING
            self._cause = None
            log.warning("node %s: store is back; reloaded %d active tasks", self.node_id, len(self._core.tasks))

    async def _reload(self) -> None:
        """Rebuild the core from the store: active tasks, queues, workers; expired leases requeued.

        Records are decoded chunk by chunk as they arrive. The cyclic garbage collector is off
        meanwhile (a million new objects would trigger full collections over a growing heap)
        and the loaded objects are then frozen out of later collections (``gc.freeze``).
        """
        t0 = time.perf_counter()
        gc_was_on = gc.isenabled()
        gc.disable()
        try:
            tasks: list[Task] = []  # restore() drops the duplicates a hash scan may return
            append = tasks.append
            async for chunk in self._store.iter_active():
                for raw in chunk:
                    try:
                        append(decode_task(raw))
                    except CorruptRecordError as e:
                        self.corrupt_records += 1
                        log.error("node %s: skipping a corrupt task record: %s", self.node_id, e)
            t_decoded = time.perf_counter()
            snap = await self._store.load(with_tasks=False)
            now = self._now()
            workers = []
            for raw in snap.workers:
                try:
                    workers.append(decode_worker(raw))
                except CorruptRecordError as e:
                    self.corrupt_records += 1
                    log.error("node %s: skipping a corrupt worker record: %s", self.node_id, e)
            core = Core(self._core_cfg, random.Random(self._rng.getrandbits(64)))
            core.emit_events = bool(self._hub) or self._redis_listeners > 0
            core.restore(tasks, workers, now)
            core.tick(now)
            t_restored = time.perf_counter()
        finally:
            if gc_was_on:
                gc.enable()
        if self.config.gc_freeze:
            gc.freeze()
        rows: list[MinuteRow] = []
        if self.config.history:
            for _, raw in await self._store.read_history(now // 1_000_000 - 86_400_000):
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    rows.append(MinuteRow.from_json(raw))
        first_load = self._state is NodeState.STARTING
        self._analytics.restore(snap.counters, rows, [w.info() for w in workers] if first_load else ())
        self._core = core
        out = core.drain()
        if out:  # what restoring changed (leases of lost workers put back in line)
            batch = encode_batch(out, now, with_events=False)
            await self._store.write(batch)
            self._analytics.record(out, now, batch.counters)
        log.info(
            "node %s: loaded %d tasks and %d workers in %.2fs (read and decode %.2fs, rebuild %.2fs)",
            self.node_id,
            len(core.tasks),
            len(workers),
            time.perf_counter() - t0,
            t_decoded - t0,
            t_restored - t_decoded,
        )

    async def _pause(self, delay_s: float) -> bool:
        """A timer: wait ``delay_s``; True if the node is stopping meanwhile."""
        if self._stop.is_set():
            return True
        try:
            await asyncio.wait_for(self._stop.wait(), delay_s)
        except TimeoutError:
            return False
        return True

    async def _ticker(self) -> None:
        max_s = self.config.tick_max_s
        while True:
            nxt = self._core.next_deadline_ns()
            delay = max_s if nxt is None else min(max(1e-3, (nxt - self._now()) / 1e9), max_s)
            if await self._pause(delay):  # until the earliest lease deadline, retry or heartbeat check
                return
            if self._state is not NodeState.SERVING:
                continue
            now = self._now()
            self._core.tick(now)
            if self._core.out:
                self._wake.set()
            if self.config.history and self._analytics.minute.minute_ms < (now // 60_000_000_000) * 60_000:
                await self._write_history()

    async def _write_history(self, *, final: bool = False) -> None:
        rows = self._analytics.roll(self._now())
        if final:
            rows.append(self._analytics.minute)
        if not self.config.history:
            return
        for row in rows:
            try:
                await self._store.append_history(row.minute_ms, row.to_json())
            except StoreError as e:
                log.warning("node %s: could not store analytics history: %s", self.node_id, e)
                return

    async def _lock_keeper(self) -> None:
        every = self.config.lock_ttl_s / 3
        while not await self._pause(every):  # keep the owner lock alive
            if self._state is not NodeState.SERVING:
                continue
            try:
                await self._store.refresh()
            except FencedError as e:
                self._degrade(e)
            except StoreError as e:
                log.warning("node %s: could not refresh the owner lock: %s", self.node_id, e)

    async def _listener_check(self) -> None:
        while not self._stop.is_set():
            if self._state is NodeState.SERVING:
                with contextlib.suppress(StoreError):  # the next write tells whether the store is down
                    self._redis_listeners = await self._store.subscribers()
                self._core.emit_events = bool(self._hub) or self._redis_listeners > 0
            await self._pause(self.config.listener_check_s)

    async def _finished(self, ids: Sequence[str]) -> dict[str, Task]:
        """Finished tasks by id: not yet durable ones from memory, then the store's archive."""
        found: dict[str, Task] = {}
        for out in (self._core.out, self._inflight):
            if out is not None:
                for tid in ids:
                    t = out.finished.get(tid)
                    if t is not None:
                        found[tid] = t
        rest = [tid for tid in ids if tid not in found]
        if rest:
            for tid, raw in (await self._store.get_finished(rest, now_ns=self._now())).items():
                try:
                    found[tid] = decode_task(raw)
                except CorruptRecordError as e:
                    log.error("node %s: corrupt archived record: %s", self.node_id, e)
        return found

    def _dirty(self, task_id: str) -> bool:
        out = self._core.out
        if task_id in out.saved or task_id in out.finished:
            return True
        inflight = self._inflight
        return inflight is not None and (task_id in inflight.saved or task_id in inflight.finished)

    def _notify_watchers(self, out: Outbox) -> None:
        for tid, t in out.finished.items():
            futs = self._watchers.pop(tid, None)
            if futs:
                for fut in futs:
                    if not fut.done():
                        fut.set_result(dataclasses.replace(t))

    def _deliver_grants(self, out: Outbox) -> None:
        for wid, leases in out.grants.items():
            fut = self._claim_waits.pop(wid, None)
            if fut is not None and not fut.done():
                fut.set_result(leases)
            else:  # nobody waits any more: the leases expire and the tasks are retried
                log.warning("node %s: %d leases granted to %s after it stopped waiting", self.node_id, len(leases), wid)


def _reject(futs: Iterable[asyncio.Future[Any]], err: BaseException) -> None:
    for f in futs:
        if not f.done():
            f.set_exception(err)
