"""Simulating federations on one machine: a discrete-event simulator over the real node core.

Nodes share work by hand-off under admission's policies (``share.py``), the ``seed`` and
``adaptive`` ones reading the federation's view from the real privacy pipeline with seeded,
simulation-only noise (``noise.py``); ``sweep.py`` runs a grid of them. Checked against
closed-form queueing results (single nodes, and between independent and pooled queues).
Work in progress (issue 15): no Flower engine path yet.
"""

from federation.sim.config import SimConfig
from federation.sim.queueing import erlang_c, mmc_mean_sojourn_s, mmc_sojourn_quantile_s
from federation.sim.run import SimResult, simulate

__all__ = ["SimConfig", "SimResult", "erlang_c", "mmc_mean_sojourn_s", "mmc_sojourn_quantile_s", "simulate"]
