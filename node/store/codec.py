"""Task and worker records as JSON (what Redis holds), and an outbox as a write batch.

A task record is one flat JSON object with every field of :class:`Task`; ``payload`` and
``result`` are base64 text. ``v`` is the record version.
"""

from __future__ import annotations

import base64
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
_b64encode = base64.b64encode
_dumps = orjson.dumps


class CorruptRecordError(ValueError):
    """A stored record that cannot be decoded."""


def encode_task(t: Task) -> bytes:
    s = t.spec
    payload = s.payload
    result = t.result
    ctx = s.context
    return _dumps(
        {
            "v": RECORD_VERSION,
            "id": t.id,
            "type": s.type,
            "status": t.status,
            "priority": s.priority,
            "difficulty": s.difficulty,
            "payload": _b64encode(payload).decode() if payload else "",
            "context": dict(ctx) if ctx else {},
            "required_capabilities": s.required_capabilities,
            "dependencies": s.dependencies,
            "max_retries": s.max_retries,
            "timeout_s": 2.0 * s.difficulty if s.timeout_s is None else s.timeout_s,
            "idempotency_key": s.idempotency_key,
            "origin_node": t.origin_node,
            "owner_node": t.owner_node,
            "assigned_worker": t.assigned_worker,
            "attempt": t.attempt,
            "failures": t.failures,
            "not_before_ns": t.not_before_ns,
            "created_ns": t.created_ns,
            "queued_ns": t.queued_ns,
            "claimed_ns": t.claimed_ns,
            "started_ns": t.started_ns,
            "finished_ns": t.finished_ns,
            "lease_deadline_ns": t.lease_deadline_ns,
            "result": None if result is None else _b64encode(result).decode(),
            "error": t.error,
        }
    )


_PRIORITY = {p.value: p for p in Priority}
_STATUS = {st.value: st for st in TaskStatus}
_new_tuple = tuple.__new__
_b64decode = base64.b64decode


def decode_task(raw: bytes | str) -> Task:
    """A task from its JSON record (hot at recovery: a million of them within seconds)."""
    try:
        d = orjson.loads(raw)
        ctx = d["context"]
        payload = d["payload"]
        result = d["result"]
        caps = d["required_capabilities"]
        deps = d["dependencies"]
        spec = _new_tuple(
            TaskSpec,
            (
                d["type"],
                _b64decode(payload) if payload else b"",
                MappingProxyType(ctx) if ctx else None,
                _PRIORITY[d["priority"]],
                d["difficulty"],
                tuple(caps) if caps else (),
                tuple(deps) if deps else (),
                d["max_retries"],
                float(d["timeout_s"]),
                0.0,
                d["idempotency_key"],
                None,
            ),
        )
        return Task(
            d["id"],
            spec,
            _STATUS[d["status"]],
            d["origin_node"],
            d["owner_node"],
            d["created_ns"],
            d["assigned_worker"],
            d["attempt"],
            d["failures"],
            d["not_before_ns"],
            d["queued_ns"],
            d["claimed_ns"],
            d["started_ns"],
            d["finished_ns"],
            d["lease_deadline_ns"],
            None if result is None else _b64decode(result),
            d["error"],
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, binascii.Error) as e:
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

    def __bool__(self) -> bool:
        return bool(
            self.upserts
            or self.finished
            or self.workers
            or self.dropped_workers
            or self.idempotency
            or self.counters
            or self.events
        )


def encode_batch(out: Outbox, now_ns: int, *, with_events: bool) -> WriteBatch:
    """Encode an outbox. Counters of finished tasks are derived here (by status and type)."""
    counters: dict[str, int] = {k: v for k, v in out.counters.items() if v}
    finished: list[tuple[str, bytes]] = []
    for tid, t in out.finished.items():
        finished.append((tid, encode_task(t)))
        st = t.status.value
        counters[st] = counters.get(st, 0) + 1
        k = f"type:{t.spec.type}:{st}"
        counters[k] = counters.get(k, 0) + 1
    return WriteBatch(
        upserts=[(tid, encode_task(t)) for tid, t in out.saved.items()],
        finished=finished,
        workers=[(wid, encode_worker(w)) for wid, w in out.workers.items()],
        dropped_workers=sorted(out.dropped_workers),
        idempotency=list(out.idempotency.items()),
        counters=counters,
        events=encode_events(e.to_dict() for e in out.event_list()) if with_events and out.events else None,
        now_ns=now_ns,
    )
