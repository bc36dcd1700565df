"""The simulator's workloads: task types with Zipf weights and difficulties, workers of several
skills (the core's strict matching), failed attempts retried by the core, and nodes that fail
and come back."""

from __future__ import annotations

import json
import math

import pytest

from federation.sim import SimConfig, simulate
from federation.sim.queueing import mg1_mean_wait_s
from node.core import Core
from node.errors import ValidationError
from node.model import Lease


def test_types_of_several_difficulties_on_one_slot_are_an_mg1_queue() -> None:
    """One slot, three types (Zipf weights 1, 1/2, 1/3; difficulties 1, 3, 6): the service time
    is a mix of exponentials of means proportional to the difficulty, and the mean wait is
    Pollaczek-Khinchine's."""
    cfg = SimConfig(
        slots=(1,), load=0.7, service_mean_s=1.0, duration_s=200_000.0, warmup_s=2_000.0,
        types=3, type_skew=1.0, difficulties=(1, 3, 6),
    )  # fmt: skip
    r = simulate(cfg).result
    w = cfg.type_weights()
    assert w == pytest.approx([6 / 11, 3 / 11, 2 / 11])
    dbar = sum(p * cfg.difficulty(k) for k, p in enumerate(w))
    means = [cfg.service_mean_s * cfg.difficulty(k) / dbar for k in range(3)]
    assert sum(p * m for p, m in zip(w, means, strict=True)) == pytest.approx(1.0)  # the load is kept
    second = sum(p * 2 * m * m for p, m in zip(w, means, strict=True))  # E[S^2] of the exponential mix
    lam = cfg.load / cfg.service_mean_s
    assert r["wait_s"]["mean"] == pytest.approx(mg1_mean_wait_s(lam, 1.0, second), rel=0.08)
    by_type = r["workload"]["by_type"]
    total = sum(t["measured"] for t in by_type.values())
    for k, t in enumerate(by_type.values()):
        assert t["measured"] / total == pytest.approx(w[k], abs=0.01)
    assert by_type["t0"]["p50"] < by_type["t1"]["p50"] < by_type["t2"]["p50"]  # longer tasks, longer sojourns


def test_a_worker_never_gets_a_task_harder_than_its_skill() -> None:
    """Skills 3 and 10, every task of difficulty 5: the skill-3 worker stays idle, and the
    node runs on the other worker's slots alone."""
    cfg = SimConfig(nodes=2, slots=(4,), load=0.4, duration_s=2_000.0, difficulties=(5,), skills=(3, 10), validate=True)
    r = simulate(cfg).result
    util = r["workload"]["utilization_by_skill"]
    assert util["3"] == 0.0
    assert util["10"] == pytest.approx(0.8, abs=0.08)  # the load of 4 slots on the 2 that may run them
    assert r["completed"] == r["tasks"] and r["left_active"] == 0


def test_failed_attempts_are_retried_and_fail_for_good_after_the_last_retry() -> None:
    """Each attempt fails with probability 0.5: a task fails for good after 1 + 3 retries, with
    probability 1/16; nothing is lost, every task ends completed or failed."""
    cfg = SimConfig(nodes=2, slots=(4,), load=0.3, duration_s=4_000.0, fail_rate=0.5, validate=True)
    r = simulate(cfg).result
    wl = r["workload"]
    assert r["completed"] + wl["failed"] == r["tasks"] and r["left_active"] == 0
    n, p = r["tasks"], 0.5**4
    assert abs(wl["failed"] - n * p) < 4 * math.sqrt(n * p * (1 - p))
    # attempts: each task fails k times with k ~ min(Geometric, 4): 0.5 + 0.25 + 0.125 + 0.0625 per task
    assert wl["retried"] == pytest.approx(n * (0.5 + 0.25 + 0.125), rel=0.1)


@pytest.mark.parametrize("policy", ["random", "adaptive", "oracle"])
def test_a_mixed_workload_with_sharing_loses_nothing_and_repeats_byte_for_byte(policy: str) -> None:
    cfg = SimConfig(
        nodes=8, slots=(2, 4, 8), load=0.85, spread=0.3, duration_s=900.0, types=4, type_skew=1.0,
        difficulties=(1, 3, 6, 9), skills=(3, 6, 10), fail_rate=0.05, policy=policy,
        epsilon=1.0 if policy == "adaptive" else None, validate=True,
    )  # fmt: skip
    a, b = simulate(cfg).result, simulate(cfg).result
    assert json.dumps(a) == json.dumps(b)
    assert a["completed"] + a["workload"]["failed"] == a["tasks"] and a["left_active"] == 0
    assert a["sharing"]["handed_off"] > 0 and a["sharing"]["reported"] == a["sharing"]["handed_off"]


@pytest.mark.parametrize(
    ("change", "name"),
    [({"types": 0}, "sim.types"), ({"type_skew": -1.0}, "sim.type_skew"), ({"difficulties": (0,)}, "sim.difficulties"),
     ({"difficulties": (11,)}, "sim.difficulties"), ({"skills": ()}, "sim.skills"),
     ({"difficulties": (1, 8), "types": 2, "skills": (5, 7)}, "sim.skills"), ({"fail_rate": 1.0}, "sim.fail_rate")],
)  # fmt: skip
def test_a_bad_workload_setting_is_refused_by_name(change: dict[str, object], name: str) -> None:
    with pytest.raises(ValidationError) as e:
        SimConfig(**change)  # type: ignore[arg-type]
    assert e.value.field == name


def test_nodes_fail_and_recover_at_their_rates_and_refuse_work_while_down() -> None:
    """Each node is down mttr / (mtbf + mttr) of the time, and Poisson arrivals see it down as
    often (PASTA): that share of them is refused."""
    cfg = SimConfig(nodes=20, slots=(4,), load=0.5, duration_s=20_000.0, mtbf_s=900.0, mttr_s=100.0, validate=True)
    r = simulate(cfg).result
    f = r["failures"]
    assert f["crashes"] == pytest.approx(20 * 20_000 / 1_000, rel=0.15)
    assert f["down_share"] == pytest.approx(0.1, abs=0.015)
    assert f["reject_rate"] == pytest.approx(f["down_share"], abs=0.01)
    assert f["lost_leases"] > 0
    assert r["completed"] + f["failed"] == r["tasks"] and r["left_active"] == 0


@pytest.mark.parametrize("policy", ["random", "seed", "adaptive", "oracle"])
def test_with_nodes_failing_under_hand_off_nothing_is_lost_or_run_twice(policy: str) -> None:
    """Crashes every minute or so, with messages slow enough (50 ms) to be in flight when a
    node goes down: offers, transfers, answers and reports are lost, the protocol's timeouts
    and each node's rebuild from its store settle them. Every task ends once (the cores'
    invariants hold, results all reach their origins), and the run repeats byte for byte."""
    cfg = SimConfig(
        nodes=6, slots=(2, 4), load=0.8, spread=0.3, duration_s=1_200.0, mtbf_s=60.0, mttr_s=5.0,
        net_delay_s=0.05, policy=policy, epsilon=1.0 if policy in ("seed", "adaptive") else None, validate=True,
    )  # fmt: skip
    a, b = simulate(cfg).result, simulate(cfg).result
    assert json.dumps(a) == json.dumps(b)
    f, sh = a["failures"], a["sharing"]
    assert f["crashes"] > 50 and sh["lost_messages"] > 0
    assert a["completed"] + f["failed"] == a["tasks"] and a["left_active"] == 0
    assert f["failed"] <= 0.01 * a["tasks"]  # only tasks whose every attempt died with a node
    assert sh["handed_off"] > 0 and sh["reported"] == sh["handed_off"]


@pytest.mark.parametrize(
    ("field", "value"), [("mtbf_s", 0.5), ("mtbf_s", -1.0), ("mttr_s", 0.0), ("rpc_timeout_s", 0.0)]
)
def test_a_bad_failure_setting_is_refused_by_name(field: str, value: float) -> None:
    with pytest.raises(ValidationError) as e:
        SimConfig(**{field: value})  # type: ignore[arg-type]
    assert e.value.field == f"sim.{field}"


@pytest.mark.parametrize("seed", range(6))
def test_slow_messages_and_frequent_crashes_never_run_a_task_twice(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two nodes, 0.5 s messages, a 10 s answer timeout, a crash every 20 s or so: answers
    arrive after the restart that settled their hand-off, or after the task went out again
    (a review found both aborting a newer hand-off: the task then ran on both nodes)."""
    completions: list[str] = []
    complete = Core.complete

    def counting(self: Core, lease: Lease, result: bytes, now_ns: int) -> None:
        complete(self, lease, result, now_ns)
        completions.append(lease.task_id)

    monkeypatch.setattr(Core, "complete", counting)
    cfg = SimConfig(
        nodes=2, slots=(4, 16), load=0.8, spread=0.6, duration_s=5_000.0, mtbf_s=20.0, mttr_s=2.0,
        rpc_timeout_s=10.0, net_delay_s=0.5, policy="random", seed=seed, validate=True,
    )  # fmt: skip
    r = simulate(cfg).result
    assert len(completions) == len(set(completions)) == r["completed"]
    assert r["completed"] + r["failures"]["failed"] == r["tasks"] and r["left_active"] == 0
    assert r["sharing"]["lost_messages"] > 0


def test_a_transfer_after_its_reservation_expired_takes_only_the_room_left() -> None:
    """Messages slower than the reservation: each transfer lands after the room it was promised
    expired, so the peer looks again (as the runtime's on_transfer) and refuses what no longer
    fits; the origin takes those back, and nothing is lost."""
    base = {"nodes": 8, "slots": (2, 4), "load": 0.85, "spread": 0.3, "duration_s": 900.0, "net_delay_s": 0.05,
            "policy": "random", "validate": True}  # fmt: skip
    late = simulate(SimConfig(**base, reservation_s=0.05)).result  # type: ignore[arg-type]
    held = simulate(SimConfig(**base)).result  # type: ignore[arg-type]
    assert late["sharing"]["refused_at_transfer"] > 0 == held["sharing"]["refused_at_transfer"]
    assert late["completed"] == late["tasks"] and late["left_active"] == 0
    assert late["sharing"]["reported"] == late["sharing"]["handed_off"]
