"""Between protobuf messages and the domain: the only module that knows both.

Decoding never trusts the wire: enum values outside the known ones, and numbers outside what the
domain accepts, raise :class:`~node.errors.ValidationError` naming the field (the servicers answer
``INVALID_ARGUMENT``); the domain validates the rest (names, sizes, limits) as it does for local
callers. Encoding is straightforward. Errors map to gRPC status codes in :func:`status_of`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence, Sized
from typing import Any, cast

import grpc
import orjson
from google.protobuf import unknown_fields  # type: ignore[attr-defined]  # not in types-protobuf

from federation.privacy.schema import SCHEMA_VERSION, PrivacyCost, ReleasedSummary, SchemaError
from federation.privacy.status import PrivacyStatus, ReleaseOutcome, ReleaseStatus
from federation.view import Estimate, GlobalView, NodeEstimate, QuantileEstimate
from node.analytics import NodeStats, PerformanceReport
from node.core import HeartbeatReply, Load, WorkerInfo
from node.core.transfer import HandoffRecord, Outcome, RemoteStatus
from node.errors import (
    FedcoordError,
    FencedError,
    HandoffProtocolError,
    InvalidTransitionError,
    InvariantError,
    NodeClosedError,
    NotFoundError,
    OverloadedError,
    PeerUnavailableError,
    StaleLeaseError,
    StoreUnavailableError,
    ValidationError,
    WaitTimeoutError,
)
from node.handoff import (
    Offer,
    OfferItem,
    OfferReply,
    Report,
    ReportReply,
    StatusQuery,
    StatusReply,
    Transfer,
    TransferReply,
)
from node.model import Event, EventKind, Lease, Priority, Task, TaskSpec, TaskStatus, WorkerSpec
from protos.fedcoord.v1 import common_pb2 as cpb
from protos.fedcoord.v1 import federation_pb2 as fpb
from protos.fedcoord.v1 import handoff_pb2 as hpb
from protos.fedcoord.v1 import node_pb2 as npb

__all__ = [
    "RemoteStats",
    "event_from_pb",
    "event_to_pb",
    "heartbeat_from_pb",
    "heartbeat_to_pb",
    "lease_from_pb",
    "lease_ref",
    "lease_ref_to_pb",
    "lease_to_pb",
    "load_from_pb",
    "load_to_pb",
    "offer_from_pb",
    "offer_reply_from_pb",
    "offer_reply_to_pb",
    "offer_to_pb",
    "priority_from_pb",
    "privacy_cost_from_pb",
    "privacy_cost_to_pb",
    "privacy_status_from_pb",
    "privacy_status_to_pb",
    "ref_from_pb",
    "refs",
    "release_from_pb",
    "release_to_pb",
    "report_from_pb",
    "report_reply_from_pb",
    "report_reply_to_pb",
    "report_to_pb",
    "spec_from_pb",
    "spec_to_pb",
    "stats_from_pb",
    "stats_to_pb",
    "status_from_pb",
    "status_of",
    "status_query_from_pb",
    "status_query_to_pb",
    "status_reply_from_pb",
    "status_reply_to_pb",
    "summary_from_pb",
    "summary_to_pb",
    "task_from_pb",
    "task_to_pb",
    "transfer_from_pb",
    "transfer_reply_from_pb",
    "transfer_reply_to_pb",
    "transfer_to_pb",
    "view_from_pb",
    "view_to_pb",
    "worker_info_from_pb",
    "worker_info_to_pb",
    "worker_spec_from_pb",
    "worker_spec_to_pb",
]

# ---------------------------------------------------------------------------------- enums

_PRIORITY_TO_PB = {
    Priority.CRITICAL: cpb.PRIORITY_CRITICAL,
    Priority.HIGH: cpb.PRIORITY_HIGH,
    Priority.MEDIUM: cpb.PRIORITY_MEDIUM,
    Priority.LOW: cpb.PRIORITY_LOW,
}
_PRIORITY_FROM_PB: dict[int, Priority] = {int(v): k for k, v in _PRIORITY_TO_PB.items()}
_PRIORITY_FROM_PB[int(cpb.PRIORITY_UNSPECIFIED)] = Priority.MEDIUM

_STATUS_TO_PB: dict[TaskStatus, cpb.TaskStatus] = {
    s: cast("cpb.TaskStatus", cpb.TaskStatus.Value(f"TASK_STATUS_{s.name}")) for s in TaskStatus
}
_STATUS_FROM_PB: dict[int, TaskStatus] = {int(v): k for k, v in _STATUS_TO_PB.items()}

_REMOTE_TO_PB = {RemoteStatus.OWNED: hpb.REMOTE_STATUS_OWNED, RemoteStatus.UNKNOWN: hpb.REMOTE_STATUS_UNKNOWN}
_REMOTE_FROM_PB: dict[int, RemoteStatus] = {int(v): k for k, v in _REMOTE_TO_PB.items()}


def priority_from_pb(value: int, field: str = "priority") -> Priority:
    p = _PRIORITY_FROM_PB.get(value)
    if p is None:
        raise ValidationError(field, f"unknown priority {value}", limit="0..4")
    return p


def status_from_pb(value: int, field: str = "status") -> TaskStatus:
    s = _STATUS_FROM_PB.get(value)
    if s is None:
        raise ValidationError(field, f"unknown task status {value}", limit="1..9")
    return s


def _i32(value: int, field: str) -> int:
    """int32 fields arrive as Python ints already bounded by the wire; negative ones are refused
    here where the domain expects a count."""
    if value < 0:
        raise ValidationError(field, f"must not be negative, got {value}")
    return value


# ---------------------------------------------------------------------------------- tasks


def spec_from_pb(m: cpb.TaskSpec, at: str = "") -> TaskSpec:
    """A caller's spec as the domain takes it (the node validates it further). ``at`` is where
    the spec is in the request (``records[3].spec.``), for the field an error names."""
    return TaskSpec(
        type=m.type,
        payload=m.payload,
        context=dict(m.context) if m.context else None,
        priority=priority_from_pb(m.priority, f"{at}priority"),
        difficulty=m.difficulty if m.HasField("difficulty") else 1,
        required_capabilities=tuple(m.required_capabilities),
        dependencies=tuple(m.dependencies),
        max_retries=m.max_retries if m.HasField("max_retries") else 3,
        timeout_s=m.timeout_s if m.HasField("timeout_s") else None,
        delay_s=m.delay_s,
        idempotency_key=m.idempotency_key if m.HasField("idempotency_key") else None,
        id=m.id if m.HasField("id") else None,
    )


def spec_to_pb(s: TaskSpec, *, payload: bool = True) -> cpb.TaskSpec:
    m = cpb.TaskSpec(
        type=s.type,
        payload=s.payload if payload else b"",
        priority=_PRIORITY_TO_PB[Priority(s.priority)],
        difficulty=s.difficulty,
        required_capabilities=s.required_capabilities,
        dependencies=s.dependencies,
        max_retries=s.max_retries,
        delay_s=s.delay_s,
    )
    if s.context:
        m.context.update(s.context)
    if s.timeout_s is not None:
        m.timeout_s = s.timeout_s
    if s.idempotency_key is not None:
        m.idempotency_key = s.idempotency_key
    if s.id is not None:
        m.id = s.id
    return m


def task_to_pb(t: Task) -> cpb.Task:
    m = cpb.Task(
        id=t.id,
        spec=spec_to_pb(t.spec),
        status=_STATUS_TO_PB[t.status],
        origin_node=t.origin_node,
        owner_node=t.owner_node,
        created_ns=t.created_ns,
        attempt=t.attempt,
        failures=t.failures,
        not_before_ns=t.not_before_ns,
        hops=t.hops,
    )
    for name in ("assigned_worker", "queued_ns", "claimed_ns", "started_ns", "finished_ns", "lease_deadline_ns"):
        v = getattr(t, name)
        if v is not None:
            setattr(m, name, v)
    for name in ("result", "error", "from_node", "handoff_peer"):
        v = getattr(t, name)
        if v is not None:
            setattr(m, name, v)
    return m


def _opt(m: Any, name: str) -> Any:
    return getattr(m, name) if m.HasField(name) else None


def task_from_pb(m: cpb.Task) -> Task:
    return Task(
        id=m.id,
        spec=spec_from_pb(m.spec),
        status=status_from_pb(m.status),
        origin_node=m.origin_node,
        owner_node=m.owner_node,
        created_ns=m.created_ns,
        assigned_worker=_opt(m, "assigned_worker"),
        attempt=m.attempt,
        failures=m.failures,
        not_before_ns=m.not_before_ns,
        queued_ns=_opt(m, "queued_ns"),
        claimed_ns=_opt(m, "claimed_ns"),
        started_ns=_opt(m, "started_ns"),
        finished_ns=_opt(m, "finished_ns"),
        lease_deadline_ns=_opt(m, "lease_deadline_ns"),
        result=_opt(m, "result"),
        error=_opt(m, "error"),
        hops=m.hops,
        from_node=_opt(m, "from_node"),
        handoff_peer=_opt(m, "handoff_peer"),
    )


# ---------------------------------------------------------------------------------- leases

_NO_SPEC = TaskSpec("-")


def lease_to_pb(lease: Lease) -> npb.Lease:
    return npb.Lease(
        task_id=lease.task_id,
        attempt=lease.attempt,
        worker_id=lease.worker_id,
        deadline_ns=lease.deadline_ns,
        spec=spec_to_pb(lease.spec),
    )


def lease_from_pb(m: npb.Lease) -> Lease:
    return Lease(m.task_id, m.attempt, m.worker_id, m.deadline_ns, spec_from_pb(m.spec))


def lease_ref(task_id: str, attempt: int, worker_id: str) -> Lease:
    """A lease as the core checks it for complete, fail and start: only (task id, attempt,
    worker) matter there."""
    return Lease(task_id, _i32(attempt, "lease.attempt"), worker_id, 0, _NO_SPEC)


def lease_ref_to_pb(lease: Lease) -> cpb.LeaseRef:
    """What names a lease on the wire (complete, fail, start): task id, attempt, worker."""
    return cpb.LeaseRef(task_id=lease.task_id, attempt=lease.attempt, worker_id=lease.worker_id)


def ref_from_pb(m: cpb.LeaseRef, field: str = "lease") -> Lease:
    if not m.task_id:
        raise ValidationError(f"{field}.task_id", "must not be empty")
    if not m.worker_id:
        raise ValidationError(f"{field}.worker_id", "must not be empty")
    return Lease(m.task_id, _i32(m.attempt, f"{field}.attempt"), m.worker_id, 0, _NO_SPEC)


# ---------------------------------------------------------------------------------- workers


def worker_spec_from_pb(m: npb.WorkerSpec) -> WorkerSpec:
    return WorkerSpec(
        id=m.id,
        capabilities=tuple(m.capabilities),
        skill=m.skill if m.HasField("skill") else 10,
        concurrency=m.concurrency if m.HasField("concurrency") else 1,
    )


def worker_spec_to_pb(s: WorkerSpec) -> npb.WorkerSpec:
    return npb.WorkerSpec(id=s.id, capabilities=s.capabilities, skill=s.skill, concurrency=s.concurrency)


def worker_info_to_pb(w: WorkerInfo) -> npb.WorkerInfo:
    return npb.WorkerInfo(
        id=w.id,
        capabilities=w.capabilities,
        skill=w.skill,
        concurrency=w.concurrency,
        healthy=w.healthy,
        health=w.health,
        active=w.active,
        completed=w.completed,
        failed=w.failed,
        timed_out=w.timed_out,
        success_rate=w.success_rate,
        avg_completion_s=w.avg_completion_s,
        busy_s=w.busy_s,
        registered_ns=w.registered_ns,
        last_seen_ns=w.last_seen_ns,
    )


def worker_info_from_pb(m: npb.WorkerInfo) -> WorkerInfo:
    return WorkerInfo(
        id=m.id,
        capabilities=tuple(m.capabilities),
        skill=m.skill,
        concurrency=m.concurrency,
        healthy=m.healthy,
        health=m.health,
        active=m.active,
        completed=m.completed,
        failed=m.failed,
        timed_out=m.timed_out,
        success_rate=m.success_rate,
        avg_completion_s=m.avg_completion_s,
        busy_s=m.busy_s,
        registered_ns=m.registered_ns,
        last_seen_ns=m.last_seen_ns,
    )


def heartbeat_to_pb(r: HeartbeatReply, worker_id: str) -> npb.HeartbeatReply:
    return npb.HeartbeatReply(
        healthy=r.healthy,
        revoked=[cpb.LeaseRef(task_id=t, attempt=a, worker_id=worker_id) for t, a in r.revoked],
    )


def heartbeat_from_pb(m: npb.HeartbeatReply) -> HeartbeatReply:
    return HeartbeatReply(healthy=m.healthy, revoked=tuple((r.task_id, r.attempt) for r in m.revoked))


# ---------------------------------------------------------------------------------- events, stats


def event_to_pb(e: Event) -> npb.Event:
    m = npb.Event(
        kind=e.kind.value,
        task_id=e.task_id,
        status=_STATUS_TO_PB[e.status],
        type=e.type,
        priority=_PRIORITY_TO_PB[e.priority],
        attempt=e.attempt,
        ts_ns=e.ts_ns,
    )
    if e.worker_id is not None:
        m.worker_id = e.worker_id
    if e.error is not None:
        m.error = e.error
    return m


def event_from_pb(m: npb.Event) -> Event:
    return Event(
        kind=EventKind(m.kind),
        task_id=m.task_id,
        status=status_from_pb(m.status),
        type=m.type,
        priority=priority_from_pb(m.priority),
        worker_id=_opt(m, "worker_id"),
        attempt=m.attempt,
        ts_ns=m.ts_ns,
        error=_opt(m, "error"),
    )


def load_to_pb(x: Load) -> npb.Load:
    return npb.Load(
        leased=x.leased,
        ready=x.ready,
        delayed=x.delayed,
        pending=x.pending,
        handing_off=x.handing_off,
        slots=x.slots,
        ratio=x.ratio,
    )


def load_from_pb(m: npb.Load) -> Load:
    return Load(m.leased, m.ready, m.delayed, m.pending, m.handing_off, m.slots, m.ratio)


def _json_default(o: object) -> object:
    if isinstance(o, frozenset | set | tuple):
        return sorted(o) if isinstance(o, frozenset | set) else list(o)
    raise TypeError(f"not JSON: {type(o).__name__}")


def stats_to_pb(
    s: NodeStats,
    *,
    load: Load,
    threshold: float,
    handoffs: Mapping[str, int],
    report: PerformanceReport | None,
    history: bool,
    privacy: PrivacyStatus | None = None,
) -> npb.StatsReply:
    doc = dataclasses.asdict(s)
    if not history:
        doc.pop("history", None)
    m = npb.StatsReply(
        node_id=s.node_id,
        state=s.state,
        load=load_to_pb(load),
        threshold=threshold,
        active_by_status=s.active_by_status,
        totals=s.totals,
        workers=[worker_info_to_pb(w) for w in s.workers],
        handoffs=dict(handoffs),
        stats_json=orjson.dumps(doc, default=_json_default, option=orjson.OPT_NON_STR_KEYS),
    )
    if report is not None:
        m.report_json = orjson.dumps(dataclasses.asdict(report), default=_json_default, option=orjson.OPT_NON_STR_KEYS)
    if privacy is not None:
        m.privacy.CopyFrom(privacy_status_to_pb(privacy))
    return m


@dataclasses.dataclass(frozen=True, slots=True)
class RemoteStats:
    """A node's answer to ``Stats``, as a client gets it: the figures every caller reads typed, the
    rest of the analytics (:class:`~node.analytics.NodeStats` as a JSON document: completion-time
    quantiles, throughput, error rates, scaling advice, with ``history`` the per-minute rows) in
    ``stats``, and the performance report (:class:`~node.analytics.PerformanceReport`) in
    ``report`` when it was asked for; the privacy budget (:class:`PrivacyStatus`) in ``privacy``
    (None from a node that does not say)."""

    node_id: str
    state: str
    load: Load
    threshold: float
    active_by_status: dict[str, int]
    totals: dict[str, int]
    workers: list[WorkerInfo]
    handoffs: dict[str, int]
    stats: dict[str, Any]
    report: dict[str, Any] | None
    privacy: PrivacyStatus | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only."""
        return {
            "node_id": self.node_id,
            "state": self.state,
            "load": self.load._asdict(),
            "threshold": self.threshold,
            "active_by_status": dict(self.active_by_status),
            "totals": dict(self.totals),
            "workers": [{**dataclasses.asdict(w), "capabilities": list(w.capabilities)} for w in self.workers],
            "handoffs": dict(self.handoffs),
            "stats": self.stats,
            "report": self.report,
            "privacy": None if self.privacy is None else self.privacy.to_dict(),
        }


def stats_from_pb(m: npb.StatsReply) -> RemoteStats:
    return RemoteStats(
        node_id=m.node_id,
        state=m.state,
        load=load_from_pb(m.load),
        threshold=m.threshold,
        active_by_status=dict(m.active_by_status),
        totals=dict(m.totals),
        workers=[worker_info_from_pb(w) for w in m.workers],
        handoffs=dict(m.handoffs),
        stats=orjson.loads(m.stats_json) if m.stats_json else {},
        report=orjson.loads(m.report_json) if m.report_json else None,
        privacy=privacy_status_from_pb(m.privacy) if m.HasField("privacy") else None,
    )


# ---------------------------------------------------------------------------------- hand-off


def offer_to_pb(o: Offer) -> hpb.OfferRequest:
    return hpb.OfferRequest(
        offer_id=o.offer_id,
        from_node=o.from_node,
        items=[
            hpb.OfferItem(
                task_id=i.task_id,
                type=i.type,
                priority=_PRIORITY_TO_PB[i.priority],
                difficulty=i.difficulty,
                required_capabilities=i.required_capabilities,
            )
            for i in o.items
        ],
    )


def offer_from_pb(m: hpb.OfferRequest) -> Offer:
    items = tuple(
        OfferItem(
            i.task_id,
            i.type,
            priority_from_pb(i.priority, f"items[{n}].priority"),
            i.difficulty,
            tuple(i.required_capabilities),
        )
        for n, i in enumerate(m.items)
    )
    return Offer(m.offer_id, m.from_node, items)


def offer_reply_to_pb(r: OfferReply, load: float | None = None) -> hpb.OfferReply:
    m = hpb.OfferReply(offer_id=r.offer_id, accepted=r.accepted, expires_ns=r.expires_ns, reason=r.reason)
    if load is not None:
        m.load = load
    return m


def offer_reply_from_pb(m: hpb.OfferReply) -> tuple[OfferReply, float | None]:
    return OfferReply(m.offer_id, tuple(m.accepted), m.expires_ns, m.reason), _opt(m, "load")


def _record_to_pb(r: HandoffRecord) -> hpb.HandoffRecord:
    m = hpb.HandoffRecord(
        task_id=r.task_id,
        spec=spec_to_pb(r.spec),
        origin_node=r.origin_node,
        created_ns=r.created_ns,
        attempt=r.attempt,
        failures=r.failures,
        hops=r.hops,
    )
    if r.error is not None:
        m.error = r.error
    return m


def _record_from_pb(m: hpb.HandoffRecord, n: int) -> HandoffRecord:
    return HandoffRecord(
        task_id=m.task_id,
        spec=spec_from_pb(m.spec, f"records[{n}].spec."),
        origin_node=m.origin_node,
        created_ns=m.created_ns,
        attempt=_i32(m.attempt, f"records[{n}].attempt"),
        failures=_i32(m.failures, f"records[{n}].failures"),
        hops=_i32(m.hops, f"records[{n}].hops"),
        error=_opt(m, "error"),
    )


def transfer_to_pb(t: Transfer) -> hpb.TransferRequest:
    return hpb.TransferRequest(
        offer_id=t.offer_id, from_node=t.from_node, records=[_record_to_pb(r) for r in t.records]
    )


def transfer_from_pb(m: hpb.TransferRequest) -> Transfer:
    return Transfer(m.offer_id, m.from_node, tuple(_record_from_pb(r, n) for n, r in enumerate(m.records)))


def transfer_reply_to_pb(r: TransferReply) -> hpb.TransferReply:
    return hpb.TransferReply(owned=r.owned, refused=dict(r.refused))


def transfer_reply_from_pb(m: hpb.TransferReply) -> TransferReply:
    return TransferReply(tuple(m.owned), dict(m.refused))


def status_query_to_pb(q: StatusQuery) -> hpb.TaskStatusRequest:
    return hpb.TaskStatusRequest(from_node=q.from_node, task_ids=q.task_ids)


def status_query_from_pb(m: hpb.TaskStatusRequest) -> StatusQuery:
    return StatusQuery(m.from_node, tuple(m.task_ids))


def status_reply_to_pb(r: StatusReply) -> hpb.TaskStatusReply:
    return hpb.TaskStatusReply(statuses={k: _REMOTE_TO_PB[v] for k, v in r.statuses.items()})


def status_reply_from_pb(m: hpb.TaskStatusReply) -> StatusReply:
    out: dict[str, RemoteStatus] = {}
    for k, v in m.statuses.items():
        s = _REMOTE_FROM_PB.get(v)
        if s is None:
            raise HandoffProtocolError(f"peer answered an unknown status {v} for task {k!r}")
        out[k] = s
    return StatusReply(out)


def _outcome_to_pb(o: Outcome) -> hpb.Outcome:
    m = hpb.Outcome(
        task_id=o.task_id,
        status=_STATUS_TO_PB[o.status],
        finished_ns=o.finished_ns,
        attempt=o.attempt,
        owner_node=o.owner_node,
    )
    for name in ("worker_id", "result", "error"):
        v = getattr(o, name)
        if v is not None:
            setattr(m, name, v)
    return m


def _outcome_from_pb(m: hpb.Outcome, n: int) -> Outcome:
    return Outcome(
        task_id=m.task_id,
        status=status_from_pb(m.status, f"outcomes[{n}].status"),
        finished_ns=m.finished_ns,
        attempt=_i32(m.attempt, f"outcomes[{n}].attempt"),
        worker_id=_opt(m, "worker_id"),
        owner_node=m.owner_node,
        result=_opt(m, "result"),
        error=_opt(m, "error"),
    )


def report_to_pb(r: Report) -> hpb.ReportRequest:
    return hpb.ReportRequest(from_node=r.from_node, outcomes=[_outcome_to_pb(o) for o in r.outcomes])


def report_from_pb(m: hpb.ReportRequest) -> Report:
    return Report(m.from_node, tuple(_outcome_from_pb(o, n) for n, o in enumerate(m.outcomes)))


def report_reply_to_pb(r: ReportReply) -> hpb.ReportReply:
    return hpb.ReportReply(recorded=r.recorded, rejected=dict(r.rejected))


def report_reply_from_pb(m: hpb.ReportReply) -> ReportReply:
    return ReportReply(tuple(m.recorded), dict(m.rejected))


# ---------------------------------------------------------------------------------- federation
#
# A summary is checked by the schema itself (ReleasedSummary and PrivacyCost refuse anything that
# is not a valid release: SchemaError). A view has no checks of its own: it is checked here,
# field by field, before the node reads it (ValidationError naming the field of the request).


def privacy_cost_to_pb(c: PrivacyCost) -> fpb.PrivacyCost:
    return fpb.PrivacyCost(**c.to_record())


def privacy_cost_from_pb(m: fpb.PrivacyCost) -> PrivacyCost:
    """The cost of a release as the schema takes it (:class:`SchemaError` when it does not check)."""
    return PrivacyCost(**{k: getattr(m, k) for k in PrivacyCost.FIELDS})


def summary_to_pb(s: ReleasedSummary) -> fpb.ReleasedSummary:
    d = s.to_record()
    d["cost"] = privacy_cost_to_pb(s.cost)
    return fpb.ReleasedSummary(**d)


def summary_from_pb(m: fpb.ReleasedSummary) -> ReleasedSummary:
    """The summary in ``m``, checked by the schema field by field (:class:`SchemaError`)."""
    if not m.HasField("cost"):
        raise SchemaError("cost: missing")
    for part, msg in (("summary", m), ("cost", m.cost)):
        n = len(unknown_fields.UnknownFieldSet(msg))
        if n:  # a field this schema does not have: nothing else may travel in a release
            raise SchemaError(f"{part}: {n} field(s) that schema {SCHEMA_VERSION} does not have")
    kw: dict[str, Any] = {k: getattr(m, k) for k in ReleasedSummary.FIELDS if k != "cost"}
    for k, v in kw.items():
        if not isinstance(v, int | float | str):  # repeated fields: lists for the schema's checks
            kw[k] = list(v)
    return ReleasedSummary(**kw, cost=privacy_cost_from_pb(m.cost))


_WITH_SUMMARY = frozenset((ReleaseStatus.RELEASED, ReleaseStatus.REPEATED))


def release_to_pb(o: ReleaseOutcome) -> npb.SummaryReply:
    m = npb.SummaryReply(status=o.status.value, reason=o.reason, node_id=o.node_id)
    if o.summary is not None:
        m.summary.CopyFrom(summary_to_pb(o.summary))
    if o.privacy is not None:
        m.privacy.CopyFrom(privacy_status_to_pb(o.privacy))
    return m


def release_from_pb(m: npb.SummaryReply) -> ReleaseOutcome:
    """A node's answer to ``Summary``: a status it does not know, a summary missing where the
    status says there is one (or present where it says there is none), or a summary that does
    not check raise :class:`SchemaError`."""
    try:
        status = ReleaseStatus(m.status)
    except ValueError:
        raise SchemaError(f"status: {m.status!r} is not a release status") from None
    has = m.HasField("summary")
    if has != (status in _WITH_SUMMARY):
        raise SchemaError(f"status {status.value} {'with' if has else 'without'} a summary")
    privacy = privacy_status_from_pb(m.privacy) if m.HasField("privacy") else None
    summary = summary_from_pb(m.summary) if has else None
    if summary is not None and m.node_id and summary.node_id != m.node_id:
        raise SchemaError(f"node_id: {m.node_id!r} answered with a summary of {summary.node_id!r}")
    return ReleaseOutcome(status, summary, m.reason, privacy, m.node_id)


def privacy_status_to_pb(p: PrivacyStatus) -> fpb.PrivacyStatus:
    d = p.to_dict()
    if d["last_window"] is None:
        del d["last_window"]
    return fpb.PrivacyStatus(**d)


def privacy_status_from_pb(m: fpb.PrivacyStatus) -> PrivacyStatus:
    kw = {f.name: getattr(m, f.name) for f in dataclasses.fields(PrivacyStatus)}
    kw["last_window"] = _opt(m, "last_window")
    return PrivacyStatus(**kw)


def _estimate_to_pb(e: Estimate) -> fpb.Estimate:
    return fpb.Estimate(value=e.value, sd=e.sd)


def _quantile_to_pb(q: QuantileEstimate) -> fpb.QuantileEstimate:
    return fpb.QuantileEstimate(q=q.q, value=q.value, low=q.low, high=q.high)


def _node_estimate_to_pb(n: NodeEstimate) -> fpb.NodeEstimate:
    return fpb.NodeEstimate(
        node_id=n.node_id,
        window=n.window,
        occupied=_estimate_to_pb(n.occupied),
        capacity=n.capacity,
        load=_estimate_to_pb(n.load),
        handed_off_out_per_s=_estimate_to_pb(n.handed_off_out_per_s),
        handed_off_in_per_s=_estimate_to_pb(n.handed_off_in_per_s),
    )


def view_to_pb(v: GlobalView) -> fpb.GlobalView:
    m = fpb.GlobalView(
        round=v.round,
        at_ns=v.at_ns,
        window=v.window,
        window_s=v.window_s,
        types=v.types,
        participants=v.participants,
        dropped=[fpb.Dropped(node_id=n, reason=r) for n, r in v.dropped],
        missing=v.missing,
        handed_off_per_s=_estimate_to_pb(v.handed_off_per_s),
        occupied=_estimate_to_pb(v.occupied),
        capacity=v.capacity,
        federation_load=_estimate_to_pb(v.federation_load),
        completion_quantiles_s=[_quantile_to_pb(q) for q in v.completion_quantiles_s],
        completed_in_histogram=_estimate_to_pb(v.completed_in_histogram),
    )
    for name in ("submitted_per_s", "throughput_per_s", "failed_per_s"):
        target = getattr(m, name)
        for k, e in getattr(v, name).items():
            target[k].CopyFrom(_estimate_to_pb(e))
    for k, n in v.nodes.items():
        m.nodes[k].CopyFrom(_node_estimate_to_pb(n))
    return m


MAX_VIEW_NODES = 10_000  # participants, missing, dropped, nodes: each at most this many
MAX_VIEW_TYPES = 257  # the vocabulary (256 names at most) and "other"
MAX_VIEW_QUANTILES = 100
MAX_REASON_CHARS = 4096
MAX_NAME_CHARS = 128  # as the release schema's names
UNKNOWN_NODE = "?"  # a dropped summary that did not say whose it was


def _count(field: str, v: int) -> int:
    if v < 0:
        raise ValidationError(field, f"must not be negative, got {v}", limit=">= 0")
    return v


def _finite(field: str, v: float) -> float:
    if not math.isfinite(v):
        raise ValidationError(field, f"{v!r} is not a finite number")
    return v


def _estimate(field: str, m: fpb.Estimate, entry: str | None = None) -> Estimate:
    """An estimate: a finite non-negative value and sd. In a map (``entry``: the key and
    the path within its value) the error names the map field and says which entry."""

    def bad(name: str, text: str, limit: str | None = None) -> ValidationError:
        if entry is None:
            return ValidationError(f"{field}.{name}", text, limit=limit)
        return ValidationError(field, f"{entry}{name}: {text}", limit=limit)

    if not (math.isfinite(m.value) and m.value >= 0):  # rates, slots, loads: sums of non-negative cells
        raise bad("value", f"{m.value!r} is not a finite number >= 0", "0 <= value < inf")
    if not (math.isfinite(m.sd) and m.sd >= 0):
        raise bad("sd", f"{m.sd!r} is not a finite number >= 0", "0 <= sd < inf")
    return Estimate(m.value, m.sd)


def _at_most(field: str, values: Sized, n: int) -> None:
    if len(values) > n:
        raise ValidationError(field, f"{len(values)} entries", limit=f"at most {n}")


def _name(field: str, v: str, what: str = "") -> str:
    """A name in a view: what the release schema takes as one (type names and node ids come from
    the summaries): 1..128 printable characters, no white space around them."""
    if not v or len(v) > MAX_NAME_CHARS or not v.isprintable() or v.strip() != v:
        limit = f"1..{MAX_NAME_CHARS} printable characters, no white space around them"
        raise ValidationError(field, f"{what}{v!r:.200} is not a name", limit=limit)
    return v


def _names(field: str, values: Sequence[str], limit: int) -> tuple[str, ...]:
    _at_most(field, values, limit)
    out = tuple(_name(f"{field}[{i}]", v) for i, v in enumerate(values))
    if len(set(out)) != len(out):
        raise ValidationError(field, "a name twice")
    return out


def _key(field: str, key: str) -> str:
    return _name(field, key, "key ")


def _estimates(field: str, m: Any) -> dict[str, Estimate]:
    _at_most(field, m, MAX_VIEW_TYPES)
    return {_key(field, k): _estimate(field, m[k], f"[{k!r}].") for k in sorted(m)}


def _quantile(field: str, m: fpb.QuantileEstimate) -> QuantileEstimate:
    if not 0.0 <= m.q <= 1.0:
        raise ValidationError(f"{field}.q", f"{m.q!r} out of range", limit="0..1")
    for name in ("value", "low", "high"):
        _finite(f"{field}.{name}", getattr(m, name))
    if m.low < 0:
        raise ValidationError(f"{field}.low", f"{m.low!r} seconds", limit=">= 0")
    if not m.low <= m.value <= m.high:
        raise ValidationError(field, f"value {m.value!r} is not within [low {m.low!r}, high {m.high!r}]")
    return QuantileEstimate(m.q, m.value, m.low, m.high)


def _node_estimate(field: str, key: str, m: fpb.NodeEstimate) -> NodeEstimate:
    at = f"[{key!r}]."
    if m.node_id != key:
        raise ValidationError(field, f"{at}node_id: {m.node_id!r} is not its key")
    if m.window < 0 or m.capacity < 0:
        name, v = ("window", m.window) if m.window < 0 else ("capacity", m.capacity)
        raise ValidationError(field, f"{at}{name}: must not be negative, got {v}", limit=">= 0")
    occupied = _estimate(field, m.occupied, f"{at}occupied.")
    load = _estimate(field, m.load, f"{at}load.")
    moved_out = _estimate(field, m.handed_off_out_per_s, f"{at}handed_off_out_per_s.")
    moved_in = _estimate(field, m.handed_off_in_per_s, f"{at}handed_off_in_per_s.")
    return NodeEstimate(key, m.window, occupied, m.capacity, load, moved_out, moved_in)


def _dropped(field: str, m: fpb.Dropped) -> tuple[str, str]:
    # The node id a refused summary claims, as the aggregation reads it (printable, 1..128
    # characters, white space around it allowed), or UNKNOWN_NODE.
    node_id = m.node_id
    if not node_id or len(node_id) > MAX_NAME_CHARS or not node_id.isprintable():
        limit = f"1..{MAX_NAME_CHARS} printable characters"
        raise ValidationError(f"{field}.node_id", f"{node_id!r:.200} is not a node id or {UNKNOWN_NODE!r}", limit=limit)
    if len(m.reason) > MAX_REASON_CHARS:
        raise ValidationError(f"{field}.reason", f"{len(m.reason)} characters", limit=f"at most {MAX_REASON_CHARS}")
    return node_id, m.reason


def view_from_pb(m: fpb.GlobalView, at: str = "view.") -> GlobalView:
    """A federation view from the wire, checked before the node reads it: counts and times not
    negative, every number finite, every sd >= 0, quantiles in [0, 1] and within their interval,
    names (types, node ids, map keys: as the release schema's) valid and not repeated;
    :class:`ValidationError` naming the field (``view.nodes``, ``view.completion_quantiles_s[2].q``)
    otherwise. ``at`` is where the view is in the request. ``window_s`` may be 0: the view of a
    round in which no summary was merged."""
    window_s = m.window_s
    if not (math.isfinite(window_s) and 0 <= window_s <= 86400):
        raise ValidationError(f"{at}window_s", f"{window_s!r} out of range", limit="0 <= window_s <= 86400")
    _at_most(f"{at}dropped", m.dropped, MAX_VIEW_NODES)
    _at_most(f"{at}completion_quantiles_s", m.completion_quantiles_s, MAX_VIEW_QUANTILES)
    _at_most(f"{at}nodes", m.nodes, MAX_VIEW_NODES)
    return GlobalView(
        round=_count(f"{at}round", m.round),
        at_ns=_count(f"{at}at_ns", m.at_ns),
        window=_count(f"{at}window", m.window),
        window_s=window_s,
        types=_names(f"{at}types", m.types, MAX_VIEW_TYPES),
        participants=_names(f"{at}participants", m.participants, MAX_VIEW_NODES),
        dropped=tuple(_dropped(f"{at}dropped[{i}]", d) for i, d in enumerate(m.dropped)),
        missing=_names(f"{at}missing", m.missing, MAX_VIEW_NODES),
        submitted_per_s=_estimates(f"{at}submitted_per_s", m.submitted_per_s),
        throughput_per_s=_estimates(f"{at}throughput_per_s", m.throughput_per_s),
        failed_per_s=_estimates(f"{at}failed_per_s", m.failed_per_s),
        handed_off_per_s=_estimate(f"{at}handed_off_per_s", m.handed_off_per_s),
        occupied=_estimate(f"{at}occupied", m.occupied),
        capacity=_count(f"{at}capacity", m.capacity),
        federation_load=_estimate(f"{at}federation_load", m.federation_load),
        completion_quantiles_s=tuple(
            _quantile(f"{at}completion_quantiles_s[{i}]", q) for i, q in enumerate(m.completion_quantiles_s)
        ),
        completed_in_histogram=_estimate(f"{at}completed_in_histogram", m.completed_in_histogram),
        nodes={_key(f"{at}nodes", k): _node_estimate(f"{at}nodes", k, m.nodes[k]) for k in sorted(m.nodes)},
    )


# ---------------------------------------------------------------------------------- errors

_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (ValidationError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (StaleLeaseError, grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidTransitionError, grpc.StatusCode.FAILED_PRECONDITION),
    (HandoffProtocolError, grpc.StatusCode.FAILED_PRECONDITION),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StoreUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (FencedError, grpc.StatusCode.UNAVAILABLE),  # another process serves this node now
    (InvariantError, grpc.StatusCode.INTERNAL),  # a bug
    (NodeClosedError, grpc.StatusCode.UNAVAILABLE),
    (PeerUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (WaitTimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
)


def status_of(err: BaseException) -> grpc.StatusCode:
    """The status code a domain error is answered with (INTERNAL for anything unexpected)."""
    for cls, code in _CODES:
        if isinstance(err, cls):
            return code
    if isinstance(err, FedcoordError):
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INTERNAL


def refs(pairs: Iterable[tuple[str, int]], worker_id: str) -> list[cpb.LeaseRef]:
    return [cpb.LeaseRef(task_id=t, attempt=a, worker_id=worker_id) for t, a in pairs]
