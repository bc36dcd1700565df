"""The accountant: what a release costs, and whether the next one keeps every task within budget.

The privacy unit is one task, and a task counts in at most ``m`` consecutive releases (windows;
the node's bounding enforces it). zCDP losses add up, so the most any task can have lost is the
largest sum of rho over ``m`` consecutive windows; releases only move forward, so before
releasing window ``w`` it is enough to check the windows ``[w - m + 1, w]`` -- in time: the
releases whose window ended after ``m`` windows before ``w`` started, which stays right if the
window length changed since those releases were made. The check is done in
rho against ``rho_budget`` (the largest rho whose OpenDP conversion at ``delta`` is within the
configured epsilon), then again atomically by the ledger in the store; epsilon is reported
through OpenDP's conversion.

With the default calibration a release costs ``rho_budget / m`` (a hair under), so the budget
holds for ever at one release per window: every task spends at most its budget over its ``m``
windows, and the tasks after it have a budget of their own. A release costs more only with an
explicit ``scale``; then the ledger lets through as many releases in any ``m`` consecutive
windows as the budget allows, and refuses the rest (fail closed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import opendp.prelude as dp

from federation.privacy.config import PrivacyConfig
from federation.privacy.mechanism import Mechanism, calibrate_scale, epsilon_of, rho_for_epsilon
from node.errors import ValidationError
from node.store.base import LedgerEntry, LedgerState, spent_since

__all__ = ["Accountant", "Decision"]


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether window ``window`` may be released, and what every task's loss would then be."""

    window: int
    allowed: bool
    rho_total: float  # sum of rho over [window - m + 1, window] with this release
    epsilon: float  # that, in epsilon at delta (OpenDP)
    epsilon_left: float  # budget - epsilon


class Accountant:
    """The budget and the mechanism of one node's releases (``cells`` cells each)."""

    def __init__(self, cfg: PrivacyConfig, cells: int, cells_per_task: int):
        self.cfg = cfg
        try:
            self.rho_budget = rho_for_epsilon(float(cfg.epsilon), float(cfg.delta))
        except (dp.OpenDPException, OverflowError) as e:
            raise ValidationError("privacy.epsilon", f"{cfg.epsilon!r} at delta {cfg.delta!r}: OpenDP: {e}") from None
        if cfg.scale is None:
            # a hair under budget / m, so that m releases sum to no more than the budget in floats
            target = self.rho_budget / cfg.m * (1.0 - 1e-9)
            scale = calibrate_scale(cfg.mechanism, cells, cells_per_task, target)
        else:
            scale = float(cfg.scale)
        self.mechanism = Mechanism(cfg.mechanism, cells, cells_per_task, scale)
        rho = self.mechanism.rho
        if rho > self.rho_budget:
            least = calibrate_scale(cfg.mechanism, cells, cells_per_task, self.rho_budget)
            try:
                cost = f"epsilon {epsilon_of(rho, cfg.delta):.4g}"
            except dp.OpenDPException:  # so large that OpenDP's conversion overflows
                cost = f"rho {rho:.4g}"
            raise ValidationError(
                "privacy.scale",
                f"one release at scale {scale:g} costs {cost} per task, more than the whole budget "
                f"(epsilon {cfg.epsilon:g} at delta {cfg.delta:g})",
                limit=f"scale >= {least:.4g}, or a larger epsilon",
            )
        # releases that fit in any m consecutive windows (m with the calibrated default)
        self.releases_per_m = min(cfg.m, math.floor(self.rho_budget / rho * (1 + 1e-12)))
        # The sums a steady node meets (1..m releases in a horizon: k * rho, which is what the
        # ledger's float sums give) converted now, at start: each conversion costs OpenDP ~3 ms,
        # which a release would otherwise pay the first time it meets one.
        for k in range(1, self.releases_per_m + 1):
            self.epsilon(k * rho)

    @property
    def rho(self) -> float:
        """The cost of one release (the measurement's privacy map at the release's sensitivity)."""
        return self.mechanism.rho

    def epsilon(self, rho: float) -> float:
        return epsilon_of(rho, float(self.cfg.delta))

    def trailing(self, entries: Sequence[LedgerEntry], horizon_start_us: int) -> float:
        """What a task that may count in the next release has spent already: the rho of every
        recorded release whose window ends after ``horizon_start_us``, the oldest creation time
        such a task can have (``m`` windows back from the next release's start)."""
        return spent_since(entries, horizon_start_us)

    def decide(self, entries: Sequence[LedgerEntry], window: int, horizon_start_us: int) -> Decision:
        total = self.trailing(entries, horizon_start_us) + self.rho
        eps = self.epsilon(total)
        allowed = total <= self.rho_budget
        return Decision(window, allowed, total, eps, float(self.cfg.epsilon) - eps)

    def worst_epsilon(self, state: LedgerState) -> float:
        return self.epsilon(state.worst_rho)
