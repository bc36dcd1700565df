"""Read-only questions about a core, for people looking at a node (the dashboard, ``fedcoord
status``): its lines, a filtered page of its active tasks, and why a task waits.

Counts come from the core's counters; only a filtered page walks the active tasks (newest
first, stopping once the page is full), never the archive.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from node.core.queues import class_key
from node.core.state import CoreState
from node.model import PRIORITY_ORDER, Priority, Task, TaskStatus

__all__ = ["QueueLine", "TaskPage", "TaskQuery", "explain", "find_tasks", "queue_lines"]

_QUEUED = TaskStatus.QUEUED
_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class QueueLine:
    """One line of ready tasks: a requirement class (capabilities, difficulty) at one priority."""

    capabilities: tuple[str, ...]
    difficulty: int
    priority: Priority
    depth: int  # entries in line (a task cancelled in line counts until it reaches the head)
    oldest_queued_ns: int | None  # the first live entry's queue time
    takers: int  # healthy workers that may take this class


@dataclass(frozen=True, slots=True)
class TaskQuery:
    statuses: frozenset[TaskStatus] = frozenset()  # empty: every active status
    type: str | None = None
    priority: Priority | None = None
    worker: str | None = None
    offset: int = 0
    limit: int = 50


@dataclass(frozen=True, slots=True)
class TaskPage:
    tasks: list[Task]
    total: int | None  # from the counters when the filter allows it, else None (not scanned for)
    more: bool  # tasks past this page match too


def queue_lines(core: CoreState) -> list[QueueLine]:
    """Every non-empty line, O(classes x priorities) plus stale heads."""
    out: list[QueueLine] = []
    healthy = [w for w in core.workers.values() if w.healthy]
    strict = core.config.strict_matching
    for cls in core._queues.classes.values():
        if not cls.size:
            continue
        takers = sum(1 for w in healthy if w.can_take(cls, strict))
        for rank, dq in enumerate(cls.deques):
            if not dq:
                continue
            oldest = next((t.queued_ns for t in dq if t.status is _QUEUED), None)
            caps = tuple(sorted(cls.capabilities))
            out.append(QueueLine(caps, cls.difficulty, PRIORITY_ORDER[rank], len(dq), oldest, takers))
    out.sort(key=lambda q: (PRIORITY_ORDER.index(q.priority), q.oldest_queued_ns or 0))
    return out


def _total(core: CoreState, q: TaskQuery) -> int | None:
    by_status = core._by_status
    statuses: Collection[TaskStatus] = q.statuses or by_status.keys()
    if q.worker is not None:
        return None
    if q.type is None and q.priority is None:
        return sum(by_status.get(s, 0) for s in statuses)
    if q.statuses:
        return None
    if q.priority is None:
        return core._by_type.get(q.type or "", 0)
    if q.type is None:
        return core._by_priority.get(q.priority, 0)
    return None


def find_tasks(core: CoreState, q: TaskQuery) -> TaskPage:
    """Active tasks matching ``q``, newest first: skip ``offset`` matches, take ``limit``."""
    statuses, ttype, prio, worker = q.statuses, q.type, q.priority, q.worker
    skip, want = q.offset, q.limit
    page: list[Task] = []
    more = False
    for t in reversed(core.tasks.values()):
        if statuses and t.status not in statuses:
            continue
        if ttype is not None and t.spec.type != ttype:
            continue
        if prio is not None and t.spec.priority != prio:
            continue
        if worker is not None and t.assigned_worker != worker:
            continue
        if skip:
            skip -= 1
            continue
        if len(page) == want:
            more = True
            break
        page.append(t)
    return TaskPage(page, _total(core, q), more)


def explain(core: CoreState, t: Task, now_ns: int) -> list[str]:
    """Why ``t`` is where it is, in sentences a person reads (the newest facts the core holds)."""
    st = t.status
    if st is TaskStatus.PENDING:
        left = [d for d in t.waits_on if d in core.tasks]
        waiting = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
        return [f"waits on {len(left)} unfinished dependenc{'y' if len(left) == 1 else 'ies'}: {waiting}"]
    if st is TaskStatus.HANDING_OFF:
        return [f"being handed off to node {t.handoff_peer}"]
    if st is TaskStatus.HANDED_OFF:
        return [f"handed off: node {t.owner_node} runs it now"]
    if st in (TaskStatus.ASSIGNED, TaskStatus.IN_PROGRESS):
        what = "running on" if st is TaskStatus.IN_PROGRESS else "leased to"
        out = [f"{what} worker {t.assigned_worker} (attempt {t.attempt})"]
        if t.lease_deadline_ns is not None:
            out.append(f"its lease runs out in {max(0.0, (t.lease_deadline_ns - now_ns) / _NS):.1f} s")
        return out
    if st is _QUEUED:
        out = []
        if t.queued_ns is None:  # waiting for its not-before time
            why = "a retry backoff" if t.failures else "its delay"
            out.append(f"waits out {why}: ready in {max(0.0, (t.not_before_ns - now_ns) / _NS):.1f} s")
        else:
            out.append(f"in line at priority {t.spec.priority} for {max(0.0, (now_ns - t.queued_ns) / _NS):.1f} s")
            cls = core._queues.classes.get(class_key(t))
            strict = core.config.strict_matching
            healthy = [w for w in core.workers.values() if w.healthy]
            if cls is not None and not any(w.can_take(cls, strict) for w in healthy):
                need = ", ".join(t.spec.required_capabilities) or "none"
                out.append(
                    f"no healthy worker can take it (capabilities needed: {need}; difficulty {t.spec.difficulty})"
                )
            elif healthy and all(len(w.active) >= w.concurrency for w in healthy):
                out.append("every worker slot is busy")
        if t.failures:
            out.append(f"{t.failures} failed attempt{'s' if t.failures != 1 else ''} so far; last error: {t.error}")
        return out
    if st is TaskStatus.FAILED:
        return [f"failed for good (a dead letter): {t.error}"]
    if st is TaskStatus.CANCELLED:
        return ["cancelled"]
    return [f"completed on node {t.owner_node}"]
