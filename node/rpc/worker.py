"""A worker: one ``Work`` stream to a node, leases run by the handlers of their task types.

:class:`Worker` opens the stream (TLS and a bearer token when given), registers with its first
message (its :class:`~node.model.WorkerSpec` and credit for ``concurrency`` leases), and runs
every lease it gets with the handler of the task's type (:mod:`node.rpc.handlers`), a task per
lease; it never runs more than ``concurrency`` at once, which the credit guarantees. What
finishes goes into an outgoing buffer with the credit it frees; a single writer sends the buffer
as one message whenever there is something, so everything that piled up while the previous write
was in flight travels together (completions, failures, credit, starts, heartbeat): that batching
is what makes the throughput.

Every ``heartbeat_s`` the worker sends a heartbeat and reports as started the leases running
since the previous one (their timeout counts from then). The node answers with the leases to
drop: a revoked lease (cancelled, or reassigned after a timeout) has its handler cancelled (async
handlers) or its ``ctx.cancelled`` set (thread handlers), and nothing is sent for it.

When the stream breaks (the node died or restarted, the network failed, or the node went
silent for ``stall_s``), the running handlers are cancelled (their leases are void: the node
releases what an earlier incarnation of the worker held when it registers again) and the worker
reconnects with exponential backoff and jitter, then registers again. Refusals that retrying
cannot fix (``UNAUTHENTICATED``, ``PERMISSION_DENIED``, ``INVALID_ARGUMENT``, ``UNIMPLEMENTED``)
end :meth:`Worker.run` with :class:`WorkerRefusedError`.

:meth:`Worker.stop` stops gracefully: no more credit, the running handlers finish (up to
``grace_s``), their results are sent and acknowledged, then the stream is closed.

``python -m node.rpc.worker --node HOST:PORT ...`` runs the ``fedcoord worker`` command.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import threading
import time
import traceback
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import grpc

from node.errors import FedcoordError, ValidationError
from node.model import Lease, Limits, WorkerSpec, check_error, normalize_worker_spec
from node.rpc import convert as cv
from node.rpc.auth import bearer_metadata, channel_credentials, check_plaintext
from node.rpc.handlers import (
    Handler,
    HandlerFn,
    HandlerSet,
    Mode,
    Reject,
    TaskFailed,
    WorkContext,
    error_text,
    to_result,
)
from node.rpc.handlers import builtins as builtin_handlers
from protos.fedcoord.v1 import node_pb2 as npb
from protos.fedcoord.v1 import node_pb2_grpc

__all__ = ["FATAL_CODES", "Worker", "WorkerRefusedError", "WorkerStats"]

_STEADY_S = 5.0  # a stream up this long resets the reconnect backoff
log = logging.getLogger("fedcoord.worker")

FATAL_CODES = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
"""Answers that end :meth:`Worker.run` instead of a reconnect: retrying would not change them."""

_HINTS = {
    grpc.StatusCode.UNAUTHENTICATED: "give the worker token (--token or FEDCOORD_TOKEN)",
    grpc.StatusCode.PERMISSION_DENIED: "the token does not carry the worker role",
    grpc.StatusCode.UNIMPLEMENTED: "is this a fedcoord node?",
}
_ITEM_BYTES = 48  # what one completion or failure costs on the wire besides its result or error
_LIMITS = Limits()  # the node's limits on a result's size and an error's length (the defaults)
_LOG_ERROR_CHARS = 1000  # an error text in the log is cut to this
_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.keepalive_time_ms", 10_000),  # a node that vanished without closing the connection is noticed
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.enable_retries", 0),
)


def _shorten(text: str, most: int) -> str:
    return text if len(text) <= most else f"{text[: most - 1]}… ({len(text)} chars)"


class WorkerRefusedError(FedcoordError):
    """The node refused the worker in a way that reconnecting cannot fix (bad token, missing
    role, invalid registration)."""

    def __init__(self, address: str, code: str, details: str):
        self.address = address
        self.code = code
        self.details = details
        hint = _HINTS.get(getattr(grpc.StatusCode, code, grpc.StatusCode.UNKNOWN))
        text = f"node {address} refused the worker: {code}: {details}"
        super().__init__(f"{text} ({hint})" if hint else text)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.address, self.code, self.details)


@dataclass(slots=True)
class WorkerStats:
    """What a worker did, from its side (the node keeps its own statistics)."""

    leases: int = 0  # leases received
    completed: int = 0  # completions sent
    failed: int = 0  # failures sent (handler errors, rejections included)
    rejected: int = 0  # of those, failed without retry (Reject, no handler)
    acked: int = 0  # results the node recorded durably
    stale: int = 0  # results the node refused (the lease was gone by then)
    revoked: int = 0  # running leases the node revoked (cancelled, reassigned): dropped, nothing sent
    dropped: int = 0  # running leases voided by a lost stream or by the end of the grace period
    registrations: int = 0
    reconnects: int = 0  # registrations after the first
    connect_failures: int = 0  # attempts that ended before the node registered the worker
    connected: bool = False

    def as_dict(self) -> dict[str, int | bool]:
        return asdict(self)


class HandlerCancelledError(Exception):
    """A handler raised CancelledError while the worker had not cancelled it."""


class _Stalled(Exception):
    """The node sent nothing (not even a heartbeat answer) for too long."""


class _Conn:
    """One stream and its outgoing buffer. Results of an earlier stream are never sent on a later
    one: the node released those leases when the worker registered again."""

    def __init__(self, gen: int):
        self.gen = gen
        self.call: Any = None
        self.closing = False  # draining: no new leases are started, the buffer is still sent
        self.half_closed = False  # done writing: nothing more is sent
        self.wake = asyncio.Event()
        self.out_empty = asyncio.Event()
        self.acks_changed = asyncio.Event()
        self.eof = asyncio.Event()
        self.completions: list[tuple[str, int, bytes]] = []
        self.failures: list[tuple[str, int, str, bool]] = []
        self.started: list[tuple[str, int]] = []
        self.credit = 0
        self.heartbeat = False
        self.nbytes = 0
        self.unacked: set[tuple[str, int]] = set()
        self.sent_completions: set[tuple[str, int]] = set()  # of unacked: the completions
        self.last_heard = time.monotonic()


@dataclass(slots=True, eq=False)
class _Run:
    lease: Lease
    conn: _Conn
    ctx: WorkContext
    handler: Handler
    tick: int
    task: asyncio.Task[None] | None = None
    reported_start: bool = False
    live: bool = True  # False once revoked or voided: its outcome is not sent

    @property
    def key(self) -> tuple[str, int]:
        return (self.lease.task_id, self.lease.attempt)


@dataclass(slots=True)
class _Options:
    heartbeat_s: float
    reconnect_min_s: float
    reconnect_max_s: float
    linger_s: float
    grace_s: float
    connect_timeout_s: float
    stall_s: float
    max_batch_bytes: int

    def check(self) -> None:
        for name in ("heartbeat_s", "reconnect_min_s", "reconnect_max_s", "connect_timeout_s", "stall_s"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and 0 < v <= 86400):
                raise ValidationError(name, f"{v!r}", limit="> 0 and <= 86400 seconds")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValidationError("reconnect_max_s", f"{self.reconnect_max_s} < reconnect_min_s {self.reconnect_min_s}")
        if not 0 <= self.linger_s <= 1:
            raise ValidationError("batch_linger_ms", f"{self.linger_s * 1000:g}", limit="0..1000 ms")
        if not 0 <= self.grace_s <= 86400:
            raise ValidationError("grace_s", f"{self.grace_s!r}", limit="0..86400 seconds")
        if self.max_batch_bytes < 1024:
            raise ValidationError("max_batch_bytes", f"{self.max_batch_bytes}", limit=">= 1024")


class Worker:
    """A worker attached to the node at ``address``: ``await worker.run()`` until :meth:`stop`.

    ``handlers`` is a :class:`~node.rpc.handlers.HandlerSet` or a mapping of task type to
    handler (a type without one fails without retry). TLS trusts ``ca_file`` (None: the system's
    roots) and presents ``cert_file``/``key_file`` to a node that asks for a client certificate;
    ``insecure`` means plaintext, allowed on a loopback address only. ``token`` is sent as
    ``authorization: Bearer <token>``.
    """

    def __init__(
        self,
        address: str,
        spec: WorkerSpec,
        handlers: HandlerSet | Mapping[str, HandlerFn | Handler],
        *,
        token: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        insecure: bool = False,
        heartbeat_s: float = 1.0,
        reconnect_min_s: float = 0.1,
        reconnect_max_s: float = 5.0,
        batch_linger_ms: float = 1.0,
        grace_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        stall_s: float | None = None,
        max_batch_bytes: int = 4 << 20,
        seed: int | None = None,
    ):
        if not address:
            raise ValidationError("node", "the node's address is empty (host:port)")
        self.address = address
        self.spec = normalize_worker_spec(spec, Limits())
        self.handlers = handlers if isinstance(handlers, HandlerSet) else HandlerSet.of(handlers)
        self._opt = _Options(
            heartbeat_s=heartbeat_s,
            reconnect_min_s=reconnect_min_s,
            reconnect_max_s=reconnect_max_s,
            linger_s=batch_linger_ms / 1000.0,
            grace_s=grace_s,
            connect_timeout_s=connect_timeout_s,
            stall_s=stall_s if stall_s is not None else max(30.0, 10 * heartbeat_s),
            max_batch_bytes=max_batch_bytes,
        )
        self._opt.check()
        if insecure:
            if ca_file is not None or cert_file is not None or key_file is not None:
                raise ValidationError("insecure", "plaintext (insecure) and TLS files exclude each other")
            check_plaintext(address, True)
            self._creds: grpc.ChannelCredentials | None = None
        else:
            self._creds = channel_credentials(ca_file, cert_file, key_file)
        self._metadata = bearer_metadata(token)
        self.stats = WorkerStats()
        self._rng = random.Random(seed)
        self._reject = builtin_handlers()["reject"]
        self._hlog = logging.getLogger("fedcoord.worker.handler")
        self._inline_ctx = WorkContext(self.spec.id, self.spec.skill, tuple(self.spec.capabilities), log=self._hlog)
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._started = False
        self._conn: _Conn | None = None
        self._gen = 0
        self._tick = 0
        self._busy = 0  # handler executions alive, abandoned threads included: each holds a slot
        self._running: dict[tuple[str, int], _Run] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._pool: ThreadPoolExecutor | None = None
        self._thread_runs: set[Future[Any]] = set()  # thread handlers started and not ended
        self._loop: asyncio.AbstractEventLoop | None = None
        self._warned: set[tuple[str, str]] = set()

    # ------------------------------------------------------------------ public

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def running(self) -> int:
        """Leases being worked on now."""
        return len(self._running)

    @property
    def running_threads(self) -> int:
        """Thread handlers still running, those abandoned after a revocation or the grace period
        included (a thread cannot be stopped: it ends when its handler returns). A process that
        exits while some run waits for them."""
        return sum(not f.done() for f in list(self._thread_runs))

    def stop(self) -> None:
        """Stop gracefully (from the event loop or a signal handler on it): take no more leases,
        let the running handlers finish (up to ``grace_s``), send their results, close the
        stream. :meth:`run` returns when that is done."""
        if not self._stopping:
            log.info("worker %s: stopping (%d running)", self.id, len(self._running))
        self._stopping = True
        self._stop_event.set()

    async def run(self) -> None:
        """Work until :meth:`stop`; reconnect whenever the stream breaks. Raises
        :class:`WorkerRefusedError` when the node refuses the worker for good."""
        if self._started:
            raise RuntimeError("Worker.run() runs once per Worker")
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._pool = ThreadPoolExecutor(max_workers=self.spec.concurrency, thread_name_prefix=f"worker-{self.id}")
        s = self.spec
        log.info(
            "worker %s: node %s, skill %d, concurrency %d, capabilities [%s]; handlers: %s",
            s.id,
            self.address,
            s.skill,
            s.concurrency,
            ", ".join(s.capabilities),
            self.handlers.describe(),
        )
        o = self._opt
        backoff = o.reconnect_min_s
        streak = 0
        try:
            while not self._stopping:
                began = time.monotonic()
                leases = self.stats.leases
                registered = await self._session()
                if self._stopping:
                    break
                # a session that got work or lasted counts as having worked: back off from the
                # start; a node that registers and drops the stream at once is not retried hot
                if registered and (self.stats.leases > leases or time.monotonic() - began >= _STEADY_S):
                    backoff, streak = o.reconnect_min_s, 0
                else:
                    streak += 1
                    self.stats.connect_failures += 1
                delay = max(o.reconnect_min_s, self._rng.uniform(backoff / 2, backoff))
                backoff = min(backoff * 2, o.reconnect_max_s)
                log.log(
                    logging.INFO if streak <= 1 or streak % 10 == 0 else logging.DEBUG,
                    "worker %s: reconnecting to %s in %.2fs (attempt %d)",
                    self.id,
                    self.address,
                    delay,
                    streak + 1,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_event.wait(), delay)
        finally:
            await self._shutdown()

    # ------------------------------------------------------------------ one stream

    def _channel(self) -> grpc.aio.Channel:
        if self._creds is None:
            return grpc.aio.insecure_channel(self.address, options=_CHANNEL_OPTIONS)
        return grpc.aio.secure_channel(self.address, self._creds, options=_CHANNEL_OPTIONS)

    async def _session(self) -> bool:
        """One stream, from connecting to its end. True when the node registered the worker."""
        self._gen += 1
        conn = _Conn(self._gen)
        channel = self._channel()
        tasks: list[asyncio.Task[None]] = []
        registered = False
        try:
            conn.call = node_pb2_grpc.NodeServiceStub(channel).Work(metadata=self._metadata or None)
            self._conn = conn  # slots freed from now on are credit of this stream
            hello = npb.WorkerMessage(hello=cv.worker_spec_to_pb(self.spec), credit=self._free_credit())
            first = await self._handshake(conn, hello)
            if first is None:
                return False
            registered = True
            self._registered(first, conn)
            tasks = [
                asyncio.create_task(self._read(conn), name=f"worker-read-{self.id}"),
                asyncio.create_task(self._write(conn), name=f"worker-write-{self.id}"),
                asyncio.create_task(self._beat(conn), name=f"worker-beat-{self.id}"),
                asyncio.create_task(self._drain(conn), name=f"worker-drain-{self.id}"),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                exc = t.exception()
                if exc is not None:
                    raise exc
            if not self._stopping:
                log.warning("worker %s: the node %s ended the stream", self.id, self.address)
        except grpc.aio.AioRpcError as e:
            code = e.code()
            if code in FATAL_CODES:
                raise WorkerRefusedError(self.address, code.name, e.details() or "") from None
            self._lost(registered, f"{code.name}: {e.details()}")
        except (_Stalled, asyncio.InvalidStateError, grpc.RpcError) as e:
            self._lost(registered, str(e) or type(e).__name__)
        finally:
            if self._conn is conn:
                self._conn = None
            conn.closing = True
            self.stats.connected = False
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if conn.call is not None:
                conn.call.cancel()
            self._void(conn)
            await channel.close()
        return registered

    def _lost(self, registered: bool, why: str) -> None:
        if registered:
            log.warning("worker %s: lost the node %s (%s)", self.id, self.address, why)
        else:
            log.info("worker %s: cannot reach the node %s (%s)", self.id, self.address, why)

    async def _handshake(self, conn: _Conn, hello: npb.WorkerMessage) -> npb.NodeMessage | None:
        """Send the hello and read the node's answer; None when stopped, timed out or closed."""

        async def exchange() -> Any:
            await conn.call.write(hello)
            return await conn.call.read()

        hs = asyncio.create_task(exchange())
        stop = asyncio.create_task(self._stop_event.wait())
        try:
            done, _ = await asyncio.wait(
                {hs, stop}, timeout=self._opt.connect_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stop.cancel()
            if not hs.done():
                hs.cancel()
            await asyncio.gather(stop, return_exceptions=True)
        if hs not in done:
            await asyncio.gather(hs, return_exceptions=True)
            if not self._stopping:
                log.info(
                    "worker %s: no answer from %s within %.1fs", self.id, self.address, self._opt.connect_timeout_s
                )
            return None
        msg = hs.result()  # raises the call's error
        if msg is grpc.aio.EOF:
            return None
        if not msg.HasField("registered"):
            log.warning("worker %s: the node's first message is not a registration: closing", self.id)
            return None
        return msg  # type: ignore[no-any-return]

    def _registered(self, first: npb.NodeMessage, conn: _Conn) -> None:
        st = self.stats
        if st.registrations:
            st.reconnects += 1
        st.registrations += 1
        st.connected = True
        info = first.registered
        log.info(
            "worker %s: registered with %s (skill %d, concurrency %d, %d running)%s",
            self.id,
            self.address,
            info.skill,
            info.concurrency,
            self._busy,
            " again" if st.reconnects else "",
        )
        conn.last_heard = time.monotonic()
        self._on_message(first, conn)
        conn.wake.set()

    def _free_credit(self) -> int:
        return 0 if self._stopping else max(0, self.spec.concurrency - self._busy)

    # ------------------------------------------------------------------ the stream's parts

    async def _read(self, conn: _Conn) -> None:
        call = conn.call
        on_message = self._on_message
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                conn.eof.set()
                return
            conn.last_heard = time.monotonic()
            on_message(msg, conn)

    def _on_message(self, msg: npb.NodeMessage, conn: _Conn) -> None:
        if msg.leases:
            start = self._start
            for m in msg.leases:
                start(cv.lease_from_pb(m), conn)
        if msg.revoked:
            for r in msg.revoked:
                self._revoke((r.task_id, r.attempt), conn)
        if msg.acked:
            unacked = conn.unacked
            sent = conn.sent_completions
            for r in msg.acked:
                unacked.discard((r.task_id, r.attempt))
                sent.discard((r.task_id, r.attempt))
            self.stats.acked += len(msg.acked)
            conn.acks_changed.set()
        if msg.rejected:
            for e in msg.rejected:
                self._refused(e, conn)
            conn.acks_changed.set()
        if msg.HasField("healthy") and not msg.healthy:
            log.warning("worker %s: the node counts this worker unhealthy", self.id)

    def _refused(self, e: npb.LeaseError, conn: _Conn) -> None:
        """The node refused a report. A completion refused as invalid (a result over the node's
        limit, say) leaves the lease the worker's: it is reported as failed for good, or it would
        time out and be rerun for nothing."""
        key = (e.task_id, e.attempt)
        was_completion = key in conn.sent_completions
        conn.sent_completions.discard(key)
        if key in conn.unacked:
            conn.unacked.discard(key)
            if e.code == grpc.StatusCode.INVALID_ARGUMENT.name:
                log.warning(
                    "worker %s: the node refused the %s of %s/%d: %s: %s",
                    self.id,
                    "result" if was_completion else "failure report",
                    *key,
                    e.code,
                    _shorten(e.message, _LOG_ERROR_CHARS),
                )
                if was_completion and not conn.half_closed:
                    conn.unacked.add(key)  # a drain waits for this failure's answer too
                    self._fail(conn, key, check_error(f"the node refused the result: {e.message}", _LIMITS), True)
                return
            self.stats.stale += 1
        log.debug("worker %s: node refused a report on %s/%d: %s %s", self.id, *key, e.code, e.message)

    async def _write(self, conn: _Conn) -> None:
        call = conn.call
        linger = self._opt.linger_s
        while True:
            await conn.wake.wait()
            conn.wake.clear()
            if linger and self._busy and (conn.completions or conn.failures):
                await asyncio.sleep(linger)  # let results that are about to come join this message
            while not conn.half_closed and (msg := self._take(conn)) is not None:
                await call.write(msg)
            conn.out_empty.set()

    def _take(self, conn: _Conn) -> npb.WorkerMessage | None:
        """The buffer as one message (up to max_batch_bytes of results; the rest stays)."""
        if self._stopping:
            conn.credit = 0
        if not (conn.completions or conn.failures or conn.started or conn.credit or conn.heartbeat):
            return None
        msg = npb.WorkerMessage()
        if conn.credit:
            msg.credit = conn.credit
            conn.credit = 0
        if conn.heartbeat:
            msg.heartbeat = True
            conn.heartbeat = False
        wid = self.spec.id
        if conn.started:
            add_ref = msg.started.add
            for t, a in conn.started:
                add_ref(task_id=t, attempt=a, worker_id=wid)
            conn.started = []
        unacked = conn.unacked
        sent = conn.sent_completions
        budget = self._opt.max_batch_bytes
        if conn.nbytes <= budget:  # all of it
            if conn.completions:
                add = msg.completions.add
                for t, a, r in conn.completions:
                    add(task_id=t, attempt=a, result=r)
                    unacked.add((t, a))
                    sent.add((t, a))
                conn.completions = []
            if conn.failures:
                add_f = msg.failures.add
                for t, a, err, no_retry in conn.failures:
                    add_f(task_id=t, attempt=a, error=err, no_retry=no_retry)
                    unacked.add((t, a))
                conn.failures = []
            conn.nbytes = 0
            return msg
        # Up to max_batch_bytes: the node ends a stream whose message is over its limit (16 MiB),
        # voiding every lease on it. An item over the budget alone goes alone (none should be:
        # results and errors are checked against the node's limits before they are queued).
        used = items = 0
        comps = conn.completions
        n = 0
        for _, _, r in comps:
            cost = len(r) + _ITEM_BYTES
            if items and used + cost > budget:
                break
            used += cost
            items += 1
            n += 1
        add = msg.completions.add
        for t, a, r in comps[:n]:
            add(task_id=t, attempt=a, result=r)
            unacked.add((t, a))
            sent.add((t, a))
        conn.completions = comps[n:]
        fails = conn.failures
        n = 0
        if not conn.completions:  # completions first: they are the costly ones to lose
            for _, _, err, _ in fails:
                cost = len(err.encode()) + _ITEM_BYTES
                if items and used + cost > budget:
                    break
                used += cost
                items += 1
                n += 1
        add_f = msg.failures.add
        for t, a, err, no_retry in fails[:n]:
            add_f(task_id=t, attempt=a, error=err, no_retry=no_retry)
            unacked.add((t, a))
        conn.failures = fails[n:]
        conn.nbytes = max(0, conn.nbytes - used)
        return msg

    async def _beat(self, conn: _Conn) -> None:
        """Heartbeats; starts of the leases running since the previous one; the stall watch."""
        interval = self._opt.heartbeat_s
        stall = self._opt.stall_s
        while True:
            await asyncio.sleep(interval)
            tick = self._tick
            self._tick += 1
            for run in self._running.values():
                if run.tick < tick and not run.reported_start and run.conn is conn and run.live:
                    run.reported_start = True
                    conn.started.append(run.key)
            conn.heartbeat = True
            conn.wake.set()
            silent = time.monotonic() - conn.last_heard
            if silent > stall:
                raise _Stalled(f"no word from the node for {silent:.1f}s")

    async def _drain(self, conn: _Conn) -> None:
        """On stop: let the running handlers finish, send and get acknowledged what they made,
        close the stream."""
        await self._stop_event.wait()
        grace = self._opt.grace_s
        if self._busy:
            log.info("worker %s: finishing %d running tasks (up to %.0fs)", self.id, self._busy, grace)
            try:
                await asyncio.wait_for(self._idle.wait(), grace)
            except TimeoutError:
                log.warning(
                    "worker %s: %d tasks still running after %.0fs: dropping them (the node gives them to others)",
                    self.id,
                    len(self._running),
                    grace,
                )
                self._void(conn)
        conn.closing = True  # a lease arriving from now on is not started: the node takes it back
        conn.out_empty.clear()
        conn.wake.set()
        await conn.out_empty.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._acked(conn), 10.0)
        conn.half_closed = True
        await conn.call.done_writing()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(conn.eof.wait(), 5.0)

    async def _acked(self, conn: _Conn) -> None:
        while conn.unacked:
            conn.acks_changed.clear()
            await conn.acks_changed.wait()

    # ------------------------------------------------------------------ leases

    def _start(self, lease: Lease, conn: _Conn) -> None:
        self.stats.leases += 1
        if conn.closing:
            self.stats.dropped += 1
            return
        h = self.handlers.get(lease.type) or self._reject
        if h.mode is Mode.INLINE:
            try:
                value = h.call(lease, self._inline_ctx)
            except Exception as e:  # noqa: BLE001 - a handler's error is the attempt's failure, reported
                self._outcome(conn, lease, None, e)
            else:
                if not inspect.isawaitable(value):
                    self._outcome(conn, lease, value, None)
                else:
                    self._launch(lease, conn, h, value)
                    return
            if not self._stopping:
                conn.credit += 1
            return
        self._launch(lease, conn, h, None)

    def _launch(self, lease: Lease, conn: _Conn, h: Handler, pending: Any) -> None:
        ctx = WorkContext(self.spec.id, self.spec.skill, tuple(self.spec.capabilities), threading.Event(), self._hlog)
        run = _Run(lease, conn, ctx, h, self._tick)
        self._running[run.key] = run
        self._busy += 1
        self._idle.clear()
        task = asyncio.get_running_loop().create_task(self._execute(run, pending))
        run.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, run: _Run, pending: Any) -> None:
        h = run.handler
        holds_thread = False  # the slot is given back when the thread ends, not before
        try:
            try:
                if pending is not None:
                    value = await pending
                elif h.mode is Mode.ASYNC:
                    value = await h.call(run.lease, run.ctx)
                else:
                    assert self._pool is not None
                    cfut = self._pool.submit(h.call, run.lease, run.ctx)
                    self._thread_runs.add(cfut)
                    cfut.add_done_callback(self._thread_runs.discard)
                    try:
                        value = await asyncio.wrap_future(cfut)
                    except asyncio.CancelledError:
                        run.ctx.cancelled.set()
                        if not cfut.done():
                            holds_thread = True
                            cfut.add_done_callback(self._thread_done)
                        raise
                    if inspect.isawaitable(value):
                        value = await value
            except asyncio.CancelledError as e:
                me = asyncio.current_task()
                if me is not None and me.cancelling():  # the worker cancelled it (revoked, voided, shut down)
                    run.ctx.cancelled.set()
                    if run.live:  # not a revocation: the worker itself is being cancelled
                        raise
                    return
                # The handler's own CancelledError (a sub-task it awaited was cancelled): an error of
                # the attempt, reported like any other, or the lease would only time out.
                err = HandlerCancelledError(f"the handler raised CancelledError: {e}".rstrip(": "))
                err.__cause__ = e  # its traceback is logged with it
                self._finished(run, None, err)
            except Exception as e:  # noqa: BLE001 - a handler's error is the attempt's failure, reported
                self._finished(run, None, e)
            else:
                self._finished(run, value, None)
        finally:
            if not holds_thread:
                self._release_slot()

    def _thread_done(self, _fut: Future[Any]) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to give back to
                loop.call_soon_threadsafe(self._release_slot)

    def _release_slot(self) -> None:
        self._busy -= 1
        if self._busy <= 0:
            self._busy = 0
            self._idle.set()
        conn = self._conn
        if conn is not None and not conn.closing and not self._stopping:
            conn.credit += 1
            conn.wake.set()

    def _finished(self, run: _Run, value: object, exc: BaseException | None) -> None:
        key = run.key
        if self._running.get(key) is run:
            del self._running[key]
        if not run.live:
            return
        run.live = False
        if run.conn is self._conn:
            self._outcome(run.conn, run.lease, value, exc)

    def _outcome(self, conn: _Conn, lease: Lease, value: object, exc: BaseException | None) -> None:
        if exc is None:
            try:
                result = to_result(value)
            except TypeError as e:
                exc = e
            else:
                limit = _LIMITS.max_result_bytes
                if len(result) <= limit:
                    conn.completions.append((lease.task_id, lease.attempt, result))
                    conn.nbytes += len(result) + _ITEM_BYTES
                    self.stats.completed += 1
                    conn.wake.set()
                    return
                # The node would refuse it (INVALID_ARGUMENT) and the lease would time out: fail for good.
                text = f"result of {len(result)} bytes is over the node's limit of {limit} bytes"
                log.warning("worker %s: handler of %r on task %s: %s", self.id, lease.type, lease.task_id, text)
                self._fail(conn, (lease.task_id, lease.attempt), text, True)
                return
        no_retry = isinstance(exc, Reject)
        text = check_error(error_text(exc), _LIMITS)  # the node cuts it there too; a huge one would end the stream
        self._fail(conn, (lease.task_id, lease.attempt), text, no_retry)
        self._log_failure(lease, exc, text, no_retry)

    def _fail(self, conn: _Conn, key: tuple[str, int], text: str, no_retry: bool) -> None:
        conn.failures.append((key[0], key[1], text, no_retry))
        conn.nbytes += len(text.encode()) + _ITEM_BYTES
        st = self.stats
        st.failed += 1
        st.rejected += no_retry
        conn.wake.set()

    def _log_failure(self, lease: Lease, exc: BaseException, text: str, no_retry: bool) -> None:
        expected = isinstance(exc, Reject | TaskFailed)
        key = (lease.type, type(exc).__name__)
        short = _shorten(text, _LOG_ERROR_CHARS)
        if not expected and key not in self._warned and len(self._warned) < 1000:
            self._warned.add(key)  # the first of a kind with its traceback, the rest in the debug log
            if len(text) < _LIMITS.max_error_chars:
                exc_info: Any = exc
                stack = ""
            else:  # the traceback would print the whole message: its frames only
                exc_info = None
                stack = "\nTraceback (most recent call last):\n" + "".join(traceback.format_tb(exc.__traceback__))
            log.warning(
                "worker %s: handler of %r raised on task %s (reported as failed): %s%s",
                self.id,
                lease.type,
                lease.task_id,
                short,
                stack.rstrip(),
                exc_info=exc_info,
            )
            return
        log.debug(
            "worker %s: task %s/%d failed%s: %s",
            self.id,
            lease.task_id,
            lease.attempt,
            " for good" if no_retry else "",
            short,
        )

    def _revoke(self, key: tuple[str, int], conn: _Conn) -> None:
        run = self._running.get(key)
        if run is None or run.conn is not conn:
            return
        del self._running[key]
        run.live = False
        self.stats.revoked += 1
        run.ctx.cancelled.set()
        if run.task is not None:
            run.task.cancel()
        log.info("worker %s: the node revoked %s/%d: dropped", self.id, *key)

    def _void(self, conn: _Conn) -> None:
        """Cancel the running leases of ``conn``: they are void (nothing is sent for them)."""
        for key, run in list(self._running.items()):
            if run.conn is conn:
                del self._running[key]
                run.live = False
                self.stats.dropped += 1
                run.ctx.cancelled.set()
                if run.task is not None:
                    run.task.cancel()

    async def _shutdown(self) -> None:
        for run in list(self._running.values()):
            run.live = False
            run.ctx.cancelled.set()
            if run.task is not None:
                run.task.cancel()
        self._running.clear()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        log.info("worker %s stopped: %s", self.id, " ".join(f"{k}={v}" for k, v in self.stats.as_dict().items()))


if __name__ == "__main__":  # python -m node.rpc.worker: the `fedcoord worker` command
    from fedcoord.cmd_worker import main  # the command line lives in fedcoord/

    main()
