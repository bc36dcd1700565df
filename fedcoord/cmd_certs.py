"""``fedcoord certs``: a local certificate authority, certificates and bearer tokens for a cluster."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from node.errors import FedcoordError
from node.rpc.certs import DEFAULT_DAYS, DEFAULT_HOSTS, TOKENS_FILE, make_cluster

__all__ = ["certs"]

DEFAULT_NAMES = ("node", "client")


def certs(
    *,
    out: Annotated[
        Path,
        typer.Option("--out", "-o", file_okay=False, help="Directory to write into (created if missing)."),
    ] = Path("certs"),
    name: Annotated[
        list[str] | None,
        typer.Option(
            "--name",
            "-n",
            help="A certificate to issue, NAME.pem + NAME.key; repeat for each node, worker or client "
            f"(default: {', '.join(DEFAULT_NAMES)}).",
        ),
    ] = None,
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host",
            help="An IP address or DNS name the certificates are valid for (SubjectAlternativeName); repeat "
            f"for each (default: {', '.join(DEFAULT_HOSTS)}). Clients must dial one of them.",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace a CA already in --out (every certificate it signed stops being trusted). "
            "An existing tokens.toml is kept.",
        ),
    ] = False,
    days: Annotated[
        int, typer.Option("--days", min=1, max=36_500, help="How long the CA and the certificates stay valid.")
    ] = DEFAULT_DAYS,
) -> None:
    """Create a local certificate authority and TLS certificates for a fedcoord cluster.

    Writes to --out:

    * `ca.pem` - the CA certificate: every node and client trusts it (--tls-ca);
    * `ca.key` - the CA's private key (mode 0600): it signs certificates; keep it off the nodes;
    * `NAME.pem`, `NAME.key` - for each --name, a certificate valid for every --host, usable both to
      serve and, under mutual TLS, to identify itself as a client (EC P-256 keys, mode 0600);
    * `tokens.toml` - a random bearer token per role (client, worker, peer, federation, admin),
      unless the file exists already. Callers send one as `authorization: Bearer <token>`; keep
      the file secret.

    Then start a node with its certificate, for example
    `fedcoord node --tls-cert certs/node.pem --tls-key certs/node.key --tls-ca certs/ca.pem`,
    and give clients `certs/ca.pem` (plus `certs/client.pem` and `certs/client.key` when the node
    requires client certificates) and the token of their role.

    Refuses to replace an existing CA unless --force.
    """
    names = list(name) if name else list(DEFAULT_NAMES)
    hosts = list(host) if host else list(DEFAULT_HOSTS)
    try:
        files = make_cluster(out, names, hosts, days=days, force=force)
    except (FedcoordError, OSError) as e:
        Console(stderr=True).print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(1) from None
    table = Table("file", "what", title=f"written to {out}", title_justify="left")
    table.add_row(str(files.ca.cert), "CA certificate (trust it: --tls-ca)")
    table.add_row(str(files.ca.key), "CA private key (0600; keep it off the nodes)")
    for cert_name, paths in files.certs.items():
        table.add_row(str(paths.cert), f"certificate of {cert_name} for {', '.join(hosts)}")
        table.add_row(str(paths.key), f"private key of {cert_name} (0600)")
    if files.tokens is not None:
        table.add_row(str(files.tokens), "bearer tokens per role (0600; keep it secret)")
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:  # paths stay on one line in logs and pipes
        console = Console(width=160)
    console.print(table)
    if files.tokens is None:
        console.print(f"kept the existing {out / TOKENS_FILE}", highlight=False)
