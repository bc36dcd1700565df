"""Metrics and logs of a node process: the core's cheap queue reads, the committer's write
observer, the Prometheus endpoint over a real node on the test Redis, the gRPC interceptor on a
real server, and the JSON log lines."""

from __future__ import annotations

import asyncio
import io
import logging
import random
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import orjson
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from node import LocalNode, TaskSpec, WorkerSpec
from node.core import Core, CoreConfig
from node.model import Priority
from node.rpc.logs import JsonFormatter, setup_logging
from node.rpc.metrics import MetricsInterceptor, NodeMetrics, start_metrics_server
from tests.conftest import async_wait_until
from tests.test_runtime import fast_config, run

_S = 1_000_000_000


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint: (name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


# ---------------------------------------------------------------------------------- the core's reads


def test_queue_depths_and_oldest_queued_follow_submits_cancels_and_claims() -> None:
    core = Core(CoreConfig(node_id="n1"), random.Random(1))
    now = 10 * _S
    prios = ["low", "high", "medium", "high", "critical", "low", "medium", "medium"]
    ids = core.submit([TaskSpec("t", priority=p) for p in prios], now)
    assert core.queue_depths() == {Priority.CRITICAL: 1, Priority.HIGH: 2, Priority.MEDIUM: 3, Priority.LOW: 2}
    assert core.oldest_queued_ns() == now  # the first task of the batch (queue times are now, now + 1, ...)
    core.cancel(ids[0], now + 5)  # the oldest, a LOW task: its entry stays in line, stale
    core.cancel(ids[6], now + 5)
    core.validate()
    assert core.queue_depths() == {Priority.CRITICAL: 1, Priority.HIGH: 2, Priority.MEDIUM: 2, Priority.LOW: 1}
    assert core.oldest_queued_ns() == now + 1  # past the stale head
    core.register_worker(WorkerSpec("w", concurrency=8, skill=10), now + 6)
    leases = core.claim("w", 5, now + 7)
    assert len(leases) == 5
    core.validate()  # stale entries dropped on the way are no longer counted
    assert sum(core.queue_depths().values()) == core.load().ready == 1
    core.complete(leases[0], b"", now + 8)
    assert core.oldest_queued_ns() is not None
    core.claim("w", 1, now + 9)
    assert core.queue_depths() == dict.fromkeys(Priority, 0)
    assert core.oldest_queued_ns() is None
    core.validate()


def test_delayed_tasks_are_not_in_line() -> None:
    core = Core(CoreConfig(node_id="n1"), random.Random(1))
    core.submit([TaskSpec("t", delay_s=5.0), TaskSpec("t", priority="low")], 1 * _S)
    assert core.queue_depths()[Priority.LOW] == 1
    assert core.queue_depths()[Priority.MEDIUM] == 0
    assert core.load().delayed == 1
    core.tick(7 * _S)
    assert core.queue_depths()[Priority.MEDIUM] == 1
    assert core.oldest_queued_ns() == 1 * _S  # the LOW task, queued at submit, has waited longest


# ---------------------------------------------------------------------------------- the committer


def test_the_committer_reports_each_write(redis_url: str) -> None:
    async def main() -> None:
        seen: list[tuple[float, int]] = []
        async with LocalNode.open("c1", redis_url, config=fast_config()) as node:
            node._committer.on_write = lambda s, n: seen.append((s, n))
            await node.submit([TaskSpec("t") for _ in range(5)])
            assert seen and seen[-1][0] > 0 and seen[-1][1] == 5
            await node.register_worker(WorkerSpec("w", concurrency=2))
            assert seen[-1][1] == 1  # the worker record

            def broken(seconds: float, n: int) -> None:
                raise RuntimeError("a broken observer")

            node._committer.on_write = broken
            ids = await node.submit([TaskSpec("t")])  # acknowledged all the same
            assert (await node.get(ids[0])).status.value == "queued"

    run(main())


# ---------------------------------------------------------------------------------- the endpoint


def test_metrics_endpoint_shows_a_live_node(redis_url: str) -> None:
    async def main() -> None:
        metrics = NodeMetrics("m1")
        async with LocalNode.open("m1", redis_url, config=fast_config()) as node:
            metrics.attach(node)
            await node.register_worker(WorkerSpec("w", concurrency=4, skill=10))
            prios = ["high", "high", "medium", "medium", "medium", "low"]
            ids = await node.submit([TaskSpec("t", priority=p) for p in prios])
            leases = await node.claim("w", 2)  # the two HIGH ones
            assert {lease.task_id for lease in leases} == set(ids[:2])
            await node.complete(leases[0], b"ok")
            await node.cancel(ids[2])  # a MEDIUM one still in line
            snap = metrics.refresh(node)
            assert snap.state == "serving"
            with start_metrics_server("127.0.0.1:0", metrics.registry) as endpoint:
                assert endpoint.port > 0
                samples = await asyncio.to_thread(scrape, endpoint.url)

        def value(name: str, **labels: str) -> float:
            return samples[(name, tuple(sorted(labels.items())))]

        assert value("fedcoord_node_info", node_id="m1") == 1
        assert value("fedcoord_node_state", state="serving") == 1
        assert value("fedcoord_node_state", state="degraded") == 0
        assert value("fedcoord_active_tasks", status="queued") == 3
        assert value("fedcoord_active_tasks", status="assigned") == 1
        assert value("fedcoord_active_tasks", status="pending") == 0
        assert value("fedcoord_queue_depth", priority="high") == 0
        assert value("fedcoord_queue_depth", priority="medium") == 2
        assert value("fedcoord_queue_depth", priority="low") == 1
        assert value("fedcoord_queue_depth", priority="critical") == 0
        assert value("fedcoord_delayed_tasks") == 0
        assert 0 <= value("fedcoord_oldest_queued_age_seconds") < 60
        assert value("fedcoord_workers", health="healthy") == 1
        assert value("fedcoord_workers", health="unhealthy") == 0
        assert value("fedcoord_worker_slots") == 4
        assert value("fedcoord_load_ratio") == pytest.approx((1 + 3) / 4)
        assert value("fedcoord_admission_threshold") == pytest.approx(0.8)
        assert value("fedcoord_tasks_total", status="submitted") == 6
        assert value("fedcoord_tasks_total", status="completed") == 1
        assert value("fedcoord_tasks_total", status="cancelled") == 1
        assert value("fedcoord_tasks_total", status="failed") == 0
        assert value("fedcoord_commit_duration_seconds_count") >= 4  # register, submit, claim, complete, cancel
        assert value("fedcoord_commit_duration_seconds_sum") > 0
        assert value("fedcoord_commit_batch_records_count") == value("fedcoord_commit_duration_seconds_count")
        assert value("fedcoord_commit_batch_records_bucket", le="+Inf") >= 4
        assert 0 <= value("fedcoord_metrics_age_seconds") < 60
        assert not any(name == "fedcoord_handoffs_total" for name, _ in samples)  # no hand-off agent

    run(main())


def test_the_refresh_task_snapshots_and_detaches(redis_url: str) -> None:
    async def main() -> None:
        metrics = NodeMetrics("r1")
        async with LocalNode.open("r1", redis_url, config=fast_config()) as node:
            task = asyncio.create_task(metrics.run(node, every_s=0.01))
            await async_wait_until(lambda: metrics.snapshot is not None, what="the first snapshot")
            assert node._committer.on_write == metrics.observe_commit
            await node.submit([TaskSpec("t", priority="critical")])
            await async_wait_until(
                lambda: metrics.snapshot is not None and metrics.snapshot.queue_depth["critical"] == 1,
                what="a snapshot with the task",
            )
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert node._committer.on_write is None

    run(main())


def test_each_node_has_its_own_registry() -> None:
    a, b = NodeMetrics("a"), NodeMetrics("b")  # no clash: neither uses the global registry
    a.observe_rpc("/x/Y", "OK", 0.01)
    assert a.registry.get_sample_value("fedcoord_rpcs_total", {"method": "/x/Y", "code": "OK"}) == 1
    assert b.registry.get_sample_value("fedcoord_rpcs_total", {"method": "/x/Y", "code": "OK"}) is None
    own = CollectorRegistry()
    assert NodeMetrics("c", registry=own).registry is own
    with start_metrics_server("127.0.0.1:0", a.registry) as endpoint:  # before any snapshot
        samples = scrape(endpoint.url)
    assert samples[("fedcoord_node_info", (("node_id", "a"),))] == 1
    assert not any(name == "fedcoord_active_tasks" for name, _ in samples)


# ---------------------------------------------------------------------------------- the interceptor


async def _unary_ok(request: bytes, context: Any) -> bytes:
    return request


async def _unary_abort(request: bytes, context: Any) -> bytes:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad input")
    raise AssertionError("unreachable")


async def _unary_boom(request: bytes, context: Any) -> bytes:
    raise ValueError("a bug")


async def _stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for i in range(3):
        yield bytes([i])


async def _bidi(requests: AsyncIterator[bytes], context: Any) -> None:
    async for r in requests:
        await context.write(r)


def test_the_interceptor_times_every_call_by_method_and_code() -> None:
    async def main() -> None:
        metrics = NodeMetrics("i1")
        handlers = {
            "Ok": grpc.unary_unary_rpc_method_handler(_unary_ok),
            "Abort": grpc.unary_unary_rpc_method_handler(_unary_abort),
            "Boom": grpc.unary_unary_rpc_method_handler(_unary_boom),
            "Stream": grpc.unary_stream_rpc_method_handler(_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
        }
        server = grpc.aio.server(interceptors=[metrics.interceptor()])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                for _ in range(2):
                    assert await ch.unary_unary("/t.S/Ok")(b"x") == b"x"
                for name, code in (("Abort", grpc.StatusCode.INVALID_ARGUMENT), ("Boom", grpc.StatusCode.UNKNOWN)):
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await ch.unary_unary(f"/t.S/{name}")(b"")
                    assert info.value.code() == code
                assert [r async for r in ch.unary_stream("/t.S/Stream")(b"")] == [b"\0", b"\1", b"\2"]
                call = ch.stream_stream("/t.S/Bidi")
                assert [r async for r in call(iter([b"a", b"b"]))] == [b"a", b"b"]
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await ch.unary_unary("/t.S/Missing")(b"")
                assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        finally:
            await server.stop(None)
        reg = metrics.registry

        def count(method: str, code: str) -> float | None:
            return reg.get_sample_value("fedcoord_rpcs_total", {"method": f"/t.S/{method}", "code": code})

        await async_wait_until(lambda: count("Bidi", "OK") == 1, what="the bidi stream to be counted")
        assert count("Ok", "OK") == 2
        assert count("Abort", "INVALID_ARGUMENT") == 1
        assert count("Boom", "UNKNOWN") == 1
        assert count("Stream", "OK") == 1
        assert count("Missing", "UNIMPLEMENTED") is None  # not served: not wrapped, the label set stays bounded
        assert reg.get_sample_value("fedcoord_rpc_duration_seconds_count", {"method": "/t.S/Ok"}) == 2
        assert (reg.get_sample_value("fedcoord_rpc_duration_seconds_sum", {"method": "/t.S/Stream"}) or 0) > 0

    run(main())


def test_the_interceptor_reuses_its_wrapped_handlers() -> None:
    seen: list[tuple[str, str, float]] = []
    interceptor = MetricsInterceptor(lambda m, c, s: seen.append((m, c, s)))
    handler = grpc.unary_unary_rpc_method_handler(_unary_ok)

    class Details:
        method = "/t.S/Ok"
        invocation_metadata = ()

    async def continuation(details: Any) -> Any:
        return handler

    async def main() -> None:
        first = await interceptor.intercept_service(continuation, Details())
        again = await interceptor.intercept_service(continuation, Details())
        assert first is again and first is not handler
        assert await first.unary_unary(b"x", None) == b"x"  # a context without code(): OK

    run(main())
    assert [(m, c) for m, c, _ in seen] == [("/t.S/Ok", "OK")]


# ---------------------------------------------------------------------------------- logs


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


def test_json_log_lines(root_logger: logging.Logger) -> None:
    out = io.StringIO()
    setup_logging("json", "debug", fields={"node_id": "n1"}, stream=out)
    log = logging.getLogger("fedcoord.test")
    log.debug("hello %s", "world", extra={"task_id": "t-1", "n": 3, "obj": object()})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed")
    first, second = (orjson.loads(line) for line in out.getvalue().splitlines())
    assert first["level"] == "debug" and first["logger"] == "fedcoord.test" and first["msg"] == "hello world"
    assert first["node_id"] == "n1" and first["task_id"] == "t-1" and first["n"] == 3
    assert first["obj"].startswith("<object object")
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert second["level"] == "error" and "ValueError: boom" in second["exc"]


def test_setup_logging_replaces_its_own_handler(root_logger: logging.Logger) -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("text", "info", stream=first)
    h = setup_logging("text", "warning", fields={"node_id": "n2"}, stream=second)
    assert sum(1 for x in root_logger.handlers if type(x) is type(h)) == 1
    log = logging.getLogger("fedcoord.test")
    log.info("not shown")
    log.warning("shown", extra={"peer": "n3"})
    assert first.getvalue() == ""
    assert second.getvalue().rstrip().endswith("WARNING fedcoord.test: shown node_id=n2 peer=n3")
    with pytest.raises(ValueError, match="log format"):
        setup_logging("xml")
    with pytest.raises(ValueError, match="log level"):
        setup_logging("text", "loud")


def test_json_formatter_alone() -> None:
    rec = logging.LogRecord("x", logging.INFO, __file__, 1, "m %d", (1,), None)
    assert orjson.loads(JsonFormatter().format(rec))["msg"] == "m 1"
