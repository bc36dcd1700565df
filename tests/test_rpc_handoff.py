"""Hand-off over real gRPC: LocalNodes in this test process, each behind its own NodeServer on a
free port and reaching the others through its own GrpcTransport (one real Redis; node ids
differ). The protocol end to end, results followed back to the origin, a full peer, the peer
choice by the loads that offer replies carry, repeated transfers, peers that do not answer or
come back, transfers bigger than one message, bad answers and refused credentials, TLS.

The same protocol between real processes, killed at every step: tests/test_rpc_handoff_faults.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from node import LocalNode, NodeConfig, TaskSpec, TaskStatus, WorkerSpec
from node.core.transfer import record_of
from node.errors import HandoffProtocolError, PeerUnavailableError, ValidationError
from node.handoff import Offer, OfferItem, StatusQuery, Transfer
from node.model import Priority
from node.rpc.auth import AuthInterceptor, TlsConfig, Tokens, server_credentials
from node.rpc.certs import make_cluster
from node.rpc.server import NodeServer, ServerOptions
from node.rpc.transport import GrpcTransport, parse_peers
from node.runtime.handoff import StepHook
from protos.fedcoord.v1 import handoff_pb2 as hpb
from protos.fedcoord.v1 import handoff_pb2_grpc as hpb_grpc
from tests.conftest import async_wait_until, async_wait_until_async
from tests.test_handoff import cfg, statuses
from tests.test_runtime import run

COMPLETED, HANDED_OFF, HANDING_OFF, QUEUED = (
    TaskStatus.COMPLETED,
    TaskStatus.HANDED_OFF,
    TaskStatus.HANDING_OFF,
    TaskStatus.QUEUED,
)


@dataclass
class Cluster:
    """Nodes of this process, each with its transport and (once served) its gRPC server; every
    transport knows the address of every served node."""

    nodes: dict[str, LocalNode] = field(default_factory=dict)
    transports: dict[str, GrpcTransport] = field(default_factory=dict)
    servers: dict[str, NodeServer] = field(default_factory=dict)

    def agent(self, node_id: str) -> Any:
        agent = self.nodes[node_id].handoff
        assert agent is not None
        return agent

    async def serve(self, node_id: str, options: ServerOptions | None = None) -> NodeServer:
        node, transport = self.nodes[node_id], self.transports[node_id]
        server = NodeServer(node, options or ServerOptions(), handoff_endpoint=transport.local_endpoint)
        await server.start()
        self.servers[node_id] = server
        for other, t in self.transports.items():
            if other != node_id:
                t.set_peer(node_id, server.address)
        return server

    async def unserve(self, node_id: str) -> None:
        await self.servers.pop(node_id).stop()


@contextlib.asynccontextmanager
async def cluster(
    redis_url: str,
    configs: Mapping[str, NodeConfig],
    *,
    serve: bool = True,
    hooks: Mapping[str, StepHook] | None = None,
    options: ServerOptions | None = None,
    **transport: Any,
) -> AsyncIterator[Cluster]:
    """Open a node per entry of ``configs`` (``transport``: GrpcTransport settings, plaintext on
    loopback unless TLS files are given), serve each (unless ``serve`` is False), close all."""
    if not {"ca_file", "insecure"} & set(transport):
        transport["insecure"] = True
    c = Cluster()
    try:
        for node_id, config in configs.items():
            t = c.transports[node_id] = GrpcTransport({}, **transport)
            hook = (hooks or {}).get(node_id)
            c.nodes[node_id] = await LocalNode.start(node_id, redis_url, config=config, transport=t, step_hook=hook)
        if serve:
            for node_id in configs:
                await c.serve(node_id, options)
        yield c
    finally:
        for server in c.servers.values():
            await server.stop()
        for node in c.nodes.values():
            await node.close()
        for t in c.transports.values():
            await t.close()


def two(b_threshold: float = 1.0, **a: Any) -> dict[str, NodeConfig]:
    """Origin ``a`` that may hand work to ``b``, and ``b``."""
    return {"a": cfg(peers=("b",), **a), "b": cfg(threshold=b_threshold)}


def test_tasks_handed_off_over_grpc_run_on_the_peer_and_their_results_reach_the_origin(redis_url: str) -> None:
    async def main() -> None:
        async with cluster(redis_url, two()) as c:
            a, b = c.nodes["a"], c.nodes["b"]
            await b.register_worker(WorkerSpec("wb", concurrency=8))
            ids = await a.submit([TaskSpec("job", payload=b"x" * i, context={"n": str(i)}) for i in range(8)])
            res = await c.agent("a").offload("b", 8)
            assert (res.accepted, sorted(res.handed_off), res.unsettled) == (8, sorted(ids), [])
            assert c.transports["a"].peer_loads() == {"b": 0.0}  # b's load when it answered the offer
            adopted = await b.get(ids[3])
            assert (adopted.payload, adopted.spec.context, adopted.origin_node, adopted.hops) == (
                b"xxx",
                {"n": "3"},
                "a",
                1,
            )
            waits = [asyncio.create_task(a.wait(tid, timeout_s=10)) for tid in ids]
            for lease in await b.claim("wb", 8):
                await b.complete(lease, result=lease.payload.upper() + b"!")
            finals = {t.id: t for t in await asyncio.gather(*waits)}
            assert {(t.status, t.owner_node) for t in finals.values()} == {(COMPLETED, "b")}
            assert finals[ids[2]].result == b"XX!"
            await async_wait_until(lambda: not b._core.pending_reports(), what="b to be acknowledged")
            calls = c.transports["b"].calls
            assert calls.get("ReportResult", 0) >= 1 and not c.transports["b"].failures
            assert (await a.stats()).totals["handoff_result:completed"] == 8

    run(main())


def test_a_full_peer_declines_and_the_loads_in_offer_replies_steer_the_choice(redis_url: str) -> None:
    async def main() -> None:
        configs = {"a": cfg(peers=("b", "c")), "b": cfg(threshold=0.5), "c": cfg()}
        async with cluster(redis_url, configs) as c:
            a, b, cn = c.nodes["a"], c.nodes["b"], c.nodes["c"]
            await b.register_worker(WorkerSpec("wb", concurrency=4))
            await cn.register_worker(WorkerSpec("wc", concurrency=40))
            await b.submit([TaskSpec("local")])  # b holds 1 of 4 slots; its threshold lets it hold 2
            await a.submit([TaskSpec("job") for _ in range(30)])
            agent, loads = c.agent("a"), c.transports["a"].peer_loads
            first = await agent.offload("b", 3)
            assert (first.accepted, len(first.handed_off)) == (1, 1)
            full = await agent.offload("b", 3)
            assert full.accepted == 0 and "over the threshold" in full.reason
            assert loads() == {"b": 0.5}
            assert len((await agent.offload("c", 2)).handed_off) == 2
            assert loads() == {"b": 0.5, "c": 0.0}
            for _ in range(5):  # power of two choices over two peers: the less loaded one, each time
                res = await agent.offload(None, 2)
                assert (res.peer, len(res.handed_off)) == ("c", 2)
            assert b.load().ready == 2 and cn.load().ready == 12

    run(main())


def test_the_same_transfer_twice_gets_the_same_answer_and_makes_one_owner(redis_url: str) -> None:
    async def main() -> None:
        async with cluster(redis_url, two()) as c:
            a, b = c.nodes["a"], c.nodes["b"]
            await b.register_worker(WorkerSpec("wb", concurrency=5))
            ids = await a.submit([TaskSpec("job", payload=f"{i}".encode()) for i in range(5)])
            records = tuple(record_of(a._core.tasks[tid]) for tid in ids)  # what the agent sends
            assert sorted((await c.agent("a").offload("b", 5)).handed_off) == sorted(ids)
            ta = c.transports["a"]
            again = [await ta.transfer("b", Transfer("a-replayed", "a", records)) for _ in range(2)]
            assert [sorted(r.owned) for r in again] == [sorted(ids)] * 2 and [r.refused for r in again] == [{}, {}]
            assert b.load().ready == 5 and (await b.stats()).totals["adopted"] == 5
            for lease in await b.claim("wb", 5):
                await b.complete(lease)
            late = await ta.transfer("b", Transfer("a-replayed", "a", records))  # after they finished there
            assert sorted(late.owned) == sorted(ids) and b.load().ready == 0
            assert (await b.stats()).totals["completed"] == 5

    run(main())


@contextlib.contextmanager
def black_hole() -> Any:
    """An address that takes connections and never answers (the kernel completes the handshake;
    nobody reads): a hung peer."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()


@pytest.mark.parametrize("fault", ["hung", "stopped"])
def test_offers_to_a_peer_that_does_not_answer_fail_and_the_tasks_stay_home(redis_url: str, fault: str) -> None:
    """Hung: the offer times out (``offer_timeout_s``). Stopped: refused at once. Either way
    nothing was begun, and once the peer serves again the same tasks go."""

    async def main() -> None:
        async with cluster(redis_url, two(), serve=False, offer_timeout_s=0.3) as c:
            a, b = c.nodes["a"], c.nodes["b"]
            await b.register_worker(WorkerSpec("wb", concurrency=5))
            ids = await a.submit([TaskSpec("job") for _ in range(3)])
            agent, ta = c.agent("a"), c.transports["a"]
            with contextlib.ExitStack() as stack:
                if fault == "hung":
                    port = stack.enter_context(black_hole())[1]
                else:
                    port = (await c.serve("b")).port
                    await c.unserve("b")
                ta.set_peer("b", f"127.0.0.1:{port}")
                t0 = time.monotonic()
                res = await agent.offload("b", 3)
                took = time.monotonic() - t0
            assert res.handed_off == [] and res.accepted == 0
            assert ("DEADLINE_EXCEEDED" if fault == "hung" else "UNAVAILABLE") in res.reason
            assert took < 2.0 and (took >= 0.29 or fault == "stopped"), took
            assert await statuses(a, ids, {QUEUED}) and not a._core.handoffs_in_flight()
            assert ta.failures == {"Offer": 1} and "Transfer" not in ta.calls
            await c.serve("b", ServerOptions(listen=f"127.0.0.1:{port}"))  # back, at the same address
            await async_wait_until_async(
                lambda: _handed_off(agent, 3), timeout_s=10, what="the tasks to go once b answers again"
            )
            assert await statuses(a, ids, {HANDED_OFF}) and b.load().ready == 3

    run(main())


def test_a_node_that_closed_behind_its_running_server_answers_unavailable(redis_url: str) -> None:
    """Not a protocol error: the origin treats it as no answer, and keeps its tasks."""

    async def main() -> None:
        async with cluster(redis_url, two()) as c:
            a = c.nodes["a"]
            ids = await a.submit([TaskSpec("job")])
            await c.nodes["b"].close()  # unbinds its endpoint; the server still answers
            res = await c.agent("a").offload("b", 1)
            assert "UNAVAILABLE" in res.reason and "not serving hand-off" in res.reason
            assert await statuses(a, ids, {QUEUED})

    run(main())


async def _handed_off(agent: Any, n: int) -> bool:
    res = await agent.offload("b", n)
    return len(res.handed_off) == n


@pytest.mark.parametrize(("held_at", "then"), [("transfer_received", QUEUED), ("peer_acked", HANDED_OFF)])
def test_a_transfer_that_gets_no_answer_is_settled_by_asking_the_peer(
    redis_url: str, held_at: str, then: TaskStatus
) -> None:
    """b holds the transfer at a step until a's call runs out of time (gRPC then cancels b's
    handler). a asks b (with backoff): held before adopting, b says "unknown" and a takes the
    tasks back; held after adopting durably, b says "owned" and a marks them handed off."""
    held: list[str] = []

    async def hold(node_id: str, step: str) -> None:
        if step == held_at and not held:
            held.append(step)
            try:
                await asyncio.Event().wait()  # until the call is cancelled
            except asyncio.CancelledError:
                held.append("cancelled")
                raise

    async def main() -> None:
        async with cluster(redis_url, two(), hooks={"b": hold}, timeout_s=0.3) as c:
            a, b = c.nodes["a"], c.nodes["b"]
            await b.register_worker(WorkerSpec("wb", concurrency=5))
            ids = await a.submit([TaskSpec("job") for _ in range(2)])
            res = await c.agent("a").offload("b", 2)
            assert sorted(res.unsettled) == sorted(ids) and "DEADLINE_EXCEEDED" in res.reason
            await async_wait_until(lambda: held == [held_at, "cancelled"], what="b's handler to be cancelled")
            await async_wait_until_async(lambda: statuses(a, ids, {then}), what=f"a to settle as {then.value}")
            assert c.transports["a"].calls["TaskStatus"] >= 1
            if then is QUEUED:  # one owner: a (b never adopted them, and refuses them from now on)
                assert c.agent("b").stats["adopted"] == 0 and b.load().ready == 0 and a.load().ready == 2
                again = await c.transports["a"].transfer(
                    "b", Transfer("late", "a", tuple(record_of(a._core.tasks[t]) for t in ids))
                )
                assert again.owned == () and set(again.refused) == set(ids)
            else:  # one owner: b
                assert c.agent("b").stats["adopted"] == 2 and b.load().ready == 2 and a.load().ready == 0

    run(main())


def test_a_transfer_bigger_than_one_message_goes_in_parts(redis_url: str) -> None:
    async def main() -> None:
        async with cluster(redis_url, two(), max_message_bytes=1 << 20) as c:
            a, b = c.nodes["a"], c.nodes["b"]
            await b.register_worker(WorkerSpec("wb", concurrency=10))
            ids = await a.submit([TaskSpec("big", payload=bytes([i]) * 300_000) for i in range(10)])
            res = await c.agent("a").offload("b", 10)
            assert sorted(res.handed_off) == sorted(ids)
            assert c.transports["a"].calls["Transfer"] == 4  # 3 records of 300 kB fit in 1 MiB
            assert (await b.get(ids[7])).payload == bytes([7]) * 300_000
            for lease in await b.claim("wb", 10):
                await b.complete(lease, result=lease.payload)  # 3 MB of results back, in parts too
            final = await a.wait(ids[9], timeout_s=10)
            assert final.result == bytes([9]) * 300_000
            await async_wait_until(lambda: not b._core.pending_reports(), what="every result to be acknowledged")
            assert c.transports["b"].calls["ReportResult"] >= 4

    run(main())


# ---------------------------------------------------------------------------- bad answers, credentials


class LyingPeer(hpb_grpc.HandoffServiceServicer):
    """A real gRPC server answering the hand-off service badly: each method aborts with
    ``code`` if one is set, else says something no correct peer says."""

    def __init__(self, code: grpc.StatusCode | None = None):
        self.code = code

    async def _maybe_abort(self, context: grpc.aio.ServicerContext) -> None:
        if self.code is not None:
            await context.abort(self.code, f"told to answer {self.code.name}")

    async def Offer(self, request: hpb.OfferRequest, context: grpc.aio.ServicerContext) -> hpb.OfferReply:
        await self._maybe_abort(context)
        return hpb.OfferReply(
            offer_id=request.offer_id, accepted=[*(i.task_id for i in request.items), "never-offered"]
        )

    async def TaskStatus(
        self, request: hpb.TaskStatusRequest, context: grpc.aio.ServicerContext
    ) -> hpb.TaskStatusReply:
        await self._maybe_abort(context)
        return hpb.TaskStatusReply(statuses={tid: 7 for tid in request.task_ids})  # type: ignore[misc]


@contextlib.asynccontextmanager
async def lying_peer(code: grpc.StatusCode | None = None) -> AsyncIterator[str]:
    server = grpc.aio.server()
    hpb_grpc.add_HandoffServiceServicer_to_server(LyingPeer(code), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


def test_a_peer_that_accepts_what_it_was_never_offered_or_answers_nonsense_is_refused(redis_url: str) -> None:
    async def main() -> None:
        async with cluster(redis_url, two(), serve=False) as c, lying_peer() as address:
            a, ta = c.nodes["a"], c.transports["a"]
            ta.set_peer("b", address)
            ids = await a.submit([TaskSpec("job"), TaskSpec("job")])
            with pytest.raises(HandoffProtocolError, match="never offered"):
                await c.agent("a").offload("b", 2)
            assert await statuses(a, ids, {QUEUED})  # nothing was begun
            with pytest.raises(HandoffProtocolError, match="unknown status 7"):
                await ta.task_status("b", StatusQuery("a", tuple(ids)))

    run(main())


OFFER = Offer("o-1", "a", (OfferItem("t-1", "job", Priority.MEDIUM, 1),))


@pytest.mark.parametrize(
    ("code", "raised", "says"),
    [
        (grpc.StatusCode.FAILED_PRECONDITION, HandoffProtocolError, "refused the call"),
        (grpc.StatusCode.INVALID_ARGUMENT, ValidationError, "refused our Offer"),
        (grpc.StatusCode.UNAVAILABLE, PeerUnavailableError, "no answer"),
        (grpc.StatusCode.INTERNAL, PeerUnavailableError, "no answer"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, PeerUnavailableError, "no answer"),
        (grpc.StatusCode.UNAUTHENTICATED, PeerUnavailableError, "refused this node's credentials"),
        (grpc.StatusCode.PERMISSION_DENIED, PeerUnavailableError, "peer role"),
    ],
)
def test_what_a_failed_call_raises(
    code: grpc.StatusCode, raised: type[Exception], says: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with lying_peer(code) as address:
            t = GrpcTransport({"b": address}, insecure=True)
            try:
                for _ in range(2):
                    with pytest.raises(raised, match=says) as err:
                        await t.offer("b", OFFER)
                    assert code.name in str(err.value) and "told to answer" in str(err.value)
            finally:
                await t.close()

    with caplog.at_level(logging.INFO, logger="fedcoord.rpc.transport"):
        run(main())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        assert len(errors) == 1 and says in errors[0].getMessage()  # said once, not at every retry
    else:
        assert errors == []


def test_peers_are_reached_over_mutual_tls_with_a_token_and_others_are_turned_away(
    redis_url: str, tmp_path: Path
) -> None:
    files = make_cluster(tmp_path, ["a", "b", "stranger"])
    tokens = Tokens.load(tmp_path / "tokens.toml")
    [peer_token] = tokens.peer
    pem = {n: (str(p.cert), str(p.key)) for n, p in files.certs.items()}
    ca = str(files.ca.cert)
    tls: dict[str, Any] = {"ca_file": ca, "cert_file": pem["a"][0], "key_file": pem["a"][1], "token": peer_token}
    options = ServerOptions(
        credentials=server_credentials(TlsConfig(*pem["b"], ca_file=ca, require_client_cert=True)),
        interceptors=[AuthInterceptor(tokens)],
    )

    async def main() -> None:
        async with cluster(redis_url, two(), serve=False, **tls) as c:
            a, b = c.nodes["a"], c.nodes["b"]
            await b.register_worker(WorkerSpec("wb", concurrency=3))
            ids = await a.submit([TaskSpec("job") for _ in range(3)])
            await c.serve("b", options)
            assert sorted((await c.agent("a").offload("b", 3)).handed_off) == sorted(ids)
            address = c.transports["a"].peers["b"]
            wrong = {**tls, "token": tokens.client[0]}  # a valid token, of the wrong role
            no_cert: dict[str, Any] = {"ca_file": ca, "token": peer_token}
            for settings, says in [(wrong, "peer role"), (no_cert, "no answer")]:
                t = GrpcTransport({"b": address}, timeout_s=2, **settings)
                try:
                    with pytest.raises(PeerUnavailableError, match=says):
                        await t.offer("b", OFFER)
                finally:
                    await t.close()

    run(main())


def test_transport_settings_are_checked_when_it_is_made() -> None:
    assert parse_peers(["n2=10.0.0.2:50051", "n3=[::1]:7"]) == {"n2": "10.0.0.2:50051", "n3": "[::1]:7"}
    for bad in (["n2"], ["n2="], ["n2=a:1", "n2=b:2"], ["bad id=a:1"]):
        with pytest.raises(ValidationError, match="peers"):
            parse_peers(bad)
    with pytest.raises(ValidationError, match="loopback"):
        GrpcTransport({"n2": "10.0.0.2:50051"}, insecure=True)  # plaintext off this machine: no
    with pytest.raises(ValidationError, match="exclude"):
        GrpcTransport({}, insecure=True, ca_file="ca.pem")
    with pytest.raises(ValidationError, match="offer_timeout_s"):
        GrpcTransport({}, insecure=True, offer_timeout_s=0)
    t = GrpcTransport({"n2": "127.0.0.1:1"}, insecure=True)
    assert t.peer_loads() == {} and dict(t.peers) == {"n2": "127.0.0.1:1"}
    with pytest.raises(PeerUnavailableError, match="no address"):
        run(t.offer("n3", OFFER))
