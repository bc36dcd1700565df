"""The simulator against closed-form queueing results, and its reproducibility.

Each node is the real core; with Poisson arrivals and exponential service, a node alone is an
M/M/c FIFO queue, whose mean sojourn (Erlang C) and, for c = 1, whole sojourn distribution
(exponential with rate mu - lambda) are known. Seeds are fixed, so these are exact checks of one
run each; the tolerances are a few standard errors of runs of that length."""

from __future__ import annotations

import json

import pytest

from federation.sim import SimConfig, erlang_c, mmc_mean_sojourn_s, mmc_sojourn_quantile_s, simulate
from node.errors import ValidationError


def test_erlang_c_matches_known_values() -> None:
    assert erlang_c(0.8, 1.0, 1) == pytest.approx(0.8)  # M/M/1: P(wait) = rho
    assert erlang_c(2.0, 1.0, 3) == pytest.approx(0.4444444, rel=1e-6)  # a = 2, c = 3 (tables: 0.444)
    assert mmc_mean_sojourn_s(0.8, 1.0, 1) == pytest.approx(5.0)
    assert mmc_sojourn_quantile_s(0.8, 1.0, 1, 0.99) == pytest.approx(23.02585, rel=1e-6)
    with pytest.raises(ValueError, match="unstable"):
        erlang_c(4.0, 1.0, 4)


def test_a_single_server_node_is_an_mm1_queue() -> None:
    cfg = SimConfig(nodes=1, slots=(1,), load=0.8, service_mean_s=1.0, duration_s=50_000.0, warmup_s=1_000.0, seed=3)
    r = simulate(cfg).result
    assert r["completed"] == r["tasks"] and r["left_active"] == 0
    assert r["sojourn_s"]["mean"] == pytest.approx(mmc_mean_sojourn_s(0.8, 1.0, 1), rel=0.06)
    assert r["sojourn_s"]["p50"] == pytest.approx(mmc_sojourn_quantile_s(0.8, 1.0, 1, 0.5), rel=0.08)
    assert r["sojourn_s"]["p99"] == pytest.approx(mmc_sojourn_quantile_s(0.8, 1.0, 1, 0.99), rel=0.10)
    assert r["utilization"]["mean"] == pytest.approx(0.8, abs=0.02)


@pytest.mark.parametrize(("c", "load"), [(4, 0.8), (8, 0.9)])
def test_a_node_of_c_slots_is_an_mmc_queue(c: int, load: float) -> None:
    cfg = SimConfig(nodes=1, slots=(c,), load=load, service_mean_s=2.0, duration_s=40_000.0, warmup_s=1_000.0, seed=5)
    r = simulate(cfg).result
    lam, mu = load * c / 2.0, 0.5
    assert r["sojourn_s"]["mean"] == pytest.approx(mmc_mean_sojourn_s(lam, mu, c), rel=0.05)
    assert r["waited_share"] == pytest.approx(erlang_c(lam, mu, c), abs=0.03)  # the share that found all busy
    assert r["utilization"]["mean"] == pytest.approx(load, abs=0.02)


def test_nodes_without_sharing_are_independent_queues_of_their_own_capacity() -> None:
    cfg = SimConfig(nodes=4, slots=(1, 4), load=0.7, service_mean_s=1.0, duration_s=20_000.0, seed=11, validate=True)
    r = simulate(cfg).result
    assert r["completed"] == r["tasks"] and r["left_active"] == 0
    assert r["tasks"] == pytest.approx(20_000 * 0.7 * (1 + 4 + 1 + 4), rel=0.03)
    want = (2 * 0.7 * mmc_mean_sojourn_s(0.7, 1.0, 1) + 2 * 2.8 * mmc_mean_sojourn_s(2.8, 1.0, 4)) / (2 * 0.7 + 2 * 2.8)
    assert r["sojourn_s"]["mean"] == pytest.approx(want, rel=0.07)  # the arrival-weighted mix of the two kinds


def test_the_same_seed_gives_the_same_result_byte_for_byte() -> None:
    cfg = SimConfig(nodes=3, slots=(2, 3), load=0.85, service_mean_s=1.0, duration_s=2_000.0, seed=42)
    a = json.dumps(simulate(cfg).result, sort_keys=True)
    b = json.dumps(simulate(cfg).result, sort_keys=True)
    assert a == b
    other = simulate(SimConfig.from_record({**json.loads(a)["config"], "seed": 43})).result
    assert {k: v for k, v in other.items() if k != "config"} != {
        k: v for k, v in json.loads(a).items() if k != "config"
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [("nodes", 0), ("slots", ()), ("slots", (0,)), ("load", 0.0), ("load", float("nan")), ("warmup_s", 5e9),
     ("service_mean_s", -1.0), ("seed", 1.5)],
)  # fmt: skip
def test_a_bad_setting_is_refused_by_name(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=f"sim.{field}"):
        SimConfig(**{field: value})  # type: ignore[arg-type]


def test_fedcoord_simulate_prints_the_result_and_json_is_the_same_for_the_same_seed() -> None:
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    argv = [sys.executable, "-m", "fedcoord", "simulate", "--nodes", "3", "--slots", "2,4", "--duration-s", "500"]
    import os  # noqa: PLC0415

    runs = [
        subprocess.run(  # under two hash seeds: nothing may depend on hash order
            [*argv, "--json"], capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        for seed in ("1", "2")
    ]  # fmt: skip
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    a, b = (json.loads(r.stdout) for r in runs)
    for d in (a, b):  # how long it took is not part of the result
        d.pop("wall_s"), d.pop("events_per_s")
    assert a == b and a["config"]["slots"] == [2, 4] and a["completed"] == a["tasks"] > 0
    plain = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert plain.returncode == 0 and "sojourn" in plain.stdout and "utilization" in plain.stdout
    bad = subprocess.run([*argv, "--load", "0"], capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "sim.load" in bad.stderr


def test_bursty_arrivals_keep_the_mean_rate_and_make_the_tail_worse() -> None:
    """Bursts (a two-state Markov-modulated Poisson process) at the same mean rate: as many tasks
    arrive as without them, and waiting grows (a burst at 2.5 x capacity builds a queue)."""
    base = {"nodes": 2, "slots": (8,), "load": 0.7, "service_mean_s": 1.0, "duration_s": 8_000.0, "seed": 2}
    plain = simulate(SimConfig(**base)).result  # type: ignore[arg-type]
    cfg = SimConfig(**base, burst_factor=5.0, burst_share=0.1, burst_mean_s=30.0, validate=True)  # type: ignore[arg-type]
    bursty = simulate(cfg).result
    assert bursty["tasks"] == pytest.approx(2 * 8 * 0.7 * 8_000, rel=0.03)
    assert bursty["completed"] == bursty["tasks"] and bursty["left_active"] == 0
    assert bursty["sojourn_s"]["p99"] > 10 * plain["sojourn_s"]["p99"]
    assert simulate(cfg).result == bursty  # reproducible with bursts too
    with pytest.raises(ValidationError, match=r"sim\.burst_factor"):
        SimConfig(burst_factor=0.5)
    with pytest.raises(ValidationError, match=r"sim\.burst_share"):
        SimConfig(burst_share=1.0)


def test_mmpp_rates_keep_the_mean_rate_and_the_share_of_time_in_bursts() -> None:
    from federation.sim.run import mmpp_rates  # noqa: PLC0415

    low, high, leave_hot, leave_cold = mmpp_rates(10.0, 5.0, 0.1, 30.0)
    hot_share = leave_cold / (leave_hot + leave_cold)  # the stationary share of the hot state
    assert hot_share == pytest.approx(0.1)
    assert 1 / leave_hot == pytest.approx(30.0) and high == pytest.approx(5 * low)
    assert hot_share * high + (1 - hot_share) * low == pytest.approx(10.0)


def test_arrivals_run_to_the_end_of_the_window_and_never_past_it() -> None:
    """Arrivals stop at duration_s, and a bursty node whose arrivals paused is started again by
    its next switch (the run does not end while a switch is still to come)."""
    for f in (1.0, 20.0):
        cfg = SimConfig(nodes=1, slots=(1,), load=0.05, service_mean_s=1.0, duration_s=5_000.0, seed=8,
                        burst_factor=f, burst_share=0.05, burst_mean_s=50.0)  # fmt: skip
        r = simulate(cfg).result
        assert r["last_arrival_s"] is not None and 4_000 < r["last_arrival_s"] < 5_000, (f, r["last_arrival_s"])
        if f == 1.0:  # (bursts make the count itself vary a lot over a few of them)
            assert r["tasks"] == pytest.approx(0.05 * 5_000, rel=0.2)
    quiet = simulate(SimConfig(nodes=2, slots=(1,), load=1e-9, service_mean_s=1.0, duration_s=10.0)).result
    assert quiet["tasks"] == 0 and quiet["last_arrival_s"] is None and quiet["waited_share"] is None


def test_erlang_c_holds_for_very_many_servers() -> None:
    p = erlang_c(0.9 * 2000, 1.0, 2000)  # a^k/k! overflows a float long before this
    assert 0.0 <= p < 0.01


# ---------------------------------------------------------------------------- sharing


def _shared(policy: str, **kw: object) -> dict[str, object]:
    base: dict[str, object] = {"nodes": 8, "slots": (4,), "load": 0.8, "service_mean_s": 1.0, "duration_s": 3_000.0,
                               "warmup_s": 200.0, "seed": 4, "policy": policy, "validate": True}  # fmt: skip
    return simulate(SimConfig(**{**base, **kw})).result  # type: ignore[arg-type]


def test_hand_off_sits_between_independent_nodes_and_one_pooled_queue() -> None:
    """Eight nodes of 4 slots at load 0.8: alone each is an M/M/4 queue (mean sojourn 1.75 s);
    one pooled M/M/32 queue is the best any sharing can do (1.03 s). Fresh exact loads (the
    oracle) must land strictly between the two closed forms, nearer the pooled one; nothing is
    lost on the way (every task completes once, every hand-off's result reaches its origin)."""
    lam = 0.8 * 4 / 1.0
    alone, pooled = mmc_mean_sojourn_s(lam, 1.0, 4), mmc_mean_sojourn_s(8 * lam, 1.0, 32)
    none = _shared("none")
    assert none["sojourn_s"]["mean"] == pytest.approx(alone, rel=0.05)  # type: ignore[index]
    oracle = _shared("oracle")
    mean = oracle["sojourn_s"]["mean"]  # type: ignore[index]
    assert pooled < mean < pooled + 0.5 * (alone - pooled)
    sh = oracle["sharing"]
    assert oracle["completed"] == oracle["tasks"] and oracle["left_active"] == 0
    assert sh["handed_off"] > 0.1 * oracle["tasks"]  # type: ignore[index,operator]
    assert sh["reported"] == sh["handed_off"]  # type: ignore[index]
    assert oracle["imbalance"]["cv_mean"] < 0.7 * none["imbalance"]["cv_mean"]  # type: ignore[index]


@pytest.mark.parametrize("policy", ["random", "seed", "adaptive"])
def test_every_policy_loses_nothing_and_repeats_byte_for_byte_with_noise(policy: str) -> None:
    """With the privacy pipeline on (epsilon 1 per task), a run is still the same for the same
    seed (the simulation's seeded noise), and no task is lost or run twice."""
    a = _shared(policy, epsilon=1.0, duration_s=600.0, warmup_s=100.0, nodes=5, slots=(2, 6))
    b = _shared(policy, epsilon=1.0, duration_s=600.0, warmup_s=100.0, nodes=5, slots=(2, 6))
    assert json.dumps(a) == json.dumps(b)
    assert a["completed"] == a["tasks"] and a["left_active"] == 0
    sh = a["sharing"]
    assert sh["reported"] == sh["handed_off"] > 0  # type: ignore[index]
    if policy in ("seed", "adaptive"):  # they read the federation's view: every node released every round
        priv = sh["privacy"]  # type: ignore[index]
        assert priv["releases"] == 5 * sh["rounds"] > 0  # type: ignore[index]
        # the calibrated default: m releases per task spend the budget, never more
        assert 0.99 < priv["epsilon_spent_max"] <= 1.0  # type: ignore[index]


def test_the_privacy_noise_changes_the_run_and_the_policy_copes() -> None:
    """The same workload with and without noise differs (the view really carries the noise),
    and at epsilon 1 adaptive still cuts the p99 against no sharing by far."""
    kw = {"nodes": 12, "slots": (2, 4, 8), "spread": 0.3, "duration_s": 1_500.0}
    noisy, exact, none = _shared("adaptive", epsilon=1.0, **kw), _shared("adaptive", **kw), _shared("none", **kw)
    assert noisy["sojourn_s"] != exact["sojourn_s"]
    assert noisy["sojourn_s"]["p99"] < 0.6 * none["sojourn_s"]["p99"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("field", "value"),
    [("policy", "greedy"), ("epsilon", 0.0), ("epsilon", -1.0), ("load", 1.0), ("spread", 1.0),
     ("net_delay_s", -0.1), ("offer_batch", 0), ("view_delay_s", 30.0), ("mechanism", "uniform")],
)  # fmt: skip
def test_a_bad_sharing_setting_is_refused_by_name(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=f"sim.{field}"):
        SimConfig(**{field: value})  # type: ignore[arg-type]


def test_a_config_round_trips_through_its_record_and_unknown_keys_are_refused() -> None:
    cfg = SimConfig(nodes=3, slots=(2, 4), policy="adaptive", epsilon=0.5)
    assert SimConfig.from_record(json.loads(json.dumps(cfg.to_record()))) == cfg
    with pytest.raises(ValidationError, match=r"sim\.colour"):
        SimConfig.from_record({"colour": 1})
    with pytest.raises(ValidationError, match=r"sim\.admission\.alpha"):
        SimConfig.from_record({"admission": {"alpha": 1}})


def test_simulation_noise_has_the_mechanisms_variance() -> None:
    """The seeded discrete Gaussian and Laplace have the variance the releases declare
    (``Mechanism.noise_variance``): the aggregation trusts it for every sd it reports."""
    from federation.privacy.mechanism import Mechanism  # noqa: PLC0415
    from federation.sim.noise import SimulationNoise, sim_generator  # noqa: PLC0415

    for kind, scale in (("gaussian", 3.7), ("gaussian", 25.0), ("laplace", 2.0)):
        d = SimulationNoise(kind, scale, sim_generator(1, 0, "test")).draw(200_000)
        assert abs(float(d.mean())) < 0.05 * scale
        assert float(d.var()) == pytest.approx(Mechanism.noise_variance(kind, scale), rel=0.02)


def test_results_in_flight_longer_than_a_tick_are_not_sent_twice() -> None:
    """A result report is re-sent at every tick until acknowledged, but not while one is still on
    its way: with messages slower than half a tick the origin used to get a report twice and
    refuse the second ("never handed off")."""
    r = _shared("random", nodes=4, slots=(2,), load=0.9, spread=0.6, duration_s=400.0, warmup_s=0.0, net_delay_s=6.0)
    sh = r["sharing"]
    assert sh["reported"] == sh["handed_off"] > 0 and r["left_active"] == 0  # type: ignore[index,operator]


def test_with_spread_the_result_says_how_many_nodes_are_overloaded_alone() -> None:
    r = _shared("none", nodes=10, spread=0.5, duration_s=300.0, warmup_s=0.0)
    assert 1 <= r["nodes_over_capacity"] < 10 and r["max_node_load"] == pytest.approx(0.8 * 1.5)  # type: ignore[operator]
