"""Task and worker records as JSON (what Redis holds), and an outbox as a write batch.

A task record is one flat JSON object with the fields of :class:`Task` that differ from their
defaults: a missing field is None, empty or 0, except ``priority`` (medium), ``difficulty`` (1),
``max_retries`` (3), ``timeout_s`` (2 x difficulty) and ``owner_node`` (the origin node).
``payload`` and ``result`` are base64 text; ``v`` is the record version. A queued task::

    {"v":1,"id":"019a...","type":"resize","status":"queued","origin_node":"n1",
     "created_ns":1764079...,"priority":"high","difficulty":3,"payload":"aW1nLTE=",
     "queued_ns":1764079...}
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import orjson

from node.core.outbox import Outbox
from node.core.workers import WorkerState
from node.model import Priority, Task, TaskSpec, TaskStatus

__all__ = [
    "CorruptRecordError",
    "WriteBatch",
    "decode_task",
    "decode_worker",
    "encode_batch",
    "encode_events",
    "encode_task",
    "encode_worker",
]

RECORD_VERSION = 1
_b64encode = binascii.b2a_base64
_dumps = orjson.dumps


class CorruptRecordError(ValueError):
    """A stored record that cannot be decoded."""


def encode_task(t: Task) -> bytes:
    """The JSON record of a task. Fields that are unset (None, empty, 0 counters) are left out:
    records stay short (fast to write, parse and replay) and read as what is set."""
    s = t.spec
    d: dict[str, Any] = {
        "v": RECORD_VERSION,
        "id": t.id,
        "type": s.type,
        # a task being handed off is stored as the queued task it was: the intent beside it (the
        # handoffs hash) says where it is going, and an abort leaves this record as it stands
        "status": _QUEUED if t.status is _HANDING_OFF else t.status,
        "origin_node": t.origin_node,
        "created_ns": t.created_ns,
    }
    if t.owner_node != t.origin_node:
        d["owner_node"] = t.owner_node
    if s.priority is not _MEDIUM:
        d["priority"] = s.priority
    if s.difficulty != 1:
        d["difficulty"] = s.difficulty
    if s.max_retries != 3:
        d["max_retries"] = s.max_retries
    if s.timeout_s is not None and s.timeout_s != 2.0 * s.difficulty:
        d["timeout_s"] = s.timeout_s
    if s.payload:
        d["payload"] = _b64encode(s.payload, newline=False).decode()
    if s.context:
        d["context"] = dict(s.context)
    if s.required_capabilities:
        d["required_capabilities"] = s.required_capabilities
    if s.dependencies:
        d["dependencies"] = s.dependencies
    if s.idempotency_key is not None:
        d["idempotency_key"] = s.idempotency_key
    if t.attempt:
        d["attempt"] = t.attempt
        d["assigned_worker"] = t.assigned_worker
    if t.failures:
        d["failures"] = t.failures
    if t.not_before_ns:
        d["not_before_ns"] = t.not_before_ns
    if t.queued_ns is not None:
        d["queued_ns"] = t.queued_ns
    if t.claimed_ns is not None:
        d["claimed_ns"] = t.claimed_ns
    if t.started_ns is not None:
        d["started_ns"] = t.started_ns
    if t.finished_ns is not None:
        d["finished_ns"] = t.finished_ns
    if t.lease_deadline_ns is not None:
        d["lease_deadline_ns"] = t.lease_deadline_ns
    if t.result is not None:
        d["result"] = _b64encode(t.result, newline=False).decode()
    if t.error is not None:
        d["error"] = t.error
    if t.waits_on:
        d["waits_on"] = t.waits_on
    if t.hops:
        d["hops"] = t.hops
    if t.from_node is not None:
        d["from_node"] = t.from_node
    return _dumps(d)


_names: dict[str, str] = {}  # one string object per task type / node / worker name


def _name(v: str) -> str:
    n = _names.get(v)
    if n is None:
        if len(_names) > 100_000:
            _names.clear()
        n = _names[v] = v
    return n


_PRIORITY = {p.value: p for p in Priority}
_QUEUED = TaskStatus.QUEUED
_FAILED = TaskStatus.FAILED
_HANDING_OFF = TaskStatus.HANDING_OFF
_MEDIUM = Priority.MEDIUM
_STATUS = {st.value: st for st in TaskStatus}
_new_tuple = tuple.__new__
_b64decode = binascii.a2b_base64


def decode_task(raw: bytes | str) -> Task:
    """A task from its JSON record (hot at recovery: a million of them within seconds)."""
    try:
        d = orjson.loads(raw)
        get = d.get
        payload = get("payload")
        ctx = get("context")
        caps = get("required_capabilities")
        deps = get("dependencies")
        result = get("result")
        worker = get("assigned_worker")
        origin = _name(d["origin_node"])
        priority = get("priority")
        spec = _new_tuple(
            TaskSpec,
            (
                _name(d["type"]),
                _b64decode(payload) if payload else b"",
                MappingProxyType(ctx) if ctx else None,
                _MEDIUM if priority is None else _PRIORITY[priority],
                get("difficulty", 1),
                tuple(caps) if caps else (),
                tuple(deps) if deps else (),
                get("max_retries", 3),
                get("timeout_s"),
                0.0,
                get("idempotency_key"),
                None,
            ),
        )
        return Task(
            d["id"],
            spec,
            _STATUS[d["status"]],
            origin,
            _name(get("owner_node", origin)),
            d["created_ns"],
            None if worker is None else _name(worker),
            get("attempt", 0),
            get("failures", 0),
            get("not_before_ns", 0),
            get("queued_ns"),
            get("claimed_ns"),
            get("started_ns"),
            get("finished_ns"),
            get("lease_deadline_ns"),
            None if result is None else _b64decode(result),
            get("error"),
            tuple(get("waits_on") or ()),
            get("hops", 0),
            get("from_node"),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, binascii.Error) as e:
        head = raw[:120] if isinstance(raw, bytes | str) else raw
        raise CorruptRecordError(f"cannot decode task record ({e!r}): {head!r}") from e


_WORKER_FIELDS = (
    "id",
    "skill",
    "concurrency",
    "registered_ns",
    "last_seen_ns",
    "healthy",
    "completed",
    "failed",
    "timed_out",
    "success_rate",
    "avg_completion_s",
    "busy_s",
    "unhealthy_since_ns",
)


def encode_worker(w: WorkerState) -> bytes:
    d: dict[str, Any] = {f: getattr(w, f) for f in _WORKER_FIELDS}
    d["capabilities"] = sorted(w.capabilities)
    d["v"] = RECORD_VERSION
    return _dumps(d)


def decode_worker(raw: bytes | str) -> WorkerState:
    try:
        d = orjson.loads(raw)
        kw = {f: d[f] for f in _WORKER_FIELDS}
        return WorkerState(capabilities=frozenset(d["capabilities"]), **kw)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CorruptRecordError(f"cannot decode worker record ({e!r})") from e


def encode_events(events: Iterable[Mapping[str, Any]]) -> bytes:
    return _dumps(list(events))


@dataclass(slots=True)
class WriteBatch:
    """One group commit, encoded: what the store must make durable in one atomic write."""

    upserts: list[tuple[str, bytes]] = field(default_factory=list)  # active records
    finished: list[tuple[str, bytes]] = field(default_factory=list)  # leave the active set, archived
    workers: list[tuple[str, bytes]] = field(default_factory=list)
    dropped_workers: list[str] = field(default_factory=list)
    idempotency: list[tuple[str, str]] = field(default_factory=list)  # key -> task id
    counters: dict[str, int] = field(default_factory=dict)
    events: bytes | None = None  # one pub/sub message, or None
    now_ns: int = 0  # when the batch was sealed: picks the archive bucket
    intents: list[tuple[str, str]] = field(default_factory=list)  # hand-offs begun: task id -> peer
    intents_done: list[str] = field(default_factory=list)  # hand-offs ended
    reports: list[tuple[str, bytes]] = field(default_factory=list)  # results to report to another node
    reports_done: list[str] = field(default_factory=list)  # ... acknowledged
    refused: list[tuple[str, int]] = field(default_factory=list)  # ids declared unknown (id, ns)
    dead: list[tuple[str, int]] = field(default_factory=list)  # failed for good here: (id, finish time ms)
    undead: list[str] = field(default_factory=list)  # dead letters requeued

    def __bool__(self) -> bool:
        return bool(
            self.upserts
            or self.finished
            or self.workers
            or self.dropped_workers
            or self.idempotency
            or self.counters
            or self.events
            or self.intents
            or self.intents_done
            or self.reports
            or self.reports_done
            or self.refused
            or self.dead
            or self.undead
        )


def encode_batch(out: Outbox, now_ns: int, *, with_events: bool) -> WriteBatch:
    """Encode an outbox. Counters of finished tasks are derived here: by status, and by type and
    status (``type:<type>:<status>``). Results of handed-off tasks that came back are archived
    with the finished tasks but not counted (the node that ran them counts them)."""
    counters: dict[str, int] = {k: v for k, v in out.counters.items() if v}
    finished: list[tuple[str, bytes]] = []
    by_kind: dict[tuple[TaskStatus, str], int] = {}
    dead: list[tuple[str, int]] = []
    for tid, t in out.finished.items():
        finished.append((tid, encode_task(t)))
        k = (t.status, t.spec.type)
        by_kind[k] = by_kind.get(k, 0) + 1
        if t.status is _FAILED:  # a dead letter: indexed for listing (the dashboard, requeue)
            dead.append((tid, (t.finished_ns or now_ns) // 1_000_000))
    for (st, ttype), n in by_kind.items():
        counters[st.value] = counters.get(st.value, 0) + n
        counters[f"type:{ttype}:{st.value}"] = n
    for tid, t in out.archived.items():  # results that came back: archived, counted by their owner
        finished.append((tid, encode_task(t)))
    return WriteBatch(
        upserts=[(tid, encode_task(t)) for tid, t in out.saved.items()],
        finished=finished,
        workers=[(wid, encode_worker(w)) for wid, w in out.workers.items()],
        dropped_workers=sorted(out.dropped_workers),
        idempotency=list(out.idempotency.items()),
        counters=counters,
        events=encode_events(e.to_dict() for e in out.event_list()) if with_events and out.events else None,
        now_ns=now_ns,
        intents=list(out.intents.items()),
        intents_done=sorted(out.intents_done),
        reports=[(tid, encode_task(t)) for tid, t in out.reports.items()],
        reports_done=sorted(out.reports_done),
        refused=sorted(out.refused.items()),
        dead=dead,
        undead=list(out.requeued),
    )
