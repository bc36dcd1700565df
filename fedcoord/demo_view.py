"""What ``fedcoord demo`` shows while it runs: a live rich display on a terminal, plain progress
lines otherwise (CI, pipes), nothing with ``--json``. The final report is in :mod:`fedcoord.report_view`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from fedcoord.demo_workers import WorkerCounters, WorkerPlan
from node import NodeStats, ScalingAdvice

__all__ = ["DemoView", "Header", "LiveView", "NullView", "PlainView", "Snapshot", "fmt_s", "scaling_text"]

ACTIVE_STATUSES = ("pending", "queued", "assigned", "in_progress")
PRIORITIES = ("critical", "high", "medium", "low")


@dataclass(frozen=True, slots=True)
class Header:
    node_id: str
    store: str
    data_location: str
    seed: int
    speed: float
    tasks: int
    roster: tuple[WorkerPlan, ...]
    heartbeat_timeout_s: float
    deadline_s: float
    preexisting_tasks: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    elapsed_s: float
    planned: int
    submitted: int
    finished: int
    outcome: Mapping[str, int]
    throughput_recent: float
    throughput_avg: float
    dedup_hits: int
    stats: NodeStats
    run_totals: Mapping[str, int]  # the node's cumulative counters (stats.totals) since the demo began
    roles: Mapping[str, str]
    counters: Mapping[str, WorkerCounters]


class DemoView(Protocol):
    @property
    def interval_s(self) -> float | None:
        """How often to call :meth:`update` (None: never)."""

    def start(self, header: Header) -> None: ...

    def update(self, snap: Snapshot) -> None: ...

    def stop(self) -> None: ...


def fmt_s(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    if v < 1.0:
        return f"{v * 1000:.0f}ms"
    return f"{v:.2f}s"


def scaling_text(a: ScalingAdvice) -> str:
    load = "inf" if not math.isfinite(a.load) else f"{a.load:.2f}"
    head = f"load {load} (target {a.target_load:.2f})"
    if a.action == "hold":
        return f"{head}: hold at {a.workers} workers"
    verb = "add" if a.delta > 0 else "remove"
    return f"{head}: {a.action} {a.workers} -> {a.recommended_workers} workers ({verb} {abs(a.delta)})"


def _describe(header: Header) -> list[str]:
    lines = [
        f"node {header.node_id} on {header.store}",
        f"data: {header.data_location}",
        f"{header.tasks} tasks, seed {header.seed}, speed {header.speed:g} s per difficulty unit, "
        f"heartbeat timeout {header.heartbeat_timeout_s:g} s, deadline {header.deadline_s:.0f} s",
        "workers: "
        + ", ".join(
            f"{p.id} (skill {p.skill}, x{p.concurrency}{', ' + '+'.join(p.capabilities) if p.capabilities else ''}"
            f"{', ' + p.role.value if p.role.value != 'steady' else ''})"
            for p in header.roster
        ),
    ]
    if header.preexisting_tasks:
        lines.append(f"note: {header.preexisting_tasks} active tasks from an earlier run are worked on too")
    return lines


class NullView:
    """``--json``: nothing while running."""

    @property
    def interval_s(self) -> float | None:
        return None

    def start(self, header: Header) -> None:
        pass

    def update(self, snap: Snapshot) -> None:
        pass

    def stop(self) -> None:
        pass


class PlainView:
    """A progress line every ``interval_s`` seconds, for logs and pipes."""

    def __init__(self, console: Console, interval_s: float = 2.0):
        self.console = console
        self._interval = interval_s

    @property
    def interval_s(self) -> float | None:
        return self._interval

    def start(self, header: Header) -> None:
        for line in _describe(header):
            self.console.print(line, highlight=False, soft_wrap=True)

    def update(self, snap: Snapshot) -> None:
        s = snap.stats
        active = s.active_by_status
        out = snap.outcome
        t = snap.run_totals
        line = (
            f"[{snap.elapsed_s:6.1f}s] {snap.finished}/{snap.planned} finished "
            f"(completed {out.get('completed', 0)}, failed {out.get('failed', 0)}, "
            f"cancelled {out.get('cancelled', 0)}) | "
            + " ".join(f"{k} {active.get(k, 0)}" for k in ACTIVE_STATUSES)
            + f" | {snap.throughput_recent:.1f} tasks/s"
            f" | retried {t.get('retried', 0)}, timed out {t.get('timed_out', 0)},"
            f" workers lost {t.get('workers_lost', 0)} | {scaling_text(s.scaling)}"
        )
        self.console.print(line, highlight=False, soft_wrap=True)

    def stop(self) -> None:
        pass


class LiveView:
    """A live rich display (terminal): progress, queues, workers, latency, scaling advice."""

    def __init__(self, console: Console, interval_s: float = 0.25):
        self.console = console
        self._interval = interval_s
        self._progress = Progress(
            TextColumn("[bold]tasks"),
            BarColumn(bar_width=None),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=console,
            expand=True,
        )
        self._bar = self._progress.add_task("tasks", total=None)
        self._header: Header | None = None
        self._live: Live | None = None

    @property
    def interval_s(self) -> float | None:
        return self._interval

    def start(self, header: Header) -> None:
        self._header = header
        self._progress.update(self._bar, total=header.tasks)
        self._live = Live(
            self._render(None), console=self.console, refresh_per_second=4, transient=False, redirect_stderr=True
        )
        self._live.start()

    def update(self, snap: Snapshot) -> None:
        self._progress.update(self._bar, completed=snap.finished, total=snap.planned)
        if self._live is not None:
            self._live.update(self._render(snap))

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    # ------------------------------------------------------------------ rendering

    def _render(self, snap: Snapshot | None) -> RenderableType:
        assert self._header is not None
        title = Text.from_markup("[bold cyan]fedcoord demo[/]")
        head = Text("\n".join(_describe(self._header)), style="dim")
        parts: list[RenderableType] = [head, self._progress]
        if snap is not None:
            parts.append(self._tables(snap))
            parts.append(_workers_table(snap))
            parts.append(Text.from_markup(f"[bold]scaling advice[/]  {scaling_text(snap.stats.scaling)}"))
        return Panel(Group(*parts), title=title, border_style="cyan")

    @staticmethod
    def _tables(snap: Snapshot) -> Table:
        s = snap.stats
        status = _kv_table("by status", [(k, str(s.active_by_status.get(k, 0))) for k in ACTIVE_STATUSES])
        prio = _kv_table("by priority", [(k, str(s.active_by_priority.get(k, 0))) for k in PRIORITIES])
        out = snap.outcome
        t = snap.run_totals
        done = _kv_table(
            "finished",
            [
                ("completed", str(out.get("completed", 0))),
                ("failed", str(out.get("failed", 0))),
                ("cancelled", str(out.get("cancelled", 0))),
                ("submitted", f"{snap.submitted}/{snap.planned}"),
                ("deduplicated", str(snap.dedup_hits)),
            ],
        )
        flow = _kv_table(
            "flow",
            [
                ("throughput", f"{snap.throughput_recent:.1f}/s (avg {snap.throughput_avg:.1f})"),
                ("queue wait", f"p50 {fmt_s(s.queue_wait_s.get('p50'))}  p99 {fmt_s(s.queue_wait_s.get('p99'))}"),
                ("completion", f"p50 {fmt_s(s.completion_s.get('p50'))}  p99 {fmt_s(s.completion_s.get('p99'))}"),
                ("retried", str(t.get("retried", 0))),
                ("timed out", str(t.get("timed_out", 0))),
                ("workers lost", str(t.get("workers_lost", 0))),
                ("utilization", f"{s.utilization:.0%}"),
            ],
        )
        grid = Table.grid(padding=(0, 2), expand=False)
        grid.add_row(status, prio, done, flow)
        return grid


def _kv_table(title: str, rows: list[tuple[str, str]]) -> Table:
    t = Table(title=title, title_style="bold", show_header=False, box=None, padding=(0, 1))
    t.add_column(style="dim")
    t.add_column(justify="right")
    for k, v in rows:
        t.add_row(k, v)
    return t


def _workers_table(snap: Snapshot) -> Table:
    t = Table(title="workers", title_style="bold", expand=False, header_style="bold")
    for col, justify in (
        ("worker", "left"),
        ("skill", "right"),
        ("caps", "left"),
        ("state", "left"),
        ("active", "right"),
        ("completed", "right"),
        ("failed", "right"),
        ("timed out", "right"),
        ("success", "right"),
    ):
        t.add_column(col, justify=justify)  # type: ignore[arg-type]
    for w in snap.stats.workers:
        role = snap.roles.get(w.id, "")
        state = role if w.healthy else f"[red]{role if role == 'crashed' else 'unhealthy'}[/]"
        done = w.completed + w.failed
        rate = f"{w.completed / done:.0%}" if done else "-"
        t.add_row(
            w.id,
            str(w.skill),
            ",".join(w.capabilities) or "-",
            state,
            f"{w.active}/{w.concurrency}",
            str(w.completed),
            str(w.failed),
            str(w.timed_out),
            rate,
        )
    return t
