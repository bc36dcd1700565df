"""What a simulation runs: the federation's shape, its workload and the virtual time."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from node.admission import AdmissionConfig
from node.errors import ValidationError

__all__ = ["SIM_POLICIES", "SimConfig"]

# How nodes share work: "none" (no hand-off), "random" (offers to a random peer, local
# thresholds), "seed" and "adaptive" (admission's policies on the federation's privacy-filtered
# view, peers by power of two on the view's loads), "oracle" (power of two on every peer's exact
# load of the moment, and adaptive's thresholds on the federation's exact load of the moment:
# what no deployed node can know, the bound the others are measured against)
SIM_POLICIES = ("none", "random", "seed", "adaptive", "oracle")
MECHANISMS = ("gaussian", "laplace")


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
    # Heterogeneous load: node i's own load is load x (1 + spread x u_i), u_i spread evenly over
    # [-1, 1] in a seeded order, scaled so that the federation's load stays `load`
    spread: float = 0.0
    # Sharing (see SIM_POLICIES)
    policy: str = "none"
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)  # thresholds; its policy is set from `policy`
    check_s: float = 0.2  # an overloaded node looks at its load this often (HandoffConfig.check_s)
    offer_batch: int = 1000  # tasks per offer at most (HandoffConfig.batch)
    offers_per_pass: int = 8  # offers one offload pass makes at most (the runtime's pass tries every peer)
    reservation_s: float = 10.0  # how long an accepted offer holds room (HandoffConfig.reservation_s)
    net_delay_s: float = 0.001  # one way, per hand-off message (offer, reply, transfer, ack, report)
    # The federation: every period_s each node releases its last window (window_s = period_s)
    # through the privacy pipeline, the aggregation merges them, and the view reaches every node
    # view_delay_s later; None (the default): period_s, as deployed, where the view rides in the
    # next round's query and reaches each node just before it releases again. epsilon None: no
    # noise (the same window counts, released exact).
    period_s: float = 20.0
    view_delay_s: float | None = None
    epsilon: float | None = None  # per task over m windows, at delta
    delta: float = 1e-6
    m: int = 3
    mechanism: str = "gaussian"
    deadline_s: float = 60.0  # a task whose sojourn is longer counts as a timeout (a metric only)
    # The work (a "mixed" workload when any of these is not the default): `types` task types
    # t0, t1, ... arriving with Zipf weights 1 / (k + 1)^type_skew; type k has difficulty
    # difficulties[k % len] (1..10), and a task of difficulty d takes an exponential time of mean
    # service_mean_s x d / (the mean difficulty of the arrivals), so the offered load stays `load`.
    # Each node's slots are split over workers of the `skills` given (the most skilled first);
    # the core's strict matching gives a task only to a worker of skill >= its difficulty. An
    # attempt fails with probability fail_rate (after its service time, as seed 001's workers
    # do): the core retries it after its backoff (max_retries 3), then fails it for good.
    types: int = 1
    type_skew: float = 0.0
    difficulties: tuple[int, ...] = (1,)
    skills: tuple[int, ...] = (10,)
    fail_rate: float = 0.0
    # Node failures: each node fails after an exponential time of mean mtbf_s (None: never), and
    # comes back an exponential time of mean mttr_s later, rebuilt from its durable store by the
    # core's restore (the leases its workers held go back in line; hand-offs in flight settle).
    # Meanwhile tasks that arrive at it are refused (the reject rate), and messages to it are
    # lost: its peers wait rpc_timeout_s for an answer, then take it as a refusal.
    mtbf_s: float | None = None
    mttr_s: float = 60.0
    rpc_timeout_s: float = 1.0

    def __post_init__(self) -> None:
        if type(self.nodes) is not int or not 1 <= self.nodes <= 100_000:
            raise ValidationError("sim.nodes", f"{self.nodes!r}", limit="1..100000")
        if not isinstance(self.slots, tuple) or not self.slots:
            raise ValidationError("sim.slots", f"{self.slots!r}", limit="a non-empty tuple of ints")
        for s in self.slots:
            if type(s) is not int or not 1 <= s <= 10_000:
                raise ValidationError("sim.slots", f"{s!r}", limit="1..10000 per node")
        # the model needs a stable federation: at load >= 1 queues grow without bound whatever
        # the policy, and no sojourn time means anything
        _number("load", self.load, lambda x: 0.0 < x < 1.0, "0 < value < 1 (at 1 or more queues grow without bound)")
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
        _number("spread", self.spread, lambda x: 0.0 <= x < 1.0, "0 <= value < 1")
        if self.policy not in SIM_POLICIES:
            raise ValidationError("sim.policy", f"{self.policy!r} is not a policy", limit=" | ".join(SIM_POLICIES))
        if not isinstance(self.admission, AdmissionConfig):
            raise ValidationError("sim.admission", f"{type(self.admission).__name__}", limit="an AdmissionConfig")
        _positive("check_s", self.check_s, upto=3600.0)
        _positive("reservation_s", self.reservation_s, upto=3600.0)
        _number("net_delay_s", self.net_delay_s, lambda x: 0.0 <= x <= 60.0, "0 <= value <= 60")
        for name in ("offer_batch", "offers_per_pass"):
            v = getattr(self, name)
            if type(v) is not int or not 1 <= v <= 10_000:
                raise ValidationError(f"sim.{name}", f"{v!r}", limit="1..10000")
        _positive("period_s", self.period_s, upto=86400.0)
        if self.view_delay_s is not None:
            _number("view_delay_s", self.view_delay_s, lambda x: 0.0 <= x <= self.period_s, "0 <= value <= period_s")
        if self.epsilon is not None:
            _number("epsilon", self.epsilon, lambda x: 0.0 < x <= 1000.0, "0 < value <= 1000 (or None: no noise)")
        _number("delta", self.delta, lambda x: 0.0 < x < 1.0, "0 < value < 1")
        if type(self.m) is not int or not 1 <= self.m <= 1000:
            raise ValidationError("sim.m", f"{self.m!r}", limit="1..1000")
        if self.mechanism not in MECHANISMS:
            raise ValidationError("sim.mechanism", f"{self.mechanism!r}", limit=" | ".join(MECHANISMS))
        _positive("deadline_s", self.deadline_s)
        if type(self.types) is not int or not 1 <= self.types <= 1000:
            raise ValidationError("sim.types", f"{self.types!r}", limit="1..1000")
        _number("type_skew", self.type_skew, lambda x: 0.0 <= x <= 10.0, "0..10")
        for name in ("difficulties", "skills"):
            v = getattr(self, name)
            if not isinstance(v, tuple) or not v or any(type(d) is not int or not 1 <= d <= 10 for d in v):
                raise ValidationError(f"sim.{name}", f"{v!r}", limit="a non-empty tuple of ints 1..10")
        hardest = max(self.difficulties[k % len(self.difficulties)] for k in range(self.types))
        if max(self.skills) < hardest:  # strict matching: those tasks would wait for ever
            raise ValidationError(
                "sim.skills",
                f"{self.skills!r}: no worker can run the difficulty-{hardest} tasks (a task goes only to a "
                "worker of skill >= its difficulty)",
                limit=f"the most skilled worker at least {hardest}",
            )
        _number("fail_rate", self.fail_rate, lambda x: 0.0 <= x < 1.0, "0 <= value < 1")
        if self.mtbf_s is not None:
            _number("mtbf_s", self.mtbf_s, lambda x: 1.0 <= x <= 1e9, "1 <= value <= 1e9 (or None: nodes never fail)")
        _number("mttr_s", self.mttr_s, lambda x: 1.0 <= x <= 86400.0, "1 <= value <= 86400")
        _number("rpc_timeout_s", self.rpc_timeout_s, lambda x: 0.001 <= x <= 600.0, "0.001 <= value <= 600")

    def node_slots(self, i: int) -> int:
        return self.slots[i % len(self.slots)]

    @property
    def view_delay(self) -> float:
        """How long a round's view takes to reach the nodes (``view_delay_s``, else a period)."""
        return self.period_s if self.view_delay_s is None else self.view_delay_s

    @property
    def failures(self) -> bool:
        return self.mtbf_s is not None

    @property
    def mixed(self) -> bool:
        """Several types, difficulties or workers, or failures (else one worker per node runs
        one type: the simulator's fast path)."""
        return self.types > 1 or self.difficulties != (1,) or self.skills != (10,) or self.fail_rate > 0

    def type_weights(self) -> list[float]:
        """The share of arrivals of each type (Zipf with exponent ``type_skew``)."""
        raw = [1.0 / (k + 1) ** self.type_skew for k in range(self.types)]
        total = sum(raw)
        return [r / total for r in raw]

    def difficulty(self, k: int) -> int:
        return self.difficulties[k % len(self.difficulties)]

    def worker_slots(self, i: int) -> list[tuple[int, int]]:
        """Node ``i``'s workers as (skill, slots), the most skilled first; workers that get no
        slot (fewer slots than skills) are left out."""
        skills = sorted(self.skills, reverse=True)
        s, w = self.node_slots(i), len(skills)
        out = [(sk, s // w + (1 if k < s % w else 0)) for k, sk in enumerate(skills)]
        return [(sk, c) for sk, c in out if c > 0]

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> SimConfig:
        """The config of a result's ``config`` (JSON: lists for tuples, a mapping for the
        admission settings); an unknown key is refused, naming it."""
        if not isinstance(d, Mapping):
            raise ValidationError("sim", f"expected a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise ValidationError(f"sim.{extra[0]}", "is not a simulation setting")
        kw = dict(d)
        for name in ("slots", "difficulties", "skills"):
            if name in kw and isinstance(kw[name], list):
                kw[name] = tuple(kw[name])
        adm = kw.get("admission")
        if isinstance(adm, Mapping):
            names = {f.name for f in fields(AdmissionConfig)}
            bad = sorted(set(adm) - names)
            if bad:
                raise ValidationError(f"sim.admission.{bad[0]}", "is not an admission setting")
            kw["admission"] = AdmissionConfig(**adm)
        return cls(**kw)

    def to_record(self) -> dict[str, Any]:
        """As JSON-ready data (:meth:`from_record` reads it back)."""
        rec = asdict(self)
        for name in ("slots", "difficulties", "skills"):
            rec[name] = list(getattr(self, name))
        return rec

    @property
    def sharing(self) -> bool:
        return self.policy != "none"

    @property
    def admission_policy(self) -> str:
        """The admission policy each node runs under ``policy``."""
        if self.policy == "oracle":
            return "adaptive"
        return self.policy if self.policy in ("seed", "adaptive") else "local"

    def arrival_rate_per_s(self, i: int) -> float:
        """Node ``i``'s arrival rate without spread (see :func:`federation.sim.run.node_rates`)."""
        return self.load * self.node_slots(i) / self.service_mean_s
