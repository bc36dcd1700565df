"""Closed-form queueing results the simulator is checked against (M/M/c, FIFO).

``lam``: arrival rate, ``mu``: service rate of one server, ``c``: servers; all per second.
"""

from __future__ import annotations

import math

__all__ = ["erlang_c", "mg1_mean_wait_s", "mmc_mean_sojourn_s", "mmc_sojourn_quantile_s"]


def _check(lam: float, mu: float, c: int) -> float:
    if not (lam > 0 and mu > 0 and c >= 1):
        raise ValueError(f"need lam > 0, mu > 0, c >= 1 (got {lam}, {mu}, {c})")
    rho = lam / (c * mu)
    if rho >= 1:
        raise ValueError(f"unstable: load {rho:.3f} >= 1")
    return rho


def erlang_c(lam: float, mu: float, c: int) -> float:
    """The probability that an arriving task has to wait (all ``c`` servers busy), from the
    Erlang B recurrence (no overflow however many servers: a^k/k! itself overflows past a ~ 700)."""
    rho = _check(lam, mu, c)
    a = lam / mu  # offered load in servers
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    return b / (1 - rho * (1 - b))


def mmc_mean_sojourn_s(lam: float, mu: float, c: int) -> float:
    """Mean time in system (wait + service) of M/M/c."""
    return erlang_c(lam, mu, c) / (c * mu - lam) + 1 / mu


def mmc_sojourn_quantile_s(lam: float, mu: float, c: int, q: float) -> float:
    """The ``q`` quantile of the sojourn time of M/M/1 (exact); for c > 1 use the mean.

    Sojourn in M/M/1 FIFO is exponential with rate ``mu - lam``."""
    if c != 1:
        raise ValueError("the sojourn quantile in closed form is M/M/1's only")
    _check(lam, mu, c)
    if not 0 < q < 1:
        raise ValueError(f"q must be in (0, 1), got {q}")
    return -math.log(1 - q) / (mu - lam)


def mg1_mean_wait_s(lam: float, mean_s: float, second_moment_s2: float) -> float:
    """Mean wait in line of M/G/1 FIFO (Pollaczek-Khinchine): ``lam E[S^2] / (2 (1 - rho))``,
    for service times of mean ``mean_s`` and second moment ``second_moment_s2``."""
    rho = _check(lam, 1.0 / mean_s, 1)
    return lam * second_moment_s2 / (2 * (1 - rho))
