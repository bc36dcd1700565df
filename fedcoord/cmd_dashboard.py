"""``fedcoord dashboard``: the federation view of a rounds file, on its own."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from fedcoord.dashboard.server import DashboardServer

__all__ = ["DASHBOARD_HELP", "dashboard", "start_federation_view"]

DASHBOARD_HELP = """Serve the federation view (a web page, live) of a rounds file: the one a running
`fedcoord aggregator --dir DIR` writes (DIR/rounds.jsonl), or one written by
`fedcoord simulate --rounds-file`. `fedcoord up` and `fedcoord aggregator` serve this view
themselves; this command is for a file elsewhere, or for a simulation.

The page shows only what the federation saw: privacy-filtered loads with their uncertainty,
thresholds, hand-off rates, rounds, budgets and completion quantiles. Ctrl-C stops.

Example:

  fedcoord simulate --nodes 100 --policy adaptive --epsilon 1 --duration-s 600 --rounds-file r.jsonl
  fedcoord dashboard --rounds-file r.jsonl
"""

DEFAULT_LISTEN = "127.0.0.1:9466"


def start_federation_view(
    rounds_file: Path,
    listen: str,
    *,
    node_links: Callable[[], Mapping[str, str]] | None = None,
    tls: tuple[Path, Path] | None = None,
) -> DashboardServer:
    """The federation view on a thread of its own; returns the server (``.url``, ``.stop_thread()``).
    Raises OSError when the address is taken, ValueError for an address off loopback without
    ``tls`` (certificate, key)."""
    from fedcoord.dashboard import Access, DashboardServer  # noqa: PLC0415
    from fedcoord.dashboard.fed_app import federation_app  # noqa: PLC0415
    from fedcoord.dashboard.server import bind  # noqa: PLC0415
    from fedcoord.dashboard.web import trusted_for  # noqa: PLC0415

    sock = bind(listen)
    app = federation_app(
        rounds_file, Access.generated(), node_links=node_links, trusted_hosts=trusted_for(sock.getsockname()[0])
    )
    server = DashboardServer(app, sock=sock, tls=tls)
    server.start_thread()
    return server


def dashboard(
    *,
    rounds_file: Annotated[
        Path, typer.Option("--rounds-file", dir_okay=False, help="The rounds file (JSON lines) to show.")
    ],
    listen: Annotated[
        str, typer.Option(help="The page's address, host:port (off loopback: only with --tls-cert and --tls-key).")
    ] = DEFAULT_LISTEN,
    tls_cert: Annotated[Path | None, typer.Option(help="Serve HTTPS with this certificate (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Its private key (PEM).")] = None,
) -> None:
    from fedcoord.dashboard.server import parse_listen  # noqa: PLC0415

    try:
        parse_listen(listen)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--listen") from None
    if not rounds_file.exists():
        typer.echo(f"note: {rounds_file} does not exist yet; the page waits for its first round", err=True)
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("TLS needs both --tls-cert and --tls-key", param_hint="--tls-cert")
    for p in (x for x in (tls_cert, tls_key) if x is not None):
        if not p.is_file():
            raise typer.BadParameter(f"{p}: no such file", param_hint="--tls-*")
    tls = None if tls_cert is None or tls_key is None else (tls_cert, tls_key)
    try:
        server = start_federation_view(rounds_file, listen, tls=tls)
    except ValueError as e:
        raise typer.BadParameter(
            f"{e} (give --tls-cert and --tls-key, or a loopback address)", param_hint="--listen"
        ) from None
    except OSError as e:
        typer.echo(f"fedcoord dashboard: {listen}: {e.strerror}", err=True)
        raise typer.Exit(1) from None
    print(f"federation view {server.url} of {rounds_file}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop_thread()
