"""Privacy noise for simulations only: seeded, so that a simulated run repeats byte for byte.

**Never used by a node.** Deployed nodes draw their noise from OpenDP's measurements (see
:mod:`federation.privacy.mechanism`), whose randomness is not seedable by design. The simulator
needs the same *distributions* from a seeded generator: the discrete Gaussian by Canonne, Kamath
and Steinke's rejection sampler over a discrete Laplace ("The Discrete Gaussian for Differential
Privacy", 2020, Algorithm 3), the discrete Laplace as the difference of two geometric variables.
Both are exact in distribution (up to floating point), and vectorized with numpy.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

__all__ = ["SimulationNoise", "sim_generator"]


def sim_generator(seed: int, node: int, purpose: str) -> np.random.Generator:
    """A numpy generator seeded from a string (the same on every run and machine)."""
    digest = hashlib.sha256(f"fedcoord-sim:{seed}:{node}:{purpose}".encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))


def _discrete_laplace(rng: np.random.Generator, scale: float, n: int) -> np.ndarray:
    """``n`` draws with P(k) proportional to exp(-|k| / scale)."""
    p = -math.expm1(-1.0 / scale)
    return rng.geometric(p, n) - rng.geometric(p, n)


class SimulationNoise:
    """``noise(cells)``: the cells plus simulation-only noise of ``kind`` at ``scale``."""

    def __init__(self, kind: str, scale: float, rng: np.random.Generator):
        if kind not in ("gaussian", "laplace") or not scale > 0:
            raise ValueError(f"no simulation noise {kind!r} at scale {scale!r}")
        self.kind = kind
        self.scale = float(scale)
        self._rng = rng
        self._t = math.floor(self.scale) + 1  # the discrete Laplace the Gaussian is drawn from

    def draw(self, n: int) -> np.ndarray:
        rng = self._rng
        if self.kind == "laplace":
            return _discrete_laplace(rng, self.scale, n)
        sigma2 = self.scale * self.scale
        t = self._t
        out = np.empty(0, dtype=np.int64)
        while out.size < n:
            want = max(16, 3 * (n - out.size))  # the acceptance rate is 0.44-0.54 for small scales, more above
            y = _discrete_laplace(rng, t, want)
            accept = rng.random(want) < np.exp(-((np.abs(y) - sigma2 / t) ** 2) / (2.0 * sigma2))
            out = np.concatenate((out, y[accept]))
        return out[:n]

    def __call__(self, cells: list[int]) -> list[int]:
        noisy = np.asarray(cells, dtype=np.int64) + self.draw(len(cells))
        return [int(x) for x in noisy.tolist()]
