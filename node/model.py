"""Task and worker model: enums, the task record, what callers submit, and validation.

Times are integers in nanoseconds since the Unix epoch (``*_ns``) or float seconds (``*_s``).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple

from node.errors import ValidationError

__all__ = [
    "EMPTY_CONTEXT",
    "PRIORITY_ORDER",
    "TERMINAL_STATUSES",
    "Event",
    "EventKind",
    "Lease",
    "Limits",
    "Priority",
    "Task",
    "TaskSpec",
    "TaskStatus",
    "WorkerSpec",
    "check_batch",
    "check_id",
    "check_name",
    "normalize_spec",
    "normalize_specs",
    "normalize_worker_spec",
]


class Priority(StrEnum):
    """Task priority, most urgent first."""

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 for CRITICAL ... 3 for LOW."""
        return _RANK[self]


PRIORITY_ORDER: tuple[Priority, ...] = (Priority.CRITICAL, Priority.HIGH, Priority.MEDIUM, Priority.LOW)
_RANK = {p: i for i, p in enumerate(PRIORITY_ORDER)}


class TaskStatus(StrEnum):
    PENDING = "pending"  # waiting on dependencies
    QUEUED = "queued"  # ready (or waiting for its not-before time after a retry)
    ASSIGNED = "assigned"  # leased to a worker
    IN_PROGRESS = "in_progress"  # the worker said it started
    HANDING_OFF = "handing_off"  # being transferred to a peer (recorded durably before the transfer)
    COMPLETED = "completed"
    FAILED = "failed"  # dead letter: retries exhausted, dependency failed, or failed without retry
    CANCELLED = "cancelled"
    HANDED_OFF = "handed_off"  # terminal on the origin; another node owns it now

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.HANDED_OFF})


class TaskSpec(NamedTuple):
    """What a caller submits. Validated by the node on the way in (see :class:`Limits`).

    ``timeout_s`` defaults to ``2 * difficulty`` seconds. ``dependencies`` are task ids that must
    complete first. ``id`` may be given (to refer to it from other specs of the same batch);
    otherwise the node makes a time-ordered UUIDv7.
    """

    type: str
    payload: bytes = b""
    context: Mapping[str, str] | None = None
    priority: Priority | str = Priority.MEDIUM
    difficulty: int = 1
    required_capabilities: Sequence[str] = ()
    dependencies: Sequence[str] = ()
    max_retries: int = 3
    timeout_s: float | None = None
    delay_s: float = 0.0
    idempotency_key: str | None = None
    id: str | None = None


@dataclass(slots=True)
class Task:
    """The full record of one task, as the node keeps it and as it is stored (JSON).

    What the caller submitted stays in ``spec`` (validated, immutable) and is also readable as
    attributes (``task.type``, ``task.payload``, ...); the rest is the task's changing state.
    """

    id: str
    spec: TaskSpec
    status: TaskStatus
    origin_node: str
    owner_node: str
    created_ns: int
    assigned_worker: str | None = None
    attempt: int = 0  # leases granted so far; (id, attempt) fences every lease
    failures: int = 0  # failed attempts since submit (or since a manual requeue)
    not_before_ns: int = 0  # not claimable before this time (delay, retry backoff)
    queued_ns: int | None = None  # when it last became ready
    claimed_ns: int | None = None
    started_ns: int | None = None
    finished_ns: int | None = None
    lease_deadline_ns: int | None = None
    result: bytes | None = None
    error: str | None = None
    # While pending: the dependencies it waits on, as decided when it started waiting (a requeued
    # task counts finished dependencies as met even if one is requeued later).
    waits_on: tuple[str, ...] = ()
    # Hand-off: how many times the task moved between nodes; the node it came from (whom this
    # node reports the final result to); while handing off, the peer it is being handed to.
    hops: int = 0
    from_node: str | None = None
    handoff_peer: str | None = None

    @property
    def type(self) -> str:
        return self.spec.type

    @property
    def payload(self) -> bytes:
        return self.spec.payload

    @property
    def context(self) -> Mapping[str, str]:
        c = self.spec.context
        return EMPTY_CONTEXT if c is None else c

    @property
    def priority(self) -> Priority:
        return self.spec.priority  # type: ignore[return-value]

    @property
    def difficulty(self) -> int:
        return self.spec.difficulty

    @property
    def required_capabilities(self) -> tuple[str, ...]:
        return self.spec.required_capabilities  # type: ignore[return-value]

    @property
    def dependencies(self) -> tuple[str, ...]:
        return self.spec.dependencies  # type: ignore[return-value]

    @property
    def max_retries(self) -> int:
        return self.spec.max_retries

    @property
    def timeout_s(self) -> float:
        t = self.spec.timeout_s
        return 2.0 * self.spec.difficulty if t is None else t

    @property
    def idempotency_key(self) -> str | None:
        return self.spec.idempotency_key


class WorkerSpec(NamedTuple):
    """A worker as it registers: what it can do and how much at once."""

    id: str
    capabilities: Sequence[str] = ()
    skill: int = 10
    concurrency: int = 1


class Lease(NamedTuple):
    """One claimed task, as the worker gets it. Only the holder of the current
    ``(task_id, attempt)`` can complete or fail the task."""

    task_id: str
    attempt: int
    worker_id: str
    deadline_ns: int  # the lease expires then unless the worker reports start (which restarts the clock)
    spec: TaskSpec

    @property
    def type(self) -> str:
        return self.spec.type

    @property
    def payload(self) -> bytes:
        return self.spec.payload

    @property
    def context(self) -> Mapping[str, str]:
        c = self.spec.context
        return EMPTY_CONTEXT if c is None else c

    @property
    def priority(self) -> Priority:
        return self.spec.priority  # type: ignore[return-value]

    @property
    def difficulty(self) -> int:
        return self.spec.difficulty

    @property
    def timeout_s(self) -> float:
        t = self.spec.timeout_s
        return 2.0 * self.spec.difficulty if t is None else t


class EventKind(StrEnum):
    NEW_TASK = "new_task"
    TASK_UPDATED = "task_updated"


class Event(NamedTuple):
    """A task event, published once the change is durable."""

    kind: EventKind
    task_id: str
    status: TaskStatus
    type: str
    priority: Priority
    worker_id: str | None
    attempt: int
    ts_ns: int
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.kind.value,
            "task_id": self.task_id,
            "status": self.status.value,
            "task_type": self.type,
            "priority": self.priority.value,
            "worker_id": self.worker_id,
            "attempt": self.attempt,
            "ts_ns": self.ts_ns,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class Limits:
    """Input limits of a node. Every bound here is enforced at the edge with a ValidationError."""

    max_payload_bytes: int = 1 << 20
    max_result_bytes: int = 1 << 20
    max_error_chars: int = 4096
    max_context_entries: int = 64
    max_context_key_chars: int = 128
    max_context_value_chars: int = 4096
    max_capabilities: int = 32
    max_dependencies: int = 256
    max_retries: int = 100
    max_timeout_s: float = 7 * 86400.0
    max_delay_s: float = 30 * 86400.0
    max_idempotency_key_chars: int = 256
    max_batch: int = 10_000
    max_concurrency: int = 10_000


EMPTY_CONTEXT: Mapping[str, str] = MappingProxyType({})
NAME_LIMIT = 128
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]*")
_seen_names: set[str] = set()
_DIFFICULTY_MIN, _DIFFICULTY_MAX = 1, 10


def check_name(field_name: str, value: object) -> str:
    """Validate an identifier-like string that recurs (task type, capability, worker or node id);
    valid names are interned and remembered (up to 65,536), so the next check is one set lookup.
    Task ids go through :func:`check_id` instead."""
    if type(value) is str and value in _seen_names:
        return value
    value = sys.intern(check_id(field_name, value))
    if len(_seen_names) < 65536:
        _seen_names.add(value)
    return value


def check_id(field_name: str, value: object) -> str:
    """Validate a task id (explicit ids, dependencies, adopted records) like a name, without
    remembering it: ids are unbounded in number, and the cache is for the few recurring names."""
    if type(value) is str and value in _seen_names:
        return value  # a name that is also used as an id: already known to be valid
    if not isinstance(value, str):
        raise ValidationError(field_name, f"must be a string, got {type(value).__name__}")
    if not value or len(value) > NAME_LIMIT:
        raise ValidationError(field_name, f"length {len(value)} out of range", limit=f"1..{NAME_LIMIT} chars")
    if _NAME_RE.fullmatch(value) is None:
        raise ValidationError(
            field_name,
            f"{value!r} has characters outside [A-Za-z0-9_.:/@+-] or does not start with a letter/digit",
            limit="[A-Za-z0-9][A-Za-z0-9_.:/@+-]*",
        )
    return value


def _check_int(field_name: str, value: object, lo: int, hi: int) -> int:
    if type(value) is not int:  # bool is an int subclass; refuse it too
        raise ValidationError(field_name, f"must be an integer, got {type(value).__name__}", limit=f"{lo}..{hi}")
    if not lo <= value <= hi:
        raise ValidationError(field_name, f"{value} out of range", limit=f"{lo}..{hi}")
    return value


def _check_seconds(field_name: str, value: object, lo_exclusive: bool, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(field_name, f"must be a number of seconds, got {type(value).__name__}")
    v = float(value)
    lo_ok = v > 0 if lo_exclusive else v >= 0
    if not math.isfinite(v) or not lo_ok or v > hi:
        bound = f"{'>' if lo_exclusive else '>='} 0 and <= {hi:g}"
        raise ValidationError(field_name, f"{value!r} out of range", limit=bound)
    return v


def _check_bytes(field_name: str, value: object, limit: int) -> bytes:
    if type(value) is not bytes:
        if isinstance(value, bytearray | memoryview):
            value = bytes(value)
        else:
            raise ValidationError(field_name, f"must be bytes, got {type(value).__name__}")
    if len(value) > limit:
        raise ValidationError(field_name, f"{len(value)} bytes is too large", limit=f"<= {limit} bytes")
    return value


def check_payload(value: object, limits: Limits, field_name: str = "payload") -> bytes:
    return _check_bytes(field_name, value, limits.max_payload_bytes)


def check_result(value: object, limits: Limits) -> bytes:
    return _check_bytes("result", value, limits.max_result_bytes)


def check_error(value: object, limits: Limits) -> str:
    if not isinstance(value, str):
        raise ValidationError("error", f"must be a string, got {type(value).__name__}")
    if len(value) > limits.max_error_chars:
        # An error text is diagnostic: keep the start rather than refuse the failure report.
        return value[: limits.max_error_chars - 1] + "…"
    return value


def _check_names(
    field_name: str, value: object, limit: int, check: Callable[[str, object], str] = check_name
) -> tuple[str, ...]:
    if not value:
        return ()
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | set | frozenset):
        raise ValidationError(field_name, f"must be a list of strings, got {type(value).__name__}")
    if len(value) > limit:
        raise ValidationError(field_name, f"{len(value)} entries", limit=f"<= {limit} entries")
    return tuple(dict.fromkeys(check(field_name, v) for v in value))


def _check_context(value: object, limits: Limits) -> Mapping[str, str] | None:
    if not value:
        return None
    if not isinstance(value, Mapping):
        raise ValidationError("context", f"must be a mapping of str to str, got {type(value).__name__}")
    if len(value) > limits.max_context_entries:
        raise ValidationError("context", f"{len(value)} entries", limit=f"<= {limits.max_context_entries}")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ValidationError("context", "keys and values must be strings")
        if not k or len(k) > limits.max_context_key_chars:
            raise ValidationError("context", f"key {k[:40]!r} length", limit=f"1..{limits.max_context_key_chars}")
        if len(v) > limits.max_context_value_chars:
            raise ValidationError(
                "context", f"value of {k!r} has {len(v)} chars", limit=f"<= {limits.max_context_value_chars}"
            )
        out[k] = v
    return MappingProxyType(out)


def _check_priority(value: object) -> Priority:
    if isinstance(value, Priority):
        return value
    if isinstance(value, str):
        try:
            return Priority(value.lower())
        except ValueError:
            pass
    raise ValidationError("priority", f"{value!r} is not a priority", limit="critical|high|medium|low")


def check_batch(specs: object) -> list[TaskSpec]:
    """The specs of one submit as a list. A single :class:`TaskSpec` is refused with a hint (it
    is a tuple, so iterating it would yield its fields); so is anything that is not a sequence.
    The specs themselves are checked by :func:`normalize_specs`."""
    if type(specs) is list:
        return specs
    if type(specs) is TaskSpec:
        raise ValidationError("specs", "expected a sequence of TaskSpec, got one TaskSpec (pass [spec])")
    if isinstance(specs, str | bytes | Mapping) or not isinstance(specs, Sequence):
        raise ValidationError("specs", f"expected a sequence of TaskSpec, got {type(specs).__name__}")
    return list(specs)


def normalize_spec(spec: object, limits: Limits) -> TaskSpec:
    """Validate one spec; raise ValidationError naming the field and the limit.

    Returns a TaskSpec whose fields all have their final types (``priority`` a Priority,
    sequences as tuples, ``context`` a private dict); ``timeout_s`` may stay None (meaning
    ``2 * difficulty``). A spec that is already in that form is returned as it is.
    """
    try:
        return normalize_specs((spec,), limits)[0][0]
    except ValidationError as e:
        raise type(e)(e.field, e.detail, limit=e.limit) from None


def normalize_specs(specs: Sequence[object], limits: Limits) -> tuple[list[TaskSpec], bool]:
    """Validate a batch (see :func:`normalize_spec`); errors name the spec's index. Also says
    whether every spec is *plain*: no dependencies, id, idempotency key or delay.

    The common spec (already in final form, default timeout) is recognised inline, without a
    call: this loop runs for every task a node accepts.
    """
    out: list[TaskSpec] = []
    append = out.append
    plain = True
    max_payload = limits.max_payload_bytes
    retries_limit = limits.max_retries
    seen = _seen_names
    for i, spec in enumerate(specs):
        if type(spec) is TaskSpec:
            (ttype, payload, context, priority, difficulty, caps, deps, retries, timeout_s, delay_s, key, tid) = spec
            if (
                type(ttype) is str
                and ttype in seen
                and type(payload) is bytes
                and len(payload) <= max_payload
                and context is None
                and type(priority) is Priority
                and type(difficulty) is int
                and _DIFFICULTY_MIN <= difficulty <= _DIFFICULTY_MAX
                and caps == ()
                and deps == ()
                and type(retries) is int
                and 0 <= retries <= retries_limit
                and timeout_s is None
                and delay_s == 0
                and key is None
                and tid is None
            ):
                append(spec)
                continue
        try:
            if type(spec) is not TaskSpec:
                raise ValidationError("spec", f"must be a TaskSpec, got {type(spec).__name__}")
            s = _normalize_full(spec, limits)
        except ValidationError as e:
            raise e.at(i) from None
        if plain and (s.dependencies or s.id is not None or s.idempotency_key is not None or s.delay_s):
            plain = False
        append(s)
    return out, plain


def _normalize_full(spec: TaskSpec, limits: Limits) -> TaskSpec:
    ttype = check_name("type", spec.type)
    payload = check_payload(spec.payload, limits)
    difficulty = _check_int("difficulty", spec.difficulty, _DIFFICULTY_MIN, _DIFFICULTY_MAX)
    priority = _check_priority(spec.priority)
    max_retries = _check_int("max_retries", spec.max_retries, 0, limits.max_retries)
    timeout_s = None
    if spec.timeout_s is not None:
        timeout_s = _check_seconds("timeout_s", spec.timeout_s, True, limits.max_timeout_s)
    delay_s = _check_seconds("delay_s", spec.delay_s, False, limits.max_delay_s)
    key = spec.idempotency_key
    if key is not None and (not isinstance(key, str) or not key or len(key) > limits.max_idempotency_key_chars):
        raise ValidationError(
            "idempotency_key", "must be a non-empty string", limit=f"1..{limits.max_idempotency_key_chars} chars"
        )
    return TaskSpec(
        type=ttype,
        payload=payload,
        context=_check_context(spec.context, limits),
        priority=priority,
        difficulty=difficulty,
        required_capabilities=_check_names(
            "required_capabilities", spec.required_capabilities, limits.max_capabilities
        ),
        dependencies=_check_names("dependencies", spec.dependencies, limits.max_dependencies, check_id),
        max_retries=max_retries,
        timeout_s=timeout_s,
        delay_s=delay_s,
        idempotency_key=key,
        id=None if spec.id is None else check_id("id", spec.id),
    )


def normalize_worker_spec(spec: object, limits: Limits) -> WorkerSpec:
    if not isinstance(spec, WorkerSpec):
        raise ValidationError("worker", f"must be a WorkerSpec, got {type(spec).__name__}")
    return WorkerSpec(
        id=check_name("worker_id", spec.id),
        capabilities=_check_names("capabilities", spec.capabilities, limits.max_capabilities),
        skill=_check_int("skill", spec.skill, _DIFFICULTY_MIN, _DIFFICULTY_MAX),
        concurrency=_check_int("concurrency", spec.concurrency, 1, limits.max_concurrency),
    )
