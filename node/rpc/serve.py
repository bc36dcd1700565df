"""A node process: a :class:`~node.rpc.config.ServerConfig` turned into a running node.

:func:`serve` opens the node (embedded Redis by default), its hand-off transport to the
configured peers, the gRPC server (node and hand-off services, health, reflection) with TLS and
tokens, and the Prometheus endpoint; then it serves until ``stop`` is set (``fedcoord node``
sets it on SIGTERM or SIGINT). Stopping drains: health says NOT_SERVING, new work is refused,
calls in flight finish (up to ``drain_timeout_s``), the last changes are written, the owner lock
is let go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from node.rpc.auth import AuthInterceptor, TlsConfig, Tokens, check_plaintext, server_credentials
from node.rpc.config import ConfigError, ServerConfig
from node.rpc.metrics import MetricsServer, NodeMetrics, start_metrics_server
from node.rpc.server import NodeServer, ServerOptions
from node.rpc.servicers import ServiceLimits
from node.rpc.transport import GrpcTransport
from node.runtime.node import LocalNode

__all__ = ["Serving", "serve", "server_options", "tokens_of", "transport_of"]

log = logging.getLogger("fedcoord.node")


@dataclass(slots=True)
class Serving:
    """What a running node process is made of (given to ``on_ready``)."""

    config: ServerConfig
    node: LocalNode
    server: NodeServer
    metrics: NodeMetrics
    metrics_server: MetricsServer | None
    transport: GrpcTransport | None

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def metrics_url(self) -> str | None:
        return self.metrics_server.url if self.metrics_server is not None else None


def tokens_of(cfg: ServerConfig) -> Tokens | None:
    """The tokens the server checks: from ``tokens_file`` or the ``[tokens]`` table; None when
    neither names any (then no token is asked for)."""
    if cfg.tokens_file is not None:
        return Tokens.load(cfg.tokens_file)
    mapping = {k: v for k, v in cfg.tokens.as_mapping().items() if v}
    return Tokens.from_mapping(mapping) if mapping else None


def server_options(cfg: ServerConfig, metrics: NodeMetrics | None = None) -> ServerOptions:
    """How the server listens: TLS when a certificate is configured, else plaintext (only on
    loopback, and only with ``insecure``); the metrics interceptor outside the token check, so
    refused calls are counted too."""
    tls = cfg.tls
    credentials = None
    if tls.cert_file is not None or tls.key_file is not None:
        if tls.cert_file is None or tls.key_file is None:
            raise ConfigError("tls", "cert_file and key_file come together")
        credentials = server_credentials(
            TlsConfig(
                str(tls.cert_file),
                str(tls.key_file),
                str(tls.ca_file) if tls.ca_file is not None else None,
                require_client_cert=tls.require_client_cert,
            )
        )
    else:
        check_plaintext(cfg.listen, cfg.insecure)
    interceptors = []
    if metrics is not None:
        interceptors.append(metrics.interceptor())
    tokens = tokens_of(cfg)
    if tokens is not None:
        interceptors.append(AuthInterceptor(tokens))
    elif credentials is not None and not tls.require_client_cert:
        raise ConfigError(
            "tokens",
            "a node on TLS needs tokens (tokens_file or [tokens]; `fedcoord certs` writes tokens.toml) unless it "
            "requires client certificates (tls.require_client_cert, --mtls): else anyone who reaches the port may "
            "submit, take work and hand tasks over",
        )
    else:
        log.warning("node %s: no tokens configured: every caller may call every method", cfg.node_id)
    lim = cfg.limits
    return ServerOptions(
        listen=cfg.listen,
        credentials=credentials,
        interceptors=tuple(interceptors),
        max_message_bytes=lim.max_message_bytes,
        limits=ServiceLimits(max_active_tasks=lim.max_active_tasks, max_inflight_submits=lim.max_inflight_submits),
    )


def transport_of(cfg: ServerConfig) -> GrpcTransport | None:
    """The hand-off transport to the configured peers (None without peers)."""
    if not cfg.peers:
        return None
    tls_files = (cfg.peer_ca_file, cfg.peer_cert_file, cfg.peer_key_file)
    return GrpcTransport(
        dict(cfg.peers),
        token=cfg.peer_token,
        ca_file=str(cfg.peer_ca_file) if cfg.peer_ca_file is not None else None,
        cert_file=str(cfg.peer_cert_file) if cfg.peer_cert_file is not None else None,
        key_file=str(cfg.peer_key_file) if cfg.peer_key_file is not None else None,
        insecure=cfg.insecure and all(f is None for f in tls_files),
        max_message_bytes=cfg.limits.max_message_bytes,
    )


async def serve(
    cfg: ServerConfig,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[Serving], None] | None = None,
) -> Serving:
    """Serve the node of ``cfg`` until ``stop`` is set, then drain and close. Returns what ran
    (closed by then)."""
    metrics = NodeMetrics(cfg.node_id)
    options = server_options(cfg, metrics)  # refuses a bad TLS or plaintext setting before anything starts
    transport = transport_of(cfg)
    node = await LocalNode.start(
        cfg.node_id,
        cfg.redis_url,
        cfg.data_path,
        config=cfg.node_config(),
        transport=transport,
    )
    metrics_task: asyncio.Task[None] | None = None
    metrics_server: MetricsServer | None = None
    server = NodeServer(node, options, handoff_endpoint=transport.local_endpoint if transport else None)
    serving = Serving(cfg, node, server, metrics, None, transport)
    try:
        await server.start()
        metrics_task = asyncio.create_task(metrics.run(node), name="metrics")
        if cfg.metrics_listen:
            metrics_server = start_metrics_server(cfg.metrics_listen, metrics.registry)
            serving.metrics_server = metrics_server
        log.info(
            "node %s serving on %s (%s, %s); metrics at %s",
            cfg.node_id,
            server.address,
            "TLS" if options.credentials is not None else "plaintext",
            "tokens" if any(isinstance(i, AuthInterceptor) for i in options.interceptors) else "no tokens",
            serving.metrics_url or "(off)",
        )
        if on_ready is not None:
            on_ready(serving)
        await stop.wait()
        log.info("node %s draining (up to %.0f s)", cfg.node_id, cfg.drain_timeout_s)
        await server.drain(cfg.drain_timeout_s)
    finally:
        await server.stop()
        if metrics_task is not None:
            metrics_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await metrics_task
        if metrics_server is not None:
            metrics_server.close()
        await node.close()
        if transport is not None:
            await transport.close()
        log.info("node %s stopped", cfg.node_id)
    return serving
