"""Clients of a node's gRPC service, with the operations of :class:`~node.runtime.node.LocalNode`:
:class:`AsyncNodeClient` (asyncio) and :class:`NodeClient` (threads: scripts, non-async producers).

Both answer with the domain's types (:class:`~node.model.Task`, :class:`~node.model.Lease`, ...)
and raise the domain's errors: :func:`error_from_status` maps every status code back
(``INVALID_ARGUMENT`` -> :class:`~node.errors.ValidationError` naming the field, ``NOT_FOUND`` ->
:class:`~node.errors.TaskNotFoundError`, ``FAILED_PRECONDITION`` -> :class:`~node.errors.StaleLeaseError`
or :class:`~node.errors.InvalidTransitionError`, ``RESOURCE_EXHAUSTED`` ->
:class:`~node.errors.OverloadedError`, ``UNAVAILABLE`` -> :class:`~node.errors.NodeUnavailableError`,
``DEADLINE_EXCEEDED`` -> :class:`~node.errors.WaitTimeoutError`, ``UNAUTHENTICATED`` and
``PERMISSION_DENIED`` -> :class:`~node.errors.NotAuthorizedError`).

**One task at a time, at batch speed.** ``submit_one(spec)`` does not call the node: it queues the
spec and returns at once (a future of the task id). A flusher sends what is queued as one
``Submit`` when the oldest spec has waited ``linger_ms`` or ``max_batch`` specs (``max_batch_bytes``
bytes) are queued, with up to ``max_inflight`` batches in flight; so a loop of single calls gets the
throughput of batches, as a Kafka producer does. The answer of a batch is the answer of each spec
in it: when the node refuses one spec (``INVALID_ARGUMENT`` naming its index) only its caller gets
the :class:`~node.errors.ValidationError` and the others are sent again without it; when the node
is full (``RESOURCE_EXHAUSTED``) the batch is sent again after a backoff, and specs queued longer
than ``timeout_s`` fail with :class:`~node.errors.OverloadedError`. At most ``max_pending`` specs
wait or fly at once: beyond, ``submit_one`` waits for room (bounded memory, backpressure all the
way to the producer). ``flush()`` waits for everything queued so far; ``close()`` flushes too.
Batches in flight together may be applied in either order: with ``max_inflight=1`` the node sees
the specs in the order they were queued (a spec that depends on an earlier one needs that, or
the same batch).

Channels: TLS with ``ca_file`` (mutual TLS with ``cert_file``/``key_file``), plaintext with
``insecure=True`` (loopback addresses only), else TLS trusting the system's roots. With a
``token`` every call carries ``authorization: Bearer <token>``.
"""

from __future__ import annotations

import ast
import asyncio
import concurrent.futures
import contextlib
import copy
import os
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from federation.privacy.status import PrivacyStatus, ReleaseOutcome
from federation.view import GlobalView
from node.core import HeartbeatReply, WorkerInfo
from node.errors import (
    FedcoordError,
    InvalidTransitionError,
    NodeUnavailableError,
    NotAuthorizedError,
    NotFoundError,
    OverloadedError,
    StaleLeaseError,
    TaskNotFoundError,
    ValidationError,
    WaitTimeoutError,
    WorkerNotFoundError,
)
from node.model import Event, Lease, Priority, Task, TaskSpec, TaskStatus, WorkerSpec
from node.rpc import convert as cv
from node.rpc.auth import bearer_metadata, channel_credentials, check_plaintext
from node.rpc.convert import RemoteStats
from protos.fedcoord.v1 import common_pb2 as cpb
from protos.fedcoord.v1 import node_pb2 as npb
from protos.fedcoord.v1 import node_pb2_grpc as npb_grpc

__all__ = [
    "DEFAULT_ADDRESS",
    "AsyncEventStream",
    "AsyncNodeClient",
    "EventStream",
    "NodeClient",
    "RemoteCallError",
    "RemoteStats",
    "error_from_status",
    "submitted_ids",
]

DEFAULT_ADDRESS = "127.0.0.1:50051"
R = TypeVar("R")
_C = grpc.StatusCode
_BACKOFF_MIN_S = 0.005
_BACKOFF_MAX_S = 0.5

# ---------------------------------------------------------------------------------------- errors


class RemoteCallError(FedcoordError):
    """The node refused a call for a reason the domain has no error class for; ``code`` is the
    gRPC status code's name (``FAILED_PRECONDITION``, ``INTERNAL``, ``UNIMPLEMENTED``...)."""

    def __init__(self, code: str, details: str):
        self.code = code
        self.details = details
        super().__init__(f"{code}: {details}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.code, self.details)


_QUOTED = r"'[^']*'|\"[^\"]*\""
_IN_BATCH = re.compile(r"(?P<batch>\w+)\[(?P<index>\d+)\]\.(?P<field>.+)", re.S)
_NOT_FOUND = re.compile(rf"(?P<kind>\w+) (?P<ident>{_QUOTED}) not found", re.S)
_STALE = re.compile(rf"lease on task (?P<task>{_QUOTED}) attempt (?P<attempt>\d+) is stale: (?P<reason>.*)", re.S)
_TRANSITION = re.compile(
    rf"cannot (?P<op>\w+) task (?P<task>{_QUOTED}): it is (?P<status>.*?); (?P=op) needs (?P<allowed>.*)", re.S
)
_LIMIT = " (limit: "


def _unquote(text: str) -> str:
    value = ast.literal_eval(text)
    return value if isinstance(value, str) else text


def _validation(details: str) -> ValidationError:
    """``ValidationError`` from its message (``specs[2].difficulty: 11 out of range (limit: 1..10)``)."""
    where, sep, rest = details.partition(": ")
    if not sep or not where or " " in where:
        return ValidationError("request", details)
    limit = None
    if rest.endswith(")") and _LIMIT in rest:
        rest, _, limit = rest[:-1].rpartition(_LIMIT)
    m = _IN_BATCH.fullmatch(where)
    if m is None:
        return ValidationError(where, rest, limit=limit)
    return ValidationError(m["field"], rest, limit=limit, index=int(m["index"]), batch=m["batch"])


def _not_found(details: str) -> NotFoundError:
    m = _NOT_FOUND.fullmatch(details)
    if m is None:
        return NotFoundError("resource", details)
    kind, ident = m["kind"], _unquote(m["ident"])
    if kind == "task":
        return TaskNotFoundError(ident)
    if kind == "worker":
        return WorkerNotFoundError(ident)
    return NotFoundError(kind, ident)


def _precondition(details: str) -> FedcoordError:
    m = _STALE.fullmatch(details)
    if m is not None:
        return StaleLeaseError(_unquote(m["task"]), int(m["attempt"]), m["reason"])
    m = _TRANSITION.fullmatch(details)
    if m is not None:
        return InvalidTransitionError(_unquote(m["task"]), m["status"], m["op"], m["allowed"])
    return RemoteCallError(_C.FAILED_PRECONDITION.name, details)


def error_from_status(code: grpc.StatusCode, details: str, *, address: str | None = None) -> FedcoordError:
    """The domain error a status code and its details stand for (the inverse of
    :func:`node.rpc.convert.status_of`): messages the node formats from a domain error are parsed
    back into that error with its fields, so ``str(err)`` reads as it did on the node."""
    at = f"node {address}" if address else "the node"
    if code is _C.INVALID_ARGUMENT:
        return _validation(details)
    if code is _C.NOT_FOUND:
        return _not_found(details)
    if code is _C.FAILED_PRECONDITION:
        return _precondition(details)
    if code is _C.RESOURCE_EXHAUSTED:
        return OverloadedError(details)
    if code is _C.UNAVAILABLE:
        return NodeUnavailableError(f"{at} is unavailable: {details}")
    if code is _C.DEADLINE_EXCEEDED:
        return WaitTimeoutError(details if details != "Deadline Exceeded" else f"no answer from {at} in time")
    if code in (_C.UNAUTHENTICATED, _C.PERMISSION_DENIED):
        return NotAuthorizedError(f"{at} refused the call ({code.name}): {details}")
    return RemoteCallError(code.name, details)


def _rpc_error(e: grpc.RpcError, address: str) -> FedcoordError:
    code = e.code() if callable(getattr(e, "code", None)) else _C.UNKNOWN
    details = e.details() if callable(getattr(e, "details", None)) else str(e)
    return error_from_status(code, details or "", address=address)


# ---------------------------------------------------------------------------------------- calls


@dataclass(frozen=True, slots=True)
class _Call(Generic[R]):
    """One unary call as both clients make it: the method, its request, how to read the reply, and
    how long beyond the client's ``timeout_s`` it may take (None: no deadline at all)."""

    method: str
    request: Any
    decode: Callable[[Any], R]
    extra_s: float | None = 0.0


def _nothing(_reply: object) -> None:
    return None


def _ids(reply: npb.SubmitReply) -> list[str]:
    return list(reply.task_ids)


def _cancelled(reply: npb.CancelReply) -> TaskStatus:
    return cv.status_from_pb(reply.status)


def _leases(reply: npb.ClaimReply) -> list[Lease]:
    return [cv.lease_from_pb(m) for m in reply.leases]


def _applied(reply: npb.ApplyFederationReply) -> tuple[float, str]:
    return reply.threshold, reply.policy


def _privacy(s: RemoteStats) -> PrivacyStatus:
    if s.privacy is None:
        raise RemoteCallError(_C.UNIMPLEMENTED.name, f"node {s.node_id} sent no privacy status with its stats")
    return s.privacy


def _serving(reply: Any) -> str:
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


class _Calls:
    """Every unary call of the clients, built in one place."""

    @staticmethod
    def submit(msgs: Sequence[cpb.TaskSpec]) -> _Call[list[str]]:
        return _Call("Submit", npb.SubmitRequest(tasks=msgs), _ids)

    @staticmethod
    def get(task_id: str) -> _Call[Task]:
        return _Call("GetTask", npb.TaskRef(task_id=task_id), cv.task_from_pb)

    @staticmethod
    def wait(task_id: str, timeout_s: float | None) -> _Call[Task]:
        request = npb.WaitTaskRequest(task_id=task_id)
        if timeout_s is not None:
            request.timeout_s = timeout_s
        return _Call("WaitTask", request, cv.task_from_pb, timeout_s)

    @staticmethod
    def cancel(task_id: str) -> _Call[TaskStatus]:
        return _Call("Cancel", npb.TaskRef(task_id=task_id), _cancelled)

    @staticmethod
    def requeue(task_id: str) -> _Call[None]:
        return _Call("Requeue", npb.TaskRef(task_id=task_id), _nothing)

    @staticmethod
    def register_worker(spec: WorkerSpec) -> _Call[WorkerInfo]:
        return _Call("RegisterWorker", cv.worker_spec_to_pb(spec), cv.worker_info_from_pb)

    @staticmethod
    def deregister_worker(worker_id: str) -> _Call[None]:
        return _Call("DeregisterWorker", npb.DeregisterWorkerRequest(worker_id=worker_id), _nothing)

    @staticmethod
    def heartbeat(worker_id: str) -> _Call[HeartbeatReply]:
        return _Call("Heartbeat", npb.HeartbeatRequest(worker_id=worker_id), cv.heartbeat_from_pb)

    @staticmethod
    def claim(worker_id: str, max_tasks: int, wait_s: float) -> _Call[list[Lease]]:
        request = npb.ClaimRequest(worker_id=worker_id, max_tasks=max_tasks, wait_s=wait_s)
        return _Call("Claim", request, _leases, max(wait_s, 0.0))

    @staticmethod
    def start_task(lease: Lease) -> _Call[None]:
        return _Call("StartTask", cv.lease_ref_to_pb(lease), _nothing)

    @staticmethod
    def complete(lease: Lease, result: bytes) -> _Call[None]:
        return _Call("Complete", npb.CompleteRequest(lease=cv.lease_ref_to_pb(lease), result=result), _nothing)

    @staticmethod
    def fail(lease: Lease, error: str, retry: bool) -> _Call[None]:
        request = npb.FailRequest(lease=cv.lease_ref_to_pb(lease), error=error, no_retry=not retry)
        return _Call("Fail", request, _nothing)

    @staticmethod
    def stats(report: bool, history: bool) -> _Call[RemoteStats]:
        return _Call("Stats", npb.StatsRequest(report=report, history=history), cv.stats_from_pb)

    @staticmethod
    def summary() -> _Call[ReleaseOutcome]:
        return _Call("Summary", npb.SummaryRequest(), cv.release_from_pb)

    @staticmethod
    def apply_federation(view: GlobalView) -> _Call[tuple[float, str]]:
        return _Call("ApplyFederation", npb.ApplyFederationRequest(view=cv.view_to_pb(view)), _applied)

    @staticmethod
    def health() -> _Call[str]:
        return _Call("Health", health_pb2.HealthCheckRequest(service=""), _serving)


def _methods(channel: Any) -> dict[str, Any]:
    """The multicallables of a channel (sync or asyncio), by method name."""
    stub = npb_grpc.NodeServiceStub(channel)
    service = npb.DESCRIPTOR.services_by_name["NodeService"]
    out = {m.name: getattr(stub, m.name) for m in service.methods}
    out["Health"] = health_pb2_grpc.HealthStub(channel).Check
    return out


def _events(batch: npb.EventBatch) -> list[Event]:
    return [cv.event_from_pb(m) for m in batch.events]


def _encode(spec: TaskSpec, max_bytes: int) -> cpb.TaskSpec:
    """A spec as it goes on the wire; what cannot be encoded is refused here, naming the field (the
    node validates the rest)."""
    if not isinstance(spec, TaskSpec):
        raise ValidationError("spec", f"must be a TaskSpec, got {type(spec).__name__}")
    if type(spec.priority) is not Priority:
        try:
            Priority(spec.priority)
        except ValueError:
            raise ValidationError(
                "priority", f"{spec.priority!r} is not a priority", limit="critical|high|medium|low"
            ) from None
    # protobuf takes any iterable for a repeated field ("gpu" would become "g", "p", "u"; a dict
    # its keys): refuse what the node would refuse, in its words.
    for name in ("required_capabilities", "dependencies"):
        value = getattr(spec, name)
        if not value:
            continue
        if isinstance(value, str | bytes) or not isinstance(value, Sequence | set | frozenset):
            raise ValidationError(name, f"must be a list of strings, got {type(value).__name__}")
        for v in value:
            if not isinstance(v, str):
                raise ValidationError(name, f"must be a string, got {type(v).__name__}")
    ctx = spec.context
    if ctx:
        if not isinstance(ctx, Mapping):
            raise ValidationError("context", f"must be a mapping of str to str, got {type(ctx).__name__}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in ctx.items()):
            raise ValidationError("context", "keys and values must be strings")
    try:
        m = cv.spec_to_pb(spec)
    except (TypeError, ValueError) as e:
        raise ValidationError("spec", f"cannot be encoded: {e}") from None
    if m.ByteSize() > max_bytes:
        raise ValidationError("spec", f"{m.ByteSize()} bytes encoded", limit=f"<= {max_bytes} (max_batch_bytes)")
    return m


def _note_submitted(e: BaseException, ids: list[str]) -> None:
    """A submit that failed part way: its error carries the ids of the batches that went in
    before (``e.submitted_ids``, in the order of the specs), so that they are not submitted again."""
    with contextlib.suppress(AttributeError, TypeError):
        setattr(e, "submitted_ids", list(ids))  # noqa: B010 - an attribute of any exception type


def submitted_ids(e: BaseException) -> list[str]:
    """The ids a failed :meth:`NodeClient.submit` / :meth:`AsyncNodeClient.submit` added before it failed."""
    ids = getattr(e, "submitted_ids", None)
    return list(ids) if isinstance(ids, list) else []


def _encode_all(specs: Sequence[TaskSpec], max_bytes: int) -> list[cpb.TaskSpec]:
    if isinstance(specs, TaskSpec) or not isinstance(specs, Sequence):
        raise ValidationError("specs", f"expected a sequence of TaskSpec, got {type(specs).__name__}")
    out = []
    for i, spec in enumerate(specs):
        try:
            out.append(_encode(spec, max_bytes))
        except ValidationError as e:
            raise e.at(i) from None
    return out


def _chunks(msgs: list[cpb.TaskSpec], max_batch: int, max_bytes: int) -> Iterator[tuple[int, list[cpb.TaskSpec]]]:
    """(offset, specs) of consecutive batches of at most ``max_batch`` specs and ``max_bytes`` bytes."""
    start, size = 0, 0
    for i, m in enumerate(msgs):
        n = m.ByteSize()
        if i > start and (i - start >= max_batch or size + n > max_bytes):
            yield start, msgs[start:i]
            start, size = i, 0
        size += n
    if start < len(msgs) or not msgs:
        yield start, msgs[start:]


def _backoff(previous_s: float) -> float:
    """The next delay after ``RESOURCE_EXHAUSTED``: doubling from 5 ms up to 0.5 s, with jitter."""
    base = min(max(previous_s * 2, _BACKOFF_MIN_S), _BACKOFF_MAX_S)
    return base * (0.5 + random.random() / 2)


class _Retry:
    """How a batch submit answers its errors: ``RESOURCE_EXHAUSTED`` is retried with backoff up to
    ``timeout_s``; a ValidationError is placed in the caller's list of specs; the rest is raised."""

    def __init__(self, timeout_s: float, offset: int):
        self.give_up = time.monotonic() + timeout_s
        self.offset = offset
        self.delay = 0.0

    def after(self, e: FedcoordError) -> float:
        """The delay before the next attempt, or raise."""
        if isinstance(e, ValidationError) and e.index is not None:
            raise e.at(e.index + self.offset) from None
        if isinstance(e, OverloadedError):
            self.delay = _backoff(self.delay)
            if time.monotonic() + self.delay <= self.give_up:
                return self.delay
        raise e


# ---------------------------------------------------------------------------------------- batching


class _Future(Protocol):
    def done(self) -> bool: ...

    def set_result(self, result: Any, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


class _Item:
    """One spec waiting in the submit buffer, and whom to answer."""

    __slots__ = ("future", "msg", "size", "t0")

    def __init__(self, msg: cpb.TaskSpec, future: _Future, t0: float):
        self.msg = msg
        self.size = msg.ByteSize()
        self.future = future
        self.t0 = t0


Settled = list[tuple[_Future, Any]]


class _Buffer:
    """The queue behind ``submit_one``, the rules of its batches and what the answer to a batch
    means for each caller in it. No locks, no waiting: each client runs it under its own (a lock
    and conditions for threads, the event loop for asyncio)."""

    def __init__(self, *, max_batch: int, max_bytes: int, max_pending: int, linger_s: float, timeout_s: float):
        self.max_batch = max_batch
        self.max_bytes = max_bytes
        self.max_pending = max_pending
        self.linger_s = linger_s
        self.timeout_s = timeout_s
        self.items: deque[_Item] = deque()
        self.bytes = 0  # of the queued items
        self.pending = 0  # queued or in flight, not answered yet
        self.inflight: dict[int, list[_Item]] = {}
        self.urgent = 0  # flushes under way: send without lingering
        self.retry_at = 0.0  # no batch before this (time.monotonic) after RESOURCE_EXHAUSTED
        self._backoff_s = 0.0

    def full(self) -> bool:
        return self.pending >= self.max_pending

    def add(self, item: _Item) -> bool:
        """Queue ``item``; True when the flusher should be woken (it was idle, or a batch is full)."""
        items = self.items
        items.append(item)
        self.bytes += item.size
        self.pending += 1
        n = len(items)
        return n in (1, self.max_batch) or self.bytes >= self.max_bytes

    def wait_s(self, now: float) -> float | None:
        """How long the flusher waits before it takes a batch: None while nothing is queued, 0: now."""
        items = self.items
        if not items:
            return None
        delay = self.retry_at - now
        if not self.urgent and len(items) < self.max_batch and self.bytes < self.max_bytes:
            delay = max(delay, items[0].t0 + self.linger_s - now)
        return max(delay, 0.0)

    def take(self) -> list[_Item]:
        items = self.items
        batch: list[_Item] = []
        size = 0
        while items and len(batch) < self.max_batch:
            if batch and size + items[0].size > self.max_bytes:
                break
            item = items.popleft()
            batch.append(item)
            size += item.size
        self.bytes -= size
        self.inflight[id(batch)] = batch
        return batch

    def futures(self) -> list[_Future]:
        """The futures of everything queued or in flight now."""
        out = [item.future for item in self.items]
        for batch in self.inflight.values():
            out.extend(item.future for item in batch)
        return out

    def settle(self, batch: list[_Item], outcome: list[str] | FedcoordError, now: float) -> tuple[Settled, bool]:
        """What the answer to ``batch`` means for each caller: the (future, id or error) pairs to
        resolve, and whether some of its specs are queued again (at the front, in their order)."""
        del self.inflight[id(batch)]
        again: list[_Item] = []
        if isinstance(outcome, list):
            if len(outcome) == len(batch):
                self._backoff_s = 0.0
                done: Settled = [(item.future, tid) for item, tid in zip(batch, outcome, strict=True)]
            else:
                err = RemoteCallError("INTERNAL", f"the node answered {len(outcome)} ids for {len(batch)} tasks")
                done = [(item.future, copy.copy(err)) for item in batch]
        elif isinstance(outcome, ValidationError) and outcome.index is not None and 0 <= outcome.index < len(batch):
            culprit = batch[outcome.index]  # alone to blame: its caller gets the error, the others go again
            done = [(culprit.future, ValidationError(outcome.field, outcome.detail, limit=outcome.limit))]
            again = [item for i, item in enumerate(batch) if i != outcome.index]
        elif isinstance(outcome, OverloadedError):
            self._backoff_s = _backoff(self._backoff_s)
            self.retry_at = now + self._backoff_s
            limit = self.timeout_s
            again = [item for item in batch if now - item.t0 < limit]
            late = OverloadedError(f"{outcome} (gave up after {limit:g} s of retries)")
            done = [(item.future, copy.copy(late)) for item in batch if now - item.t0 >= limit]
        else:
            done = [(item.future, copy.copy(outcome)) for item in batch]
        if again:
            self.items.extendleft(reversed(again))
            self.bytes += sum(item.size for item in again)
        self.pending -= len(done)
        return done, bool(again)


def _resolve(done: Settled) -> None:
    """Answer the callers (outside any lock: their callbacks run here)."""
    for fut, value in done:
        if fut.done():  # an asyncio caller gave up waiting
            continue
        if isinstance(value, BaseException):
            fut.set_exception(value)
        else:
            fut.set_result(value)


# ---------------------------------------------------------------------------------------- shared


def _credentials(
    address: str,
    ca_file: str | os.PathLike[str] | None,
    cert_file: str | os.PathLike[str] | None,
    key_file: str | os.PathLike[str] | None,
    insecure: bool,
) -> grpc.ChannelCredentials | None:
    """TLS credentials, or None for plaintext (only when asked and only on loopback)."""
    if insecure:
        if ca_file is not None or cert_file is not None or key_file is not None:
            raise ValidationError("tls", "insecure (plaintext) and TLS files exclude each other: give one or the other")
        check_plaintext(address, True)
        return None
    return channel_credentials(ca_file, cert_file, key_file)


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValidationError(name, f"must be > 0, got {value!r}")


class _ClientBase:
    """What both clients share: options, credentials, metadata, deadlines, errors, the buffer."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        token: str | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        insecure: bool = False,
        linger_ms: float = 2.0,
        max_batch: int = 1000,
        max_batch_bytes: int = 4 << 20,
        max_pending: int = 100_000,
        max_inflight: int = 4,
        timeout_s: float = 30.0,
        max_message_bytes: int = 64 << 20,
    ):
        for name, value in (("max_batch", max_batch), ("max_batch_bytes", max_batch_bytes),
                            ("max_pending", max_pending), ("max_inflight", max_inflight), ("timeout_s", timeout_s),
                            ("max_message_bytes", max_message_bytes)):  # fmt: skip
            _positive(name, value)
        if not linger_ms >= 0:
            raise ValidationError("linger_ms", f"must be >= 0, got {linger_ms!r}")
        self.address = address
        self.timeout_s = timeout_s
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self.max_inflight = max_inflight
        self._metadata = bearer_metadata(token or None) or None  # an empty token is no token
        self._credentials = _credentials(address, ca_file, cert_file, key_file, insecure)
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
        ]
        self._buffer = _Buffer(
            max_batch=max_batch,
            max_bytes=max_batch_bytes,
            max_pending=max_pending,
            linger_s=linger_ms / 1000.0,
            timeout_s=timeout_s,
        )
        self._calls: dict[str, Any] | None = None
        self._closed = False

    def _channel_for(self, module: Any) -> Any:
        """A channel of ``module`` (``grpc`` or ``grpc.aio``)."""
        if self._credentials is None:
            return module.insecure_channel(self.address, options=self._options)
        return module.secure_channel(self.address, self._credentials, options=self._options)

    def _deadline(self, call: _Call[Any]) -> float | None:
        return None if call.extra_s is None else self.timeout_s + call.extra_s

    def _error(self, e: grpc.RpcError) -> FedcoordError:
        return _rpc_error(e, self.address)

    def _item(self, spec: TaskSpec, future: _Future) -> _Item:
        if self._closed:
            raise RuntimeError("the client is closed")
        return _Item(_encode(spec, self.max_batch_bytes), future, time.monotonic())

    def _cancelled(self) -> NodeUnavailableError:
        return NodeUnavailableError(f"the call to node {self.address} was cancelled (client closed)")

    def _request(self, batch: list[_Item]) -> Any:
        return _Calls.submit([item.msg for item in batch]).request


# ---------------------------------------------------------------------------------------- asyncio


class _EventStream:
    """Task events from a node's ``Watch`` call, started when the stream is made; ``close()`` ends it."""

    def __init__(self, call: Any, address: str):
        self._call = call
        self._address = address
        self._ready: deque[Event] = deque()

    def _ended(self, e: grpc.RpcError) -> FedcoordError | None:
        """None when the stream was closed (cancelled) by us, else the error to raise."""
        return None if e.code() is _C.CANCELLED else _rpc_error(e, self._address)

    def close(self) -> None:
        self._call.cancel()


class AsyncEventStream(_EventStream):
    """``async for event in client.subscribe():`` (also an async context manager that closes it)."""

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> Event:
        while not self._ready:
            try:
                batch = await self._call.read()
            except grpc.RpcError as e:
                raise (self._ended(e) or StopAsyncIteration()) from None
            if batch is grpc.aio.EOF:
                raise StopAsyncIteration
            self._ready.extend(_events(batch))
        return self._ready.popleft()

    async def __aenter__(self) -> AsyncEventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class _Signal:
    """Wakes one waiting coroutine, or lets it go after a timeout (lighter than asyncio.wait_for)."""

    def __init__(self) -> None:
        self._fut: asyncio.Future[None] | None = None

    def set(self) -> None:
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def wait(self, timeout_s: float | None) -> None:
        loop = asyncio.get_running_loop()
        fut = self._fut = loop.create_future()
        timer = None if timeout_s is None else loop.call_later(timeout_s, self.set)
        try:
            await fut
        finally:
            self._fut = None
            if timer is not None:
                timer.cancel()


class AsyncNodeClient(_ClientBase):
    """A node's operations over gRPC, for asyncio code: ``async with AsyncNodeClient(addr) as c:``.

    ``await c.submit_one(spec)`` from many coroutines at once lingers and batches (see the module's
    docstring); a producer that does not want to wait for each id takes the future instead:
    ``fut = await c.enqueue(spec)`` (waits only for room) or ``c.submit_one_nowait(spec)``.
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, **options: Any):
        super().__init__(address, **options)
        self._channel: Any = None
        self._flusher: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._wake = _Signal()
        self._room = asyncio.Event()
        self._room.set()
        self._slots = asyncio.Semaphore(self.max_inflight)

    async def connect(self) -> AsyncNodeClient:
        """Open the channel (it connects on the first call) and start the flusher. Calls connect on
        their own when needed; ``async with`` does too."""
        self._connect()
        return self

    def _connect(self) -> dict[str, Any]:
        if self._calls is None:
            if self._closed:
                raise RuntimeError("the client is closed")
            self._channel = self._channel_for(grpc.aio)
            self._calls = _methods(self._channel)
            self._flusher = asyncio.get_running_loop().create_task(self._run(), name=f"submit-flusher-{self.address}")
        return self._calls

    async def close(self) -> None:
        """Send what is queued, wait for its answers, then close the channel."""
        if self._closed:
            return
        self._closed = True
        self._room.set()  # producers waiting for room learn that the client is closed
        if self._calls is not None:
            await self.flush()
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        if self._channel is not None:
            await self._channel.close()

    async def __aenter__(self) -> AsyncNodeClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _unary(self, call: _Call[R]) -> R:
        method = self._connect()[call.method]
        try:
            reply = await method(call.request, timeout=self._deadline(call), metadata=self._metadata)
        except grpc.RpcError as e:
            raise self._error(e) from None
        return call.decode(reply)

    # ------------------------------------------------------------------ tasks

    async def submit(self, specs: Sequence[TaskSpec]) -> list[str]:
        """Add tasks now; returns their ids. More than ``max_batch`` go as consecutive batches (each
        all or nothing: when one fails, the batches before it stay submitted, their ids are the
        error's ``submitted_ids``; the error's index counts from the first spec).
        ``RESOURCE_EXHAUSTED`` is retried with backoff up to ``timeout_s``, then raised as
        :class:`~node.errors.OverloadedError`."""
        msgs = _encode_all(specs, self.max_batch_bytes)
        ids: list[str] = []
        try:
            for offset, chunk in _chunks(msgs, self.max_batch, self.max_batch_bytes):
                ids += await self._submit_batch(_Calls.submit(chunk), offset)
        except Exception as e:
            _note_submitted(e, ids)
            raise
        return ids

    async def _submit_batch(self, call: _Call[list[str]], offset: int) -> list[str]:
        retry = _Retry(self.timeout_s, offset)
        while True:
            try:
                return await self._unary(call)
            except FedcoordError as e:
                await asyncio.sleep(retry.after(e))

    async def submit_one(self, spec: TaskSpec) -> str:
        """Add one task through the lingering batch; returns its id once the node has it durably."""
        return await (await self.enqueue(spec))

    async def enqueue(self, spec: TaskSpec) -> asyncio.Future[str]:
        """Queue ``spec`` for the next batch (waiting while ``max_pending`` are pending); returns the
        future of its id. Bad input that cannot be encoded raises here."""
        item = self._item(spec, asyncio.get_running_loop().create_future())
        while self._buffer.full() and not self._closed:
            self._room.clear()
            await self._room.wait()
        return self._queue(item)

    def submit_one_nowait(self, spec: TaskSpec) -> asyncio.Future[str]:
        """:meth:`enqueue` without waiting: raises :class:`~node.errors.OverloadedError` when
        ``max_pending`` specs are pending already."""
        item = self._item(spec, asyncio.get_running_loop().create_future())
        if self._buffer.full():
            raise OverloadedError(f"{self._buffer.pending} submits pending in this client (max_pending): retry later")
        return self._queue(item)

    def _queue(self, item: _Item) -> asyncio.Future[str]:
        if self._closed:
            raise RuntimeError("the client is closed")
        self._connect()
        if self._buffer.add(item):
            self._wake.set()
        return item.future  # type: ignore[return-value]

    async def flush(self) -> None:
        """Send what is queued now without lingering; return once all of it is answered."""
        buf = self._buffer
        futures = cast("list[asyncio.Future[str]]", buf.futures())
        if not futures:
            return
        buf.urgent += 1
        self._wake.set()
        try:
            await asyncio.wait(futures)
        finally:
            buf.urgent -= 1

    async def _run(self) -> None:
        buf = self._buffer
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            while (wait := buf.wait_s(time.monotonic())) != 0:
                await self._wake.wait(wait)
            batch = buf.take()
            task = loop.create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Item]) -> None:
        assert self._calls is not None
        outcome: list[str] | FedcoordError
        try:
            outcome = _ids(
                await self._calls["Submit"](self._request(batch), timeout=self.timeout_s, metadata=self._metadata)
            )
        except grpc.RpcError as e:
            outcome = self._error(e)
        except asyncio.CancelledError:
            self._settle(batch, self._cancelled())
            raise
        self._settle(batch, outcome)

    def _settle(self, batch: list[_Item], outcome: list[str] | FedcoordError) -> None:
        buf = self._buffer
        done, again = buf.settle(batch, outcome, time.monotonic())
        self._slots.release()
        if again:
            self._wake.set()
        if not buf.full():
            self._room.set()
        _resolve(done)

    async def get(self, task_id: str) -> Task:
        return await self._unary(_Calls.get(task_id))

    async def wait(self, task_id: str, timeout_s: float | None = None) -> Task:
        """Until the task is finished (the node follows hand-offs); WaitTimeoutError after ``timeout_s``."""
        return await self._unary(_Calls.wait(task_id, timeout_s))

    async def cancel(self, task_id: str) -> TaskStatus:
        return await self._unary(_Calls.cancel(task_id))

    async def requeue(self, task_id: str) -> None:
        await self._unary(_Calls.requeue(task_id))

    # ------------------------------------------------------------------ workers

    async def register_worker(self, spec: WorkerSpec) -> WorkerInfo:
        return await self._unary(_Calls.register_worker(spec))

    async def deregister_worker(self, worker_id: str) -> None:
        await self._unary(_Calls.deregister_worker(worker_id))

    async def heartbeat(self, worker_id: str) -> HeartbeatReply:
        return await self._unary(_Calls.heartbeat(worker_id))

    async def claim(self, worker_id: str, max_tasks: int = 1, *, wait_s: float = 0.0) -> list[Lease]:
        return await self._unary(_Calls.claim(worker_id, max_tasks, wait_s))

    async def start_task(self, lease: Lease) -> None:
        await self._unary(_Calls.start_task(lease))

    async def complete(self, lease: Lease, result: bytes = b"") -> None:
        await self._unary(_Calls.complete(lease, result))

    async def fail(self, lease: Lease, error: str, *, retry: bool = True) -> None:
        await self._unary(_Calls.fail(lease, error, retry))

    # ------------------------------------------------------------------ reading

    def subscribe(self, *, max_queue: int = 10_000) -> AsyncEventStream:
        """Task events as they become durable on the node: ``async for e in client.subscribe():``."""
        call = self._connect()["Watch"](npb.WatchRequest(max_queue=max_queue), metadata=self._metadata)
        return AsyncEventStream(call, self.address)

    async def stats(self, *, report: bool = False, history: bool = False) -> RemoteStats:
        return await self._unary(_Calls.stats(report, history))

    async def privacy_status(self) -> PrivacyStatus:
        """The node's privacy budget, what was spent and what is left (from ``Stats``)."""
        return _privacy(await self.stats())

    # ------------------------------------------------------------------ the federation

    async def summary(self) -> ReleaseOutcome:
        """The node's privacy-filtered summary of its last complete window (``Summary``; the
        federation role). A release refused is an outcome, not an error: its ``status`` and
        ``reason`` say why and ``summary`` is None. A summary that does not check raises
        :class:`~federation.privacy.schema.SchemaError`."""
        return await self._unary(_Calls.summary())

    async def apply_federation(self, view: GlobalView) -> tuple[float, str]:
        """Give the node the federation's view (``ApplyFederation``): the acceptance threshold it
        gives and the node's admission policy. A view that does not check is a
        :class:`~node.errors.ValidationError` naming the field, and changes nothing."""
        return await self._unary(_Calls.apply_federation(view))

    async def health(self) -> str:
        """The node's health status: ``SERVING``, ``NOT_SERVING`` (draining), ..."""
        return await self._unary(_Calls.health())


# ---------------------------------------------------------------------------------------- threads


class EventStream(_EventStream):
    """``for event in client.subscribe():`` (also a context manager that closes it; ``close()``
    works from any thread)."""

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> Event:
        while not self._ready:
            try:
                batch = next(self._call)
            except grpc.RpcError as e:
                raise (self._ended(e) or StopIteration()) from None
            self._ready.extend(_events(batch))
        return self._ready.popleft()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NodeClient(_ClientBase):
    """A node's operations over gRPC, synchronous and thread-safe: ``with NodeClient(addr) as c:``.

    ``c.submit_one(spec)`` returns a :class:`concurrent.futures.Future` of the task id at once
    (a background thread sends the lingering batches): a loop of single calls runs at batch speed.
    It blocks only while ``max_pending`` specs are pending.
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, **options: Any):
        super().__init__(address, **options)
        self._channel: Any = None
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)
        self._slots = threading.BoundedSemaphore(self.max_inflight)
        self._thread: threading.Thread | None = None

    def connect(self) -> NodeClient:
        """Open the channel (it connects on the first call) and start the flusher thread. Calls
        connect on their own when needed; ``with`` does too."""
        self._connect()
        return self

    def _connect(self) -> dict[str, Any]:
        calls = self._calls
        if calls is not None:
            return calls
        with self._lock:
            if self._calls is None:
                if self._closed:
                    raise RuntimeError("the client is closed")
                self._channel = self._channel_for(grpc)
                self._thread = threading.Thread(target=self._run, name=f"submit-flusher-{self.address}", daemon=True)
                self._calls = _methods(self._channel)
                self._thread.start()
            return self._calls

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until the channel is connected (a node just started may not listen yet);
        :class:`~node.errors.NodeUnavailableError` after ``timeout_s``."""
        self._connect()
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise NodeUnavailableError(f"no connection to {self.address} within {timeout_s:g} s") from None

    def close(self) -> None:
        """Send what is queued, wait for its answers, stop the flusher, close the channel."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._room.notify_all()
        self.flush()
        with self._lock:
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
        if self._channel is not None:
            self._channel.close()

    def __enter__(self) -> NodeClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unary(self, call: _Call[R]) -> R:
        method = self._connect()[call.method]
        try:
            reply = method(call.request, timeout=self._deadline(call), metadata=self._metadata)
        except grpc.RpcError as e:
            raise self._error(e) from None
        return call.decode(reply)

    # ------------------------------------------------------------------ tasks

    def submit(self, specs: Sequence[TaskSpec]) -> list[str]:
        """As :meth:`AsyncNodeClient.submit`: now, in batches of ``max_batch``, overload retried."""
        msgs = _encode_all(specs, self.max_batch_bytes)
        ids: list[str] = []
        try:
            for offset, chunk in _chunks(msgs, self.max_batch, self.max_batch_bytes):
                ids += self._submit_batch(_Calls.submit(chunk), offset)
        except Exception as e:
            _note_submitted(e, ids)
            raise
        return ids

    def _submit_batch(self, call: _Call[list[str]], offset: int) -> list[str]:
        retry = _Retry(self.timeout_s, offset)
        while True:
            try:
                return self._unary(call)
            except FedcoordError as e:
                time.sleep(retry.after(e))

    def submit_one(self, spec: TaskSpec) -> concurrent.futures.Future[str]:
        """Queue ``spec`` for the next lingering batch; returns the future of its id at once
        (blocking only while ``max_pending`` are pending). Bad input that cannot be encoded
        raises here; the node's refusal comes through the future."""
        return self._queue(spec, block=True)

    def submit_one_nowait(self, spec: TaskSpec) -> concurrent.futures.Future[str]:
        """:meth:`submit_one` that never blocks: :class:`~node.errors.OverloadedError` when
        ``max_pending`` specs are pending already."""
        return self._queue(spec, block=False)

    def _queue(self, spec: TaskSpec, *, block: bool) -> concurrent.futures.Future[str]:
        fut: concurrent.futures.Future[str] = concurrent.futures.Future()
        fut.set_running_or_notify_cancel()  # it will be sent: it cannot be cancelled any more
        item = self._item(spec, fut)
        if self._calls is None:
            self._connect()
        buf = self._buffer
        with self._lock:
            while buf.full() and not self._closed:
                if not block:
                    raise OverloadedError(f"{buf.pending} submits pending in this client (max_pending): retry later")
                self._room.wait()
            if self._closed:
                raise RuntimeError("the client is closed")
            if buf.add(item):
                self._wake.notify()
        return fut

    def flush(self, timeout_s: float | None = None) -> None:
        """Send what is queued now without lingering; return once all of it is answered (or after
        ``timeout_s``)."""
        buf = self._buffer
        with self._lock:
            futures = cast("list[concurrent.futures.Future[str]]", buf.futures())
            if not futures:
                return
            buf.urgent += 1
            self._wake.notify()
        try:
            concurrent.futures.wait(futures, timeout_s)
        finally:
            with self._lock:
                buf.urgent -= 1

    def _run(self) -> None:
        buf = self._buffer
        while True:
            self._slots.acquire()
            with self._lock:
                while (wait := buf.wait_s(time.monotonic())) != 0:
                    if wait is None and self._closed and not buf.pending:
                        self._slots.release()
                        return
                    self._wake.wait(wait)
                batch = buf.take()
            self._send(batch)

    def _send(self, batch: list[_Item]) -> None:
        assert self._calls is not None
        try:
            call = self._calls["Submit"].future(self._request(batch), timeout=self.timeout_s, metadata=self._metadata)
        except ValueError as e:  # the channel was closed under us
            self._settle(batch, NodeUnavailableError(f"cannot call node {self.address}: {e}"))
            return
        call.add_done_callback(lambda c: self._sent(batch, c))

    def _sent(self, batch: list[_Item], call: Any) -> None:
        outcome: list[str] | FedcoordError
        try:
            outcome = _ids(call.result())
        except grpc.RpcError as e:
            outcome = self._error(e)
        except grpc.FutureCancelledError:
            outcome = self._cancelled()
        self._settle(batch, outcome)

    def _settle(self, batch: list[_Item], outcome: list[str] | FedcoordError) -> None:
        buf = self._buffer
        with self._lock:
            done, again = buf.settle(batch, outcome, time.monotonic())
            if again or (self._closed and not buf.pending):
                self._wake.notify()
            self._room.notify_all()
        self._slots.release()
        _resolve(done)

    def get(self, task_id: str) -> Task:
        return self._unary(_Calls.get(task_id))

    def wait(self, task_id: str, timeout_s: float | None = None) -> Task:
        """Until the task is finished (the node follows hand-offs); WaitTimeoutError after ``timeout_s``."""
        return self._unary(_Calls.wait(task_id, timeout_s))

    def cancel(self, task_id: str) -> TaskStatus:
        return self._unary(_Calls.cancel(task_id))

    def requeue(self, task_id: str) -> None:
        self._unary(_Calls.requeue(task_id))

    # ------------------------------------------------------------------ workers

    def register_worker(self, spec: WorkerSpec) -> WorkerInfo:
        return self._unary(_Calls.register_worker(spec))

    def deregister_worker(self, worker_id: str) -> None:
        self._unary(_Calls.deregister_worker(worker_id))

    def heartbeat(self, worker_id: str) -> HeartbeatReply:
        return self._unary(_Calls.heartbeat(worker_id))

    def claim(self, worker_id: str, max_tasks: int = 1, *, wait_s: float = 0.0) -> list[Lease]:
        return self._unary(_Calls.claim(worker_id, max_tasks, wait_s))

    def start_task(self, lease: Lease) -> None:
        self._unary(_Calls.start_task(lease))

    def complete(self, lease: Lease, result: bytes = b"") -> None:
        self._unary(_Calls.complete(lease, result))

    def fail(self, lease: Lease, error: str, *, retry: bool = True) -> None:
        self._unary(_Calls.fail(lease, error, retry))

    # ------------------------------------------------------------------ reading

    def subscribe(self, *, max_queue: int = 10_000) -> EventStream:
        """Task events as they become durable on the node: ``for e in client.subscribe():``."""
        call = self._connect()["Watch"](npb.WatchRequest(max_queue=max_queue), metadata=self._metadata)
        return EventStream(call, self.address)

    def stats(self, *, report: bool = False, history: bool = False) -> RemoteStats:
        return self._unary(_Calls.stats(report, history))

    def privacy_status(self) -> PrivacyStatus:
        """The node's privacy budget, what was spent and what is left (from ``Stats``)."""
        return _privacy(self.stats())

    # ------------------------------------------------------------------ the federation

    def summary(self) -> ReleaseOutcome:
        """See :meth:`AsyncNodeClient.summary`."""
        return self._unary(_Calls.summary())

    def apply_federation(self, view: GlobalView) -> tuple[float, str]:
        """See :meth:`AsyncNodeClient.apply_federation`."""
        return self._unary(_Calls.apply_federation(view))

    def health(self) -> str:
        """The node's health status: ``SERVING``, ``NOT_SERVING`` (draining), ..."""
        return self._unary(_Calls.health())
