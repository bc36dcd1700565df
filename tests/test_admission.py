"""Admission: policies, hysteresis, staleness decay, offer and acceptance arithmetic, settings."""

from __future__ import annotations

from typing import Any

import pytest

from node.admission import AdaptivePolicy, Admission, AdmissionConfig, FederationView
from node.core import Load
from node.errors import ValidationError

S = 1_000_000_000


def load(leased: int, ready: int, slots: int, delayed: int = 0) -> Load:
    demand = leased + ready
    return Load(leased, ready, delayed, 0, 0, slots, demand / slots if slots else float(demand))


def test_local_policy_is_the_configured_threshold_with_or_without_a_view() -> None:
    adm = Admission(AdmissionConfig(threshold=0.7))
    assert adm.threshold(load(3, 0, 10), 0) == 0.7
    adm.update(FederationView(at_ns=0, load_share=0.9))
    assert adm.threshold(load(3, 0, 10), 0) == 0.7


def test_seed_policy_follows_the_share_with_hysteresis() -> None:
    adm = Admission(AdmissionConfig(policy="seed", threshold=0.6, hysteresis=0.05))
    now = 100 * S
    assert adm.threshold(load(1, 0, 10), now) == 0.6  # no view yet: local
    seen = []
    for share in (0.30, 0.42, 0.46, 0.42, 0.38, 0.34, 0.42):
        adm.update(FederationView(at_ns=now, load_share=share))
        seen.append(adm.threshold(load(1, 0, 10), now))
    # up only past 0.45, down only under 0.35
    assert seen == [0.5, 0.5, 0.8, 0.8, 0.8, 0.5, 0.5]


def test_a_stale_view_decays_to_the_local_threshold() -> None:
    adm = Admission(AdmissionConfig(policy="seed", threshold=0.6, stale_after_s=20, decay_s=40))
    adm.update(FederationView(at_ns=0, load_share=0.9))  # seed: 0.8
    ld = load(1, 0, 10)
    assert adm.threshold(ld, 20 * S) == pytest.approx(0.8)
    assert adm.threshold(ld, 40 * S) == pytest.approx(0.7)  # halfway
    assert adm.threshold(ld, 60 * S) == pytest.approx(0.6)
    assert adm.threshold(ld, 3600 * S) == pytest.approx(0.6)  # never frozen on old data
    adm.update(FederationView(at_ns=-5 * S, load_share=0.1))  # older than what it has: ignored
    assert adm.view is not None and adm.view.at_ns == 0


def test_offload_only_above_threshold_plus_margin_and_only_ready_tasks() -> None:
    adm = Admission(AdmissionConfig(threshold=0.5, margin=0.2))
    assert adm.offload_count(load(4, 3, 10), 0) == 0  # 0.7: not above 0.7
    assert adm.offload_count(load(4, 4, 10), 0) == 3  # 0.8: back to 5 of 10
    assert adm.offload_count(load(9, 1, 10), 0) == 1  # only ready tasks can go
    assert adm.offload_count(load(0, 6, 0), 0) == 6  # no worker at all: everything that is ready


def test_accept_only_while_the_load_after_stays_under_the_threshold() -> None:
    adm = Admission(AdmissionConfig(threshold=0.8))
    assert adm.accept_count(load(2, 3, 10), 10, 0) == 3  # 5 + 3 = 8 of 10
    assert adm.accept_count(load(2, 3, 10), 10, 0, reserved=2) == 1
    assert adm.accept_count(load(2, 3, 10), 2, 0) == 2
    assert adm.accept_count(load(8, 0, 10), 5, 0) == 0
    assert adm.accept_count(load(0, 0, 0), 5, 0) == 0  # no slot: nothing
    assert adm.accept_count(load(0, 0, 7), 10, 0) == 5  # floor(0.8 * 7)


@pytest.mark.parametrize(
    ("settings", "name"),
    [
        ({"threshold": 0.0}, "admission.threshold"),
        ({"threshold": 1.5}, "admission.threshold"),
        ({"threshold": True}, "admission.threshold"),
        ({"margin": -0.1}, "admission.margin"),
        ({"policy": "greedy"}, "admission.policy"),
        ({"seed_high": 2}, "admission.seed_high"),
        ({"stale_after_s": -1}, "admission.stale_after_s"),
        ({"hysteresis": 0.5}, "admission.hysteresis"),
    ],
)
def test_settings_out_of_range_are_refused_naming_the_setting(settings: dict[str, Any], name: str) -> None:
    with pytest.raises(ValidationError) as ei:
        AdmissionConfig(**settings)
    assert ei.value.field == name and str(ei.value).startswith(name)


# ---------------------------------------------------------------------------------- adaptive


def _load(ratio: float = 0.5) -> Load:
    return Load(0, 0, 0, 0, 0, 10, ratio)


def test_adaptive_follows_the_smoothed_federation_load_within_its_bounds() -> None:
    cfg = AdmissionConfig(policy="adaptive", threshold=0.8, adaptive_alpha=0.5, adaptive_slack=0.1, hysteresis=0.0)
    p = AdaptivePolicy(cfg)
    assert p.threshold(_load(), None) == 0.8  # no view: local
    assert p.threshold(_load(), FederationView(at_ns=1, federation_load=0.5, federation_load_sd=0.0)) == pytest.approx(
        0.6
    )
    # a second view: smoothed half way (0.5 -> 0.7), plus slack
    assert p.threshold(_load(), FederationView(at_ns=2, federation_load=0.9, federation_load_sd=0.0)) == pytest.approx(
        0.8
    )
    # the same view again does not move the average
    assert p.threshold(_load(), FederationView(at_ns=2, federation_load=0.9, federation_load_sd=0.0)) == pytest.approx(
        0.8
    )
    for t in range(3, 20):  # a long overload: bounded by adaptive_high
        v = p.threshold(_load(), FederationView(at_ns=t, federation_load=3.0, federation_load_sd=0.0))
    assert v == cfg.adaptive_high
    low = AdaptivePolicy(cfg)
    assert (
        low.threshold(_load(), FederationView(at_ns=1, federation_load=0.0, federation_load_sd=0.0)) == cfg.adaptive_low
    )


def test_adaptive_discounts_a_noisy_view_toward_the_local_threshold() -> None:
    cfg = AdmissionConfig(policy="adaptive", threshold=0.8, adaptive_noise_sd=0.1, hysteresis=0.0)

    def at(load: float, sd: float) -> float:
        return AdaptivePolicy(cfg).threshold(
            _load(), FederationView(at_ns=1, federation_load=load, federation_load_sd=sd)
        )

    assert at(0.6, 0.0) == pytest.approx(0.7)
    assert at(0.6, 0.1) == pytest.approx((0.7 + 0.8) / 2)  # within the bounds, sd = noise_sd: counts half
    assert abs(at(0.6, 5.0) - 0.8) < 0.01  # mostly noise: the local threshold
    assert at(20.0, 1.7) == pytest.approx(cfg.adaptive_high)  # surely overloaded, whatever the noise


def test_adaptive_weighs_the_noise_left_in_its_smoothed_load_not_one_views() -> None:
    """Each view's noise is independent: the exponential average of many views of sd s has sd
    s * sqrt(alpha / (2 - alpha)), so the view counts more as views come in (the simulator found
    that weighing by one view's sd threw away most of what smoothing bought: 10 nodes at epsilon 1,
    p99 57.9 s against 54.4 s without noise; weighing the average's noise, 54.4 s)."""
    cfg = AdmissionConfig(policy="adaptive", threshold=0.8, adaptive_noise_sd=0.1, adaptive_alpha=0.3, hysteresis=0.0)
    p = AdaptivePolicy(cfg)
    first = p.threshold(_load(), FederationView(at_ns=0, federation_load=0.6, federation_load_sd=0.2))
    assert first == pytest.approx(0.2 * 0.7 + 0.8 * 0.8)  # one view: weight 1 / (1 + 2^2)
    for t in range(1, 60):
        last = p.threshold(_load(), FederationView(at_ns=t, federation_load=0.6, federation_load_sd=0.2))
    var = 0.3 / 1.7 * 0.04  # the limit of the average's noise variance
    w = 1 / (1 + var / 0.01)
    assert last == pytest.approx(w * 0.7 + (1 - w) * 0.8, abs=1e-6)
    assert last < first - 0.03  # it trusts the view more than after one


def test_adaptive_has_hysteresis_and_the_admission_decays_a_stale_view() -> None:
    cfg = AdmissionConfig(policy="adaptive", threshold=0.8, adaptive_alpha=1.0, hysteresis=0.05)
    p = AdaptivePolicy(cfg)
    first = p.threshold(_load(), FederationView(at_ns=1, federation_load=0.5, federation_load_sd=0.0))
    assert p.threshold(_load(), FederationView(at_ns=2, federation_load=0.53, federation_load_sd=0.0)) == first
    assert p.threshold(_load(), FederationView(at_ns=3, federation_load=0.6, federation_load_sd=0.0)) != first
    adm = Admission(cfg)
    adm.update(FederationView(at_ns=0, federation_load=0.3, federation_load_sd=0.0))
    assert adm.threshold(_load(), 0) == pytest.approx(0.5)
    assert adm.threshold(_load(), int((cfg.stale_after_s + cfg.decay_s) * S)) == 0.8  # stale: local again


def test_adaptive_settings_out_of_range_are_refused_by_name() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"adaptive_alpha": 0.0}, "admission.adaptive_alpha"),
        ({"adaptive_low": 0.9, "adaptive_high": 0.6}, "admission.adaptive_low"),
        ({"adaptive_slack": -0.1}, "admission.adaptive_slack"),
    ]
    for kw, field in cases:
        with pytest.raises(ValidationError) as e:
            AdmissionConfig(policy="adaptive", **kw)
        assert e.value.field == field
