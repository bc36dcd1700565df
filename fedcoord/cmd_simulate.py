"""``fedcoord simulate``: a federation on a virtual clock, on this machine, in seconds.

Each simulated node runs the real scheduling core; arrivals are Poisson (or bursty) at
``--load`` times each node's capacity, service exponential. The same ``--seed`` gives the same
result, byte for byte, but for how long it took (``wall_s``, ``events_per_s`` in ``--json``).
``--policy`` shares work between the nodes (hand-off through the real core and admission;
``seed`` and ``adaptive`` read the federation's privacy-filtered view, noised at ``--epsilon``).
``--engine flower`` runs the federation's rounds through Flower's simulation engine (the real
ServerApp and ClientApp, the nodes reached over gRPC): the same result as the event path of the
same config when every node answered every round (see :mod:`federation.sim.flower`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedcoord.sim_options import Difficulties, FailRate, MtbfS, MttrS, Skills, Types, TypeSkew, ints, workload

__all__ = ["SIMULATE_HELP", "simulate"]

SIMULATE_HELP = (
    "Simulate a federation on a virtual clock: N nodes, each the real scheduling core, Poisson "
    "arrivals (in bursts with --burst-factor), exponential service, work shared by --policy "
    "(none, random, seed, adaptive, oracle) with the federation's view noised at --epsilon. Prints "
    "sojourn times (p50, p99), waiting, utilization and the hand-off figures; "
    "--json for the whole result. The same --seed gives the same result.\n\n"
    "--engine flower runs the rounds through Flower's simulation engine (the real ServerApp and "
    "ClientApp, Ray actors, gRPC to the nodes): slower, for fidelity runs up to a few hundred "
    "nodes; it gives the event path's result for the same config (views a period late, as deployed).\n\n"
    "Example: fedcoord simulate --nodes 100 --slots 4,8,16 --spread 0.3 --policy adaptive --epsilon 1"
)


def simulate(
    *,
    nodes: Annotated[int, typer.Option("--nodes", "-n", help="Simulated nodes.")] = 10,
    slots: Annotated[str, typer.Option(help="Worker slots per node, cycled over the nodes (e.g. 4,8,16).")] = "8",
    load: Annotated[float, typer.Option(help="Offered load per node: arrival rate / capacity.")] = 0.9,
    service_mean_s: Annotated[float, typer.Option("--service-mean-s", help="Mean service time.")] = 10.0,
    duration_s: Annotated[float, typer.Option("--duration-s", help="Virtual seconds of arrivals.")] = 3600.0,
    warmup_s: Annotated[float, typer.Option("--warmup-s", help="Arrivals before this are not measured.")] = 0.0,
    burst_factor: Annotated[
        float, typer.Option("--burst-factor", help="Arrival rate in bursts / outside them (1: plain Poisson).")
    ] = 1.0,
    burst_share: Annotated[float, typer.Option("--burst-share", help="Share of the time in bursts.")] = 0.1,
    burst_mean_s: Annotated[float, typer.Option("--burst-mean-s", help="Mean length of a burst.")] = 60.0,
    spread: Annotated[
        float, typer.Option(help="Node loads spread over load x (1 +- spread), the federation's load kept.")
    ] = 0.0,
    policy: Annotated[str, typer.Option(help="How nodes share work: none, random, seed, adaptive, oracle.")] = "none",
    epsilon: Annotated[
        str, typer.Option(help="Epsilon per task of the federation's releases (none: no noise).")
    ] = "none",
    period_s: Annotated[float, typer.Option("--period-s", help="Aggregation period (= window) in seconds.")] = 20.0,
    net_delay_s: Annotated[float, typer.Option("--net-delay-s", help="One-way delay of a hand-off message.")] = 0.001,
    types: Types = 1,
    type_skew: TypeSkew = 0.0,
    difficulties: Difficulties = "1",
    skills: Skills = "10",
    fail_rate: FailRate = 0.0,
    mtbf_s: MtbfS = 0.0,
    mttr_s: MttrS = 60.0,
    seed: Annotated[int, typer.Option(help="Seed of the simulation's random streams.")] = 0,
    engine: Annotated[
        str,
        typer.Option(help="event: rounds in the simulator; flower: rounds through Flower's simulation engine."),
    ] = "event",
    validate: Annotated[bool, typer.Option("--validate", help="Check every core's invariants at the end.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="The result as JSON on stdout.")] = False,
    rounds_file: Annotated[
        Path | None,
        typer.Option(
            "--rounds-file",
            help="Write each round's merged view there, as a real aggregator's rounds.jsonl (needs --policy seed "
            "or adaptive and an --epsilon): `fedcoord dashboard --rounds-file` shows it.",
            show_default=False,
        ),
    ] = None,
) -> None:
    from federation.sim import SimConfig  # noqa: PLC0415
    from federation.sim import simulate as run_event  # noqa: PLC0415
    from node.errors import FedcoordError, ValidationError  # noqa: PLC0415

    if engine not in ("event", "flower"):
        raise typer.BadParameter(f"{engine!r}: event or flower", param_hint="--engine")

    try:
        eps = None if epsilon.strip().lower() in ("none", "off", "inf") else float(epsilon)
    except ValueError:
        raise typer.BadParameter(f"{epsilon!r} is not a number (or none)", param_hint="--epsilon") from None
    try:
        cfg = SimConfig(
            nodes=nodes, slots=ints(slots, "--slots"), load=load, service_mean_s=service_mean_s,
            duration_s=duration_s, warmup_s=warmup_s, seed=seed, validate=validate,
            burst_factor=burst_factor, burst_share=burst_share, burst_mean_s=burst_mean_s,
            spread=spread, policy=policy, epsilon=eps, period_s=period_s, net_delay_s=net_delay_s,
            **workload(
                types=types, type_skew=type_skew, difficulties=difficulties, skills=skills, fail_rate=fail_rate,
                mtbf_s=mtbf_s, mttr_s=mttr_s,
            ),
        )  # fmt: skip
        if engine == "flower":
            from federation.sim.flower import check_config, simulate_flower  # noqa: PLC0415

            check_config(cfg)
    except ValidationError as e:
        raise typer.BadParameter(str(e)) from None
    if rounds_file is not None and (engine != "event" or eps is None or policy not in ("seed", "adaptive")):
        raise typer.BadParameter(
            "the rounds are merged with noise only with --policy seed or adaptive, an --epsilon and --engine event",
            param_hint="--rounds-file",
        )
    writer = None
    if rounds_file is not None:
        from federation.sim.rounds_file import RoundsWriter  # noqa: PLC0415

        try:
            writer = RoundsWriter(rounds_file)
        except OSError as e:
            raise typer.BadParameter(f"{rounds_file}: {e.strerror}", param_hint="--rounds-file") from None
    run = run_event if engine == "event" else simulate_flower
    console = Console(stderr=True)
    if eps is not None and policy not in ("seed", "adaptive"):
        console.print(f"note: --policy {policy} reads no federation view: --epsilon {eps:g} changes nothing")
    with Progress(
        TextColumn("simulating"), BarColumn(), TextColumn("{task.completed:,.0f} of {task.total:,.0f} virtual s"),
        TimeElapsedColumn(), console=console, transient=True, disable=not console.is_terminal,
    ) as bar:  # fmt: skip
        job = bar.add_task("sim", total=duration_s)
        try:
            tick = lambda t: bar.update(job, completed=min(t, duration_s))  # noqa: E731
            res = run_event(cfg, progress=tick, on_view=writer) if writer is not None else run(cfg, progress=tick)
        except FedcoordError as e:
            console.print(f"[red]error:[/red] {e}")
            raise typer.Exit(1) from None
        finally:
            if writer is not None:
                writer.close()
    if writer is not None:
        console.print(f"{writer.written} rounds written to {rounds_file}")
    r = res.result
    if json_out:
        extra: dict[str, object] = {"wall_s": round(res.wall_s, 3), "events_per_s": round(res.events_per_s)}
        if res.engine is not None:
            extra["engine"] = res.engine
        sys.stdout.write(json.dumps({**r, **extra}))
        sys.stdout.write("\n")
        return
    t = Table(title=f"{nodes} nodes, load {load}, {r['tasks']:,} tasks, {r['virtual_s']:,.0f} virtual s")
    for col in ("", "mean", "p50", "p99", "max"):
        t.add_column(col, justify="right")
    for name in ("sojourn_s", "wait_s"):
        st = r[name]
        if st is not None:
            t.add_row(name.replace("_s", " (s)"), *(f"{st[k]:.2f}" for k in ("mean", "p50", "p99", "max")))
    out = Console()  # the result on stdout, the progress on stderr
    out.print(t)
    u = r["utilization"]
    out.print(
        f"utilization mean {u['mean']:.3f} (min {u['min']:.3f}, max {u['max']:.3f}); waited "
        f"{'n/a' if r['waited_share'] is None else format(r['waited_share'], '.1%')}; "
        f"{r['events']:,} events in {res.wall_s:.1f} s ({res.events_per_s:,.0f}/s)"
    )
    sh = r["sharing"]
    if sh is not None:
        herd = sh["herding"]
        priv = sh["privacy"]
        out.print(
            f"{policy}: handed off {sh['handed_off']:,} ({sh['handoff_rate']:.1%} of tasks) in {sh['offers']:,} "
            f"offers, {sh['reject_rate']:.1%} of offered tasks refused, bounces {sh['bounces']:,}, herding "
            f"{'n/a' if herd is None else format(herd['mean'], '.2f')}; imbalance (sd/mean of loads) "
            f"{r['imbalance']['cv_mean'] or 0:.3f}; privacy: "
            + (f"epsilon {priv['epsilon_spent_max']:.3g} spent of {priv['epsilon']:g}" if priv["noisy"] else "no noise")
        )
    wl = r["workload"]
    if wl is not None:
        by_type = ", ".join(
            f"{k} (d{t['difficulty']}) {'-' if t['p99'] is None else format(t['p99'], '.1f')}"
            for k, t in wl["by_type"].items()
        )
        util = ", ".join(f"skill {k} {u:.2f}" for k, u in wl["utilization_by_skill"].items())
        out.print(
            f"workload: failed for good {wl['failed']:,} ({wl['failed_rate']:.2%}), retried {wl['retried']:,}; "
            f"p99 sojourn by type: {by_type}; utilization by worker skill: {util}"
        )
    fails = r["failures"]
    if fails is not None:
        out.print(
            f"node failures: {fails['crashes']:,} crashes, down {fails['down_share']:.1%} of the time, "
            f"{fails['rejected']:,} arrivals refused ({fails['reject_rate']:.1%}), {fails['lost_leases']:,} running "
            f"tasks lost and run again, {fails['failed']:,} failed for good (every attempt lost)"
        )
    fl = r.get("flower")
    if fl is not None and res.engine is not None:
        lat = res.engine["round_latency_s"]
        out.print(
            f"flower: {fl['rounds']} rounds through Flower's simulation engine, {fl['missing']} node-rounds "
            f"without a summary, {fl['errors']} ClientApp errors"
            + ("" if lat is None else f"; round latency p50 {lat['p50']:.2f} s, max {lat['max']:.2f} s (wall)")
            + ("; the engine started on its second try" if res.engine.get("starts", 1) > 1 else "")
        )
        if fl["missing"] or fl["errors"]:
            out.print("  (not the event path's result: some rounds went without some nodes)")
