"""The scheduling core: a pure state machine over one node's active tasks and workers.

Every command takes the current time (``now_ns``) and mutates in-memory state; what must be
persisted or announced accumulates in :attr:`Core.out` (an :class:`Outbox`), which the runtime
swaps out at each group commit. No I/O, no clock, no global randomness: the runtime, the
simulator and the tests drive this same object.

Only *active* tasks live here (pending, queued, assigned, in progress). Finished tasks go to the
outbox and leave; facts about them that a command needs (a dependency's final status, an
idempotency key already used) are looked up by the runtime and passed in.

The common paths (a batch of plain tasks, a batch claim, a completion) are written out inline:
this object's throughput is a product goal (see bench/bench_core.py).
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from node.core.config import CoreConfig
from node.core.deps import DependencyGraph, order_batch
from node.core.leases import LeaseClock
from node.core.outbox import Outbox
from node.core.queues import ReadyQueues, TaskClass
from node.core.workers import (
    CAPABILITY_MATCH,
    GENERAL,
    LOAD_PENALTY,
    SPEED_WEIGHT,
    SUCCESS_WEIGHT,
    ScalingAdvice,
    WorkerInfo,
    WorkerState,
    scaling_advice,
)
from node.errors import (
    InvalidTransitionError,
    StaleLeaseError,
    TaskNotFoundError,
    ValidationError,
    WorkerNotFoundError,
)
from node.ids import IdGenerator
from node.model import (
    PRIORITY_ORDER,
    TERMINAL_STATUSES,
    EventKind,
    Lease,
    Priority,
    Task,
    TaskSpec,
    TaskStatus,
    WorkerSpec,
    check_error,
    check_result,
    normalize_spec,
    normalize_worker_spec,
)

__all__ = ["Core", "HeartbeatReply"]

PENDING = TaskStatus.PENDING
QUEUED = TaskStatus.QUEUED
ASSIGNED = TaskStatus.ASSIGNED
IN_PROGRESS = TaskStatus.IN_PROGRESS
COMPLETED = TaskStatus.COMPLETED
FAILED = TaskStatus.FAILED
CANCELLED = TaskStatus.CANCELLED
NEW_TASK = EventKind.NEW_TASK
TASK_UPDATED = EventKind.TASK_UPDATED
_LEASED = (ASSIGNED, IN_PROGRESS)
_ACTIVE_ORDER = (PENDING, QUEUED, ASSIGNED, IN_PROGRESS)
_NS = 1_000_000_000
_RANK = {p: i for i, p in enumerate(PRIORITY_ORDER)}


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    healthy: bool
    revoked: tuple[tuple[str, int], ...]  # (task id, attempt): stop these, the lease is gone


def _timeout_ns(spec: TaskSpec) -> int:
    t = spec.timeout_s
    return int((2.0 * spec.difficulty if t is None else t) * _NS)


class Core:
    def __init__(self, config: CoreConfig | None = None, rng: random.Random | None = None):
        self.config = cfg = config or CoreConfig()
        self.node_id = cfg.node_id
        self.limits = cfg.limits
        self._rng = rng or random.Random(0)
        self._ids = IdGenerator(self._rng.getrandbits(74))
        self.out = Outbox()
        self.emit_events = True
        self.tasks: dict[str, Task] = {}
        self.workers: dict[str, WorkerState] = {}
        self._queues = ReadyQueues(cfg.aging_s)
        self._delayed: list[tuple[int, int, Task]] = []  # (not_before_ns, seq, task)
        self._delay_seq = 0
        self._leases = LeaseClock()
        self._deps = DependencyGraph()
        self._idem: dict[str, str] = {}  # idempotency key -> id, active tasks
        self._recent_idem: dict[str, str] = {}  # ... and recently finished ones (bounded)
        self._recent_idem_order: deque[str] = deque()
        self._waiters: dict[str, int] = {}  # worker id -> max tasks of its waiting claim
        self._fresh: list[Task] = []  # became ready while claims wait; dispatched at command end
        # queued_ns is strictly increasing (tasks made ready by one command get consecutive
        # nanoseconds), so it is also the FIFO order: restore() sorts by it alone.
        self._last_queued_ns = 0
        # Active tasks by status, by priority and by type, exact at every transition.
        self._by_status: dict[TaskStatus, int] = dict.fromkeys(_ACTIVE_ORDER, 0)
        self._by_priority: dict[Priority, int] = dict.fromkeys(PRIORITY_ORDER, 0)
        self._by_type: dict[str, int] = {}
        self._hb_ns = int(cfg.heartbeat_timeout_s * _NS)
        self._expiry_ns = int(cfg.worker_expiry_s * _NS)
        self._alpha = cfg.ema_alpha
        self._strict = cfg.strict_matching
        self._fast = cfg.fast_difficulty

    # ------------------------------------------------------------------ bookkeeping

    def _enter(self, t: Task) -> None:
        self.tasks[t.id] = t
        sp = t.spec
        self._by_status[t.status] += 1
        self._by_priority[sp.priority] += 1  # type: ignore[index]
        self._by_type[sp.type] = self._by_type.get(sp.type, 0) + 1

    def _move(self, t: Task, status: TaskStatus) -> None:
        b = self._by_status
        b[t.status] -= 1
        b[status] += 1
        t.status = status

    def _leave(self, t: Task) -> None:
        del self.tasks[t.id]
        sp = t.spec
        self._by_status[t.status] -= 1
        self._by_priority[sp.priority] -= 1  # type: ignore[index]
        n = self._by_type[sp.type] - 1
        if n:
            self._by_type[sp.type] = n
        else:
            del self._by_type[sp.type]

    def _event(self, t: Task, now_ns: int, kind: EventKind = TASK_UPDATED) -> None:
        self.out.events.append((kind, t, t.status, t.assigned_worker, t.attempt, now_ns, t.error))

    # ------------------------------------------------------------------ submit

    def submit(
        self,
        specs: Sequence[TaskSpec],
        now_ns: int,
        *,
        known: Mapping[str, TaskStatus] | None = None,
        known_keys: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Validate and add a batch; return one id per spec. All or nothing.

        ``known`` gives the final status of finished tasks that specs refer to (as dependencies
        or as their own ``id``), ``known_keys`` the task id of idempotency keys used by finished
        tasks; the runtime looks both up in the store. A repeated idempotency key returns the id
        of the task that first used it and adds nothing.
        """
        limits = self.limits
        if not isinstance(specs, list | tuple):
            raise ValidationError("specs", "must be a list of TaskSpec")
        if len(specs) > limits.max_batch:
            raise ValidationError("specs", f"{len(specs)} specs in one batch", limit=f"<= {limits.max_batch}")
        norm: list[TaskSpec] = []
        plain = not self._waiters
        for i, spec in enumerate(specs):
            try:
                s = normalize_spec(spec, limits)
            except ValidationError as e:
                raise e.at(i) from None
            if plain and (s.dependencies or s.id is not None or s.idempotency_key is not None or s.delay_s):
                plain = False
            norm.append(s)
        if plain:
            return self._submit_plain(norm, now_ns)
        return self._submit_general(norm, now_ns, known or {}, known_keys or {})

    def _submit_plain(self, norm: list[TaskSpec], now_ns: int) -> list[str]:
        """Tasks with no dependencies, id, key or delay, and no claim waiting: straight in line."""
        tasks = self.tasks
        out = self.out
        saved = out.saved
        events = out.events if self.emit_events else None
        new_ids = self._ids.many(now_ns, len(norm))
        node_id = self.node_id
        by_priority = self._by_priority
        by_type = self._by_type
        queues = self._queues
        by_req = queues.by_requirements
        q = max(now_ns, self._last_queued_ns + 1)
        self._last_queued_ns = q + len(norm) - 1
        for s, tid in zip(norm, new_ids, strict=True):
            t = Task(tid, s, QUEUED, node_id, node_id, now_ns, None, 0, 0, 0, q)
            q += 1
            tasks[tid] = t
            saved[tid] = t
            by_priority[s.priority] += 1  # type: ignore[index]
            by_type[s.type] = by_type.get(s.type, 0) + 1
            cls = by_req.get((s.required_capabilities, s.difficulty))
            if cls is None:
                cls = self._class_of(t)
            cls.deques[_RANK[s.priority]].append(t)  # type: ignore[index]
            cls.size += 1
            if events is not None:
                events.append((NEW_TASK, t, QUEUED, None, 0, now_ns, None))
        self._by_status[QUEUED] += len(norm)
        out.counters["submitted"] += len(norm)
        return new_ids

    def _submit_general(
        self, norm: list[TaskSpec], now_ns: int, known: Mapping[str, TaskStatus], known_keys: Mapping[str, str]
    ) -> list[str]:
        tasks = self.tasks
        ids: list[str] = []
        new: list[int] = []  # indexes of specs that create a task
        batch_ids: dict[str, int] = {}
        batch_keys: dict[str, str] = {}
        for i, s in enumerate(norm):
            key = s.idempotency_key
            if key is not None:
                prior = batch_keys.get(key) or self._idem.get(key) or self._recent_idem.get(key) or known_keys.get(key)
                if prior is not None:
                    ids.append(prior)
                    continue
            if s.id is None:
                tid = self._ids.next(now_ns)
            else:
                tid = s.id
                if tid in tasks or tid in batch_ids or tid in known:
                    raise ValidationError("id", f"task {tid!r} already exists", index=i)
            if key is not None:
                batch_keys[key] = tid
            batch_ids[tid] = i
            ids.append(tid)
            new.append(i)
        order = new
        if any(norm[i].dependencies for i in new):
            deps = [s.dependencies for s in norm]
            order = order_batch(deps, ids, new, batch_ids, lambda d: d in tasks or d in known)

        out = self.out
        emit = self.emit_events
        for i in order:
            s = norm[i]
            t = Task(ids[i], s, PENDING, self.node_id, self.node_id, now_ns)
            self._enter(t)
            if s.idempotency_key is not None:
                self._idem[s.idempotency_key] = t.id
                out.idempotency[s.idempotency_key] = t.id
            if s.dependencies:
                if s.delay_s:
                    t.not_before_ns = now_ns + int(s.delay_s * _NS)  # counts from submit, applies once ready
                if emit:
                    self._event(t, now_ns, NEW_TASK)
                self._wait_for(t, known, now_ns)
                continue
            if s.delay_s:
                self._delay(t, now_ns + int(s.delay_s * _NS), now_ns, event=False)
            else:
                self._make_ready(t, now_ns, event=False)
            if emit:
                self._event(t, now_ns, NEW_TASK)
        out.counters["submitted"] += len(new)
        self._dispatch(now_ns)
        return ids

    def _wait_for(self, t: Task, known: Mapping[str, TaskStatus], now_ns: int) -> None:
        """Register a new task's dependencies: it waits, is ready, or fails (a dependency failed)."""
        unmet: list[str] = []
        for d in t.spec.dependencies:
            if d in self.tasks:
                unmet.append(d)
                continue
            # Not active: finished before (known), or an earlier spec of this batch that failed.
            st = known.get(d, FAILED)
            if st is not COMPLETED:
                self._finish(t, FAILED, now_ns, error=f"dependency {d} {st.value}")
                return
        if unmet:
            self._deps.wait(t.id, unmet)
            self.out.saved[t.id] = t
        else:
            self._ready_or_delay(t, now_ns)

    def _ready_or_delay(self, t: Task, now_ns: int) -> None:
        """A task whose dependencies are met: in line now, or at its not-before time."""
        if t.not_before_ns > now_ns:
            self._delay(t, t.not_before_ns, now_ns)
        else:
            self._make_ready(t, now_ns)

    # ------------------------------------------------------------------ workers

    def register_worker(self, spec: WorkerSpec, now_ns: int) -> WorkerInfo:
        """Add a worker, or update one that registers again (its statistics are kept)."""
        spec = normalize_worker_spec(spec, self.limits)
        w = self.workers.get(spec.id)
        caps = frozenset(spec.capabilities)
        if w is None:
            w = WorkerState(
                id=spec.id,
                capabilities=caps,
                skill=spec.skill,
                concurrency=spec.concurrency,
                registered_ns=now_ns,
                last_seen_ns=now_ns,
            )
            self.workers[w.id] = w
        else:
            w.capabilities, w.skill, w.concurrency = caps, spec.skill, spec.concurrency
            self._seen(w, now_ns)
        w.eligible = [c for c in self._queues.classes.values() if w.can_take(c, self._strict)]
        self.out.workers[w.id] = w
        return w.info()

    def deregister_worker(self, worker_id: str, now_ns: int) -> None:
        """Remove a worker; tasks it holds go back in line (counted as a failed attempt)."""
        w = self._worker(worker_id)
        self._release_all(w, f"worker {worker_id} deregistered", now_ns)
        self._waiters.pop(worker_id, None)
        del self.workers[worker_id]
        self.out.workers.pop(worker_id, None)
        self.out.dropped_workers.add(worker_id)
        self._dispatch(now_ns)

    def heartbeat(self, worker_id: str, now_ns: int) -> HeartbeatReply:
        """A worker is alive. The reply lists leases it must stop (cancelled or reassigned)."""
        w = self._worker(worker_id)
        self._seen(w, now_ns)
        revoked = tuple(w.revoked)
        w.revoked.clear()
        return HeartbeatReply(healthy=w.healthy, revoked=revoked)

    def _worker(self, worker_id: str) -> WorkerState:
        w = self.workers.get(worker_id)
        if w is None:
            raise WorkerNotFoundError(worker_id)
        return w

    def _seen(self, w: WorkerState, now_ns: int) -> None:
        w.last_seen_ns = now_ns
        if not w.healthy:
            w.healthy, w.unhealthy_since_ns = True, None
            self.out.workers[w.id] = w

    # ------------------------------------------------------------------ claim

    def claim(self, worker_id: str, max_tasks: int, now_ns: int, *, wait: bool = False) -> list[Lease]:
        """Lease up to ``max_tasks`` tasks (bounded by the worker's free slots) to a worker.

        With ``wait`` and nothing to take, the claim waits: tasks that become ready later go to
        the best-scored waiting worker, and arrive in ``out.grants``. Call :meth:`cancel_wait`
        when the caller stops waiting.
        """
        if type(max_tasks) is not int or not 1 <= max_tasks <= self.limits.max_batch:
            raise ValidationError("max_tasks", f"{max_tasks!r} out of range", limit=f"1..{self.limits.max_batch}")
        w = self._worker(worker_id)
        self._seen(w, now_ns)
        self._waiters.pop(worker_id, None)
        leases = self._fill(w, max_tasks, now_ns)
        if not leases and wait:
            self._waiters[worker_id] = max_tasks
        return leases

    def cancel_wait(self, worker_id: str) -> None:
        self._waiters.pop(worker_id, None)

    def _fill(self, w: WorkerState, max_tasks: int, now_ns: int) -> list[Lease]:
        """Lease the first tasks in line that ``w`` can take (the hot path of _assign, batched)."""
        room = min(max_tasks, w.concurrency - len(w.active))
        if room <= 0 or not w.healthy:
            return []
        tasks = self._queues.pop_for(w.eligible, room)
        if not tasks:
            return []
        by_status = self._by_status
        by_status[QUEUED] -= len(tasks)
        by_status[ASSIGNED] += len(tasks)
        saved = self.out.saved
        events = self.out.events if self.emit_events else None
        active_add = w.active.add
        wid = w.id
        lease_q = self._leases.queues
        leases: list[Lease] = []
        append = leases.append
        new_lease = tuple.__new__  # skips NamedTuple's Python-level __new__
        for t in tasks:
            sp = t.spec
            t.status = ASSIGNED
            t.attempt = attempt = t.attempt + 1
            t.assigned_worker = wid
            t.claimed_ns = now_ns
            t.started_ns = None
            to = sp.timeout_s
            timeout_ns = int((2.0 * sp.difficulty if to is None else to) * _NS)
            t.lease_deadline_ns = deadline = now_ns + timeout_ns
            active_add(t.id)
            q = lease_q.get(timeout_ns)
            if q is None:
                q = lease_q[timeout_ns] = deque()
            q.append((deadline, attempt, t))
            saved[t.id] = t
            if events is not None:
                events.append((TASK_UPDATED, t, ASSIGNED, wid, attempt, now_ns, None))
            append(new_lease(Lease, (t.id, attempt, wid, deadline, sp)))
        self._leases.entries += len(tasks)
        return leases

    def _assign(self, t: Task, w: WorkerState, now_ns: int) -> Lease:
        self._move(t, ASSIGNED)
        t.attempt += 1
        t.assigned_worker = w.id
        t.claimed_ns = now_ns
        t.started_ns = None
        timeout_ns = _timeout_ns(t.spec)
        t.lease_deadline_ns = deadline = now_ns + timeout_ns
        w.active.add(t.id)
        self._leases.watch(t, timeout_ns, deadline)
        self.out.saved[t.id] = t
        if self.emit_events:
            self._event(t, now_ns)
        return Lease(t.id, t.attempt, w.id, deadline, t.spec)

    def _dispatch(self, now_ns: int) -> None:
        """Hand tasks that became ready to waiting claims (best score first), queue the rest.

        Scores follow :func:`~node.core.workers.score`; the parts that do not change while
        tasks are handed out are computed once per dispatch, the load penalty per task.
        """
        fresh = self._fresh
        if not fresh:
            return
        self._fresh = []
        queues = self._queues
        if len(fresh) > 1:
            fresh.sort(key=queues.line_key)
        fast = self._fast
        strict = self._strict
        # [worker, room left, fixed score part, speed bonus, "general" capability, leases]
        cands: list[list[Any]] = []
        for wid, max_tasks in self._waiters.items():
            w = self.workers[wid]
            room = min(max_tasks, w.concurrency - len(w.active))
            if room > 0 and w.healthy:
                fixed = SUCCESS_WEIGHT * w.success_rate
                speed = SPEED_WEIGHT / max(w.avg_completion_s, 0.1)
                cands.append([w, room, fixed, speed, GENERAL in w.capabilities, []])
        eligible: dict[int, list[list[Any]]] = {}  # id(class) -> candidates that may take it
        for t in fresh:
            if t.status is not QUEUED or t.queued_ns is None:
                continue
            cls = self._class_of(t)
            if not cands:
                queues.push(t, cls)
                continue
            can = eligible.get(id(cls))
            if can is None:
                can = eligible[id(cls)] = [c for c in cands if c[0].can_take(cls, strict)]
            sp = t.spec
            quick = sp.difficulty <= fast
            best: list[Any] | None = None
            best_score = 0.0
            for c in can:
                if c[1] <= 0:
                    continue
                w = c[0]
                sc = c[2] - LOAD_PENALTY * len(w.active)
                if c[4] or sp.type in w.capabilities:
                    sc += CAPABILITY_MATCH
                if quick:
                    sc += c[3]
                if best is None or sc > best_score:
                    best, best_score = c, sc
            if best is None:
                queues.push(t, cls)
            else:
                best[1] -= 1
                best[5].append(self._assign(t, best[0], now_ns))
        for c in cands:
            if c[5]:
                wid = c[0].id
                del self._waiters[wid]
                self.out.grants[wid] = c[5]

    def _class_of(self, t: Task) -> TaskClass:
        cls, created = self._queues.class_of(t)
        if created:
            strict = self._strict
            for w in self.workers.values():
                if w.can_take(cls, strict):
                    w.eligible.append(cls)
        return cls

    # ------------------------------------------------------------------ lease outcomes

    def _current(self, lease: Lease) -> Task:
        if not isinstance(lease, Lease):
            raise ValidationError("lease", f"must be a Lease, got {type(lease).__name__}")
        t = self.tasks.get(lease.task_id)
        if t is None:
            raise StaleLeaseError(lease.task_id, lease.attempt, "the task is no longer active")
        if t.attempt != lease.attempt or t.status not in _LEASED or t.assigned_worker != lease.worker_id:
            raise StaleLeaseError(lease.task_id, lease.attempt, f"the task is {t.status.value} at attempt {t.attempt}")
        return t

    def start(self, lease: Lease, now_ns: int) -> None:
        """The worker began running the task: the timeout now counts from here."""
        t = self._current(lease)
        w = self.workers.get(lease.worker_id)
        if w is not None:
            self._seen(w, now_ns)
        if t.status is IN_PROGRESS:
            return
        self._move(t, IN_PROGRESS)
        t.started_ns = now_ns
        timeout_ns = _timeout_ns(t.spec)
        deadline = now_ns + timeout_ns
        if deadline != t.lease_deadline_ns:  # else started the instant it was claimed: already watched
            t.lease_deadline_ns = deadline
            self._leases.watch(t, timeout_ns, deadline)
        self.out.saved[t.id] = t
        if self.emit_events:
            self._event(t, now_ns)

    def complete(self, lease: Lease, result: bytes, now_ns: int) -> None:
        t = self.tasks.get(lease.task_id) if type(lease) is Lease else None
        if (
            t is None
            or t.attempt != lease.attempt
            or t.assigned_worker != lease.worker_id
            or (t.status is not ASSIGNED and t.status is not IN_PROGRESS)
        ):
            t = self._current(lease)  # raises the precise error
        if type(result) is not bytes or len(result) > self.limits.max_result_bytes:
            result = check_result(result, self.limits)
        t.result = result
        t.error = None
        w = self.workers.get(lease.worker_id)
        tid = t.id
        sp = t.spec
        if w is None or not w.healthy or tid in self._deps.dependents or sp.idempotency_key is not None:
            if w is not None:
                self._worker_done(t, w, True, now_ns)
            self._finish(t, COMPLETED, now_ns)
        else:
            # The common case, written out: _worker_done(success) and _finish() with nothing
            # waiting on the task (completions are the hottest call of a busy node).
            w.active.discard(tid)
            w.last_seen_ns = now_ns
            began = t.started_ns if t.started_ns is not None else t.claimed_ns
            elapsed_s = (now_ns - began) / _NS if began is not None else 0.0
            a = self._alpha
            w.success_rate = (1 - a) * w.success_rate + a
            w.avg_completion_s = (1 - a) * w.avg_completion_s + a * elapsed_s
            w.busy_s += elapsed_s
            w.completed += 1
            out = self.out
            out.workers[w.id] = w
            del self.tasks[tid]
            self._by_status[t.status] -= 1
            self._by_priority[sp.priority] -= 1  # type: ignore[index]
            by_type = self._by_type
            left = by_type[sp.type] - 1
            if left:
                by_type[sp.type] = left
            else:
                del by_type[sp.type]
            t.status = COMPLETED
            t.finished_ns = now_ns
            t.lease_deadline_ns = None
            if out.saved:
                out.saved.pop(tid, None)
            out.finished[tid] = t
            if self.emit_events:
                out.events.append((TASK_UPDATED, t, COMPLETED, t.assigned_worker, t.attempt, now_ns, None))
        if self._waiters:
            if w is not None and w.id in self._waiters:
                self._refill(w, now_ns)
            self._dispatch(now_ns)

    def fail(self, lease: Lease, error: str, now_ns: int, *, retry: bool = True) -> None:
        """The attempt failed. With ``retry`` the task goes back in line after a backoff unless
        its retries are spent; then (or without ``retry``) it is failed for good."""
        t = self._current(lease)
        error = check_error(error, self.limits)
        w = self.workers.get(lease.worker_id)
        if w is not None:
            self._worker_done(t, w, False, now_ns)
        self._attempt_failed(t, error, now_ns, retry=retry, backoff=True)
        if self._waiters:
            if w is not None and w.id in self._waiters:
                self._refill(w, now_ns)
            self._dispatch(now_ns)

    def _refill(self, w: WorkerState, now_ns: int) -> None:
        leases = self._fill(w, self._waiters[w.id], now_ns)
        if leases:
            del self._waiters[w.id]
            self.out.grants[w.id] = leases

    def _worker_done(self, t: Task, w: WorkerState, success: bool, now_ns: int) -> None:
        """The worker reported the outcome: free its slot, update its statistics (EMAs)."""
        w.active.discard(t.id)
        w.last_seen_ns = now_ns
        if not w.healthy:
            self._seen(w, now_ns)
        began = t.started_ns if t.started_ns is not None else t.claimed_ns
        elapsed_s = (now_ns - began) / _NS if began is not None else 0.0
        a = self._alpha
        w.success_rate = (1 - a) * w.success_rate + (a if success else 0.0)
        w.avg_completion_s = (1 - a) * w.avg_completion_s + a * elapsed_s
        w.busy_s += elapsed_s
        if success:
            w.completed += 1
        else:
            w.failed += 1
        self.out.workers[w.id] = w

    def _attempt_failed(self, t: Task, error: str, now_ns: int, *, retry: bool, backoff: bool) -> None:
        """A leased attempt ended badly: retry (after a backoff, or at once) or fail for good."""
        t.failures += 1
        t.error = error
        if not (retry and t.failures <= t.spec.max_retries):
            self._finish(t, FAILED, now_ns, error=error)
            return
        t.assigned_worker = None
        t.lease_deadline_ns = None
        self.out.counters["retried"] += 1
        if backoff:
            self._delay(t, now_ns + self._backoff_ns(t.failures), now_ns)
        else:
            self._make_ready(t, now_ns)

    def _backoff_ns(self, failures: int) -> int:
        """Exponential backoff with jitter: uniform in [d/2, d], d = min(base * 2**(n-1), max)."""
        cfg = self.config
        d = min(cfg.backoff_base_s * (2 ** (failures - 1)), cfg.backoff_max_s)
        return int((d / 2 + self._rng.random() * d / 2) * _NS)

    # ------------------------------------------------------------------ transitions

    def _make_ready(self, t: Task, now_ns: int, *, event: bool = True) -> None:
        """-> QUEUED and in line (or to a waiting claim, at the end of the command)."""
        self._move(t, QUEUED)
        t.queued_ns = self._last_queued_ns = max(now_ns, self._last_queued_ns + 1)
        t.not_before_ns = 0
        self.out.saved[t.id] = t
        if event and self.emit_events:
            self._event(t, now_ns)
        if self._waiters:
            self._fresh.append(t)
        else:
            self._queues.push(t, self._class_of(t))

    def _delay(self, t: Task, not_before_ns: int, now_ns: int, *, event: bool = True) -> None:
        """-> QUEUED but not claimable until ``not_before_ns`` (``queued_ns`` is None till then)."""
        self._move(t, QUEUED)
        t.not_before_ns = not_before_ns
        t.queued_ns = None
        self._delay_seq += 1
        heapq.heappush(self._delayed, (not_before_ns, self._delay_seq, t))
        self.out.saved[t.id] = t
        if event and self.emit_events:
            self._event(t, now_ns)

    def _finish(self, t: Task, status: TaskStatus, now_ns: int, *, error: str | None = None) -> None:
        """Move a task to a terminal status and out of the core; settle its dependents
        (completion releases them, anything else fails them, transitively)."""
        stack = [(t, status, error)]
        out = self.out
        deps = self._deps
        while stack:
            t, status, error = stack.pop()
            self._leave(t)
            if t.status is PENDING:
                deps.forget(t.id)
            t.status = status
            t.finished_ns = now_ns
            t.lease_deadline_ns = None
            if error is not None:
                t.error = error
            if t.spec.idempotency_key is not None:
                self._forget_key(t)
            if out.saved:
                out.saved.pop(t.id, None)
            out.finished[t.id] = t
            if self.emit_events:
                self._event(t, now_ns)
            if t.id not in deps.dependents:
                continue
            for d in deps.take_dependents(t.id):
                dt = self.tasks.get(d)
                if dt is None or dt.status is not PENDING or not deps.waits_on(d, t.id):
                    continue  # gone, or a stale or repeated entry (already failed in this cascade)
                if status is not COMPLETED:
                    deps.forget(d)
                    stack.append((dt, FAILED, f"dependency {t.id} {status.value}"))
                elif deps.met_one(d, t.id):
                    self._ready_or_delay(dt, now_ns)

    def _forget_key(self, t: Task) -> None:
        """The task leaves: its idempotency key moves to the bounded memory of recent keys."""
        key = t.spec.idempotency_key
        if key is None or self._idem.pop(key, None) is None:
            return
        self._recent_idem[key] = t.id
        self._recent_idem_order.append(key)
        while len(self._recent_idem_order) > self.config.recent_keys:
            self._recent_idem.pop(self._recent_idem_order.popleft(), None)

    # ------------------------------------------------------------------ cancel, requeue

    def cancel(self, task_id: str, now_ns: int) -> TaskStatus:
        """Cancel an active task; return the status it had. A worker running it learns of it on
        its next heartbeat. Dependents fail."""
        t = self.tasks.get(task_id)
        if t is None:
            raise TaskNotFoundError(task_id)
        prev = t.status
        w = self.workers.get(t.assigned_worker or "") if prev in _LEASED else None
        if w is not None:
            w.active.discard(t.id)
            w.revoked.append((t.id, t.attempt))
        self._finish(t, CANCELLED, now_ns, error="cancelled")
        if w is not None and w.id in self._waiters:  # its freed slot serves its waiting claim
            self._refill(w, now_ns)
        self._dispatch(now_ns)
        return prev

    def requeue(self, record: Task, now_ns: int) -> None:
        """Put a failed (dead-lettered) task back with a fresh retry budget. ``record`` is its
        stored terminal record (the runtime loads it). It waits for dependencies that are
        active again; finished ones count as met (the operator's call)."""
        if record.status is not FAILED:
            raise InvalidTransitionError(record.id, record.status.value, "requeue", "status failed")
        if record.id in self.tasks:
            raise InvalidTransitionError(record.id, self.tasks[record.id].status.value, "requeue", "status failed")
        t = record
        t.status = PENDING
        t.failures = 0
        t.finished_ns = None
        t.assigned_worker = None
        t.lease_deadline_ns = None
        t.result = None
        self._enter(t)
        key = t.spec.idempotency_key
        if key is not None:
            self._idem[key] = t.id
        self.out.finished.pop(t.id, None)
        self.out.counters["requeued"] += 1
        if self.emit_events:
            self._event(t, now_ns)
        unmet = [d for d in t.spec.dependencies if d in self.tasks]
        if unmet:
            self._deps.wait(t.id, unmet)
            self.out.saved[t.id] = t
        else:
            self._make_ready(t, now_ns)
        self._dispatch(now_ns)

    # ------------------------------------------------------------------ time

    def tick(self, now_ns: int) -> None:
        """Advance time: due retries become ready, expired leases fail, silent workers are
        marked unhealthy (their tasks go to others), long-unhealthy workers are forgotten."""
        delayed = self._delayed
        while delayed and delayed[0][0] <= now_ns:
            nb, _, t = heapq.heappop(delayed)
            if t.status is QUEUED and t.queued_ns is None and t.not_before_ns == nb and self.tasks.get(t.id) is t:
                self._make_ready(t, now_ns)
        for t in self._leases.expired(now_ns):
            self._lease_expired(t, now_ns)
        self._check_workers(now_ns)
        self._leases.compact(self.leased())
        self._dispatch(now_ns)

    def _lease_expired(self, t: Task, now_ns: int) -> None:
        attempt = t.attempt
        w = self.workers.get(t.assigned_worker or "")
        if w is not None:
            w.active.discard(t.id)
            w.revoked.append((t.id, attempt))
            w.timed_out += 1
            w.failed += 1
            w.success_rate = (1 - self._alpha) * w.success_rate
            self.out.workers[w.id] = w
        self.out.counters["timed_out"] += 1
        error = f"timed out after {t.timeout_s:g}s (attempt {attempt})"
        self._attempt_failed(t, error, now_ns, retry=True, backoff=True)

    def _check_workers(self, now_ns: int) -> None:
        for w in list(self.workers.values()):
            if w.healthy:
                if now_ns - w.last_seen_ns > self._hb_ns:
                    w.healthy, w.unhealthy_since_ns = False, now_ns
                    self._waiters.pop(w.id, None)
                    self.out.workers[w.id] = w
                    self.out.counters["workers_lost"] += 1
                    self._release_all(w, f"worker {w.id} missed heartbeats", now_ns)
            elif w.unhealthy_since_ns is not None and now_ns - w.unhealthy_since_ns > self._expiry_ns:
                del self.workers[w.id]
                self.out.workers.pop(w.id, None)
                self.out.dropped_workers.add(w.id)

    def _release_all(self, w: WorkerState, reason: str, now_ns: int) -> None:
        """Give every task the worker holds back to the line, at once (no backoff). Each lost
        lease counts as a failure of the worker."""
        a = self._alpha
        for tid in sorted(w.active):
            t = self.tasks[tid]
            w.revoked.append((tid, t.attempt))
            w.failed += 1
            w.success_rate = (1 - a) * w.success_rate
            self._attempt_failed(t, reason, now_ns, retry=True, backoff=False)
        if w.active:
            self.out.workers[w.id] = w
        w.active.clear()

    def next_deadline_ns(self) -> int | None:
        """When :meth:`tick` next has something to do (None: nothing scheduled)."""
        cands = []
        if self._delayed:
            cands.append(self._delayed[0][0])
        lease = self._leases.next_deadline_ns()
        if lease is not None:
            cands.append(lease)
        for w in self.workers.values():
            if w.healthy:
                cands.append(w.last_seen_ns + self._hb_ns + 1)
            elif w.unhealthy_since_ns is not None:
                cands.append(w.unhealthy_since_ns + self._expiry_ns + 1)
        return min(cands) if cands else None

    # ------------------------------------------------------------------ restore

    def restore(self, tasks: Iterable[Task], workers: Iterable[WorkerState], now_ns: int) -> None:
        """Rebuild state from stored records (after a restart). Workers get a fresh heartbeat
        grace period; queues are rebuilt in line order; leases held by workers that are gone go
        back in line; leases that expired meanwhile are handled by the next :meth:`tick`."""
        if self.tasks or self.workers:
            raise RuntimeError("restore() needs an empty core")
        for w in workers:
            w.last_seen_ns = now_ns
            w.active = set()
            w.revoked = []
            w.eligible = []
            if not w.healthy and w.unhealthy_since_ns is None:
                w.unhealthy_since_ns = now_ns
            self.workers[w.id] = w
        # The loop below is _enter() and ReadyQueues.push() written out: a restart may load a
        # million tasks, and it must serve within seconds.
        by_id = self.tasks
        by_status = self._by_status
        by_priority = self._by_priority
        by_type = self._by_type
        idem = self._idem
        ready: list[Task] = []
        unmet_ready: list[Task] = []  # pending, but every dependency finished meanwhile
        orphans: list[Task] = []
        leased: list[Task] = []
        for t in tasks:
            st = t.status
            if st in TERMINAL_STATUSES:
                raise ValueError(f"restore() got terminal task {t.id} ({st.value})")
            if t.id in by_id:
                continue  # the same record twice (a hash scan may return one twice)
            sp = t.spec
            by_id[t.id] = t
            by_status[st] += 1
            by_priority[sp.priority] += 1  # type: ignore[index]
            by_type[sp.type] = by_type.get(sp.type, 0) + 1
            if sp.idempotency_key is not None:
                idem[sp.idempotency_key] = t.id
            if st is QUEUED:
                if t.queued_ns is None:
                    self._delay_seq += 1
                    self._delayed.append((t.not_before_ns, self._delay_seq, t))
                else:
                    ready.append(t)
            elif st is not PENDING:
                leased.append(t)
        for t in by_id.values():
            if t.status is PENDING:
                unmet = [d for d in t.spec.dependencies if d in by_id]
                if unmet:
                    self._deps.wait(t.id, unmet)
                else:
                    unmet_ready.append(t)
        heapq.heapify(self._delayed)
        live_leases: list[Task] = []
        for t in leased:
            holder = self.workers.get(t.assigned_worker or "")
            if holder is None or not holder.healthy or t.lease_deadline_ns is None:
                orphans.append(t)
            else:
                holder.active.add(t.id)
                live_leases.append(t)
        live_leases.sort(key=attrgetter("lease_deadline_ns", "id"))
        for t in live_leases:
            self._leases.watch(t, _timeout_ns(t.spec), t.lease_deadline_ns or 0)
        ready.sort(key=attrgetter("queued_ns"))  # back in line in the order they were in (unique times)
        if ready:
            self._last_queued_ns = max(self._last_queued_ns, ready[-1].queued_ns or 0)
        by_req = self._queues.by_requirements
        for t in ready:
            sp = t.spec
            cls = by_req.get((sp.required_capabilities, sp.difficulty))
            if cls is None:
                cls = self._class_of(t)
            cls.deques[_RANK[sp.priority]].append(t)  # type: ignore[index]
            cls.size += 1
        for t in unmet_ready:
            self._ready_or_delay(t, now_ns)
        for t in orphans:
            self._attempt_failed(t, f"worker {t.assigned_worker} is gone", now_ns, retry=True, backoff=False)

    # ------------------------------------------------------------------ reading

    def drain(self) -> Outbox:
        """Take the outbox (and start a new one)."""
        out, self.out = self.out, Outbox()
        return out

    def get(self, task_id: str) -> Task | None:
        return self.tasks.get(task_id)

    def worker_info(self, worker_id: str) -> WorkerInfo:
        return self._worker(worker_id).info()

    def status_counts(self) -> dict[TaskStatus, int]:
        """Active tasks by status."""
        return dict(self._by_status)

    def priority_counts(self) -> dict[Priority, int]:
        """Active tasks by priority."""
        return dict(self._by_priority)

    def type_counts(self) -> dict[str, int]:
        """Active tasks by type."""
        return dict(self._by_type)

    def leased(self) -> int:
        return self._by_status[ASSIGNED] + self._by_status[IN_PROGRESS]

    def capacity(self) -> tuple[int, int]:
        """(healthy workers, their summed concurrency)."""
        healthy = [w for w in self.workers.values() if w.healthy]
        return len(healthy), sum(w.concurrency for w in healthy)

    def advice(self) -> ScalingAdvice:
        """Autoscaling advice from load = (running + queued) / healthy worker slots."""
        n, slots = self.capacity()
        demand = self._by_status[QUEUED] + self.leased()
        return scaling_advice(demand, n, slots, self.config.target_load)

    def waiting_workers(self) -> list[str]:
        return list(self._waiters)
