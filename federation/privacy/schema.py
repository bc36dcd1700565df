"""The release schema: the only shape in which anything about a node's tasks leaves the node.

A :class:`ReleasedSummary` holds exactly the fields below and nothing else (frozen, slotted;
:meth:`ReleasedSummary.from_record` refuses a key it does not know). Every count in it has been
bounded, noised by OpenDP, suppressed and post-processed by the pipeline
(:mod:`federation.privacy.pipeline`); the type names are the public vocabulary and ``other``.
The same record travels as the gRPC ``Summary`` reply and, in the Flower apps, as plain ints and
floats.

Schema version 1 (``SCHEMA_VERSION``):

==========================  ======================================================================
field                       meaning
==========================  ======================================================================
``schema``                  1
``node_id``                 the releasing node
``window``                  window index: the window is ``[window * window_s, (window + 1) * window_s)``
``window_s``                window length, seconds (public configuration)
``types``                   the public vocabulary, then ``other``
``submitted`` ...           one count per entry of ``types``: ``submitted``, ``completed``,
                            ``failed``, ``handed_off_in``, ``handed_off_out`` (``COUNT_FIELDS``)
``completion_edges_s``      the fixed public bin edges of the completion-time histogram
``completion_counts``       one count per bin (``len(edges) + 1``: the last bin is open)
``occupied_slots``          tasks leased or ready at release (the load's numerator)
``capacity_bucket``         healthy worker slots, as the lower edge of a coarse bucket
``cost``                    :class:`PrivacyCost`: mechanism, scale, noise variance per cell, rho
                            of this release, and the per-task (epsilon, delta) spent and left
==========================  ======================================================================
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from node.errors import FedcoordError

__all__ = ["COUNT_FIELDS", "SCHEMA_VERSION", "PrivacyCost", "ReleasedSummary", "SchemaError"]

SCHEMA_VERSION = 1
COUNT_FIELDS = ("submitted", "completed", "failed", "handed_off_in", "handed_off_out")
MAX_TYPES = 257  # 256 vocabulary names and other
MAX_BINS = 257
MAX_COUNT = 2**53  # released counts are exact in a double (Flower records carry floats too)
_NAME_MAX = 128


class SchemaError(FedcoordError, ValueError):
    """A summary that is not a valid release of this schema; ``reason`` says why."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(f"summary refused: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.reason,)


def _show(v: object) -> str:
    """A bad value as a reason quotes it: cut short (a reason goes into logs)."""
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _int(name: str, v: object, lo: int = 0, hi: int = MAX_COUNT) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise SchemaError(f"{name}: {_show(v)} is not an integer in [{lo}, {hi}]")
    return v


def _float(name: str, v: object, *, lo: float = 0.0, hi: float = math.inf, open_lo: bool = False) -> float:
    if type(v) is int:
        v = float(v) if -MAX_COUNT <= v <= MAX_COUNT else math.inf  # huge ints: refused below, not OverflowError
    if type(v) is not float or not math.isfinite(v) or v < lo or v > hi or (open_lo and v == lo):
        bound = f"({lo}, {hi}]" if open_lo else f"[{lo}, {hi}]"
        raise SchemaError(f"{name}: {_show(v)} is not a finite number in {bound}")
    return v


def _name(name: str, v: object) -> str:
    if type(v) is not str or not v or len(v) > _NAME_MAX or not v.isprintable() or v.strip() != v:
        raise SchemaError(f"{name}: {_show(v)} is not a name")
    return v


_INT_ONLY = {int}


def _counts(name: str, v: object, n: int) -> tuple[int, ...]:
    if not isinstance(v, tuple | list):
        raise SchemaError(f"{name}: expected a list of {n} counts, got {type(v).__name__}")
    if len(v) != n:
        raise SchemaError(f"{name}: {len(v)} counts for {n} cells")
    # The common case in bulk (a release has ~50 cells; the aggregator reads thousands of them);
    # the cell-by-cell check only to name the bad one.
    if set(map(type, v)) <= _INT_ONLY and (not v or (min(v) >= 0 and max(v) <= MAX_COUNT)):
        return v if type(v) is tuple else tuple(v)
    return tuple(_int(f"{name}[{i}]", x) for i, x in enumerate(v))


_checked_names: dict[tuple[str, ...], tuple[str, ...]] = {}  # vocabularies seen valid (public, few)
_checked_edges: dict[tuple[float, ...], tuple[float, ...]] = {}


def _strict_keys(where: str, d: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    extra = set(d) - set(allowed)
    if extra:
        names = sorted(map(str, extra))
        shown = ", ".join(map(_show, names[:5])) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise SchemaError(f"{where}: unknown field(s) {shown} (schema {SCHEMA_VERSION})")
    missing = [k for k in allowed if k not in d]
    if missing:
        raise SchemaError(f"{where}: missing field(s) {missing}")


@dataclass(frozen=True, slots=True)
class PrivacyCost:
    """What a release cost and what is left, per task. ``variance`` is the variance the noise
    adds to each cell before suppression (the discrete Gaussian's is at most ``scale**2``; the
    discrete Laplace's is ``2 e^(-1/s) / (1 - e^(-1/s))^2``)."""

    mechanism: str
    scale: float
    variance: float
    rho: float  # zCDP cost of this release, from the OpenDP measurement's privacy map
    m: int
    delta: float
    epsilon: float  # per task at `delta`: the worst m consecutive releases, this one included
    epsilon_budget: float
    epsilon_left: float  # epsilon_budget - epsilon (>= 0: the ledger refuses a release over budget)
    # cells whose noisy value was below this were released as 0 (the completed counts and the
    # histogram are then scaled to one total, which may leave one of their cells under it)
    suppress_below: int

    FIELDS = (
        "mechanism", "scale", "variance", "rho", "m", "delta", "epsilon", "epsilon_budget", "epsilon_left",
        "suppress_below",
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.mechanism not in ("gaussian", "laplace"):
            raise SchemaError(f"cost.mechanism: {self.mechanism!r} is not gaussian or laplace")
        put = object.__setattr__  # frozen: floats normalised once, here
        put(self, "scale", _float("cost.scale", self.scale, open_lo=True))
        put(self, "variance", _float("cost.variance", self.variance, open_lo=True))
        put(self, "rho", _float("cost.rho", self.rho, open_lo=True))
        _int("cost.m", self.m, 1, 1000)
        put(self, "delta", _float("cost.delta", self.delta, hi=1.0, open_lo=True))
        if self.delta >= 1.0:
            raise SchemaError(f"cost.delta: {self.delta!r} is not under 1")
        put(self, "epsilon", _float("cost.epsilon", self.epsilon, open_lo=True))
        put(self, "epsilon_budget", _float("cost.epsilon_budget", self.epsilon_budget, open_lo=True))
        put(self, "epsilon_left", _float("cost.epsilon_left", self.epsilon_left))
        _int("cost.suppress_below", self.suppress_below)
        # What the numbers say must agree (the aggregation trusts the variance for every sd)
        if self.epsilon > self.epsilon_budget * (1 + 1e-9):
            raise SchemaError(f"cost.epsilon: {self.epsilon!r} over the budget {self.epsilon_budget!r}")
        if abs(self.epsilon_left - max(0.0, self.epsilon_budget - self.epsilon)) > 1e-9 * self.epsilon_budget:
            raise SchemaError(f"cost.epsilon_left: {self.epsilon_left!r} is not the budget minus epsilon")
        if self.mechanism == "gaussian":
            expected = self.scale * self.scale
        else:
            q = math.exp(-1.0 / self.scale)
            expected = 2.0 * q / (1.0 - q) ** 2
        if not math.isclose(self.variance, expected, rel_tol=1e-9):
            raise SchemaError(
                f"cost.variance: {self.variance!r} is not the {self.mechanism} variance at scale {self.scale!r}"
            )

    def to_record(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.FIELDS}

    @classmethod
    def from_record(cls, d: object) -> PrivacyCost:
        if not isinstance(d, Mapping):
            raise SchemaError(f"cost: expected a mapping, got {type(d).__name__}")
        _strict_keys("cost", d, cls.FIELDS)
        return cls(**{k: d[k] for k in cls.FIELDS})


@dataclass(frozen=True, slots=True)
class ReleasedSummary:
    """One node's privacy-filtered summary of one window (see the module docstring)."""

    schema: int
    node_id: str
    window: int
    window_s: float
    types: tuple[str, ...]
    submitted: tuple[int, ...]
    completed: tuple[int, ...]
    failed: tuple[int, ...]
    handed_off_in: tuple[int, ...]
    handed_off_out: tuple[int, ...]
    completion_edges_s: tuple[float, ...]
    completion_counts: tuple[int, ...]
    occupied_slots: int
    capacity_bucket: int
    cost: PrivacyCost

    FIELDS = (
        "schema", "node_id", "window", "window_s", "types", *COUNT_FIELDS, "completion_edges_s",
        "completion_counts", "occupied_slots", "capacity_bucket", "cost",
    )  # fmt: skip

    def __post_init__(self) -> None:
        # Normalise lists to tuples (frozen: through object.__setattr__) and check every field.
        if self.schema != SCHEMA_VERSION or type(self.schema) is not int:
            raise SchemaError(f"schema: {self.schema!r} is not version {SCHEMA_VERSION}")
        put = object.__setattr__
        _name("node_id", self.node_id)
        _int("window", self.window, 0, 2**62)
        put(self, "window_s", _float("window_s", self.window_s, hi=86400.0, open_lo=True))
        types = self._types(self.types)
        put(self, "types", types)
        for f in COUNT_FIELDS:
            put(self, f, _counts(f, getattr(self, f), len(types)))
        put(self, "completion_edges_s", self._edges(self.completion_edges_s))
        edges = self.completion_edges_s
        object.__setattr__(
            self, "completion_counts", _counts("completion_counts", self.completion_counts, len(edges) + 1)
        )
        _int("occupied_slots", self.occupied_slots)
        _int("capacity_bucket", self.capacity_bucket, 0, 2**31)
        if type(self.cost) is not PrivacyCost:
            raise SchemaError(f"cost: expected a PrivacyCost, got {type(self.cost).__name__}")

    @staticmethod
    def _types(types: object) -> tuple[str, ...]:
        if not isinstance(types, tuple | list) or not 2 <= len(types) <= MAX_TYPES:
            raise SchemaError(f"types: expected 2..{MAX_TYPES} names, got {_show(types)}")
        key = tuple(types)
        known = _checked_names.get(key) if all(type(t) is str for t in key) else None
        if known is not None:
            return known
        out = tuple(_name(f"types[{i}]", t) for i, t in enumerate(types))
        if len(set(out)) != len(out):
            raise SchemaError("types: a name twice")
        if out[-1] != "other":
            raise SchemaError("types: the last name must be 'other'")
        if len(_checked_names) < 64:
            _checked_names[out] = out
        return out

    @staticmethod
    def _edges(edges: object) -> tuple[float, ...]:
        if not isinstance(edges, tuple | list) or not 1 <= len(edges) < MAX_BINS:
            raise SchemaError(f"completion_edges_s: expected 1..{MAX_BINS - 1} edges")
        key = tuple(edges)
        known = _checked_edges.get(key) if all(type(e) is float for e in key) else None
        if known is not None:
            return known
        out = tuple(_float(f"completion_edges_s[{i}]", e, open_lo=True) for i, e in enumerate(edges))
        if any(b <= a for a, b in itertools.pairwise(out)):
            raise SchemaError("completion_edges_s: not strictly increasing")
        if len(_checked_edges) < 64:
            _checked_edges[out] = out
        return out

    # ------------------------------------------------------------------ wire forms

    def to_record(self) -> dict[str, Any]:
        """Plain ints, floats, strings and lists (JSON, Flower records)."""
        d: dict[str, Any] = {}
        for k in self.FIELDS:
            v = getattr(self, k)
            d[k] = v.to_record() if k == "cost" else (list(v) if isinstance(v, tuple) else v)
        return d

    @classmethod
    def from_record(cls, d: object) -> ReleasedSummary:
        """The summary in ``d``, checked field by field; :class:`SchemaError` on anything else."""
        if not isinstance(d, Mapping):
            raise SchemaError(f"expected a mapping, got {type(d).__name__}")
        _strict_keys("summary", d, cls.FIELDS)
        kw = {k: d[k] for k in cls.FIELDS}
        kw["cost"] = PrivacyCost.from_record(d["cost"])
        try:
            return cls(**kw)
        except TypeError as e:  # a field of the wrong kind that the checks did not name
            raise SchemaError(str(e)) from None

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_record())

    @classmethod
    def from_bytes(cls, raw: bytes) -> ReleasedSummary:
        try:
            d = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise SchemaError(f"not JSON: {e}") from None
        return cls.from_record(d)

    # ------------------------------------------------------------------ reading

    def counts(self, field: str) -> dict[str, int]:
        """One count field by type name."""
        if field not in COUNT_FIELDS:
            raise KeyError(field)
        return dict(zip(self.types, getattr(self, field), strict=True))

    def total(self, field: str) -> int:
        return sum(getattr(self, field))
