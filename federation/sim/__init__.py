"""Simulating federations on one machine: a discrete-event simulator over the real node core.

Work in progress (issue 15): single nodes and federations without sharing, checked against
closed-form queueing results. Hand-off, the privacy pipeline, aggregation and the admission
policies come next.
"""

from federation.sim.config import SimConfig
from federation.sim.queueing import erlang_c, mmc_mean_sojourn_s, mmc_sojourn_quantile_s
from federation.sim.run import SimResult, simulate

__all__ = ["SimConfig", "SimResult", "erlang_c", "mmc_mean_sojourn_s", "mmc_sojourn_quantile_s", "simulate"]
