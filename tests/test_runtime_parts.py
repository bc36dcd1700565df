"""The runtime's parts through LocalNode: grants that are never dropped, calls that return only
once what they reflect is durable, new incarnations of workers, history that reaches the store,
kill and takeover, and the core importable on its own."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from node import (
    AdmissionConfig,
    FederationView,
    FencedError,
    LocalNode,
    MemoryBackend,
    MemoryStore,
    NodeClosedError,
    NodeConfig,
    NodeOwnedError,
    NodeState,
    TaskSpec,
    WorkerSpec,
)
from node.store.codec import WriteBatch
from tests.conftest import async_wait_until, async_wait_until_async
from tests.test_runtime import GatedStore, fast_config, run

ROOT = Path(__file__).resolve().parent.parent


def test_grants_are_never_dropped_when_a_waiting_claim_is_replaced() -> None:
    """Claim A waits and is served while its commit is in flight; claim B of the same worker
    replaces it and is served by the next commit: every lease granted reaches a caller."""

    async def main() -> None:
        store = GatedStore("n1")
        node = await LocalNode.start("n1", store=store, config=fast_config())
        try:
            await node.register_worker(WorkerSpec("w", concurrency=4))
            a = asyncio.create_task(node.claim("w", 2, wait_s=10))
            await async_wait_until(lambda: node._core.waiting_workers() == ["w"], what="claim A to wait")
            store.gate.clear()
            t1 = asyncio.create_task(node.submit([TaskSpec("t")]))  # granted to A; its write is held
            await async_wait_until(lambda: node._committer.inflight is not None, what="the flush to start")
            b = asyncio.create_task(node.claim("w", 2, wait_s=10))  # replaces A, waits in the core again
            await async_wait_until(lambda: node._core.waiting_workers() == ["w"], what="claim B to wait")
            t2 = asyncio.create_task(node.submit([TaskSpec("t")]))  # granted to B, in the next commit
            await async_wait_until(lambda: "w" in node._core.out.grants, what="the second grant")
            store.gate.set()
            ids = [*(await t1), *(await t2)]
            got = [*(await a), *(await b)]
            got += await node.claim("w", 2)  # what nobody waited for any more is held for the next claim
            assert sorted(lease.task_id for lease in got) == sorted(ids)
            assert node._claims.held() == 0
        finally:
            await node.close()

    run(main())


def test_a_claim_cut_short_keeps_its_grant_for_the_next_claim() -> None:
    async def main() -> None:
        store = GatedStore("n1")
        node = await LocalNode.start("n1", store=store, config=fast_config())
        try:
            await node.register_worker(WorkerSpec("w", concurrency=2))
            a = asyncio.create_task(node.claim("w", 1, wait_s=10))
            await async_wait_until(lambda: node._core.waiting_workers() == ["w"], what="the claim to wait")
            store.gate.clear()
            t = asyncio.create_task(node.submit([TaskSpec("t")]))
            await async_wait_until(lambda: node._committer.inflight is not None, what="the flush to start")
            a.cancel()  # the caller went away while its lease was being written
            with pytest.raises(asyncio.CancelledError):
                await a
            store.gate.set()
            (tid,) = await t
            assert [lease.task_id for lease in await node.claim("w", 1)] == [tid]
        finally:
            await node.close()

    run(main())


def test_heartbeat_returns_once_the_revocation_it_reports_is_durable() -> None:
    async def main() -> None:
        store = GatedStore("n1")
        node = await LocalNode.start("n1", store=store, config=fast_config())
        try:
            await node.register_worker(WorkerSpec("w"))
            (tid,) = await node.submit([TaskSpec("t")])
            await node.claim("w", 1)
            store.gate.clear()
            cancel = asyncio.create_task(node.cancel(tid))
            await async_wait_until(lambda: node._committer.inflight is not None, what="the cancel's flush")
            hb = asyncio.create_task(node.heartbeat("w"))
            for _ in range(50):  # plenty of loop turns to return early in (it must not)
                await asyncio.sleep(0)
            assert not hb.done()
            store.gate.set()
            assert (await hb).revoked == ((tid, 1),)
            await cancel
        finally:
            await node.close()

    run(main())


def test_an_empty_claim_returns_once_the_worker_it_revived_is_durable() -> None:
    async def main() -> None:
        backend = MemoryBackend()
        store = MemoryStore("n1", backend)
        node = await LocalNode.start("n1", store=store, config=fast_config(heartbeat_timeout_s=0.1))
        try:
            await node.register_worker(WorkerSpec("w"))

            def stored_health() -> bool:
                return bool(orjson.loads(backend.node("n1").workers["w"])["healthy"])

            await async_wait_until(lambda: not stored_health(), what="the worker to be lost")
            assert await node.claim("w", 1) == []
            assert stored_health()  # the claim revived it, and said so only once that was durable
        finally:
            await node.close()

    run(main())


def test_a_worker_registering_again_after_a_restart_gets_its_tasks_back_at_once(redis_url: str) -> None:
    async def main() -> None:
        async with LocalNode.open("n1", redis_url, config=fast_config()) as node:
            await node.register_worker(WorkerSpec("w", concurrency=12))
            ids = await node.submit([TaskSpec("t", timeout_s=600) for _ in range(12)])
            assert len(await node.claim("w", 12)) == 12
        async with LocalNode.open("n1", redis_url, config=fast_config()) as node:
            assert (await node.workers())[0].health == "unknown"
            await node.register_worker(WorkerSpec("w", concurrency=12))
            t0 = time.monotonic()
            leases = await node.claim("w", 12)
            assert time.monotonic() - t0 < 5  # not after the 600 s lease timeouts
            assert sorted(lease.task_id for lease in leases) == sorted(ids)
            assert {lease.attempt for lease in leases} == {2}

    run(main())


def test_every_closed_minute_reaches_the_stored_history() -> None:
    """Minutes closed by a commit's analytics (not by the ticker) are written too."""
    minute_ns = 60_000_000_000
    base = (time.time_ns() // minute_ns) * minute_ns
    clock = [base + 1_000_000_000]

    async def main() -> None:
        backend = MemoryBackend()
        store = MemoryStore("n1", backend)
        node = await LocalNode.start("n1", store=store, config=fast_config(), clock_ns=lambda: clock[0])
        try:
            await node.register_worker(WorkerSpec("w", concurrency=10))
            for minute in range(3):
                clock[0] = base + minute * minute_ns + 2_000_000_000
                ids = await node.submit([TaskSpec("t") for _ in range(minute + 1)])  # this commit rolls the minute
                for lease in await node.claim("w", 10):
                    await node.complete(lease)
                assert len(ids) == minute + 1

            def stored() -> dict[int, int]:
                return {m: orjson.loads(r)["completed"] for m, r in backend.node("n1").history.items()}

            want = {base // 1_000_000: 1, (base + minute_ns) // 1_000_000: 2}
            await async_wait_until(lambda: stored() == want, what=f"history {want}, have {stored()}")
        finally:
            await node.close()
        assert stored()[(base + 2 * minute_ns) // 1_000_000] == 3  # the last minute, at close

    run(main())


def test_kill_leaves_the_lock_and_a_takeover_fences_the_old_owner(redis_url: str) -> None:
    async def main() -> None:
        node = await LocalNode.start("n1", redis_url, config=fast_config())
        (tid,) = await node.submit([TaskSpec("t")])
        waiting = asyncio.create_task(node.submit([TaskSpec("never acknowledged")]))
        await node.kill()
        with pytest.raises(NodeClosedError):
            await waiting
        assert node.state is NodeState.CLOSED
        with pytest.raises(NodeOwnedError):  # its lock is still there (same process: not seen as dead)
            await LocalNode.start("n1", redis_url, config=fast_config())
        async with LocalNode.open("n1", redis_url, config=NodeConfig(takeover=True, tick_max_s=0.02)) as heir:
            assert (await heir.get(tid)).id == tid
            # a write the old owner still sends is refused by Redis
            with pytest.raises(FencedError):
                await node.store.write(WriteBatch(upserts=[("x", b"{}")], now_ns=time.time_ns()))
            assert await heir.stats()

    run(main())


def test_a_late_write_of_a_killed_node_is_fenced_after_a_takeover(redis_url: str) -> None:
    async def main() -> None:
        store_gate = asyncio.Event()
        node = await LocalNode.start("n1", redis_url, config=fast_config())
        real_write = node.store.write

        async def slow_write(batch: WriteBatch) -> None:
            await store_gate.wait()
            await real_write(batch)

        node.store.write = slow_write  # type: ignore[method-assign]
        late = asyncio.create_task(node.submit([TaskSpec("late")]))
        await async_wait_until(lambda: node._committer.inflight is not None, what="the flush to start")
        async with LocalNode.open("n1", redis_url, config=NodeConfig(takeover=True, tick_max_s=0.02)) as heir:
            store_gate.set()
            with pytest.raises(FencedError):
                await late
            assert await async_wait_until_async(
                lambda: heir_has_no(heir, "late"), what="the heir to hold nothing of the late write"
            )
        await node.kill()

    async def heir_has_no(heir: LocalNode, ttype: str) -> bool:
        return ttype not in (await heir.stats()).active_by_type

    run(main())


def test_the_core_imports_without_io_libraries_or_the_runtime() -> None:
    code = (
        "import sys, node.core\n"
        "bad = [m for m in ('redis', 'orjson', 'hiredis', 'node.runtime', 'node.store', 'node.analytics')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
        "import node\n"
        "assert node.LocalNode.__name__ == 'LocalNode' and 'redis' in sys.modules\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


def test_the_package_exports_what_it_lists() -> None:
    import node  # noqa: PLC0415 - the lazy module itself is under test

    assert sorted(node.__all__) == sorted(node._MODULE_OF)
    for name in node.__all__:
        assert getattr(node, name) is not None
    with pytest.raises(AttributeError):
        _ = node.NoSuchThing  # type: ignore[attr-defined]


def test_the_node_keeps_window_summaries_and_applies_federation_views() -> None:
    window_ns = 20_000_000_000
    base = (time.time_ns() // window_ns) * window_ns
    clock = [base + 1_000_000_000]
    cfg = NodeConfig(
        core=fast_config().core,
        tick_max_s=0.02,
        window_s=20,
        admission=AdmissionConfig(policy="seed", threshold=0.7),
    )

    async def main() -> None:
        async with LocalNode.open("n1", store=MemoryStore("n1"), config=cfg, clock_ns=lambda: clock[0]) as node:
            await node.register_worker(WorkerSpec("w", concurrency=10))
            await node.submit([TaskSpec("a"), TaskSpec("a"), TaskSpec("b")])
            leases = await node.claim("w", 2)
            clock[0] += 500_000_000
            for lease in leases:
                await node.complete(lease)
            assert node.summary() is None  # no window has ended yet
            now = node.summary(closed=False)
            assert now is not None and now.total("submitted") == 3 and now.total("completed") == 2
            clock[0] = base + window_ns + 1
            last = node.summary()
            assert last is not None and last.closed and last.start_ns == base
            assert (last.types["a"].submitted, last.types["b"].submitted, last.total("completed")) == (2, 1, 2)
            assert node.threshold() == 0.7  # no federation view: the local threshold
            assert node.apply_federation(FederationView(at_ns=clock[0], load_share=0.9)) == 0.8
            assert node.apply_federation(FederationView(at_ns=clock[0], load_share=0.1)) == 0.5
            assert node.load().ready == 1

    run(main())


def test_callers_of_a_write_cut_short_by_kill_get_an_answer() -> None:
    """kill() stops the flusher mid-write: the callers whose changes were in that write are told
    (NodeClosedError), not left waiting forever."""

    async def main() -> None:
        store = GatedStore("n1")
        node = await LocalNode.start("n1", store=store, config=fast_config())
        store.gate.clear()
        submit = asyncio.create_task(node.submit([TaskSpec("t")]))
        await async_wait_until(lambda: node._committer.inflight is not None, what="the flush to start")
        await node.kill()
        with pytest.raises(NodeClosedError, match="before the write was acknowledged"):
            await asyncio.wait_for(submit, 5)

    run(main())
