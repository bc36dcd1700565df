"""Per-window raw summaries: what a node did in each window of ``window_s`` seconds, by task type.

This is the input of the federation's privacy step (which comes later and is applied before
anything leaves the node): per task type the tasks submitted, completed, failed, cancelled,
handed off in and out, and the window's completion-time histogram on fixed public bins. Nothing
here is private-safe by itself.

Counts are kept as commits become durable (:meth:`Windows.record` runs after each commit, from
the counters and completion times the commit's encoding and analytics computed anyway; the
simulator calls it with a drained outbox alone), never by scanning tasks: reading a summary
copies a few counters per type. Windows are aligned to the node's clock (``start = now // window``); a
task counts in the window of the commit that finished it. The last ``keep`` closed windows are
kept, empty ones included.

With a privacy ``horizon`` of ``m`` windows each window also keeps **bounded** counts, the input
of the privacy pipeline (``federation.privacy``): a task counts there only in the windows
``[c, c + m - 1]``, ``c`` being the window of its creation (on the node that created it: adopted
tasks keep their creation time), and a task requeued in a window does not count an ending there
again; so one task changes one cell of a window's bounded counts at most once.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from node.analytics.histogram import FixedBinHistogram, FixedBins
from node.core.outbox import Outbox
from node.errors import ValidationError
from node.model import TaskStatus

__all__ = ["BoundedCounts", "TypeWindow", "WindowSummary", "Windows"]

_NS = 1_000_000_000
_COMPLETED = TaskStatus.COMPLETED
# slots of a type's counters
_SUBMITTED, _COMPLETED_I, _FAILED, _CANCELLED, _IN, _OUT = range(6)
# bounded counts: [submitted, completed, failed, handed off in, handed off out]
_BOUNDED_SLOT = {TaskStatus.COMPLETED: 1, TaskStatus.FAILED: 2, TaskStatus.HANDED_OFF: 4}
_SLOT_OF_STATUS_NAME = {
    TaskStatus.COMPLETED.value: _COMPLETED_I,
    TaskStatus.FAILED.value: _FAILED,
    TaskStatus.CANCELLED.value: _CANCELLED,
    TaskStatus.HANDED_OFF.value: _OUT,
}


def _from_outbox(out: Outbox) -> tuple[dict[str, int], list[float]]:
    """The per-type counters and completion times of an outbox's finished tasks (what the
    runtime gets from the encoder and the analytics)."""
    counters: dict[str, int] = {}
    times: list[float] = []
    for t in out.finished.values():
        key = f"type:{t.spec.type}:{t.status.value}"
        counters[key] = counters.get(key, 0) + 1
        if t.status is _COMPLETED:
            began = t.started_ns if t.started_ns is not None else t.claimed_ns
            if began is not None and t.finished_ns is not None:
                times.append((t.finished_ns - began) / _NS)
    return counters, times


@dataclass(frozen=True, slots=True)
class TypeWindow:
    """One task type in one window."""

    submitted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    handed_off_in: int = 0
    handed_off_out: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "submitted": self.submitted,
            "completed": self.completed,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "handed_off_in": self.handed_off_in,
            "handed_off_out": self.handed_off_out,
        }


@dataclass(frozen=True, slots=True)
class BoundedCounts:
    """A window's bounded counts (see the module docstring): by raw type (submitted, completed,
    failed, handed off in, handed off out), and the completion-time histogram. Private."""

    window: int  # window index: start_ns // window_ns
    counts: dict[str, tuple[int, int, int, int, int]]
    completion_counts: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class WindowSummary:
    """What one node did in ``[start_ns, end_ns)``, by task type (raw: before any privacy step).
    ``closed`` is False for the window still open (``end_ns`` is then when it was read)."""

    node_id: str
    start_ns: int
    end_ns: int
    closed: bool
    types: dict[str, TypeWindow]
    completion_s: FixedBinHistogram  # completion times (start or claim to finish) of the window's tasks
    bounded: BoundedCounts | None = None  # with a privacy horizon only

    @property
    def bins(self) -> FixedBins:
        return self.completion_s.bins

    def total(self, name: str) -> int:
        return sum(int(getattr(t, name)) for t in self.types.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "closed": self.closed,
            "types": {k: v.to_dict() for k, v in sorted(self.types.items())},
            "completion_edges_s": list(self.completion_s.bins.edges),
            "completion_s": list(self.completion_s.counts),
        }


class _Window:
    __slots__ = ("b_counts", "b_hist", "counts", "hist", "requeued", "start_ns")

    def __init__(self, start_ns: int, nbins: int):
        self.start_ns = start_ns
        self.counts: dict[str, list[int]] = {}  # type -> [submitted, completed, failed, cancelled, in, out]
        self.hist = [0] * nbins  # completion times per bin
        # bounded (privacy horizon): type -> [submitted, completed, failed, in, out], histogram
        self.b_counts: dict[str, list[int]] = {}
        self.b_hist = [0] * nbins
        self.requeued: set[str] = set()


class Windows:
    def __init__(
        self,
        node_id: str,
        now_ns: int,
        *,
        window_s: float = 20.0,
        bins: FixedBins | None = None,
        keep: int = 16,
        horizon: int | None = None,
    ):
        if not (isinstance(window_s, int | float) and window_s > 0):
            raise ValidationError("window_s", f"{window_s!r}", limit="> 0 seconds")
        if horizon is not None and (isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1):
            raise ValidationError("horizon", f"{horizon!r}", limit=">= 1 windows")
        self.horizon = horizon
        self.node_id = node_id
        self.window_ns = int(window_s * _NS)
        self.bins = bins or FixedBins()
        self._edges = self.bins.edges
        self._nbins = len(self.bins)
        self._closed: deque[WindowSummary] = deque(maxlen=max(1, keep))
        self._open = _Window(self._start_of(now_ns), self._nbins)

    def _start_of(self, now_ns: int) -> int:
        return (now_ns // self.window_ns) * self.window_ns

    def _roll(self, now_ns: int) -> _Window:
        w = self._open
        start = self._start_of(now_ns)
        if start > w.start_ns:
            end = w.start_ns + self.window_ns
            self._closed.append(self._summary(w, end, closed=True))
            # windows in between without any commit are closed empty (at most `keep` of them)
            first_empty = max(end, start - self._closed.maxlen * self.window_ns)  # type: ignore[operator]
            for s in range(first_empty, start, self.window_ns):
                self._closed.append(self._summary(_Window(s, self._nbins), s + self.window_ns, closed=True))
            w = self._open = _Window(start, self._nbins)
        return w

    @staticmethod
    def _type(w: _Window, ttype: str) -> list[int]:
        c = w.counts.get(ttype)
        if c is None:
            c = w.counts[ttype] = [0, 0, 0, 0, 0, 0]
        return c

    def record(
        self,
        out: Outbox,
        now_ns: int,
        *,
        counters: Mapping[str, int] | None = None,
        completion_times_s: Iterable[float] | None = None,
    ) -> None:
        """Count a durable commit. The runtime passes what it computed for the commit anyway: the
        counters it wrote (``type:<type>:<status>`` of finished tasks, see ``encode_batch``) and
        the completion times its analytics took; without them both are read off the outbox."""
        w = self._roll(now_ns)
        for ttype, n in out.submitted.items():
            self._type(w, ttype)[_SUBMITTED] += n
        for ttype, n in out.adopted.items():
            self._type(w, ttype)[_IN] += n
        if self.horizon is not None:
            self._record_bounded(w, out)
        if not out.finished:
            return
        if counters is None or completion_times_s is None:
            counters, completion_times_s = _from_outbox(out)
        by_name = _SLOT_OF_STATUS_NAME
        for key, n in counters.items():
            if key.startswith("type:"):
                ttype, _, status = key[5:].rpartition(":")
                slot = by_name.get(status)
                if slot is not None:
                    self._type(w, ttype)[slot] += n
        hist = w.hist
        edges = self._edges
        right = bisect.bisect_right
        for v in completion_times_s:
            hist[right(edges, v)] += 1

    def horizon_ns(self, window: int) -> tuple[int, int]:
        """``[lo, hi)``: the creation times of the tasks that may count in window ``window``."""
        m = self.horizon or 1
        return (window - m + 1) * self.window_ns, (window + 1) * self.window_ns

    def _record_bounded(self, w: _Window, out: Outbox) -> None:
        lo, hi = self.horizon_ns(w.start_ns // self.window_ns)
        counts = w.b_counts
        for created, fresh in out.submitted_at:
            if lo <= created < hi:
                for ttype, n in fresh.items():
                    c = counts.get(ttype) or counts.setdefault(ttype, [0, 0, 0, 0, 0])
                    c[0] += n
        for created, ttype in out.adopted_at:
            if lo <= created < hi:
                c = counts.get(ttype) or counts.setdefault(ttype, [0, 0, 0, 0, 0])
                c[3] += 1
        requeued = w.requeued
        if out.requeued:
            requeued.update(out.requeued)
        if not out.finished:
            return
        hist = w.b_hist
        edges = self._edges
        right = bisect.bisect_right
        for t in out.finished.values():
            created = t.created_ns
            if not lo <= created < hi or (requeued and t.id in requeued):
                continue
            slot = _BOUNDED_SLOT.get(t.status)
            if slot is None:  # cancelled: not released
                continue
            c = counts.get(t.spec.type) or counts.setdefault(t.spec.type, [0, 0, 0, 0, 0])
            c[slot] += 1
            if slot == 1:
                began = t.started_ns if t.started_ns is not None else t.claimed_ns
                if began is not None and t.finished_ns is not None:
                    hist[right(edges, (t.finished_ns - began) / _NS)] += 1

    def _summary(self, w: _Window, end_ns: int, *, closed: bool) -> WindowSummary:
        types = {ttype: TypeWindow(*c) for ttype, c in w.counts.items()}
        bounded = None
        if self.horizon is not None:
            b = {ttype: (c[0], c[1], c[2], c[3], c[4]) for ttype, c in w.b_counts.items()}
            bounded = BoundedCounts(w.start_ns // self.window_ns, b, tuple(w.b_hist))
        hist = FixedBinHistogram(self.bins, w.hist)
        return WindowSummary(self.node_id, w.start_ns, end_ns, closed, types, hist, bounded)

    def current(self, now_ns: int) -> WindowSummary:
        """The window still open, so far."""
        return self._summary(self._roll(now_ns), now_ns, closed=False)

    def last_closed(self, now_ns: int) -> WindowSummary | None:
        """The most recent complete window (None before the first one ended)."""
        self._roll(now_ns)
        return self._closed[-1] if self._closed else None

    def closed(self, now_ns: int) -> list[WindowSummary]:
        """The closed windows kept, oldest first."""
        self._roll(now_ns)
        return list(self._closed)
