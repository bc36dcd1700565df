"""The scheduling core: a pure state machine over one node's active tasks and workers.

Every command takes the current time (``now_ns``) and mutates in-memory state; what must be
persisted or announced accumulates in :attr:`Core.out` (an :class:`Outbox`), which the runtime
swaps out at each group commit. No I/O, no clock, no global randomness: the runtime, the
simulator and the tests drive this same object.

Only *active* tasks live here (pending, queued, assigned, in progress). Finished tasks go to the
outbox and leave; facts about them that a command needs (a dependency's final status, an
idempotency key already used) are looked up by the runtime and passed in.

The common paths (a batch of plain tasks, a batch claim, a completion) are written out inline:
this object's throughput is a product goal (see bench/core.py).
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable, Mapping, Sequence
from operator import attrgetter

from node.core.state import (
    _LEASED,
    _NS,
    _RANK,
    ASSIGNED,
    CANCELLED,
    COMPLETED,
    FAILED,
    HANDING_OFF,
    IN_PROGRESS,
    PENDING,
    QUEUED,
    TASK_UPDATED,
    HeartbeatReply,
    _timeout_ns,
)
from node.core.transfer import Transfers
from node.core.workers import (
    WorkerInfo,
    WorkerState,
)
from node.errors import (
    InvalidTransitionError,
    TaskNotFoundError,
    ValidationError,
)
from node.model import (
    TERMINAL_STATUSES,
    Lease,
    Task,
    TaskSpec,
    TaskStatus,
    WorkerSpec,
    check_batch,
    check_error,
    check_result,
    normalize_specs,
    normalize_worker_spec,
)

__all__ = ["Core", "HeartbeatReply"]


class Core(Transfers):
    """The scheduling core: its commands. State and queries: :class:`~node.core.state.CoreState`;
    internal transitions: :class:`~node.core.engine.Engine`; hand-off commands:
    :class:`~node.core.transfer.Transfers`."""

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
        if type(specs) is not list:
            specs = check_batch(specs)
        if len(specs) > limits.max_batch:
            raise ValidationError("specs", f"{len(specs)} specs in one batch", limit=f"<= {limits.max_batch}")
        norm, plain = normalize_specs(specs, limits)
        if plain and not self._waiters:
            return self._submit_plain(norm, now_ns)
        return self._submit_general(norm, now_ns, known or {}, known_keys or {})

    def submit_normalized(self, norm: list[TaskSpec], now_ns: int) -> list[str]:
        """:meth:`submit` for specs the caller already passed through
        :func:`~node.model.normalize_specs` and found *plain* (no dependencies, id, key or
        delay): the validation is skipped, nothing else. For the simulator, which submits the
        same validated spec millions of times; a runtime must call :meth:`submit`."""
        if len(norm) > self.limits.max_batch:
            raise ValidationError("specs", f"{len(norm)} specs in one batch", limit=f"<= {self.limits.max_batch}")
        if self._waiters:
            return self._submit_general(norm, now_ns, {}, {})
        return self._submit_plain(norm, now_ns)

    # ------------------------------------------------------------------ workers

    def register_worker(self, spec: WorkerSpec, now_ns: int) -> WorkerInfo:
        """Add a worker. Registering an id that exists starts a new *incarnation* of it (say, the
        worker process restarted, or reconnected after a node restart): what the old incarnation
        held goes back in line at once, and its late reports on those leases are stale. Its
        statistics are kept."""
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
            self._n_healthy += 1
            self._slots += w.concurrency
        else:
            self._waiters.pop(w.id, None)  # a claim of the old incarnation waits for nobody
            if w.active:
                self._release_all(w, f"worker {w.id} registered again (new incarnation)", now_ns, blame=False)
            self._not_healthy(w, now_ns)
            w.capabilities, w.skill, w.concurrency = caps, spec.skill, spec.concurrency
            w.registered_ns = now_ns
            self._seen(w, now_ns)
        w.eligible = [c for c in self._queues.classes.values() if w.can_take(c, self._strict)]
        self.out.workers[w.id] = w
        self._dispatch(now_ns)
        return w.info()

    def deregister_worker(self, worker_id: str, now_ns: int) -> None:
        """Remove a worker; tasks it holds go back in line (counted as a failed attempt)."""
        w = self._worker(worker_id)
        self._release_all(w, f"worker {worker_id} deregistered", now_ns)
        self._waiters.pop(worker_id, None)
        self._not_healthy(w, now_ns)
        del self.workers[worker_id]
        self.out.workers.pop(worker_id, None)
        self.out.dropped_workers.add(worker_id)
        self._dispatch(now_ns)

    def touch(self, worker_id: str, now_ns: int) -> None:
        """The worker was heard from (it asked for something): it is healthy."""
        self._seen(self._worker(worker_id), now_ns)

    def heartbeat(self, worker_id: str, now_ns: int) -> HeartbeatReply:
        """A worker is alive. The reply lists leases it must stop (cancelled or reassigned)."""
        w = self._worker(worker_id)
        self._seen(w, now_ns)
        revoked = tuple(w.revoked)
        w.revoked.clear()
        return HeartbeatReply(healthy=w.healthy, revoked=revoked)

    # ------------------------------------------------------------------ leases

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

    def unlease(self, leases: Sequence[Lease], now_ns: int) -> int:
        """Leases granted but never delivered (a reply could not carry them, the worker's stream
        closed before they went out): back in line at once, not counted against the task or the
        worker. The attempt number stays spent, so the undelivered lease is stale. Leases that
        are not current any more are left alone. Returns how many went back."""
        n = 0
        for lease in leases:
            if not self.is_current(lease):
                continue
            t = self.tasks[lease.task_id]
            w = self.workers.get(lease.worker_id)
            if w is not None:
                w.active.discard(t.id)
                self.out.workers[w.id] = w
            t.assigned_worker = None
            t.lease_deadline_ns = None
            t.claimed_ns = None
            t.started_ns = None
            self._make_ready(t, now_ns)
            n += 1
        if n:
            self._dispatch(now_ns)
        return n

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
        if w is not None:
            if w.healthy:
                # _worker_done(t, w, now_ns, True, True) written out: the hottest call of a busy
                # node (tests/test_core.py pins the two to the same result)
                w.active.discard(tid)
                w.last_seen_ns = now_ns
                began = t.started_ns if t.started_ns is not None else t.claimed_ns
                elapsed_s = (now_ns - began) / _NS if began is not None else 0.0
                w.busy_s += elapsed_s
                keep = self._keep
                a = self._alpha
                w.avg_completion_s = keep * w.avg_completion_s + a * elapsed_s
                w.success_rate = keep * w.success_rate + a
                w.completed += 1
                self.out.workers[w.id] = w
            else:
                self._worker_done(t, w, now_ns, True, True)
        if tid in self._dependents or sp.idempotency_key is not None or t.from_node is not None:
            self._finish(t, COMPLETED, now_ns)
        else:
            # The common case, written out: _finish() with nothing waiting on the task
            # (completions are the hottest call of a busy node).
            out = self.out
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
            self._worker_done(t, w, now_ns, False, True)
        self._attempt_failed(t, error, now_ns, retry=retry, backoff=True)
        if self._waiters:
            if w is not None and w.id in self._waiters:
                self._refill(w, now_ns)
            self._dispatch(now_ns)

    # ------------------------------------------------------------------ cancel, requeue

    def cancel(self, task_id: str, now_ns: int) -> TaskStatus:
        """Cancel an active task; return the status it had. A worker running it learns of it on
        its next heartbeat. Dependents fail."""
        t = self.tasks.get(task_id)
        if t is None:
            raise TaskNotFoundError(task_id)
        prev = t.status
        if prev is HANDING_OFF:  # the peer may own it already: cancel it once the hand-off settles
            raise InvalidTransitionError(
                task_id, f"being handed off to {t.handoff_peer}", "cancel", "a task that is not being handed off"
            )
        w = self.workers.get(t.assigned_worker or "") if prev in _LEASED else None
        if w is not None:
            self._worker_done(t, w, now_ns, False, False, blame=False)
        elif prev is QUEUED and t.queued_ns is not None:  # in line: its entry stays there, stale
            self._queues.stale[_RANK[t.spec.priority]] += 1  # type: ignore[index]
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
        if record.owner_node != self.node_id:  # a result reported back from the peer that ran it
            raise InvalidTransitionError(
                record.id,
                f"failed on node {record.owner_node}",
                "requeue",
                "a task that failed here (requeue it there)",
            )
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
        self.out.requeued.append(t.id)
        if self.emit_events:
            self._event(t, now_ns)
        unmet = [d for d in t.spec.dependencies if d in self.tasks]
        t.waits_on = tuple(unmet)
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
            nb, _, tid = heapq.heappop(delayed)
            t = self.tasks.get(tid)
            if t is not None and t.status is QUEUED and t.queued_ns is None and t.not_before_ns == nb:
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
            self._worker_done(t, w, now_ns, False, False)
            w.timed_out += 1
        self.out.counters["timed_out"] += 1
        error = f"timed out after {t.timeout_s:g}s (attempt {attempt})"
        self._attempt_failed(t, error, now_ns, retry=True, backoff=True)

    def _check_workers(self, now_ns: int) -> None:
        for w in list(self.workers.values()):
            if w.healthy or w.unhealthy_since_ns is None:  # healthy, or unknown since a recovery
                if now_ns - w.last_seen_ns > self._hb_ns:
                    self._not_healthy(w, now_ns)
                    self._waiters.pop(w.id, None)
                    self.out.workers[w.id] = w
                    self.out.counters["workers_lost"] += 1
                    self._release_all(w, f"worker {w.id} missed heartbeats", now_ns)
            elif now_ns - w.unhealthy_since_ns > self._expiry_ns:
                del self.workers[w.id]
                self.out.workers.pop(w.id, None)
                self.out.dropped_workers.add(w.id)

    def next_deadline_ns(self) -> int | None:
        """When :meth:`tick` next has something to do (None: nothing scheduled)."""
        cands = []
        if self._delayed:
            cands.append(self._delayed[0][0])
        lease = self._leases.next_deadline_ns()
        if lease is not None:
            cands.append(lease)
        for w in self.workers.values():
            if w.healthy or w.unhealthy_since_ns is None:
                cands.append(w.last_seen_ns + self._hb_ns + 1)
            else:
                cands.append(w.unhealthy_since_ns + self._expiry_ns + 1)
        return min(cands) if cands else None

    # ------------------------------------------------------------------ restore

    def restore(
        self,
        tasks: Iterable[Task],
        workers: Iterable[WorkerState],
        now_ns: int,
        *,
        reports: Iterable[Task] = (),
        refused: Mapping[str, int] | None = None,
        remote_pending: Collection[str] = (),
        handoffs: Mapping[str, str] | None = None,
    ) -> None:
        """Rebuild state from stored records (after a restart). Workers that were not unhealthy
        come back of *unknown* health: their slots do not count and they take no new work until
        they are heard from (heartbeat, claim, report) within a fresh heartbeat grace period;
        their leases stay theirs meanwhile. Queues are rebuilt in line order; leases held by
        workers that are gone or unhealthy go back in line; leases that expired meanwhile are
        handled by the next :meth:`tick`. Tasks being handed off stay so (out of line) until the
        runtime settles them with their peer.

        Hand-off state: ``handoffs`` names the peer of each task being handed off (its stored
        record is the queued one it had); ``reports`` are final records of adopted tasks not yet acknowledged by
        the node they came from; ``refused`` the ids declared unknown to a peer (id -> ns);
        ``remote_pending`` the handed-off tasks without a result yet, which pending tasks here
        may wait on."""
        if self.tasks or self.workers:
            raise RuntimeError("restore() needs an empty core")
        for w in workers:
            w.last_seen_ns = now_ns
            w.active = set()
            w.revoked = []
            w.eligible = []
            w.healthy = False  # unknown (unhealthy_since_ns None) or unhealthy, until heard from
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
        handoffs = handoffs or {}
        last_handing_off_ns = 0
        for t in tasks:
            peer = handoffs.get(t.id)
            if peer is not None and t.status is QUEUED:  # the intent, recorded beside the record
                t.status, t.handoff_peer = HANDING_OFF, peer
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
                    self._delayed.append((t.not_before_ns, self._delay_seq, t.id))
                    self._n_delayed += 1
                else:
                    ready.append(t)
            elif st is ASSIGNED or st is IN_PROGRESS:
                leased.append(t)
            elif st is HANDING_OFF and (t.queued_ns or 0) > last_handing_off_ns:
                last_handing_off_ns = t.queued_ns or 0  # it comes back with that queue time if taken back
        for t in by_id.values():
            if t.status is PENDING:
                unmet = [d for d in (t.waits_on or t.spec.dependencies) if d in by_id or d in remote_pending]
                if unmet:
                    self._deps.wait(t.id, unmet)
                    self._remote_deps.update(d for d in unmet if d not in by_id)
                else:
                    unmet_ready.append(t)
        for r in reports:
            self._reports[r.id] = r
        self._refused.update(refused or {})
        heapq.heapify(self._delayed)
        live_leases: list[Task] = []
        for t in leased:
            holder = self.workers.get(t.assigned_worker or "")
            if holder is None or holder.unhealthy_since_ns is not None or t.lease_deadline_ns is None:
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
        self._last_queued_ns = max(self._last_queued_ns, last_handing_off_ns)  # queue times stay unique
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
