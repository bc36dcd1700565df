"""Privacy-filtered summaries over gRPC, against a real node server (the test Redis, a free port):
Summary (no window yet, released, repeated, refused for budget: answers, not errors),
ApplyFederation (the threshold the view gives; a malformed view is INVALID_ARGUMENT naming the
field and changes nothing), the federation role, the privacy status in Stats, the clients, and
``fedcoord privacy status`` as a process."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest

from federation.aggregate import aggregate
from federation.privacy.config import PrivacyConfig
from federation.privacy.mechanism import calibrate_scale, rho_for_epsilon
from federation.privacy.pipeline import CELLS_PER_TASK, cells_of
from federation.privacy.schema import PrivacyCost, ReleasedSummary, SchemaError
from federation.privacy.status import PrivacyStatus, ReleaseOutcome, ReleaseStatus
from federation.view import Estimate, GlobalView, NodeEstimate, QuantileEstimate
from node import CoreConfig, LocalNode, NodeConfig, TaskSpec, WorkerSpec
from node.admission import AdmissionConfig
from node.errors import NotAuthorizedError, ValidationError
from node.rpc import convert as cv
from node.rpc.auth import AuthInterceptor, Tokens, bearer_metadata
from node.rpc.client import AsyncNodeClient, NodeClient
from node.rpc.server import NodeServer, ServerOptions
from protos.fedcoord.v1 import federation_pb2 as fpb
from protos.fedcoord.v1 import node_pb2 as npb
from protos.fedcoord.v1 import node_pb2_grpc
from tests.conftest import async_wait_until_async
from tests.test_runtime import run

NODE = "pv1"
OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
FEDCOORD = [sys.executable, "-m", "fedcoord"]
SHORT_WINDOW_S = 0.5


def node_config(window_s: float = SHORT_WINDOW_S, privacy: PrivacyConfig | None = None) -> NodeConfig:
    # The seed policy reads the view's load share: 0.8 above 0.4 (+ hysteresis), 0.5 below.
    return NodeConfig(
        core=CoreConfig(heartbeat_timeout_s=5.0),
        admission=AdmissionConfig(policy="seed", threshold=0.7),
        privacy=privacy or PrivacyConfig(),
        window_s=window_s,
        tick_max_s=0.02,
        listener_check_s=0.05,
        seed=7,
    )


@dataclasses.dataclass
class Served:
    node: LocalNode
    server: NodeServer
    channel: grpc.aio.Channel

    @property
    def stub(self) -> node_pb2_grpc.NodeServiceStub:
        return node_pb2_grpc.NodeServiceStub(self.channel)


@contextlib.asynccontextmanager
async def served(
    redis_url: str,
    *,
    config: NodeConfig | None = None,
    tokens: Tokens | None = None,
    clock_ns: Callable[[], int] = time.time_ns,
) -> AsyncIterator[Served]:
    interceptors = (AuthInterceptor(tokens),) if tokens is not None else ()
    async with LocalNode.open(NODE, redis_url=redis_url, config=config or node_config(), clock_ns=clock_ns) as node:
        server = NodeServer(node, ServerOptions(interceptors=interceptors))
        await server.start()
        channel = grpc.aio.insecure_channel(server.address)
        try:
            yield Served(node, server, channel)
        finally:
            await channel.close()
            await server.stop()


async def error_of(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def summary(s: Served, token: str | None = None) -> npb.SummaryReply:
    reply: npb.SummaryReply = await s.stub.Summary(npb.SummaryRequest(), metadata=bearer_metadata(token), timeout=10)
    return reply


async def first_release(s: Served, token: str | None = None) -> ReleasedSummary:
    """The first summary the node releases over gRPC (waits for a window to close, with a deadline)."""

    async def released() -> npb.SummaryReply | None:
        reply = await summary(s, token)
        return reply if reply.status != ReleaseStatus.NO_WINDOW.value else None

    reply = await async_wait_until_async(released, timeout_s=10, what="a window to close and be released")
    assert reply.status == ReleaseStatus.RELEASED.value, reply
    return cv.release_from_pb(reply).summary  # type: ignore[return-value]


def view_with_shares(at_ns: int, mine: float, others: float) -> GlobalView:
    """A view in which this node holds ``mine`` of the occupied slots and a peer ``others``."""
    est = {
        NODE: NodeEstimate(NODE, 3, Estimate(mine, 1.0), 8, Estimate(mine / 8, 0.125)),
        "pv2": NodeEstimate("pv2", 3, Estimate(others, 1.0), 8, Estimate(others / 8, 0.125)),
    }
    total = mine + others
    return GlobalView(
        round=1,
        at_ns=at_ns,
        window=3,
        window_s=SHORT_WINDOW_S,
        types=("coding", "other"),
        participants=(NODE, "pv2"),
        submitted_per_s={"coding": Estimate(2.0, 0.5), "other": Estimate(0.0, 0.5)},
        occupied=Estimate(total, 1.4),
        capacity=16,
        federation_load=Estimate(total / 16, 0.09),
        nodes=est,
    )


# ---------------------------------------------------------------------------------- Summary


def test_summary_before_any_window_closed_answers_no_window(redis_url: str) -> None:
    window_ns = 20_000_000_000
    clock = [(time.time_ns() // window_ns) * window_ns + 1_000_000_000]  # 1 s into a window, held there

    async def main() -> None:
        async with served(redis_url, config=node_config(window_s=20.0), clock_ns=lambda: clock[0]) as s:
            reply = await summary(s)
            assert (reply.status, reply.HasField("summary")) == (ReleaseStatus.NO_WINDOW.value, False)
            assert "no complete window" in reply.reason
            outcome = cv.release_from_pb(reply)
            assert outcome == ReleaseOutcome(ReleaseStatus.NO_WINDOW, None, reply.reason, s.node.privacy_status(), NODE)
            stats = await s.stub.Stats(npb.StatsRequest(), timeout=10)
            assert stats.privacy.releases == 0 and not stats.privacy.HasField("last_window")

    run(main())


def test_a_closed_window_is_released_once_and_then_repeated_identically(redis_url: str) -> None:
    async def main() -> None:
        async with served(redis_url) as s:
            await s.node.register_worker(WorkerSpec("w", concurrency=4))
            await s.node.submit([TaskSpec("coding"), TaskSpec("simple_qa"), TaskSpec("mystery")])
            got = await first_release(s)
            assert got.node_id == NODE and got.window_s == SHORT_WINDOW_S and got.types[-1] == "other"
            # Ask again, by gRPC and in process: the same window gives the same release at no
            # cost (a window that closes in between gives a new release: then ask again).
            for _ in range(20):
                again = cv.release_from_pb(await summary(s))
                local = await s.node.release_summary()
                assert again.summary is not None and local.summary is not None
                if again.summary.window == got.window and local.summary.window == got.window:
                    assert again.status is local.status is ReleaseStatus.REPEATED
                    assert again.summary == got == local.summary
                    assert ReleasedSummary.from_bytes(got.to_bytes()) == got
                    break
                got = local.summary if local.status is ReleaseStatus.RELEASED else again.summary
            else:
                raise AssertionError("never the same window twice in a row")
            status = s.node.privacy_status()
            assert status.releases >= 1 and status.last_window == got.window

    run(main())


def test_a_release_refused_for_budget_is_an_answer_not_an_error(redis_url: str) -> None:
    # One release costs 0.6 of the budget: the next one within m = 3 windows is refused.
    cfg = PrivacyConfig()
    rho = rho_for_epsilon(cfg.epsilon, cfg.delta) * 0.6
    scale = calibrate_scale(cfg.mechanism, cells_of(cfg), CELLS_PER_TASK, rho)
    config = node_config(privacy=PrivacyConfig(scale=scale))

    async def main() -> None:
        async with served(redis_url, config=config) as s:
            first = await first_release(s)

            async def refused() -> npb.SummaryReply | None:
                reply = await summary(s)
                return reply if reply.status == ReleaseStatus.BUDGET_EXHAUSTED.value else None

            reply = await async_wait_until_async(refused, timeout_s=10, what="the next window to be refused")
            assert not reply.HasField("summary") and "budget" in reply.reason
            outcome = cv.release_from_pb(reply)
            assert outcome.summary is None and not outcome.released
            stats = await s.stub.Stats(npb.StatsRequest(), timeout=10)
            assert stats.privacy.refused >= 1 and stats.privacy.last_window == first.window
            assert not stats.privacy.next_allowed and stats.privacy.epsilon_left < 0

    run(main())


# ---------------------------------------------------------------------------------- ApplyFederation


def test_apply_federation_returns_the_threshold_the_node_reports_after(redis_url: str) -> None:
    async def main() -> None:
        async with served(redis_url) as s:
            assert s.node.threshold() == 0.7  # no view yet: the local threshold
            high = view_with_shares(time.time_ns(), mine=9.0, others=1.0)
            reply = await s.stub.ApplyFederation(npb.ApplyFederationRequest(view=cv.view_to_pb(high)), timeout=10)
            assert (reply.threshold, reply.policy) == (0.8, "seed") and s.node.threshold() == 0.8
            low = view_with_shares(time.time_ns(), mine=1.0, others=9.0)
            reply = await s.stub.ApplyFederation(npb.ApplyFederationRequest(view=cv.view_to_pb(low)), timeout=10)
            assert reply.threshold == 0.5 == s.node.threshold()
            # What the aggregation makes of the node's own release goes in as it is, and so does
            # the view of a round in which nobody sent anything (window_s 0).
            own = aggregate([await first_release(s)], now_ns=time.time_ns())
            reply = await s.stub.ApplyFederation(npb.ApplyFederationRequest(view=cv.view_to_pb(own)), timeout=10)
            assert reply.threshold == s.node.threshold()
            applied = s.node.admission.view
            assert applied is not None and applied.at_ns >= own.at_ns  # dated on arrival, by the node's clock
            assert applied == dataclasses.replace(own.admission_view(NODE), at_ns=applied.at_ns)
            future = view_with_shares(time.time_ns() + 10**18, mine=9.0, others=1.0)  # a clock far ahead
            await s.stub.ApplyFederation(npb.ApplyFederationRequest(view=cv.view_to_pb(future)), timeout=10)
            applied = s.node.admission.view
            assert applied is not None and applied.at_ns <= time.time_ns()  # cannot hold admission on it
            empty = aggregate([], now_ns=time.time_ns())
            reply = await s.stub.ApplyFederation(npb.ApplyFederationRequest(view=cv.view_to_pb(empty)), timeout=10)
            assert reply.threshold == s.node.threshold()

    run(main())


def _nan_sd(v: GlobalView) -> GlobalView:
    return dataclasses.replace(v, occupied=Estimate(v.occupied.value, math.nan))


def _negative_sd(v: GlobalView) -> GlobalView:
    n = v.nodes[NODE]
    return dataclasses.replace(v, nodes={**v.nodes, NODE: dataclasses.replace(n, load=Estimate(0.5, -0.1))})


def _bad_node_id(v: GlobalView) -> GlobalView:
    return dataclasses.replace(v, participants=(NODE, " pv2\n"))


def _bad_node_key(v: GlobalView) -> GlobalView:
    return dataclasses.replace(v, nodes={**v.nodes, "": v.nodes[NODE]})


@pytest.mark.parametrize(
    ("mangle", "field", "words"),
    [
        (_nan_sd, "view.occupied.sd", "nan"),
        (_negative_sd, "view.nodes", "load.sd: -0.1"),
        (_bad_node_id, "view.participants[1]", "is not a name"),
        (_bad_node_key, "view.nodes", "key ''"),
    ],
)
def test_a_malformed_view_is_invalid_argument_naming_the_field_and_changes_nothing(
    redis_url: str, mangle: Callable[[GlobalView], GlobalView], field: str, words: str
) -> None:
    async def main() -> None:
        async with served(redis_url) as s:
            good = view_with_shares(time.time_ns(), mine=9.0, others=1.0)
            await s.stub.ApplyFederation(npb.ApplyFederationRequest(view=cv.view_to_pb(good)), timeout=10)
            before, view = s.node.threshold(), s.node.admission.view
            bad = mangle(view_with_shares(time.time_ns() + 1, mine=1.0, others=9.0))  # would move it to 0.5
            e = await error_of(s.stub.ApplyFederation(npb.ApplyFederationRequest(view=cv.view_to_pb(bad)), timeout=10))
            assert e.code() is INVALID, e
            assert (e.details() or "").startswith(f"{field}: ") and words in (e.details() or ""), e.details()
            assert s.node.threshold() == before == 0.8 and s.node.admission.view is view
            async with AsyncNodeClient(s.server.address, insecure=True) as client:
                with pytest.raises(ValidationError) as info:
                    await client.apply_federation(bad)
                assert info.value.field == field
            e = await error_of(s.stub.ApplyFederation(npb.ApplyFederationRequest(), timeout=10))
            assert e.code() is INVALID and (e.details() or "").startswith("view: ")
            assert s.node.admission.view is view

    run(main())


# ---------------------------------------------------------------------------------- roles


def test_the_federation_role_may_ask_for_summaries_and_apply_views_a_client_may_not(redis_url: str) -> None:
    tokens = Tokens.generate()
    fed, client_token = tokens.federation[0], tokens.client[0]
    view = npb.ApplyFederationRequest(view=cv.view_to_pb(view_with_shares(time.time_ns(), 9.0, 1.0)))

    async def main() -> None:
        async with served(redis_url, tokens=tokens) as s:
            stub = s.stub
            e = await error_of(stub.Summary(npb.SummaryRequest(), metadata=bearer_metadata(client_token), timeout=10))
            assert e.code() is DENIED and "needs the federation or admin role" in (e.details() or "")
            e = await error_of(stub.ApplyFederation(view, metadata=bearer_metadata(client_token), timeout=10))
            assert e.code() is DENIED
            assert (await error_of(stub.Summary(npb.SummaryRequest(), timeout=10))).code() is UNAUTHENTICATED
            assert (await error_of(stub.ApplyFederation(view, timeout=10))).code() is UNAUTHENTICATED
            e = await error_of(stub.Submit(npb.SubmitRequest(), metadata=bearer_metadata(fed), timeout=10))
            assert e.code() is DENIED  # the federation submits nothing

            await first_release(s, fed)
            reply = await stub.ApplyFederation(view, metadata=bearer_metadata(fed), timeout=10)
            assert reply.threshold == 0.8
            # raw stats would bypass the privacy filter: the federation gets the budget with the summary
            e = await error_of(stub.Stats(npb.StatsRequest(), metadata=bearer_metadata(fed), timeout=10))
            assert e.code() is DENIED
            stats = await stub.Stats(npb.StatsRequest(), metadata=bearer_metadata(client_token), timeout=10)
            assert stats.privacy.releases >= 1
            reply = await summary(s, tokens.admin[0])  # admin as always
            assert reply.status in (ReleaseStatus.REPEATED.value, ReleaseStatus.RELEASED.value)

            async with AsyncNodeClient(s.server.address, insecure=True, token=fed) as c:
                outcome = await c.summary()
                assert outcome.released and outcome.summary is not None and outcome.summary.node_id == NODE
                assert await c.apply_federation(view_with_shares(time.time_ns(), 1.0, 9.0)) == (0.5, "seed")
                again = await c.summary()
                assert again.privacy == s.node.privacy_status()  # the budget comes with every answer
            async with AsyncNodeClient(s.server.address, insecure=True, token=client_token) as c:
                with pytest.raises(NotAuthorizedError, match="PERMISSION_DENIED"):
                    await c.summary()

    run(main())


# ---------------------------------------------------------------------------------- Stats, clients


def test_stats_carries_the_privacy_status(redis_url: str) -> None:
    async def main() -> None:
        async with served(redis_url) as s:
            released = await first_release(s)
            reply = await s.stub.Stats(npb.StatsRequest(), timeout=10)
            assert reply.HasField("privacy")
            status = cv.privacy_status_from_pb(reply.privacy)
            assert status == s.node.privacy_status()
            assert status.enabled and status.mechanism == "gaussian" and status.m == 3
            assert (status.epsilon_budget, status.delta) == (1.0, 1e-6)
            assert status.releases == 1 and status.last_window == released.window and status.next_allowed
            assert math.isclose(status.variance, released.cost.variance)
            assert 0 < status.epsilon_current <= status.epsilon_worst <= status.epsilon_budget

            def sync() -> tuple[PrivacyStatus, dict[str, Any], ReleaseOutcome]:
                with NodeClient(s.server.address, insecure=True) as c:
                    return c.privacy_status(), c.stats().to_dict(), c.summary()

            p, d, outcome = await asyncio.to_thread(sync)
            assert p == status and d["privacy"] == status.to_dict()
            assert outcome.summary is not None and outcome.summary.node_id == NODE

    run(main())


def a_summary() -> ReleasedSummary:
    cost = PrivacyCost("gaussian", 2.5, 6.25, 0.1, 3, 1e-6, 0.9, 1.0, 0.1, 3)
    return ReleasedSummary(
        1, NODE, 7, 20.0, ("coding", "other"), (1, 2), (0, 0), (1, 1), (0, 0), (3, 0), (1.0, 2.0), (1, 2, 3), 4, 8, cost
    )


def test_a_summary_reply_that_does_not_check_is_refused_by_the_client() -> None:
    good = cv.release_to_pb(ReleaseOutcome(ReleaseStatus.RELEASED, a_summary(), "window 7 released"))
    assert cv.release_from_pb(npb.SummaryReply.FromString(good.SerializeToString())).summary == a_summary()
    bad = npb.SummaryReply.FromString(good.SerializeToString())
    bad.summary.submitted.append(1)  # one count more than there are types
    with pytest.raises(SchemaError, match="submitted"):
        cv.release_from_pb(bad)
    bad = npb.SummaryReply.FromString(good.SerializeToString())
    bad.summary.cost.delta = math.nan
    with pytest.raises(SchemaError, match=r"cost\.delta"):
        cv.release_from_pb(bad)
    bad = npb.SummaryReply.FromString(good.SerializeToString())
    bad.summary.ClearField("cost")
    with pytest.raises(SchemaError, match="cost"):
        cv.release_from_pb(bad)
    with pytest.raises(SchemaError, match="not a release status"):
        cv.release_from_pb(npb.SummaryReply(status="leaked"))
    with pytest.raises(SchemaError, match="released without a summary"):
        cv.release_from_pb(npb.SummaryReply(status="released"))
    with pytest.raises(SchemaError, match="no_window with a summary"):
        cv.release_from_pb(npb.SummaryReply(status="no_window", summary=good.summary))


def test_every_view_the_aggregation_makes_of_good_and_bad_summaries_goes_over_the_wire() -> None:
    bad = {**a_summary().to_record(), "node_id": " odd one ", "submitted": [1]}  # dropped, named as it claims
    other = dataclasses.replace(a_summary(), node_id="pv2", occupied_slots=0, capacity_bucket=0)
    for items in ([a_summary(), other, bad, b"not json"], [bad], []):
        view = aggregate(items, round=4, now_ns=123, expected=(NODE, "pv2", "pv3"))
        wire = fpb.GlobalView.FromString(cv.view_to_pb(view).SerializeToString())
        assert cv.view_from_pb(wire) == view
    assert view.window_s == 0.0 and not view.participants  # the last: nobody sent anything


def test_the_messages_mirror_the_domain_types_field_for_field() -> None:
    def names(m: Any) -> list[str]:
        return [f.name for f in m.DESCRIPTOR.fields]

    def fields(cls: Any) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    assert names(fpb.ReleasedSummary) == list(ReleasedSummary.FIELDS)  # in the schema's order
    assert names(fpb.PrivacyCost) == list(PrivacyCost.FIELDS)
    assert names(fpb.PrivacyStatus) == fields(PrivacyStatus)
    assert names(fpb.GlobalView) == fields(GlobalView)
    assert names(fpb.NodeEstimate) == fields(NodeEstimate)
    assert names(fpb.Estimate) == fields(Estimate)
    assert names(fpb.QuantileEstimate) == fields(QuantileEstimate)


# ---------------------------------------------------------------------------------- the CLI


def test_fedcoord_privacy_status_prints_the_status(redis_url: str, tmp_path: Path) -> None:
    tokens = Tokens.generate()

    async def cli(*args: str) -> tuple[int, str, str]:
        err = tmp_path / f"stderr-{len(list(tmp_path.iterdir()))}.txt"
        with err.open("w") as f:
            proc = await asyncio.create_subprocess_exec(
                *FEDCOORD, "privacy", "status", *args, stdout=asyncio.subprocess.PIPE, stderr=f
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.read_text()

    async def main() -> None:
        async with served(redis_url, tokens=tokens) as s:
            await first_release(s, tokens.federation[0])
            conn = ["--connect", s.server.address, "--insecure", "--token", tokens.client[0]]
            code, out, err = await cli(*conn, "--json")
            assert (code, err) == (0, "")
            assert orjson.loads(out) == s.node.privacy_status().to_dict()
            assert orjson.loads(out)["releases"] == 1

            code, out, err = await cli(*conn)
            assert (code, err) == (0, "")
            for words in ("epsilon 1, delta 1e-06, m 3", "gaussian", "rho per release", "still counting",
                          "worst so far", "left after the next release", "allowed"):  # fmt: skip
                assert words in out, (words, out)

            code, out, err = await cli("--connect", s.server.address, "--insecure", "--token", "x" * 32)
            assert code == 1 and out == ""
            assert "UNAUTHENTICATED" in err and "--token" in err and "Traceback" not in err
            assert len(err.strip().splitlines()) == 1, err

    run(main())


def test_fedcoord_privacy_help_says_what_per_task_means() -> None:
    env = {**os.environ, "COLUMNS": "200"}
    out = subprocess.run(
        [*FEDCOORD, "privacy", "status", "--help"], capture_output=True, text=True, timeout=60, env=env, check=True
    ).stdout
    assert "Per task: the privacy unit is one task" in " ".join(out.split())
    assert "--connect" in out and "--json" in out and "--token" in out


def test_a_summary_carrying_a_field_the_schema_does_not_have_is_refused_on_the_wire() -> None:
    """Nothing but the schema's fields may travel in a release: a protobuf summary with a field
    number the schema does not have (kept by the parser as an unknown field) is refused."""
    good = cv.summary_to_pb(a_summary())
    assert cv.summary_from_pb(fpb.ReleasedSummary.FromString(good.SerializeToString())) == a_summary()
    extra = bytes([0xF8, 0x06, 0x2A])  # field 111, varint 42
    with pytest.raises(SchemaError, match="summary: 1 field"):
        cv.summary_from_pb(fpb.ReleasedSummary.FromString(good.SerializeToString() + extra))
    cost = good.cost.SerializeToString() + extra
    tampered = fpb.ReleasedSummary()
    tampered.CopyFrom(good)
    tampered.cost.MergeFromString(cost)
    with pytest.raises(SchemaError, match="cost: 1 field"):
        cv.summary_from_pb(tampered)


def test_a_view_with_a_negative_rate_load_or_time_is_refused_naming_it() -> None:
    """Everything in a view is a sum of non-negative released cells: a negative value is a
    forged or broken view, refused by name before admission reads it."""
    v = view_with_shares(time.time_ns(), 3.0, 1.0)
    cases = [
        (dataclasses.replace(v, federation_load=Estimate(-0.5, 0.1)), "view.federation_load.value"),
        (dataclasses.replace(v, occupied=Estimate(-1.0, 1.0)), "view.occupied.value"),
        (dataclasses.replace(v, submitted_per_s={"coding": Estimate(-2.0, 0.5)}), "view.submitted_per_s"),
        (
            dataclasses.replace(v, completion_quantiles_s=(QuantileEstimate(0.5, 1.0, -1.0, 2.0),)),
            "view.completion_quantiles_s[0].low",
        ),
    ]
    for bad, field in cases:
        with pytest.raises(ValidationError) as info:
            cv.view_from_pb(cv.view_to_pb(bad))
        assert info.value.field == field
