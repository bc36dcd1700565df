"""Lease deadlines: when each leased task must be reported on, and which leases have expired.

One FIFO per timeout length: with a monotonic clock, deadlines within one FIFO are in order, so
watching a lease is an append and finding expired ones looks only at heads. An entry is
``(deadline_ns, attempt, task_id)``; it is stale once the task moved on (finished, re-leased,
started, which sets a new deadline) and is skipped when reached.

Entries name the task by id, not by reference: a finished task must not be kept alive by the
stale entry of its last lease until that lease's deadline (which may be hours away). It is freed
when it leaves the core, while it is still in the CPU's caches.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from node.model import Task, TaskStatus

__all__ = ["LeaseClock"]

_LEASED = (TaskStatus.ASSIGNED, TaskStatus.IN_PROGRESS)
Entry = tuple[int, int, str]


class LeaseClock:
    def __init__(self, tasks: Mapping[str, Task]) -> None:
        self.tasks = tasks  # the core's active tasks, by id
        self.queues: dict[int, deque[Entry]] = {}  # timeout_ns -> entries in deadline order
        self.entries = 0

    def watch(self, t: Task, timeout_ns: int, deadline_ns: int) -> None:
        q = self.queues.get(timeout_ns)
        if q is None:
            q = self.queues[timeout_ns] = deque()
        q.append((deadline_ns, t.attempt, t.id))
        self.entries += 1

    def _live(self, e: Entry) -> Task | None:
        t = self.tasks.get(e[2])
        if t is not None and t.attempt == e[1] and t.lease_deadline_ns == e[0] and t.status in _LEASED:
            return t
        return None

    def expired(self, now_ns: int) -> list[Task]:
        """Leased tasks whose current lease deadline is at or before ``now_ns``, oldest first,
        each once (an entry left by an earlier task with the same id, attempt and deadline
        matches the live one too: ids can be reused once a finished task is forgotten)."""
        out: list[tuple[int, str, Task]] = []
        seen: set[str] = set()
        live = self._live
        for q in self.queues.values():
            while q and q[0][0] <= now_ns:
                e = q.popleft()
                self.entries -= 1
                t = live(e)
                if t is not None and e[2] not in seen:
                    seen.add(e[2])
                    out.append((e[0], e[2], t))
        if len(out) > 1:
            out.sort(key=lambda x: (x[0], x[1]))
        return [x[2] for x in out]

    def compact(self, live: int) -> None:
        """Drop stale entries once they outnumber live leases (they would otherwise pile up
        until their deadlines pass, which for long timeouts is a lot of memory)."""
        if self.entries <= 2 * live + 1024:
            return
        n = 0
        get = self.tasks.get
        for timeout_ns, q in list(self.queues.items()):
            # _live() inlined: this scans every entry once (most of them stale, their task gone)
            kept = deque(
                e
                for e in q
                if (t := get(e[2])) is not None
                and t.attempt == e[1]
                and t.lease_deadline_ns == e[0]
                and t.status in _LEASED
            )
            if kept:
                self.queues[timeout_ns] = kept
                n += len(kept)
            else:
                del self.queues[timeout_ns]
        self.entries = n

    def next_deadline_ns(self) -> int | None:
        heads = [q[0][0] for q in self.queues.values() if q]
        return min(heads) if heads else None
