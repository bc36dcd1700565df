"""OpenDP mechanisms and conversions: the noise of a release, its cost, and (epsilon, delta).

Nothing here draws noise or computes a privacy loss by itself: the discrete Gaussian
(zero-concentrated DP) and discrete Laplace (pure DP, converted to zCDP) are OpenDP's
measurements, a release's rho is the measurement's own privacy map at the release's
sensitivity, and rho is turned into epsilon at a delta by OpenDP's zCDP-to-approximate-DP
conversion. Building a measurement costs ~0.1 ms, calibrating a scale 30-50 ms and a
conversion ~3 ms, so all three are cached.

Sensitivity: one task changes at most ``cells_per_task`` cells of a release by 1 each (see
:mod:`federation.privacy.pipeline`), so the L2 sensitivity is ``sqrt(cells_per_task)`` and the
L1 sensitivity ``cells_per_task``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import opendp.prelude as dp

from node.errors import ValidationError

__all__ = ["Mechanism", "calibrate_scale", "epsilon_of", "rho_for_epsilon"]

dp.enable_features("contrib")


def _measurement(kind: str, cells: int, scale: float) -> Any:
    """The measurement of ``kind`` over ``cells`` integers; its output measure is
    zero-concentrated divergence in both cases."""
    dom = dp.vector_domain(dp.atom_domain(T="i64"), size=cells)
    if kind == "gaussian":
        return dp.m.make_gaussian(dom, dp.l2_distance(T=float), scale=scale)
    if kind == "laplace":
        return dp.c.make_pureDP_to_zCDP(dp.m.make_laplace(dom, dp.l1_distance(T=int), scale=scale))
    raise ValidationError("privacy.mechanism", f"{kind!r}", limit="gaussian or laplace")


def _d_in(kind: str, cells_per_task: int) -> float | int:
    # sqrt(3) rounds down in floats (its square is just under 3): one step up, never under
    return math.nextafter(math.sqrt(cells_per_task), math.inf) if kind == "gaussian" else cells_per_task


class Mechanism:
    """One release's noise: an OpenDP measurement over a fixed number of integer cells."""

    def __init__(self, kind: str, cells: int, cells_per_task: int, scale: float):
        if cells < 1 or cells_per_task < 1:
            raise ValueError("a mechanism needs at least one cell and a positive sensitivity")
        self.kind = kind
        self.cells = cells
        self.cells_per_task = cells_per_task
        self.scale = float(scale)
        self.measurement = _measurement(kind, cells, self.scale)
        self.d_in = _d_in(kind, cells_per_task)
        self.rho = float(self.measurement.map(self.d_in))  # the measurement's own privacy map
        self.variance = self.noise_variance(kind, self.scale)

    @staticmethod
    def noise_variance(kind: str, scale: float) -> float:
        """Variance of the noise in each cell: at most ``scale**2`` for the discrete Gaussian
        (reported as that bound), ``2 e^(-1/s) / (1 - e^(-1/s))^2`` for the discrete Laplace."""
        if kind == "gaussian":
            return scale * scale
        q = math.exp(-1.0 / scale)
        return 2.0 * q / (1.0 - q) ** 2

    def __call__(self, cells: Sequence[int]) -> list[int]:
        """The cells with noise added (OpenDP does not check the vector's length: we do)."""
        if len(cells) != self.cells:
            raise ValueError(f"{len(cells)} cells for a mechanism over {self.cells}")
        out = self.measurement(list(cells))
        return [int(x) for x in out]


@functools.lru_cache(maxsize=256)
def calibrate_scale(kind: str, cells: int, cells_per_task: int, rho: float) -> float:
    """The smallest noise scale whose release costs at most ``rho`` (OpenDP's binary search
    over the measurement's privacy map)."""
    return float(
        dp.binary_search_param(
            lambda s: _measurement(kind, cells, s), d_in=_d_in(kind, cells_per_task), d_out=rho, T=float
        )
    )


@functools.lru_cache(maxsize=1)
def _converter() -> Any:
    # A unit-scale Gaussian on one float: its privacy map is d_in^2 / 2, so at d_in = sqrt(2 rho)
    # it is rho (OpenDP rounds up: never less), and its zCDP-to-approxDP conversion is OpenDP's
    # conversion of exactly that rho.
    g = dp.m.make_gaussian(dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float), scale=1.0)
    return dp.c.make_zCDP_to_approxDP(g)


@functools.lru_cache(maxsize=4096)
def epsilon_of(rho: float, delta: float) -> float:
    """The epsilon at ``delta`` of a zCDP loss ``rho``, by OpenDP's conversion."""
    if rho <= 0:
        return 0.0
    return float(_converter().map(math.sqrt(2.0 * rho)).epsilon(delta))


@functools.lru_cache(maxsize=64)
def rho_for_epsilon(epsilon: float, delta: float) -> float:
    """The largest zCDP rho whose OpenDP conversion at ``delta`` is within ``epsilon``."""
    return float(dp.binary_search(lambda r: epsilon_of(r, delta) <= epsilon, bounds=(0.0, max(1.0, epsilon)), T=float))
