"""Callers waiting on the node: claims waiting for work, and watchers waiting for a task to end.

Both are resolved only from post-commit hooks, so what they receive is durable.

Grants: a waiting claim that the core served gets its leases once they are durable. If nobody
waits for them any more by then (the claim timed out, was cancelled, or a newer claim of the
same worker replaced it), the leases are *held* for that worker and its next claim returns them
first: nothing granted is dropped while the node serves (a claim still waiting when the node
closes returns empty; its leases go back in line when the worker registers again). Leases a
worker can no longer use (it deregistered, or registered again as a new incarnation) are
forgotten with it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterable, Mapping

from node.model import Lease, Task

__all__ = ["ClaimWaiters", "Watchers"]


class ClaimWaiters:
    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[list[Lease]]] = {}
        self._held: dict[str, list[Lease]] = {}

    def take_held(self, worker_id: str, current: Callable[[Lease], bool]) -> list[Lease]:
        """Durable leases granted to ``worker_id`` that no claim received yet (and that are
        still current: a reload after a store outage may have given them back)."""
        return [lease for lease in self._held.pop(worker_id, []) if current(lease)]

    def drop_held(self, worker_id: str) -> list[Lease]:
        """The worker's held leases, no longer held (it leaves: they were never delivered)."""
        return self._held.pop(worker_id, [])

    def end(self, worker_id: str | None = None) -> None:
        """The waiting claim of ``worker_id`` (of every worker: None) returns now with what it
        has (nothing); a grant still on its way is held."""
        for wid in [worker_id] if worker_id is not None else list(self._waiting):
            fut = self._waiting.pop(wid, None)
            if fut is not None and not fut.done():
                fut.set_result([])

    def held(self) -> int:
        return sum(len(v) for v in self._held.values())

    def wait(self, worker_id: str) -> asyncio.Future[list[Lease]]:
        """A future for the worker's next grant. A claim of the same worker that still waits is
        replaced: it returns no lease (a grant meant for it goes to this one)."""
        prev = self._waiting.pop(worker_id, None)
        if prev is not None and not prev.done():
            prev.set_result([])
        fut: asyncio.Future[list[Lease]] = asyncio.get_running_loop().create_future()
        self._waiting[worker_id] = fut
        return fut

    def stop_waiting(self, worker_id: str, fut: asyncio.Future[list[Lease]]) -> None:
        if self._waiting.get(worker_id) is fut:
            del self._waiting[worker_id]

    def deliver(self, grants: Mapping[str, list[Lease]], current: Callable[[Lease], bool]) -> None:
        """Post-commit: durable grants go to their waiting claims, or are held. Leases that are
        no longer current (the worker registered again since) are not delivered."""
        for wid, leases in grants.items():
            live = [lease for lease in leases if current(lease)]
            if live:
                self._held.setdefault(wid, []).extend(live)
            fut = self._waiting.pop(wid, None)  # its grant came: it returns (empty if gone meanwhile)
            if fut is not None and not fut.done():
                fut.set_result(self._held.pop(wid, []))

    def forget(self, worker_id: str) -> None:
        """The worker left or started a new incarnation: its waiting claim ends empty, and held
        leases (the core released them) are dropped."""
        self.drop_held(worker_id)
        self.end(worker_id)

    def reject(self, worker_ids: Iterable[str], err: BaseException) -> None:
        """The commit that held grants for these workers failed: their claims get the error."""
        for wid in list(worker_ids):
            fut = self._waiting.pop(wid, None)
            if fut is not None and not fut.done():
                fut.set_exception(err)

    def reject_all(self, err: BaseException) -> None:
        """Every waiting claim gets ``err``; held leases are kept (they were durable)."""
        self.reject(list(self._waiting), err)


class Watchers:
    """Callers of ``wait(task_id)``, resolved with the task's final record once it is durable."""

    def __init__(self) -> None:
        self._by_task: dict[str, list[asyncio.Future[Task]]] = {}

    def __bool__(self) -> bool:
        return bool(self._by_task)

    def watch(self, task_id: str) -> asyncio.Future[Task]:
        fut: asyncio.Future[Task] = asyncio.get_running_loop().create_future()
        self._by_task.setdefault(task_id, []).append(fut)
        return fut

    def unwatch(self, task_id: str, fut: asyncio.Future[Task]) -> None:
        futs = self._by_task.get(task_id)
        if futs is not None and fut in futs:
            futs.remove(fut)
            if not futs:
                del self._by_task[task_id]

    def notify(self, finished: Mapping[str, Task]) -> None:
        """Post-commit: tasks that reached their final record."""
        for tid, t in finished.items():
            futs = self._by_task.pop(tid, None)
            if futs:
                for fut in futs:
                    if not fut.done():
                        fut.set_result(dataclasses.replace(t))

    def reject_all(self, err: BaseException) -> None:
        for futs in self._by_task.values():
            for fut in futs:
                if not fut.done():
                    fut.set_exception(err)
        self._by_task.clear()
