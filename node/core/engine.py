"""The core's internal transitions: a task becomes ready or waits, is leased (one at a time or
a batch), is handed to waiting claims by score, finishes (settling its dependents), or is retried
after a failed attempt. Commands in :mod:`node.core.core` are made of these."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Mapping
from typing import Any

from node.core.deps import order_batch
from node.core.state import (
    _DEFAULT_TIMEOUT_NS,
    _LEASED,
    _NS,
    _RANK,
    ASSIGNED,
    COMPLETED,
    FAILED,
    HANDED_OFF,
    NEW_TASK,
    PENDING,
    QUEUED,
    TASK_UPDATED,
    CoreState,
    _timeout_ns,
)
from node.core.workers import WorkerState, score
from node.errors import StaleLeaseError, ValidationError
from node.model import Lease, Task, TaskSpec, TaskStatus

__all__ = ["Engine"]


class Engine(CoreState):
    def _current(self, lease: Lease) -> Task:
        if not isinstance(lease, Lease):
            raise ValidationError("lease", f"must be a Lease, got {type(lease).__name__}")
        t = self.tasks.get(lease.task_id)
        if t is None:
            raise StaleLeaseError(lease.task_id, lease.attempt, "the task is no longer active")
        if t.attempt != lease.attempt or t.status not in _LEASED or t.assigned_worker != lease.worker_id:
            raise StaleLeaseError(lease.task_id, lease.attempt, f"the task is {t.status.value} at attempt {t.attempt}")
        return t

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
        default_ns = _DEFAULT_TIMEOUT_NS
        last_timeout_ns = -1
        q: deque[tuple[int, int, str]] | None = None
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
            timeout_ns = default_ns[sp.difficulty] if to is None else int(to * _NS)
            t.lease_deadline_ns = deadline = now_ns + timeout_ns
            active_add(t.id)
            if timeout_ns != last_timeout_ns or q is None:  # runs of one timeout share the lookup
                q = lease_q.get(timeout_ns)
                if q is None:
                    q = lease_q[timeout_ns] = deque()
                last_timeout_ns = timeout_ns
            q.append((deadline, attempt, t.id))
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

    def _grant(self, worker_id: str, leases: list[Lease]) -> None:
        """Leases for a waiting claim. Grants made before the next drain accumulate: a worker
        whose claim was served, and who waits again, gets both (nothing granted is dropped)."""
        del self._waiters[worker_id]
        grants = self.out.grants
        held = grants.get(worker_id)
        if held is None:
            grants[worker_id] = leases
        else:
            held.extend(leases)

    def _dispatch(self, now_ns: int) -> None:
        """Hand tasks that became ready to waiting claims, each to the best-scored waiting worker
        that may take it (:func:`~node.core.workers.score`); queue the rest."""
        fresh = self._fresh
        if not fresh:
            return
        self._fresh = []
        queues = self._queues
        if len(fresh) > 1:
            fresh.sort(key=queues.line_key)
        fast = self._fast
        strict = self._strict
        # [worker, room left, leases granted]
        cands: list[list[Any]] = []
        for wid, max_tasks in self._waiters.items():
            w = self.workers[wid]
            room = min(max_tasks, w.concurrency - len(w.active))
            if room > 0 and w.healthy:
                cands.append([w, room, []])
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
            best: list[Any] | None = None
            best_score = 0.0
            for c in can:
                if c[1] > 0:
                    sc = score(c[0], t, fast)
                    if best is None or sc > best_score:
                        best, best_score = c, sc
            if best is None:
                queues.push(t, cls)
            else:
                best[1] -= 1
                best[2].append(self._assign(t, best[0], now_ns))
        for c in cands:
            if c[2]:
                self._grant(c[0].id, c[2])

    def _refill(self, w: WorkerState, now_ns: int) -> None:
        leases = self._fill(w, self._waiters[w.id], now_ns)
        if leases:
            self._grant(w.id, leases)

    def _worker_done(  # noqa: PLR0917 - positional: it runs on every completion
        self, t: Task, w: WorkerState, now_ns: int, success: bool, reported: bool, blame: bool = True
    ) -> None:
        """A lease of ``w`` on ``t`` ended: the one place where worker statistics learn of it
        (``Core.complete`` writes out the completed case for speed; a test pins the two together).

        ``reported``: the worker said so itself (complete, fail): it is alive. Otherwise (timeout,
        missed heartbeats, deregistered, cancelled, a new incarnation) the worker is told to drop
        the lease on its next heartbeat. ``busy_s`` counts the time the lease was held, whatever
        the outcome; with ``blame`` the outcome also counts toward the worker's success rate,
        completion-time average and counts (not for a cancel or a new incarnation: not its doing).
        """
        tid = t.id
        w.active.discard(tid)
        if reported:
            w.last_seen_ns = now_ns
            if not w.healthy:
                self._seen(w, now_ns)
        else:
            w.revoked.append((tid, t.attempt))
        began = t.started_ns if t.started_ns is not None else t.claimed_ns
        elapsed_s = (now_ns - began) / _NS if began is not None else 0.0
        w.busy_s += elapsed_s
        if blame:
            keep = self._keep
            a = self._alpha
            w.avg_completion_s = keep * w.avg_completion_s + a * elapsed_s
            if success:
                w.success_rate = keep * w.success_rate + a
                w.completed += 1
            else:
                w.success_rate = keep * w.success_rate
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

    def _make_ready(self, t: Task, now_ns: int, *, event: bool = True) -> None:
        """-> QUEUED and in line (or to a waiting claim, at the end of the command)."""
        if t.queued_ns is None and t.status is QUEUED:
            self._n_delayed -= 1  # its not-before time came
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
        self._n_delayed += 1
        t.not_before_ns = not_before_ns
        t.queued_ns = None
        self._delay_seq += 1
        heapq.heappush(self._delayed, (not_before_ns, self._delay_seq, t.id))
        self.out.saved[t.id] = t
        if event and self.emit_events:
            self._event(t, now_ns)

    def _ready_or_delay(self, t: Task, now_ns: int) -> None:
        """A task whose dependencies are met: in line now, or at its not-before time."""
        if t.not_before_ns > now_ns:
            self._delay(t, t.not_before_ns, now_ns)
        else:
            self._make_ready(t, now_ns)

    def _finish(self, t: Task, status: TaskStatus, now_ns: int, *, error: str | None = None) -> None:
        """Move a task to a terminal status and out of the core; settle its dependents
        (completion releases them, anything else fails them, transitively). A task handed off
        to a peer is terminal here but not finished: its dependents wait for its result. An
        adopted task's final record is queued for reporting to the node it came from."""
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
            if status is HANDED_OFF:
                if t.id in deps.dependents:
                    self._remote_deps.add(t.id)
                continue
            if t.from_node is not None:
                self._reports[t.id] = t
                out.reports[t.id] = t
            if t.id in deps.dependents:
                self._settle_dependents(t.id, status, now_ns, stack)

    def _settle_dependents(
        self, tid: str, status: TaskStatus, now_ns: int, stack: list[tuple[Task, TaskStatus, str | None]]
    ) -> None:
        """``tid`` reached its final ``status``: its pending dependents are released (completed)
        or pushed on ``stack`` to fail (anything else)."""
        deps = self._deps
        for d in deps.take_dependents(tid):
            dt = self.tasks.get(d)
            if dt is None or dt.status is not PENDING or not deps.waits_on(d, tid):
                continue  # gone, or a stale or repeated entry (already failed in this cascade)
            if status is not COMPLETED:
                deps.forget(d)
                stack.append((dt, FAILED, f"dependency {tid} {status.value}"))
            elif deps.met_one(d, tid):
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

    def _release_all(self, w: WorkerState, reason: str, now_ns: int, *, blame: bool = True) -> None:
        """Give every task the worker holds back to the line, at once (no backoff). With
        ``blame`` each lost lease counts as a failure of the worker."""
        for tid in sorted(w.active):
            t = self.tasks[tid]
            self._worker_done(t, w, now_ns, False, False, blame)
            self._attempt_failed(t, reason, now_ns, retry=True, backoff=False)

    # ------------------------------------------------------------------ admission

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
        fresh: dict[str, int] = {}  # this call's new tasks by type (all created now)
        q = max(now_ns, self._last_queued_ns + 1)
        self._last_queued_ns = q + len(norm) - 1
        for s, tid in zip(norm, new_ids, strict=True):
            t = Task(tid, s, QUEUED, node_id, node_id, now_ns, None, 0, 0, 0, q)
            q += 1
            tasks[tid] = t
            saved[tid] = t
            by_priority[s.priority] += 1  # type: ignore[index]
            ttype = s.type
            by_type[ttype] = by_type.get(ttype, 0) + 1
            fresh[ttype] = fresh.get(ttype, 0) + 1
            cls = by_req.get((s.required_capabilities, s.difficulty))
            if cls is None:
                cls = self._class_of(t)
            cls.deques[_RANK[s.priority]].append(t)  # type: ignore[index]
            cls.size += 1
            if events is not None:
                events.append((NEW_TASK, t, QUEUED, None, 0, now_ns, None))
        self._by_status[QUEUED] += len(norm)
        out.counters["submitted"] += len(norm)
        self._count_submitted(fresh, now_ns)
        return new_ids

    def _count_submitted(self, fresh: dict[str, int], now_ns: int) -> None:
        """New tasks by type, for the window summaries (with their creation time: the privacy
        bounding counts a task only in the windows after it was created)."""
        submitted = self.out.submitted
        for ttype, n in fresh.items():
            submitted[ttype] = submitted.get(ttype, 0) + n
        self.out.submitted_at.append((now_ns, fresh))

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
        fresh: dict[str, int] = {}
        for i in new:
            ttype = norm[i].type
            fresh[ttype] = fresh.get(ttype, 0) + 1
        if fresh:
            self._count_submitted(fresh, now_ns)
        self._dispatch(now_ns)
        return ids

    def _wait_for(self, t: Task, known: Mapping[str, TaskStatus], now_ns: int) -> None:
        """Register a new task's dependencies: it waits, is ready, or fails (a dependency failed)."""
        unmet: list[str] = []
        for d in t.spec.dependencies:
            if d in self.tasks:
                unmet.append(d)
                continue
            # Not active: finished before (known), handed off (its result decides), or an earlier
            # spec of this batch that failed.
            st = known.get(d, FAILED)
            if st is HANDED_OFF:
                unmet.append(d)
                self._remote_deps.add(d)
                continue
            if st is not COMPLETED:
                self._finish(t, FAILED, now_ns, error=f"dependency {d} {st.value}")
                return
        if unmet:
            t.waits_on = tuple(unmet)
            self._deps.wait(t.id, unmet)
            self.out.saved[t.id] = t
        else:
            self._ready_or_delay(t, now_ns)
