"""``fedcoord up``: a whole federation on this machine, with a live dashboard (see federation.up)."""

from __future__ import annotations

import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

__all__ = ["UP_HELP", "up"]

UP_HELP = """Start a whole federation on this machine and watch it: N nodes on embedded Redis, a Flower
SuperLink, one SuperNode per node, the federation's rounds, demo workers of unequal capacity and a
skewed demo workload (most tasks go to the first node), so that thresholds change and hand-offs
happen. Needs no configuration and no service.

A web dashboard (the federation view, linking each node's own view) is served on a loopback port
printed at start. The terminal view shows per node its queue, load, threshold, hand-offs in and out and the privacy
budget left; per round the participants, missing replies and the federation's load. Children
that die are restarted (a SuperLink on its database, with the run submitted again). Ctrl-C (or
--duration, or --rounds) stops everything and leaves no process behind; --json prints a final report.

Exit status: 0 done, 1 the federation could not start, 130 interrupted before it did."""


def _dashboard(snap: dict[str, Any]) -> Group:
    nodes = Table(
        title=f"nodes (up {snap['uptime_s']:.0f} s, {snap['submitted']:,} tasks submitted)",
        caption="leased: running / worker slots; thr: acceptance threshold; out, in: handed off, adopted; "
        "eps: privacy budget per task the next release leaves",
        expand=False,
    )
    if snap.get("dashboard"):
        nodes.title = f"{nodes.title}\ndashboard {snap['dashboard']}"
    # short headers: the table fits an 80-column terminal
    for col in ("node", "queue", "leased", "load", "thr", "out", "in", "done", "eps"):
        nodes.add_column(col, justify="right" if col != "node" else "left")
    for nid, n in snap["nodes"].items():
        if not n.get("up"):
            nodes.add_row(nid, "[red]down[/red]", "", "", "", "", "", "", "")
            continue
        left = n["budget_left"]
        nodes.add_row(
            nid,
            f"{n['queue']:,}",
            f"{n['leased']}/{n['slots']}",
            f"{n['load']:.2f}",
            f"{n['threshold']:.2f}",
            f"{n['handed_off_out']:,}",
            f"{n['handed_off_in']:,}",
            f"{n['completed']:,}",
            "-" if left is None else f"{left:.2f}",
        )
    r = snap["last_round"]
    rounds = Table(
        title=f"rounds: {snap['rounds']}"
        + (f" (first after {snap['first_round_s']} s)" if snap["first_round_s"] else "")
    )
    for col in ("round", "latency", "participants", "missing", "global load", "thresholds"):
        rounds.add_column(col)
    if r is not None:
        fl = r["federation_load"]
        rounds.add_row(
            str(r["round"]),
            f"{r['latency_s']:.1f} s",
            ", ".join(r["participants"]) or "-",
            ", ".join(r["missing"]) or "-",
            f"{fl['value']:.2f} +- {fl['sd']:.2f}",
            ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["thresholds"].items())) or "-",
        )
    parts: list[Any] = [nodes, rounds]
    if snap["restarts"]:
        parts.append(f"restarted: {snap['restarts']}")
    return Group(*parts)


def _line(snap: dict[str, Any]) -> str:
    """One plain progress line (off a terminal)."""
    parts = [f"{snap['uptime_s']:.0f}s rounds {snap['rounds']}"]
    for k, v in snap["nodes"].items():
        if v.get("up"):
            parts.append(
                f"{k}: load {v['load']:.2f} thr {v['threshold']:.2f} out {v['handed_off_out']} in {v['handed_off_in']}"
            )
        else:
            parts.append(f"{k}: down")
    r = snap["last_round"]
    if r is not None:
        parts.append(f"| global load {r['federation_load']['value']:.2f}")
    return " ".join(parts)


def up(
    *,
    nodes: Annotated[int, typer.Option("--nodes", "-n", min=1, max=32, help="How many nodes.")] = 3,
    duration: Annotated[
        float | None, typer.Option("--duration", min=1.0, help="Stop after this many seconds (default: Ctrl-C).")
    ] = None,
    rounds: Annotated[
        int | None,
        typer.Option(
            "--rounds", min=1, help="Stop once this many rounds have run (with --duration: whichever comes first)."
        ),
    ] = None,
    period_s: Annotated[
        float, typer.Option("--period-s", min=1.0, help="Seconds between the federation's rounds.")
    ] = 10.0,
    rate: Annotated[float, typer.Option("--rate", min=0.0, help="Demo tasks submitted per second, in all.")] = 40.0,
    policy: Annotated[
        str, typer.Option("--policy", help="The nodes' admission policy: adaptive, seed or local.")
    ] = "adaptive",
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            file_okay=False,
            help="Where everything lives (default: a temporary directory, removed). Kept when given: "
            "run again on it, the nodes resume their queues and privacy ledgers; Flower starts over.",
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print a final report as JSON on stdout (no live view).")
    ] = False,
    dashboard_listen: Annotated[
        str,
        typer.Option(
            help="The federation view (web page, linking each node's view) on host:port; '' for none "
            "[default: a free port on loopback, printed]. Loopback only: up runs without TLS.",
            envvar="FEDCOORD_FEDERATION_DASHBOARD_LISTEN",
        ),
    ] = "127.0.0.1:0",
) -> None:
    from federation.launch import FlowerError  # noqa: PLC0415
    from federation.up import Federation, UpConfig  # noqa: PLC0415

    if policy not in ("adaptive", "seed", "local"):
        raise typer.BadParameter(f"{policy!r} is not a policy (adaptive, seed, local)", param_hint="--policy")
    console = Console(stderr=True)
    root = data_dir or Path(tempfile.mkdtemp(prefix="fedcoord-up-"))
    fed = Federation(UpConfig(nodes=nodes, period_s=period_s, rate_per_s=rate, policy=policy), root)
    stopping = {"now": False}

    def on_signal(signum: int, frame: object) -> None:
        stopping["now"] = True

    old = signal.signal(signal.SIGTERM, on_signal)
    view = None
    t0 = time.monotonic()
    code = 0
    try:
        try:
            fed.start(progress=lambda text: console.print(f"[dim]{text}[/dim]") if not json_out else None)
        except (FlowerError, OSError, ValueError) as e:
            console.print(f"fedcoord up: the federation could not start: {e}")
            code = 1
            return
        if dashboard_listen:
            from fedcoord.cmd_dashboard import start_federation_view  # noqa: PLC0415

            try:
                view = start_federation_view(fed.status_file, dashboard_listen, node_links=fed.node_links)
                fed.dashboard_url = view.url
            except (OSError, ValueError) as e:  # (ValueError: off loopback, which needs TLS)
                console.print(f"fedcoord up: no federation view on {dashboard_listen}: {e}")
        if not json_out:
            console.print(f"[bold]federation up[/bold] in {root} (Ctrl-C stops it)")
            if view is not None:
                console.print(f"[bold]dashboard[/bold] {view.url}")
        live = None if json_out or not console.is_terminal else Live(console=console, refresh_per_second=1)
        if live is not None:
            live.start()
        try:
            while not stopping["now"] and (duration is None or time.monotonic() - t0 < duration):
                fed.supervise()
                snap = fed.snapshot()
                if rounds is not None and snap["rounds"] >= rounds:
                    break
                if live is not None:
                    live.update(_dashboard(snap))
                elif not json_out:
                    console.print(_line(snap))
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
        finally:
            if live is not None:
                live.stop()
        final = fed.snapshot()
        final["all_rounds"] = fed.rounds()
    except KeyboardInterrupt:
        code = 130
        return
    finally:
        if not json_out:
            console.print("[dim]stopping...[/dim]")
        if view is not None:
            view.stop_thread()
        fed.stop()
        signal.signal(signal.SIGTERM, old)
        if data_dir is None:
            shutil.rmtree(root, ignore_errors=True)
        if code:
            raise typer.Exit(code)
    if json_out:
        sys.stdout.write(json.dumps(final) + "\n")
    else:
        console.print(_dashboard(final))
        console.print(
            f"{final['rounds']} rounds; first after {final['first_round_s']} s; stopped, nothing left running"
        )
