"""The federation view: what the aggregation makes of many released summaries, with its uncertainty.

Built by :func:`federation.aggregate.aggregate`, sent back to every node (gRPC
``ApplyFederation``; in the next issue inside the Flower round's query), read by the node's
admission (:meth:`GlobalView.admission_view`). Every estimate carries the standard deviation the
privacy noise gives it (``sd``): the mechanism's variance per cell is public, so the view knows
how sure it is. Only released (noisy) numbers are in here, never a node's raw counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from node.admission import FederationView

__all__ = ["Estimate", "GlobalView", "NodeEstimate", "QuantileEstimate"]


@dataclass(frozen=True, slots=True)
class Estimate:
    """A noisy quantity: its value and the standard deviation the privacy noise gives it."""

    value: float
    sd: float

    def to_record(self) -> dict[str, float]:
        return {"value": self.value, "sd": self.sd}

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> Estimate:
        return cls(float(d["value"]), float(d["sd"]))


@dataclass(frozen=True, slots=True)
class QuantileEstimate:
    """A completion-time quantile from the merged histograms: ``value`` (seconds, interpolated
    within its bin) and the interval ``[low, high]`` of the values at the rank moved by two
    standard deviations of the cumulative count's noise: roughly a 95% interval, not counting
    the noise in the total itself or the bias of suppressed cells."""

    q: float
    value: float
    low: float
    high: float

    def to_record(self) -> dict[str, float]:
        return {"q": self.q, "value": self.value, "low": self.low, "high": self.high}

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> QuantileEstimate:
        return cls(float(d["q"]), float(d["value"]), float(d["low"]), float(d["high"]))


@dataclass(frozen=True, slots=True)
class NodeEstimate:
    """One node as the federation saw it in its latest release."""

    node_id: str
    window: int
    occupied: Estimate  # occupied slots (noisy)
    capacity: int  # the released capacity bucket (lower edge)
    load: Estimate  # occupied / capacity (capacity 0: occupied itself, as the node reads it)
    # Tasks it handed to peers and took from peers, per second, summed over types (noisy). Which
    # peer is not released: a count per pair of nodes would be one more cell to pay for.
    handed_off_out_per_s: Estimate = Estimate(0.0, 0.0)
    handed_off_in_per_s: Estimate = Estimate(0.0, 0.0)

    def to_record(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "window": self.window,
            "occupied": self.occupied.to_record(),
            "capacity": self.capacity,
            "load": self.load.to_record(),
            "handed_off_out_per_s": self.handed_off_out_per_s.to_record(),
            "handed_off_in_per_s": self.handed_off_in_per_s.to_record(),
        }

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> NodeEstimate:
        zero = {"value": 0.0, "sd": 0.0}
        return cls(
            str(d["node_id"]),
            int(d["window"]),
            Estimate.from_record(d["occupied"]),
            int(d["capacity"]),
            Estimate.from_record(d["load"]),
            Estimate.from_record(d.get("handed_off_out_per_s", zero)),
            Estimate.from_record(d.get("handed_off_in_per_s", zero)),
        )


@dataclass(frozen=True, slots=True)
class GlobalView:
    """The federation-wide picture of one round."""

    round: int
    at_ns: int  # when it was aggregated (the aggregator's clock)
    window: int  # the newest window among the summaries it merged
    window_s: float
    types: tuple[str, ...]  # the public vocabulary, then "other"
    participants: tuple[str, ...]  # nodes whose summary went in
    dropped: tuple[tuple[str, str], ...] = ()  # (node id or "?", reason) of summaries refused
    missing: tuple[str, ...] = ()  # nodes expected that sent nothing (the server fills this in)
    submitted_per_s: Mapping[str, Estimate] = field(default_factory=dict)  # by public type
    throughput_per_s: Mapping[str, Estimate] = field(default_factory=dict)  # completed per second, by type
    failed_per_s: Mapping[str, Estimate] = field(default_factory=dict)
    handed_off_per_s: Estimate = Estimate(0.0, 0.0)  # tasks moved between nodes, per second
    occupied: Estimate = Estimate(0.0, 0.0)  # summed over participants
    capacity: int = 0  # summed capacity buckets
    federation_load: Estimate = Estimate(0.0, 0.0)  # occupied / capacity
    completion_quantiles_s: tuple[QuantileEstimate, ...] = ()
    completed_in_histogram: Estimate = Estimate(0.0, 0.0)  # merged histogram total
    nodes: Mapping[str, NodeEstimate] = field(default_factory=dict)

    def admission_view(self, node_id: str) -> FederationView:
        """What admission reads: this node's share of the federation's load, the federation's
        load, and every other node's load (for choosing hand-off peers)."""
        share = None
        me = self.nodes.get(node_id)
        total = sum(max(0.0, n.occupied.value) for n in self.nodes.values())
        if me is not None and total > 0:
            share = min(1.0, max(0.0, me.occupied.value) / total)
        elif me is not None:
            share = 0.0
        fed = self.federation_load.value if self.capacity > 0 else None
        peers = {k: max(0.0, n.load.value) for k, n in self.nodes.items() if k != node_id}
        if fed is not None and not math.isfinite(fed):
            fed = None
        fed_sd = self.federation_load.sd if fed is not None else None
        return FederationView(
            at_ns=self.at_ns, load_share=share, federation_load=fed, peer_loads=peers, federation_load_sd=fed_sd
        )

    def to_record(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "at_ns": self.at_ns,
            "window": self.window,
            "window_s": self.window_s,
            "types": list(self.types),
            "participants": list(self.participants),
            "dropped": [list(x) for x in self.dropped],
            "missing": list(self.missing),
            "submitted_per_s": {k: v.to_record() for k, v in self.submitted_per_s.items()},
            "throughput_per_s": {k: v.to_record() for k, v in self.throughput_per_s.items()},
            "failed_per_s": {k: v.to_record() for k, v in self.failed_per_s.items()},
            "handed_off_per_s": self.handed_off_per_s.to_record(),
            "occupied": self.occupied.to_record(),
            "capacity": self.capacity,
            "federation_load": self.federation_load.to_record(),
            "completion_quantiles_s": [q.to_record() for q in self.completion_quantiles_s],
            "completed_in_histogram": self.completed_in_histogram.to_record(),
            "nodes": {k: v.to_record() for k, v in self.nodes.items()},
        }

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> GlobalView:
        def est(m: Mapping[str, Any]) -> dict[str, Estimate]:
            return {str(k): Estimate.from_record(v) for k, v in m.items()}

        return cls(
            round=int(d["round"]),
            at_ns=int(d["at_ns"]),
            window=int(d["window"]),
            window_s=float(d["window_s"]),
            types=tuple(str(t) for t in d["types"]),
            participants=tuple(str(p) for p in d["participants"]),
            dropped=tuple((str(a), str(b)) for a, b in d["dropped"]),
            missing=tuple(str(m) for m in d["missing"]),
            submitted_per_s=est(d["submitted_per_s"]),
            throughput_per_s=est(d["throughput_per_s"]),
            failed_per_s=est(d["failed_per_s"]),
            handed_off_per_s=Estimate.from_record(d["handed_off_per_s"]),
            occupied=Estimate.from_record(d["occupied"]),
            capacity=int(d["capacity"]),
            federation_load=Estimate.from_record(d["federation_load"]),
            completion_quantiles_s=tuple(QuantileEstimate.from_record(q) for q in d["completion_quantiles_s"]),
            completed_in_histogram=Estimate.from_record(d["completed_in_histogram"]),
            nodes={str(k): NodeEstimate.from_record(v) for k, v in d["nodes"].items()},
        )
