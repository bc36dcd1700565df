"""``fedcoord privacy sweep``: which privacy setting and which threshold policy should a federation use?

Runs the simulator over a grid of epsilon (``none``: no noise) x policy x seed on this machine's
cores, and writes into ``--out``: ``results.csv`` (one row per cell), ``results.json`` (the
settings, the rows, means per policy and epsilon, the headline numbers), ``cells.jsonl`` (every
finished run, whole) and the plots ``privacy_utility.png``, ``handoff_rate.png``,
``imbalance.png``, ``budget.png``. Interrupted (Ctrl-C, a kill), it keeps the cells it finished:
the same command again runs only the rest.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from fedcoord.sim_options import Difficulties, FailRate, MtbfS, MttrS, Skills, Types, TypeSkew, ints, workload

__all__ = ["SWEEP_HELP", "sweep"]

SWEEP_HELP = (
    "Simulate the same federation over a grid of epsilon x policy x seed and write CSV, JSON and "
    "PNG plots (p99 sojourn against epsilon per policy, hand-off rate, imbalance, budget over time).\n\n"
    "Policies: none (no sharing), random, seed, adaptive (ours), oracle (exact, fresh loads: the bound). "
    "Cells run in parallel (--workers); an interrupted sweep resumes where it stopped.\n\n"
    "Example: fedcoord privacy sweep --out sweep --nodes 100 --duration-s 1800"
)


def _floats_or_none(text: str) -> tuple[float | None, ...]:
    out: list[float | None] = []
    for part in text.split(","):
        p = part.strip().lower()
        if p in ("none", "inf", "off"):
            out.append(None)
            continue
        try:
            v = float(p)
        except ValueError:
            raise typer.BadParameter(f"{part!r} is not a number (or none: no noise)", param_hint="--epsilons") from None
        if not v > 0:
            raise typer.BadParameter(f"{part!r}: epsilon must be positive (none: no noise)", param_hint="--epsilons")
        out.append(v)
    return tuple(out)


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def sweep(
    *,
    out: Annotated[Path, typer.Option("--out", help="Directory for the results (created; reused to resume).")] = Path(
        "sweep"
    ),
    epsilons: Annotated[
        str, typer.Option(help="Epsilon per task, comma-separated; none = no noise.")
    ] = "none,10,3,1,0.3,0.1",
    policies: Annotated[
        str, typer.Option(help="Comma-separated: none, random, seed, adaptive, oracle.")
    ] = "none,seed,adaptive,oracle",
    seeds: Annotated[str, typer.Option(help="Seeds, comma-separated.")] = "0,1,2",
    nodes: Annotated[int, typer.Option("--nodes", "-n", help="Simulated nodes.")] = 100,
    slots: Annotated[str, typer.Option(help="Worker slots per node, cycled over the nodes.")] = "4,8,16",
    load: Annotated[float, typer.Option(help="The federation's offered load (< 1).")] = 0.9,
    spread: Annotated[
        float, typer.Option(help="Node loads spread over load x (1 +- spread), the federation's load kept.")
    ] = 0.3,
    service_mean_s: Annotated[float, typer.Option("--service-mean-s", help="Mean service time.")] = 10.0,
    duration_s: Annotated[float, typer.Option("--duration-s", help="Virtual seconds of arrivals per cell.")] = 1800.0,
    warmup_s: Annotated[float, typer.Option("--warmup-s", help="Arrivals before this are not measured.")] = 300.0,
    period_s: Annotated[float, typer.Option("--period-s", help="Aggregation period (= window) in seconds.")] = 20.0,
    types: Types = 1,
    type_skew: TypeSkew = 0.0,
    difficulties: Difficulties = "1",
    skills: Skills = "10",
    fail_rate: FailRate = 0.0,
    mtbf_s: MtbfS = 0.0,
    mttr_s: MttrS = 60.0,
    workers: Annotated[int, typer.Option(help="Worker processes (default: one per core).")] = 0,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="Run the cells on this Ray cluster (ray://host:10001, or host:6379 inside it; "
            "'auto': the cluster this machine is in; 'local': a Ray started here). "
            "Needs pip install 'fedcoord[simulation]'.",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print results.json's summary on stdout.")] = False,
) -> None:
    from federation.sim import SimConfig  # noqa: PLC0415
    from federation.sim.plots import write_plots  # noqa: PLC0415
    from federation.sim.sweep import SweepConfig, SweepError, rows_of, run_sweep, summarize  # noqa: PLC0415
    from node.errors import ValidationError  # noqa: PLC0415

    try:
        base = SimConfig(
            nodes=nodes, slots=ints(slots, "--slots"), load=load, spread=spread, service_mean_s=service_mean_s,
            duration_s=duration_s, warmup_s=warmup_s, period_s=period_s,
            **workload(
                types=types, type_skew=type_skew, difficulties=difficulties, skills=skills, fail_rate=fail_rate,
                mtbf_s=mtbf_s, mttr_s=mttr_s,
            ),
        )  # fmt: skip
        cfg = SweepConfig(
            base=base,
            epsilons=_floats_or_none(epsilons),
            policies=tuple(p.strip() for p in policies.split(",")),
            seeds=ints(seeds, "--seeds"),
        )
    except ValidationError as e:
        raise typer.BadParameter(str(e)) from None
    n_workers = workers or min(256, os.cpu_count() or 1)
    console = Console(stderr=True)
    cells = cfg.cells()
    console.print(
        f"sweep: {len(cells)} runs ({len(cfg.epsilons)} epsilons x {len(cfg.policies)} policies x "
        f"{len(cfg.seeds)} seeds; policies that read no view run once per seed) on "
        + (f"Ray at {ray_address}" if ray_address else f"{n_workers} processes")
        + f", into {out}"
    )
    try:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), console=console, transient=False, disable=not console.is_terminal,
        ) as bar:  # fmt: skip
            job = bar.add_task("cells", total=len(cells))
            resumed = 0

            def on_cell(cell: Any, rec: dict[str, Any], was_done: bool) -> None:
                nonlocal resumed
                resumed += was_done
                eps = "none" if cell.epsilon is None else f"{cell.epsilon:g}"
                bar.update(job, advance=1, description=f"{cell.policy} eps {eps} seed {cell.seed}")
                if not console.is_terminal and not was_done:
                    console.print(f"  done {cell.policy} eps {eps} seed {cell.seed} ({rec.get('wall_s', 0):.1f} s)")

            records = run_sweep(cfg, out, workers=n_workers, ray_address=ray_address, on_cell=on_cell)
    except ValidationError as e:
        raise typer.BadParameter(str(e)) from None
    except SweepError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.print(f"interrupted: the finished cells are kept in {out}/cells.jsonl; the same command resumes")
        raise typer.Exit(130) from None
    if resumed:
        console.print(f"{resumed} cells were finished before (resumed)")
    rows = rows_of(cfg, records)
    summary = summarize(cfg, rows)
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "results.json").write_text(
        json.dumps({"sweep": cfg.to_record(), "rows": rows, "summary": summary}, indent=1) + "\n"
    )
    plots = write_plots(cfg, rows, records, out)
    if json_out:
        print(json.dumps(summary))
        return
    _print_summary(cfg, summary)
    con = Console()
    con.print(f"wrote {out / 'results.csv'}, {out / 'results.json'}, " + ", ".join(str(p) for p in plots))


def _print_summary(cfg: Any, summary: dict[str, Any]) -> None:
    t = Table(title="p99 sojourn (s), mean over seeds; in brackets: the cut against no sharing")
    t.add_column("policy")
    labels = ["none" if e is None else repr(float(e)) for e in cfg.epsilons]
    for e in cfg.epsilons:
        t.add_column("no noise" if e is None else f"eps {e:g}", justify="right")
    for policy in cfg.policies:
        cells = []
        for label in labels:
            h = summary["headline"].get(policy, {}).get(label, {})
            p99 = (summary["by_policy"].get(policy, {}).get(label) or {}).get("sojourn_p99_s")
            cut = h.get("cut_vs_none")
            cells.append(_fmt(p99, ".1f") + ("" if cut is None else f" ({cut:+.0%})"))
        t.add_row(policy, *cells)
    Console().print(t)
