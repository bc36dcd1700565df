"""The privacy claims on a real node (LocalNode on the private real Redis): what a release costs
is OpenDP's composition, the ledger refuses once the budget is spent and still refuses after a
restart, a store that is down releases nothing, and the released bytes hold no raw count, no
task content and no type name outside the vocabulary.

The node runs on a clock the test moves (``clock_ns``): a window closes when the test says so,
so nothing here waits for time to pass.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
import pytest
import redis

from federation.privacy.config import DEFAULT_VOCABULARY, OTHER, PrivacyConfig
from federation.privacy.mechanism import calibrate_scale, rho_for_epsilon
from federation.privacy.pipeline import CELLS_PER_TASK, cells_of
from federation.privacy.schema import ReleasedSummary
from federation.privacy.status import ReleaseOutcome, ReleaseStatus
from node import LocalNode, NodeConfig, TaskSpec, ValidationError, WorkerSpec
from node.analytics.histogram import FixedBins
from node.errors import StoreUnavailableError
from node.runtime.config import NodeState
from node.store.base import LedgerEntry
from tests.conftest import RedisServer, async_wait_until, async_wait_until_async
from tests.test_privacy import reference_epsilon

T = TypeVar("T")
NS = 1_000_000_000
WINDOW_S = 10.0


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


class Clock:
    """The node's clock (Unix ns), moved by the test. It starts 0.1 s into window ``w0``, a
    window that begins after the real now (so archive buckets and lock times stay sensible)."""

    def __init__(self, window_s: float = WINDOW_S):
        self.window_ns = int(window_s * NS)
        self.w0 = time.time_ns() // self.window_ns + 1
        self.now = 0
        self.to_window(self.w0)

    def __call__(self) -> int:
        return self.now

    def to_window(self, w: int) -> None:
        """0.1 s into window ``w`` (forward, or back for a clock that stepped back)."""
        self.now = w * self.window_ns + NS // 10


def node_config(privacy: PrivacyConfig | None = None, **kw: Any) -> NodeConfig:
    kw.setdefault("listener_check_s", 0.05)
    return NodeConfig(window_s=WINDOW_S, privacy=privacy or PrivacyConfig(), tick_max_s=0.02, seed=7, **kw)


def one_release_per_m_scale(cfg: PrivacyConfig) -> float:
    """An explicit scale under which one release costs 3/4 of the budget: one fits in any m windows."""
    budget = rho_for_epsilon(cfg.epsilon, cfg.delta)
    return calibrate_scale(cfg.mechanism, cells_of(cfg), CELLS_PER_TASK, budget * 0.75)


def ledger_keys(r: redis.Redis, node_id: str = "n1") -> tuple[dict[str, str], list[tuple[dict[str, Any], float]]]:
    """The ledger as redis-cli shows it: the totals hash and the releases zset (JSON, score)."""
    totals = {k.decode(): v.decode() for k, v in r.hgetall(f"fc:{node_id}:privacy").items()}
    entries = [(orjson.loads(m), s) for m, s in r.zrange(f"fc:{node_id}:privacy:releases", 0, -1, withscores=True)]
    return totals, entries


def released(out: ReleaseOutcome, window: int) -> ReleasedSummary:
    assert out.status is ReleaseStatus.RELEASED, out
    assert out.summary is not None and out.summary.window == window
    return out.summary


def ref_eps(cfg: PrivacyConfig, scale: float, j: int) -> float:
    return reference_epsilon(cfg.mechanism, cells_of(cfg), scale, j, cfg.delta)


# ---------------------------------------------------------------------------- 2. epsilon = OpenDP composition


@pytest.mark.parametrize(
    ("kind", "scale"),
    [("gaussian", None), ("gaussian", 25.0), ("laplace", None)],
    ids=["gaussian-calibrated", "gaussian-scale-25", "laplace-calibrated"],
)
def test_a_node_reports_opendp_s_composition_of_its_last_m_releases(
    redis_url: str, kind: str, scale: float | None
) -> None:
    """One release per window, k = 1 .. m + 2: each release's ``cost.epsilon`` is OpenDP's
    composition of the releases in its last m windows (j = min(k, m)), and the status says what
    the tasks still counting have spent (the last m - 1 releases), the worst so far, and what
    the next release would leave."""
    cfg = PrivacyConfig(mechanism=kind, scale=scale)
    clock = Clock()
    m = cfg.m

    async def main() -> None:
        async with LocalNode.open("n1", redis_url, config=node_config(cfg), clock_ns=clock) as node:
            st0 = node.privacy_status()
            assert (st0.releases, st0.epsilon_current, st0.epsilon_worst, st0.last_window) == (0, 0.0, 0.0, None)
            for k in range(1, m + 3):
                clock.to_window(clock.w0 + k)
                s = released(await node.release_summary(), clock.w0 + k - 1)
                cost = s.cost
                assert (cost.mechanism, cost.m, cost.delta, cost.epsilon_budget) == (kind, m, cfg.delta, cfg.epsilon)
                if scale is not None:
                    assert cost.scale == scale
                assert cost.epsilon == pytest.approx(ref_eps(cfg, cost.scale, min(k, m)), rel=1e-9)
                st = node.privacy_status()
                assert (st.releases, st.refused, st.last_window) == (k, 0, s.window)
                assert (st.scale, st.variance, st.rho_per_release) == (cost.scale, cost.variance, cost.rho)
                current = min(k, m - 1)  # releases a task counting in the next one has been in
                assert st.epsilon_current == pytest.approx(ref_eps(cfg, cost.scale, current), rel=1e-9)
                assert st.epsilon_worst == pytest.approx(ref_eps(cfg, cost.scale, min(k, m)), rel=1e-9)
                left = cfg.epsilon - ref_eps(cfg, cost.scale, current + 1)
                assert st.epsilon_left == pytest.approx(left, abs=1e-9)
                assert st.next_allowed
            assert cost.epsilon <= cfg.epsilon  # m releases: within the budget (calibrated: all of it)

    run(main())


# ---------------------------------------------------------------------------- 3. the ledger, restarts


def test_the_ledger_refuses_once_the_budget_is_spent_and_after_a_restart(
    redis_url: str, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An explicit scale under which one release costs 3/4 of the budget: one release fits in
    any m = 3 windows. Window w0 is released; w0 + 1 and w0 + 2 are refused (a WARNING naming
    the budget, once per window, counted in the ledger), also by a node restarted on the same
    Redis; w0 + 3 is released again. That is the per-task guarantee, not a lifetime cap: a task
    counts only in the m windows from its creation, so the tasks that count in w0 + 3 (created
    in w0 + 1 .. w0 + 3) were never in the release of w0."""
    cfg = PrivacyConfig(scale=one_release_per_m_scale(PrivacyConfig()))
    clock = Clock()
    w0 = clock.w0
    r = redis_server.client()
    caplog.set_level(logging.WARNING, logger="fedcoord.privacy")

    def refusals() -> list[str]:
        return [
            rec.getMessage()
            for rec in caplog.records
            if rec.name == "fedcoord.privacy" and rec.levelno == logging.WARNING and "refused" in rec.getMessage()
        ]

    async def main() -> None:
        async with LocalNode.open("n1", redis_url, config=node_config(cfg), clock_ns=clock) as node:
            assert any("allows 1 releases in any 3 windows" in rec.getMessage() for rec in caplog.records)
            clock.to_window(w0 + 1)
            first = released(await node.release_summary(), w0)
            assert first.cost.epsilon <= cfg.epsilon < ref_eps(cfg, first.cost.scale, 2)
            keys = ledger_keys(r)

            # the same window again: the same release, no new cost
            again = await node.release_summary()
            assert again.status is ReleaseStatus.REPEATED and again.summary == first
            assert again.summary is not None and again.summary.to_bytes() == first.to_bytes()
            assert ledger_keys(r) == keys

            clock.to_window(w0 + 2)
            for _ in range(2):  # asked twice: refused twice, logged and counted once
                out = await node.release_summary()
                assert out.status is ReleaseStatus.BUDGET_EXHAUSTED and out.summary is None
                assert "privacy budget" in out.reason and f"window {w0 + 1}" in out.reason
            (line,) = refusals()
            assert f"window {w0 + 1}" in line and "budget 1 at delta 1e-06" in line
            before = node.privacy_status()
            assert (before.releases, before.refused, before.last_window, before.next_allowed) == (1, 1, w0, False)

        # the ledger in Redis, as redis-cli reads it
        totals, entries = ledger_keys(r)
        assert (totals["releases"], totals["refused"], totals["last_window"]) == ("1", "1", str(w0))
        assert float(totals["rho_total"]) == first.cost.rho
        ((entry, score),) = entries
        assert entry["window"] == w0 and entry["rho"] == first.cost.rho and entry["scale"] == first.cost.scale
        assert score == entry["end_us"] == (w0 + 1) * int(WINDOW_S * 1e6)

        # restarted on the same Redis (still in window w0 + 2): the same budget, the same totals
        async with LocalNode.open("n1", redis_url, config=node_config(cfg), clock_ns=clock) as node:
            assert node.privacy_status() == before
            clock.to_window(w0 + 3)  # w0 + 2: within m windows of w0
            out = await node.release_summary()
            assert out.status is ReleaseStatus.BUDGET_EXHAUSTED and f"window {w0 + 2}" in out.reason
            assert len(refusals()) == 2
            st = node.privacy_status()
            assert (st.releases, st.refused, st.last_window, st.next_allowed) == (1, 2, w0, False)
            assert ledger_keys(r)[1] == entries  # nothing recorded

        async with LocalNode.open("n1", redis_url, config=node_config(cfg), clock_ns=clock) as node:
            st = node.privacy_status()
            assert (st.releases, st.refused) == (1, 2)  # the refusals are persisted too
            clock.to_window(w0 + 4)  # w0 + 3: w0 is more than m - 1 windows back
            s = released(await node.release_summary(), w0 + 3)
            assert s.cost.epsilon == pytest.approx(ref_eps(cfg, s.cost.scale, 1), rel=1e-9)
            st = node.privacy_status()
            assert (st.releases, st.refused, st.last_window) == (2, 2, w0 + 3)
            assert st.epsilon_worst == pytest.approx(ref_eps(cfg, s.cost.scale, 1), rel=1e-9)
        totals, entries = ledger_keys(r)
        assert (totals["releases"], totals["refused"], totals["last_window"]) == ("2", "2", str(w0 + 3))
        assert [e["window"] for e, _ in entries] == [w0, w0 + 3]

    try:
        run(main())
    finally:
        r.close()


def test_a_window_released_before_a_restart_is_not_released_again(redis_url: str, redis_server: RedisServer) -> None:
    """The restarted node's clock is behind (it stepped back, or another host took over), so its
    first complete window is one the ledger has paid for already: not released again (the noisy
    copy is gone; a fresh draw would pay twice), no new ledger entry, and the next one is."""
    clock = Clock()
    w0 = clock.w0
    r = redis_server.client()

    async def main() -> None:
        async with LocalNode.open("n1", redis_url, config=node_config(), clock_ns=clock) as node:
            clock.to_window(w0 + 1)
            released(await node.release_summary(), w0)
            before = node.privacy_status()
        keys = ledger_keys(r)
        clock.to_window(w0)
        async with LocalNode.open("n1", redis_url, config=node_config(), clock_ns=clock) as node:
            assert node.privacy_status() == before
            clock.to_window(w0 + 1)
            out = await node.release_summary()
            assert out.status is ReleaseStatus.NO_WINDOW and out.summary is None
            assert f"window {w0} was released already" in out.reason
            assert ledger_keys(r) == keys and node.privacy_status() == before
            clock.to_window(w0 + 2)
            released(await node.release_summary(), w0 + 1)
            assert node.privacy_status().releases == 2

    try:
        run(main())
    finally:
        r.close()


def test_nothing_is_released_while_the_store_is_down(own_redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    """Redis killed (SIGKILL) between the window's close and the release: the ledger cannot
    record it, so nothing is returned (UNAVAILABLE); once Redis is back the window is released,
    and the ledger holds exactly that one release."""
    r = own_redis.client()
    r.config_set("appendfsync", "always")  # what the node wrote before the kill survives it
    clock = Clock()
    caplog.set_level(logging.WARNING, logger="fedcoord.privacy")

    async def main() -> None:
        cfg = node_config(listener_check_s=30.0, lock_ttl_s=30.0)  # no background store calls meanwhile
        async with LocalNode.open("n1", own_redis.url, config=cfg, clock_ns=clock) as node:
            await node.submit([TaskSpec("coding") for _ in range(50)])
            clock.to_window(clock.w0 + 1)
            own_redis.kill()
            out = await node.release_summary()
            assert out.status is ReleaseStatus.UNAVAILABLE and out.summary is None and not out.released
            assert "could not record" in out.reason
            assert any("not made" in rec.getMessage() for rec in caplog.records)
            assert node.privacy_status().releases == 0
            own_redis.start()  # same port and directory: the AOF brings the data back
            assert ledger_keys(r) == ({}, [])  # nothing was recorded

            async def release_once_back() -> ReleaseOutcome | None:
                o = await node.release_summary()
                assert o.status in (ReleaseStatus.RELEASED, ReleaseStatus.UNAVAILABLE), o
                return o if o.status is ReleaseStatus.RELEASED else None

            out = await async_wait_until_async(release_once_back, 10, "a release once Redis is back")
            released(out, clock.w0)
            totals, entries = ledger_keys(r)
            assert totals["releases"] == "1" and [e["window"] for e, _ in entries] == [clock.w0]

    try:
        run(main())
    finally:
        r.close()


def test_a_waiting_task_counts_in_the_occupied_slots_of_its_m_windows_only(redis_url: str) -> None:
    """3,000 tasks created in w0 wait and are never claimed: the released occupancy carries them
    in w0 .. w0 + m - 1 and not after (the privacy horizon; the node's own load still has them).
    The noise sd is 13.6, so 3,000 and 0 are 220 sd apart; the bounds allow 6 sd."""
    cfg = PrivacyConfig()
    clock = Clock()

    async def main() -> None:
        async with LocalNode.open("n1", redis_url, config=node_config(cfg), clock_ns=clock) as node:
            await node.submit([TaskSpec("coding") for _ in range(3000)])
            for k in range(cfg.m + 2):
                clock.to_window(clock.w0 + k + 1)
                s = released(await node.release_summary(), clock.w0 + k)
                six_sd = 6 * s.cost.variance**0.5
                expected = 3000 if k < cfg.m else 0
                assert abs(s.occupied_slots - expected) <= six_sd, (k, s.occupied_slots)
                assert node.load().ready == 3000  # the node itself still sees them all

    run(main())


def test_a_node_with_privacy_disabled_releases_nothing(redis_url: str, redis_server: RedisServer) -> None:
    clock = Clock()
    r = redis_server.client()

    async def main() -> None:
        cfg = node_config(PrivacyConfig(enabled=False))
        async with LocalNode.open("n1", redis_url, config=cfg, clock_ns=clock) as node:
            await node.submit([TaskSpec("coding") for _ in range(10)])
            clock.to_window(clock.w0 + 1)
            out = await node.release_summary()
            assert out.status is ReleaseStatus.DISABLED and out.summary is None
            st = node.privacy_status()
            assert (st.enabled, st.releases, st.next_allowed) == (False, 0, False)
        assert ledger_keys(r) == ({}, [])

    try:
        run(main())
    finally:
        r.close()


# ---------------------------------------------------------------------------- 7. bad settings at start


def test_a_node_with_an_unaffordable_scale_or_other_bins_is_refused_at_start(redis_url: str) -> None:
    cfg = PrivacyConfig()
    budget = rho_for_epsilon(cfg.epsilon, cfg.delta)
    least = calibrate_scale(cfg.mechanism, cells_of(cfg), CELLS_PER_TASK, budget)

    async def main() -> None:
        with pytest.raises(ValidationError) as e:
            async with LocalNode.open("n1", redis_url, config=node_config(PrivacyConfig(scale=least * 0.9))):
                pass  # pragma: no cover - refused before it serves
        assert e.value.field == "privacy.scale"
        # the node id is free: nothing was taken by the refused start
        async with LocalNode.open("n1", redis_url, config=node_config(PrivacyConfig(scale=least * 1.1))) as node:
            assert node.privacy_status().next_allowed

    run(main())
    with pytest.raises(ValidationError) as e:
        NodeConfig(completion_bins=FixedBins((1.0, 2.0)), privacy=PrivacyConfig())
    assert e.value.field == "privacy.completion_edges_s"
    with pytest.raises(ValidationError) as e:
        NodeConfig(completion_bins=FixedBins((1.0, 2.0)), privacy=PrivacyConfig(completion_edges_s=(1.0, 3.0)))
    assert e.value.field == "privacy.completion_edges_s"
    NodeConfig(completion_bins=FixedBins((1.0, 2.0)), privacy=PrivacyConfig(completion_edges_s=(1.0, 2.0)))


# ---------------------------------------------------------------------------- 4. what the bytes hold

PLANTED = 7919  # raw submitted count of one vocabulary type in every window (a prime, unlike any other cell)
SECRET_TYPE = "zebra_secret_xq"
N_SECRET, N_DONE, N_FAILED = 600, 200, 100  # out-of-vocabulary tasks per window; of them completed, failed
WINDOWS_PLANTED = 4
SECRETS = [
    SECRET_TYPE.encode(),
    b"PAYLOAD-kq7",  # payload prefix
    b"ctx-key-hq2",  # context key
    b"ctx-val-mq9",  # context value prefix
    b"tid-zq4",  # explicit task id prefix
    b"idem-xv8",  # idempotency key prefix
    b"RESULT-pp3",  # result prefix
    b"ERROR-jj6",  # error message prefix
    b"wkr-hidden-5s",  # worker id
    b"cap-hidden-8u",  # capability
]


def number_token(n: int) -> re.Pattern[bytes]:
    """``n`` as a number of its own in a JSON text (not digits inside a longer number)."""
    return re.compile(rb"(?<![\d.])" + str(n).encode() + rb"(?!\d)")


def test_released_bytes_hold_no_raw_count_no_task_content_no_private_type(redis_url: str) -> None:
    """In each of 4 windows: 7919 tasks of the vocabulary type "coding" (the planted raw count)
    and 600 tasks of the type "zebra_secret_xq" with distinctive payloads, contexts, ids,
    idempotency keys, results and errors. The released bytes (JSON, and the protobuf encoding)
    contain none of that content, no type outside the vocabulary, and the zebra tasks show
    under "other". The planted count itself can come out exactly only if the noise is 0: the
    discrete Gaussian's mass at 0 is ~1/(sqrt(2 pi) sd) = 0.029 at the default sd 13.6 (the
    other cells' raw values are at least 300 = 22 sd away), so requiring it absent from at
    least one of 4 releases fails falsely with probability 0.029^4 = 7e-7."""
    from node.rpc import convert  # noqa: PLC0415 - the wire encoding, if the node speaks it

    to_pb = getattr(convert, "summary_to_pb", None)
    from_pb = getattr(convert, "summary_from_pb", None)
    cfg = PrivacyConfig()
    clock = Clock()
    token = number_token(PLANTED)
    assert token.search(b'{"submitted":[0,7919,3]}') and token.search(b"[7919.0]")  # the check can fail...
    assert not token.search(b'{"scale":13.57919,"w":179190}')  # ...and is not fooled by other numbers
    summaries: list[ReleasedSummary] = []

    async def main() -> None:
        async with LocalNode.open("n1", redis_url, config=node_config(cfg), clock_ns=clock) as node:
            await node.register_worker(WorkerSpec("wkr-hidden-5s", capabilities=("cap-hidden-8u",), concurrency=1000))
            for k in range(WINDOWS_PLANTED):
                w = clock.w0 + k
                clock.to_window(w)
                await node.submit([TaskSpec("coding", payload=b"PAYLOAD-kq7-c%d" % i) for i in range(PLANTED)])
                secret = [
                    TaskSpec(
                        SECRET_TYPE,
                        payload=b"PAYLOAD-kq7-\x00\xff-%d-%d" % (k, i),
                        context={"ctx-key-hq2": f"ctx-val-mq9-{k}-{i}"},
                        priority="critical",  # claimed before the coding tasks
                        required_capabilities=("cap-hidden-8u",),
                        idempotency_key=f"idem-xv8-{k}-{i}",
                        id=f"tid-zq4-{k}-{i}",
                    )
                    for i in range(N_SECRET)
                ]
                await node.submit(secret)
                leases = await node.claim("wkr-hidden-5s", N_DONE + N_FAILED)
                assert {lease.spec.type for lease in leases} == {SECRET_TYPE}
                await node.finish_many(
                    completed=[(lease, b"RESULT-pp3-%d" % i) for i, lease in enumerate(leases[:N_DONE])],
                    failed=[(lease, f"ERROR-jj6-{i}", False) for i, lease in enumerate(leases[N_DONE:])],
                )
                clock.to_window(w + 1)
                summaries.append(released(await node.release_summary(), w))

    run(main())
    hits = 0
    for s in summaries:
        raw = s.to_bytes()
        encodings = [raw]
        if to_pb is not None:
            pb = to_pb(s)
            encodings.append(pb.SerializeToString())
            if from_pb is not None:
                assert from_pb(pb) == s  # the wire form carries the same numbers as the JSON checked below
        for data in encodings:
            for secret in SECRETS:
                assert secret not in data, (secret, s.window)
        # the only strings in a release: its node id, the public type names, the mechanism
        rec = orjson.loads(raw)
        assert rec == s.to_record() and list(rec) == list(ReleasedSummary.FIELDS)
        assert set(strings_in(rec)) == {"n1", *DEFAULT_VOCABULARY, OTHER, cfg.mechanism}
        assert s.types == (*DEFAULT_VOCABULARY, OTHER)
        sd = s.cost.variance**0.5
        assert abs(s.counts("submitted")["coding"] - PLANTED) <= 6 * sd
        assert abs(s.counts("submitted")[OTHER] - N_SECRET) <= 6 * sd  # 44 sd above 0: never hidden
        assert abs(s.counts("failed")[OTHER] - N_FAILED) <= 6 * sd
        assert abs(s.counts("completed")[OTHER] - N_DONE) <= 10 * sd  # after the consistent-total scaling
        if token.search(raw):
            hits += 1
    assert hits < len(summaries)


def strings_in(v: object) -> list[str]:
    if isinstance(v, str):
        return [v]
    if isinstance(v, dict):
        return [s for k, x in v.items() for s in strings_in(x)]
    if isinstance(v, list):
        return [s for x in v for s in strings_in(x)]
    return []


def test_windows_counted_before_a_store_outage_are_never_released(own_redis: RedisServer) -> None:
    """The store may come back older than what the node counted (a restart from a snapshot, the
    last second of an AOF lost): a task the reload brings back could then count twice in one
    window. So a node that recovered from an outage throws its windows away, as a restart does:
    the window of the 2,000 tasks submitted before the outage is released without them."""
    r = own_redis.client()
    r.config_set("appendfsync", "always")
    clock = Clock()

    async def main() -> None:
        cfg = node_config(listener_check_s=30.0)
        async with LocalNode.open("n1", own_redis.url, config=cfg, clock_ns=clock) as node:
            await node.submit([TaskSpec("coding") for _ in range(2000)])
            own_redis.kill()
            with pytest.raises(StoreUnavailableError):
                await node.submit([TaskSpec("coding")])
            own_redis.start()
            await async_wait_until(lambda: node.state is NodeState.SERVING, 20, "the node to recover")
            clock.to_window(clock.w0 + 1)
            out = released(await node.release_summary(), clock.w0)
            coding = out.counts("submitted")["coding"]
            # noise sd 13.6: 2,000 would be 140 sd away; what is left is noise (or suppressed to 0)
            assert coding < 200, coding
            assert node.summary() is not None and node.summary().total("submitted") == 0  # type: ignore[union-attr]

    try:
        run(main())
    finally:
        r.close()


def test_a_release_the_store_holds_but_this_node_missed_is_accounted(redis_url: str) -> None:
    """A ledger write whose reply was lost (timeout) may have landed: the node's copy of the
    ledger is then behind the store. The store's script is the authority: the window is not
    released twice, and the next release states what its tasks really spent."""
    clock = Clock()

    async def main() -> None:
        async with LocalNode.open("n1", redis_url, config=node_config(), clock_ns=clock) as node:
            clock.to_window(clock.w0 + 1)
            first = released(await node.release_summary(), clock.w0)
            rho = first.cost.rho
            win_us = int(WINDOW_S * 1e6)

            async def lost_write(w: int) -> None:  # a write that landed without this node hearing of it
                e = LedgerEntry(w, rho, clock.now, "gaussian", first.cost.scale, w * win_us, (w + 1) * win_us)
                await node._store.ledger_record(e, m=3, rho_budget=1.0)

            await lost_write(clock.w0 + 1)
            clock.to_window(clock.w0 + 3)
            # window w0 + 2: its tasks may be in w0 and w0 + 1 too: 3 releases, not the 2 this copy knew
            third = released(await node.release_summary(), clock.w0 + 2)
            assert third.cost.epsilon == pytest.approx(ref_eps(PrivacyConfig(), first.cost.scale, 3), rel=1e-9)
            assert node.privacy_status().releases == 3  # the copy was read again from the store
            await lost_write(clock.w0 + 3)
            clock.to_window(clock.w0 + 4)
            out = await node.release_summary()
            assert out.status is ReleaseStatus.NO_WINDOW and "starts before" in out.reason  # never twice
            assert node.privacy_status().releases == 4

    run(main())
