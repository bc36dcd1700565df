"""``fedcoord node``: run one node as a network service (gRPC, health, reflection, metrics)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from node.errors import FedcoordError

__all__ = ["NODE_HELP", "node"]

log = logging.getLogger("fedcoord.dashboard")

NODE_HELP = """Run a node: the task manager served over gRPC, with health checking, reflection, a
Prometheus /metrics endpoint and a web node view (--dashboard-listen; its URL and where its
operator token is are the second line printed), on an embedded Redis unless --redis-url names one.

Settings come from a TOML file (--config, or $FEDCOORD_CONFIG; see deploy/node.example.toml for
every key), then FEDCOORD_* environment variables (FEDCOORD_LISTEN, FEDCOORD_HANDOFF__BATCH=500),
then these options. TLS is the default: give --tls-cert and --tls-key (and --tls-ca with
--mtls to require client certificates; `fedcoord certs` makes them). Plaintext only on a
loopback address with --insecure. Tokens (--tokens FILE, written by `fedcoord certs`) are
checked on every call: clients, workers and peers each have their own.

SIGTERM or Ctrl-C drains: new work is refused, calls in flight finish, the last changes are
written, the node's lock is let go, exit 0.

Example (one node on this machine, plaintext):

  fedcoord node --node-id n1 --listen 127.0.0.1:50051 --insecure
"""


def node(
    *,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML settings file.")] = None,
    node_id: Annotated[str | None, typer.Option("--node-id", help="This node's id (required somewhere).")] = None,
    listen: Annotated[str | None, typer.Option(help="gRPC address host:port [default: 127.0.0.1:50051].")] = None,
    metrics_listen: Annotated[
        str | None, typer.Option(help="Prometheus address host:port, '' for none [default: 127.0.0.1:9464].")
    ] = None,
    dashboard_listen: Annotated[
        str | None,
        typer.Option(
            help="Web node view address host:port, '' for none; off loopback it is served over TLS with "
            "--tls-cert/--tls-key (a plaintext node is refused) [default: 127.0.0.1:9465]."
        ),
    ] = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis to keep tasks in [default: an embedded one].")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Embedded Redis data [default: ./data/NODE_ID].")] = None,
    peer: Annotated[
        list[str] | None, typer.Option(help="A hand-off peer, ID=HOST:PORT (repeat for more).", show_default=False)
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="This node's certificate (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Its private key (PEM).")] = None,
    tls_ca: Annotated[Path | None, typer.Option(help="CA of clients' certificates and of peers'.")] = None,
    mtls: Annotated[bool | None, typer.Option("--mtls", help="Require client certificates.")] = None,
    tokens: Annotated[Path | None, typer.Option(help="tokens.toml with a [tokens] table.")] = None,
    peer_token: Annotated[
        str | None, typer.Option(help="Token sent to peers (env FEDCOORD_PEER_TOKEN).", show_default=False)
    ] = None,
    insecure: Annotated[bool | None, typer.Option("--insecure", help="Plaintext (loopback addresses only).")] = None,
    log_format: Annotated[str | None, typer.Option(help="text or json.")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the settings and exit.")] = False,
    federation: Annotated[
        str | None,
        typer.Option(
            help="Join a federation: the SuperLink's host:port (`fedcoord aggregator`). The node runs its own "
            "Flower SuperNode, kept alive, whose ClientApp takes this node's summaries to it.",
            show_default=False,
        ),
    ] = None,
    federation_ca: Annotated[
        Path | None, typer.Option(help="The SuperLink's CA certificate (TLS); without it, loopback SuperLinks only.")
    ] = None,
    federation_token: Annotated[
        str | None,
        typer.Option(
            help="Token (federation role) the ClientApp presents to this node [default: the first federation "
            "token of --tokens].",
            show_default=False,
        ),
    ] = None,
) -> None:
    from node.rpc.config import ConfigError, dump_toml, load_config  # noqa: PLC0415 (keep --help fast)
    from node.rpc.logs import setup_logging  # noqa: PLC0415
    from node.rpc.transport import parse_peers  # noqa: PLC0415

    overrides: dict[str, object] = {
        "node_id": node_id,
        "listen": listen,
        "metrics_listen": metrics_listen,
        "dashboard_listen": dashboard_listen,
        "redis_url": redis_url,
        "data_dir": data_dir,
        "tokens_file": tokens,
        "peer_token": peer_token,
        "insecure": insecure,
        "log_format": log_format,
        "log_level": log_level,
        "tls": {"cert_file": tls_cert, "key_file": tls_key, "ca_file": tls_ca, "require_client_cert": mtls},
    }
    try:
        if peer:
            overrides["peers"] = parse_peers(peer)
        cfg = load_config(config, overrides=overrides)
        if tls_ca is not None and cfg.peers and cfg.peer_ca_file is None:  # the peers' CA too, unless set apart
            cfg = dataclasses.replace(cfg, peer_ca_file=tls_ca)
        from node.rpc.serve import server_options  # noqa: PLC0415

        server_options(cfg)  # TLS files readable, plaintext allowed, tokens valid: before anything starts
    except (ConfigError, FedcoordError, OSError) as e:
        typer.echo(f"fedcoord node: {e}", err=True)
        raise typer.Exit(2) from None
    if print_config:
        typer.echo(dump_toml(cfg))
        return
    join = None
    if federation is not None:
        try:
            join = _join(cfg, federation, federation_ca, federation_token)
        except (ValueError, FedcoordError, OSError) as e:
            typer.echo(f"fedcoord node: {e}", err=True)
            raise typer.Exit(2) from None
    setup_logging(cfg.log_format, cfg.log_level, fields={"node_id": cfg.node_id})
    try:
        asyncio.run(_run(cfg, join))
    except FedcoordError as e:
        typer.echo(f"fedcoord node: {e}", err=True)
        raise typer.Exit(1) from None
    except OSError as e:
        typer.echo(f"fedcoord node: {e}", err=True)
        raise typer.Exit(1) from None


def _join(cfg: Any, superlink: str, ca: Path | None, token: str | None) -> Any:
    """The settings of this node's SuperNode (checked before anything starts)."""
    from federation.join import FederationJoin  # noqa: PLC0415
    from node.rpc.auth import Tokens  # noqa: PLC0415

    if token is None and cfg.tokens_file is not None:
        fed = Tokens.load(cfg.tokens_file).federation
        token = fed[0] if fed else None
    return FederationJoin(
        superlink=superlink,
        node_address=cfg.listen,
        superlink_ca=ca,
        node_insecure=bool(cfg.insecure),
        node_ca=cfg.tls.ca_file,
        node_token=token,
    )


def _operator_token(cfg: Any) -> tuple[str, str]:
    """The node view's operator token, and where the operator finds it: the configured one, or
    a random one written to ``<data_dir>/dashboard-token`` (owner-only)."""
    if cfg.dashboard_operator_token is not None:
        return cfg.dashboard_operator_token, "the configured dashboard_operator_token"
    import secrets  # noqa: PLC0415

    path = (Path(cfg.data_dir) / "dashboard-token").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # (an existing file keeps its mode through O_CREAT)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, str(path)


async def _run(cfg: Any, join: Any = None) -> None:
    from node.rpc.serve import Serving, serve  # noqa: PLC0415

    signalled = asyncio.Event()  # SIGTERM or Ctrl-C: the dashboard stops first, then the node drains
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signalled.set)
    keeper: list[Any] = []
    dashboard: list[Any] = []
    sock = None
    if cfg.dashboard_listen:
        from fedcoord.dashboard.server import bind  # noqa: PLC0415

        sock = bind(cfg.dashboard_listen)  # OSError (address in use) before the node starts

    async def relay() -> None:
        await signalled.wait()
        try:
            for d in dashboard:
                await d.stop()
        finally:
            stop.set()  # the node drains whatever the dashboard did

    relay_task = loop.create_task(relay())

    def ready(s: Serving) -> None:
        # one line on stdout that scripts (and tests) can wait for
        print(f"serving {s.config.node_id} on {s.address} metrics {s.metrics_url or '-'}", flush=True)
        if sock is not None:
            from fedcoord.dashboard import Access, DashboardServer  # noqa: PLC0415
            from fedcoord.dashboard.node_app import node_app  # noqa: PLC0415
            from fedcoord.dashboard.web import trusted_for  # noqa: PLC0415

            token, where = _operator_token(s.config)
            access = Access(token, s.config.dashboard_viewer_token)
            host = sock.getsockname()[0]
            trusted = trusted_for(host)
            if trusted is None and access.viewer_token is None:
                log.warning(
                    "the node view listens on %s with no dashboard_viewer_token: anyone who reaches it reads it", host
                )
            t = s.config.tls  # (off loopback the config requires TLS: the node's certificate serves the page)
            tls = None if t.cert_file is None or t.key_file is None else (Path(t.cert_file), Path(t.key_file))
            d = DashboardServer(node_app(s.node, access, trusted_hosts=trusted), sock=sock, tls=tls)
            d.start()
            dashboard.append(d)
            print(f"dashboard {d.url} (operator token: {where})", flush=True)
        if join is not None:
            from federation.join import SuperNodeKeeper  # noqa: PLC0415

            root = Path(s.config.data_dir or ".") / "flower"
            keeper.append(SuperNodeKeeper(join, root, f"supernode-{s.config.node_id}").start())
            print(f"joined the federation at {join.superlink}", flush=True)

    try:
        await serve(cfg, stop, on_ready=ready)
    finally:
        relay_task.cancel()
        for d in dashboard:
            await d.stop()
        if sock is not None:
            sock.close()
        for k in keeper:
            k.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    sys.stdout.flush()
