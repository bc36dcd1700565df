"""The node served over gRPC, with raw stubs (no fedcoord client in between): health, reflection,
errors as status codes, the worker stream, events, stats, and draining."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from node import LocalNode, TaskStatus
from node.rpc.server import NodeServer, ServerOptions
from node.rpc.servicers import ServiceLimits
from protos.fedcoord.v1 import common_pb2 as cpb
from protos.fedcoord.v1 import node_pb2 as npb
from protos.fedcoord.v1 import node_pb2_grpc
from tests.conftest import async_wait_until
from tests.test_runtime import fast_config, run

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@contextlib.asynccontextmanager
async def served(redis_url: str, **options: object) -> AsyncIterator[tuple[NodeServer, grpc.aio.Channel]]:
    async with LocalNode.open("rpc1", redis_url=redis_url, config=fast_config()) as node:
        server = NodeServer(node, ServerOptions(**options))  # type: ignore[arg-type]
        await server.start()
        channel = grpc.aio.insecure_channel(server.address)
        try:
            yield server, channel
        finally:
            await channel.close()
            await server.stop()


def specs(n: int, type_: str = "t") -> list[cpb.TaskSpec]:
    return [cpb.TaskSpec(type=type_, payload=f"p{i}".encode()) for i in range(n)]


async def stream_code(call: grpc.aio.StreamStreamCall) -> grpc.StatusCode:
    """Read a stream to its end; its final status."""
    with contextlib.suppress(grpc.aio.AioRpcError):
        while await call.read() is not grpc.aio.EOF:
            pass
    return await call.code()  # type: ignore[no-any-return]


async def code_of(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def test_health_reflection_and_errors_as_status_codes(redis_url: str) -> None:
    async def go() -> None:
        async with served(redis_url) as (_, ch):
            health = health_pb2_grpc.HealthStub(ch)
            for service in ("", "fedcoord.v1.NodeService", "fedcoord.v1.HandoffService"):
                assert (await health.Check(health_pb2.HealthCheckRequest(service=service))).status == SERVING

            refl = reflection_pb2_grpc.ServerReflectionStub(ch)
            ask = reflection_pb2.ServerReflectionRequest(list_services="")
            replies = [r async for r in refl.ServerReflectionInfo(iter([ask]))]
            names = {s.name for s in replies[0].list_services_response.service}
            assert {"fedcoord.v1.NodeService", "fedcoord.v1.HandoffService", "grpc.health.v1.Health"} <= names

            stub = node_pb2_grpc.NodeServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await stub.Submit(npb.SubmitRequest(tasks=[*specs(2), cpb.TaskSpec(type="")]))
            assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "[2].type" in (bad.value.details() or "")
            assert await code_of(stub.Submit(npb.SubmitRequest(tasks=[cpb.TaskSpec(type="t", priority=99)]))) is (
                grpc.StatusCode.INVALID_ARGUMENT
            )
            assert await code_of(stub.GetTask(npb.TaskRef(task_id="nope"))) is grpc.StatusCode.NOT_FOUND
            assert await code_of(stub.GetTask(npb.TaskRef())) is grpc.StatusCode.INVALID_ARGUMENT
            assert await code_of(stub.Heartbeat(npb.HeartbeatRequest(worker_id="ghost"))) is grpc.StatusCode.NOT_FOUND
            ids = (await stub.Submit(npb.SubmitRequest(tasks=specs(1)))).task_ids
            stale = cpb.LeaseRef(task_id=ids[0], attempt=7, worker_id="ghost")
            code = await code_of(stub.Complete(npb.CompleteRequest(lease=stale)))
            assert code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)
            t = await stub.GetTask(npb.TaskRef(task_id=ids[0]))
            assert t.status == cpb.TASK_STATUS_QUEUED and t.spec.payload == b"p0"

    run(go())


def test_worker_stream_leases_results_and_stale_reports(redis_url: str) -> None:
    async def go() -> None:
        async with served(redis_url) as (server, ch):
            stub = node_pb2_grpc.NodeServiceStub(ch)
            ids = list((await stub.Submit(npb.SubmitRequest(tasks=specs(20)))).task_ids)
            call = stub.Work()
            await call.write(npb.WorkerMessage(hello=npb.WorkerSpec(id="w1", concurrency=8), credit=8))
            first = await call.read()
            assert first.registered.id == "w1" and first.registered.concurrency == 8
            done: set[str] = set()
            acked = 0
            rejected: list[npb.LeaseError] = []
            sent_stale = False
            while acked < 20 or not rejected:
                m = await call.read()
                assert m is not grpc.aio.EOF
                acked += len(m.acked)
                rejected.extend(m.rejected)
                if m.leases:
                    assert len(m.leases) <= 8
                    results = [npb.Completion(task_id=x.task_id, attempt=x.attempt, result=b"r") for x in m.leases]
                    msg = npb.WorkerMessage(credit=len(m.leases), completions=results)
                    if not sent_stale:  # a report for an attempt that is not the current one
                        msg.completions.append(npb.Completion(task_id=m.leases[0].task_id, attempt=99))
                        sent_stale = True
                    done.update(x.task_id for x in m.leases)
                    await call.write(msg)
            assert done == set(ids)
            assert [r.code for r in rejected] == ["FAILED_PRECONDITION"]
            await call.write(npb.WorkerMessage(heartbeat=True))
            while True:
                m = await call.read()
                if m.HasField("healthy"):
                    assert m.healthy
                    break
            for tid in ids:
                t = await stub.WaitTask(npb.WaitTaskRequest(task_id=tid, timeout_s=5))
                assert t.status == cpb.TASK_STATUS_COMPLETED and t.result == b"r"
            stats = await stub.Stats(npb.StatsRequest(report=True))
            assert stats.totals["completed"] == 20 and stats.report_json
            assert server.servicer.streams == 1
            await call.done_writing()
            assert await call.read() is grpc.aio.EOF
            # the stream was the worker's session: it is gone from the node now
            stats = await stub.Stats(npb.StatsRequest())
            assert [w.id for w in stats.workers] == []

    run(go())


def test_stream_must_start_with_hello_and_cancel_revokes(redis_url: str) -> None:
    async def go() -> None:
        async with served(redis_url) as (server, ch):
            stub = node_pb2_grpc.NodeServiceStub(ch)
            call = stub.Work()
            await call.write(npb.WorkerMessage(credit=1))
            assert await stream_code(call) is grpc.StatusCode.INVALID_ARGUMENT

            (tid,) = (await stub.Submit(npb.SubmitRequest(tasks=specs(1)))).task_ids
            call = stub.Work()
            await call.write(npb.WorkerMessage(hello=npb.WorkerSpec(id="w2"), credit=1))
            lease = None
            while lease is None:
                m = await call.read()
                lease = m.leases[0] if m.leases else None
            assert (await stub.Cancel(npb.TaskRef(task_id=tid))).status == cpb.TASK_STATUS_ASSIGNED  # what it was
            await call.write(npb.WorkerMessage(heartbeat=True))
            while True:
                m = await call.read()
                if m.revoked:
                    assert [(r.task_id, r.attempt) for r in m.revoked] == [(tid, lease.attempt)]
                    break
            assert server.node.load().leased == 0
            call.cancel()

    run(go())


def test_watch_streams_events_in_batches(redis_url: str) -> None:
    async def go() -> None:
        async with served(redis_url) as (_, ch):
            stub = node_pb2_grpc.NodeServiceStub(ch)
            watch = stub.Watch(npb.WatchRequest())
            seen: list[npb.Event] = []
            assert list((await watch.read()).events) == []  # subscribed from here on
            ids = list((await stub.Submit(npb.SubmitRequest(tasks=specs(5)))).task_ids)
            while len(seen) < 5:
                batch = await watch.read()
                assert batch is not grpc.aio.EOF
                seen.extend(batch.events)
            watch.cancel()
            assert [e.task_id for e in seen[:5]] == ids
            assert {e.kind for e in seen} == {"new_task"}
            assert all(e.status == cpb.TASK_STATUS_QUEUED for e in seen)

    run(go())


def test_drain_refuses_new_work_and_says_not_serving(redis_url: str) -> None:
    async def go() -> None:
        async with served(redis_url) as (server, ch):
            stub = node_pb2_grpc.NodeServiceStub(ch)
            (tid,) = (await stub.Submit(npb.SubmitRequest(tasks=specs(1)))).task_ids
            server.servicer.draining = True  # what drain() does first
            assert await code_of(stub.Submit(npb.SubmitRequest(tasks=specs(1)))) is grpc.StatusCode.UNAVAILABLE
            call = stub.Work()
            await call.write(npb.WorkerMessage(hello=npb.WorkerSpec(id="w3"), credit=1))
            assert await stream_code(call) is grpc.StatusCode.UNAVAILABLE
            # reads still work while draining
            assert (await stub.GetTask(npb.TaskRef(task_id=tid))).status == cpb.TASK_STATUS_QUEUED
            health = health_pb2_grpc.HealthStub(ch)
            await server.drain(1.0)
            assert server.node.state.value == "serving"  # the node itself stays open for close()
            assert (await server.node.get(tid)).status is TaskStatus.QUEUED
            with pytest.raises(grpc.aio.AioRpcError):
                await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)

    run(go())


def test_active_task_limit_gives_resource_exhausted(redis_url: str) -> None:
    async def go() -> None:
        async with served(redis_url, limits=ServiceLimits(max_active_tasks=10)) as (_, ch):
            stub = node_pb2_grpc.NodeServiceStub(ch)
            await stub.Submit(npb.SubmitRequest(tasks=specs(8)))
            with pytest.raises(grpc.aio.AioRpcError) as full:
                await stub.Submit(npb.SubmitRequest(tasks=specs(3)))
            assert full.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit of 10" in (full.value.details() or "")
            await stub.Submit(npb.SubmitRequest(tasks=specs(2)))  # up to the limit is fine

    run(go())


def test_an_old_stream_ending_leaves_the_workers_new_registration_alone(redis_url: str) -> None:
    async def go() -> None:
        async with served(redis_url) as (_server, ch):
            stub = node_pb2_grpc.NodeServiceStub(ch)
            old = stub.Work()
            await old.write(npb.WorkerMessage(hello=npb.WorkerSpec(id="w9")))
            assert (await old.read()).registered.id == "w9"
            new = stub.Work()  # the worker came back on a new stream before the old one ended
            await new.write(npb.WorkerMessage(hello=npb.WorkerSpec(id="w9"), credit=1))
            assert (await new.read()).registered.id == "w9"
            await old.done_writing()
            assert await stream_code(old) is grpc.StatusCode.OK
            (tid,) = (await stub.Submit(npb.SubmitRequest(tasks=specs(1)))).task_ids
            m = await new.read()
            assert [x.task_id for x in m.leases] == [tid]  # the new registration still serves
            assert [w.id for w in (await stub.Stats(npb.StatsRequest())).workers] == ["w9"]
            new.cancel()

    run(go())


def test_drain_ends_worker_streams_once_their_leases_are_reported(redis_url: str) -> None:
    async def go() -> None:
        async with served(redis_url) as (server, ch):
            stub = node_pb2_grpc.NodeServiceStub(ch)
            (tid,) = (await stub.Submit(npb.SubmitRequest(tasks=specs(1)))).task_ids
            call = stub.Work()
            await call.write(npb.WorkerMessage(hello=npb.WorkerSpec(id="wd", concurrency=2), credit=2))
            lease = None
            while lease is None:
                m = await call.read()
                lease = m.leases[0] if m.leases else None
            server.servicer.start_draining()
            # the stream stays open while the worker holds a lease; its result is still taken
            await call.write(npb.WorkerMessage(completions=[npb.Completion(task_id=tid, attempt=lease.attempt)]))
            assert await stream_code(call) is grpc.StatusCode.OK  # then it ends
            t = await server.node.get(tid)
            assert t.status is TaskStatus.COMPLETED and t.attempt == 1  # nothing went back in line

    run(go())


def test_replies_keep_under_the_message_limit_and_hold_the_rest(redis_url: str) -> None:
    async def go() -> None:
        async with served(redis_url, max_message_bytes=1 << 20) as (_, ch):  # replies up to 512 KiB
            stub = node_pb2_grpc.NodeServiceStub(ch)
            big = [cpb.TaskSpec(type="big", payload=bytes(200_000)) for _ in range(3)]  # 600 KB a request

            async def submit6() -> list[str]:
                return [t for _ in range(2) for t in (await stub.Submit(npb.SubmitRequest(tasks=big))).task_ids]

            ids = await submit6()
            await stub.RegisterWorker(npb.WorkerSpec(id="wb", concurrency=10))
            sizes = []
            got: list[str] = []
            while len(got) < 6:
                leases = (await stub.Claim(npb.ClaimRequest(worker_id="wb", max_tasks=6))).leases
                assert leases, "a lease held for the next claim was lost"
                sizes.append(len(leases))
                got += [x.task_id for x in leases]
            assert sorted(got) == sorted(ids) and max(sizes) < 6 and len(sizes) > 1
            for tid in ids:  # what a reply could not carry went back in line, not as a failed attempt
                assert (await stub.GetTask(npb.TaskRef(task_id=tid))).failures == 0
            # the worker stream splits its lease messages the same way
            more = await submit6()
            call = stub.Work()
            await call.write(npb.WorkerMessage(hello=npb.WorkerSpec(id="ws", concurrency=6), credit=6))
            seen: list[str] = []
            messages = 0
            while len(seen) < 6:
                m = await call.read()
                if m.leases:
                    messages += 1
                    seen += [x.task_id for x in m.leases]
            assert sorted(seen) == sorted(more) and messages > 1
            call.cancel()

    run(go())


def test_drain_ends_watches_waits_and_waiting_claims_at_once(redis_url: str) -> None:
    async def go() -> None:
        async with served(redis_url) as (server, ch):
            stub = node_pb2_grpc.NodeServiceStub(ch)
            special = cpb.TaskSpec(type="t", required_capabilities=["special"])  # no worker here can take it
            (tid,) = (await stub.Submit(npb.SubmitRequest(tasks=[special]))).task_ids
            await stub.RegisterWorker(npb.WorkerSpec(id="wq", capabilities=["other"]))
            watch = stub.Watch(npb.WatchRequest())
            assert list((await watch.read()).events) == []
            wait = asyncio.ensure_future(stub.WaitTask(npb.WaitTaskRequest(task_id=tid)))
            claim = asyncio.ensure_future(
                stub.Claim(npb.ClaimRequest(worker_id="wq", wait_s=60))  # nothing it can take: it waits
            )
            node = server.node
            await async_wait_until(lambda: "wq" in node._check().waiting_workers() and bool(node._watchers))
            await asyncio.wait_for(server.drain(30.0), 10)  # none of them holds the drain to its grace
            with pytest.raises(grpc.aio.AioRpcError) as waited:
                await wait
            assert waited.value.code() is grpc.StatusCode.UNAVAILABLE
            assert list((await claim).leases) == []
            assert await watch.read() is grpc.aio.EOF

    run(go())


def test_a_dependent_made_ready_during_drain_is_not_failed(redis_url: str) -> None:
    async def go() -> None:
        async with served(redis_url) as (server, ch):
            stub = node_pb2_grpc.NodeServiceStub(ch)
            (a,) = (await stub.Submit(npb.SubmitRequest(tasks=specs(1, "a")))).task_ids
            dep = cpb.TaskSpec(type="b", dependencies=[a], max_retries=0)
            (b,) = (await stub.Submit(npb.SubmitRequest(tasks=[dep]))).task_ids
            call = stub.Work()
            await call.write(npb.WorkerMessage(hello=npb.WorkerSpec(id="wdep", concurrency=2), credit=2))
            lease = None
            while lease is None:
                m = await call.read()
                lease = m.leases[0] if m.leases else None
            server.servicer.start_draining()
            await call.write(npb.WorkerMessage(completions=[npb.Completion(task_id=a, attempt=lease.attempt)]))
            assert await stream_code(call) is grpc.StatusCode.OK
            t = await server.node.get(b)  # ready now, never sent to the draining worker: not its failure
            assert (t.status, t.failures) == (TaskStatus.QUEUED, 0)

    run(go())


def test_a_watcher_that_falls_behind_is_told_so(redis_url: str) -> None:
    async def go() -> None:
        async with served(redis_url) as (_, ch):
            stub = node_pb2_grpc.NodeServiceStub(ch)
            watch = stub.Watch(npb.WatchRequest(max_queue=10))
            assert list((await watch.read()).events) == []
            for _ in range(5):  # the watcher reads nothing meanwhile
                await stub.Submit(npb.SubmitRequest(tasks=specs(100)))
            with pytest.raises(grpc.aio.AioRpcError) as lost:
                while True:
                    assert await watch.read() is not grpc.aio.EOF
            assert lost.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "lost" in (lost.value.details() or "")

    run(go())


def test_a_unix_socket_address_is_given_back_as_it_is(redis_url: str, tmp_path: Path) -> None:
    async def go() -> None:
        path = f"unix:{tmp_path}/node.sock"
        async with served(redis_url, listen=path) as (server, ch):
            assert server.address == path
            stub = node_pb2_grpc.NodeServiceStub(ch)
            assert (await stub.Stats(npb.StatsRequest())).node_id == "rpc1"

    run(go())
