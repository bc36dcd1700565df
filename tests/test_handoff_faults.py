"""Hand-off under the awkward timings a review found: a result that arrives before the origin
settled, a store outage in the middle of an offload, an abort and a new hand-off in one commit,
reports of results not yet durable, a claim whose grant went stale while it was written,
dependents of handed-off tasks, requeues across nodes, ids chosen by users. Two (or three) nodes
on one real Redis; slowness and outages are a real RedisStore delayed or refusing to write."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from node import LocalNode, TaskSpec, TaskStatus, WorkerSpec
from node.errors import InvalidTransitionError, PeerUnavailableError, StoreUnavailableError
from node.handoff import MemoryTransport
from node.runtime.config import NodeState
from node.store.codec import WriteBatch, encode_batch
from node.store.memory import MemoryStore
from node.store.redis_store import RedisStore
from tests.conftest import async_wait_until, async_wait_until_async
from tests.test_core_handoff import node as core_node
from tests.test_handoff import cfg, pair
from tests.test_runtime import fast_config, run

S = 1_000_000_000
COMPLETED, FAILED, HANDED_OFF, QUEUED = (
    TaskStatus.COMPLETED,
    TaskStatus.FAILED,
    TaskStatus.HANDED_OFF,
    TaskStatus.QUEUED,
)


class TroubledStore(RedisStore):
    """A real RedisStore whose writes can be slowed down or refused (an outage)."""

    slow_s = 0.0
    down = False

    async def write(self, batch: WriteBatch) -> None:
        if self.slow_s:
            await asyncio.sleep(self.slow_s)  # a slow Redis, not synchronization
        if self.down:
            raise StoreUnavailableError("simulated outage")
        await super().write(batch)

    async def ping(self) -> None:
        if self.down:
            raise StoreUnavailableError("simulated outage")
        await super().ping()


def test_a_result_that_arrives_before_the_origin_settled_finishes_the_hand_off(redis_url: str) -> None:
    """The transfer's answer is lost and a's status queries do not get through; b runs the task
    and reports: the report itself proves b owns it, so a records both, and wait() returns."""
    transport = MemoryTransport()
    cut = {"reply": True, "status": True}

    async def after(op: str, peer: str, msg: Any) -> None:
        if op == "transfer" and cut["reply"]:
            cut["reply"] = False
            raise PeerUnavailableError("the answer was lost")

    async def before(op: str, peer: str, msg: Any) -> None:
        if op == "task_status" and cut["status"]:
            raise PeerUnavailableError("a -> b is down for status queries")

    transport.after, transport.before = after, before

    async def main() -> None:
        async with pair(redis_url, transport, b_worker=5) as (a, b):
            [tid] = await a.submit([TaskSpec("job")])
            assert a.handoff is not None
            assert (await a.handoff.offload("b", 1)).unsettled == [tid]
            [lease] = await b.claim("wb", 1)
            await b.complete(lease, result=b"ok")
            final = await a.wait(tid, timeout_s=10)
            assert (final.status, final.owner_node, final.result) == (COMPLETED, "b", b"ok")
            await async_wait_until(lambda: not b._core.pending_reports(), what="b to be acknowledged")
            assert not a._core.handoffs_in_flight()

    run(main())


def test_an_outage_in_the_middle_of_an_offload_is_settled_once_the_store_is_back(redis_url: str) -> None:
    transport = MemoryTransport()
    nodes: dict[str, LocalNode] = {}

    async def after(op: str, peer: str, msg: Any) -> None:
        if op == "transfer":  # b adopted and answered; a's store fails before a records it
            a = nodes["a"]
            assert isinstance(a.store, TroubledStore)
            a.store.down = True
            asyncio.get_running_loop().create_task(a.register_worker(WorkerSpec("filler")))
            await async_wait_until(lambda: a.state is NodeState.DEGRADED, what="a to degrade")

    transport.after = after

    async def main() -> None:
        store = TroubledStore("a", redis_url)
        async with (
            LocalNode.open("a", config=cfg(peers=("b",)), store=store, transport=transport) as a,
            LocalNode.open("b", redis_url, config=cfg(), transport=transport) as b,
        ):
            nodes["a"] = a
            await b.register_worker(WorkerSpec("wb", concurrency=5))
            [x] = await a.submit([TaskSpec("job")])
            assert a.handoff is not None
            with pytest.raises(StoreUnavailableError):
                await a.handoff.offload("b", 1)
            transport.after = None
            store.down = False
            await async_wait_until(lambda: a.state is NodeState.SERVING, what="a to recover")
            [lease] = await b.claim("wb", 1)
            await b.complete(lease, result=b"ok")
            assert (await a.wait(x, timeout_s=10)).status is COMPLETED  # settled, and the result came

    run(main())


def test_an_abort_and_a_new_hand_off_in_one_commit_keep_the_new_intent() -> None:
    a = core_node("a")
    [x] = a.submit([TaskSpec("job")], S)
    a.begin_handoff([x], "b", 2 * S)
    a.drain()  # the first intent is stored
    a.abort_handoff([x], 3 * S, peer="b")  # b said it never got it ...
    a.begin_handoff([x], "c", 4 * S)  # ... and before that was written, it goes to c
    out = a.drain()
    assert out.intents == {x: "c"} and x not in out.intents_done

    async def stored() -> dict[str, str]:
        store = MemoryStore("a")
        await store.acquire()
        await store.write(WriteBatch(intents=[(x, "b")], now_ns=2 * S))
        await store.write(WriteBatch(intents=[(x, "c")], intents_done=[x], now_ns=4 * S))  # both at once
        return (await store.load()).handoffs

    assert run(stored()) == {x: "c"}  # the removal applies before the new intent, in either store


def test_a_task_being_handed_off_is_stored_as_the_queued_task_it_was() -> None:
    a = core_node("a")
    [x] = a.submit([TaskSpec("job")], S)
    a.begin_handoff([x], "b", 2 * S)  # saved and begun in the same outbox
    batch = encode_batch(a.drain(), 2 * S, with_events=False)
    [(tid, raw)] = batch.upserts
    assert tid == x and b'"status":"queued"' in raw and b"handoff_peer" not in raw
    assert batch.intents == [(x, "b")]
    a.abort_handoff([x], 3 * S)
    after = encode_batch(a.drain(), 3 * S, with_events=False)
    assert (after.upserts, after.intents_done) == ([], [x])  # the stored record stands as it was


def test_cancel_waits_until_a_hand_off_settled() -> None:
    a = core_node("a")
    [x] = a.submit([TaskSpec("job")], S)
    a.begin_handoff([x], "b", 2 * S)
    with pytest.raises(InvalidTransitionError, match="being handed off to b"):
        a.cancel(x, 3 * S)
    assert a.tasks[x].status is TaskStatus.HANDING_OFF


def test_results_are_reported_only_once_durable(redis_url: str) -> None:
    """b's completion is still being written (and then fails): its result must not reach a."""
    transport = MemoryTransport()

    async def main() -> None:
        bstore = TroubledStore("b", redis_url)
        async with (
            LocalNode.open("a", redis_url, config=cfg(peers=("b",)), transport=transport) as a,
            LocalNode.open("b", config=cfg(), store=bstore, transport=transport) as b,
        ):
            await b.register_worker(WorkerSpec("wb", concurrency=5))
            [x] = await a.submit([TaskSpec("job")])
            assert a.handoff is not None and b.handoff is not None
            assert (await a.handoff.offload("b", 1)).handed_off == [x]
            [lease] = await b.claim("wb", 1)
            bstore.slow_s = 0.3
            done = asyncio.create_task(b.complete(lease, result=b"R1"))
            await async_wait_until(lambda: b._committer.inflight is not None, what="b's write to start")
            bstore.down = True
            reports = transport.calls.get("report_result", 0)
            b.handoff.wake()  # as a commit holding a report would
            with pytest.raises(StoreUnavailableError):
                await done  # the worker was never told "done" ...
            assert transport.calls.get("report_result", 0) == reports  # ... and a was told nothing
            bstore.down, bstore.slow_s = False, 0.0
            await async_wait_until(lambda: b.state is NodeState.SERVING, what="b to recover")
            assert (await b.get(x)).status is TaskStatus.ASSIGNED
            assert (await a.get(x)).status is HANDED_OFF

    run(main())


def test_a_claim_whose_grant_went_stale_while_it_was_written_returns(redis_url: str) -> None:
    async def main() -> None:
        store = TroubledStore("n", redis_url)
        async with LocalNode.open("n", config=fast_config(), store=store) as node:
            await node.register_worker(WorkerSpec("w", concurrency=1))
            claim = asyncio.create_task(node.claim("w", 1, wait_s=0.2))
            await async_wait_until(lambda: node._core.waiting_workers() == ["w"], what="the claim to wait")
            store.slow_s = 0.5
            sub = asyncio.create_task(node.submit([TaskSpec("job")]))  # granted to the waiting claim
            await async_wait_until(lambda: node._committer.inflight is not None, what="the grant's write")
            [lease] = node._committer.inflight.grants["w"]  # type: ignore[union-attr]
            await node.cancel(lease.task_id)  # lands after the grant's write
            await sub
            store.slow_s = 0.0
            t0 = time.monotonic()
            assert await asyncio.wait_for(claim, 5) == []
            assert time.monotonic() - t0 < 5

    run(main())


def test_a_task_submitted_after_its_dependency_was_handed_off_waits_for_its_result(redis_url: str) -> None:
    transport = MemoryTransport()

    async def main() -> None:
        async with pair(redis_url, transport, b_worker=5) as (a, b):
            [dep] = await a.submit([TaskSpec("job")])
            assert a.handoff is not None and (await a.handoff.offload("b", 1)).handed_off == [dep]
            [child] = await a.submit([TaskSpec("next", dependencies=[dep])])
            assert (await a.get(child)).status is TaskStatus.PENDING
            [lease] = await b.claim("wb", 1)
            await b.complete(lease)
            await async_wait_until_async(
                lambda: _status_is(a, child, QUEUED), what="the dependent to be released by the result"
            )

    run(main())


async def _status_is(node: LocalNode, tid: str, status: TaskStatus) -> bool:
    return (await node.get(tid)).status is status


def test_a_dependency_known_as_handed_off_makes_a_new_task_wait() -> None:
    core = core_node("a")
    [t] = core.submit([TaskSpec("next", dependencies=["dep"])], S, known={"dep": HANDED_OFF})
    assert core.tasks[t].status is TaskStatus.PENDING and "dep" in core._remote_deps
    core.validate()


def test_requeue_happens_where_the_task_failed_and_its_new_result_goes_back(redis_url: str) -> None:
    transport = MemoryTransport()

    async def main() -> None:
        async with pair(redis_url, transport, b_worker=5) as (a, b):
            [x] = await a.submit([TaskSpec("job")])
            assert a.handoff is not None and (await a.handoff.offload("b", 1)).handed_off == [x]
            [lease] = await b.claim("wb", 1)
            await b.fail(lease, "broken", retry=False)
            assert (await a.wait(x, timeout_s=10)).status is FAILED
            with pytest.raises(InvalidTransitionError, match="failed on node b"):
                await a.requeue(x)  # the origin does not run it a second time behind b's back
            await b.requeue(x)  # its owner does, and the new result replaces the old one at a
            [lease] = await b.claim("wb", 1)
            await b.complete(lease, result=b"second try")
            await async_wait_until_async(lambda: _status_is(a, x, COMPLETED), what="the new result at a")
            assert (await a.get(x)).result == b"second try"

    run(main())


def test_an_id_chosen_by_a_user_is_checked_against_the_peer_s_finished_tasks(redis_url: str) -> None:
    transport = MemoryTransport()

    async def main() -> None:
        async with pair(redis_url, transport, b_worker=5) as (a, b):
            await b.submit([TaskSpec("local", id="job-1")])
            [lease] = await b.claim("wb", 1)
            await b.complete(lease, result=b"b's own")
            await a.submit([TaskSpec("job", id="job-1")])
            assert a.handoff is not None
            res = await a.handoff.offload("b", 1)
            assert res.refused == {"job-1": "this task id is in use here"}
            assert (await b.get("job-1")).result == b"b's own"
            assert (await a.get("job-1")).status is QUEUED

    run(main())
