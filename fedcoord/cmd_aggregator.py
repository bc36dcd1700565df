"""``fedcoord aggregator``: the federation's server side alone, for nodes on other machines."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["AGGREGATOR_HELP", "aggregator"]

AGGREGATOR_HELP = """Run the federation's server side: a Flower SuperLink (with its database, so SuperNodes
reconnect after a restart) and the fedcoord run on it, which asks every node for its
privacy-filtered summary each round and sends back the federation's view. Nodes join with
`fedcoord node --federation HOST:PORT` (plus `--federation-ca` for TLS).

One line per round (--json: one JSON object per round) on stdout: participants, missing replies,
the federation's load. The federation view, a live web page of the same rounds (privacy-filtered
numbers only), is served on --dashboard-listen (default 127.0.0.1:9466; its URL is printed).
A SuperLink that dies is restarted and the run submitted again; Ctrl-C stops both. TLS is the
default (--tls-cert, --tls-key, --tls-ca); plaintext only on loopback and only with --insecure.

Exit status: 0 stopped, 1 it could not start, 2 bad options."""

FEDERATION = "fedcoord"


def _round_line(r: dict[str, Any]) -> str:
    fl = r["federation_load"]
    return (
        f"round {r['round']}: {len(r['participants'])} of {r['asked']} nodes in {r['latency_s']:.1f} s, "
        f"federation load {fl['value']:.2f} (sd {fl['sd']:.2f}), missing {', '.join(r['missing']) or '-'}"
        + (f", dropped {len(r['dropped'])}" if r["dropped"] else "")
    )


def aggregator(
    *,
    listen: Annotated[str, typer.Option(help="The SuperLink's address, host:port.")] = "127.0.0.1:9092",
    data_dir: Annotated[
        Path, typer.Option("--dir", file_okay=False, help="The SuperLink's database, logs and the rounds file.")
    ] = Path("federation"),
    period_s: Annotated[float, typer.Option("--period-s", min=1.0, help="Seconds between rounds.")] = 20.0,
    ttl_s: Annotated[float, typer.Option("--ttl-s", min=1.0, help="How long a round waits for replies.")] = 15.0,
    min_nodes: Annotated[int, typer.Option("--min-nodes", min=0, help="The first round waits for this many.")] = 1,
    tls_cert: Annotated[Path | None, typer.Option(help="The SuperLink's certificate (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Its private key (PEM).")] = None,
    tls_ca: Annotated[Path | None, typer.Option(help="The CA that signed it (SuperNodes check against it).")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Plaintext (loopback addresses only).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per round on stdout.")] = False,
    dashboard_listen: Annotated[
        str,
        typer.Option(
            help="The federation view (web page) on host:port; '' for none. Served over TLS with the "
            "SuperLink's certificate; with --insecure on loopback only.",
            envvar="FEDCOORD_FEDERATION_DASHBOARD_LISTEN",
        ),
    ] = "127.0.0.1:9466",
) -> None:
    from federation.launch import FlowerError, FlowerHome, wait_listening  # noqa: PLC0415
    from node.rpc.auth import is_loopback  # noqa: PLC0415

    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise typer.BadParameter(f"{listen!r} is not host:port", param_hint="--listen")
    tls = (tls_cert, tls_key, tls_ca)
    if insecure:
        if any(tls):
            raise typer.BadParameter("--insecure with TLS files: choose one", param_hint="--insecure")
        if not is_loopback(listen):
            raise typer.BadParameter(f"plaintext only on loopback, not {listen}", param_hint="--insecure")
    elif not all(tls):
        raise typer.BadParameter("TLS needs --tls-cert, --tls-key and --tls-ca (or --insecure on loopback)")
    for p in (x for x in tls if x is not None):
        if not p.is_file():
            raise typer.BadParameter(f"{p}: no such file", param_hint="--tls-*")
    home = FlowerHome(data_dir.resolve())
    files = None if insecure else [p.resolve() for p in tls if p is not None]
    status = data_dir.resolve() / "rounds.jsonl"
    stopping = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stopping.update(now=True))

    def start() -> tuple[Any, int]:
        link = home.superlink(int(port), host=host, tls=files).start()
        wait_listening(f"127.0.0.1:{port}" if host in ("0.0.0.0", "") else listen, 60, link)
        home.name_superlink(FEDERATION, listen, root_certificates=None if files is None else files[2])
        rc: dict[str, str | int | float] = {
            "rounds": 0, "period-s": period_s, "ttl-s": ttl_s, "status-file": str(status), "min-nodes": min_nodes,
        }  # fmt: skip
        return link, home.run(FEDERATION, rc)

    try:
        link, run_id = start()
    except (FlowerError, OSError) as e:
        typer.echo(f"fedcoord aggregator: could not start: {e}", err=True)
        home.stop_all()
        raise typer.Exit(1) from None
    typer.echo(f"aggregator on {listen} (run {run_id}); nodes join with: fedcoord node --federation {listen}", err=True)
    view = None
    if dashboard_listen:
        from fedcoord.cmd_dashboard import start_federation_view  # noqa: PLC0415

        try:
            view = start_federation_view(  # over TLS with the SuperLink's certificate, unless --insecure
                status, dashboard_listen, tls=None if files is None else (files[0], files[1])
            )
            typer.echo(f"federation view {view.url}", err=True)
        except (OSError, ValueError) as e:  # the federation runs on without its page
            typer.echo(f"fedcoord aggregator: no federation view on {dashboard_listen}: {e}", err=True)
    seen = len(status.read_text().splitlines()) if status.exists() else 0
    try:
        while not stopping["now"]:
            if not link.alive:
                typer.echo("the SuperLink exited: restarting it on its database", err=True)
                try:
                    link, run_id = start()
                except (FlowerError, OSError) as e:
                    typer.echo(f"fedcoord aggregator: restart failed, retrying: {e}", err=True)
            lines = status.read_text().splitlines() if status.exists() else []
            for line in lines[seen:]:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    break
                sys.stdout.write((line if json_out else _round_line(r)) + "\n")
                sys.stdout.flush()
                seen += 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        if view is not None:
            view.stop_thread()
        if link.alive:
            with contextlib.suppress(FlowerError, OSError):  # the processes stop below either way
                home.stop_run(FEDERATION, run_id, timeout_s=20)
        home.stop_all()
