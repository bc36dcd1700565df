"""What a simulation runs: the federation's shape, its workload and the virtual time."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from node.errors import ValidationError

__all__ = ["SimConfig"]


def _number(name: str, v: object, ok: Callable[[float], bool], limit: str) -> None:
    """Refuse ``v`` unless it is a finite int or float (not a bool) for which ``ok`` holds."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not ok(v):
        raise ValidationError(f"sim.{name}", f"{v!r}", limit=limit)


def _positive(name: str, v: object, *, upto: float = math.inf) -> None:
    _number(name, v, lambda x: 0 < x <= upto, f"0 < value <= {upto:g}")


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One simulated federation.

    Node ``i`` has ``slots[i % len(slots)]`` worker slots (heterogeneous capacities by cycling),
    tasks arrive at it as a Poisson process at ``load`` times its capacity (in bursts when
    ``burst_factor`` > 1: a two-state Markov-modulated Poisson process of the same mean rate),
    and each takes an exponential time of mean ``service_mean_s`` on a slot. Tasks arriving in the first
    ``warmup_s`` of virtual time are run but not measured."""

    nodes: int = 1
    slots: tuple[int, ...] = (8,)
    load: float = 0.9  # offered load: arrival rate / (slots / service_mean_s), per node
    service_mean_s: float = 10.0
    duration_s: float = 3600.0  # virtual seconds of arrivals
    warmup_s: float = 0.0
    burst_factor: float = 1.0  # the arrival rate during bursts, times the rate outside them (1: plain Poisson)
    burst_share: float = 0.1  # the share of the time in bursts (the mean rate stays `load` x capacity)
    burst_mean_s: float = 60.0  # mean length of a burst
    tick_s: float = 10.0  # how often (virtual) each node's core ticks (retries due, leases expired)
    seed: int = 0
    validate: bool = False  # Core.validate() on every node at the end

    def __post_init__(self) -> None:
        if type(self.nodes) is not int or not 1 <= self.nodes <= 100_000:
            raise ValidationError("sim.nodes", f"{self.nodes!r}", limit="1..100000")
        if not isinstance(self.slots, tuple) or not self.slots:
            raise ValidationError("sim.slots", f"{self.slots!r}", limit="a non-empty tuple of ints")
        for s in self.slots:
            if type(s) is not int or not 1 <= s <= 10_000:
                raise ValidationError("sim.slots", f"{s!r}", limit="1..10000 per node")
        _positive("load", self.load, upto=10.0)
        # a task's lease (7 days, the longest timeout) must outlast its service: 7 days is 168
        # means at the cap, a chance of e^-168 of a lease expiring under a running task
        _positive("service_mean_s", self.service_mean_s, upto=3600.0)
        _positive("duration_s", self.duration_s, upto=365 * 86400.0)
        _positive("tick_s", self.tick_s, upto=3600.0)
        _positive("burst_mean_s", self.burst_mean_s, upto=86400.0)
        _number("burst_factor", self.burst_factor, lambda x: 1.0 <= x <= 1000.0, "1..1000")
        _number("burst_share", self.burst_share, lambda x: 0.0 < x < 1.0, "0 < value < 1")
        _number("warmup_s", self.warmup_s, lambda x: 0 <= x < self.duration_s, "0 <= value < duration_s")
        if type(self.seed) is not int:
            raise ValidationError("sim.seed", f"{self.seed!r}", limit="an int")

    def node_slots(self, i: int) -> int:
        return self.slots[i % len(self.slots)]

    def arrival_rate_per_s(self, i: int) -> float:
        return self.load * self.node_slots(i) / self.service_mean_s
