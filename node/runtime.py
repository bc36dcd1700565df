"""LocalNode: one node's task manager, the Python API. The pure core in memory, durable by group
commit (the machinery is in :mod:`node.durable`): every mutating call returns once its change is
in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence

from node.analytics import NodeStats, PerformanceReport
from node.core import HeartbeatReply, WorkerInfo
from node.durable import DurableNode, NodeConfig, NodeState, default_data_dir
from node.embedded import EmbeddedRedis
from node.errors import (
    InvalidTransitionError,
    TaskNotFoundError,
    WaitTimeoutError,
)
from node.events import Subscription
from node.model import Lease, Task, TaskSpec, TaskStatus, WorkerSpec, check_batch, check_name
from node.store.base import Store
from node.store.redis_store import RedisStore

__all__ = ["LocalNode", "NodeConfig", "NodeState", "default_data_dir"]


class LocalNode(DurableNode):
    """The Python API of one node. Create it with :meth:`open` (or :meth:`start` / :meth:`close`)."""

    # ------------------------------------------------------------------ opening and closing

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        node_id: str = "node",
        redis_url: str | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        config: NodeConfig | None = None,
        store: Store | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> AsyncIterator[LocalNode]:
        """``async with LocalNode.open(node_id="n1") as node:`` - start, serve, close.

        With no ``redis_url`` (and no ``store``) the node runs a private redis-server with an
        append-only file in ``data_dir`` (default ``~/.local/share/fedcoord/nodes/<id>``).
        """
        node = await cls.start(node_id, redis_url, data_dir, config=config, store=store, clock_ns=clock_ns)
        try:
            yield node
        finally:
            await node.close()

    @classmethod
    async def start(
        cls,
        node_id: str = "node",
        redis_url: str | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        config: NodeConfig | None = None,
        store: Store | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> LocalNode:
        """Start a node and return it serving; call :meth:`close` when done. ``clock_ns`` is the
        node's clock (Unix ns): task times, lease deadlines and archive buckets follow it."""
        node_id = check_name("node_id", node_id)
        config = config or NodeConfig()
        embedded = None
        if store is None:
            if redis_url is None:
                embedded = EmbeddedRedis(data_dir if data_dir is not None else default_data_dir(node_id))
                redis_url = embedded.start()
            store = RedisStore(node_id, redis_url, retention_s=config.retention_s)
        node = cls(node_id, store, config=config, embedded=embedded, clock_ns=clock_ns)
        try:
            await node._boot()
        except BaseException:
            await node._shutdown(release=True)  # a lock taken before the failure is let go at once
            raise
        return node

    async def close(self) -> None:
        """Stop taking calls, commit what was acknowledged-pending, release the node and its Redis."""
        if self._state in (NodeState.CLOSING, NodeState.CLOSED):
            return
        prev = self._state
        self._state = NodeState.CLOSING
        for fut in self._claim_waits.values():
            if not fut.done():
                fut.set_result([])
        self._claim_waits.clear()
        self._stop.set()
        loops = [*self._background, *([self._recovery] if self._recovery is not None else [])]
        _, stuck = await asyncio.wait(loops, timeout=5.0) if loops else (set(), set())
        for t in stuck:  # a loop inside a slow store call: cut it short
            t.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        if prev is NodeState.SERVING and self._flusher_task is not None:
            await self._flush_once()  # the last group commit, acknowledges its callers
            await self._write_history(final=True)
        await self._shutdown(release=prev is not NodeState.FENCED)

    async def submit(self, specs: Sequence[TaskSpec]) -> list[str]:
        """Add tasks (all or nothing); returns their ids once they are durable."""
        core = self._check()
        specs = check_batch(specs)
        known: dict[str, TaskStatus] = {}
        known_keys: dict[str, str] = {}
        refs, keys = self._references(specs)
        if keys:
            known_keys = await self._store.get_idempotency(keys)
        # Dependencies (and explicit ids) that are not active are looked up among finished
        # tasks. One may finish while we await, so look again until a pass needs no lookup:
        # then what the core sees is consistent. Every pass resolves at least one id.
        missing: set[str] = set()
        while True:
            core = self._check()
            lookups = [tid for tid in refs if tid not in core.tasks and tid not in known and tid not in missing]
            if not lookups:
                break
            found = await self._finished(lookups)
            known.update((tid, t.status) for tid, t in found.items())
            missing.update(tid for tid in lookups if tid not in found)
        ids = core.submit(specs, self._now(), known=known, known_keys=known_keys)
        await self._commit()
        return ids

    @staticmethod
    def _references(specs: list[TaskSpec]) -> tuple[list[str], list[str]]:
        """Task ids the specs refer to (dependencies, explicit ids) and their idempotency keys."""
        ids: list[str] = []
        keys: list[str] = []
        for s in specs:
            if type(s) is not TaskSpec:
                continue  # the core rejects it with a precise error
            deps = s.dependencies
            if deps and isinstance(deps, list | tuple):
                ids.extend(d for d in deps if isinstance(d, str))
            if isinstance(s.id, str):
                ids.append(s.id)
            if isinstance(s.idempotency_key, str) and s.idempotency_key:
                keys.append(s.idempotency_key)
        return ids, keys

    async def get(self, task_id: str) -> Task:
        """The task's current record (a copy). Changes not yet durable are waited for."""
        core = self._check()
        if self._dirty(task_id):
            await self._commit()
            core = self._check()
        t = core.get(task_id)
        if t is not None:
            return dataclasses.replace(t)
        found = await self._finished([task_id])
        if task_id in found:
            return dataclasses.replace(found[task_id])
        raise TaskNotFoundError(task_id)

    async def wait(self, task_id: str, timeout_s: float | None = None) -> Task:
        """Wait until the task is finished (durably) and return its final record.
        :class:`~node.errors.WaitTimeoutError` after ``timeout_s`` (the task goes on)."""
        t = await self.get(task_id)
        if t.status.terminal:
            return t
        fut: asyncio.Future[Task] = asyncio.get_running_loop().create_future()
        self._watchers.setdefault(task_id, []).append(fut)
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            if timeout_s is None:  # not our time limit: pass it on as it is
                raise
            active = self._core.tasks.get(task_id)
            state = f"still {active.status.value}" if active is not None else "not finished"
            raise WaitTimeoutError(f"task {task_id!r} is {state} after {timeout_s:g} s") from None
        finally:
            futs = self._watchers.get(task_id)
            if futs is not None and fut in futs:
                futs.remove(fut)
                if not futs:
                    del self._watchers[task_id]

    async def cancel(self, task_id: str) -> TaskStatus:
        """Cancel a task; returns the status it had. Cancelling a cancelled task is a no-op; a
        task that finished otherwise cannot be cancelled. A running worker learns of it on its
        next heartbeat; tasks that depend on it fail."""
        core = self._check()
        if task_id in core.tasks:
            prev = core.cancel(task_id, self._now())
            await self._commit()
            return prev
        found = await self._finished([task_id])
        t = found.get(task_id)
        if t is None:
            raise TaskNotFoundError(task_id)
        if t.status is TaskStatus.CANCELLED:
            return t.status
        raise InvalidTransitionError(task_id, t.status.value, "cancel", "an active task")

    async def requeue(self, task_id: str) -> None:
        """Put a failed (dead-lettered) task back in line with a fresh retry budget."""
        core = self._check()
        if task_id in core.tasks:
            raise InvalidTransitionError(task_id, core.tasks[task_id].status.value, "requeue", "status failed")
        found = await self._finished([task_id])
        t = found.get(task_id)
        if t is None:
            raise TaskNotFoundError(task_id)
        core = self._check()
        core.requeue(dataclasses.replace(t), self._now())
        await self._commit()

    async def register_worker(self, spec: WorkerSpec) -> WorkerInfo:
        core = self._check()
        info = core.register_worker(spec, self._now())
        await self._commit()
        return info

    async def deregister_worker(self, worker_id: str) -> None:
        core = self._check()
        core.deregister_worker(worker_id, self._now())
        waiting = self._claim_waits.pop(worker_id, None)
        if waiting is not None and not waiting.done():
            waiting.set_result([])
        await self._commit()

    async def heartbeat(self, worker_id: str) -> HeartbeatReply:
        """The worker is alive; the reply lists leases it must drop (cancelled or reassigned)."""
        core = self._check()
        reply = core.heartbeat(worker_id, self._now())
        if core.out:
            self._wake.set()
        return reply

    async def claim(self, worker_id: str, max_tasks: int = 1, *, wait_s: float = 0.0) -> list[Lease]:
        """Lease up to ``max_tasks`` tasks. With ``wait_s``, wait that long for work when none is
        ready; when several workers wait, new work goes to the best-scored one."""
        core = self._check()
        leases = core.claim(worker_id, max_tasks, self._now(), wait=wait_s > 0)
        if leases:
            await self._commit()
            return leases
        if core.out:
            self._wake.set()
        if wait_s <= 0:
            return leases
        prev = self._claim_waits.pop(worker_id, None)
        if prev is not None and not prev.done():
            prev.set_result([])  # a newer claim from the same worker replaces this one
        fut: asyncio.Future[list[Lease]] = asyncio.get_running_loop().create_future()
        self._claim_waits[worker_id] = fut
        try:
            return await asyncio.wait_for(asyncio.shield(fut), wait_s)
        except TimeoutError:
            if self._claim_waits.get(worker_id) is fut and worker_id in core.waiting_workers():
                core.cancel_wait(worker_id)
                del self._claim_waits[worker_id]
                return []
            return await fut  # work was granted in a commit still being written
        except asyncio.CancelledError:
            if self._claim_waits.get(worker_id) is fut:
                core.cancel_wait(worker_id)
                del self._claim_waits[worker_id]
            raise

    async def start_task(self, lease: Lease) -> None:
        """The worker started the task: its timeout now counts from here."""
        core = self._check()
        core.start(lease, self._now())
        await self._commit()

    async def complete(self, lease: Lease, result: bytes = b"") -> None:
        """The task succeeded. Acknowledged once durable; a stale lease gets StaleLeaseError."""
        core = self._check()
        core.complete(lease, result, self._now())
        await self._commit()

    async def fail(self, lease: Lease, error: str, *, retry: bool = True) -> None:
        """The attempt failed: retried after a backoff while retries remain (unless ``retry`` is
        False), then failed for good with ``error`` kept."""
        core = self._check()
        core.fail(lease, error, self._now(), retry=retry)
        await self._commit()

    def subscribe(self, *, max_queue: int = 10_000) -> Subscription:
        """Task events (new_task, task_updated) as they become durable: ``async for e in sub``."""
        sub = self._hub.subscribe(max_queue)
        self._core.emit_events = True
        return sub

    async def workers(self) -> list[WorkerInfo]:
        core = self._check()
        return [w.info() for w in core.workers.values()]

    async def stats(self) -> NodeStats:
        core = self._check()
        now = self._now()
        return self._analytics.stats(
            now,
            by_status={k.value: v for k, v in core.status_counts().items()},
            by_priority={k.value: v for k, v in core.priority_counts().items()},
            by_type=core.type_counts(),
            workers=[w.info() for w in core.workers.values()],
            scaling=core.advice(),
            leased=core.leased(),
            store=self._store.description,
            state=self._state.value,
        )

    async def report(self) -> PerformanceReport:
        """Seed 001's final performance report, with per-worker statistics."""
        core = self._check()
        return self._analytics.report(self._now(), [w.info() for w in core.workers.values()])
