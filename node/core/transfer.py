"""The core's side of hand-off: tasks moving to a peer node and back, as pure commands.

Origin (the node that hands a task off):

* :meth:`Transfers.begin_handoff` takes ready tasks out of line into ``handing_off``, recording
  the peer (made durable *before* the transfer is sent). Refused, all or nothing, for a task
  that is not ready, has dependents on this node, or reached the hop limit.
* :meth:`Transfers.finish_handoff`, once the peer acknowledged that it holds the tasks durably:
  they become ``handed_off`` (terminal here; ``owner_node`` names the new owner).
* :meth:`Transfers.abort_handoff`, when the peer refused them or said it never got them: they
  go back to their old place in line.
* :meth:`Transfers.record_result`: the owner reported a handed-off task's final result; this
  node archives it (``get`` and ``wait`` follow the task to it) without counting it again, and
  releases or fails the tasks here that waited on it.

Owner (the peer):

* :meth:`Transfers.adopt` takes the records in, idempotent on task id (a repeated transfer
  changes nothing and gets the same answer); ids it declared unknown earlier are refused.
* :meth:`Transfers.task_status` says whether it owns tasks (for an origin settling hand-offs
  after a restart); an id it does not know is *declared unknown* for good (a tombstone), so a
  transfer of it that arrives late is refused: the origin, told "unknown", takes the task back,
  and two owners must never result.
* Finished adopted tasks are reported back (:meth:`Transfers.pending_reports`) until the node
  they came from acknowledges (:meth:`Transfers.report_done`).

Invariant across nodes: every task has exactly one owner: active on one node, or finished
there; never on two, never on none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from node.core.engine import Engine
from node.core.state import (
    _NS,
    CANCELLED,
    COMPLETED,
    FAILED,
    HANDED_OFF,
    HANDING_OFF,
    NEW_TASK,
    QUEUED,
    TASK_UPDATED,
)
from node.errors import HandoffProtocolError, InvalidTransitionError, TaskNotFoundError, ValidationError
from node.model import Task, TaskSpec, TaskStatus, check_id, check_name, check_result, normalize_specs

__all__ = ["AdoptResult", "HandoffRecord", "Outcome", "RemoteStatus", "Transfers"]

_FINAL = (COMPLETED, FAILED, CANCELLED)
TOMBSTONE_S = 86_400.0  # how long a "declared unknown" is remembered (far beyond any RPC deadline)


class HandoffRecord(NamedTuple):
    """A task as it travels to a peer: what the peer needs to own it."""

    task_id: str
    spec: TaskSpec
    origin_node: str  # where it was submitted
    created_ns: int
    attempt: int  # leases granted so far (fencing continues from there)
    failures: int  # failed attempts so far (the retry budget continues)
    hops: int  # moves so far, before this one
    error: str | None = None


class Outcome(NamedTuple):
    """A handed-off task's final result, reported to the node it came from."""

    task_id: str
    status: TaskStatus  # completed, failed or cancelled
    finished_ns: int
    attempt: int
    worker_id: str | None
    owner_node: str  # where it finished
    result: bytes | None = None
    error: str | None = None


class RemoteStatus(StrEnum):
    OWNED = "owned"  # this node holds it, finished it, or handed it on
    UNKNOWN = "unknown"  # never received (and now refused for good)


@dataclass(slots=True)
class AdoptResult:
    adopted: list[str] = field(default_factory=list)  # taken in now
    already: list[str] = field(default_factory=list)  # taken in by an earlier transfer: the same answer
    refused: dict[str, str] = field(default_factory=dict)  # task id -> why

    @property
    def owned(self) -> list[str]:
        """Every id this node holds now (what the origin may mark handed off)."""
        return self.adopted + self.already


_new_tuple = tuple.__new__  # skips NamedTuple's Python-level __new__ (thousands per transfer)


def record_of(t: Task) -> HandoffRecord:
    """The record that carries ``t`` to a peer."""
    return _new_tuple(
        HandoffRecord, (t.id, t.spec, t.origin_node, t.created_ns, t.attempt, t.failures, t.hops, t.error)
    )


def outcome_of(t: Task) -> Outcome:
    """The report of a finished adopted task."""
    assert t.finished_ns is not None
    return Outcome(t.id, t.status, t.finished_ns, t.attempt, t.assigned_worker, t.owner_node, t.result, t.error)


def _same_result(final: Task, o: Outcome) -> bool:
    """Whether a report says what was recorded."""
    recorded = (final.status, final.owner_node, final.finished_ns, final.attempt, final.result, final.error)
    return recorded == (o.status, o.owner_node, o.finished_ns, o.attempt, o.result, o.error)


def _ids(field_name: str, task_ids: Sequence[str], active: Mapping[str, Task]) -> list[str]:
    """Task ids given to a command, checked (an id of an active task is known to be valid)."""
    if isinstance(task_ids, str) or not isinstance(task_ids, Sequence):
        raise ValidationError(field_name, f"expected a sequence of task ids, got {type(task_ids).__name__}")
    ids = [tid if type(tid) is str and tid in active else check_id(field_name, tid) for tid in task_ids]
    if len(set(ids)) != len(ids):
        raise ValidationError(field_name, "the same task id twice")
    return ids


class Transfers(Engine):
    """Hand-off commands (see the module docstring)."""

    # ------------------------------------------------------------------ origin

    def _has_dependents(self, tid: str) -> bool:
        deps = self._deps
        return any(d in self.tasks and deps.waits_on(d, tid) for d in deps.dependents.get(tid, ()))

    def handoff_candidates(self, n: int, exclude: Collection[str] = ()) -> list[str]:
        """Up to ``n`` ready tasks that may be handed off, those that would wait longest first
        (lowest in line): no dependents here, under the hop limit, not in ``exclude`` (offered
        already)."""
        if n <= 0:
            return []
        max_hops = self.config.max_hops
        line_key = self._queues.line_key
        dependents = self._deps.dependents
        found, in_order = self._queues.tails(n + len(exclude))
        tails = [
            t
            for t in found
            if t.hops < max_hops and t.id not in exclude and (t.id not in dependents or not self._has_dependents(t.id))
        ]
        if not in_order:  # (from one deque they are in line order already: a deque is sorted by line key)
            tails.sort(key=line_key, reverse=True)
        return [t.id for t in tails[:n]]

    def begin_handoff(self, task_ids: Sequence[str], peer: str, now_ns: int) -> None:
        """Ready tasks -> ``handing_off`` to ``peer``, out of line (all or nothing)."""
        peer = check_name("peer", peer)
        if peer == self.node_id:
            raise ValidationError("peer", f"{peer!r} is this node")
        ids = _ids("task_ids", task_ids, self.tasks)
        tasks: list[Task] = []
        for tid in ids:
            t = self.tasks.get(tid)
            if t is None:
                raise TaskNotFoundError(tid)
            if t.status is not QUEUED or t.queued_ns is None:
                what = "waiting for its start time" if t.status is QUEUED else t.status.value
                raise InvalidTransitionError(tid, what, "hand off", "a ready task (queued and claimable)")
            if t.hops >= self.config.max_hops:
                raise InvalidTransitionError(
                    tid, f"at {t.hops} hops", "hand off", f"fewer than {self.config.max_hops} hops"
                )
            if tid in self._deps.dependents and self._has_dependents(tid):
                raise InvalidTransitionError(tid, "awaited by tasks here", "hand off", "no dependents on this node")
            tasks.append(t)
        queues = self._queues
        intents = self.out.intents
        for t in tasks:
            queues.remove(t)
            self._move(t, HANDING_OFF)
            t.handoff_peer = peer
            self.out.intents_done.discard(t.id)  # aborted earlier in this outbox: the new intent stands
            intents[t.id] = peer  # the stored record stays as it is (queued); the intent says where to
            if self.emit_events:
                self._event(t, now_ns)

    def _handing_off(self, task_ids: Sequence[str], peer: str | None, operation: str) -> list[Task]:
        ids = _ids("task_ids", task_ids, self.tasks)
        tasks = []
        for tid in ids:
            t = self.tasks.get(tid)
            if t is None or t.status is not HANDING_OFF:
                status = "not active here" if t is None else t.status.value
                if peer is not None:
                    raise HandoffProtocolError(f"peer {peer!r} answered for task {tid!r}, which is {status}")
                if t is None:
                    raise TaskNotFoundError(tid)
                raise InvalidTransitionError(tid, status, operation, "status handing_off")
            if peer is not None and t.handoff_peer != peer:
                raise HandoffProtocolError(
                    f"peer {peer!r} answered for task {tid!r}, which is being handed to {t.handoff_peer!r}"
                )
            tasks.append(t)
        return tasks

    def finish_handoff(self, task_ids: Sequence[str], peer: str, now_ns: int) -> None:
        """``peer`` holds these tasks durably: they are ``handed_off`` here (all or nothing;
        :class:`HandoffProtocolError` if ``peer`` was not handed one of them)."""
        out = self.out
        finished, saved, intents = out.finished, out.saved, out.intents
        events = out.events if self.emit_events else None
        dependents = self._deps.dependents
        for t in self._handing_off(task_ids, peer, "finish a hand-off"):
            tid = t.id
            t.owner_node = peer
            t.handoff_peer = None
            intents.pop(tid, None)  # as _end_intent
            out.intents_done.add(tid)
            if t.spec.idempotency_key is not None or tid in dependents:
                self._finish(t, HANDED_OFF, now_ns)  # keys to forget, dependents to keep waiting
                continue
            self._leave(t)  # the rest of _finish for a task nothing here depends on, written out
            t.status = HANDED_OFF
            t.finished_ns = now_ns
            if saved:
                saved.pop(tid, None)
            finished[tid] = t
            if events is not None:
                events.append((TASK_UPDATED, t, HANDED_OFF, None, t.attempt, now_ns, None))

    def abort_handoff(self, task_ids: Sequence[str], now_ns: int, *, peer: str | None = None) -> None:
        """The peer refused these tasks or never got them: back to their old place in line.
        With ``peer``, it is the peer's answer (a task not being handed to it is a protocol error)."""
        tasks = self._handing_off(task_ids, peer, "abort a hand-off")
        queues = self._queues
        for t in tasks:
            t.handoff_peer = None
            self._move(t, QUEUED)
            queues.put_back(t, self._class_of(t))
            self._end_intent(t.id)  # its stored record never left its place in line
            if self.emit_events:
                self._event(t, now_ns)
        for wid in list(self._waiters):  # waiting claims may take them now
            if wid in self._waiters:
                self._refill(self.workers[wid], now_ns)

    def _end_intent(self, tid: str) -> None:
        """The hand-off ended: its intent goes, unwritten or stored (an older intent of the same
        task may be stored even when a newer one was not written yet)."""
        out = self.out
        out.intents.pop(tid, None)
        out.intents_done.add(tid)

    def handoffs_in_flight(self) -> dict[str, list[str]]:
        """Tasks being handed off, by peer (to settle after a restart)."""
        by_peer: dict[str, list[str]] = {}
        for t in self.tasks.values():
            if t.status is HANDING_OFF and t.handoff_peer is not None:
                by_peer.setdefault(t.handoff_peer, []).append(t.id)
        return by_peer

    def record_result(self, outcome: Outcome, peer: str, archived: Task | None, now_ns: int) -> Task:
        """``peer`` reports the final result of a task this node handed to it. ``archived`` is
        this node's record of the task (the runtime reads it from the archive). Returns the final
        record; a repeated report changes nothing and returns the same."""
        if type(outcome) is not Outcome:
            raise ValidationError("outcome", f"must be an Outcome, got {type(outcome).__name__}")
        tid = outcome.task_id
        active = self.tasks.get(tid)
        if archived is None and active is not None and active.status is HANDING_OFF and active.handoff_peer == peer:
            # The peer ran it before this node settled the hand-off (the transfer's answer was
            # lost, or this node restarted): a result proves the peer owns it.
            self.finish_handoff([tid], peer, now_ns)
            archived = self.out.finished[tid]
        if archived is None or archived.id != tid:
            raise HandoffProtocolError(f"peer {peer!r} reported on task {tid!r}, which this node never handed off")
        if archived.status is not HANDED_OFF:
            if archived.status in _FINAL and _same_result(archived, outcome):
                return archived  # reported before: the same answer (harmless whoever repeats it)
            newer = archived.owner_node == outcome.owner_node and outcome.finished_ns > (archived.finished_ns or 0)
            if not (archived.status in _FINAL and newer):  # (newer: requeued on its owner, finished again)
                what = "with another result than the" if archived.status in _FINAL else "which is"
                raise HandoffProtocolError(
                    f"peer {peer!r} reported on task {tid!r} {what} {archived.status.value} here"
                )
        elif archived.owner_node != peer:
            raise HandoffProtocolError(
                f"peer {peer!r} reported on task {tid!r}, which was handed to {archived.owner_node!r}"
            )
        if outcome.status not in _FINAL:
            raise ValidationError("outcome.status", f"{outcome.status!r}", limit="completed|failed|cancelled")
        result = None if outcome.result is None else check_result(outcome.result, self.limits)
        final = dataclasses.replace(
            archived,
            status=outcome.status,
            finished_ns=outcome.finished_ns,
            attempt=outcome.attempt,
            assigned_worker=outcome.worker_id,
            owner_node=check_name("owner_node", outcome.owner_node),
            result=result,
            error=outcome.error,
        )
        out = self.out
        out.archived[tid] = final
        out.counters[f"handoff_result:{final.status.value}"] += 1
        if self.emit_events:
            self._event(final, now_ns)
        if final.from_node is not None:  # this node had adopted it: pass the result on
            self._reports[tid] = final
            out.reports[tid] = final
        if tid in self._remote_deps:
            self._remote_deps.discard(tid)
            stack: list[tuple[Task, TaskStatus, str | None]] = []
            self._settle_dependents(tid, final.status, now_ns, stack)
            for dt, st, err in stack:
                if dt.id in self.tasks:
                    self._finish(dt, st, now_ns, error=err)
            self._dispatch(now_ns)
        return final

    # ------------------------------------------------------------------ owner

    def _check_record(self, rec: HandoffRecord, i: int, spec: TaskSpec) -> HandoffRecord:
        """One record, its ``spec`` already checked (a transfer's specs are checked in one batch)."""
        tid, _, origin, created_ns, attempt, failures, hops, error = rec
        try:
            check_id("task_id", tid)
            check_name("origin_node", origin)
        except ValidationError as e:
            raise e.at(i, "records") from None
        if error is not None and type(error) is not str:
            raise ValidationError("error", "must be a string or None", index=i, batch="records")
        for name, v in (("created_ns", created_ns), ("attempt", attempt), ("failures", failures), ("hops", hops)):
            if type(v) is not int or v < 0:
                raise ValidationError(name, f"{v!r} must be a non-negative integer", index=i, batch="records")
        if hops + 1 > self.config.max_hops:
            raise ValidationError(
                "hops", f"{hops} hops already", limit=f"< {self.config.max_hops}", index=i, batch="records"
            )
        return rec if spec is rec.spec else rec._replace(spec=spec)

    def adopt(
        self, records: Sequence[HandoffRecord], from_node: str, now_ns: int, *, known: Mapping[str, Task] | None = None
    ) -> AdoptResult:
        """Take handed-off tasks in from ``from_node``: they are queued here, owned here.

        ``known`` holds this node's finished records of those ids (the runtime reads them from
        the archive): a task adopted, finished (or handed on) before is answered "already"
        again. Every record is checked before any is taken (all or nothing for bad input);
        an id declared unknown earlier, or used here by a task from elsewhere, is refused."""
        from_node = check_name("from_node", from_node)
        if from_node == self.node_id:
            raise ValidationError("from_node", f"{from_node!r} is this node")
        kind: type = type(records)
        if kind is HandoffRecord or isinstance(records, str) or not isinstance(records, Sequence):
            got = "one HandoffRecord (pass [record])" if kind is HandoffRecord else kind.__name__
            raise ValidationError("records", f"expected a sequence of HandoffRecord, got {got}")
        for i, r in enumerate(records):
            if type(r) is not HandoffRecord:
                got = type(r).__name__
                raise ValidationError("record", f"must be a HandoffRecord, got {got}", index=i, batch="records")
        try:
            specs, _ = normalize_specs([r.spec for r in records], self.limits)
        except ValidationError as e:
            raise e.at(e.index or 0, "records") from None
        checked = [self._check_record(r, i, specs[i]) for i, r in enumerate(records)]
        if len({r.task_id for r in checked}) != len(checked):
            raise ValidationError("records", "the same task id twice in one transfer")
        known = known or {}
        res = AdoptResult()
        fresh: list[HandoffRecord] = []
        for rec in checked:
            tid = rec.task_id
            here = self.tasks.get(tid) or known.get(tid)
            if tid in self._refused:
                res.refused[tid] = "declared unknown to a status query before this transfer arrived"
            elif here is not None:
                if here.from_node == from_node:
                    res.already.append(tid)
                else:
                    res.refused[tid] = "this task id is in use here"
            else:
                fresh.append(rec)
        if fresh:
            self._take_in(fresh, from_node, now_ns, res)
        return res

    def _take_in(self, fresh: list[HandoffRecord], from_node: str, now_ns: int, res: AdoptResult) -> None:
        """Checked records -> queued tasks owned here, in line now (or to waiting claims)."""
        out = self.out
        adopted = out.adopted
        adopted_at = out.adopted_at
        saved = out.saved
        events = out.events if self.emit_events else None
        node_id = self.node_id
        tasks = self.tasks
        queues = self._queues
        by_req = queues.by_requirements
        by_priority = self._by_priority
        by_type = self._by_type
        direct = not self._waiters  # nobody waits: straight in line (else through dispatch)
        q = max(now_ns, self._last_queued_ns + 1)
        self._last_queued_ns = q + len(fresh) - 1
        for rec in fresh:
            spec = rec.spec
            if spec.idempotency_key is not None or spec.delay_s:
                spec = spec._replace(idempotency_key=None, delay_s=0.0)  # keys and delays stay with the origin
            t = Task(rec.task_id, spec, QUEUED, rec.origin_node, node_id, rec.created_ns, None, rec.attempt)
            t.failures, t.error, t.hops, t.from_node, t.queued_ns = rec.failures, rec.error, rec.hops + 1, from_node, q
            q += 1
            tid = t.id
            tasks[tid] = t
            saved[tid] = t
            by_priority[spec.priority] += 1  # type: ignore[index]
            ttype = spec.type
            by_type[ttype] = by_type.get(ttype, 0) + 1
            adopted[ttype] = adopted.get(ttype, 0) + 1
            adopted_at.append((rec.created_ns, ttype))
            if direct:
                cls = by_req.get((spec.required_capabilities, spec.difficulty))
                if cls is None:
                    cls = self._class_of(t)
                queues.push(t, cls)
            else:
                self._fresh.append(t)
            if events is not None:
                events.append((NEW_TASK, t, QUEUED, None, t.attempt, now_ns, None))
            res.adopted.append(tid)
        self._by_status[QUEUED] += len(fresh)
        out.counters["adopted"] += len(fresh)
        self._dispatch(now_ns)

    def task_status(
        self, task_ids: Sequence[str], asker: str, now_ns: int, *, known: Mapping[str, Task] | None = None
    ) -> dict[str, RemoteStatus]:
        """Whether this node owns each task ``asker`` handed to it. An id it never received is
        declared unknown, durably (its late transfer will be refused)."""
        asker = check_name("asker", asker)
        ids = _ids("task_ids", task_ids, self.tasks)
        known = known or {}
        answer: dict[str, RemoteStatus] = {}
        self._prune_refused(now_ns)
        for tid in ids:
            here = self.tasks.get(tid) or known.get(tid)
            if here is not None and here.from_node == asker:
                answer[tid] = RemoteStatus.OWNED
            else:
                answer[tid] = RemoteStatus.UNKNOWN
                if here is None and tid not in self._refused:
                    self._refused[tid] = now_ns
                    self.out.refused[tid] = now_ns
        return answer

    def _prune_refused(self, now_ns: int) -> None:
        cutoff = now_ns - int(TOMBSTONE_S * _NS)
        for tid in [tid for tid, at in self._refused.items() if at < cutoff]:
            del self._refused[tid]

    def pending_reports(self) -> dict[str, list[Outcome]]:
        """Final results of adopted tasks not yet acknowledged, by the node to report them to."""
        by_node: dict[str, list[Outcome]] = {}
        for t in self._reports.values():
            if t.from_node is not None:
                by_node.setdefault(t.from_node, []).append(outcome_of(t))
        return by_node

    def report_done(self, task_ids: Sequence[str]) -> None:
        """The node these results went to acknowledged them (ids not pending are ignored: a
        repeated acknowledgement)."""
        for tid in task_ids:
            if self._reports.pop(tid, None) is not None:
                self.out.reports_done.add(tid)
                self.out.reports.pop(tid, None)
