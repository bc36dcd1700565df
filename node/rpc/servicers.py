"""The gRPC servicers of a node: decode, call the domain, encode. Nothing else happens here.

Errors map to status codes (:func:`node.rpc.convert.status_of`): bad input ``INVALID_ARGUMENT``
naming the field, unknown ids ``NOT_FOUND``, stale leases and wrong states
``FAILED_PRECONDITION``, a full node ``RESOURCE_EXHAUSTED``, a node that is closing or has lost
its store ``UNAVAILABLE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc

from node.errors import FedcoordError, NotFoundError, OverloadedError, StaleLeaseError, ValidationError
from node.events import Subscription
from node.handoff import HandoffEndpoint
from node.model import Lease
from node.rpc import convert as cv
from node.runtime.node import LocalNode, lease_bytes
from protos.fedcoord.v1 import common_pb2 as cpb
from protos.fedcoord.v1 import handoff_pb2 as hpb
from protos.fedcoord.v1 import handoff_pb2_grpc as hpb_grpc
from protos.fedcoord.v1 import node_pb2 as npb
from protos.fedcoord.v1 import node_pb2_grpc as npb_grpc

__all__ = ["HandoffServicer", "NodeServicer", "ServiceLimits", "Undecodable"]

log = logging.getLogger("fedcoord.rpc")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ServiceLimits:
    """What the services take before they push back with ``RESOURCE_EXHAUSTED``."""

    max_active_tasks: int = 1_000_000  # tasks not finished yet on this node
    max_inflight_submit_bytes: int = 256 << 20  # submit requests being applied at once, in bytes
    max_inflight_submits: int = 1024  # submit calls being applied at once
    max_watch_queue: int = 100_000
    claim_wait_s: float = 5.0  # how long one stream claim waits before it asks again
    max_stream_credit: int = 100_000  # leases a worker stream may ask for at once
    max_reply_bytes: int = 4 << 20  # leases in one reply carry about this much at most (NodeServer: <= half the limit)


async def _abort(context: grpc.aio.ServicerContext, err: BaseException) -> NoReturn:
    code = err.code if isinstance(err, _Refusal) else cv.status_of(err)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("internal error in an RPC", exc_info=err)
        await context.abort(code, f"internal error: {type(err).__name__}")
    await context.abort(code, str(err))
    raise AssertionError("unreachable")  # context.abort raises


Unary = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[T]]


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A request whose bytes did not parse (the server's decoders hand it over instead of
    failing inside gRPC, which would answer UNKNOWN)."""

    message: str  # the request type
    reason: str

    def error(self) -> ValidationError:
        return ValidationError("request", f"not a valid {self.message}: {self.reason}")


def _rpc(fn: Unary[T]) -> Unary[T]:
    """Answer a domain error with its status code (and anything else with INTERNAL, logged)."""

    @functools.wraps(fn)
    async def call(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            if type(request) is Undecodable:
                raise request.error()
            return await fn(self, request, context)
        except (FedcoordError, _Refusal) as e:
            await _abort(context, e)
        except grpc.aio.AbortError:
            raise
        except Exception as e:  # noqa: BLE001 (a bug: INTERNAL, logged by _abort; never the text to the caller)
            await _abort(context, e)

    return call


class NodeServicer(npb_grpc.NodeServiceServicer):
    def __init__(self, node: LocalNode, limits: ServiceLimits | None = None):
        self.node = node
        self.limits = limits or ServiceLimits()
        self.draining = False
        self._inflight_bytes = 0
        self._inflight_submits = 0
        self.sessions: set[_WorkerSession] = set()  # worker streams attached
        self.watches: set[Subscription] = set()
        self.drained = asyncio.Event()  # set by start_draining
        self.sessions_closed = asyncio.Event()  # no session open (set while none is)
        self.sessions_closed.set()

    @property
    def streams(self) -> int:
        """Worker streams attached."""
        return len(self.sessions)

    def start_draining(self) -> None:
        """Take no new work: submits and new streams are refused, waiting claims return empty,
        streams get no new leases and end once their worker has reported on what it holds,
        watches and waits end (UNAVAILABLE for waits: ask again elsewhere or later)."""
        self.draining = True
        self.drained.set()
        with contextlib.suppress(FedcoordError):
            self.node.end_claim_waits()
        for session in list(self.sessions):
            session.wake()
        for sub in list(self.watches):
            sub.close()

    # ------------------------------------------------------------------ clients

    def _admit(self, n_tasks: int, n_bytes: int) -> None:
        if self.draining:
            raise _Draining()
        load = self.node.load()
        active = load.leased + load.ready + load.delayed + load.pending + load.handing_off
        lim = self.limits
        if active + n_tasks > lim.max_active_tasks:
            raise OverloadedError(
                f"node holds {active} unfinished tasks; {n_tasks} more would pass its limit of "
                f"{lim.max_active_tasks}: retry later"
            )
        if self._inflight_submits >= lim.max_inflight_submits:
            raise OverloadedError(
                f"{self._inflight_submits} submits are being applied (limit {lim.max_inflight_submits}): retry later"
            )
        if self._inflight_bytes and self._inflight_bytes + n_bytes > lim.max_inflight_submit_bytes:
            raise OverloadedError(
                f"{self._inflight_bytes} bytes of submits are being applied (limit "
                f"{lim.max_inflight_submit_bytes}): retry later"
            )

    @_rpc
    async def Submit(self, request: npb.SubmitRequest, context: grpc.aio.ServicerContext) -> npb.SubmitReply:
        n_bytes = request.ByteSize()
        self._admit(len(request.tasks), n_bytes)
        specs = []
        for i, m in enumerate(request.tasks):
            try:
                specs.append(cv.spec_from_pb(m))
            except ValidationError as e:
                raise e.at(i, "tasks") from None
        self._inflight_bytes += n_bytes
        self._inflight_submits += 1
        try:
            ids = await self.node.submit(specs)
        except ValidationError as e:
            raise _in_tasks(e) from None
        finally:
            self._inflight_bytes -= n_bytes
            self._inflight_submits -= 1
        return npb.SubmitReply(task_ids=ids)

    @_rpc
    async def Cancel(self, request: npb.TaskRef, context: grpc.aio.ServicerContext) -> npb.CancelReply:
        status = await self.node.cancel(_task_id(request.task_id))
        return npb.CancelReply(status=cv._STATUS_TO_PB[status])

    @_rpc
    async def Requeue(self, request: npb.TaskRef, context: grpc.aio.ServicerContext) -> npb.Ack:
        await self.node.requeue(_task_id(request.task_id))
        return npb.Ack()

    @_rpc
    async def GetTask(self, request: npb.TaskRef, context: grpc.aio.ServicerContext) -> cpb.Task:
        t = await self.node.get(_task_id(request.task_id))
        return cv.task_to_pb(t)

    @_rpc
    async def WaitTask(self, request: npb.WaitTaskRequest, context: grpc.aio.ServicerContext) -> cpb.Task:
        timeout = request.timeout_s if request.HasField("timeout_s") else None
        if timeout is not None and not timeout >= 0:
            raise ValidationError("timeout_s", f"must be >= 0, got {timeout}")
        wait = asyncio.ensure_future(self.node.wait(_task_id(request.task_id), timeout))
        drained = asyncio.ensure_future(self.drained.wait())
        try:
            await asyncio.wait((wait, drained), return_when=asyncio.FIRST_COMPLETED)
        finally:
            drained.cancel()
            if not wait.done():
                wait.cancel()
        if not wait.done() or wait.cancelled():
            raise _Draining()
        return cv.task_to_pb(wait.result())

    async def Watch(
        self, request: npb.WatchRequest | Undecodable, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[npb.EventBatch]:
        if isinstance(request, Undecodable):
            await _abort(context, request.error())
        max_queue = request.max_queue or 10_000
        if not 1 <= max_queue <= self.limits.max_watch_queue:
            await _abort(
                context, ValidationError("max_queue", f"{max_queue}", limit=f"1..{self.limits.max_watch_queue}")
            )
        if self.draining:
            await _abort(context, _Draining())
        try:
            sub = self.node.subscribe(max_queue=max_queue)
        except FedcoordError as e:
            await _abort(context, e)
        self.watches.add(sub)
        try:
            yield npb.EventBatch()  # an empty first batch: subscribed, every later event will come
            async for first in sub:
                batch = [first, *sub.drain(999)]
                if sub.dropped:  # it fell behind: events were lost, so say so rather than go on
                    break
                yield npb.EventBatch(events=[cv.event_to_pb(e) for e in batch])
        finally:
            self.watches.discard(sub)
            sub.close()
        if sub.dropped:
            await _abort(
                context,
                OverloadedError(f"the watcher fell {max_queue} events behind and lost {sub.dropped}: watch again"),
            )

    @_rpc
    async def Stats(self, request: npb.StatsRequest, context: grpc.aio.ServicerContext) -> npb.StatsReply:
        node = self.node
        stats = await node.stats()
        report = await node.report() if request.report else None
        handoffs = dict(node.handoff.stats) if node.handoff is not None else {}
        return cv.stats_to_pb(
            stats,
            load=node.load(),
            threshold=node.threshold(),
            handoffs=handoffs,
            report=report,
            history=request.history,
            privacy=node.privacy_status(),
        )

    # ------------------------------------------------------------------ the federation

    @_rpc
    async def Summary(self, request: npb.SummaryRequest, context: grpc.aio.ServicerContext) -> npb.SummaryReply:
        # A release refused (no window, budget, disabled, store down) is an answer, not an error.
        return cv.release_to_pb(await self.node.release_summary())

    @_rpc
    async def ApplyFederation(
        self, request: npb.ApplyFederationRequest, context: grpc.aio.ServicerContext
    ) -> npb.ApplyFederationReply:
        if not request.HasField("view"):
            raise ValidationError("view", "missing: the federation's view to apply")
        threshold = self.node.apply_view(cv.view_from_pb(request.view))
        return npb.ApplyFederationReply(threshold=threshold, policy=self.node.admission.cfg.policy)

    # ------------------------------------------------------------------ workers, unary

    @_rpc
    async def RegisterWorker(self, request: npb.WorkerSpec, context: grpc.aio.ServicerContext) -> npb.WorkerInfo:
        if self.draining:
            raise _Draining()
        try:
            info = await self.node.register_worker(cv.worker_spec_from_pb(request))
        except ValidationError as e:
            raise _in_worker_spec(e) from None
        return cv.worker_info_to_pb(info)

    @_rpc
    async def DeregisterWorker(
        self, request: npb.DeregisterWorkerRequest, context: grpc.aio.ServicerContext
    ) -> npb.DeregisterWorkerReply:
        await self.node.deregister_worker(_name("worker_id", request.worker_id))
        return npb.DeregisterWorkerReply()

    @_rpc
    async def Claim(self, request: npb.ClaimRequest, context: grpc.aio.ServicerContext) -> npb.ClaimReply:
        max_tasks = request.max_tasks or 1
        wait_s = request.wait_s
        if not 1 <= max_tasks <= 10_000:
            raise ValidationError("max_tasks", f"{max_tasks}", limit="1..10000")
        if not 0 <= wait_s <= 300:
            raise ValidationError("wait_s", f"{wait_s}", limit="0..300 seconds")
        if self.draining:
            return npb.ClaimReply()
        leases = await self.node.claim(
            _name("worker_id", request.worker_id), max_tasks, wait_s=wait_s, max_bytes=self.limits.max_reply_bytes
        )
        return npb.ClaimReply(leases=[cv.lease_to_pb(x) for x in leases])

    @_rpc
    async def Heartbeat(self, request: npb.HeartbeatRequest, context: grpc.aio.ServicerContext) -> npb.HeartbeatReply:
        wid = _name("worker_id", request.worker_id)
        reply = await self.node.heartbeat(wid)
        return cv.heartbeat_to_pb(reply, wid)

    @_rpc
    async def StartTask(self, request: cpb.LeaseRef, context: grpc.aio.ServicerContext) -> npb.Ack:
        await self.node.start_task(_ref(request))
        return npb.Ack()

    @_rpc
    async def Complete(self, request: npb.CompleteRequest, context: grpc.aio.ServicerContext) -> npb.Ack:
        await self.node.complete(_ref(request.lease), request.result)
        return npb.Ack()

    @_rpc
    async def Fail(self, request: npb.FailRequest, context: grpc.aio.ServicerContext) -> npb.Ack:
        await self.node.fail(_ref(request.lease), request.error, retry=not request.no_retry)
        return npb.Ack()

    # ------------------------------------------------------------------ the worker stream

    async def Work(
        self, request_iterator: AsyncIterator[npb.WorkerMessage | Undecodable], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[npb.NodeMessage]:
        try:
            if self.draining:
                raise _Draining()
            try:
                first = await anext(aiter(request_iterator))
            except StopAsyncIteration:
                return
            if isinstance(first, Undecodable):
                raise first.error()
            if not first.HasField("hello"):
                raise ValidationError("hello", "the first message of a worker stream must register the worker")
            try:
                info = await self.node.register_worker(cv.worker_spec_from_pb(first.hello))
            except ValidationError as e:
                raise _in_worker_spec(e, "hello.") from None
        except (FedcoordError, _Refusal) as e:
            await _abort(context, e)
        session = _WorkerSession(self, info.id, info.registered_ns)
        self.sessions.add(session)
        self.sessions_closed.clear()
        try:
            yield npb.NodeMessage(registered=cv.worker_info_to_pb(info))
            async for msg in session.run(first, request_iterator):
                yield msg
        finally:
            await session.close()
        if session.error is not None:
            await _abort(context, session.error)


class _Refusal(Exception):
    """Not the caller's mistake, not the domain's: the service says no (answered UNAVAILABLE or
    FAILED_PRECONDITION by status_of's fallbacks)."""

    code = grpc.StatusCode.UNAVAILABLE


class _Draining(_Refusal):
    def __str__(self) -> str:
        return "the node is draining (shutting down): go to another node or retry later"


def _in_tasks(e: ValidationError) -> ValidationError:
    """The domain calls a submit's batch ``specs``; the request's field is ``tasks``."""
    if e.index is not None and e.batch == "specs":
        return e.at(e.index, "tasks")
    if e.index is None and e.field == "specs":
        return ValidationError("tasks", e.detail, limit=e.limit)
    return e


def _in_worker_spec(e: ValidationError, prefix: str = "") -> ValidationError:
    """The domain calls a worker's id ``worker_id``; in a WorkerSpec it is ``id``."""
    name = "id" if e.field == "worker_id" else e.field
    return ValidationError(prefix + name, e.detail, limit=e.limit)


def _task_id(value: str) -> str:
    if not value:
        raise ValidationError("task_id", "must not be empty")
    return value


def _name(field: str, value: str) -> str:
    if not value:
        raise ValidationError(field, "must not be empty")
    return value


def _ref(m: cpb.LeaseRef) -> Lease:
    return cv.ref_from_pb(m)


def _report_ref(m: npb.Completion | npb.Failure | cpb.LeaseRef, worker_id: str, invalid: list[Any]) -> Lease | None:
    """The lease a worker stream reports on; one with bad input (a negative attempt) is refused
    alone, as a stale one is (added to ``invalid``), instead of ending the stream."""
    try:
        return cv.lease_ref(m.task_id, m.attempt, worker_id)
    except ValidationError as e:
        invalid.append((cv.lease_ref(m.task_id, 0, worker_id)._replace(attempt=m.attempt), e))
        return None


class _WorkerSession:
    """One worker stream: credit in, leases out; results, starts and heartbeats in, acks out.

    Three parts run at once: the reader applies what comes in (each message in one durable
    write), the claimer asks the node for as many leases as the worker has credit for (waiting
    for work when there is none), and the caller's loop writes out what both produced, merged
    into one message when several are waiting (up to ``max_reply_bytes``).

    Every lease granted is accounted for: ``unsent`` until its message is handed to gRPC, then
    ``outstanding`` until the worker reports on it (or it is revoked). When the session ends,
    unsent leases go back in line uncounted (the worker never saw them); outstanding ones go back
    as a failed attempt (it may have run them)."""

    def __init__(self, servicer: NodeServicer, worker_id: str, registered_ns: int):
        self.servicer = servicer
        self.node = servicer.node
        self.worker_id = worker_id
        self.registered_ns = registered_ns  # this session's incarnation of the worker
        self.credit = 0
        self.unsent: dict[tuple[str, int], Lease] = {}  # granted, not handed to gRPC yet
        self.outstanding: set[tuple[str, int]] = set()  # sent, not reported on or revoked yet
        self._claiming = False  # a claim is under way (its leases are not in unsent yet)
        self._max_bytes = servicer.limits.max_reply_bytes
        self._credit_changed = asyncio.Event()
        # (message, about how many bytes): merged into one message up to max_reply_bytes
        self._out: asyncio.Queue[tuple[npb.NodeMessage, int] | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.error: BaseException | None = None
        self._closed = False
        self._ended = False

    def wake(self) -> None:
        """Look again at credit and draining (the node started draining)."""
        self._credit_changed.set()

    def _send(self, msg: npb.NodeMessage, n_bytes: int = 64) -> None:
        self._out.put_nowait((msg, n_bytes))

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._out.put_nowait(None)

    def _drained(self) -> bool:
        """While the node drains, the stream ends once the worker has reported on every lease it
        was given (or they were revoked): then nothing goes back in line when the session closes."""
        if self.servicer.draining and not self._claiming and not self.unsent and not self.outstanding:
            self._end()
            return True
        return False

    async def run(
        self, first: npb.WorkerMessage, request_iterator: AsyncIterator[npb.WorkerMessage | Undecodable]
    ) -> AsyncIterator[npb.NodeMessage]:
        try:
            await self._apply(first)
        except FedcoordError as e:  # bad credit or results in the hello message: the stream ends with it
            self.error = e
            return
        self._tasks = [
            asyncio.create_task(self._read(request_iterator), name=f"stream-read-{self.worker_id}"),
            asyncio.create_task(self._claim(), name=f"stream-claim-{self.worker_id}"),
        ]
        out = self._out
        carry: tuple[npb.NodeMessage, int] | None = None
        while True:
            item = carry if carry is not None else await out.get()
            carry = None
            if item is None:
                return
            msg, size = item
            while not out.empty():  # merge what piled up into one message, up to the size limit
                more = out.get_nowait()
                if more is None or size + more[1] > self._max_bytes:
                    carry = more
                    if more is None:
                        self._ended = True
                    break
                msg.MergeFrom(more[0])
                size += more[1]
            for x in msg.leases:  # handed to gRPC now: the worker may report on them any moment
                key = (x.task_id, x.attempt)
                if self.unsent.pop(key, None) is not None:
                    self.outstanding.add(key)
            yield msg
            if carry is None and self._ended and out.empty():
                return

    async def _read(self, request_iterator: AsyncIterator[npb.WorkerMessage | Undecodable]) -> None:
        try:
            async for msg in request_iterator:
                if isinstance(msg, Undecodable):
                    raise msg.error()
                if msg.HasField("hello"):
                    raise ValidationError("hello", "a worker stream registers once, in its first message")
                await self._apply(msg)
        except FedcoordError as e:
            self.error = e
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError:
            pass  # the worker went away: the session ends
        except Exception as e:  # noqa: BLE001 (a bug: the stream ends with INTERNAL, logged by _abort)
            self.error = e
        finally:
            self._end()

    async def _apply(self, msg: npb.WorkerMessage) -> None:
        wid = self.worker_id
        if msg.credit:
            credit = msg.credit
            if credit < 0 or self.credit + credit > self.servicer.limits.max_stream_credit:
                raise ValidationError(
                    "credit", f"{credit}", limit=f"0..{self.servicer.limits.max_stream_credit} in all"
                )
            self.credit += credit
            self._credit_changed.set()
        if msg.started or msg.completions or msg.failures:
            invalid: list[tuple[Lease, FedcoordError]] = []
            completed = [(x, c.result) for c in msg.completions if (x := _report_ref(c, wid, invalid))]
            failed = [(x, f.error, not f.no_retry) for f in msg.failures if (x := _report_ref(f, wid, invalid))]
            started = [x for s in msg.started if (x := _report_ref(s, wid, invalid))]
            refused = [*invalid, *await self.node.finish_many(completed, failed, started)]
            bad = {(x.task_id, x.attempt) for x, _ in refused}
            gone = (StaleLeaseError, NotFoundError)  # refused because the lease is not the worker's any more
            still_held = {(x.task_id, x.attempt) for x, e in refused if not isinstance(e, gone)}
            for lease in (*(c[0] for c in completed), *(f[0] for f in failed)):
                key = (lease.task_id, lease.attempt)
                if key not in still_held:  # a result refused for its size, say: the lease is still the worker's
                    self.outstanding.discard(key)
            reply = npb.NodeMessage(
                acked=[
                    cpb.LeaseRef(task_id=x.task_id, attempt=x.attempt, worker_id=wid)
                    for x in (*(c[0] for c in completed), *(f[0] for f in failed))
                    if (x.task_id, x.attempt) not in bad
                ],
                rejected=[
                    npb.LeaseError(task_id=x.task_id, attempt=x.attempt, code=cv.status_of(e).name, message=str(e))
                    for x, e in refused
                ],
            )
            self._send(reply, 64 * (len(completed) + len(failed) + len(refused)))
        if msg.heartbeat:
            hb = await self.node.heartbeat(wid)
            self.outstanding.difference_update(hb.revoked)
            self._send(npb.NodeMessage(healthy=hb.healthy, revoked=cv.refs(hb.revoked, wid)), 64 * len(hb.revoked))
        if self.servicer.draining:
            self._drained()

    async def _claim(self) -> None:
        node = self.node
        wait_s = self.servicer.limits.claim_wait_s
        most = node.config.core.limits.max_batch  # what one claim may ask for (the credit may be more)
        try:
            while True:
                while self.credit <= 0 or self.servicer.draining:
                    if self.servicer.draining and self._drained():
                        return
                    self._credit_changed.clear()
                    await self._credit_changed.wait()
                self._claiming = True
                try:
                    leases = await node.claim(self.worker_id, min(self.credit, most), wait_s=wait_s)
                    self.credit -= len(leases)
                    self.unsent.update(((x.task_id, x.attempt), x) for x in leases)
                finally:
                    self._claiming = False
                # messages of at most about max_reply_bytes each (payloads and contexts may be large)
                chunk: list[npb.Lease] = []
                size = 0
                for x in leases:
                    n = lease_bytes(x)  # the estimate LocalNode.claim(max_bytes=) splits unary replies by
                    if chunk and size + n > self._max_bytes:
                        self._send(npb.NodeMessage(leases=chunk), size)
                        chunk, size = [], 0
                    chunk.append(cv.lease_to_pb(x))
                    size += n
                if chunk:
                    self._send(npb.NodeMessage(leases=chunk), size)
        except FedcoordError as e:
            self.error = e
            self._end()
        except Exception as e:  # noqa: BLE001 (a bug: the stream ends with INTERNAL, logged by _abort)
            self.error = e
            self._end()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("worker stream %s: a part of the session failed", self.worker_id)
        # The stream is the worker's session: when it ends, what the worker held goes back in
        # line now (as a failed attempt) instead of waiting for missed heartbeats; what it was
        # never sent goes back uncounted. Unless the worker registered again meanwhile (a new
        # stream): that incarnation is not ours to end.
        try:
            if self.unsent:
                await self.node.unlease(list(self.unsent.values()))
                self.unsent.clear()
            await self.node.deregister_worker(self.worker_id, registered_ns=self.registered_ns)
        except FedcoordError as e:
            log.debug("worker stream %s: closing: %s", self.worker_id, e)
        finally:
            self.servicer.sessions.discard(self)
            if not self.servicer.sessions:
                self.servicer.sessions_closed.set()


class HandoffServicer(hpb_grpc.HandoffServiceServicer):
    """Answers peers for the hand-off endpoint bound on this node (its hand-off agent)."""

    def __init__(
        self,
        endpoint: Callable[[], HandoffEndpoint | None],
        load: Callable[[], float] | None = None,
        *,
        draining: Callable[[], bool] = lambda: False,
    ):
        self._endpoint = endpoint
        self._load = load
        self._draining = draining

    def _ep(self) -> HandoffEndpoint:
        ep = self._endpoint()
        if ep is None:
            raise _NoHandoff()
        return ep

    @_rpc
    async def Offer(self, request: hpb.OfferRequest, context: grpc.aio.ServicerContext) -> hpb.OfferReply:
        offer = cv.offer_from_pb(request)
        if self._draining():  # a node shutting down takes no new work (transfers of accepted offers still land)
            return hpb.OfferReply(offer_id=offer.offer_id, reason="the node is draining (shutting down)")
        reply = await self._ep().on_offer(offer)
        return cv.offer_reply_to_pb(reply, self._load() if self._load is not None else None)

    @_rpc
    async def Transfer(self, request: hpb.TransferRequest, context: grpc.aio.ServicerContext) -> hpb.TransferReply:
        transfer = cv.transfer_from_pb(request)
        try:
            reply = await self._ep().on_transfer(transfer)
        except ValidationError as e:
            if e.index is None or e.batch != "records" or e.field not in _SPEC_FIELDS:
                raise
            raise ValidationError(f"spec.{e.field}", e.detail, limit=e.limit).at(e.index, "records") from None
        return cv.transfer_reply_to_pb(reply)

    @_rpc
    async def TaskStatus(
        self, request: hpb.TaskStatusRequest, context: grpc.aio.ServicerContext
    ) -> hpb.TaskStatusReply:
        query = cv.status_query_from_pb(request)
        try:
            reply = await self._ep().on_status(query)
        except ValidationError as e:
            if e.field != "asker":
                raise
            raise ValidationError("from_node", e.detail, limit=e.limit) from None  # the asker, on the wire
        return cv.status_reply_to_pb(reply)

    @_rpc
    async def ReportResult(self, request: hpb.ReportRequest, context: grpc.aio.ServicerContext) -> hpb.ReportReply:
        report = cv.report_from_pb(request)
        reply = await self._ep().on_report(report)
        return cv.report_reply_to_pb(reply)


_SPEC_FIELDS = frozenset(cpb.TaskSpec.DESCRIPTOR.fields_by_name)  # a record's spec's, named bare by the domain


class _NoHandoff(_Refusal):
    code = grpc.StatusCode.FAILED_PRECONDITION

    def __str__(self) -> str:
        return "hand-off is not enabled on this node (no peers configured)"
