"""``fedcoord privacy``: a node's privacy budget, over gRPC (the ``Stats`` call).

``fedcoord privacy status --connect ADDRESS`` shows what a node may release about its tasks and
what its releases have cost so far. It takes the connection options of ``fedcoord status``
(``--connect`` is ``--node``: ``FEDCOORD_NODE``, ``--token``, ``--ca``/``--cert``/``--key``,
``--insecure``); failures are one line on stderr and exit status 1, Ctrl-C exits 130.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedcoord.cmd_client import _CONN, DEFAULT_ADDRESS, Connection, JsonOption, _errors, _print_json, with_connection

if TYPE_CHECKING:
    from federation.privacy.status import PrivacyStatus

__all__ = ["PER_TASK", "STATUS_HELP", "privacy", "render_privacy", "status"]

PER_TASK = (
    "Per task: the privacy unit is one task - epsilon and delta bound what all of a node's releases "
    "together reveal about any single task, which counts in at most m consecutive releases (windows)."
)

privacy = typer.Typer(
    name="privacy",
    help=(
        "A node's privacy-filtered summaries: the budget, what was spent and what is left.\n\n"
        "The node releases one noisy summary per window to the federation (the Summary call). " + PER_TASK
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)

ConnectOption = Annotated[
    str,
    typer.Option(
        "--connect",
        "--node",
        envvar="FEDCOORD_NODE",
        metavar="ADDRESS",
        help="The node's gRPC address, host:port.",
        rich_help_panel=_CONN,
    ),
]


def with_connect(command: Callable[..., None]) -> Callable[..., None]:
    """:func:`~fedcoord.cmd_client.with_connection`, the address option spelled ``--connect``
    (``--node`` works too, as in ``fedcoord status``)."""
    run = with_connection(command)
    signature = inspect.signature(run)
    params = [
        p.replace(annotation=ConnectOption, default=DEFAULT_ADDRESS) if p.name == "node" else p
        for p in signature.parameters.values()
    ]
    run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return run


def _eps(v: float) -> str:
    return f"{v:.4g}" if math.isfinite(v) else str(v)


def render_privacy(s: PrivacyStatus, address: str) -> Table:
    """What ``fedcoord privacy status`` shows of a node's answer."""
    table = Table(
        title=f"privacy of the node at {address}", title_style="bold", title_justify="left", show_header=False
    )
    table.add_column(style="dim")
    table.add_column()
    table.add_row("budget (per task)", f"epsilon {s.epsilon_budget:g}, delta {s.delta:g}, m {s.m}")
    if not s.enabled:
        table.add_row("releases", "[yellow]disabled[/]: privacy.enabled is false, this node releases nothing")
        table.add_row("released / refused so far", f"{s.releases:,} / {s.refused:,}")
        return table
    sd = math.sqrt(s.variance) if s.variance >= 0 else math.nan
    table.add_row("mechanism", f"{s.mechanism}, noise sd {sd:.4g} per cell (scale {s.scale:.4g})")
    table.add_row("rho per release", f"{s.rho_per_release:.4g} (budget {s.rho_budget:.4g} per task)")
    table.add_row("releases", f"{s.releases:,}" + ("" if s.last_window is None else f" (last: window {s.last_window})"))
    table.add_row("refused (budget)", f"{s.refused:,}")
    table.add_row("epsilon spent by tasks still counting", _eps(s.epsilon_current))
    table.add_row("epsilon worst so far", _eps(s.epsilon_worst))
    table.add_row("epsilon left after the next release", _eps(s.epsilon_left))
    table.add_row("next release", "allowed" if s.next_allowed else "[red]refused[/]: it would go over the budget")
    return table


STATUS_HELP = (
    "Show a node's privacy budget, what was spent and what is left: the budget (epsilon, delta per "
    "task, m), the mechanism and its noise (sd per released cell), rho per release, releases and "
    "refusals, the epsilon spent by the tasks still counting, the worst so far, what the next "
    "release would leave and whether it is allowed.\n\n"
    f"{PER_TASK}\n\n"
    "Exit status: 0 shown, 1 the node could not be reached or refused the call, 130 interrupted."
)


@privacy.command("status", help=STATUS_HELP)
@with_connect
def status(*, json_out: JsonOption = False, conn: Connection) -> None:
    with _errors(conn), conn.client() as client:
        s = client.privacy_status()
    if json_out:
        _print_json(s.to_dict())
        return
    Console().print(render_privacy(s, conn.node))
