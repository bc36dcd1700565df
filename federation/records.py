"""Flower records of what the federation exchanges: released summaries up, the federation view down.

Records carry plain ints and floats (``MetricRecord``: no numpy scalars, no bools, no nesting)
and the few names (``ConfigRecord``: node ids, the public vocabulary, the mechanism). Lists are
aligned: the count fields follow ``types``, the per-node fields follow ``nodes.id``. Decoding
goes through the domain types' own checks (:class:`~federation.privacy.schema.ReleasedSummary`
refuses anything outside the schema), so a record that does not decode raises
:class:`~federation.privacy.schema.SchemaError` and changes nothing.

Keys of a reply to ``query.summary``: ``status`` (ConfigRecord: status, reason), then, when the
node released, ``summary`` (MetricRecord) and ``summary.names`` (ConfigRecord); ``privacy``
(MetricRecord: the node's budget) whenever the node said.
Keys of a query: ``view`` and ``view.names`` when there is a previous round's view; ``round``
(MetricRecord: round number) always.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from flwr.app import ConfigRecord, MetricRecord, RecordDict

from federation.privacy.schema import COUNT_FIELDS, ReleasedSummary, SchemaError
from federation.privacy.status import PrivacyStatus, ReleaseOutcome, ReleaseStatus
from federation.view import Estimate, GlobalView, NodeEstimate, QuantileEstimate

__all__ = [
    "outcome_from_records",
    "outcome_to_records",
    "query_records",
    "round_of",
    "summary_from_records",
    "summary_to_records",
    "view_from_records",
    "view_to_records",
]

_COST_NUMBERS = (
    "scale",
    "variance",
    "rho",
    "m",
    "delta",
    "epsilon",
    "epsilon_budget",
    "epsilon_left",
    "suppress_below",
)
_SUMMARY_NUMBERS = (
    "schema", "window", "window_s", *COUNT_FIELDS, "completion_edges_s", "completion_counts", "occupied_slots",
    "capacity_bucket",
)  # fmt: skip
_ESTIMATES = ("handed_off_per_s", "occupied", "federation_load", "completed_in_histogram")
_RATES = ("submitted_per_s", "throughput_per_s", "failed_per_s")
_PRIVACY_NUMBERS = (
    "scale", "variance", "m", "delta", "epsilon_budget", "rho_budget", "rho_per_release", "releases", "refused",
    "epsilon_current", "epsilon_worst", "epsilon_left",
)  # fmt: skip


def _floats(values: Any) -> list[float]:
    return [float(v) for v in values]


# ---------------------------------------------------------------------------------- summaries


def summary_to_records(s: ReleasedSummary) -> dict[str, Any]:
    numbers: dict[str, Any] = {}
    for k in _SUMMARY_NUMBERS:
        v = getattr(s, k)
        numbers[k] = list(v) if isinstance(v, tuple) else v
    numbers["window_s"] = float(s.window_s)
    numbers["completion_edges_s"] = _floats(s.completion_edges_s)
    for k in _COST_NUMBERS:
        numbers[f"cost.{k}"] = getattr(s.cost, k)
    names: dict[str, Any] = {"node_id": s.node_id, "types": list(s.types), "cost.mechanism": s.cost.mechanism}
    return {"summary": MetricRecord(numbers), "summary.names": ConfigRecord(names)}


def summary_from_records(numbers: Mapping[str, Any], names: Mapping[str, Any]) -> ReleasedSummary:
    """The summary in a reply's records, checked by the schema (:class:`SchemaError`)."""
    want = set(_SUMMARY_NUMBERS) | {f"cost.{k}" for k in _COST_NUMBERS}
    extra = set(numbers) - want
    missing = want - set(numbers)
    if extra or missing:
        raise SchemaError(f"summary record: unknown {sorted(extra)[:5]}, missing {sorted(missing)[:5]}")
    if set(names) != {"node_id", "types", "cost.mechanism"}:
        raise SchemaError(f"summary.names record: fields {sorted(map(str, names))[:8]}")
    record: dict[str, Any] = {k: numbers[k] for k in _SUMMARY_NUMBERS}
    record["node_id"] = names["node_id"]
    record["types"] = names["types"]
    record["cost"] = {k: numbers[f"cost.{k}"] for k in _COST_NUMBERS} | {"mechanism": names["cost.mechanism"]}
    return ReleasedSummary.from_record(record)


# ---------------------------------------------------------------------------------- replies


def outcome_to_records(o: ReleaseOutcome) -> RecordDict:
    """A node's answer to ``query.summary``."""
    rd: dict[str, Any] = {"status": ConfigRecord({"status": o.status.value, "reason": o.reason, "node_id": o.node_id})}
    if o.summary is not None:
        rd.update(summary_to_records(o.summary))
    if o.privacy is not None:
        p = o.privacy
        numbers: dict[str, Any] = {k: getattr(p, k) for k in _PRIVACY_NUMBERS}
        numbers["enabled"] = int(p.enabled)
        numbers["next_allowed"] = int(p.next_allowed)
        numbers["last_window"] = -1 if p.last_window is None else p.last_window
        rd["privacy"] = MetricRecord({k: float(v) if isinstance(v, float) else v for k, v in numbers.items()})
        rd["privacy.names"] = ConfigRecord({"mechanism": p.mechanism})
    return RecordDict(rd)


def outcome_from_records(content: RecordDict) -> ReleaseOutcome:
    """The reply's outcome; :class:`SchemaError` if anything in it does not check."""
    try:
        status_rec = content["status"]
        status = ReleaseStatus(str(status_rec["status"]))
        reason = str(status_rec["reason"])
        node_id = str(status_rec.get("node_id", ""))
    except (KeyError, ValueError, TypeError) as e:
        raise SchemaError(f"reply: no valid status ({e})") from None
    summary = None
    if "summary" in content:
        summary = summary_from_records(content["summary"], content["summary.names"])
    if (summary is not None) != (status in (ReleaseStatus.RELEASED, ReleaseStatus.REPEATED)):
        raise SchemaError(f"reply: status {status.value} {'with' if summary is not None else 'without'} a summary")
    privacy = None
    if "privacy" in content:
        p: Mapping[str, Any] = content["privacy"]
        try:
            kw: dict[str, Any] = {k: p[k] for k in _PRIVACY_NUMBERS}
            last = int(p["last_window"])
            privacy = PrivacyStatus(
                enabled=bool(p["enabled"]),
                mechanism=str(content["privacy.names"]["mechanism"]),
                last_window=None if last < 0 else last,
                next_allowed=bool(p["next_allowed"]),
                **kw,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise SchemaError(f"reply: privacy record ({e})") from None
    if summary is not None and node_id and summary.node_id != node_id:
        raise SchemaError(f"reply: node {node_id!r} answered with a summary of {summary.node_id!r}")
    return ReleaseOutcome(status, summary, reason, privacy, node_id or (summary.node_id if summary else ""))


# ---------------------------------------------------------------------------------- the view


def view_to_records(v: GlobalView) -> dict[str, Any]:
    n: dict[str, Any] = {
        "round": v.round, "at_ns": v.at_ns, "window": v.window, "window_s": float(v.window_s), "capacity": v.capacity,
    }  # fmt: skip
    for k in _ESTIMATES:
        e: Estimate = getattr(v, k)
        n[f"{k}.value"], n[f"{k}.sd"] = float(e.value), float(e.sd)
    for k in _RATES:
        rates: Mapping[str, Estimate] = getattr(v, k)
        n[f"{k}.value"] = [float(rates[t].value) if t in rates else 0.0 for t in v.types]
        n[f"{k}.sd"] = [float(rates[t].sd) if t in rates else 0.0 for t in v.types]
        n[f"{k}.present"] = [int(t in rates) for t in v.types]
    qs = v.completion_quantiles_s
    for k in ("q", "value", "low", "high"):
        n[f"quantiles.{k}"] = [float(getattr(q, k)) for q in qs]
    ids = sorted(v.nodes)
    nodes = [v.nodes[i] for i in ids]
    n["nodes.window"] = [x.window for x in nodes]
    n["nodes.capacity"] = [x.capacity for x in nodes]
    for k in ("occupied", "load", "handed_off_out_per_s", "handed_off_in_per_s"):
        n[f"nodes.{k}.value"] = [float(getattr(x, k).value) for x in nodes]
        n[f"nodes.{k}.sd"] = [float(getattr(x, k).sd) for x in nodes]
    names: dict[str, Any] = {
        "types": list(v.types),
        "participants": list(v.participants),
        "missing": list(v.missing),
        "dropped.node": [a for a, _ in v.dropped],
        "dropped.reason": [b for _, b in v.dropped],
        "nodes.id": ids,
    }
    return {"view": MetricRecord(n), "view.names": ConfigRecord(names)}


def view_from_records(n: Mapping[str, Any], names: Mapping[str, Any]) -> GlobalView:
    """The view in a query's records. Raises :class:`SchemaError` when lists do not line up or
    numbers are not finite; the node checks the rest field by field when it is applied."""
    try:
        types = tuple(str(t) for t in names["types"])
        ids = [str(i) for i in names["nodes.id"]]

        def rates(k: str) -> dict[str, Estimate]:
            vals, sds, present = n[f"{k}.value"], n[f"{k}.sd"], n[f"{k}.present"]
            if not len(vals) == len(sds) == len(present) == len(types):
                raise SchemaError(f"view: {k} does not line up with the types")
            return {t: Estimate(float(a), float(b)) for t, a, b, p in zip(types, vals, sds, present, strict=True) if p}

        def est(k: str) -> Estimate:
            return Estimate(float(n[f"{k}.value"]), float(n[f"{k}.sd"]))

        q = [n[f"quantiles.{k}"] for k in ("q", "value", "low", "high")]
        if len({len(x) for x in q}) != 1:
            raise SchemaError("view: quantile lists do not line up")
        cols = [n["nodes.window"], n["nodes.capacity"], n["nodes.occupied.value"], n["nodes.occupied.sd"],
                n["nodes.load.value"], n["nodes.load.sd"]]  # fmt: skip
        zeros = [0.0] * len(ids)  # (hand-offs per node: absent in views from before they were released)
        moved = [
            n.get(f"nodes.{k}.{x}", zeros)
            for k in ("handed_off_out_per_s", "handed_off_in_per_s")
            for x in ("value", "sd")
        ]
        if any(len(c) != len(ids) for c in (*cols, *moved)):
            raise SchemaError("view: node lists do not line up with nodes.id")
        nodes = {
            i: NodeEstimate(
                i, int(w), Estimate(float(ov), float(osd)), int(c), Estimate(float(lv), float(lsd)),
                Estimate(float(mo), float(mos)), Estimate(float(mi), float(mis)),
            )
            for i, w, c, ov, osd, lv, lsd, mo, mos, mi, mis in zip(ids, *cols, *moved, strict=True)
        }  # fmt: skip
        dropped_nodes, reasons = list(names["dropped.node"]), list(names["dropped.reason"])
        if len(dropped_nodes) != len(reasons):
            raise SchemaError("view: dropped lists do not line up")
        view = GlobalView(
            round=int(n["round"]),
            at_ns=int(n["at_ns"]),
            window=int(n["window"]),
            window_s=float(n["window_s"]),
            types=types,
            participants=tuple(str(p) for p in names["participants"]),
            dropped=tuple((str(a), str(b)) for a, b in zip(dropped_nodes, reasons, strict=True)),
            missing=tuple(str(m) for m in names["missing"]),
            submitted_per_s=rates("submitted_per_s"),
            throughput_per_s=rates("throughput_per_s"),
            failed_per_s=rates("failed_per_s"),
            handed_off_per_s=est("handed_off_per_s"),
            occupied=est("occupied"),
            capacity=int(n["capacity"]),
            federation_load=est("federation_load"),
            completion_quantiles_s=tuple(
                QuantileEstimate(float(a), float(b), float(c), float(d)) for a, b, c, d in zip(*q, strict=True)
            ),
            completed_in_histogram=est("completed_in_histogram"),
            nodes=nodes,
        )
    except SchemaError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise SchemaError(f"view record: {e!r:.200}") from None
    numbers = [view.window_s, view.occupied.value, view.occupied.sd, view.federation_load.value]
    if not all(math.isfinite(x) for x in numbers):
        raise SchemaError("view: a number is not finite")
    return view


def query_records(round_no: int, view: GlobalView | None) -> RecordDict:
    """The content of one round's ``query.summary``: the round, and the previous round's view."""
    rd: dict[str, Any] = {"round": MetricRecord({"round": round_no})}
    if view is not None:
        rd.update(view_to_records(view))
    return RecordDict(rd)


def round_of(content: RecordDict) -> int:
    rec: Mapping[str, Any] = content["round"]
    return int(rec["round"])
