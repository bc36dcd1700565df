"""Node analytics: counts, latency quantiles, throughput, utilization, error rate, per-minute
history (24 h) and seed 001's final performance report.

Fed only with what is durable (the runtime calls :meth:`Analytics.record` after each flush), so
the numbers never include work that a store failure took back. Quantiles come from a
log-bucketed histogram (1% relative error, mergeable, constant memory).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from node.analytics.histogram import LogHistogram
from node.core.load import Load
from node.core.outbox import Outbox
from node.core.workers import ScalingAdvice, WorkerInfo
from node.model import TaskStatus

__all__ = ["Analytics", "MinuteRow", "NodeStats", "PerformanceReport", "error_kind"]

_NS = 1e9
HISTORY_MINUTES = 24 * 60
_COMPLETED = TaskStatus.COMPLETED
_FAILED = TaskStatus.FAILED


def error_kind(error: str | None) -> str:
    """A coarse class of a failure reason, for error counts."""
    if not error:
        return "unknown"
    e = error.lower()
    if e.startswith("timed out"):
        return "timeout"
    if "missed heartbeats" in e or "deregistered" in e or "is gone" in e:
        return "worker_lost"
    if e.startswith("dependency"):
        return "dependency"
    if e == "cancelled":
        return "cancelled"
    return "task_error"


@dataclass(slots=True)
class MinuteRow:
    """One minute of activity; also the record kept in the store's history (24 h)."""

    minute_ms: int
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    retried: int = 0
    timed_out: int = 0
    completion_s: LogHistogram = field(default_factory=LogHistogram)
    queue_wait_s: LogHistogram = field(default_factory=LogHistogram)
    # The acceptance threshold and the load ratio as last sampled in the minute (each tick), and
    # the highest load ratio sampled: the node's own threshold history. None: not sampled.
    threshold: float | None = None
    load_ratio: float | None = None
    load_ratio_max: float | None = None

    def to_json(self) -> bytes:
        d: dict[str, Any] = {
            k: getattr(self, k)
            for k in ("minute_ms", "submitted", "completed", "failed", "cancelled", "retried", "timed_out")
        }
        d["completion_s"] = self.completion_s.to_dict()
        d["queue_wait_s"] = self.queue_wait_s.to_dict()
        for k in ("threshold", "load_ratio", "load_ratio_max"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        return orjson.dumps(d)

    @classmethod
    def from_json(cls, raw: bytes) -> MinuteRow:
        d = orjson.loads(raw)
        return cls(
            minute_ms=int(d["minute_ms"]),
            submitted=int(d["submitted"]),
            completed=int(d["completed"]),
            failed=int(d["failed"]),
            cancelled=int(d["cancelled"]),
            retried=int(d["retried"]),
            timed_out=int(d["timed_out"]),
            completion_s=LogHistogram.from_dict(d["completion_s"]),
            queue_wait_s=LogHistogram.from_dict(d["queue_wait_s"]),
            threshold=_opt_float(d.get("threshold")),
            load_ratio=_opt_float(d.get("load_ratio")),
            load_ratio_max=_opt_float(d.get("load_ratio_max")),
        )

    def summary(self) -> dict[str, Any]:
        return {
            "minute_ms": self.minute_ms,
            "submitted": self.submitted,
            "completed": self.completed,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "retried": self.retried,
            "timed_out": self.timed_out,
            "completion_p50_s": self.completion_s.quantile(0.5),
            "completion_p99_s": self.completion_s.quantile(0.99),
            "queue_wait_p50_s": self.queue_wait_s.quantile(0.5),
            "queue_wait_p99_s": self.queue_wait_s.quantile(0.99),
            "threshold": self.threshold,
            "load_ratio": self.load_ratio,
            "load_ratio_max": self.load_ratio_max,
        }


@dataclass(frozen=True, slots=True)
class NodeStats:
    node_id: str
    at_ns: int
    active_by_status: dict[str, int]
    active_by_priority: dict[str, int]
    active_by_type: dict[str, int]
    totals: dict[str, int]  # cumulative: submitted, completed, failed, cancelled, retried, timed_out, ...
    totals_by_type: dict[str, dict[str, int]]  # type -> terminal status -> count
    completion_s: dict[str, float | None]  # since this process started: count, mean, p50, p95, p99, max
    queue_wait_s: dict[str, float | None]
    throughput_per_hour: int  # completed in the last 60 minutes
    throughput_per_s_1m: float  # completed per second over the last 60 s (sliding)
    utilization: float  # leased / healthy slots (0 when no slot)
    error_rate: float  # failed / (completed + failed), last hour
    error_rate_total: float
    failures_by_kind: dict[str, int]
    workers: list[WorkerInfo]
    scaling: ScalingAdvice
    load: dict[str, float]  # leased, ready, delayed, pending, handing_off, slots, ratio (see Core.load)
    history: list[dict[str, Any]]  # the last 60 minutes, one row a minute, the current one last
    store: str
    state: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class PerformanceReport:
    """Seed 001's final report: completion times, per-worker statistics and error rates."""

    node_id: str
    tasks_finished: int
    completed: int
    failed: int
    cancelled: int
    avg_completion_s: float | None
    p50_completion_s: float | None
    p95_completion_s: float | None
    p99_completion_s: float | None
    avg_queue_wait_s: float | None
    p99_queue_wait_s: float | None
    error_rate: float
    errors_by_kind: dict[str, int]
    worker_stats: dict[str, dict[str, Any]]
    wall_s: float
    throughput_per_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Analytics:
    def __init__(self, node_id: str, started_ns: int):
        self.node_id = node_id
        self.started_ns = started_ns
        self.totals: Counter[str] = Counter()  # cumulative, as in the store's counters
        # Since this process started: closed minutes are folded in; the current one is added on read.
        self._completion_s = LogHistogram()
        self._queue_wait_s = LogHistogram()
        self.failures_by_kind: Counter[str] = Counter()
        self.minute = MinuteRow(minute_ms=_minute_of(started_ns))
        self.history: deque[MinuteRow] = deque(maxlen=HISTORY_MINUTES)
        self._unsaved: list[MinuteRow] = []  # closed minutes not yet written to the store
        self.finished_since_start = 0
        # Worker counters as they were when this process loaded them: the report subtracts them.
        self._worker_base: dict[str, tuple[int, int, int, float]] = {}

    def restore(
        self, counters: Mapping[str, int], history: Iterable[MinuteRow], workers: Iterable[WorkerInfo] = ()
    ) -> None:
        self.totals = Counter(counters)
        for w in workers:  # a reload after an outage keeps the baseline of the first load
            self._worker_base.setdefault(w.id, (w.completed, w.failed, w.timed_out, w.busy_s))
        self.history.clear()
        self.history.extend(r for r in history if r.minute_ms < self.minute.minute_ms)

    def record(self, out: Outbox, now_ns: int, counters: Mapping[str, int]) -> list[float]:
        """Count a durable flush. ``counters`` are the ones it wrote (see ``encode_batch``).
        Returns the completion times (s) of the tasks it completed (the window summaries take
        them too)."""
        self.roll(now_ns)
        m = self.minute
        self.totals.update(counters)
        m.submitted += counters.get("submitted", 0)
        m.retried += counters.get("retried", 0)
        m.timed_out += counters.get("timed_out", 0)
        m.completed += counters.get("completed", 0)
        m.failed += counters.get("failed", 0)
        m.cancelled += counters.get("cancelled", 0)
        if not out.finished:
            return []
        self.finished_since_start += len(out.finished)
        done: list[float] = []
        waits: list[float] = []
        for t in out.finished.values():
            st = t.status
            if st is _COMPLETED:
                began = t.started_ns if t.started_ns is not None else t.claimed_ns
                if began is not None and t.finished_ns is not None:
                    done.append((t.finished_ns - began) / _NS)
                if t.claimed_ns is not None and t.queued_ns is not None:
                    waits.append((t.claimed_ns - t.queued_ns) / _NS)
            elif st is _FAILED:
                self.failures_by_kind[error_kind(t.error)] += 1
        m.completion_s.add_many(done)
        m.queue_wait_s.add_many(waits)
        return done

    def sample(self, now_ns: int, threshold: float, load_ratio: float) -> None:
        """The threshold and load now, into the current minute (the last sample of a minute and
        its highest load are kept)."""
        self.roll(now_ns)
        m = self.minute
        m.threshold = threshold
        m.load_ratio = load_ratio
        if m.load_ratio_max is None or load_ratio > m.load_ratio_max:
            m.load_ratio_max = load_ratio

    def take_unsaved(self) -> list[MinuteRow]:
        """Minutes closed since the last call (by :meth:`roll`, whoever called it): the rows
        still to be written to the store's history."""
        rows, self._unsaved = self._unsaved, []
        return rows

    def keep_unsaved(self, rows: list[MinuteRow]) -> None:
        """Rows that could not be written: they go first in the next :meth:`take_unsaved`."""
        self._unsaved[:0] = rows

    def roll(self, now_ns: int) -> list[MinuteRow]:
        """Close the current minute if time moved past it; return the rows closed (they are
        also kept for :meth:`take_unsaved`)."""
        minute = _minute_of(now_ns)
        closed: list[MinuteRow] = []
        while self.minute.minute_ms < minute:
            closed.append(self.minute)
            self._unsaved.append(self.minute)
            self.history.append(self.minute)
            self._completion_s.merge(self.minute.completion_s)
            self._queue_wait_s.merge(self.minute.queue_wait_s)
            self.minute = MinuteRow(minute_ms=self.minute.minute_ms + 60_000)
            if minute - self.minute.minute_ms > 60_000 * HISTORY_MINUTES:
                self.minute = MinuteRow(minute_ms=minute)
        return closed

    @property
    def completion_s(self) -> LogHistogram:
        """Completion times (start to finish) of tasks completed since this process started."""
        h = LogHistogram()
        h.merge(self._completion_s)
        h.merge(self.minute.completion_s)
        return h

    @property
    def queue_wait_s(self) -> LogHistogram:
        """Queue waits (ready to claimed) of tasks completed since this process started."""
        h = LogHistogram()
        h.merge(self._queue_wait_s)
        h.merge(self.minute.queue_wait_s)
        return h

    def last_hour(self, now_ns: int) -> list[MinuteRow]:
        cutoff = _minute_of(now_ns) - 60 * 60_000
        return [r for r in self.history if r.minute_ms >= cutoff] + [self.minute]

    def stats(
        self,
        now_ns: int,
        *,
        by_status: Mapping[str, int],
        by_priority: Mapping[str, int],
        by_type: Mapping[str, int],
        workers: list[WorkerInfo],
        scaling: ScalingAdvice,
        load: Load,
        store: str,
        state: str,
    ) -> NodeStats:
        self.roll(now_ns)
        hour = self.last_hour(now_ns)
        done_h = sum(r.completed for r in hour)
        failed_h = sum(r.failed for r in hour)
        per_s = self._rate_last_minute(now_ns)
        completed_total = self.totals.get("completed", 0)
        failed_total = self.totals.get("failed", 0)
        slots = load.slots
        by_type_totals: dict[str, dict[str, int]] = {}
        for k, v in self.totals.items():
            if k.startswith("type:"):
                ttype, _, st = k[5:].rpartition(":")
                by_type_totals.setdefault(ttype, {})[st] = v
        return NodeStats(
            node_id=self.node_id,
            at_ns=now_ns,
            active_by_status=dict(by_status),
            active_by_priority=dict(by_priority),
            active_by_type=dict(by_type),
            totals={k: v for k, v in sorted(self.totals.items()) if not k.startswith("type:")},
            totals_by_type=by_type_totals,
            completion_s=self.completion_s.summary(),
            queue_wait_s=self.queue_wait_s.summary(),
            throughput_per_hour=done_h,
            throughput_per_s_1m=per_s,
            utilization=(load.leased / slots) if slots else 0.0,
            error_rate=failed_h / (done_h + failed_h) if done_h + failed_h else 0.0,
            error_rate_total=failed_total / (completed_total + failed_total) if completed_total + failed_total else 0.0,
            failures_by_kind=dict(self.failures_by_kind),
            workers=workers,
            scaling=scaling,
            load=dict(load._asdict()),
            history=self.history_rows(now_ns, 60),
            store=store,
            state=state,
        )

    def history_rows(self, now_ns: int, minutes: int) -> list[dict[str, Any]]:
        """The last ``minutes`` per-minute rows (up to 24 h), oldest first, the current one last."""
        self.roll(now_ns)
        minutes = max(1, min(int(minutes), HISTORY_MINUTES))
        cutoff = self.minute.minute_ms - (minutes - 1) * 60_000
        return [r.summary() for r in self.history if r.minute_ms >= cutoff] + [self.minute.summary()]

    def _rate_last_minute(self, now_ns: int) -> float:
        """Completions per second over the last 60 s (or since start, if that is shorter): the
        current minute plus the part of the previous one still inside the window."""
        window_s = min(60.0, (now_ns - self.started_ns) / _NS)
        if window_s < 1.0:
            return 0.0
        into_minute = min(1.0, max(0.0, (now_ns // 1_000_000 - self.minute.minute_ms) / 60_000))
        done = float(self.minute.completed)
        prev = self.history[-1] if self.history else None
        if prev is not None and prev.minute_ms == self.minute.minute_ms - 60_000:
            done += prev.completed * (1.0 - into_minute)
        return done / window_s

    def report(self, now_ns: int, workers: list[WorkerInfo]) -> PerformanceReport:
        """Everything since this process started (per-worker counts too; the success-rate and
        completion-time EMAs are the workers' current values)."""
        self.roll(now_ns)
        completion = self.completion_s
        wait = self.queue_wait_s
        done = completion.count
        failed = sum(self.failures_by_kind.values())
        cancelled = sum(r.cancelled for r in (*self.history, self.minute) if r.minute_ms >= _minute_of(self.started_ns))
        wall = max((now_ns - self.started_ns) / _NS, 1e-9)
        worker_stats: dict[str, dict[str, Any]] = {}
        for w in workers:
            c0, f0, t0, b0 = self._worker_base.get(w.id, (0, 0, 0, 0.0))
            w_done, w_failed = w.completed - c0, w.failed - f0
            worker_stats[w.id] = {
                "skill": w.skill,
                "completed_tasks": w_done,
                "failed_tasks": w_failed,
                "timed_out": w.timed_out - t0,
                "success_rate": w_done / (w_done + w_failed) if w_done + w_failed else None,
                "success_rate_ema": w.success_rate,
                "avg_completion_s_ema": w.avg_completion_s,
                "total_time_s": w.busy_s - b0,
                "healthy": w.healthy,
            }
        return PerformanceReport(
            node_id=self.node_id,
            tasks_finished=self.finished_since_start,
            completed=done,
            failed=failed,
            cancelled=cancelled,
            avg_completion_s=completion.mean,
            p50_completion_s=completion.quantile(0.5),
            p95_completion_s=completion.quantile(0.95),
            p99_completion_s=completion.quantile(0.99),
            avg_queue_wait_s=wait.mean,
            p99_queue_wait_s=wait.quantile(0.99),
            error_rate=failed / (done + failed) if done + failed else 0.0,
            errors_by_kind=dict(self.failures_by_kind),
            worker_stats=worker_stats,
            wall_s=wall,
            throughput_per_s=done / wall,
        )


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def _minute_of(ns: int) -> int:
    return (ns // 60_000_000_000) * 60_000
