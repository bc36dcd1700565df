"""Workers over gRPC: real LocalNodes on the test Redis, real NodeServers on free ports, Worker
objects in this process and ``python -m node.rpc.worker`` processes (the ``fedcoord worker``
command): handlers by type, errors and rejections, skill against difficulty, revoked leases,
a node restarted under its workers (TLS and tokens on), kill -9 and SIGTERM of a worker process."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from node import LocalNode, NodeConfig, TaskSpec, TaskStatus, WorkerSpec
from node.errors import ValidationError
from node.model import Lease, Limits
from node.rpc.auth import AuthInterceptor, TlsConfig, Tokens, server_credentials
from node.rpc.certs import make_cluster
from node.rpc.handlers import (
    BuiltinOptions,
    Handler,
    LeaseRevoked,
    Mode,
    Reject,
    TaskFailed,
    TransientError,
    WorkContext,
    build_handlers,
    builtins,
    error_text,
    handler,
    load_module,
    load_spec,
    to_result,
)
from node.rpc.server import NodeServer, ServerOptions
from node.rpc.worker import Worker, WorkerRefusedError, _Conn
from tests.conftest import async_wait_until, async_wait_until_async, free_port
from tests.test_runtime import fast_config, run

ROOT = Path(__file__).resolve().parent.parent
COMPLETED, FAILED, CANCELLED = TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED


def config(**core: Any) -> NodeConfig:
    core.setdefault("backoff_base_s", 0.01)
    core.setdefault("backoff_max_s", 0.05)
    return fast_config(**core)


@contextlib.asynccontextmanager
async def served(
    redis_url: str, *, node_id: str = "wk", listen: str = "127.0.0.1:0", cfg: NodeConfig | None = None, **opts: Any
) -> AsyncIterator[tuple[LocalNode, NodeServer]]:
    async with LocalNode.open(node_id, redis_url=redis_url, config=cfg or config()) as node:
        server = NodeServer(node, ServerOptions(listen=listen, **opts))
        await server.start()
        try:
            yield node, server
        finally:
            await server.stop()


def make_worker(address: str, spec: WorkerSpec, handlers: Any, **kw: Any) -> Worker:
    kw.setdefault("insecure", True)
    kw.setdefault("heartbeat_s", 0.05)
    kw.setdefault("reconnect_min_s", 0.02)
    kw.setdefault("reconnect_max_s", 0.2)
    kw.setdefault("grace_s", 10.0)
    return Worker(address, spec, handlers, **kw)


@contextlib.asynccontextmanager
async def attached(address: str, spec: WorkerSpec, handlers: Any, **kw: Any) -> AsyncIterator[Worker]:
    """A Worker running in this process, registered; stopped (gracefully) at the end."""
    w = make_worker(address, spec, handlers, **kw)
    task = asyncio.create_task(w.run())
    try:
        await async_wait_until(lambda: w.stats.connected or task.done(), 10, f"worker {spec.id} registered")
        if task.done():
            task.result()
        yield w
    finally:
        w.stop()
        await asyncio.wait_for(task, 30)


async def finished(node: LocalNode, ids: Sequence[str], timeout_s: float = 30) -> list[Any]:
    return list(await asyncio.gather(*(node.wait(t, timeout_s) for t in ids)))


# ---------------------------------------------------------------------------------------- handlers alone


def lease(task_type: str = "t", difficulty: int = 1, **spec: Any) -> Lease:
    return Lease("task-1", 1, "w", 0, TaskSpec(task_type, difficulty=difficulty, **spec))


def test_handler_modes_results_and_errors() -> None:
    async def coro(lease: Lease, ctx: WorkContext) -> bytes:
        return b""

    class AsyncCallable:
        async def __call__(self, lease: Lease) -> None:
            return None

    def one_arg(lease: Lease) -> str:
        return "x"

    assert Handler.of(coro).mode is Mode.ASYNC
    assert Handler.of(AsyncCallable()).mode is Mode.ASYNC
    assert not Handler.of(AsyncCallable()).takes_ctx
    h = Handler.of(one_arg)
    assert h.mode is Mode.THREAD and not h.takes_ctx and h.call(lease(), WorkContext("w", 10)) == "x"
    assert Handler.of(one_arg, inline=True).mode is Mode.INLINE
    with pytest.raises(ValidationError, match="inline"):
        Handler.of(coro, inline=True)
    with pytest.raises(ValidationError, match="not callable"):
        Handler.of(42)  # type: ignore[arg-type]
    assert to_result(None) == b"" and to_result("é") == "é".encode() and to_result(bytearray(b"ab")) == b"ab"
    with pytest.raises(TypeError):
        to_result(3)
    assert error_text(ValueError("bad")) == "ValueError: bad" and error_text(KeyError()) == "KeyError"


def test_builtin_handlers_follow_difficulty_and_skill() -> None:
    table = builtins(BuiltinOptions(time_scale=0.001, flaky_rate=0.0, seed=1))
    skilled, novice = WorkContext("w", 10), WorkContext("w", 3)
    assert table["noop"].call(lease(), skilled) == b""

    async def go() -> None:
        assert "slept" in await table["sleep"].call(lease(difficulty=6), skilled)
        with pytest.raises(TaskFailed, match="skill 3 < difficulty 6"):
            await table["sleep"].call(lease(difficulty=6), novice)
        with pytest.raises(TaskFailed, match="skill 3 < difficulty 6"):
            await table["flaky"].call(lease(difficulty=6), novice)
        assert await table["flaky"].call(lease(difficulty=3), novice) == "done by w"
        with pytest.raises(ValueError, match="malformed"):
            await table["flaky"].call(lease(difficulty=1, context={"fault": "poison"}), skilled)
        always = builtins(BuiltinOptions(time_scale=0.001, flaky_rate=1.0))
        with pytest.raises(TransientError):
            await always["flaky"].call(lease(), skilled)

    run(go())
    assert "rounds" in table["cpu"].call(lease(difficulty=2), skilled)
    with pytest.raises(TaskFailed):
        table["cpu"].call(lease(difficulty=4), novice)
    stopped = WorkContext("w", 10)
    stopped.cancelled.set()
    with pytest.raises(LeaseRevoked):
        table["cpu"].call(lease(difficulty=10), stopped)
    with pytest.raises(Reject, match="no handler for task type 'zzz'"):
        table["reject"].call(lease("zzz"), skilled)
    with pytest.raises(ValidationError):
        BuiltinOptions(time_scale=-1)


def test_handlers_load_from_modules_and_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "wk_mod_a.py").write_text(
        "from node.rpc.handlers import handler\n"
        "def rev(lease, ctx):\n    return lease.payload[::-1]\n"
        "HANDLERS = {'rev': rev}\n"
        "@handler('upper', 'up2')\n"
        "async def upper(lease, ctx):\n    return lease.payload.upper()\n"
        "@handler('now', inline=True)\n"
        "def now(lease):\n    return 'now'\n"
        "class K:\n    @staticmethod\n    def m(lease, ctx):\n        return 'k'\n"
    )
    (tmp_path / "wk_mod_dup.py").write_text(
        "from node.rpc.handlers import handler\n"
        "def a(lease, ctx): return 1\n"
        "HANDLERS = {'x': a}\n"
        "@handler('x')\ndef b(lease, ctx): return 2\n"
    )
    (tmp_path / "wk_mod_empty.py").write_text("X = 1\n")
    (tmp_path / "wk_mod_broken.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    table = load_module("wk_mod_a")
    assert sorted(table) == ["now", "rev", "up2", "upper"]
    assert table["upper"].mode is Mode.ASYNC and table["now"].mode is Mode.INLINE and table["rev"].mode is Mode.THREAD
    t, h = load_spec("kk=wk_mod_a:K.m")
    assert t == "kk" and h.call(lease(), WorkContext("w", 1)) == "k"
    assert load_spec("now2=wk_mod_a:now")[1].mode is Mode.THREAD  # marked inline for "now" only
    hs = build_handlers(["wk_mod_a"], ["sleep=wk_mod_a:rev"], default="fail")
    assert hs.get("rev") is not None and hs.get("noop") is not None
    assert hs.get("sleep") is not None and hs.get("sleep").name.endswith("rev")  # type: ignore[union-attr]
    assert hs.get("unknown-type") is hs.default and hs.default is not None and hs.default.name == "builtin:fail"
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: load_module("wk_mod_dup"), "two handlers"),
        (lambda: load_module("wk_mod_empty"), "defines no handlers"),
        (lambda: load_module("wk_mod_broken"), "boom at import"),
        (lambda: load_module("wk_mod_nope"), "cannot import"),
        (lambda: load_spec("x=wk_mod_a"), "TYPE=module:function"),
        (lambda: load_spec("x=wk_mod_a:nope"), "has no 'nope'"),
        (lambda: load_spec("bad type=wk_mod_a:rev"), "task type"),
        (lambda: build_handlers(default="nope"), "not a built-in"),
    ]
    for bad, match in cases:
        with pytest.raises(ValidationError, match=match):
            bad()
    with pytest.raises(ValidationError):
        handler("no spaces allowed")


# ---------------------------------------------------------------------------------------- in-process workers


def test_tasks_run_by_the_handlers_of_their_types(redis_url: str) -> None:
    seen_threads: set[str] = set()

    async def upper(lease: Lease, ctx: WorkContext) -> bytes:
        return lease.payload.upper()

    def rev(lease: Lease, ctx: WorkContext) -> bytes:
        seen_threads.add(threading.current_thread().name)
        return lease.payload[::-1]

    async def go() -> None:
        async with served(redis_url) as (node, server):
            hs = build_handlers(options=BuiltinOptions(time_scale=0.002), extra={"upper": upper, "rev": rev})
            specs = [
                *(TaskSpec("upper", payload=f"up{i}".encode()) for i in range(20)),
                *(TaskSpec("rev", payload=f"rev{i}".encode()) for i in range(20)),
                *(TaskSpec("noop") for _ in range(200)),
                *(TaskSpec("sleep", difficulty=1 + i % 5) for i in range(20)),
                *(TaskSpec("cpu", difficulty=1 + i % 3) for i in range(6)),
            ]
            async with (
                attached(server.address, WorkerSpec("w1", concurrency=8), hs) as w1,
                attached(server.address, WorkerSpec("w2", concurrency=3), hs) as w2,
            ):
                ids = await node.submit(specs)
                done = await finished(node, ids)
                assert all(t.status is COMPLETED for t in done), [t.error for t in done if t.status is not COMPLETED]
                by_id = dict(zip(ids, specs, strict=True))
                for t in done:
                    s = by_id[t.id]
                    if s.type == "upper":
                        assert t.result == s.payload.upper()
                    elif s.type == "rev":
                        assert t.result == s.payload[::-1]
                    elif s.type == "noop":
                        assert t.result == b""
                    else:
                        assert t.result and s.type.encode() in t.result.replace(b"slept", b"sleep")
                assert all(name.startswith("worker-w") for name in seen_threads)
                assert w1.stats.completed + w2.stats.completed == len(specs)
                await async_wait_until(lambda: w1.stats.acked + w2.stats.acked == len(specs), 10, "every result acked")
                assert w1.stats.failed == w2.stats.failed == w1.stats.revoked == 0
            # stopped gracefully: the node forgot them (the stream's end deregisters the worker)
            assert await node.workers() == []

    run(go())


def test_handler_errors_are_retried_and_rejections_are_not(redis_url: str) -> None:
    calls: dict[str, int] = {}

    def count(lease: Lease) -> int:
        calls[lease.task_id] = calls.get(lease.task_id, 0) + 1
        return calls[lease.task_id]

    async def boom(lease: Lease, ctx: WorkContext) -> None:
        count(lease)
        raise RuntimeError("always broken")

    def once(lease: Lease, ctx: WorkContext) -> str:
        if count(lease) == 1:
            raise TransientError("first try fails")
        return "second try"

    def refuse(lease: Lease, ctx: WorkContext) -> None:
        count(lease)
        raise Reject("bad input")

    def wrong_type(lease: Lease, ctx: WorkContext) -> int:
        count(lease)
        return 7

    async def go() -> None:
        async with served(redis_url) as (node, server):
            hs = build_handlers(extra={"boom": boom, "once": once, "refuse": refuse, "int": wrong_type})
            async with attached(server.address, WorkerSpec("w1", concurrency=4), hs) as w:
                ids = await node.submit(
                    [
                        TaskSpec("boom", max_retries=2),
                        TaskSpec("once"),
                        TaskSpec("refuse", max_retries=5),
                        TaskSpec("unknown", max_retries=5),  # no handler: the default rejects it
                        TaskSpec("int", max_retries=1),
                    ]
                )
                boomed, retried, refused, unknown, wrong = await finished(node, ids)
                assert boomed.status is FAILED and boomed.attempt == 3 and calls[ids[0]] == 3
                assert boomed.error == "RuntimeError: always broken"
                assert retried.status is COMPLETED and retried.attempt == 2 and retried.result == b"second try"
                assert refused.status is FAILED and refused.attempt == 1 and refused.error == "Reject: bad input"
                assert unknown.status is FAILED and unknown.attempt == 1 and "no handler" in (unknown.error or "")
                assert wrong.status is FAILED and wrong.attempt == 2 and "TypeError" in (wrong.error or "")
                assert w.stats.failed == 3 + 1 + 1 + 1 + 2 and w.stats.rejected == 2 and w.stats.completed == 1

    run(go())


def test_flaky_and_sleep_fail_when_skill_is_below_difficulty(redis_url: str) -> None:
    async def go() -> None:
        # Without strict matching the node hands a skill-3 worker harder tasks: seed 001 says they fail.
        async with served(redis_url, cfg=config(strict_matching=False)) as (node, server):
            hs = build_handlers(options=BuiltinOptions(time_scale=0.002, flaky_rate=0.0))
            async with attached(server.address, WorkerSpec("novice", skill=3, concurrency=4), hs) as w:
                ids = await node.submit(
                    [
                        TaskSpec("flaky", difficulty=6, max_retries=0),
                        TaskSpec("sleep", difficulty=4, max_retries=0),
                        TaskSpec("flaky", difficulty=3),
                        TaskSpec("sleep", difficulty=2),
                    ]
                )
                hard_flaky, hard_sleep, easy_flaky, easy_sleep = await finished(node, ids)
                assert hard_flaky.status is FAILED and hard_flaky.error == "TaskFailed: skill 3 < difficulty 6"
                assert hard_sleep.status is FAILED and hard_sleep.error == "TaskFailed: skill 3 < difficulty 4"
                assert easy_flaky.status is COMPLETED and easy_sleep.status is COMPLETED
                assert w.stats.failed == 2 and w.stats.completed == 2

    run(go())


def test_revoked_leases_are_dropped_cancelled_or_timed_out(redis_url: str) -> None:
    async_cancelled = asyncio.Event()
    thread_cancelled = threading.Event()
    started = {"async": 0, "thread": 0}

    async def hang(lease: Lease, ctx: WorkContext) -> str:
        started["async"] += 1
        if lease.attempt > 1:
            return "second attempt"
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            async_cancelled.set()
            raise
        return "never"

    def spin(lease: Lease, ctx: WorkContext) -> str:
        started["thread"] += 1
        try:
            for _ in range(3000):
                ctx.sleep(0.01)
        except LeaseRevoked:
            thread_cancelled.set()
            raise
        return "never"

    async def go() -> None:
        async with served(redis_url) as (node, server):
            hs = build_handlers(extra={"hang": hang, "spin": spin})
            async with attached(server.address, WorkerSpec("w1", concurrency=2), hs) as w:
                hang_id, spin_id = await node.submit([TaskSpec("hang", timeout_s=60), TaskSpec("spin", timeout_s=60)])
                await async_wait_until(lambda: w.running == 2, 10, "both running")
                # a lease running across heartbeats is reported started: its timeout counts from there
                await async_wait_until_async(
                    lambda: _status_is(node, spin_id, TaskStatus.IN_PROGRESS), 10, "reported started"
                )
                assert await node.cancel(hang_id) in (TaskStatus.ASSIGNED, TaskStatus.IN_PROGRESS)
                assert await node.cancel(spin_id) in (TaskStatus.ASSIGNED, TaskStatus.IN_PROGRESS)
                await async_wait_until(lambda: w.stats.revoked == 2, 10, "both revoked")
                await asyncio.wait_for(async_cancelled.wait(), 10)
                await async_wait_until(thread_cancelled.is_set, 10, "the thread handler saw the cancellation")
                assert (await node.get(hang_id)).status is CANCELLED and (await node.get(spin_id)).status is CANCELLED
                # the slots came back: new work runs; a lease that times out is reassigned and dropped
                (late,) = await node.submit([TaskSpec("hang", timeout_s=0.3)])
                t = await node.wait(late, 20)
                assert t.status is COMPLETED and t.attempt == 2 and t.result == b"second attempt"
                # the first attempt's revocation comes with a heartbeat: maybe after the second finished
                await async_wait_until(lambda: w.stats.revoked == 3, 10, "the timed-out attempt revoked")
                assert w.stats.completed == 1 and w.stats.failed == 0
                more = await node.submit([TaskSpec("noop") for _ in range(10)])
                assert all(x.status is COMPLETED for x in await finished(node, more))

    run(go())


async def _status_is(node: LocalNode, task_id: str, status: TaskStatus) -> bool:
    return (await node.get(task_id)).status is status


def test_graceful_stop_finishes_running_tasks(redis_url: str) -> None:
    release = asyncio.Event()

    async def slow(lease: Lease, ctx: WorkContext) -> str:
        await release.wait()
        return "finished during the drain"

    async def go() -> None:
        async with served(redis_url) as (node, server):
            w = make_worker(server.address, WorkerSpec("w1", concurrency=3), {"slow": slow})
            task = asyncio.create_task(w.run())
            ids = await node.submit([TaskSpec("slow") for _ in range(5)])
            await async_wait_until(lambda: w.running == 3, 10, "three running")
            w.stop()
            await asyncio.sleep(0)
            assert not task.done()
            release.set()
            await asyncio.wait_for(task, 10)
            records = [await node.get(t) for t in ids]
            assert sum(r.status is COMPLETED for r in records) == 3
            assert sum(r.status is TaskStatus.QUEUED for r in records) == 2  # never taken: still in line
            assert w.stats.completed == w.stats.acked == 3 and w.stats.dropped == 0

    run(go())


def test_wrong_token_is_fatal_not_retried(redis_url: str, tmp_path: Path) -> None:
    tokens = Tokens.generate()

    async def go() -> None:
        async with served(redis_url, interceptors=[AuthInterceptor(tokens)]) as (_, server):
            for token, code in [("x" * 32, "UNAUTHENTICATED"), (tokens.client[0], "PERMISSION_DENIED")]:
                w = make_worker(server.address, WorkerSpec("w1"), {}, token=token)
                with pytest.raises(WorkerRefusedError) as e:
                    await asyncio.wait_for(w.run(), 10)
                assert e.value.code == code and w.stats.registrations == 0
            w = make_worker(server.address, WorkerSpec("w1"), {}, token=None)
            with pytest.raises(WorkerRefusedError, match="FEDCOORD_TOKEN"):
                await asyncio.wait_for(w.run(), 10)

    run(go())


def test_node_restart_under_attached_workers_with_tls_and_tokens(redis_url: str, tmp_path: Path) -> None:
    files = make_cluster(tmp_path / "certs", ["node", "worker"])
    assert files.tokens is not None
    tokens = Tokens.load(files.tokens)
    node_cert = files.certs["node"]
    tls = TlsConfig(node_cert.cert, node_cert.key, files.ca.cert, require_client_cert=True)
    port = free_port()
    listen = f"127.0.0.1:{port}"
    secure: dict[str, Any] = {"credentials": server_credentials(tls), "interceptors": [AuthInterceptor(tokens)]}
    tls_kw: dict[str, Any] = {
        "insecure": False,
        "token": tokens.worker[0],
        "ca_file": str(files.ca.cert),
        "cert_file": str(files.certs["worker"].cert),
        "key_file": str(files.certs["worker"].key),
    }

    async def go() -> None:
        hs = build_handlers(options=BuiltinOptions(time_scale=0.01))
        w1 = make_worker(listen, WorkerSpec("w1", concurrency=4), hs, **tls_kw)
        w2 = make_worker(listen, WorkerSpec("w2", concurrency=4, skill=5), hs, **tls_kw)
        runs = [asyncio.create_task(w.run()) for w in (w1, w2)]
        try:
            async with served(redis_url, node_id="rs", listen=listen, **secure) as (node, server):
                assert server.port == port
                ids = await node.submit([TaskSpec("sleep", difficulty=1 + i % 5) for i in range(80)])
                await async_wait_until(lambda: w1.stats.completed + w2.stats.completed >= 15, 30, "some done")
            # the node is gone (server stopped, node closed); a new one on the same Redis and port
            async with served(redis_url, node_id="rs", listen=listen, **secure) as (node, server):
                assert server.port == port
                await async_wait_until(lambda: w1.stats.reconnects >= 1 and w2.stats.reconnects >= 1, 30, "back")
                done = await finished(node, ids, 60)
                assert all(t.status is COMPLETED for t in done), [(t.status, t.error) for t in done]
                assert {w.id for w in await node.workers()} == {"w1", "w2"}
                assert all(w.stats.connected for w in (w1, w2))
        finally:
            for w in (w1, w2):
                w.stop()
            await asyncio.wait_for(asyncio.gather(*runs), 30)
        assert w1.stats.registrations >= 2 and w2.stats.registrations >= 2

    run(go())


# ---------------------------------------------------------------------------------------- worker processes


def spawn_worker(address: str, *args: str, log: Path, path: Path | None = None) -> subprocess.Popen[bytes]:
    """``python -m node.rpc.worker`` (the ``fedcoord worker`` command); ``path`` joins its PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDCOORD_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *([str(path)] if path else [])])
    cmd = [sys.executable, "-m", "node.rpc.worker", "--node", address, "--insecure", "--heartbeat-s", "0.05", *args]
    with log.open("wb") as err:  # the child has its own copy of the descriptor
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)


async def registered(node: LocalNode, worker_id: str) -> bool:
    return any(w.id == worker_id for w in await node.workers())


async def exited(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    await async_wait_until(lambda: proc.poll() is not None, timeout_s, f"process {proc.pid} exited")
    return proc.returncode


def test_kill9_of_a_worker_process_mid_task_retries_it_elsewhere(redis_url: str, tmp_path: Path) -> None:
    async def go() -> None:
        async with served(redis_url) as (node, server):
            # sleep tasks take 60 s per difficulty unit on the victim: it is mid-task when killed
            victim = spawn_worker(server.address, "--id", "victim", "--time-scale", "60", log=tmp_path / "victim.log")
            try:
                await async_wait_until_async(lambda: registered(node, "victim"), 30, "victim registered")
                (tid,) = await node.submit([TaskSpec("sleep", difficulty=1, timeout_s=600)])
                await async_wait_until_async(lambda: _status_is(node, tid, TaskStatus.IN_PROGRESS), 20, "victim busy")
                assert (await node.get(tid)).assigned_worker == "victim"
                async with attached(server.address, WorkerSpec("rescuer"), build_handlers()) as rescuer:
                    victim.send_signal(signal.SIGKILL)
                    assert await exited(victim, 10) == -signal.SIGKILL
                    t = await node.wait(tid, 30)
                    assert t.status is COMPLETED and t.attempt == 2 and t.assigned_worker in (None, "rescuer")
                    assert rescuer.stats.completed == 1
            finally:
                if victim.poll() is None:
                    victim.kill()
                    victim.wait(10)

    run(go())


def test_worker_process_drains_on_sigterm_and_exits_0(redis_url: str, tmp_path: Path) -> None:
    (tmp_path / "wk_proc_handlers.py").write_text(
        "import asyncio\n"
        "from node.rpc.handlers import handler\n"
        "@handler('hold')\n"
        "async def hold(lease, ctx):\n"
        "    await asyncio.sleep(0.5)\n"
        "    return b'held ' + lease.payload\n"
    )

    async def go() -> None:
        async with served(redis_url) as (node, server):
            log = tmp_path / "w.log"
            proc = spawn_worker(
                server.address,
                *("--id", "proc", "--handlers", "wk_proc_handlers", "--concurrency", "2", "--log-format", "json"),
                log=log,
                path=tmp_path,  # where the handler module is
            )
            try:
                await async_wait_until_async(lambda: registered(node, "proc"), 30, "registered")
                ids = await node.submit([TaskSpec("hold", payload=b"a"), TaskSpec("hold", payload=b"b")])
                for tid in ids:
                    busy = functools.partial(_status_is, node, tid, TaskStatus.IN_PROGRESS)
                    await async_wait_until_async(busy, 20, f"{tid} reported started")
                proc.send_signal(signal.SIGTERM)
                assert await exited(proc, 20) == 0, log.read_text()[-3000:]
                for tid in ids:
                    t = await node.get(tid)
                    assert t.status is COMPLETED and t.result == b"held " + t.payload and t.attempt == 1
                text = log.read_text()
                assert '"msg":"worker proc stopped:' in text and "completed=2" in text, text[-3000:]
                assert not await registered(node, "proc")
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)

    run(go())


def test_worker_command_rejects_bad_options_with_one_line_and_exit_2() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDCOORD_")}
    env["PYTHONPATH"] = str(ROOT)
    for args, text in [
        (["--skill", "11"], "--skill: 11 out of range"),
        (["--handlers", "no_such_module_zz"], "cannot import"),
        (["--handler", "bad"], "TYPE=module:function"),
        (["--default", "zz"], "--default"),
        (["--node", "10.9.9.9:1", "--insecure"], "loopback"),
        (["--ca", "/nonexistent/ca.pem"], "no such file"),
    ]:
        r = subprocess.run(
            [sys.executable, "-m", "node.rpc.worker", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and text in lines[0], (args, r.stderr)


def test_unreachable_node_is_retried_with_backoff_until_stopped(redis_url: str) -> None:
    async def go() -> None:
        port = free_port()
        w = make_worker(f"127.0.0.1:{port}", WorkerSpec("w1"), {}, reconnect_min_s=0.01, reconnect_max_s=0.05)
        task = asyncio.create_task(w.run())
        await async_wait_until(lambda: w.stats.connect_failures >= 3, 20, "several attempts")
        assert not task.done()
        async with served(redis_url, listen=f"127.0.0.1:{port}") as (node, _):
            await async_wait_until(lambda: w.stats.connected, 20, "connected once the node is up")
            assert await registered(node, "w1")
            w.stop()
            await asyncio.wait_for(task, 10)
        assert w.stats.registrations == 1 and w.stats.reconnects == 0

    run(go())


def test_worker_options_are_checked() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"heartbeat_s": 0}, "heartbeat_s"),
        ({"reconnect_min_s": 2.0, "reconnect_max_s": 1.0}, "reconnect_max_s"),
        ({"batch_linger_ms": -1}, "batch_linger_ms"),
        ({"insecure": True, "ca_file": "x"}, "insecure"),
    ]
    for kw, field in cases:
        with pytest.raises(ValidationError) as e:
            Worker("127.0.0.1:1", WorkerSpec("w"), {}, **kw)
        assert e.value.field == field
    with pytest.raises(ValidationError):
        Worker("10.1.2.3:1", WorkerSpec("w"), {}, insecure=True)
    with pytest.raises(ValidationError):
        Worker("127.0.0.1:1", WorkerSpec("w", skill=0), {}, insecure=True)


# ---------------------------------------------------------------------------------------- review findings


def test_result_over_the_node_limit_fails_for_good_at_once(redis_url: str) -> None:
    """A result the node would refuse is reported as a failure without retry, not left to time
    out (and be rerun, and end as "timed out")."""

    def big(lease: Lease, ctx: WorkContext) -> bytes:
        return b"x" * (Limits().max_result_bytes + 1)

    async def go() -> None:
        async with (
            served(redis_url) as (node, server),
            attached(server.address, WorkerSpec("w1", concurrency=2), {"big": big}) as w,
        ):
            (tid,) = await node.submit([TaskSpec("big", timeout_s=30, max_retries=3)])
            t = await node.wait(tid, 10)
            assert t.status is FAILED and t.attempt == 1
            assert t.error == f"result of {Limits().max_result_bytes + 1} bytes is over the node's limit of " + (
                f"{Limits().max_result_bytes} bytes"
            )
            assert w.stats.completed == 0 and w.stats.failed == 1 and w.stats.rejected == 1

    run(go())


def test_a_result_the_node_refuses_as_invalid_is_reported_failed(redis_url: str) -> None:
    """A node with a smaller result limit than the worker knows refuses the completion with
    INVALID_ARGUMENT: the worker reports the lease failed (no retry) rather than letting it time out."""

    def mid(lease: Lease, ctx: WorkContext) -> bytes:
        return b"y" * 5000

    async def go() -> None:
        cfg = config(limits=Limits(max_result_bytes=4096))
        async with (
            served(redis_url, cfg=cfg) as (node, server),
            attached(server.address, WorkerSpec("w1"), {"mid": mid, "ok": lambda lease, ctx: "fine"}) as w,
        ):
            tid, ok = await node.submit([TaskSpec("mid", timeout_s=30, max_retries=3), TaskSpec("ok")])
            t = await node.wait(tid, 10)
            assert t.status is FAILED and t.attempt == 1
            assert (t.error or "").startswith("the node refused the result: ")
            assert (await node.wait(ok, 10)).result == b"fine"
            assert w.stats.stale == 0 and w.stats.rejected == 1 and w.stats.reconnects == 0

    run(go())


def test_a_huge_error_text_is_cut_and_the_stream_survives(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """An error text over the message limit would end the stream and void every lease on it."""
    release = asyncio.Event()

    async def slow(lease: Lease, ctx: WorkContext) -> str:
        await release.wait()
        return "ok"

    def boom(lease: Lease, ctx: WorkContext) -> None:
        raise ValueError("x" * (20 << 20))

    async def go() -> None:
        async with served(redis_url) as (node, server):
            hs = {"slow": slow, "boom": boom}
            async with attached(server.address, WorkerSpec("w1", concurrency=4), hs) as w:
                slow_ids = await node.submit([TaskSpec("slow", timeout_s=60) for _ in range(3)])
                await async_wait_until(lambda: w.running == 3, 10, "the slow ones running")
                (bid,) = await node.submit([TaskSpec("boom", max_retries=1)])
                b = await node.wait(bid, 10)
                assert b.status is FAILED and b.attempt == 2
                assert (b.error or "").startswith("ValueError: xxx") and len(b.error or "") <= Limits().max_error_chars
                release.set()
                for t in await finished(node, slow_ids, 10):
                    assert t.status is COMPLETED and t.attempt == 1
                assert w.stats.reconnects == 0 and w.stats.dropped == 0

    with caplog.at_level("DEBUG", logger="fedcoord.worker"):
        run(go())
    assert max(len(r.getMessage()) + len(r.exc_text or "") for r in caplog.records) < 20_000


def test_batches_stay_under_max_batch_bytes() -> None:
    w = Worker("127.0.0.1:1", WorkerSpec("w"), {}, insecure=True, max_batch_bytes=10_000)
    conn = _Conn(1)
    for i in range(30):
        w._outcome(conn, Lease(f"t{i}", 1, "w", 0, TaskSpec("t")), b"r" * 3000, None)
        w._outcome(conn, Lease(f"f{i}", 1, "w", 0, TaskSpec("t")), None, ValueError("e" * 3000))
    sizes, items = [], 0
    while (msg := w._take(conn)) is not None:
        sizes.append(msg.ByteSize())
        items += len(msg.completions) + len(msg.failures)
    assert items == 60 and max(sizes) <= 10_000 and len(sizes) >= 18
    assert conn.nbytes == 0 and not conn.completions and not conn.failures


def test_a_cancelled_error_of_the_handler_itself_is_a_retryable_failure(redis_url: str) -> None:
    """A CancelledError the worker did not cause (a sub-task the handler awaited was cancelled)
    fails the attempt: it is not mistaken for the worker cancelling the run, which would report
    nothing and leave the lease to time out."""

    async def inner_cancel(lease: Lease, ctx: WorkContext) -> str:
        if lease.attempt > 1:
            return "second attempt"
        sub = asyncio.create_task(asyncio.Event().wait())
        await asyncio.sleep(0)
        sub.cancel()
        await sub
        return "never"

    async def go() -> None:
        async with (
            served(redis_url) as (node, server),
            attached(server.address, WorkerSpec("w1"), {"c": inner_cancel}) as w,
        ):
            (tid,) = await node.submit([TaskSpec("c", timeout_s=60, max_retries=1)])
            t = await node.wait(tid, 10)
            assert t.status is COMPLETED and t.attempt == 2 and t.result == b"second attempt"
            assert w.stats.failed == 1 and w.stats.rejected == 0 and w.running == 0

    run(go())


def test_worker_process_exits_on_sigterm_while_a_thread_handler_ignores_cancellation(
    redis_url: str, tmp_path: Path
) -> None:
    """A thread cannot be stopped and the interpreter joins it at exit: after the grace period the
    process exits anyway (status 0), and a second signal during the grace period stops it at once
    (status 0, not killed by the signal)."""
    (tmp_path / "wk_stuck_handlers.py").write_text(
        "import time\n"
        "from node.rpc.handlers import handler\n"
        "@handler('stuck')\n"
        "def stuck(lease, ctx):\n"
        "    while True:\n"
        "        time.sleep(0.02)\n"
    )

    async def one(node: LocalNode, address: str, wid: str, grace: str, second: bool) -> None:
        log = tmp_path / f"{wid}.log"
        args = ("--id", wid, "--handlers", "wk_stuck_handlers", "--grace-s", grace)
        proc = spawn_worker(address, *args, log=log, path=tmp_path)
        try:
            await async_wait_until_async(lambda: registered(node, wid), 30, "registered")
            (tid,) = await node.submit([TaskSpec("stuck", timeout_s=600)])
            await async_wait_until_async(
                functools.partial(_status_is, node, tid, TaskStatus.IN_PROGRESS), 20, "started"
            )
            proc.send_signal(signal.SIGTERM)
            if second:
                await async_wait_until(lambda: "stopping" in log.read_text(), 20, "the first signal seen")
                proc.send_signal(signal.SIGTERM)
            assert await exited(proc, 20) == 0, log.read_text()[-3000:]
            text = log.read_text()
            assert "1 handler thread still running" in text, text[-3000:]
            assert ("stopped at once" in text) is second, text[-3000:]
            assert await node.cancel(tid) in (TaskStatus.IN_PROGRESS, TaskStatus.QUEUED, TaskStatus.ASSIGNED)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    async def go() -> None:
        async with served(redis_url) as (node, server):
            await one(node, server.address, "stuck1", "0.2", second=False)
            await one(node, server.address, "stuck2", "600", second=True)

    run(go())
