"""Hand-off between two LocalNodes in one process, on one real Redis, over the in-memory
transport: the protocol end to end, thresholds, automatic offloading, results followed back to
the origin, bad answers from a peer, and crashes injected at every named step."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
import redis

from node import AdmissionConfig, LocalNode, NodeConfig, TaskSpec, TaskStatus, WorkerSpec
from node.core import RemoteStatus
from node.errors import HandoffProtocolError, NodeClosedError, PeerUnavailableError
from node.handoff import MemoryTransport, OfferReply, StatusQuery, StatusReply, TransferReply
from node.runtime.handoff import HandoffConfig
from tests.conftest import RedisServer, async_wait_until, async_wait_until_async
from tests.test_runtime import run

COMPLETED, HANDED_OFF, QUEUED = TaskStatus.COMPLETED, TaskStatus.HANDED_OFF, TaskStatus.QUEUED


def cfg(*, peers: tuple[str, ...] = (), auto: bool = False, threshold: float = 1.0, **kw: Any) -> NodeConfig:
    return NodeConfig(
        tick_max_s=0.02,
        listener_check_s=0.05,
        admission=AdmissionConfig(threshold=threshold, margin=0.0),
        handoff=HandoffConfig(peers=peers, auto=auto, check_s=0.05, retry_s=0.02, retry_max_s=0.2),
        **kw,
    )


@contextlib.asynccontextmanager
async def pair(
    redis_url: str, transport: MemoryTransport, *, b_worker: int = 0
) -> AsyncIterator[tuple[LocalNode, LocalNode]]:
    """Origin ``a`` (may hand work to ``b``) and peer ``b`` on one Redis; ``b_worker``: the
    concurrency of a worker ``wb`` registered on b (0: none)."""
    async with (
        LocalNode.open("a", redis_url, config=cfg(peers=("b",)), transport=transport) as a,
        LocalNode.open("b", redis_url, config=cfg(), transport=transport) as b,
    ):
        if b_worker:
            await b.register_worker(WorkerSpec("wb", concurrency=b_worker))
        yield a, b


class Crash(Exception):
    """Raised by a fault hook after it killed a node: the code under way stops there."""


async def work(node: LocalNode, worker: str, until: Callable[[], Awaitable[bool]], *, concurrency: int = 50) -> int:
    """Complete what the node gives ``worker`` until ``until()``; returns how many it completed."""
    await node.register_worker(WorkerSpec(worker, concurrency=concurrency))
    done = 0
    while not await until():
        for lease in await node.claim(worker, concurrency, wait_s=0.05):
            await node.complete(lease, result=b"by " + node.node_id.encode())
            done += 1
    return done


def test_tasks_handed_off_run_on_the_peer_and_their_results_reach_the_origin(redis_url: str) -> None:
    transport = MemoryTransport()

    async def main() -> None:
        async with pair(redis_url, transport, b_worker=20) as (a, b):
            ids = await a.submit([TaskSpec("job", payload=f"p{i}".encode()) for i in range(10)])
            assert a.handoff is not None
            res = await a.handoff.offload("b", 10)
            assert (res.offered, res.accepted, sorted(res.handed_off), res.refused) == (10, 10, sorted(ids), {})
            t = await a.get(ids[0])
            assert (t.status, t.owner_node, t.origin_node) == (HANDED_OFF, "b", "a")
            remote = await b.get(ids[0])
            assert (remote.status, remote.owner_node, remote.origin_node, remote.hops) == (QUEUED, "b", "a", 1)
            assert remote.payload == b"p0"  # the payload travelled with the transfer, not the offer
            waits = [asyncio.create_task(a.wait(tid, timeout_s=10)) for tid in ids]
            for lease in await b.claim("wb", 20):
                await b.complete(lease, result=b"done:" + lease.payload)
            finals = await asyncio.gather(*waits)
            assert {f.status for f in finals} == {COMPLETED} and {f.owner_node for f in finals} == {"b"}
            assert finals[0].result == b"done:p0"
            assert (await a.get(ids[0])).result == b"done:p0"  # get follows it too
            # every task counted once across the two nodes
            sa, sb = (await a.stats()).totals, (await b.stats()).totals
            assert (sa["submitted"], sa["handed_off"], sa.get("completed", 0)) == (10, 10, 0)
            assert (sb.get("submitted", 0), sb["adopted"], sb["completed"]) == (0, 10, 10)
            assert sa["handoff_result:completed"] == 10
            await async_wait_until(lambda: not b._core.pending_reports(), what="b to drop acknowledged reports")
            assert b.summary(closed=False).types["job"].handed_off_in == 10  # type: ignore[union-attr]
            assert a.summary(closed=False).types["job"].handed_off_out == 10  # type: ignore[union-attr]

    run(main())


def test_the_peer_takes_only_what_keeps_it_under_its_threshold(redis_url: str) -> None:
    transport = MemoryTransport()

    async def main() -> None:
        async with (
            LocalNode.open("a", redis_url, config=cfg(peers=("b",)), transport=transport) as a,
            LocalNode.open("b", redis_url, config=cfg(threshold=0.5), transport=transport) as b,
        ):
            await b.register_worker(WorkerSpec("wb", concurrency=4))
            await b.register_worker(WorkerSpec("gpu", capabilities=["gpu"], concurrency=4))
            await b.submit([TaskSpec("local")])  # b's load: 1 of 8
            await a.submit([TaskSpec("job") for _ in range(6)] + [TaskSpec("odd", required_capabilities=["tpu"])])
            assert a.handoff is not None
            res = await a.handoff.offload("b", 7)
            assert (res.offered, res.accepted, len(res.handed_off)) == (7, 3, 3)  # 1 + 3 = 4 of 8 slots
            assert b.load().ready == 4
            again = await a.handoff.offload("b", 4)  # b is at its threshold now
            assert again.accepted == 0 and "over the threshold" in again.reason
            assert (await b.stats()).active_by_type.get("odd") is None  # nobody at b could run it

    run(main())


def test_an_overloaded_node_offloads_by_itself(redis_url: str) -> None:
    transport = MemoryTransport()

    async def main() -> None:
        async with (
            LocalNode.open(
                "a", redis_url, config=cfg(peers=("b",), auto=True, threshold=0.5), transport=transport
            ) as a,
            LocalNode.open("b", redis_url, config=cfg(threshold=0.8), transport=transport) as b,
        ):
            await a.register_worker(WorkerSpec("wa", concurrency=10))
            await b.register_worker(WorkerSpec("wb", concurrency=10))
            await a.submit([TaskSpec("job") for _ in range(20)])  # a's load 2.0 > 0.5
            # a keeps 5 (its threshold), b takes up to 8 (its own)
            assert a.handoff is not None
            agent = a.handoff
            # b adopts before a records b's answer: wait for both (b's count alone raced a's)
            await async_wait_until(
                lambda: b.load().ready == 8 and agent.stats["handed_off"] == 8, what="b to take 8 tasks"
            )
            assert a.load().ready == 12  # a stays above its threshold: b has no room left

    run(main())


def test_a_peer_that_answers_for_tasks_it_was_never_offered_is_refused(redis_url: str) -> None:
    transport = MemoryTransport()

    async def main() -> None:
        async with pair(redis_url, transport, b_worker=10) as (a, b):
            ids = await a.submit([TaskSpec("job"), TaskSpec("job")])
            assert a.handoff is not None
            real_offer = b.handoff.on_offer  # type: ignore[union-attr]

            async def lying_offer(offer: Any) -> OfferReply:
                reply = await real_offer(offer)
                return OfferReply(reply.offer_id, (*reply.accepted, "never-offered"), reply.expires_ns)

            b.handoff.on_offer = lying_offer  # type: ignore[union-attr, method-assign]
            with pytest.raises(HandoffProtocolError, match="never offered"):
                await a.handoff.offload("b", 2)
            assert {(await a.get(t)).status for t in ids} == {QUEUED}  # nothing was begun
            b.handoff.on_offer = real_offer  # type: ignore[union-attr, method-assign]
            real_transfer = b.handoff.on_transfer  # type: ignore[union-attr]

            async def lying_transfer(transfer: Any) -> TransferReply:
                reply = await real_transfer(transfer)
                return TransferReply((*reply.owned, "stranger"), reply.refused)

            b.handoff.on_transfer = lying_transfer  # type: ignore[union-attr, method-assign]
            with pytest.raises(HandoffProtocolError, match="never sent"):
                await a.handoff.offload("b", 2)
            # nothing recorded from the bad answer: the tasks are settled by asking b
            assert {(await a.get(t)).status for t in ids} == {TaskStatus.HANDING_OFF}
            b.handoff.on_transfer = real_transfer  # type: ignore[union-attr, method-assign]
            a.handoff.wake()
            await async_wait_until_async(
                lambda: statuses(a, ids, {HANDED_OFF}), what="a to settle by asking b (b does hold them)"
            )

    run(main())


async def statuses(node: LocalNode, ids: list[str], want: set[TaskStatus]) -> bool:
    return {(await node.get(t)).status for t in ids} <= want  # (a set comprehension: awaited in order)


def test_a_peer_that_is_down_leaves_the_tasks_handing_off_until_it_answers(redis_url: str) -> None:
    transport = MemoryTransport()
    cut = {"on": False}

    async def before(op: str, peer: str, msg: Any) -> None:
        if cut["on"] and op != "offer":
            raise PeerUnavailableError(f"link to {peer} is down")

    transport.before = before

    async def main() -> None:
        async with pair(redis_url, transport, b_worker=10) as (a, _b):
            await a.register_worker(WorkerSpec("wa", concurrency=10))
            ids = await a.submit([TaskSpec("job") for _ in range(3)])
            cut["on"] = True
            assert a.handoff is not None
            res = await a.handoff.offload("b", 3)
            assert sorted(res.unsettled) == sorted(ids)
            assert await a.claim("wa", 10) == []  # in doubt: not run here either
            asked = transport.calls.get("task_status", 0)
            await async_wait_until(
                lambda: transport.calls.get("task_status", 0) >= asked + 3, what="a to keep asking b"
            )
            assert {(await a.get(t)).status for t in ids} == {TaskStatus.HANDING_OFF}
            cut["on"] = False
            await async_wait_until_async(lambda: statuses(a, ids, {QUEUED}), what="a to take them back")
            assert len(await a.claim("wa", 10)) == 3  # b never got them: they run here

    run(main())


def test_a_status_query_makes_a_late_transfer_fail_safely(redis_url: str) -> None:
    """The origin asks before its transfer arrived: "unknown", and the late transfer is refused."""
    transport = MemoryTransport()

    async def main() -> None:
        async with pair(redis_url, transport, b_worker=10) as (a, b):
            ids = await a.submit([TaskSpec("job")])
            assert a.handoff is not None and b.handoff is not None
            gate = asyncio.Event()
            real_transfer = b.handoff.on_transfer

            async def slow_transfer(transfer: Any) -> TransferReply:
                await gate.wait()
                return await real_transfer(transfer)

            b.handoff.on_transfer = slow_transfer  # type: ignore[method-assign]
            offload = asyncio.create_task(a.handoff.offload("b", 1))
            await async_wait_until(lambda: bool(a._core.handoffs_in_flight()), what="the transfer to be on its way")
            reply: StatusReply = await transport.task_status("b", StatusQuery("a", tuple(ids)))
            assert reply.statuses == {ids[0]: RemoteStatus.UNKNOWN}
            gate.set()
            res = await offload
            assert list(res.refused) == ids and not res.handed_off
            assert (await a.get(ids[0])).status is QUEUED and b._core.tasks == {}

    run(main())


# ---------------------------------------------------------------------------- crashes at every step

STEPS = [
    ("a", "intent_recorded"),
    ("b", "transfer_received"),
    ("b", "peer_acked"),
    ("a", "ack_received"),
    ("a", "handed_off_recorded"),
    ("b", "result_sent"),
    ("a", "result_recorded"),
]
N = 12


def owners(r: redis.Redis, ids: list[str]) -> dict[str, list[str]]:
    """Which nodes hold each task as its owner, from what Redis has (active, or finished with
    owner_node = that node)."""
    held: dict[str, list[str]] = {tid: [] for tid in ids}
    for node_id in ("a", "b"):
        recs = {k.decode(): orjson.loads(v) for k, v in r.hgetall(f"fc:{node_id}:active").items()}
        for key in r.scan_iter(f"fc:{node_id}:done:*"):
            for k, v in r.hgetall(key).items():
                rec = orjson.loads(v)
                if rec.get("owner_node", rec["origin_node"]) == node_id:
                    recs.setdefault(k.decode(), rec)
        for tid in ids:
            if tid in recs:
                held[tid].append(node_id)
    return held


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("victim", "step"), STEPS, ids=[f"{v}-{s}" for v, s in STEPS])
def test_a_crash_at_any_step_loses_nothing_and_runs_nothing_twice(
    redis_url: str, redis_server: RedisServer, victim: str, step: str
) -> None:
    """Crash = the node's loops stop at once, with no last flush and no lock release; a new
    node then opens on the same data, taking the lock over. Afterwards every task has exactly
    one owner, none is lost, none ran twice, and its result is seen from the origin."""
    transport = MemoryTransport()
    r = redis_server.client()
    fired: list[str] = []
    nodes: dict[str, LocalNode] = {}
    runs: Counter[str] = Counter()  # acknowledged completions, by task (at most one each)

    async def hook(node_id: str, at: str) -> None:
        if node_id == victim and at == step and not fired:
            fired.append(at)
            await nodes[victim].kill()
            raise Crash(f"{victim} crashed at {at}")

    async def start(node_id: str, *, takeover: bool = False) -> LocalNode:
        config = cfg(peers=("b",) if node_id == "a" else (), takeover=takeover)
        node = await LocalNode.start(node_id, redis_url, config=config, transport=transport, step_hook=hook)
        nodes[node_id] = node
        return node

    async def drain(node: LocalNode, worker: str, ids: list[str]) -> None:
        """One round of a worker: claim and complete what it gets (its node may die meanwhile)."""
        try:
            if worker not in {w.id for w in await node.workers()}:
                await node.register_worker(WorkerSpec(worker, concurrency=N))
            for lease in await node.claim(worker, N, wait_s=0.02):
                await node.complete(lease, result=f"by {node.node_id}".encode())
                if lease.task_id in ids:
                    runs[lease.task_id] += 1
        except NodeClosedError:
            return

    async def main() -> None:
        a, b = await start("a"), await start("b")
        await b.register_worker(WorkerSpec("wb", concurrency=N))  # b accepts work it can run
        ids = await a.submit([TaskSpec("job", payload=f"p{i}".encode()) for i in range(N)])
        assert a.handoff is not None
        with contextlib.suppress(Crash):  # when the origin is the one that crashes
            await a.handoff.offload("b", N)
        if step in ("result_sent", "result_recorded"):  # the crash comes while results are reported
            await drain(b, "wb", ids)
            await async_wait_until(lambda: bool(fired), what=f"the crash at {step}")
        assert fired == [step], f"the hook never fired at {step}"
        await start(victim, takeover=True)  # on the same data; the dead one's lock is taken over
        a, b = nodes["a"], nodes["b"]
        try:
            await async_wait_until(lambda: not a._core.handoffs_in_flight(), timeout_s=20, what="a to settle")

            async def all_done() -> bool:
                await drain(b, "wb", ids)
                await drain(a, "wa", ids)
                return all([(await a.get(t)).status is COMPLETED for t in ids])

            await async_wait_until_async(all_done, timeout_s=20, what="every task to complete, seen from a")
            held = owners(r, ids)
            assert all(len(v) == 1 for v in held.values()), {t: v for t, v in held.items() if len(v) != 1}
            # a completion can land while its acknowledgement dies with the node: at most one each
            assert max(runs.values()) == 1, "a task was completed twice"
            completed = sum(int(r.hget(f"fc:{n}:counters", "completed") or 0) for n in ("a", "b"))
            assert completed == N, f"{completed} completions counted for {N} tasks"
            for tid in ids:
                assert (await a.get(tid)).result == f"by {held[tid][0]}".encode()
            await async_wait_until(lambda: not b._core.pending_reports(), timeout_s=20, what="reports to drain")
            a._core.validate()
            b._core.validate()
        finally:
            await a.close()
            await b.close()

    run(main())
    r.close()


def test_peers_are_chosen_from_the_federation_view_until_it_goes_stale(redis_url: str) -> None:
    """Hand-off peers come from the federated view while it counts; a stale view decays to
    nothing as the threshold does (it never freezes the choice): then the loads the peers
    themselves last answered with are used."""
    from node.admission import FederationView  # noqa: PLC0415

    clock = [1_800_000_000 * 10**9]
    transport = MemoryTransport()

    async def main() -> None:
        async with (
            LocalNode.open(
                "a", redis_url, config=cfg(peers=("b", "c")), transport=transport, clock_ns=lambda: clock[0]
            ) as a,
            LocalNode.open("b", redis_url, config=cfg(), transport=transport) as b,
        ):
            assert a.handoff is not None and b is not None
            a.apply_federation(FederationView(at_ns=clock[0], peer_loads={"b": 5.0, "c": 0.0}))
            assert dict(a.handoff.peer_loads(clock[0])) == {"b": 5.0, "c": 0.0}
            heard: dict[str, float] = {"b": 0.25}  # what b itself said in an offer reply: it wins over the view
            transport.peer_loads = lambda: heard  # type: ignore[method-assign]
            assert dict(a.handoff.peer_loads(clock[0])) == {"b": 0.25, "c": 0.0}
            adm = a.admission.cfg
            clock[0] += int((adm.stale_after_s + adm.decay_s / 2) * 1e9)  # losing weight, still counts
            assert dict(a.handoff.peer_loads(clock[0])) == {"b": 0.25, "c": 0.0}
            clock[0] += int(adm.decay_s * 1e9)  # stale: counts for nothing
            assert a.handoff.peer_loads(clock[0]) == {"b": 0.25}

    run(main())


def test_power_of_two_choices_tries_a_peer_it_knows_nothing_of_as_an_average_one() -> None:
    """An unknown peer counts as the average of the known ones: with one known peer and one
    unknown, both get chosen (counting the unknown as full sent every hand-off of the demo to
    the first peer that answered); with loads known, the less loaded one always wins."""
    import random  # noqa: PLC0415

    from node.handoff import choose_peer  # noqa: PLC0415

    rng = random.Random(7)
    picks = Counter(choose_peer(["b", "c"], {"b": 0.3}, rng) for _ in range(400))
    assert set(picks) == {"b", "c"} and min(picks.values()) > 100
    assert {choose_peer(["b", "c"], {"b": 0.3, "c": 0.1}, rng) for _ in range(50)} == {"c"}
    assert set(Counter(choose_peer(["b", "c", "d"], {}, rng) for _ in range(300))) == {"b", "c", "d"}
    assert choose_peer(["b", "c"], {}, rng, exclude=["b", "c"]) is None
    assert choose_peer(["b"], {"b": 9.0}, rng) == "b"


def test_a_peer_that_does_not_answer_offers_is_left_out_of_the_choice_for_a_while(redis_url: str) -> None:
    """A peer whose offer got no answer is in back-off (``retry_s``, doubling): the next
    offloads go to the other peer instead of timing out on it again; it is tried again after."""
    transport = MemoryTransport()
    clock = [1_800_000_000 * 10**9]

    async def main() -> None:
        async with (
            LocalNode.open(
                "a", redis_url, config=cfg(peers=("b", "c")), transport=transport, clock_ns=lambda: clock[0]
            ) as a,
            LocalNode.open("c", redis_url, config=cfg(), transport=transport) as c,
        ):  # b is not running
            await c.register_worker(WorkerSpec("wc", concurrency=100))
            await a.submit([TaskSpec("job") for _ in range(40)])
            agent = a.handoff
            assert agent is not None
            first = await agent.offload("b", 2)  # b chosen (as a random choice among unknowns would)
            assert not first.handed_off and "not reachable" in first.reason
            results = [await agent.offload(None, 2) for _ in range(10)]
            assert [(r.peer, len(r.handed_off)) for r in results] == [("c", 2)] * 10
            assert agent._reachable(clock[0]) == ["c"]
            clock[0] += int(agent.cfg.retry_s * 1e9)  # back-off over: b is a candidate again
            assert agent._reachable(clock[0]) == ["b", "c"]
            for _ in range(200):  # a random choice between b and c: b comes up soon
                if (await agent.offload(None, 1)).peer == "b":
                    break
            else:
                pytest.fail("b was never chosen again after its back-off")
            assert agent._reachable(clock[0]) == ["c"]  # failed again: twice as long now
            clock[0] += int(agent.cfg.retry_s * 1e9)
            assert agent._reachable(clock[0]) == ["c"]
            clock[0] += int(agent.cfg.retry_s * 1e9)
            assert agent._reachable(clock[0]) == ["b", "c"]

    run(main())


def test_an_offload_pass_fills_each_peer_to_its_threshold_in_turn(redis_url: str) -> None:
    """One pass hands off to every peer with room, not only to the first one chosen: a peer
    that took less than it was offered is left out of the rest of the pass."""
    transport = MemoryTransport()

    async def main() -> None:
        async with (
            LocalNode.open("a", redis_url, config=cfg(peers=("b", "c")), transport=transport) as a,
            LocalNode.open("b", redis_url, config=cfg(), transport=transport) as b,
            LocalNode.open("c", redis_url, config=cfg(), transport=transport) as c,
        ):
            await a.register_worker(WorkerSpec("wa", concurrency=2))
            await b.register_worker(WorkerSpec("wb", concurrency=3))
            await c.register_worker(WorkerSpec("wc", concurrency=5))
            await a.submit([TaskSpec("job") for _ in range(30)])
            assert a.handoff is not None
            assert await a.handoff.offload_pass() == 8  # b's 3 slots and c's 5 (threshold 1.0)
            assert (b.load().ready, c.load().ready, a.load().ready) == (3, 5, 22)
            assert await a.handoff.offload_pass() == 0  # everyone full: nothing more until room comes back

    run(main())


def test_an_offload_pass_reaches_every_peer_even_with_one_offer_at_a_time(redis_url: str) -> None:
    """With one attempt in flight (``concurrency`` 1) and three peers, a peer with no room at
    all does not end the pass: it goes on until every peer has been found full."""
    import random  # noqa: PLC0415

    class FirstTwo(random.Random):  # power of two choices over (b, c, d) picks b first
        def sample(self, population: Any, k: int, **_: Any) -> list[Any]:
            return list(population)[:k]

    transport = MemoryTransport()
    base = cfg(peers=("b", "c", "d"))
    one = NodeConfig(
        tick_max_s=base.tick_max_s,
        listener_check_s=base.listener_check_s,
        admission=base.admission,
        handoff=HandoffConfig(peers=("b", "c", "d"), auto=False, concurrency=1),
    )

    async def main() -> None:
        async with (
            LocalNode.open("a", redis_url, config=one, transport=transport) as a,
            LocalNode.open("b", redis_url, config=cfg(), transport=transport) as b,
            LocalNode.open("c", redis_url, config=cfg(), transport=transport) as c,
            LocalNode.open("d", redis_url, config=cfg(), transport=transport) as d,
        ):
            await a.register_worker(WorkerSpec("wa", concurrency=1))
            for node, slots in ((b, 2), (c, 3), (d, 4)):
                await node.register_worker(WorkerSpec(f"w{node.node_id}", concurrency=slots))
            await b.submit([TaskSpec("own") for _ in range(2)])  # b is full with its own work
            await a.submit([TaskSpec("job") for _ in range(30)])
            assert a.handoff is not None
            a.handoff._rng = FirstTwo()
            assert await a.handoff.offload_pass() == 7  # b took none; c and d their 3 and 4
            assert (b.load().ready, c.load().ready, d.load().ready) == (2, 3, 4)
            assert await a.handoff.offload_pass() == 0

    run(main())
