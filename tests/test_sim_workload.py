"""The simulator's mixed workloads: task types with Zipf weights and difficulties, workers of
several skills (the core's strict matching), failed attempts retried by the core."""

from __future__ import annotations

import json
import math

import pytest

from federation.sim import SimConfig, simulate
from federation.sim.queueing import mg1_mean_wait_s
from node.errors import ValidationError


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
