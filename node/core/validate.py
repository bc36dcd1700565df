"""The core's invariants, checked from scratch (O(n)): for tests and for the simulator at the end
of a run, never on a hot path. :meth:`Core.validate` raises :class:`~node.errors.InvariantError`
listing every broken rule.

What must hold between commands:

* every active task has exactly one status, and the running counters (by status, priority,
  type, delayed tasks, healthy workers and slots) equal a recount;
* the ready queues hold exactly the ready tasks (queued, not waiting for a not-before time),
  each once, in line order within a deque; delayed tasks are all scheduled;
* leases are fenced: a leased task names a known worker, has an attempt and a deadline, is in
  that worker's active set and watched by the lease clock; no other task names a worker;
* a pending task waits on at least one active dependency, and is registered as its dependent;
* tasks being handed off are out of line and name their peer;
* waiting claims are of healthy workers; unhealthy workers hold nothing.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from node.core.queues import class_key
from node.model import PRIORITY_ORDER, TaskStatus

if TYPE_CHECKING:
    from node.core.state import CoreState

__all__ = ["check_invariants"]

PENDING, QUEUED, ASSIGNED, IN_PROGRESS, HANDING_OFF = (
    TaskStatus.PENDING,
    TaskStatus.QUEUED,
    TaskStatus.ASSIGNED,
    TaskStatus.IN_PROGRESS,
    TaskStatus.HANDING_OFF,
)
ACTIVE = (PENDING, QUEUED, ASSIGNED, IN_PROGRESS, HANDING_OFF)
LEASED = (ASSIGNED, IN_PROGRESS)


def check_invariants(core: CoreState) -> list[str]:
    bad: list[str] = []
    tasks = core.tasks
    # -------------------------------------------------------------- statuses and counters
    for tid, t in tasks.items():
        if t.id != tid:
            bad.append(f"task stored under {tid!r} has id {t.id!r}")
        if t.status not in ACTIVE:
            bad.append(f"task {tid} is {t.status.value} but still active")
    by_status = Counter(t.status for t in tasks.values())
    if core.status_counts() != {s: by_status[s] for s in ACTIVE}:
        bad.append(f"status counts {core.status_counts()} != recount {dict(by_status)}")
    by_priority = Counter(t.priority for t in tasks.values())
    if core.priority_counts() != {p: by_priority[p] for p in PRIORITY_ORDER}:
        bad.append(f"priority counts {core.priority_counts()} != recount {dict(by_priority)}")
    if core.type_counts() != dict(Counter(t.type for t in tasks.values())):
        bad.append("type counts differ from a recount")
    delayed = {tid for tid, t in tasks.items() if t.status is QUEUED and t.queued_ns is None}
    ready = {tid for tid, t in tasks.items() if t.status is QUEUED and t.queued_ns is not None}
    if core._n_delayed != len(delayed):
        bad.append(f"delayed counter {core._n_delayed} != {len(delayed)} delayed tasks")
    healthy = [w for w in core.workers.values() if w.healthy]
    if core.capacity() != (len(healthy), sum(w.concurrency for w in healthy)):
        bad.append(f"capacity {core.capacity()} != recount")
    load = core.load()
    if (load.leased, load.ready, load.delayed, load.pending) != (
        by_status[ASSIGNED] + by_status[IN_PROGRESS],
        len(ready),
        len(delayed),
        by_status[PENDING],
    ):
        bad.append(f"load {load} differs from a recount")
    # -------------------------------------------------------------- ready queues and timers
    in_line: Counter[str] = Counter()
    stale = [0] * len(PRIORITY_ORDER)
    for cls in core._queues.classes.values():
        if cls.size != sum(len(dq) for dq in cls.deques):
            bad.append(f"{cls!r}: size {cls.size} != {sum(len(dq) for dq in cls.deques)} entries")
        for rank, dq in enumerate(cls.deques):
            last = None
            for t in dq:
                stale[rank] += t.status is not QUEUED
                if t.status is QUEUED and t.queued_ns is not None and tasks.get(t.id) is t:
                    in_line[t.id] += 1
                    if PRIORITY_ORDER[rank] is not t.priority or cls.key != class_key(t):
                        bad.append(f"task {t.id} ({t.priority.value}) in the wrong deque: {cls!r}")
                    if last is not None and t.queued_ns < last:
                        bad.append(f"task {t.id} out of line order in {cls!r}")
                    last = t.queued_ns
    if set(in_line) != ready:
        missing, extra = sorted(ready - set(in_line))[:5], sorted(set(in_line) - ready)[:5]
        bad.append(f"ready queues differ from the ready tasks: missing {missing}, extra {extra}")
    if stale != core._queues.stale:
        bad.append(f"stale entries in line by priority {stale} != counted {core._queues.stale}")
    twice = [tid for tid, n in in_line.items() if n > 1]
    if twice:
        bad.append(f"tasks in line twice: {twice[:5]}")
    scheduled = {tid for nb, _, tid in core._delayed if tid in delayed and tasks[tid].not_before_ns == nb}
    if scheduled != delayed:
        bad.append(f"delayed tasks without a timer: {sorted(delayed - scheduled)[:5]}")
    for tid in ready | delayed:
        t = tasks[tid]
        if (t.queued_ns is None) != (t.not_before_ns > 0):
            bad.append(f"task {tid}: queued_ns {t.queued_ns} and not_before_ns {t.not_before_ns} disagree")
    queued_times = [tasks[tid].queued_ns for tid in ready]
    if len(queued_times) != len(set(queued_times)):
        bad.append("two ready tasks share a queue time")
    # -------------------------------------------------------------- leases
    watched = {(e[2], e[1], e[0]) for q in core._leases.queues.values() for e in q}
    held: dict[str, set[str]] = {wid: set() for wid in core.workers}
    for tid, t in tasks.items():
        if t.status in LEASED:
            holder = t.assigned_worker
            if holder is None or holder not in core.workers:
                bad.append(f"task {tid} is leased to unknown worker {holder!r}")
                continue
            held[holder].add(tid)
            if t.attempt < 1 or t.lease_deadline_ns is None:
                bad.append(f"task {tid} is leased without an attempt or a deadline")
            elif (tid, t.attempt, t.lease_deadline_ns) not in watched:
                bad.append(f"the lease of task {tid} (attempt {t.attempt}) is not watched")
        elif t.assigned_worker is not None:
            bad.append(f"task {tid} is {t.status.value} but names worker {t.assigned_worker!r}")
    for wid, w in core.workers.items():
        if w.active != held[wid]:
            bad.append(f"worker {wid} holds {sorted(w.active)[:5]}, its leased tasks are {sorted(held[wid])[:5]}")
        if w.health == "unhealthy" and w.active:
            bad.append(f"unhealthy worker {wid} still holds leases")
        if len(w.active) > w.concurrency and w.healthy:
            bad.append(f"worker {wid} holds {len(w.active)} leases, concurrency {w.concurrency}")
    for wid in core._waiters:
        waiting = core.workers.get(wid)
        if waiting is None or not waiting.healthy:
            bad.append(f"a claim of {wid!r} waits, but that worker is not healthy")
    # -------------------------------------------------------------- dependencies
    deps = core._deps
    for tid, t in tasks.items():
        unmet = deps.unmet.get(tid)
        if t.status is PENDING:
            if not unmet:
                bad.append(f"pending task {tid} waits on nothing")
                continue
            for d in unmet:
                if d not in tasks and d not in core._remote_deps:
                    bad.append(f"pending task {tid} waits on {d}, which is neither active nor handed off")
                if tid not in deps.dependents.get(d, ()):
                    bad.append(f"pending task {tid} is not registered as a dependent of {d}")
        elif unmet:
            bad.append(f"task {tid} is {t.status.value} but registered as waiting on {sorted(unmet)}")
    bad.extend(f"finished task {tid} is still registered as waiting" for tid in deps.unmet if tid not in tasks)
    # -------------------------------------------------------------- hand-off, idempotency
    for tid, t in tasks.items():
        if t.status is HANDING_OFF and not t.handoff_peer:
            bad.append(f"task {tid} is handing off to nobody")
        if t.status is not HANDING_OFF and t.handoff_peer:
            bad.append(f"task {tid} is {t.status.value} but names hand-off peer {t.handoff_peer!r}")
    for key, tid in core._idem.items():
        owner = tasks.get(tid)
        if owner is None or owner.spec.idempotency_key != key:
            bad.append(f"idempotency key {key!r} points at {tid}, which is not an active task with that key")
    return bad
