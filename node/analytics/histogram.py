"""Histograms of durations: mergeable, constant memory.

:class:`LogHistogram` buckets positive values by their logarithm (relative width ~2%, quantiles
within 1%), for a node's own latency figures. :class:`FixedBinHistogram` counts on **fixed
public bins**: edges from configuration, never from the data, so that the set of bins reveals
nothing by itself; the privacy step releases exactly these counts.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from node.errors import ValidationError

__all__ = ["DEFAULT_COMPLETION_EDGES_S", "FixedBinHistogram", "FixedBins", "LogHistogram"]

_log = math.log
_ceil = math.ceil

# Completion-time bins of the window summaries, in seconds: [0, 0.01), [0.01, 0.025), ...,
# [1000, inf). Roughly 1-2.5-5 steps per decade; 17 bins.
DEFAULT_COMPLETION_EDGES_S: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0,
)  # fmt: skip


class LogHistogram:
    """Counts of positive values in buckets of relative width ~2%: quantiles are within 1%."""

    __slots__ = ("_inv_log_gamma", "_log_gamma", "count", "counts", "max", "min", "total", "zeros")
    REL_ACCURACY = 0.01
    MIN_VALUE = 1e-6

    def __init__(self) -> None:
        gamma = (1 + self.REL_ACCURACY) / (1 - self.REL_ACCURACY)
        self._log_gamma = math.log(gamma)
        self._inv_log_gamma = 1.0 / self._log_gamma
        self.counts: dict[int, int] = {}
        self.zeros = 0
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        if value <= 1e-6:
            self.zeros += 1
            return
        i = _ceil(_log(value) * self._inv_log_gamma)
        counts = self.counts
        counts[i] = counts.get(i, 0) + 1

    def add_many(self, values: list[float]) -> None:
        if not values:
            return
        self.count += len(values)
        self.total += sum(values)
        lo, hi = min(values), max(values)
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        counts = self.counts
        inv = self._inv_log_gamma
        for v in values:
            if v <= 1e-6:
                self.zeros += 1
            else:
                i = _ceil(_log(v) * inv)
                counts[i] = counts.get(i, 0) + 1

    def merge(self, other: LogHistogram) -> None:
        for i, n in other.counts.items():
            self.counts[i] = self.counts.get(i, 0) + n
        self.zeros += other.zeros
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def quantile(self, q: float) -> float | None:
        if not self.count:
            return None
        rank = q * (self.count - 1)
        seen = self.zeros
        if rank < seen:
            return 0.0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen > rank:
                # bucket i holds (gamma^(i-1), gamma^i]; its midpoint estimate is within 1%
                v = 2 * math.exp(i * self._log_gamma) / (1 + math.exp(self._log_gamma))
                return min(max(v, self.min), self.max)
        return self.max

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.count,
            "sum": self.total,
            "min": None if self.count == 0 else self.min,
            "max": self.max,
            "zeros": self.zeros,
            "bins": {str(k): v for k, v in self.counts.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LogHistogram:
        h = cls()
        h.count = int(d["n"])
        h.total = float(d["sum"])
        h.min = math.inf if d.get("min") is None else float(d["min"])
        h.max = float(d["max"])
        h.zeros = int(d.get("zeros", 0))
        h.counts = {int(k): int(v) for k, v in d["bins"].items()}
        return h

    def summary(self) -> dict[str, float | None]:
        return {
            "count": self.count,
            "mean": self.mean,
            "p50": self.quantile(0.5),
            "p95": self.quantile(0.95),
            "p99": self.quantile(0.99),
            "max": self.max if self.count else None,
        }


@dataclass(frozen=True, slots=True)
class FixedBins:
    """Bin edges fixed in advance: bin 0 is ``[0, edges[0])``, bin ``i`` is
    ``[edges[i-1], edges[i])``, the last is ``[edges[-1], inf)``. Values below 0 go in bin 0."""

    edges: tuple[float, ...] = DEFAULT_COMPLETION_EDGES_S

    def __post_init__(self) -> None:
        e = self.edges
        if not isinstance(e, tuple) or not e:
            raise ValidationError("bins.edges", "must be a non-empty tuple of numbers")
        for a in e:
            if isinstance(a, bool) or not isinstance(a, int | float) or not math.isfinite(a) or a <= 0:
                raise ValidationError("bins.edges", f"{a!r} is not a positive finite number")
        if any(b <= a for a, b in itertools.pairwise(e)):
            raise ValidationError("bins.edges", f"{e!r} must be strictly increasing")

    def __len__(self) -> int:
        return len(self.edges) + 1

    def index(self, value: float) -> int:
        return bisect.bisect_right(self.edges, value)

    def bounds(self, i: int) -> tuple[float, float]:
        """``(low, high)`` of bin ``i`` (high is inf for the last one)."""
        e = self.edges
        return (0.0 if i == 0 else e[i - 1]), (math.inf if i == len(e) else e[i])


class FixedBinHistogram:
    """Counts of values on :class:`FixedBins`. Two histograms merge only if their bins are equal."""

    __slots__ = ("bins", "counts")

    def __init__(self, bins: FixedBins | None = None, counts: Sequence[int] | None = None):
        self.bins = bins or FixedBins()
        n = len(self.bins)
        if counts is None:
            self.counts = [0] * n
        else:
            if len(counts) != n:
                raise ValidationError("counts", f"{len(counts)} counts for {n} bins")
            self.counts = list(counts)

    @property
    def count(self) -> int:
        return sum(self.counts)

    def add(self, value: float) -> None:
        self.counts[bisect.bisect_right(self.bins.edges, value)] += 1

    def add_many(self, values: Iterable[float]) -> None:
        counts = self.counts
        edges = self.bins.edges
        right = bisect.bisect_right
        for v in values:
            counts[right(edges, v)] += 1

    def merge(self, other: FixedBinHistogram) -> None:
        if other.bins != self.bins:
            raise ValidationError("bins", "histograms on different bins cannot be merged")
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]

    def copy(self) -> FixedBinHistogram:
        return FixedBinHistogram(self.bins, self.counts)

    def quantile(self, q: float) -> float | None:
        """Interpolated within the bin (the open last bin answers its lower edge)."""
        total = self.count
        if not total:
            return None
        rank = q * total
        seen = 0
        for i, n in enumerate(self.counts):
            if n and seen + n >= rank:
                lo, hi = self.bins.bounds(i)
                if math.isinf(hi):
                    return lo
                return lo + (hi - lo) * max(0.0, rank - seen) / n
            seen += n
        return self.bins.edges[-1]

    def to_dict(self) -> dict[str, Any]:
        return {"edges": list(self.bins.edges), "counts": list(self.counts)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FixedBinHistogram:
        return cls(FixedBins(tuple(float(x) for x in d["edges"])), [int(x) for x in d["counts"]])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FixedBinHistogram) and other.bins == self.bins and other.counts == self.counts

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"FixedBinHistogram(counts={self.counts})"
