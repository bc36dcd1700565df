"""Task handlers for a worker: what runs a lease, chosen by the task's type.

A handler is a callable ``fn(lease, ctx)`` (or ``fn(lease)``) that returns the task's result:
``bytes``, a ``str`` (sent as UTF-8) or ``None`` (an empty result). How it runs depends on what
it is:

* ``async def`` - on the worker's event loop; a revoked lease cancels it (``CancelledError``);
* a plain function - in the worker's thread pool; a revoked lease sets ``ctx.cancelled``, which
  a long handler should look at now and then (:meth:`WorkContext.sleep` and
  :meth:`WorkContext.check_cancelled` do);
* a plain function marked ``inline`` - called on the event loop itself, for handlers that return
  at once (a thread hop costs more than they do).

An exception fails the attempt: the node retries it (with backoff, up to the task's retries).
:class:`Reject` (alias :class:`PermanentError`) fails it for good.

Handlers come from a module (``HANDLERS = {"type": fn}`` or functions marked with
:func:`handler`, see :func:`load_module`), from single ``TYPE=module:function`` specs
(:func:`load_spec`), and from the built-ins (:func:`builtins`): ``noop``, ``sleep``, ``cpu`` and
``flaky``, demo handlers whose run time follows the task's difficulty and whose success follows
the worker's skill against it (seed 001: success iff ``skill >= difficulty``), plus ``reject``
and ``fail`` for use as the default of types without a handler. :func:`build_handlers` puts
them together into a :class:`HandlerSet`.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import inspect
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from node.errors import ValidationError
from node.model import Lease, check_name

__all__ = [
    "BUILTIN_NAMES",
    "DEFAULT_CHOICES",
    "BuiltinOptions",
    "Handler",
    "HandlerFn",
    "HandlerSet",
    "LeaseRevoked",
    "Mode",
    "PermanentError",
    "Reject",
    "Result",
    "TaskFailed",
    "TransientError",
    "WorkContext",
    "build_handlers",
    "builtins",
    "error_text",
    "handler",
    "load_module",
    "load_spec",
    "to_result",
]

Result = bytes | bytearray | memoryview | str | None
HandlerFn = Callable[..., Any]  # (lease[, ctx]) -> Result, or an awaitable of one
F = TypeVar("F", bound=Callable[..., Any])

_MARK = "__fedcoord_handler__"
_HANDLER_LOG = logging.getLogger("fedcoord.worker.handler")
BUILTIN_NAMES = ("noop", "sleep", "cpu", "flaky")
DEFAULT_CHOICES = (*BUILTIN_NAMES, "reject", "fail")


# ---------------------------------------------------------------------------------------- errors


class Reject(Exception):
    """Raise in a handler to fail the attempt without retry (bad input, unsupported task)."""


PermanentError = Reject


class TaskFailed(Exception):
    """A handler's failure that is part of its contract (retried like any other exception)."""


class TransientError(TaskFailed):
    """A failure worth retrying (an upstream that is down, a timeout)."""


class LeaseRevoked(Exception):
    """Raised by :meth:`WorkContext.check_cancelled` once the lease is gone: stop working."""


def error_text(exc: BaseException) -> str:
    """How a handler's exception is reported to the node: ``Type: message``."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def to_result(value: object) -> bytes:
    """A handler's return value as the result bytes (TypeError for anything else)."""
    if value is None:
        return b""
    if type(value) is bytes:
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"a handler returns bytes, str or None, not {type(value).__name__}")


# ---------------------------------------------------------------------------------------- context


@dataclass(frozen=True, slots=True)
class WorkContext:
    """What a handler gets besides the lease: who runs it, and whether to stop."""

    worker_id: str
    skill: int
    capabilities: tuple[str, ...] = ()
    cancelled: threading.Event = field(default_factory=threading.Event)
    log: logging.Logger | logging.LoggerAdapter[logging.Logger] = field(default_factory=lambda: _HANDLER_LOG)

    @property
    def is_cancelled(self) -> bool:
        return self.cancelled.is_set()

    def check_cancelled(self) -> None:
        """Raise :class:`LeaseRevoked` once the lease was revoked or dropped."""
        if self.cancelled.is_set():
            raise LeaseRevoked("the lease was revoked")

    def sleep(self, seconds: float) -> None:
        """Sleep in a thread handler, waking at once (with :class:`LeaseRevoked`) when cancelled."""
        if self.cancelled.wait(max(0.0, seconds)):
            raise LeaseRevoked("the lease was revoked")


# ---------------------------------------------------------------------------------------- handlers


class Mode(StrEnum):
    ASYNC = "async"  # a coroutine function, on the event loop
    THREAD = "thread"  # a plain function, in the thread pool
    INLINE = "inline"  # a plain function, on the event loop (it must return at once)


@dataclass(frozen=True, slots=True)
class Handler:
    """A handler function and how to run it. Build with :meth:`of`."""

    fn: HandlerFn
    mode: Mode
    name: str
    takes_ctx: bool = True

    @classmethod
    def of(cls, fn: HandlerFn | Handler, *, inline: bool = False, name: str | None = None) -> Handler:
        if isinstance(fn, Handler):
            return fn
        if not callable(fn):
            raise ValidationError("handler", f"{fn!r} is not callable")
        is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004
        if is_async and inline:
            raise ValidationError("handler", f"{_describe(fn)}: inline is for plain functions, not async ones")
        mode = Mode.ASYNC if is_async else Mode.INLINE if inline else Mode.THREAD
        return cls(fn, mode, name or _describe(fn), _takes_ctx(fn))

    def call(self, lease: Lease, ctx: WorkContext) -> Any:
        """Call the function (its result, or a coroutine for async handlers)."""
        return self.fn(lease, ctx) if self.takes_ctx else self.fn(lease)


def _describe(fn: object) -> str:
    mod = getattr(fn, "__module__", None)
    qual = getattr(fn, "__qualname__", None) or type(fn).__name__
    return f"{mod}:{qual}" if mod else str(qual)


def _takes_ctx(fn: HandlerFn) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    n = 0
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            return True
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            n += 1
    return n >= 2


def handler(task_type: str, *more_types: str, inline: bool = False) -> Callable[[F], F]:
    """Mark a function as the handler of one or more task types, for :func:`load_module`::

    @handler("resize")
    async def resize(lease: Lease, ctx: WorkContext) -> bytes: ...
    """
    types = (task_type, *more_types)
    for t in types:
        check_name("task type", t)

    def mark(fn: F) -> F:
        marks = getattr(fn, _MARK, ())
        setattr(fn, _MARK, (*marks, *((t, inline) for t in types)))
        return fn

    return mark


@dataclass(frozen=True, slots=True)
class HandlerSet:
    """The handlers of a worker by task type, and the one for types without a handler (None:
    such a lease fails without retry, as :class:`Reject` would)."""

    by_type: Mapping[str, Handler]
    default: Handler | None = None

    def get(self, task_type: str) -> Handler | None:
        h = self.by_type.get(task_type)
        return self.default if h is None else h

    def describe(self) -> str:
        """``type=name, ...; default=name``, for logs."""
        types = ", ".join(f"{t}={h.name}" for t, h in sorted(self.by_type.items()))
        return f"{types}; default={self.default.name if self.default else 'none (reject)'}"

    @classmethod
    def of(cls, handlers: Mapping[str, HandlerFn | Handler], default: HandlerFn | Handler | None = None) -> HandlerSet:
        return cls(
            {check_name("task type", t): Handler.of(fn) for t, fn in handlers.items()},
            None if default is None else Handler.of(default),
        )


# ---------------------------------------------------------------------------------------- built-ins


@dataclass(frozen=True, slots=True)
class BuiltinOptions:
    """How the built-in handlers behave: ``time_scale`` seconds of work per difficulty unit,
    ``flaky_rate`` the chance that ``flaky`` fails with a transient error, ``seed`` its random
    generator's seed (None: from the OS)."""

    time_scale: float = 0.01
    flaky_rate: float = 0.1
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (0 <= self.time_scale <= 3600):
            raise ValidationError("time_scale", f"{self.time_scale!r}", limit="0..3600 seconds per difficulty unit")
        if not (0 <= self.flaky_rate <= 1):
            raise ValidationError("flaky_rate", f"{self.flaky_rate!r}", limit="0..1")


def _check_skill(lease: Lease, ctx: WorkContext) -> None:
    if ctx.skill < lease.difficulty:  # seed 001: success iff skill >= difficulty
        raise TaskFailed(f"skill {ctx.skill} < difficulty {lease.difficulty}")


def builtins(options: BuiltinOptions | None = None) -> dict[str, Handler]:
    """The built-in handlers by name: ``noop``, ``sleep``, ``cpu``, ``flaky``, ``reject`` and ``fail``.

    * ``noop`` returns an empty result at once (inline);
    * ``sleep`` sleeps ``difficulty * time_scale`` seconds, then succeeds iff skill >= difficulty;
    * ``cpu`` burns ``difficulty * time_scale`` seconds of CPU in a thread (SHA-256 rounds, which
      let go of the GIL, so several run in parallel), then succeeds iff skill >= difficulty;
    * ``flaky`` is the demo's worker: it sleeps ``difficulty * time_scale`` x U(0.7, 1.3), fails
      when skill < difficulty, when the task's context says ``fault = poison``, and at random
      with a transient error at ``flaky_rate``;
    * ``reject`` fails without retry, ``fail`` fails with retry (defaults for unknown types).
    """
    o = options or BuiltinOptions()
    scale = o.time_scale
    rng = random.Random(o.seed)

    def noop(lease: Lease, ctx: WorkContext) -> bytes:
        return b""

    async def sleep(lease: Lease, ctx: WorkContext) -> str:
        seconds = lease.difficulty * scale
        await asyncio.sleep(seconds)
        _check_skill(lease, ctx)
        return f"slept {seconds:.3f}s on {ctx.worker_id}"

    def cpu(lease: Lease, ctx: WorkContext) -> str:
        budget = lease.difficulty * scale
        block = b"\x5a" * 65536
        h = hashlib.sha256()
        rounds = 0
        end = time.thread_time() + budget
        while time.thread_time() < end:
            ctx.check_cancelled()
            h.update(block)
            rounds += 1
        _check_skill(lease, ctx)
        return f"cpu {budget:.3f}s, {rounds} rounds on {ctx.worker_id}: {h.hexdigest()[:16]}"

    async def flaky(lease: Lease, ctx: WorkContext) -> str:
        seconds = lease.difficulty * scale * rng.uniform(0.7, 1.3)
        await asyncio.sleep(seconds)
        _check_skill(lease, ctx)
        if lease.context.get("fault") == "poison":
            raise ValueError("malformed payload")
        if rng.random() < o.flaky_rate:
            raise TransientError("upstream unavailable (503)")
        return f"done by {ctx.worker_id}"

    def reject(lease: Lease, ctx: WorkContext) -> None:
        raise Reject(f"no handler for task type {lease.type!r} on worker {ctx.worker_id}")

    def fail(lease: Lease, ctx: WorkContext) -> None:
        raise TaskFailed(f"no handler for task type {lease.type!r} on worker {ctx.worker_id}")

    return {
        "noop": Handler(noop, Mode.INLINE, "builtin:noop"),
        "sleep": Handler(sleep, Mode.ASYNC, "builtin:sleep"),
        "cpu": Handler(cpu, Mode.THREAD, "builtin:cpu"),
        "flaky": Handler(flaky, Mode.ASYNC, "builtin:flaky"),
        "reject": Handler(reject, Mode.INLINE, "builtin:reject"),
        "fail": Handler(fail, Mode.INLINE, "builtin:fail"),
    }


# ---------------------------------------------------------------------------------------- loading


def _import(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ValidationError(what, f"cannot import {module!r}: {e}") from None
    except Exception as e:  # noqa: BLE001 - the user's module failed while importing: say so, in one line
        raise ValidationError(what, f"importing {module!r} failed: {error_text(e)}") from None


def load_module(module: str) -> dict[str, Handler]:
    """The handlers of ``module``: its ``HANDLERS`` mapping (task type -> callable or
    :class:`Handler`) and every function in it marked with :func:`handler`. A type given
    twice with different functions is an error."""
    mod = _import(module, "handlers")
    out: dict[str, Handler] = {}

    def add(task_type: object, h: Handler) -> None:
        if not isinstance(task_type, str):
            raise ValidationError("handlers", f"{module}: task types are strings, not {type(task_type).__name__}")
        t = check_name(f"handlers ({module}) task type", task_type)
        prev = out.get(t)
        if prev is not None and prev.fn is not h.fn:
            raise ValidationError("handlers", f"{module}: task type {t!r} has two handlers ({prev.name}, {h.name})")
        out[t] = h

    table = getattr(mod, "HANDLERS", None)
    if table is not None:
        if not isinstance(table, Mapping):
            raise ValidationError("handlers", f"{module}.HANDLERS must be a dict of task type -> function")
        for t, fn in table.items():
            add(t, Handler.of(fn))
    for value in list(vars(mod).values()):
        marks: Iterable[tuple[str, bool]] = getattr(value, _MARK, ()) if callable(value) else ()
        for t, inline in marks:
            add(t, Handler.of(value, inline=inline))
    if not out:
        raise ValidationError(
            "handlers", f"{module} defines no handlers (a HANDLERS dict, or functions marked @handler(TYPE))"
        )
    return out


def load_spec(spec: str) -> tuple[str, Handler]:
    """``TYPE=module:function`` (``function`` may be dotted: ``Class.method``) -> (type, handler)."""
    task_type, eq, target = spec.partition("=")
    module, colon, attr = target.partition(":")
    if not eq or not colon or not task_type.strip() or not module.strip() or not attr.strip():
        raise ValidationError("handler", f"{spec!r}: expected TYPE=module:function")
    t = check_name("handler task type", task_type.strip())
    obj: Any = _import(module.strip(), "handler")
    for part in attr.strip().split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValidationError("handler", f"{spec!r}: {module.strip()} has no {attr.strip()!r}") from None
    marks = getattr(obj, _MARK, ())
    inline = any(i for mt, i in marks if mt == t)
    return t, Handler.of(obj, inline=inline)


def build_handlers(
    modules: Iterable[str] = (),
    specs: Iterable[str] = (),
    default: str | HandlerFn | Handler | None = "reject",
    options: BuiltinOptions | None = None,
    extra: Mapping[str, HandlerFn | Handler] | None = None,
) -> HandlerSet:
    """The built-in handlers under their names (``noop``, ``sleep``, ``cpu``, ``flaky``), then
    the handlers of ``modules``, then ``extra``, then ``specs`` (later ones win), and the default
    for other types: a built-in's name (one of :data:`DEFAULT_CHOICES`), a function, or None."""
    table = builtins(options)
    by_type: dict[str, Handler] = {name: table[name] for name in BUILTIN_NAMES}
    for module in modules:
        by_type.update(load_module(module))
    for t, fn in (extra or {}).items():
        by_type[check_name("task type", t)] = Handler.of(fn)
    for spec in specs:
        t, h = load_spec(spec)
        by_type[t] = h
    dflt: Handler | None
    if isinstance(default, str):
        if default not in DEFAULT_CHOICES:
            raise ValidationError("default", f"{default!r} is not a built-in handler", limit="|".join(DEFAULT_CHOICES))
        dflt = table[default]
    else:
        dflt = None if default is None else Handler.of(default)
    return HandlerSet(by_type, dflt)
