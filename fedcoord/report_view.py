"""The final performance report of ``fedcoord demo`` as rich tables (seed 001's report, plus
what the demo checked)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from fedcoord.demo_view import fmt_s, scaling_text

if TYPE_CHECKING:
    from fedcoord.demo import DemoResult

__all__ = ["render_result"]


def render_result(console: Console, result: DemoResult) -> None:
    r = result.report
    s = result.stats
    t = result.run_totals
    console.print()
    summary = Table(title=f"performance report - node {r.node_id}", title_style="bold", show_header=False)
    summary.add_column(style="dim")
    summary.add_column(justify="right")
    rows = [
        ("tasks finished", str(r.tasks_finished)),
        ("completed / failed / cancelled", f"{r.completed} / {r.failed} / {r.cancelled}"),
        ("completion time avg", fmt_s(r.avg_completion_s)),
        ("completion time p50 / p95 / p99", " / ".join(fmt_s(v) for v in (r.p50_completion_s, r.p95_completion_s,
                                                                           r.p99_completion_s))),
        ("queue wait avg / p99", f"{fmt_s(r.avg_queue_wait_s)} / {fmt_s(r.p99_queue_wait_s)}"),
        ("error rate", f"{r.error_rate:.1%}"),
        ("throughput", f"{r.throughput_per_s:.1f} tasks/s over {r.wall_s:.1f} s"),
        ("retried attempts / timeouts / workers lost",
         f"{t.get('retried', 0)} / {t.get('timed_out', 0)} / {t.get('workers_lost', 0)}"),
        ("submitted (unique) / duplicate submits deduplicated",
         f"{result.submitted_unique} / {result.dedup_hits} of {result.duplicate_submits}"),
        ("cancel requests (too late)", f"{result.cancel_requests} ({result.cancel_too_late})"),
        ("scaling advice at the end", scaling_text(s.scaling)),
    ]  # fmt: skip
    if result.submit_retries:
        rows.append(("submits retried (dependency finished meanwhile)", str(result.submit_retries)))
    for k, v in rows:
        summary.add_row(k, v)
    console.print(summary)

    workers = Table(title="per-worker statistics", title_style="bold", header_style="bold")
    for col in ("worker", "skill", "role", "healthy", "done", "failed", "timeouts", "success", "avg time",
                "busy", "revoked", "refused"):  # fmt: skip
        workers.add_column(col, justify="left" if col in ("worker", "role") else "right")
    for wid, ws in r.worker_stats.items():
        c = result.workers.get(wid)
        rate = ws.get("success_rate")
        workers.add_row(
            wid,
            str(ws.get("skill")),
            result.roles.get(wid, "-"),
            "yes" if ws.get("healthy") else "[red]no[/]",
            str(ws.get("completed_tasks")),
            str(ws.get("failed_tasks")),
            str(ws.get("timed_out")),
            "-" if rate is None else f"{rate:.0%}",
            fmt_s(ws.get("avg_completion_s_ema")),
            fmt_s(ws.get("total_time_s")),
            "-" if c is None else str(c.revoked),
            "-" if c is None else str(c.refused),
        )
    console.print(workers)
    console.print(
        "[dim]done = attempts completed; failed = attempts reported failed or timed out; "
        "avg time = moving average (alpha 0.1); "
        "revoked = attempts the worker dropped when the node took the lease back; "
        "refused = late reports the node rejected (stale lease)[/]"
    )

    if r.errors_by_kind:
        errors = Table(title="failed tasks by kind", title_style="bold", header_style="bold")
        errors.add_column("kind")
        errors.add_column("tasks", justify="right")
        for kind, n in sorted(r.errors_by_kind.items(), key=lambda kv: -kv[1]):
            errors.add_row(kind, str(n))
        console.print(errors)

    console.print(f"data: {result.data_location}", highlight=False, soft_wrap=True)
    if result.ok:
        console.print(
            f"[green]all {result.submitted_unique} tasks accounted for[/] "
            f"({', '.join(f'{k} {v}' for k, v in sorted(result.outcome.items()))}) in {result.duration_s:.1f} s"
        )
        return
    for p in result.problems:
        console.print(f"[bold red]problem:[/] {p}", soft_wrap=True)
    for line in result.unfinished[:20]:
        console.print(f"  {line}", highlight=False, soft_wrap=True)
    if len(result.unfinished) > 20:
        console.print(f"  ... and {len(result.unfinished) - 20} more", highlight=False)
