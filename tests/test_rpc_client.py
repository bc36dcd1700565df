"""The node's gRPC clients against a real LocalNode (test Redis) served by a real NodeServer on a
free loopback port: every operation round-trips with the async and the sync client, status codes
come back as the domain's errors, ``submit_one`` batches behind the callers' backs (one bad spec
fails only its caller; a full node is retried, then refused), and ``fedcoord submit`` /
``fedcoord status`` work against a served node."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import pickle
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import typer
from typer.testing import CliRunner

from fedcoord import cmd_client
from node import LocalNode, TaskSpec, TaskStatus, WorkerSpec
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
from node.model import EventKind, Task
from node.rpc.auth import AuthInterceptor, TlsConfig, Tokens, server_credentials
from node.rpc.certs import make_cluster
from node.rpc.client import AsyncNodeClient, NodeClient, RemoteCallError, error_from_status
from node.rpc.server import NodeServer, ServerOptions
from node.rpc.servicers import ServiceLimits
from tests.conftest import async_wait_until, free_port, wait_until
from tests.node_thread import NodeThread
from tests.test_runtime import fast_config, run

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
C = grpc.StatusCode


class CountCalls(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc has no type hints
    """Counts the calls the server receives, by method name (``Submit``, ``GetTask``...)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        self.calls[details.method.rsplit("/", 1)[-1]] += 1
        return await continuation(details)


def _options(counter: CountCalls | None, limits: ServiceLimits | None, **kw: Any) -> ServerOptions:
    return ServerOptions(
        interceptors=[i for i in (counter, kw.pop("auth", None)) if i is not None],
        limits=limits or ServiceLimits(),
        **kw,
    )


@contextlib.asynccontextmanager
async def served(
    redis_url: str, *, counter: CountCalls | None = None, limits: ServiceLimits | None = None, **kw: Any
) -> AsyncIterator[tuple[LocalNode, NodeServer]]:
    async with (
        LocalNode.open("n1", redis_url, config=fast_config()) as node,
        NodeServer(node, _options(counter, limits, **kw)) as server,
    ):
        yield node, server


def client_of(server: NodeServer, **kw: Any) -> AsyncNodeClient:
    return AsyncNodeClient(server.address, insecure=True, **kw)


async def drain(node: LocalNode, worker: str, n: int) -> None:
    """Complete ``n`` tasks on the node itself (frees room for the client's retries)."""
    await node.register_worker(WorkerSpec(worker, concurrency=n))
    done = 0
    while done < n:
        for lease in await node.claim(worker, n - done, wait_s=1.0):
            await node.complete(lease)
            done += 1


# ------------------------------------------------------------------------------------ async client


def test_async_client_round_trips_the_task_operations(redis_url: str) -> None:
    async def main() -> None:
        async with served(redis_url) as (node, server), client_of(server) as c:
            ids = await c.submit([TaskSpec("a", payload=b"p", priority="high", difficulty=3), TaskSpec("b")])
            t = await c.get(ids[0])
            assert (t.id, t.type, t.payload, t.priority, t.difficulty, t.status) == (
                ids[0], "a", b"p", "high", 3, TaskStatus.QUEUED
            )  # fmt: skip
            assert t == await node.get(ids[0])  # the record as the node has it, field by field
            assert await c.cancel(ids[1]) is TaskStatus.QUEUED  # the status it had
            assert (await c.wait(ids[1], timeout_s=5)).status is TaskStatus.CANCELLED
            assert await c.health() == "SERVING"
            s = await c.stats()
            assert (s.node_id, s.state, s.totals["submitted"], s.active_by_status["queued"]) == ("n1", "serving", 2, 1)
            assert s.load.ready == 1 and s.threshold > 0 and s.report is None
            assert s.stats["node_id"] == "n1" and "history" not in s.stats
            s = await c.stats(report=True, history=True)
            assert s.report is not None and s.report["node_id"] == "n1" and isinstance(s.stats["history"], list)
            assert json.loads(json.dumps(s.to_dict()))["load"]["ready"] == 1

    run(main())


def test_async_client_round_trips_the_worker_operations(redis_url: str) -> None:
    async def main() -> None:
        async with served(redis_url) as (node, server), client_of(server) as c:
            info = await c.register_worker(WorkerSpec("w1", capabilities=["gpu"], skill=5, concurrency=3))
            assert (info.id, info.capabilities, info.skill, info.concurrency, info.healthy) == (
                "w1", ("gpu",), 5, 3, True
            )  # fmt: skip
            ids = await c.submit(
                [TaskSpec("job", payload=f"{i}".encode(), required_capabilities=["gpu"]) for i in range(3)]
            )
            leases = await c.claim("w1", max_tasks=3, wait_s=1.0)
            assert sorted(x.task_id for x in leases) == sorted(ids)
            assert all(
                x.worker_id == "w1" and x.attempt == 1 and x.spec.required_capabilities == ("gpu",) for x in leases
            )
            first, second, third = leases
            await c.start_task(first)
            await c.complete(first, result=b"done")
            await c.fail(second, "no luck", retry=False)
            assert await c.cancel(third.task_id) is TaskStatus.ASSIGNED
            hb = await c.heartbeat("w1")
            assert hb.healthy and hb.revoked == ((third.task_id, third.attempt),)
            done = await c.wait(first.task_id, timeout_s=5)
            assert (done.status, done.result, done.assigned_worker) == (TaskStatus.COMPLETED, b"done", "w1")
            failed = await c.get(second.task_id)
            assert (failed.status, failed.error) == (TaskStatus.FAILED, "no luck")
            await c.requeue(second.task_id)
            assert (await c.get(second.task_id)).status is TaskStatus.QUEUED
            assert [w.id for w in (await c.stats()).workers] == ["w1"]
            await c.deregister_worker("w1")
            assert (await node.workers()) == []

    run(main())


def test_async_subscribe_streams_the_nodes_events(redis_url: str) -> None:
    async def main() -> None:
        async with served(redis_url) as (node, server), client_of(server) as c:
            async with c.subscribe() as events:
                await async_wait_until(lambda: bool(node._hub), what="the server's subscription")
                (tid,) = await c.submit([TaskSpec("watched")])
                e = await anext(events)
                assert (e.kind, e.task_id, e.status, e.type) == (EventKind.NEW_TASK, tid, TaskStatus.QUEUED, "watched")
                await c.cancel(tid)
                e = await anext(events)
                assert (e.kind, e.task_id, e.status) == (EventKind.TASK_UPDATED, tid, TaskStatus.CANCELLED)
            await async_wait_until(lambda: not node._hub, what="the server to drop the subscription")

    run(main())


# ------------------------------------------------------------------------------------ errors


def test_status_codes_come_back_as_the_domain_errors_with_their_fields(redis_url: str) -> None:
    async def main() -> None:
        async with served(redis_url) as (_node, server), client_of(server) as c:
            with pytest.raises(TaskNotFoundError) as nf:
                await c.get("nope")
            assert (nf.value.ident, str(nf.value)) == ("nope", "task 'nope' not found")
            with pytest.raises(WorkerNotFoundError):
                await c.claim("ghost")
            with pytest.raises(ValidationError) as ve:
                await c.submit([TaskSpec("ok"), TaskSpec("ok"), TaskSpec("bad", difficulty=11)])
            assert (ve.value.field, ve.value.index, ve.value.limit) == ("difficulty", 2, "1..10")
            assert str(ve.value) == "specs[2].difficulty: 11 out of range (limit: 1..10)"
            with pytest.raises(ValidationError) as ve:
                await c.submit([TaskSpec("x", dependencies=["not-a-task"])])
            assert (ve.value.field, ve.value.index) == ("dependencies", 0)
            with pytest.raises(ValidationError) as ve:
                await c.claim("w", max_tasks=-1)
            assert (ve.value.field, ve.value.limit) == ("max_tasks", "1..10000")
            await c.register_worker(WorkerSpec("w"))
            (tid,) = await c.submit([TaskSpec("t")])
            with pytest.raises(InvalidTransitionError) as it:
                await c.requeue(tid)
            assert (it.value.task_id, it.value.status, it.value.operation) == (tid, "queued", "requeue")
            (lease,) = await c.claim("w")
            await c.complete(lease)
            with pytest.raises(StaleLeaseError) as st:
                await c.complete(lease)
            assert (st.value.task_id, st.value.attempt) == (tid, 1)
            (other,) = await c.submit([TaskSpec("slow")])
            with pytest.raises(WaitTimeoutError):
                await c.wait(other, timeout_s=0.05)
        async with AsyncNodeClient(f"127.0.0.1:{free_port()}", insecure=True) as c:
            with pytest.raises(NodeUnavailableError, match="is unavailable"):
                await c.get("x")

    run(main())


def test_tokens_and_tls_are_sent_and_refusals_are_not_authorized(redis_url: str, tmp_path: Path) -> None:
    make_cluster(tmp_path, ["node", "client"], ["127.0.0.1", "localhost"])
    tokens = Tokens.load(tmp_path / "tokens.toml")
    creds = server_credentials(TlsConfig(tmp_path / "node.pem", tmp_path / "node.key"))

    async def main() -> None:
        async with served(redis_url, auth=AuthInterceptor(tokens), listen="127.0.0.1:0", credentials=creds) as (
            _node,
            server,
        ):
            address = f"localhost:{server.port}"
            async with AsyncNodeClient(address, ca_file=tmp_path / "ca.pem", token=tokens.client[0]) as c:
                assert len(await c.submit([TaskSpec("secure")])) == 1
            for token in (None, "x" * 32, tokens.worker[0]):
                async with AsyncNodeClient(address, ca_file=tmp_path / "ca.pem", token=token) as c:
                    with pytest.raises(NotAuthorizedError):
                        await c.submit([TaskSpec("secure")])
            async with AsyncNodeClient(address, insecure=True, token=tokens.client[0]) as c:
                with pytest.raises(NodeUnavailableError):  # plaintext to a TLS port: no handshake
                    await c.get("x")

    run(main())


def test_plaintext_is_refused_off_loopback_and_tls_files_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="loopback"):
        NodeClient("10.1.2.3:50051", insecure=True)
    with pytest.raises(ValidationError, match="tls ca"):
        NodeClient("localhost:50051", ca_file=tmp_path / "missing.pem")
    with pytest.raises(ValidationError, match="exclude each other"):
        NodeClient("localhost:50051", insecure=True, ca_file=tmp_path / "ca.pem")
    with pytest.raises(ValidationError, match="max_batch"):
        NodeClient("localhost:50051", insecure=True, max_batch=0)


@pytest.mark.parametrize(
    ("code", "details", "cls", "fields"),
    [
        (C.INVALID_ARGUMENT, "specs[2].difficulty: 11 out of range (limit: 1..10)", ValidationError,
         {"field": "difficulty", "index": 2, "batch": "specs", "limit": "1..10", "detail": "11 out of range"}),
        (C.INVALID_ARGUMENT, "tasks[0].priority: unknown priority 9 (limit: 0..4)", ValidationError,
         {"field": "priority", "index": 0, "batch": "tasks"}),
        (C.INVALID_ARGUMENT, "max_queue: 0 (limit: 1..100000)", ValidationError, {"field": "max_queue", "index": None}),
        (C.INVALID_ARGUMENT, "something odd happened", ValidationError, {"field": "request"}),
        (C.NOT_FOUND, "task 't-1' not found", TaskNotFoundError, {"ident": "t-1"}),
        (C.NOT_FOUND, "worker 'w-1' not found", WorkerNotFoundError, {"ident": "w-1"}),
        (C.NOT_FOUND, "peer 'n9' not found", NotFoundError, {"kind": "peer", "ident": "n9"}),
        (C.FAILED_PRECONDITION, "lease on task 't-1' attempt 2 is stale: the task is queued at attempt 3",
         StaleLeaseError, {"task_id": "t-1", "attempt": 2, "reason": "the task is queued at attempt 3"}),
        (C.FAILED_PRECONDITION, "cannot requeue task 't-1': it is completed; requeue needs status failed",
         InvalidTransitionError, {"task_id": "t-1", "status": "completed", "allowed": "status failed"}),
        (C.FAILED_PRECONDITION, "hand-off is not enabled on this node", RemoteCallError,
         {"code": "FAILED_PRECONDITION"}),
        (C.RESOURCE_EXHAUSTED, "node holds 5 unfinished tasks", OverloadedError, {}),
        (C.UNAVAILABLE, "the node is draining", NodeUnavailableError, {}),
        (C.DEADLINE_EXCEEDED, "task 'x' is still queued after 1 s", WaitTimeoutError, {}),
        (C.UNAUTHENTICATED, "unknown token", NotAuthorizedError, {}),
        (C.PERMISSION_DENIED, "Submit needs the client or admin role", NotAuthorizedError, {}),
        (C.INTERNAL, "internal error: KeyError", RemoteCallError, {"code": "INTERNAL"}),
    ],
)  # fmt: skip
def test_error_from_status_parses_what_the_node_formats(
    code: grpc.StatusCode, details: str, cls: type[FedcoordError], fields: dict[str, Any]
) -> None:
    err = error_from_status(code, details, address="127.0.0.1:1")
    assert type(err) is cls
    assert {k: getattr(err, k) for k in fields} == fields
    parsed = (ValidationError, TaskNotFoundError, WorkerNotFoundError, StaleLeaseError, InvalidTransitionError)
    if cls in parsed and fields.get("field") != "request":
        assert str(err) == details  # reads exactly as it did on the node
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls and str(back) == str(err)


# ------------------------------------------------------------------------------------ submit_one


def test_submit_one_batches_concurrent_callers_into_few_calls(redis_url: str) -> None:
    counter = CountCalls()

    async def main() -> None:
        async with served(redis_url, counter=counter) as (node, server):
            async with client_of(server, linger_ms=50) as c:
                ids = await asyncio.gather(
                    *(c.submit_one(TaskSpec("one", payload=f"{i}".encode())) for i in range(500))
                )
                assert counter.calls["Submit"] == 1
                assert len(set(ids)) == 500
                assert [(await node.get(t)).payload for t in ids[:3]] == [b"0", b"1", b"2"]
            async with client_of(server, linger_ms=50, max_batch=100) as c:
                ids = await asyncio.gather(*(c.submit_one(TaskSpec("one")) for _ in range(250)))
                assert counter.calls["Submit"] == 1 + 3  # batches of 100, 100, 50
                assert len(set(ids)) == 250

    run(main())


def test_one_bad_spec_in_a_lingering_batch_fails_only_its_caller(redis_url: str) -> None:
    counter = CountCalls()

    async def main() -> None:
        async with served(redis_url, counter=counter) as (node, server), client_of(server, linger_ms=50) as c:
            specs = [TaskSpec("good") for _ in range(100)]
            specs[37] = TaskSpec("bad", difficulty=11)
            specs[80] = TaskSpec("orphan", dependencies=["no-such-task"])
            results = await asyncio.gather(*(c.submit_one(s) for s in specs), return_exceptions=True)
            errors = {i: r for i, r in enumerate(results) if isinstance(r, BaseException)}
            assert sorted(errors) == [37, 80]
            assert isinstance(errors[37], ValidationError) and errors[37].field == "difficulty"
            assert errors[37].index is None  # one spec of its caller: no index
            assert str(errors[37]) == "difficulty: 11 out of range (limit: 1..10)"
            assert isinstance(errors[80], ValidationError) and errors[80].field == "dependencies"
            assert counter.calls["Submit"] == 3  # refused twice, each time without the culprit
            good = [r for r in results if isinstance(r, str)]
            assert len(set(good)) == 98 and (await node.stats()).totals["submitted"] == 98
            with pytest.raises(ValidationError, match="priority"):  # cannot even be encoded: refused at once
                await c.submit_one(TaskSpec("x", priority="urgent"))
            with pytest.raises(ValidationError, match="must be a TaskSpec"):
                await c.submit_one(("x",))  # type: ignore[arg-type]
            assert counter.calls["Submit"] == 3

    run(main())


def test_a_full_node_is_retried_with_backoff_then_refused_with_overloaded(redis_url: str) -> None:
    counter = CountCalls()
    limits = ServiceLimits(max_active_tasks=5)

    async def main() -> None:
        async with served(redis_url, counter=counter, limits=limits) as (node, server):
            async with client_of(server, linger_ms=1, max_batch=5) as c:
                first = [c.submit_one_nowait(TaskSpec("a")) for _ in range(5)]
                await asyncio.wait(first)
                assert all(f.result() for f in first)
                later = [c.submit_one_nowait(TaskSpec("b")) for _ in range(5)]
                await async_wait_until(lambda: counter.calls["Submit"] >= 3, what="refusals retried")
                assert not any(f.done() for f in later)  # the node is full: they wait, retried
                await drain(node, "w", 5)
                await asyncio.wait(later)
                assert len({f.result() for f in later}) == 5
            async with client_of(server, linger_ms=1, timeout_s=0.2) as c:
                with pytest.raises(OverloadedError, match="gave up after"):
                    await c.submit_one(TaskSpec("c"))
                with pytest.raises(OverloadedError):  # a batch submit retries too, then gives up
                    await c.submit([TaskSpec("c")])

    run(main())


def test_the_client_bounds_what_is_pending_and_producers_wait_for_room(redis_url: str) -> None:
    limits = ServiceLimits(max_active_tasks=0)  # nothing gets in until the test says so

    async def main() -> None:
        async with served(redis_url, limits=limits) as (node, server):
            c = client_of(server, linger_ms=1, max_pending=3)
            await c.connect()
            pending = [c.submit_one_nowait(TaskSpec("p")) for _ in range(3)]
            with pytest.raises(OverloadedError, match="max_pending"):
                c.submit_one_nowait(TaskSpec("p"))
            blocked = asyncio.ensure_future(c.enqueue(TaskSpec("p")))
            await asyncio.sleep(0)  # one turn of the loop (not a timed wait): it runs up to its wait for room
            assert not blocked.done()
            server.servicer.limits = ServiceLimits()  # room at last: the retries get in
            await asyncio.wait(pending)
            last = await (await blocked)
            assert len({f.result() for f in pending} | {last}) == 4
            await c.close()
            assert (await node.stats()).totals["submitted"] == 4

    run(main())


def test_close_sends_what_is_still_lingering(redis_url: str) -> None:
    async def main() -> None:
        async with served(redis_url) as (node, server):
            c = client_of(server, linger_ms=60_000)
            await c.connect()
            futures = [c.submit_one_nowait(TaskSpec("late")) for _ in range(20)]
            assert not any(f.done() for f in futures)
            await c.close()
            assert all(f.done() for f in futures)
            assert (await node.stats()).totals["submitted"] == 20
            with pytest.raises(RuntimeError, match="closed"):
                c.submit_one_nowait(TaskSpec("too late"))

    run(main())


# ------------------------------------------------------------------------------------ sync client


class BackgroundNode(NodeThread):
    """A LocalNode and its NodeServer on an event loop of their own, in a thread: for the sync
    client and the command line, which block the calling thread."""

    def __init__(self, redis_url: str, options: ServerOptions | None = None):
        super().__init__("test-node")
        self.redis_url = redis_url
        self.options = options or ServerOptions()
        self.address = ""

    async def _serve(self, stop: asyncio.Event) -> None:
        async with (
            LocalNode.open("n1", self.redis_url, config=fast_config()) as node,
            NodeServer(node, self.options) as server,
        ):
            self.node, self.address = node, server.address
            self.ready()
            await stop.wait()

    def get(self, task_id: str) -> Task:
        return self.call(lambda node: node.get(task_id))


@pytest.fixture
def bg(redis_url: str) -> Iterator[BackgroundNode]:
    with BackgroundNode(redis_url) as b:
        yield b


def test_sync_client_round_trips_every_operation(bg: BackgroundNode) -> None:
    with NodeClient(bg.address, insecure=True) as c:
        ids = c.submit([TaskSpec("s", payload=b"1"), TaskSpec("s", payload=b"2")])
        assert c.get(ids[0]).payload == b"1"
        c.register_worker(WorkerSpec("w", concurrency=2))
        leases = c.claim("w", 2, wait_s=1.0)
        assert sorted(x.task_id for x in leases) == sorted(ids)
        c.start_task(leases[0])
        c.complete(leases[0], b"ok")
        c.fail(leases[1], "boom", retry=False)
        assert c.wait(leases[0].task_id, timeout_s=5).result == b"ok"
        c.requeue(leases[1].task_id)
        assert c.cancel(leases[1].task_id) is TaskStatus.QUEUED
        assert c.heartbeat("w").healthy
        s = c.stats(report=True)
        assert s.totals["completed"] == 1 and s.report is not None
        assert c.health() == "SERVING"
        with pytest.raises(TaskNotFoundError):
            c.get("nope")
        with pytest.raises(StaleLeaseError):
            c.complete(leases[0])
        c.deregister_worker("w")
        with pytest.raises(WorkerNotFoundError):
            c.heartbeat("w")


def test_sync_subscribe_streams_events(bg: BackgroundNode) -> None:
    assert bg.node is not None
    node = bg.node
    with NodeClient(bg.address, insecure=True) as c, c.subscribe() as events:
        wait_until(lambda: bool(node._hub), what="the server's subscription")
        (tid,) = c.submit([TaskSpec("watched")])
        e = next(events)
        assert (e.kind, e.task_id) == (EventKind.NEW_TASK, tid)


def test_sync_submit_one_from_many_threads_returns_futures_at_once_and_batches(redis_url: str) -> None:
    counter = CountCalls()
    with BackgroundNode(redis_url, _options(counter, None)) as b, NodeClient(b.address, insecure=True) as c:

        def produce(n: int) -> list[concurrent.futures.Future[str]]:
            return [c.submit_one(TaskSpec("threaded", payload=f"{n}-{i}".encode())) for i in range(500)]

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [f for fs in pool.map(produce, range(4)) for f in fs]
        ids = [f.result(30) for f in futures]
        assert len(set(ids)) == 2000
        assert counter.calls["Submit"] < 200  # batched: far fewer calls than tasks
        assert not futures[0].cancel()  # queued means sent: it cannot be cancelled
        assert b.get(ids[-1]).payload == b"3-499"


def test_sync_one_bad_spec_fails_only_its_future_and_close_flushes(bg: BackgroundNode) -> None:
    c = NodeClient(bg.address, insecure=True, linger_ms=60_000)
    futures = [c.submit_one(TaskSpec("s", difficulty=11 if i == 3 else 1)) for i in range(10)]
    c.flush()
    assert isinstance(futures[3].exception(), ValidationError)
    assert sum(1 for f in futures if f.exception() is None) == 9
    lingering = [c.submit_one(TaskSpec("late")) for _ in range(5)]
    assert not any(f.done() for f in lingering)
    c.close()
    assert all(f.done() and f.exception() is None for f in lingering)
    assert bg.call(lambda node: node.stats()).totals["submitted"] == 14
    with pytest.raises(RuntimeError, match="closed"):
        c.submit_one(TaskSpec("too late"))


def test_sync_client_refuses_nowait_beyond_max_pending(redis_url: str) -> None:
    options = _options(None, ServiceLimits(max_active_tasks=0))
    with BackgroundNode(redis_url, options) as b:
        c = NodeClient(b.address, insecure=True, max_pending=2, timeout_s=0.2)
        futures = [c.submit_one_nowait(TaskSpec("x")) for _ in range(2)]
        with pytest.raises(OverloadedError, match="max_pending"):
            c.submit_one_nowait(TaskSpec("x"))
        c.close()  # the node refuses them until the client's timeout: they fail, close returns
        assert all(isinstance(f.exception(), OverloadedError) for f in futures)


# ------------------------------------------------------------------------------------ command line

CLI_ENV: dict[str, str | None] = {"COLUMNS": "200", "NO_COLOR": "1", "FEDCOORD_TOKEN": None, "FEDCOORD_NODE": None}
cli = typer.Typer()
cli.command("submit")(cmd_client.submit)
cli.command("status")(cmd_client.status)
runner = CliRunner()


def fedcoord(*args: str) -> Any:
    return runner.invoke(cli, list(args), env=CLI_ENV)


def test_cli_submit_prints_ids_and_json(bg: BackgroundNode) -> None:
    r = fedcoord("submit", "resize", "--payload", "img", "--count", "3", "--priority", "high", "--node", bg.address,
                 "--insecure")  # fmt: skip
    assert r.exit_code == 0, r.output
    ids = r.stdout.split()
    assert len(ids) == 3
    t = bg.get(ids[0])
    assert (t.type, t.payload, t.priority) == ("resize", b"img", "high")
    r = fedcoord("submit", "x", "--json", "--capability", "gpu", "-c", "pdf", "--node", bg.address, "--insecure")
    assert r.exit_code == 0, r.output
    (tid,) = json.loads(r.stdout)["ids"]
    assert bg.get(tid).required_capabilities == ("gpu", "pdf")


def test_cli_submit_wait_prints_the_outcome(bg: BackgroundNode, tmp_path: Path) -> None:
    working: list[asyncio.Task[None]] = []

    async def echo(node: LocalNode) -> None:
        while True:
            for lease in await node.claim("echo", 4, wait_s=1.0):
                if lease.payload == b"fail":
                    await node.fail(lease, "asked to", retry=False)
                else:
                    await node.complete(lease, result=lease.payload.upper())

    async def start(node: LocalNode) -> None:
        await node.register_worker(WorkerSpec("echo", concurrency=4))
        working.append(asyncio.create_task(echo(node)))

    async def stop(_node: LocalNode) -> None:
        working[0].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await working[0]

    bg.call(start)
    try:
        payload = tmp_path / "p.bin"
        payload.write_bytes(b"hello")
        r = fedcoord("submit", "echo", "--payload-file", str(payload), "--wait", "--json", "--node", bg.address,
                     "--insecure")  # fmt: skip
        assert r.exit_code == 0, r.output
        (task,) = json.loads(r.stdout)["tasks"]
        assert (task["status"], task["result"], task["type"]) == ("completed", "HELLO", "echo")
        r = fedcoord("submit", "echo", "--payload", "fail", "--wait", "--node", bg.address, "--insecure")
        assert r.exit_code == cmd_client.EXIT_TASKS_FAILED, r.output
        assert "failed  error: asked to" in r.stdout
    finally:
        bg.call(stop)


def test_cli_submit_file_takes_one_spec_a_line_and_names_the_bad_line(bg: BackgroundNode, tmp_path: Path) -> None:
    f = tmp_path / "tasks.jsonl"
    f.write_text(
        '{"type": "a", "id": "first", "payload": "x"}\n'
        "\n# a comment\n"
        '{"type": "b", "dependencies": ["first"], "priority": "low", "payload_base64": "AAE="}\n'
        '{"difficulty": 2}\n'
    )
    r = fedcoord("submit", "default-type", "--file", str(f), "--priority", "high", "--node", bg.address, "--insecure")
    assert r.exit_code == 0, r.output
    ids = r.stdout.split()
    assert ids[0] == "first"
    tasks = [bg.get(t) for t in ids]
    assert [(t.type, t.priority, t.status) for t in tasks] == [
        ("a", "high", TaskStatus.QUEUED), ("b", "low", TaskStatus.PENDING), ("default-type", "high", TaskStatus.QUEUED)
    ]  # fmt: skip
    assert tasks[1].payload == b"\x00\x01" and tasks[2].difficulty == 2
    f.write_text('{"type": "a"}\n{"type": "a", "difficulty": 11}\n')
    r = fedcoord("submit", "--file", str(f), "--node", bg.address, "--insecure")
    assert r.exit_code == 1
    assert f"{f} line 2: difficulty: 11 out of range" in " ".join(r.stderr.split())
    f.write_text('{"type": "a", "colour": "red"}\n')
    r = fedcoord("submit", "--file", str(f), "--node", bg.address, "--insecure")
    assert r.exit_code == 1 and "colour: unknown field" in r.stderr
    assert "Traceback" not in r.output


def test_cli_status_shows_the_node_and_its_report(bg: BackgroundNode) -> None:
    with NodeClient(bg.address, insecure=True) as c:
        c.register_worker(WorkerSpec("w-status", capabilities=["gpu"], concurrency=2))
        c.submit([TaskSpec("t") for _ in range(3)])
    r = fedcoord("status", "--node", bg.address, "--insecure", "--report")
    assert r.exit_code == 0, r.output
    for text in ("node n1 at", "load", "ready", "threshold", "active tasks by status", "totals", "w-status", "gpu",
                 "completion mean", "throughput", "error rate", "performance report", "scaling advice"):  # fmt: skip
        assert text in r.stdout, text
    r = fedcoord("status", "--json", "--node", bg.address, "--insecure")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert (doc["node_id"], doc["load"]["ready"], doc["totals"]["submitted"], doc["report"]) == ("n1", 3, 3, None)
    assert doc["workers"][0]["id"] == "w-status" and "completion_s" in doc["stats"]


def test_cli_defaults_to_the_clients_default_address_and_loads_grpc_only_when_it_runs() -> None:
    from node.rpc.client import DEFAULT_ADDRESS  # noqa: PLC0415

    assert cmd_client.DEFAULT_ADDRESS == DEFAULT_ADDRESS
    code = "import sys, fedcoord.cmd_client; print('grpc' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cli_errors_are_one_line_without_a_traceback(bg: BackgroundNode) -> None:
    # (waiting 1 s for a connection, not the default 10)
    r = fedcoord("status", "--node", f"127.0.0.1:{free_port()}", "--insecure", "--connect-timeout", "1")
    assert r.exit_code == 1
    assert "cannot reach the node at 127.0.0.1:" in r.stderr and "Traceback" not in r.output
    assert len(r.stderr.strip().splitlines()) == 1
    r = fedcoord("status", "--node", bg.address, "--connect-timeout", "1")  # TLS to a plaintext node
    assert r.exit_code == 1 and "--insecure" in r.stderr
    r = fedcoord("submit", "x", "--node", "10.0.0.1:50051", "--insecure")
    assert r.exit_code == 1 and "loopback" in r.stderr
    r = fedcoord("submit", "--node", bg.address, "--insecure")
    assert r.exit_code == 2 and "TYPE" in r.output  # a usage error


def test_cli_bad_token_is_not_authorized(redis_url: str) -> None:
    tokens = Tokens.generate()
    with BackgroundNode(redis_url, _options(None, None, auth=AuthInterceptor(tokens))) as b:
        r = fedcoord("status", "--node", b.address, "--insecure", "--token", "y" * 32)
        assert r.exit_code == 1 and "refused the call (UNAUTHENTICATED): unknown token" in r.stderr
        assert "--token" in r.stderr and "Traceback" not in r.output
        r = runner.invoke(cli, ["status", "--node", b.address, "--insecure", "--json"],
                          env={**CLI_ENV, "FEDCOORD_TOKEN": tokens.client[0]})  # fmt: skip
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["node_id"] == "n1"


def test_cli_status_watch_repeats_until_ctrl_c(bg: BackgroundNode) -> None:
    code = "import sys; from tests.test_rpc_client import cli; sys.exit(cli(prog_name='fedcoord'))"
    args = ["status", "--watch", "0.2", "--json", "--node", bg.address, "--insecure"]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        docs = [json.loads(proc.stdout.readline()) for _ in range(2)]  # one JSON document a line
        assert [d["node_id"] for d in docs] == ["n1", "n1"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_lists_and_context_of_the_wrong_type_are_refused_as_the_node_would(redis_url: str) -> None:
    """protobuf takes any iterable for a repeated field: "gpu" would become g, p, u and a dict its
    keys. The client refuses them, naming the field, as LocalNode does."""
    bad: list[tuple[TaskSpec, str]] = [
        (TaskSpec("t", required_capabilities="gpu"), "required_capabilities"),
        (TaskSpec("t", required_capabilities={"gpu": 1}), "required_capabilities"),  # type: ignore[arg-type]
        (TaskSpec("t", required_capabilities=[1]), "required_capabilities"),  # type: ignore[list-item]
        (TaskSpec("t", dependencies="abc"), "dependencies"),
        (TaskSpec("t", dependencies={"a": "b"}), "dependencies"),  # type: ignore[arg-type]
        (TaskSpec("t", context=[("k", "v")]), "context"),  # type: ignore[arg-type]
        (TaskSpec("t", context={"k": 1}), "context"),  # type: ignore[dict-item]
    ]

    async def main() -> None:
        async with served(redis_url) as (node, server), client_of(server) as c:
            for spec, field in bad:
                with pytest.raises(ValidationError) as local:
                    await node.submit([TaskSpec("ok"), spec])
                with pytest.raises(ValidationError) as remote:
                    await c.submit([TaskSpec("ok"), spec])
                assert (remote.value.field, remote.value.index) == (field, 1), spec
                assert (local.value.field, str(local.value)) == (field, str(remote.value)), spec
            ids = await c.submit([TaskSpec("t", required_capabilities=("gpu",), context={"k": "v"})])
            t = await node.get(ids[0])
            assert t.required_capabilities == ("gpu",) and dict(t.context) == {"k": "v"}
            assert (await node.stats()).totals["submitted"] == 1

    run(main())


def test_a_submit_that_fails_part_way_carries_the_ids_it_added(redis_url: str) -> None:
    """Batches before the failing one stay submitted: their ids come with the error, so that a
    caller does not submit them again."""
    with BackgroundNode(redis_url, ServerOptions(limits=ServiceLimits(max_active_tasks=15))) as b:
        with NodeClient(b.address, insecure=True, max_batch=5, timeout_s=0.2) as c, pytest.raises(OverloadedError) as e:
            c.submit([TaskSpec("a") for _ in range(25)])
        ids = e.value.submitted_ids  # type: ignore[attr-defined]
        assert len(set(ids)) == 15 and all(b.get(t).type == "a" for t in ids)

        async def go() -> None:
            async with AsyncNodeClient(b.address, insecure=True, max_batch=5, timeout_s=0.2) as c:
                with pytest.raises(OverloadedError) as e:
                    await c.submit([TaskSpec("b") for _ in range(5)])
                assert e.value.submitted_ids == []  # type: ignore[attr-defined]

        asyncio.run(go())


def test_cli_submit_file_prints_the_ids_submitted_before_an_error(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import node.rpc.client as client_module  # noqa: PLC0415 - patched where the command imports it

    monkeypatch.setattr(cmd_client, "CHUNK", 10)
    monkeypatch.setattr(client_module, "NodeClient", functools.partial(NodeClient, max_batch=5, timeout_s=0.2))
    f = tmp_path / "tasks.jsonl"
    f.write_text("".join(f'{{"type": "t", "payload": "task {i}"}}\n' for i in range(25)))
    with BackgroundNode(redis_url, ServerOptions(limits=ServiceLimits(max_active_tasks=15))) as b:
        r = fedcoord("submit", "--file", str(f), "--node", b.address, "--insecure")
        assert r.exit_code == 1, r.output
        ids = r.stdout.split()
        assert len(set(ids)) == 15 and [b.get(t).payload for t in ids] == [f"task {i}".encode() for i in range(15)]
        err = " ".join(r.stderr.split())
        assert "15 tasks were submitted before the error" in err and "Traceback" not in r.output, err
        for t in ids:  # room again: the same with --json, the ids as one document
            b.call(functools.partial(LocalNode.cancel, task_id=t))
        r = fedcoord("submit", "--file", str(f), "--json", "--node", b.address, "--insecure")
        assert r.exit_code == 1, r.output
        assert [b.get(t).payload for t in json.loads(r.stdout)["ids"]] == [f"task {i}".encode() for i in range(15)]
