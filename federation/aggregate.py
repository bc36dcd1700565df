"""The aggregation: many nodes' released summaries of one round merged into one :class:`GlobalView`.

Only released (noisy) numbers come in; every estimate goes out with the standard deviation the
privacy noise gives it. Each node's :class:`~federation.privacy.schema.PrivacyCost` says the
variance ``v_i`` its mechanism adds to *each* cell; that is public, so the view can say how sure
it is. The cells were post-processed after the noise (negative values clamped to 0, noisy values
below ``cost.suppress_below`` released as 0, then the completed counts and the histogram scaled
to one total, which can leave a cell of those two under the threshold); the aggregation still
takes ``v_i`` as the cell's variance. That is an approximation (clamping and suppression move
the mean a little and shrink the spread of small cells), chosen because the post-processed
variance depends on the true count, which nobody outside the node knows; for cells well above
the suppression threshold it is exact.

With ``n`` nodes, ``V = sum_i v_i``, window length ``w`` seconds, ``T`` public types and ``B``
histogram bins:

* rate of a type (``submitted_per_s``, ``throughput_per_s`` = completed, ``failed_per_s``):
  ``sum_i count_i / w``, sd ``sqrt(V) / w``. Every node's cell counts, zeros included: a zero
  was released through the same noise (or suppressed), so it is as uncertain as any other cell.
* ``handed_off_per_s``: ``handed_off_out`` summed over types and nodes, over ``w``; sd
  ``sqrt(T * V) / w`` (``T`` cells per node). Only the sending side is counted: a hand-off also
  shows as ``handed_off_in`` at the receiver, and summing both would count it twice.
* ``occupied``: ``sum_i occupied_slots_i``, sd ``sqrt(V)``. ``capacity``: the sum of the released
  capacity buckets (coarse but not noised: no sd). ``federation_load`` = occupied / capacity, sd
  ``sqrt(V) / capacity``; with capacity 0 the load is ``occupied`` itself (sd ``sqrt(V)``), as a
  node with no healthy slot reads its own load.
* per node (:class:`NodeEstimate`): the same three with that node's ``v_i`` alone.
* ``completed_in_histogram``: the merged histogram's total ``N``, sd ``sqrt(B * V)``.
* completion quantile ``q``: rank ``r = q * N`` on the merged cumulative counts, linear
  interpolation inside the bin holding it (bin 0 is ``[0, e_0)``; the last bin is
  ``[e_last, inf)`` and anything in it reads ``e_last``). Its interval ``[low, high]`` is the
  value at rank ``r -/+ 2 s``, ``s = sqrt((k + 1) * V)`` the sd of the cumulative count through
  the quantile's bin ``k`` (``k + 1`` bins of ``n`` nodes), the ranks clamped to ``[0, N]`` so
  the interval stays inside the bins that hold data. With ``N == 0`` there are no quantiles.

Sums are taken in float64 over the summaries sorted by node id: exact while a total stays below
2**53 (a count is at most 2**53), never overflowing, and the same view, bit for bit, whatever
order the summaries arrived in.

:class:`Aggregator` is the strict path (``add`` raises and changes nothing on a bad item);
:func:`aggregate` the lenient one (a bad item is logged, listed in ``dropped`` and left out).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Iterable, Mapping
from operator import attrgetter
from typing import Any

import numpy as np
import orjson

from federation.privacy.config import PrivacyConfig
from federation.privacy.schema import COUNT_FIELDS, ReleasedSummary, SchemaError
from federation.view import Estimate, GlobalView, NodeEstimate, QuantileEstimate
from node.errors import ValidationError

__all__ = ["DEFAULT_QUANTILES", "Aggregator", "IncompatibleSummaryError", "aggregate"]

log = logging.getLogger("fedcoord.aggregate")

DEFAULT_QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.99)
_REASON_MAX = 240  # a refused record's reason may quote its bad value: keep log lines and views small
_NAME_MAX = 128  # as the schema's names

# Everything view() reads from a summary, fetched in C (attrgetter) rather than per field in Python.
_CELLS = attrgetter(*COUNT_FIELDS, "completion_counts")
_OCCUPIED = attrgetter("occupied_slots")
_CAPACITY = attrgetter("capacity_bucket")
_WINDOW = attrgetter("window")
_VARIANCE = attrgetter("cost.variance")
_NODE_ID = attrgetter("node_id")


class IncompatibleSummaryError(SchemaError):
    """A valid summary that cannot be merged with the others of the round: another vocabulary,
    other histogram bins, another window length, or a node that already sent one. A subclass of
    :class:`SchemaError` so that a caller refusing bad summaries catches both."""

    def __reduce__(self) -> tuple[Any, ...]:  # rebuilt from the reason, not from the full message
        return type(self), (self.reason,)


def _short(v: object) -> str:
    text = str(v)
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 3] + "..."


def _parse(item: object) -> ReleasedSummary:
    """``item`` as a checked summary; :class:`SchemaError` if it is not one."""
    if isinstance(item, ReleasedSummary):
        return item  # checked when it was built (frozen)
    try:
        if isinstance(item, bytes | bytearray | memoryview):
            return ReleasedSummary.from_bytes(bytes(item))
        return ReleasedSummary.from_record(item)
    except OverflowError as e:  # an int too large for a float field (schema's _float does float(v))
        raise SchemaError(f"a number out of range: {e}") from None


def _node_hint(item: object) -> str:
    """The node id a refused item claims, for the log and ``dropped``; ``?`` if it has none that
    reads as a name (a malformed record may carry anything there, newlines included)."""
    nid: object = None
    if isinstance(item, ReleasedSummary):
        nid = item.node_id
    elif isinstance(item, Mapping):
        nid = item.get("node_id")
    elif isinstance(item, bytes | bytearray | memoryview):
        try:
            d = orjson.loads(bytes(item))
        except orjson.JSONDecodeError:
            d = None
        nid = d.get("node_id") if isinstance(d, dict) else None
    if type(nid) is str and 0 < len(nid) <= _NAME_MAX and nid.isprintable():
        return nid
    return "?"


def _check_quantiles(quantiles: Iterable[float]) -> tuple[float, ...]:
    out = tuple(quantiles)
    for q in out:
        if isinstance(q, bool) or not isinstance(q, int | float) or not 0.0 < q <= 1.0:
            raise ValidationError("aggregate.quantiles", f"{q!r} is not a quantile", limit="0 < q <= 1")
    return tuple(float(q) for q in out)


def _check_reference(
    types: tuple[str, ...] | None, edges: tuple[float, ...] | None, window_s: float | None
) -> tuple[tuple[str, ...] | None, tuple[float, ...] | None, float | None]:
    """The configured reference, normalised as a summary carries it (tuples, floats). A wrong one
    would refuse every summary of the round, so it is refused here, at once."""
    if types is not None:
        types = tuple(types)
        if len(types) < 2 or types[-1] != "other" or len(set(types)) != len(types):
            raise ValidationError("aggregate.types", f"{types!r:.120}", limit="distinct names ending with 'other'")
    if edges is not None:
        edges = tuple(edges)
        if (
            not edges
            or any(isinstance(e, bool) or not isinstance(e, int | float) or not 0 < e < math.inf for e in edges)
            or any(b <= a for a, b in itertools.pairwise(edges))
        ):
            raise ValidationError("aggregate.completion_edges_s", f"{edges!r:.120}", limit="positive, increasing")
        edges = tuple(float(e) for e in edges)
    if window_s is not None:
        if isinstance(window_s, bool) or not isinstance(window_s, int | float) or not 0 < window_s < math.inf:
            raise ValidationError("aggregate.window_s", f"{window_s!r}", limit="> 0, finite")
        window_s = float(window_s)
    return types, edges, window_s


class Aggregator:
    """Collects one round's summaries and merges them into a :class:`GlobalView`.

    The reference the summaries must match (vocabulary, histogram bins, window length) is what
    the constructor was given, or, for any left as None, what the first accepted summary carries.
    :meth:`add` is strict: a bad or incompatible item raises and the aggregator is exactly as
    before. :meth:`offer` is lenient: the item is dropped, logged and listed in :attr:`dropped`.
    """

    def __init__(
        self,
        *,
        types: tuple[str, ...] | None = None,
        completion_edges_s: tuple[float, ...] | None = None,
        window_s: float | None = None,
        quantiles: Iterable[float] = DEFAULT_QUANTILES,
    ):
        self._types, self._edges, self._window_s = _check_reference(types, completion_edges_s, window_s)
        self._quantiles = _check_quantiles(quantiles)
        self._summaries: list[ReleasedSummary] = []
        self._ids: set[str] = set()
        self._dropped: list[tuple[str, str]] = []

    @classmethod
    def for_config(
        cls, config: PrivacyConfig, *, window_s: float | None = None, quantiles: Iterable[float] = DEFAULT_QUANTILES
    ) -> Aggregator:
        """An aggregator expecting the vocabulary and bins of ``config`` (the federation's)."""
        return cls(
            types=config.types, completion_edges_s=config.completion_edges_s, window_s=window_s, quantiles=quantiles
        )

    # ------------------------------------------------------------------ collecting

    @property
    def dropped(self) -> tuple[tuple[str, str], ...]:
        """(node id or ``?``, reason) of every item :meth:`offer` refused this round."""
        return tuple(self._dropped)

    @property
    def participants(self) -> tuple[str, ...]:
        return tuple(sorted(self._ids))

    def __len__(self) -> int:
        return len(self._summaries)

    def add(self, item: object) -> ReleasedSummary:
        """Take ``item`` (a :class:`ReleasedSummary`, its ``to_record()`` mapping or its
        ``to_bytes()``) into the round and return it as a summary.

        Raises :class:`SchemaError` if it is not a valid summary and
        :class:`IncompatibleSummaryError` if it does not match the reference or its node already
        sent one this round; either way nothing changed. (``item`` is typed ``object``: anything
        a peer sends may arrive here, and what is not a summary is refused, not a crash.)
        """
        s = item if type(item) is ReleasedSummary else _parse(item)
        # Compared before anything is stored, so a refusal leaves no trace.
        # (identity first: the schema hands out one tuple per vocabulary and bins it has seen)
        if self._types is not None and s.types is not self._types and s.types != self._types:
            raise IncompatibleSummaryError(f"types {_short(s.types)} are not the federation's {_short(self._types)}")
        if self._edges is not None and s.completion_edges_s is not self._edges and s.completion_edges_s != self._edges:
            raise IncompatibleSummaryError(
                f"completion_edges_s {_short(s.completion_edges_s)} are not the federation's {_short(self._edges)}"
            )
        if self._window_s is not None and s.window_s != self._window_s:
            raise IncompatibleSummaryError(f"window_s {s.window_s!r} is not the federation's {self._window_s!r}")
        if s.node_id in self._ids:
            raise IncompatibleSummaryError(f"node {s.node_id!r} already sent a summary this round")
        if self._types is None:
            self._types = s.types
        if self._edges is None:
            self._edges = s.completion_edges_s
        if self._window_s is None:
            self._window_s = float(s.window_s)
        self._summaries.append(s)
        self._ids.add(s.node_id)
        return s

    def offer(self, item: object) -> ReleasedSummary | None:
        """:meth:`add`, but a refused item is dropped: a WARNING on ``fedcoord.aggregate``
        naming the node (when the item names one) and the reason, and an entry in
        :attr:`dropped`. Returns the summary taken, or None."""
        try:
            return self.add(item)
        except SchemaError as e:
            node, reason = _node_hint(item), _short(e.reason)
            self._dropped.append((node, reason))
            log.warning("summary from node %s dropped: %s", node, reason)
            return None

    def _take_drops(self, other: Aggregator) -> Aggregator:
        """This aggregator with the drops ``other`` recorded (the lenient path's first pass)."""
        self._dropped.extend(other._dropped)
        return self

    def clear(self) -> None:
        """Start the next round: forget the summaries and drops, keep the reference (given or
        learned: the federation's vocabulary, bins and window length do not change per round)."""
        self._summaries.clear()
        self._ids.clear()
        self._dropped.clear()

    # ------------------------------------------------------------------ merging

    def view(self, *, round: int = 0, now_ns: int | None = None, expected: Iterable[str] = ()) -> GlobalView:
        """The merged view of the summaries taken so far (see the module docstring for the math).
        ``expected``: the nodes that should have sent one; those that sent nothing are ``missing``
        (a node whose summary was dropped did send: it is in ``dropped``, not in both)."""
        at_ns = time.time_ns() if now_ns is None else now_ns
        missing = tuple(sorted(set(expected) - self._ids - {node for node, _ in self._dropped}))
        dropped = tuple(self._dropped)
        types = self._types if self._types is not None else ()
        window_s = self._window_s if self._window_s is not None else 0.0
        if not self._summaries:
            return GlobalView(
                round=round,
                at_ns=at_ns,
                window=0,
                window_s=window_s,
                types=types,
                participants=(),
                dropped=dropped,
                missing=missing,
            )
        assert self._edges is not None  # set with the first summary taken
        # Sorted by node id: the float sums below then run in one order whatever the arrival order.
        ss = sorted(self._summaries, key=_NODE_ID)
        n, n_types, n_bins = len(ss), len(types), len(self._edges) + 1
        width = len(COUNT_FIELDS) * n_types + n_bins
        # One row per node: the five count fields then the histogram, built in one pass in C.
        cells = np.fromiter(
            itertools.chain.from_iterable(itertools.chain.from_iterable(map(_CELLS, ss))), np.int64, n * width
        ).reshape(n, width)
        totals = cells.sum(axis=0, dtype=np.float64)
        occupied = np.fromiter(map(_OCCUPIED, ss), np.float64, n)
        capacity = np.fromiter(map(_CAPACITY, ss), np.int64, n)
        variance = np.fromiter(map(_VARIANCE, ss), np.float64, n)
        var_sum = float(variance.sum())
        cell_sd = math.sqrt(var_sum)

        counts = totals[: len(COUNT_FIELDS) * n_types].reshape(len(COUNT_FIELDS), n_types) / window_s
        rate_sd = cell_sd / window_s
        by_field = {
            f: {t: Estimate(r, rate_sd) for t, r in zip(types, row, strict=True)}
            for f, row in zip(COUNT_FIELDS, counts.tolist(), strict=True)
        }
        handed_off = Estimate(
            float(counts[COUNT_FIELDS.index("handed_off_out")].sum()), math.sqrt(n_types * var_sum) / window_s
        )

        occ_total = float(occupied.sum())
        cap_total = int(capacity.sum())
        if cap_total > 0:
            fed_load = Estimate(occ_total / cap_total, cell_sd / cap_total)
        else:
            fed_load = Estimate(occ_total, cell_sd)

        hist = totals[len(COUNT_FIELDS) * n_types :]
        n_hist = float(hist.sum())
        return GlobalView(
            round=round,
            at_ns=at_ns,
            window=max(map(_WINDOW, ss)),
            window_s=window_s,
            types=types,
            participants=tuple(map(_NODE_ID, ss)),
            dropped=dropped,
            missing=missing,
            submitted_per_s=by_field["submitted"],
            throughput_per_s=by_field["completed"],
            failed_per_s=by_field["failed"],
            handed_off_per_s=handed_off,
            occupied=Estimate(occ_total, cell_sd),
            capacity=cap_total,
            federation_load=fed_load,
            completion_quantiles_s=_quantiles(hist, self._edges, self._quantiles, var_sum),
            completed_in_histogram=Estimate(n_hist, math.sqrt(n_bins * var_sum)),
            nodes=_nodes(ss, occupied, capacity, variance, cells=cells, n_types=n_types, window_s=window_s),
        )


def _nodes(
    ss: list[ReleasedSummary],
    occupied: np.ndarray[Any, Any],
    capacity: np.ndarray[Any, Any],
    variance: np.ndarray[Any, Any],
    *,
    cells: np.ndarray[Any, Any],
    n_types: int,
    window_s: float,
) -> dict[str, NodeEstimate]:
    """One :class:`NodeEstimate` per summary, the divisions done once over the arrays."""
    sd = np.sqrt(variance)
    has_slots = capacity > 0
    divisor = np.where(has_slots, capacity, 1).astype(np.float64)
    load = np.where(has_slots, occupied / divisor, occupied)
    load_sd = np.where(has_slots, sd / divisor, sd)
    per_s = 1.0 / window_s if window_s > 0 else 0.0
    out_at, in_at = COUNT_FIELDS.index("handed_off_out") * n_types, COUNT_FIELDS.index("handed_off_in") * n_types
    moved_out = (cells[:, out_at : out_at + n_types].sum(axis=1) * per_s).tolist()
    moved_in = (cells[:, in_at : in_at + n_types].sum(axis=1) * per_s).tolist()
    moved_sd = (np.sqrt(n_types * variance) * per_s).tolist()
    return {
        s.node_id: NodeEstimate(
            s.node_id, s.window, Estimate(o, d), c, Estimate(lo, ld), Estimate(mo, msd), Estimate(mi, msd)
        )
        for s, o, d, c, lo, ld, mo, mi, msd in zip(
            ss,
            occupied.tolist(),
            sd.tolist(),
            capacity.tolist(),
            load.tolist(),
            load_sd.tolist(),
            moved_out,
            moved_in,
            moved_sd,
            strict=True,
        )
    }


def _quantiles(
    hist: np.ndarray[Any, Any], edges: tuple[float, ...], qs: tuple[float, ...], var_sum: float
) -> tuple[QuantileEstimate, ...]:
    """The completion-time quantiles of the merged histogram ``hist`` (``len(edges) + 1`` bins)."""
    total = float(hist.sum())
    if total <= 0 or not qs:
        return ()
    cum = np.cumsum(hist)
    last = len(hist) - 1
    first_nonempty = int(np.flatnonzero(hist)[0])

    def bin_of(rank: float) -> int:
        # The first bin whose cumulative count reaches the rank; it holds data (cum[k-1] < rank).
        return first_nonempty if rank <= 0 else min(int(np.searchsorted(cum, rank, side="left")), last)

    def at(rank: float) -> float:
        k = bin_of(rank)
        if k == last:
            return edges[-1]  # the open bin [e_last, inf): all we know is "at least e_last"
        lo = 0.0 if k == 0 else edges[k - 1]
        before = 0.0 if k == 0 else float(cum[k - 1])
        frac = min(1.0, max(0.0, (rank - before) / float(hist[k])))
        return lo + frac * (edges[k] - lo)

    out = []
    for q in qs:
        rank = q * total
        spread = 2.0 * math.sqrt((bin_of(rank) + 1) * var_sum)
        out.append(QuantileEstimate(q, at(rank), at(max(0.0, rank - spread)), at(min(total, rank + spread))))
    return tuple(out)


def aggregate(
    items: Iterable[object],
    *,
    round: int = 0,
    now_ns: int | None = None,
    expected: Iterable[str] = (),
    types: tuple[str, ...] | None = None,
    completion_edges_s: tuple[float, ...] | None = None,
    window_s: float | None = None,
    quantiles: Iterable[float] = DEFAULT_QUANTILES,
) -> GlobalView:
    """The view of the good ``items`` (summaries, records or bytes, as :meth:`Aggregator.add`
    takes them). A bad one does not spoil the round: it is logged (WARNING), listed in
    ``view.dropped`` and left out, so the view is exactly that of the good items alone.

    The same items in any order give the same view: a reference left None (vocabulary, bins,
    window length) is the one most of the valid summaries share (ties: the smallest), and a node
    that sent different summaries in one round has all of them dropped (which one is real cannot
    be told here; the Flower round binds a summary to its sender)."""
    parsed: list[ReleasedSummary] = []
    agg = Aggregator(types=types, completion_edges_s=completion_edges_s, window_s=window_s, quantiles=quantiles)
    for item in items:
        try:
            parsed.append(item if type(item) is ReleasedSummary else _parse(item))
        except SchemaError:
            agg.offer(item)  # refused again there: logged and listed with its reason
    by_node: dict[str, list[ReleasedSummary]] = {}
    for sm in parsed:
        got = by_node.get(sm.node_id)
        if got is None:
            by_node[sm.node_id] = [sm]
        elif sm not in got:  # the same summary twice counts once
            got.append(sm)
    for node, versions in by_node.items():
        if len(versions) > 1:
            reason = f"node {node!r} sent {len(versions)} different summaries this round: all dropped"
            agg._dropped.append((_node_hint({"node_id": node}), reason))
            log.warning("summaries from node %s dropped: %s", _node_hint({"node_id": node}), reason)
    unique = [v[0] for v in by_node.values() if len(v) == 1]
    if unique and (types is None or completion_edges_s is None or window_s is None):
        # counted by object first (the schema hands out one tuple per vocabulary and bins seen),
        # then merged by value: hashing every summary's tuples would cost more than the merge
        by_id: dict[tuple[int, int, float], list[Any]] = {}
        for sm in unique:
            k = (id(sm.types), id(sm.completion_edges_s), sm.window_s)
            tally = by_id.get(k)
            if tally is None:
                by_id[k] = [(sm.types, sm.completion_edges_s, sm.window_s), 1]
            else:
                tally[1] += 1
        votes: dict[tuple[Any, ...], int] = {}
        for key, n in by_id.values():
            votes[key] = votes.get(key, 0) + n
        top_t, top_e, top_w = min(votes, key=lambda k: (-votes[k], repr(k)))
        agg = Aggregator(
            types=types or top_t,
            completion_edges_s=completion_edges_s or top_e,
            window_s=window_s or top_w,
            quantiles=quantiles,
        )._take_drops(agg)
    for sm in sorted(unique, key=attrgetter("node_id")):
        agg.offer(sm)
    return agg.view(round=round, now_ns=now_ns, expected=expected)
