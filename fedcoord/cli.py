"""The ``fedcoord`` command line. Only :func:`main` turns results into exit codes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.logging import RichHandler

from fedcoord.demo import DEFAULT_SPEED, DEFAULT_TASKS, DemoOptions, DemoResult, run_demo
from fedcoord.demo_view import DemoView, LiveView, NullView, PlainView
from fedcoord.report_view import render_result
from node import FedcoordError

__all__ = ["app", "main"]

EXIT_OK = 0
EXIT_FAILED = 1  # tasks lost or stuck, or the node could not run
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="fedcoord",
    help=(
        "fedcoord: a federated multi-node task coordinator.\n\n"
        "Every node keeps its tasks in memory for speed and in Redis for durability; workers with "
        "skills and capabilities claim work by priority, and failed, timed-out or orphaned work is retried.\n\n"
        "Start with **fedcoord demo** to watch one node at work."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)


def _package_version() -> str:
    try:
        return version("fedcoord")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"fedcoord {_package_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """fedcoord: a federated multi-node task coordinator."""


@app.command()
def demo(
    *,
    tasks: Annotated[
        int, typer.Option("--tasks", "-n", min=1, max=100_000, help="How many distinct tasks to submit.")
    ] = DEFAULT_TASKS,
    speed: Annotated[
        float,
        typer.Option(
            min=0.0001,
            max=10.0,
            help="Seconds of simulated work per difficulty unit (a difficulty-10 task takes 10 x this). "
            "Task timeouts scale with it: 2 x difficulty x speed, at least 1.5 s.",
        ),
    ] = DEFAULT_SPEED,
    seed: Annotated[
        int | None,
        typer.Option(help="Random seed of the workload and the workers' behaviour (default: a random one, shown)."),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            file_okay=False,
            help="Where the embedded Redis keeps its data (append-only file). "
            "Default: a fresh temporary directory, removed at the end unless --keep.",
        ),
    ] = None,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the temporary data directory at the end.")] = False,
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis-url",
            help="Use this Redis (redis://host:port/db, unix:///path.sock) instead of starting an embedded one.",
        ),
    ] = None,
    node_id: Annotated[
        str, typer.Option("--node-id", help="The node's id; its Redis keys begin with `fc:<id>:`.")
    ] = "demo",
    json_out: Annotated[
        bool, typer.Option("--json", help="Print only the final report, as JSON, on stdout (no live display).")
    ] = False,
    plain: Annotated[
        bool, typer.Option("--plain", help="Plain progress lines every 2 s even on a terminal (default off a TTY).")
    ] = False,
    deadline: Annotated[
        float | None,
        typer.Option(
            min=1.0,
            help="Give up waiting after this many seconds and report the tasks still unfinished "
            "(default: generous, from --tasks and --speed).",
        ),
    ] = None,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="Log more: -v for INFO, -vv for DEBUG.")
    ] = 0,
) -> None:
    """Run one node with simulated workers on a mixed workload, live, then print its performance report.

    The node stores its tasks in Redis: an embedded redis-server started in the data directory
    (default), or the one at --redis-url. Tasks of five types (simple_qa, quick_analysis,
    analysis, coding, reasoning) with priorities critical..low and difficulties 1-10 arrive in
    bursts; some need the "gpu" capability, some depend on 1-3 earlier tasks, some are delayed,
    some carry idempotency keys and are submitted twice (one task each), a few are cancelled and
    a few always fail (retried, then dead-lettered).

    Six workers of skill 3 to 10 claim work (a worker takes a task only if its skill is at least
    the difficulty): one is flaky and sometimes runs past the task timeout (the node retries the
    task elsewhere and refuses the late result), one crashes mid-run (the node notices the missed
    heartbeats and hands its tasks to others). The display shows queues, workers, latency,
    retries and the autoscaling advice (target load 0.7).

    Exit status: 0 when every task finished (completed, failed or cancelled), 1 when tasks were
    lost or still unfinished at the deadline (they are listed) or the node could not run,
    130 when interrupted (Ctrl-C stops cleanly).
    """
    if redis_url is not None and data_dir is not None:
        raise typer.BadParameter("--data-dir is for the embedded Redis; leave it out with --redis-url")
    console = _stdout_console()
    _setup_logging(verbose)
    view: DemoView
    if json_out:
        view = NullView()
    elif console.is_terminal and not plain:
        view = LiveView(console)
    else:
        view = PlainView(console)
    options = DemoOptions(
        tasks=tasks,
        speed=speed,
        seed=seed,
        node_id=node_id,
        redis_url=redis_url,
        data_dir=data_dir,
        keep=keep,
        deadline_s=deadline,
    )
    err = Console(stderr=True)
    try:
        result = _run(options, view)
    except (KeyboardInterrupt, asyncio.CancelledError):
        view.stop()
        err.print("[yellow]interrupted:[/] workers stopped, node closed")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (FedcoordError, OSError) as e:
        view.stop()
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(EXIT_FAILED) from None
    if json_out:
        sys.stdout.write(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
        sys.stdout.flush()
    else:
        render_result(console, result)
    raise typer.Exit(EXIT_OK if result.ok else EXIT_FAILED)


def _run(options: DemoOptions, view: DemoView) -> DemoResult:
    async def go() -> DemoResult:
        task = asyncio.current_task()
        if task is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError):  # SIGTERM stops like Ctrl-C
                asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await run_demo(options, view)
        finally:
            view.stop()

    return asyncio.run(go())


def _stdout_console() -> Console:
    """stdout; off a terminal 120 columns wide (not rich's 80) unless COLUMNS says otherwise."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=120)
    return console


def _setup_logging(verbose: int) -> None:
    """fedcoord logs go to stderr, WARNING and up by default (they would clutter the live display)."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("fedcoord").setLevel(level)


def _register_services() -> None:
    """The service commands live in their own modules (they import gRPC only when they run)."""
    from fedcoord.cmd_aggregator import AGGREGATOR_HELP, aggregator  # noqa: PLC0415
    from fedcoord.cmd_certs import certs  # noqa: PLC0415
    from fedcoord.cmd_client import status, submit  # noqa: PLC0415
    from fedcoord.cmd_dashboard import DASHBOARD_HELP, dashboard  # noqa: PLC0415
    from fedcoord.cmd_node import NODE_HELP, node  # noqa: PLC0415
    from fedcoord.cmd_privacy import privacy  # noqa: PLC0415
    from fedcoord.cmd_simulate import SIMULATE_HELP, simulate  # noqa: PLC0415
    from fedcoord.cmd_sweep import SWEEP_HELP, sweep  # noqa: PLC0415
    from fedcoord.cmd_up import UP_HELP, up  # noqa: PLC0415
    from fedcoord.cmd_worker import worker  # noqa: PLC0415

    app.command("up", help=UP_HELP)(up)
    app.command("aggregator", help=AGGREGATOR_HELP)(aggregator)
    app.command("node", help=NODE_HELP)(node)
    app.command("worker")(worker)
    app.command("submit")(submit)
    app.command("status")(status)
    app.command("certs")(certs)
    app.command("simulate", help=SIMULATE_HELP)(simulate)
    app.command("dashboard", help=DASHBOARD_HELP)(dashboard)
    privacy.command("sweep", help=SWEEP_HELP)(sweep)
    app.add_typer(privacy, name="privacy")  # privacy status, privacy sweep


_register_services()


def main() -> None:
    app(prog_name="fedcoord")


if __name__ == "__main__":
    main()
