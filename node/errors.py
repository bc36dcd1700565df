"""The exception hierarchy of a node.

Every error a caller can get from the node API derives from :class:`FedcoordError`; the
subclasses say what went wrong so a caller (and later the gRPC layer) can map them:

* :class:`ValidationError` - bad input; names the field and the limit (``INVALID_ARGUMENT``)
* :class:`NotFoundError` - unknown task or worker id (``NOT_FOUND``)
* :class:`InvalidTransitionError` - the task is not in a state that allows the call
* :class:`StaleLeaseError` - the lease is no longer the current one (fencing)
* :class:`StoreUnavailableError` - the durable store cannot be reached; nothing was acknowledged
* :class:`NodeOwnedError` - another live process serves this node id
* :class:`FencedError` - this process lost ownership of the node while running
* :class:`OverloadedError` - the node holds as much as it may take (``RESOURCE_EXHAUSTED``)
* :class:`WaitTimeoutError` - a wait ran out of time (also a :class:`TimeoutError`)
* :class:`EmbeddedRedisError` - the embedded redis-server could not be found or started
* :class:`NodeUnavailableError` - a client could not reach the node, or the node is closing
  or has lost its store (``UNAVAILABLE``)
* :class:`NotAuthorizedError` - the node refused the caller's credentials: no token, an unknown
  token, or one without the role the call needs (``UNAUTHENTICATED``, ``PERMISSION_DENIED``)
* :class:`HandoffError` - hand-off between nodes: :class:`PeerUnavailableError` (no answer:
  the outcome is unknown, the node asks again later), :class:`HandoffProtocolError` (a peer
  answered for a task it was never offered, or broke the protocol otherwise)

Every error survives pickling with its attributes (a sweep runs cores in worker processes, and
multiprocessing sends exceptions back by pickle between our own processes).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "EmbeddedRedisError",
    "FedcoordError",
    "FencedError",
    "HandoffError",
    "HandoffProtocolError",
    "InvalidTransitionError",
    "InvariantError",
    "NodeClosedError",
    "NodeOwnedError",
    "NodeUnavailableError",
    "NotAuthorizedError",
    "NotFoundError",
    "OverloadedError",
    "PeerUnavailableError",
    "StaleLeaseError",
    "StoreError",
    "StoreUnavailableError",
    "TaskNotFoundError",
    "ValidationError",
    "WaitTimeoutError",
    "WorkerNotFoundError",
]


def _rebuild(cls: type[BaseException], args: tuple[Any, ...], kwargs: dict[str, Any]) -> BaseException:
    return cls(*args, **kwargs)


class FedcoordError(Exception):
    """Base class of every error raised by fedcoord."""


class EmbeddedRedisError(FedcoordError, RuntimeError):
    """The embedded Redis could not be found or started."""


class ValidationError(FedcoordError, ValueError):
    """Input that breaks a rule. ``field`` names it, ``limit`` states the rule.

    ``index`` is the position in a batch when the bad value came in one.
    """

    def __init__(
        self, field: str, message: str, *, limit: str | None = None, index: int | None = None, batch: str = "specs"
    ):
        self.field = field
        self.limit = limit
        self.index = index
        self.batch = batch
        self.detail = message
        where = f"{field}" if index is None else f"{batch}[{index}].{field}"
        text = f"{where}: {message}"
        if limit is not None:
            text += f" (limit: {limit})"
        super().__init__(text)

    def __reduce__(self) -> tuple[Any, ...]:
        kw = {"limit": self.limit, "index": self.index, "batch": self.batch}
        return _rebuild, (type(self), (self.field, self.detail), kw)

    def at(self, index: int, batch: str = "specs") -> ValidationError:
        """The same error, placed at ``index`` of a batch (``specs``, ``records``...)."""
        return type(self)(self.field, self.detail, limit=self.limit, index=index, batch=batch)


class NotFoundError(FedcoordError, KeyError):
    """An id the node does not know."""

    def __init__(self, kind: str, ident: str):
        self.kind = kind
        self.ident = ident
        self._ctor_args: tuple[str, ...] = (kind, ident)
        super().__init__(f"{kind} {ident!r} not found")

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), self._ctor_args, {})

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0])


class TaskNotFoundError(NotFoundError):
    def __init__(self, task_id: str):
        super().__init__("task", task_id)
        self._ctor_args = (task_id,)


class WorkerNotFoundError(NotFoundError):
    def __init__(self, worker_id: str):
        super().__init__("worker", worker_id)
        self._ctor_args = (worker_id,)


class InvalidTransitionError(FedcoordError):
    """The task's status does not allow this operation (e.g. requeue of a completed task)."""

    def __init__(self, task_id: str, status: str, operation: str, allowed: str):
        self.task_id = task_id
        self.status = status
        self.operation = operation
        self.allowed = allowed
        super().__init__(f"cannot {operation} task {task_id!r}: it is {status}; {operation} needs {allowed}")

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), (self.task_id, self.status, self.operation, self.allowed), {})


class StaleLeaseError(FedcoordError):
    """The lease is not the current one: the task was re-leased, cancelled, finished or timed out."""

    def __init__(self, task_id: str, attempt: int, reason: str):
        self.task_id = task_id
        self.attempt = attempt
        self.reason = reason
        super().__init__(f"lease on task {task_id!r} attempt {attempt} is stale: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), (self.task_id, self.attempt, self.reason), {})


class StoreError(FedcoordError):
    """The durable store failed."""


class StoreUnavailableError(StoreError):
    """The store cannot be reached. The operation was not acknowledged; retry when it is back."""


class FencedError(StoreError):
    """Another process took over this node id; this process must stop serving it."""


class LedgerRefusedError(FedcoordError):
    """The privacy ledger refused a release: ``kind`` is ``"budget"`` (a task would go over it,
    or the ledger no longer holds the releases needed to tell) or ``"released"`` (its window
    starts before the last released one ended)."""

    def __init__(self, reason: str, kind: str = "budget"):
        self.reason = reason
        self.kind = kind
        super().__init__(reason)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.reason, self.kind)


class NodeOwnedError(FedcoordError):
    """Another live process already serves this node id."""


class NodeClosedError(FedcoordError):
    """The node is closed (or closing) and takes no more calls."""


class OverloadedError(FedcoordError):
    """The node holds as much as it may take: the call was refused, nothing of it applied. Back off
    and retry (over gRPC: ``RESOURCE_EXHAUSTED``)."""


class WaitTimeoutError(FedcoordError, TimeoutError):
    """A wait ran out of time; what it waited for may still happen later."""


class NodeUnavailableError(FedcoordError):
    """A client could not reach the node, or the node answered that it cannot serve now (closing,
    draining, store down; over gRPC: ``UNAVAILABLE``). Retry later or go to another node. When the
    connection broke during a call, whether the node applied it is unknown."""


class NotAuthorizedError(FedcoordError):
    """The node refused the caller: no bearer token, an unknown one, or one without the role the
    call needs (over gRPC: ``UNAUTHENTICATED`` or ``PERMISSION_DENIED``)."""


class InvariantError(FedcoordError, AssertionError):
    """The core's state breaks one of its own rules (a bug): ``problems`` lists each one."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        shown = "; ".join(self.problems[:10]) + (f"; ... {len(self.problems) - 10} more" if len(problems) > 10 else "")
        super().__init__(f"{len(self.problems)} invariant(s) broken: {shown}")

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), (self.problems,), {})


class HandoffError(FedcoordError):
    """Hand-off between nodes failed."""


class PeerUnavailableError(HandoffError):
    """The peer could not be reached or did not answer: what it did is unknown (the node settles
    it by asking the peer later, never by guessing)."""


class HandoffProtocolError(HandoffError):
    """A peer broke the hand-off protocol: it acknowledged or reported on a task that was never
    handed to it, or sent something no correct peer sends. Nothing of the call was applied."""
