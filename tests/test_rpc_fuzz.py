"""Bad input and faults over gRPC (issue 12): every RPC of NodeService and HandoffService fuzzed
with hypothesis against one real LocalNode (on the test Redis, hand-off enabled towards a real
peer node) behind one real NodeServer on a free port.

The node runs in an asyncio loop on a background thread; the tests call it with the sync gRPC
client, one RPC per example, the request sent as bytes (its serialized message plus well-formed
junk: unknown fields, wrong wire types, raw 64-bit values; see tests/rpc_strategies.py). Only
OK, INVALID_ARGUMENT naming a field of the request, NOT_FOUND, FAILED_PRECONDITION and
RESOURCE_EXHAUSTED may come back (DEADLINE_EXCEEDED for WaitTask, which has a timeout). After
each test the node must still serve: health SERVING, a submit/claim/complete round works, and
``Core.validate()`` passes. Fuzzed ids hit real tasks, current and stale leases, known workers
and the handed-off tasks the peer may report on (the pools are refreshed before each test).

Then oversized messages, a submit flood far past the active-task limit (RESOURCE_EXHAUSTED
backpressure, bounded memory, nothing acknowledged lost) and the in-flight bytes limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from node import CoreConfig, LocalNode, MemoryStore, NodeConfig, TaskSpec, WorkerSpec
from node.handoff import MemoryTransport
from node.rpc.server import NodeServer, ServerOptions
from node.rpc.servicers import ServiceLimits
from node.runtime.handoff import HandoffConfig
from node.store.codec import WriteBatch
from protos.fedcoord.v1 import common_pb2 as cpb
from protos.fedcoord.v1 import federation_pb2 as fpb
from protos.fedcoord.v1 import handoff_pb2 as hpb
from protos.fedcoord.v1 import node_pb2 as npb
from protos.fedcoord.v1 import node_pb2_grpc as npb_grpc
from tests import rpc_strategies as rs
from tests.conftest import RedisServer, async_wait_until, wait_until
from tests.rpc_strategies import Case, short

T = TypeVar("T")
Code = grpc.StatusCode
OK, INVALID, NOT_FOUND = Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND
PRECONDITION, EXHAUSTED, DEADLINE = Code.FAILED_PRECONDITION, Code.RESOURCE_EXHAUSTED, Code.DEADLINE_EXCEEDED
ALLOWED = frozenset({OK, INVALID, NOT_FOUND, PRECONDITION, EXHAUSTED})
LEASE_ERROR_CODES = frozenset({INVALID.name, NOT_FOUND.name, PRECONDITION.name})
NODE, PEER = "fz", "fz-peer"
WORKER = "fw"  # the fuzz's known worker: leases of it are current, stale or made up
FUZZ = settings(
    max_examples=1000,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
STREAM_FUZZ = settings(FUZZ, max_examples=1000)
CALL_TIMEOUT_S = 10.0  # no RPC here may take that long: one that does hangs

# ---------------------------------------------------------------------------------- checks

_PATH = re.compile(r"^[a-z_]+(?:\[\d+\])?(?:\.[a-z_]+(?:\[\d+\])?)*(?=: )")


# A request that is itself a lease names its fields as the lease's (StartTask's LeaseRef).
_ROOT_ALIASES = {cpb.LeaseRef.DESCRIPTOR.full_name: "lease"}


def field_path(details: str, d: Any) -> str | None:
    """The path of a field of the request that INVALID_ARGUMENT details start with
    (``tasks[3].priority: ...``), or None when they name none."""
    m = _PATH.match(details)
    if m is None:
        return None
    parts = m.group(0).split(".")
    if parts[0] == _ROOT_ALIASES.get(d.full_name) and len(parts) > 1:
        parts = parts[1:]
    current: Descriptor | None = d
    for part in parts:
        f = None if current is None else current.fields_by_name.get(re.sub(r"\[\d+\]$", "", part))
        if f is None:
            return None
        mt = f.message_type
        current = None if mt is None or mt.GetOptions().map_entry else mt
    return m.group(0)


def names_a_field(details: str, d: Any) -> bool:
    return field_path(details, d) is not None


# ---------------------------------------------------------------------------------- the node


class LoopThread:
    """An asyncio loop running on a background thread: the node and its servers live there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


def node_config(*, peers: tuple[str, ...] = ()) -> NodeConfig:
    return NodeConfig(
        core=CoreConfig(heartbeat_timeout_s=300.0),  # leases stay current for the whole module
        handoff=HandoffConfig(peers=peers, auto=False, check_s=0.05, retry_s=0.02, retry_max_s=0.5),
        seed=12,
    )


def _methods() -> dict[str, tuple[str, type[Any], type[Any]]]:
    """Unary method name -> (path, request class, reply class), from the generated descriptors."""
    from google.protobuf import message_factory  # noqa: PLC0415

    out = {}
    for module in (npb, hpb):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                if not (m.client_streaming or m.server_streaming):
                    out[m.name] = (
                        f"/{service.full_name}/{m.name}",
                        message_factory.GetMessageClass(m.input_type),
                        message_factory.GetMessageClass(m.output_type),
                    )
    return out


METHODS = _methods()


class Served:
    """The node under test, its peer, its server, and clients of it."""

    def __init__(
        self,
        loop: LoopThread,
        node: LocalNode,
        server: NodeServer,
        channel: grpc.Channel,
        *,
        stack: contextlib.AsyncExitStack,
        redis_url: str,
    ):
        self.loop, self.node, self.server, self.channel = loop, node, server, channel
        self.stack, self.redis_url = stack, redis_url
        self.stub = npb_grpc.NodeServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)
        self.raw = {  # requests go out as bytes, as given
            name: channel.unary_unary(path, request_serializer=None, response_deserializer=reply.FromString)
            for name, (path, _, reply) in METHODS.items()
        }

    def __repr__(self) -> str:
        return f"Served({self.node.node_id} on {self.server.address})"

    def run(self, fn: Callable[[], Awaitable[T]], timeout_s: float = 60.0) -> T:
        async def call() -> T:
            return await fn()

        return self.loop.run(call(), timeout_s)

    def unary(
        self, method: str, request: Any, junk: bytes = b"", *, timeout_s: float = CALL_TIMEOUT_S, deadline: bool = False
    ) -> tuple[grpc.StatusCode, str]:
        """Send ``request`` (+ ``junk``) to ``method``; check the answer is an allowed one."""
        _, req_cls, _ = METHODS[method]
        data = request.SerializeToString() + junk
        try:
            self.raw[method](data, timeout=timeout_s)
            code, details = OK, ""
        except grpc.RpcError as e:
            code, details = e.code(), e.details() or ""
        allowed = ALLOWED | {DEADLINE} if deadline else ALLOWED
        if code not in allowed or (code is INVALID and not names_a_field(details, req_cls.DESCRIPTOR)):
            seen = req_cls.FromString(data)  # what the server decoded
            what = "answered" if code is not INVALID else "names no field of the request in"
            raise AssertionError(f"{method} {what} {code.name}: {short(details)} to {short(seen)}")
        return code, details

    def unary_case(self, method: str, case: Case) -> tuple[grpc.StatusCode, str]:
        return self.unary(method, case.message, case.junk)

    def check_core(self) -> None:
        async def validate() -> None:
            self.node._check().validate()  # InvariantError lists what is broken

        self.run(validate)

    def check_healthy(self) -> None:
        """The node still serves: health, a normal round over gRPC, a consistent core."""
        for service in ("", "fedcoord.v1.NodeService", "fedcoord.v1.HandoffService"):
            reply = self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT_S)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        stub, t = self.stub, CALL_TIMEOUT_S
        stub.RegisterWorker(npb.WorkerSpec(id="probe", concurrency=1), timeout=t)
        (tid,) = stub.Submit(npb.SubmitRequest(tasks=[cpb.TaskSpec(type="probe")]), timeout=t).task_ids
        (lease,) = stub.Claim(npb.ClaimRequest(worker_id="probe", max_tasks=1, wait_s=1.0), timeout=t).leases
        ref = cpb.LeaseRef(task_id=lease.task_id, attempt=lease.attempt, worker_id="probe")
        stub.StartTask(ref, timeout=t)
        stub.Complete(npb.CompleteRequest(lease=ref, result=b"ok"), timeout=t)
        assert stub.GetTask(npb.TaskRef(task_id=lease.task_id), timeout=t).status == cpb.TASK_STATUS_COMPLETED
        if lease.task_id != tid:  # another task was first in line: ours goes
            stub.Cancel(npb.TaskRef(task_id=tid), timeout=t)
        stub.DeregisterWorker(npb.DeregisterWorkerRequest(worker_id="probe"), timeout=t)
        assert self.node.state.value == "serving"
        self.check_core()

    def refresh(self) -> None:
        """Real ids and leases for the next test: the known worker registered anew (what it held
        goes back in line), fresh tasks, current leases, stale ones (completed, failed, retried),
        a dead-lettered task (requeue takes it), a cancelled one."""

        async def refresh() -> None:
            node, k = self.node, rs.KNOWN
            # Workers an earlier fuzz registered go (they would slow every offer and stats call).
            await asyncio.gather(*(node.deregister_worker(w) for w in list(node._core.workers) if w != WORKER))
            await node.register_worker(WorkerSpec(WORKER, concurrency=1000))
            await node.register_worker(WorkerSpec("fw-gone"))
            await node.deregister_worker("fw-gone")
            ids = await node.submit([TaskSpec("seed", payload=b"p", priority="critical") for _ in range(12)])
            leases = await node.claim(WORKER, 8)
            await node.complete(leases[0], b"done")
            await node.complete(leases[1], b"done")
            await node.fail(leases[2], "broken", retry=False)
            await node.fail(leases[3], "again")
            queued = [tid for tid in ids if (t := node._core.tasks.get(tid)) is not None and t.assigned_worker is None]
            await node.cancel(queued[0])
            k.leases = [(x.task_id, x.attempt, x.worker_id) for x in leases[4:]]
            k.stale = [(x.task_id, x.attempt, x.worker_id) for x in leases[:4]]
            k.stale += [(x.task_id, x.attempt, "fw-gone") for x in leases[4:]]
            k.task_ids = sorted({*ids, *(x.task_id for x in leases)})
            k.workers = [WORKER, "fw-gone", "probe"]
            k.nodes = [NODE, PEER]

        self.run(refresh)


@pytest.fixture(scope="module")
def served(redis_server: RedisServer) -> Iterator[Served]:
    if not redis_server.alive() or not redis_server.ping():
        redis_server.restart()
    c = redis_server.client()
    c.flushall()
    c.close()
    loop = LoopThread()
    url = redis_server.url

    async def start() -> Served:
        stack = contextlib.AsyncExitStack()
        transport = MemoryTransport()
        peer = await stack.enter_async_context(LocalNode.open(PEER, url, config=node_config(), transport=transport))
        await peer.register_worker(WorkerSpec("pw", concurrency=100))
        node = await stack.enter_async_context(
            LocalNode.open(NODE, url, config=node_config(peers=(PEER,)), transport=transport)
        )
        # Tasks handed to the peer: its reports on them are real ones.
        await node.submit([TaskSpec("ho", payload=b"h") for _ in range(6)])
        assert node.handoff is not None
        res = await node.handoff.offload(PEER, 6)
        assert len(res.handed_off) == 6, res
        rs.KNOWN.handed_off = sorted(res.handed_off)
        server = NodeServer(node)
        await server.start()
        stack.push_async_callback(server.stop)
        channel = grpc.insecure_channel(server.address)
        stack.callback(channel.close)
        return Served(loop, node, server, channel, stack=stack, redis_url=url)

    s = loop.run(start())
    try:
        yield s
    finally:
        loop.run(s.stack.aclose())
        loop.close()


@pytest.fixture
def fuzz(served: Served) -> Iterator[Served]:
    served.refresh()
    yield served
    served.check_healthy()


def with_junk(strategy: st.SearchStrategy[Any], cls: type[Any]) -> st.SearchStrategy[Case]:
    junk = rs.junk_for(cls)

    @st.composite
    def cases(draw: st.DrawFn) -> Case:
        return Case(draw(strategy), draw(junk))

    return cases()


def _record(**kw: Any) -> hpb.HandoffRecord:
    return hpb.HandoffRecord(task_id="r-example", origin_node=PEER, **kw)


# ---------------------------------------------------------------------------------- NodeService, unary


@FUZZ
@given(case=with_junk(rs.submit_requests, npb.SubmitRequest))
@example(case=Case(npb.SubmitRequest(tasks=rs.MANY_SPECS)))  # was named "specs", not "tasks"
def test_submit(fuzz: Served, case: Case) -> None:
    fuzz.unary_case("Submit", case)


@FUZZ
@given(case=with_junk(rs.worker_specs, npb.WorkerSpec))
@example(case=Case(npb.WorkerSpec()))  # was named "worker_id", not "id"
def test_register_worker(fuzz: Served, case: Case) -> None:
    fuzz.unary_case("RegisterWorker", case)


@FUZZ
@given(case=with_junk(rs.deregister_requests, npb.DeregisterWorkerRequest))
def test_deregister_worker(fuzz: Served, case: Case) -> None:
    fuzz.unary_case("DeregisterWorker", case)


@FUZZ
@given(case=with_junk(rs.claim_requests, npb.ClaimRequest))
def test_claim(fuzz: Served, case: Case) -> None:
    fuzz.unary_case("Claim", case)


@FUZZ
@given(case=with_junk(rs.heartbeat_requests, npb.HeartbeatRequest))
def test_heartbeat(fuzz: Served, case: Case) -> None:
    fuzz.unary_case("Heartbeat", case)


@FUZZ
@given(case=with_junk(rs.lease_refs, cpb.LeaseRef))
def test_start_task(fuzz: Served, case: Case) -> None:
    fuzz.unary_case("StartTask", case)


@FUZZ
@given(case=with_junk(rs.complete_requests, npb.CompleteRequest))
def test_complete(fuzz: Served, case: Case) -> None:
    fuzz.unary_case("Complete", case)


@FUZZ
@given(case=with_junk(rs.fail_requests, npb.FailRequest))
def test_fail(fuzz: Served, case: Case) -> None:
    fuzz.unary_case("Fail", case)


@FUZZ
@given(case=with_junk(rs.task_refs, npb.TaskRef))
def test_cancel(fuzz: Served, case: Case) -> None:
    fuzz.unary_case("Cancel", case)


@FUZZ
@given(case=with_junk(rs.task_refs, npb.TaskRef))
def test_requeue(fuzz: Served, case: Case) -> None:
    fuzz.unary_case("Requeue", case)


@FUZZ
@given(case=with_junk(rs.task_refs, npb.TaskRef))
def test_get_task(fuzz: Served, case: Case) -> None:
    fuzz.unary_case("GetTask", case)


@FUZZ
@given(case=with_junk(rs.wait_requests, npb.WaitTaskRequest))
def test_wait_task(fuzz: Served, case: Case) -> None:
    timeout = npb.WaitTaskRequest.FromString(case.message.SerializeToString() + case.junk).timeout_s
    # A valid long timeout waits for real: the client's deadline ends the call.
    fuzz.unary("WaitTask", case.message, case.junk, timeout_s=0.05 if timeout > 1 else CALL_TIMEOUT_S, deadline=True)


@FUZZ
@given(case=with_junk(rs.stats_requests, npb.StatsRequest))
def test_stats(fuzz: Served, case: Case) -> None:
    fuzz.unary_case("Stats", case)


@FUZZ
@given(case=with_junk(rs.summary_requests, npb.SummaryRequest))
def test_summary(fuzz: Served, case: Case) -> None:
    code, _ = fuzz.unary_case("Summary", case)
    assert code is OK  # a release refused is an answer (its status says why), never an error


@FUZZ
@given(case=with_junk(rs.apply_federation_requests, npb.ApplyFederationRequest))
@example(case=Case(npb.ApplyFederationRequest(view=fpb.GlobalView(window_s=20.0, occupied=fpb.Estimate(sd=math.nan)))))
@example(case=Case(npb.ApplyFederationRequest(view=fpb.GlobalView(window_s=20.0, participants=["a b"]))))
def test_apply_federation(fuzz: Served, case: Case) -> None:
    before = fuzz.node.admission.view
    code, _ = fuzz.unary_case("ApplyFederation", case)
    if code is not OK:
        assert fuzz.node.admission.view is before  # a view refused changes nothing


# ---------------------------------------------------------------------------------- HandoffService


@FUZZ
@given(case=with_junk(rs.offer_requests, hpb.OfferRequest))
def test_offer(fuzz: Served, case: Case) -> None:
    fuzz.unary_case("Offer", case)


@FUZZ
@given(case=with_junk(rs.transfer_requests, hpb.TransferRequest))
@example(  # was named "priority", not "records[0].spec.priority"
    case=Case(hpb.TransferRequest(from_node=PEER, records=[_record(spec=cpb.TaskSpec(type="t", priority=-1))]))  # type: ignore[arg-type]
)
@example(  # was named "records[0].type", not "records[0].spec.type"
    case=Case(hpb.TransferRequest(from_node=PEER, records=[_record(spec=cpb.TaskSpec(type="not a name"))]))
)
def test_transfer(fuzz: Served, case: Case) -> None:
    fuzz.unary_case("Transfer", case)


@FUZZ
@given(case=with_junk(rs.status_requests, hpb.TaskStatusRequest))
@example(case=Case(hpb.TaskStatusRequest(task_ids=["t"])))  # was named "asker", not "from_node"
def test_task_status(fuzz: Served, case: Case) -> None:
    fuzz.unary_case("TaskStatus", case)


@FUZZ
@given(case=with_junk(rs.report_requests, hpb.ReportRequest))
def test_report_result(fuzz: Served, case: Case) -> None:
    fuzz.unary_case("ReportResult", case)


def test_every_unary_rpc_is_fuzzed() -> None:
    tested = {name for name, fn in globals().items() if name.startswith("test_") and hasattr(fn, "hypothesis")}
    snake = {re.sub(r"(?<!^)([A-Z])", r"_\1", m).lower() for m in METHODS}
    assert {f"test_{m}" for m in snake} <= tested


# ---------------------------------------------------------------------------------- streams


HEARTBEAT = npb.WorkerMessage(heartbeat=True)


@STREAM_FUZZ
@given(case=rs.work_sequences.map(Case))
@example(case=Case([npb.WorkerMessage(hello=npb.WorkerSpec(id="w-neg"), credit=-1)]))  # was UNKNOWN (uncaught)
@example(case=Case([npb.WorkerMessage(hello=npb.WorkerSpec(id="w-big"), credit=100_000)]))  # was "max_tasks"
@example(  # ended the stream with "lease.attempt": now refused alone
    case=Case([npb.WorkerMessage(hello=npb.WorkerSpec(id="w-att"), started=[cpb.LeaseRef(task_id="t", attempt=-1)])])
)
@example(
    case=Case([npb.WorkerMessage(hello=npb.WorkerSpec(id="w-twice")), npb.WorkerMessage(hello=npb.WorkerSpec(id="x"))])
)
def test_work_stream(fuzz: Served, case: Case) -> None:
    """A worker stream gets any sequence of messages, then a heartbeat, then the worker hangs up:
    either the stream answers the heartbeat (it stayed usable) and ends OK, or it ends with an
    allowed code; every refused result says why with one of the lease error codes."""
    replies: list[npb.NodeMessage] = []
    code, details = OK, ""
    try:
        replies.extend(fuzz.stub.Work(iter([*case.message, HEARTBEAT]), timeout=CALL_TIMEOUT_S))
    except grpc.RpcError as e:
        code, details = e.code(), e.details() or ""
    assert code in ALLOWED, f"Work ended with {code.name}: {short(details)}"
    if code is INVALID:
        assert names_a_field(details, npb.WorkerMessage.DESCRIPTOR), details
    if code is OK:
        assert replies and replies[0].HasField("registered"), replies[:1]
        assert any(r.HasField("healthy") for r in replies), "the heartbeat got no answer"
    for r in replies:
        for rej in r.rejected:
            assert rej.code in LEASE_ERROR_CODES, rej


@STREAM_FUZZ
@given(request=rs.watch_requests)
def test_watch(fuzz: Served, request: npb.WatchRequest) -> None:
    """A watch is refused with INVALID_ARGUMENT naming max_queue, or it delivers events."""
    hub = fuzz.node._hub
    wait_until(lambda: not hub, what="earlier watches to go")
    call = fuzz.stub.Watch(request, timeout=CALL_TIMEOUT_S)
    try:
        wait_until(lambda: call.done() or hub, what="the watch to subscribe")
        if call.done():
            code = call.code()
            assert code is INVALID, f"Watch ended with {code.name}: {call.details()}"
            assert names_a_field(call.details(), npb.WatchRequest.DESCRIPTOR), call.details()
            return
        (tid,) = fuzz.stub.Submit(
            npb.SubmitRequest(tasks=[cpb.TaskSpec(type="watched")]), timeout=CALL_TIMEOUT_S
        ).task_ids
        for batch in call:
            if any(e.task_id == tid for e in batch.events):
                break
        fuzz.stub.Cancel(npb.TaskRef(task_id=tid), timeout=CALL_TIMEOUT_S)
    finally:
        call.cancel()


# ---------------------------------------------------------------------------------- undecodable


UNDECODABLE = (
    b"\xff\xff\xff",  # a truncated varint key
    b"\x0a\x05ab",  # field 1, length 5, two bytes follow
    b"\x0a\x02\xc3\x28",  # field 1 as a string with invalid UTF-8
)


def undecodable(method: str) -> list[bytes]:
    """The bytes of UNDECODABLE that the method's request type cannot parse."""
    out = []
    for data in UNDECODABLE:
        try:
            METHODS[method][1].FromString(data)
        except DecodeError:
            out.append(data)
    assert out, method
    return out


def test_undecodable_requests_are_invalid_arguments(served: Served) -> None:
    wrong = []
    for method in METHODS:
        for data in undecodable(method):
            with pytest.raises(grpc.RpcError) as e:
                served.raw[method](data, timeout=CALL_TIMEOUT_S)
            if e.value.code() is not INVALID:
                wrong.append(f"{method}: {e.value.code().name} for {data!r}")
    assert not wrong, wrong


def test_undecodable_requests_leave_the_node_serving(served: Served) -> None:
    for method in METHODS:
        for data in undecodable(method):
            with pytest.raises(grpc.RpcError) as e:
                served.raw[method](data, timeout=CALL_TIMEOUT_S)
            assert e.value.code() is INVALID, f"{method}: {e.value.code().name} for {data!r}"
    served.check_healthy()


# ---------------------------------------------------------------------------------- oversized


def test_oversized_messages_are_refused_and_the_node_keeps_serving(served: Served) -> None:
    async def start_small() -> NodeServer:
        server = NodeServer(served.node, ServerOptions(max_message_bytes=1 << 20))
        await server.start()
        return server

    small = served.run(start_small)
    try:
        with grpc.insecure_channel(small.address) as channel:
            stub = npb_grpc.NodeServiceStub(channel)
            big = npb.SubmitRequest(tasks=[cpb.TaskSpec(type="big", payload=b"x" * (600 << 10)) for _ in range(2)])
            with pytest.raises(grpc.RpcError) as e:
                stub.Submit(big, timeout=CALL_TIMEOUT_S)
            assert e.value.code() is EXHAUSTED, e.value
            many = npb.SubmitRequest(tasks=[cpb.TaskSpec(type="many", payload=b"x" * 100)] * 20_000)
            with pytest.raises(grpc.RpcError) as e:
                stub.Submit(many, timeout=CALL_TIMEOUT_S)
            assert e.value.code() is EXHAUSTED, e.value
            (tid,) = stub.Submit(npb.SubmitRequest(tasks=[cpb.TaskSpec(type="small")]), timeout=CALL_TIMEOUT_S).task_ids
            assert stub.GetTask(npb.TaskRef(task_id=tid), timeout=CALL_TIMEOUT_S).id == tid
        # Past the default limit (16 MiB) of the main server too.
        with pytest.raises(grpc.RpcError) as e:
            served.stub.Submit(
                npb.SubmitRequest(tasks=[cpb.TaskSpec(type="big", payload=b"x" * (1 << 20))] * 17), timeout=30
            )
        assert e.value.code() is EXHAUSTED, e.value
    finally:
        served.run(small.stop)
    served.check_healthy()


def test_a_claim_too_large_for_one_reply_loses_no_lease(served: Served) -> None:
    stub, t = served.stub, CALL_TIMEOUT_S
    spec = cpb.TaskSpec(type="big", payload=b"x" * (1 << 20), required_capabilities=["big-only"])
    ids = [tid for _ in range(2) for tid in stub.Submit(npb.SubmitRequest(tasks=[spec] * 10), timeout=t).task_ids]
    stub.RegisterWorker(npb.WorkerSpec(id="big", capabilities=["big-only"], concurrency=10_000), timeout=t)
    got: list[str] = []
    try:
        # 20 MiB of leases, a few MiB a reply: the rest are held for the next claims (small tasks
        # other tests left queued may come first: the worker can run those too)
        for _ in range(500):
            leases = stub.Claim(npb.ClaimRequest(worker_id="big", max_tasks=20), timeout=t).leases
            if not leases or set(ids) <= {*got, *(x.task_id for x in leases)}:
                got += [x.task_id for x in leases]
                break
            got += [x.task_id for x in leases]
    finally:
        stub.DeregisterWorker(npb.DeregisterWorkerRequest(worker_id="big"), timeout=t)
        for tid in ids:
            stub.Cancel(npb.TaskRef(task_id=tid), timeout=t)
    assert set(ids) <= set(got)  # every big lease arrived (the worker may also take small tasks left queued)


# ---------------------------------------------------------------------------------- flood


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@dataclass
class Flood:
    acked: list[str] = field(default_factory=list)
    refused: int = 0
    other: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def submitter(stub: Any, flood: Flood, rounds: int, batch: int, payload: bytes) -> None:
    request = npb.SubmitRequest(tasks=[cpb.TaskSpec(type="flood", payload=payload)] * batch)
    for _ in range(rounds):
        try:
            ids = stub.Submit(request, timeout=30).task_ids
        except grpc.RpcError as e:
            with flood.lock:
                if e.code() is EXHAUSTED:
                    flood.refused += 1
                else:
                    flood.other.append(f"{e.code().name}: {e.details()}")
            continue
        with flood.lock:
            flood.acked.extend(ids)


def test_submit_flood_gets_backpressure_with_bounded_memory_and_loses_nothing(served: Served) -> None:
    """16 submitters send 24,000 tasks at a node that holds 2,000 at most while a worker drains
    it: past the limit they get RESOURCE_EXHAUSTED, the node never holds more than the limit,
    memory stays bounded, and every task acknowledged is there afterwards."""
    limit, batch = 2_000, 50
    max_active = 0

    stack = contextlib.AsyncExitStack()

    async def start() -> tuple[LocalNode, NodeServer]:
        node = await stack.enter_async_context(LocalNode.open("fz-flood", served.redis_url, config=node_config()))

        def track(out: Any, b: WriteBatch, now: int) -> None:
            nonlocal max_active
            x = node.load()
            max_active = max(max_active, x.leased + x.ready + x.delayed + x.pending + x.handing_off)

        node._committer.add_hook("fuzz-max-active", track)
        server = NodeServer(node, ServerOptions(limits=ServiceLimits(max_active_tasks=limit)))
        await server.start()
        stack.push_async_callback(server.stop)
        return node, server

    node, server = served.run(start)
    flood = Flood()
    stop = threading.Event()
    consumed = 0

    def consumer(stub: Any) -> None:
        nonlocal consumed
        stub.RegisterWorker(npb.WorkerSpec(id="drain", concurrency=200), timeout=CALL_TIMEOUT_S)
        while not stop.is_set():
            reply = stub.Claim(npb.ClaimRequest(worker_id="drain", max_tasks=200, wait_s=0.01), timeout=CALL_TIMEOUT_S)
            for x in reply.leases:
                ref = cpb.LeaseRef(task_id=x.task_id, attempt=x.attempt, worker_id="drain")
                stub.Complete(npb.CompleteRequest(lease=ref, result=b"r"), timeout=CALL_TIMEOUT_S)
                consumed += 1

    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = npb_grpc.NodeServiceStub(channel)
            rss0 = rss_bytes()
            t0 = time.monotonic()
            with ThreadPoolExecutor(17) as pool:
                drain = pool.submit(consumer, stub)
                jobs = [pool.submit(submitter, stub, flood, 30, batch, b"p" * 200) for _ in range(16)]
                for j in jobs:
                    j.result()
                stop.set()
                drain.result()
            elapsed = time.monotonic() - t0
            growth = rss_bytes() - rss0
            assert not flood.other, flood.other[:5]
            assert flood.refused > 0, "no RESOURCE_EXHAUSTED although the flood is far past the limit"
            assert max_active <= limit + batch, max_active
            assert growth < 300 << 20, f"RSS grew by {growth >> 20} MB"
            assert len(set(flood.acked)) == len(flood.acked)
            with ThreadPoolExecutor(8) as pool:
                found = list(
                    pool.map(lambda tid: stub.GetTask(npb.TaskRef(task_id=tid), timeout=CALL_TIMEOUT_S).id, flood.acked)
                )
            assert found == flood.acked  # every acknowledged task is there (GetTask raises NOT_FOUND else)
            print(
                f"flood: {len(flood.acked)} acked, {flood.refused} submits refused, {consumed} consumed, "
                f"max active {max_active}, RSS +{growth >> 20} MB, {elapsed:.1f} s"
            )

        async def validate() -> None:
            node._check().validate()

        served.run(validate)
    finally:
        served.run(stack.aclose)


class GatedStore(MemoryStore):
    """A MemoryStore whose writes wait for a gate: holds submits in flight."""

    def __init__(self, node_id: str):
        super().__init__(node_id)
        self.gate = asyncio.Event()
        self.gate.set()

    async def write(self, batch: WriteBatch) -> None:
        await self.gate.wait()
        await super().write(batch)


def test_large_submits_hit_the_in_flight_bytes_limit(served: Served) -> None:
    """While one large submit is being applied, others that would pass the in-flight bytes limit
    are refused at once (RESOURCE_EXHAUSTED) instead of piling up in memory; once it is durable,
    the next one goes in."""
    store = GatedStore("fz-bytes")
    limits = ServiceLimits(max_inflight_submit_bytes=2 << 20)
    stack = contextlib.AsyncExitStack()

    async def start() -> tuple[LocalNode, NodeServer]:
        node = await stack.enter_async_context(LocalNode.open("fz-bytes", store=store, config=node_config()))
        server = NodeServer(node, ServerOptions(limits=limits))
        await server.start()
        stack.push_async_callback(server.stop)
        return node, server

    node, server = served.run(start)
    servicer = server.servicer
    large = npb.SubmitRequest(tasks=[cpb.TaskSpec(type="large", payload=b"x" * (750 << 10))] * 2)  # 1.5 MB
    flood = Flood()
    try:
        with grpc.insecure_channel(server.address) as channel, ThreadPoolExecutor(8) as pool:
            stub = npb_grpc.NodeServiceStub(channel)

            async def close_gate() -> None:
                store.gate.clear()

            served.run(close_gate)
            first = pool.submit(submitter, stub, flood, 1, 2, b"x" * (750 << 10))
            wait_until(lambda: servicer._inflight_bytes > 0, what="the first large submit to be in flight")
            others = [pool.submit(submitter, stub, flood, 5, 2, b"x" * (750 << 10)) for _ in range(6)]
            for j in others:
                j.result()
            assert flood.refused == 30 and not flood.acked, (flood.refused, flood.acked)
            assert servicer._inflight_bytes == large.ByteSize()  # the first one alone

            async def open_gate() -> None:
                store.gate.set()

            served.run(open_gate)
            first.result()
            assert len(flood.acked) == 2 and servicer._inflight_bytes == 0
            submitter(stub, flood, 1, 2, b"x" * (750 << 10))
            assert len(flood.acked) == 4, flood
            assert not flood.other, flood.other

        async def validate() -> None:
            node._check().validate()
            await async_wait_until(lambda: not node._committer.busy, what="the node to be idle")

        served.run(validate)
    finally:
        served.run(stack.aclose)


# ---------------------------------------------------------------------------------- tokens


def test_every_rpc_with_any_token_gets_unauthenticated_permission_denied_or_its_answer(served: Served) -> None:
    """The same node behind a server that checks tokens: a missing or unknown token gets
    UNAUTHENTICATED, a token whose role may not call the method PERMISSION_DENIED, and a
    token that may gets the method's own answer (one of the allowed codes)."""
    from node.rpc.auth import METHOD_ROLES, AuthInterceptor, Role, Tokens  # noqa: PLC0415

    tokens = Tokens.generate()
    role_token = {role: tokens.by_role[role][0] for role in Role}

    async def start() -> NodeServer:
        server = NodeServer(served.node, ServerOptions(interceptors=(AuthInterceptor(tokens),)))
        await server.start()
        return server

    secured = served.run(start)
    try:
        with grpc.insecure_channel(secured.address) as channel:
            raw = {
                name: channel.unary_unary(path, request_serializer=None, response_deserializer=reply.FromString)
                for name, (path, _, reply) in METHODS.items()
            }
            bad_tokens = st.one_of(
                st.none(),
                st.text(min_size=0, max_size=64).filter(lambda t: t.isascii() and t.isprintable()),
                st.sampled_from(
                    [t + "x" for t in role_token.values()] + ["Bearer", "Basic " + role_token[Role.CLIENT]]
                ),
            )

            @FUZZ
            @given(
                method=st.sampled_from(sorted(METHODS)),
                who=st.one_of(st.sampled_from(list(Role)), bad_tokens),
                header=st.sampled_from(["Bearer ", "bearer ", "Bearer  ", ""]),
            )
            def call(method: str, who: Role | str | None, header: str) -> None:
                path, req_cls, _ = METHODS[method]
                token = role_token[who] if isinstance(who, Role) else who
                metadata = () if token is None else (("authorization", header + token),)
                valid = isinstance(who, Role) and header.strip().lower() == "bearer"  # the scheme is case-blind
                try:
                    raw[method](req_cls().SerializeToString(), metadata=metadata, timeout=CALL_TIMEOUT_S)
                    code = OK
                except grpc.RpcError as e:
                    code = e.code()
                if not valid:
                    assert code is Code.UNAUTHENTICATED, (method, who, header, code)
                elif who not in METHOD_ROLES[path]:
                    assert code is Code.PERMISSION_DENIED, (method, who, code)
                else:
                    assert code in ALLOWED | {Code.DEADLINE_EXCEEDED}, (method, who, code)

            call()
    finally:
        served.run(secured.stop)
    served.check_healthy()
