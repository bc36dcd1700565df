"""Admission: the node's acceptance threshold, from its own load and (optionally) the federation.

One interface, :class:`Admission`, is what the rest of the node uses: give it the local load
(:class:`~node.core.load.Load`) and, when there is one, the latest :class:`FederationView`; it
answers the threshold, how many tasks to offer to peers, and how many of an offer to accept.

* A node **offloads** while its load ratio is above ``threshold + margin``: it offers enough
  ready tasks to bring the ratio back to the threshold.
* It **accepts** an offered task only if its ratio *after* accepting (counting what it already
  reserved for other offers) stays at or under its threshold. A node without a healthy worker
  slot accepts nothing.

Policies (pure; the federation will drive them with its views):

* ``local``: the configured threshold, always.
* ``seed``: seed 000's rule: while this node's share of the federation's load is above 0.4 the
  threshold is 0.8, else 0.5; with hysteresis (the share must cross ``0.4 +- hysteresis`` to
  switch), so a share that hovers at 0.4 does not flap.
* ``adaptive``: ours (:class:`AdaptivePolicy`): the federation's smoothed load plus slack,
  weighted by how sure the view is, with hysteresis.

A view older than ``stale_after_s`` loses weight linearly over ``decay_s``: the threshold moves
from the policy's answer to the local one and never freezes on old data. With no view at all
every policy answers the local threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from node.core.load import Load
from node.errors import ValidationError

__all__ = [
    "POLICIES",
    "AdaptivePolicy",
    "Admission",
    "AdmissionConfig",
    "AdmissionPolicy",
    "FederationView",
    "LocalPolicy",
    "SeedPolicy",
    "make_policy",
]

_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class FederationView:
    """What the federation last told this node (filled by the aggregation, later from Flower).

    ``load_share`` is this node's share of the federation's load (0..1), ``federation_load`` the
    federation's load ratio, ``peer_loads`` the load ratio of each peer (for choosing whom to
    offer work to). Any of them may be unknown (None, empty)."""

    at_ns: int
    load_share: float | None = None
    federation_load: float | None = None
    peer_loads: Mapping[str, float] = field(default_factory=dict)
    federation_load_sd: float | None = None  # the privacy noise's sd on federation_load (None: exact)


class AdmissionPolicy(Protocol):
    name: str

    def threshold(self, load: Load, view: FederationView | None) -> float:
        """The threshold this policy wants for ``load`` given ``view`` (None: no view)."""
        ...


def _check_unit(name: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not (0.0 < v <= 1.0):
        raise ValidationError(name, f"{v!r} out of range", limit="0 < value <= 1")
    return float(v)


def _check_non_negative(name: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        raise ValidationError(name, f"{v!r} out of range", limit=">= 0")
    return float(v)


POLICIES = ("local", "seed", "adaptive")


@dataclass(frozen=True, slots=True)
class AdmissionConfig:
    """Settings of admission; refused at start (``ValidationError`` naming the setting) when out of range."""

    policy: str = "local"
    threshold: float = 0.8  # the local threshold: the load ratio up to which the node accepts work
    margin: float = 0.1  # offload only above threshold + margin
    # seed rule: above `seed_share` of the federation's load the threshold is `seed_high`, else `seed_low`
    seed_share: float = 0.4
    seed_high: float = 0.8
    seed_low: float = 0.5
    hysteresis: float = 0.05  # the seed rule switches only once the share is this far past seed_share
    stale_after_s: float = 60.0  # a federation view older than this starts losing weight ...
    decay_s: float = 60.0  # ... and counts for nothing this much later (the local threshold rules)
    # adaptive: the threshold follows the federation's smoothed load (plus slack), between low and
    # high; a view whose load sd is `adaptive_noise_sd` counts half, a noisier one less
    adaptive_alpha: float = 0.3  # weight of each new view in the smoothed load
    adaptive_slack: float = 0.1  # accept up to this much above the federation's load
    adaptive_low: float = 0.5
    adaptive_high: float = 0.95
    adaptive_noise_sd: float = 0.1

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValidationError("admission.policy", f"{self.policy!r} is not a policy", limit=" | ".join(POLICIES))
        for name in ("threshold", "seed_high", "seed_low"):
            _check_unit(f"admission.{name}", getattr(self, name))
        _check_unit("admission.seed_share", self.seed_share)
        for name in ("margin", "hysteresis", "stale_after_s", "decay_s", "adaptive_slack"):
            _check_non_negative(f"admission.{name}", getattr(self, name))
        for name in ("adaptive_alpha", "adaptive_low", "adaptive_high", "adaptive_noise_sd"):
            _check_unit(f"admission.{name}", getattr(self, name))
        if self.adaptive_low > self.adaptive_high:
            raise ValidationError(
                "admission.adaptive_low", f"{self.adaptive_low!r} is above adaptive_high {self.adaptive_high!r}"
            )
        if self.hysteresis >= min(self.seed_share, 1 - self.seed_share) and self.seed_share < 1:
            raise ValidationError(
                "admission.hysteresis", f"{self.hysteresis!r} leaves no room around seed_share {self.seed_share}"
            )


class LocalPolicy:
    name = "local"

    def __init__(self, threshold: float):
        self._threshold = threshold

    def threshold(self, load: Load, view: FederationView | None) -> float:
        return self._threshold


class SeedPolicy:
    """Seed 000's rule with hysteresis: remembers which side of the share it decided last."""

    name = "seed"

    def __init__(self, cfg: AdmissionConfig):
        self._cfg = cfg
        self._high = False  # the last decision: share above seed_share

    def threshold(self, load: Load, view: FederationView | None) -> float:
        cfg = self._cfg
        share = None if view is None else view.load_share
        if share is None:
            return cfg.threshold
        if self._high and share < cfg.seed_share - cfg.hysteresis:
            self._high = False
        elif not self._high and share > cfg.seed_share + cfg.hysteresis:
            self._high = True
        return cfg.seed_high if self._high else cfg.seed_low


class AdaptivePolicy:
    """Ours, a first version (the simulator tunes it): the threshold follows the federation's
    load, so that a node takes work while it is under the federation's level and sheds it when
    above, instead of a fixed cut.

    * **Smoothed**: an exponential average of the federation load over the views received
      (``adaptive_alpha`` per new view), so one noisy round does not swing it.
    * **Noise-aware**: a view counts by how sure its target is: weight ``1 / (1 + (sd /
      noise_sd)^2)``, ``sd`` being the privacy noise left in the *smoothed* load (the views'
      noises are independent, so the average of many has less: ``(1 - alpha)^2 var + alpha^2
      var_view`` per view, ``alpha / (2 - alpha)`` of one view's in the limit), the rest goes to
      the local threshold, unless the load is 2 sd clear of a bound (then the target is that
      bound whatever the noise: weight 1). A
      federation of few, small nodes (where noise dominates) stays near its local policy; one
      surely overloaded is surely at ``high``.
    * **Hysteresis**: the threshold moves only when its target moved by more than
      ``hysteresis``, so it does not flap on noise.

    ``target = clamp(smoothed load + slack, low, high)``; ``threshold = w * target + (1 - w) * local``.
    """

    name = "adaptive"

    def __init__(self, cfg: AdmissionConfig):
        self._cfg = cfg
        self._smoothed: float | None = None
        self._var = 0.0  # the privacy noise's variance in the smoothed load
        self._seen_at: int | None = None
        self._current: float | None = None

    def threshold(self, load: Load, view: FederationView | None) -> float:
        cfg = self._cfg
        fed = None if view is None else view.federation_load
        if view is None or fed is None or not math.isfinite(fed):
            return cfg.threshold
        if self._seen_at == view.at_ns and self._current is not None:
            return self._current  # this view is folded in and answered for: the answer stands
        view_var = (view.federation_load_sd or 0.0) ** 2
        if self._seen_at != view.at_ns:  # a new view: fold it in once
            self._seen_at = view.at_ns
            a = cfg.adaptive_alpha
            if self._smoothed is None:
                self._smoothed, self._var = fed, view_var
            else:
                self._smoothed = (1 - a) * self._smoothed + a * fed
                # the noise of the average: each view's noise is independent of the others'
                self._var = (1 - a) ** 2 * self._var + a * a * view_var
        assert self._smoothed is not None

        def target_at(load: float) -> float:
            return min(cfg.adaptive_high, max(cfg.adaptive_low, load + cfg.adaptive_slack))

        # How unsure the *target* is: a federation surely (2 sd) above the bounds is surely at
        # `high`, one surely below at `low`; in between, the load's sd is the target's.
        sd = math.sqrt(self._var)  # of the smoothed load, not of one view: smoothing averages noise away
        lo, hi = target_at(self._smoothed - 2 * sd), target_at(self._smoothed + 2 * sd)
        sure = lo == hi  # both ends clamped to the same bound (or no noise)
        w = 1.0 if sure else 1.0 / (1.0 + (sd / cfg.adaptive_noise_sd) ** 2)
        target = target_at(self._smoothed)
        wanted = w * target + (1.0 - w) * cfg.threshold
        if self._current is None or abs(wanted - self._current) > cfg.hysteresis:
            self._current = wanted
        return self._current


def make_policy(cfg: AdmissionConfig) -> AdmissionPolicy:
    if cfg.policy == "seed":
        return SeedPolicy(cfg)
    if cfg.policy == "adaptive":
        return AdaptivePolicy(cfg)
    return LocalPolicy(cfg.threshold)


class Admission:
    """The node's admission: a policy, the latest federation view, and the arithmetic of offers."""

    def __init__(self, cfg: AdmissionConfig | None = None, policy: AdmissionPolicy | None = None):
        self.cfg = cfg = cfg or AdmissionConfig()
        self.policy = policy or make_policy(cfg)
        self.view: FederationView | None = None
        self._local = LocalPolicy(cfg.threshold)

    def update(self, view: FederationView) -> None:
        """A new view from the federation (an older one than the current is ignored)."""
        if self.view is None or view.at_ns >= self.view.at_ns:
            self.view = view

    def view_weight(self, now_ns: int) -> float:
        """How much the federation view still counts: 1 while fresh, down to 0 as it goes stale."""
        view = self.view
        if view is None:
            return 0.0
        age_s = max(0.0, (now_ns - view.at_ns) / _NS)
        over = age_s - self.cfg.stale_after_s
        if over <= 0:
            return 1.0
        if self.cfg.decay_s <= 0:
            return 0.0
        return max(0.0, 1.0 - over / self.cfg.decay_s)

    def threshold(self, load: Load, now_ns: int) -> float:
        local = self._local.threshold(load, None)
        weight = self.view_weight(now_ns)
        if weight <= 0.0:
            return local
        federated = self.policy.threshold(load, self.view)
        return weight * federated + (1.0 - weight) * local

    def offload_count(self, load: Load, now_ns: int) -> int:
        """How many ready tasks to offer to peers now (0 unless above threshold + margin)."""
        threshold = self.threshold(load, now_ns)
        if load.ratio <= threshold + self.cfg.margin:
            return 0
        keep = math.floor(threshold * load.slots + 1e-9)  # what the node can hold at its threshold
        return max(0, min(load.ready, load.demand - keep))

    def accept_count(self, load: Load, offered: int, now_ns: int, *, reserved: int = 0) -> int:
        """How many of ``offered`` tasks to accept: as many as keep the ratio after accepting
        (with ``reserved`` tasks promised to earlier offers) at or under the threshold."""
        if load.slots <= 0 or offered <= 0:
            return 0
        room = math.floor(self.threshold(load, now_ns) * load.slots + 1e-9) - load.demand - reserved
        return max(0, min(offered, room))
