"""Serving a dashboard with uvicorn inside a process that already runs: on its event loop (the
node) or on a thread of its own (``fedcoord up`` and ``fedcoord aggregator``, whose main
threads are not asyncio).

uvicorn's own ``serve()`` takes over SIGINT and SIGTERM; here the host process keeps its
signal handling (drain on SIGTERM) and stops the dashboard itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from node.rpc.auth import is_loopback_host

__all__ = ["DashboardServer", "bind", "parse_listen"]

log = logging.getLogger("fedcoord.dashboard")


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:port`` for IPv6; port 0: a free one)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"dashboard address {listen!r}: expected host:port")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def bind(listen: str) -> socket.socket:
    """A listening socket on ``listen``; raises OSError (address in use, ...) before anything starts."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the host process keeps its signals
        yield


class DashboardServer:
    """One ASGI app on one socket. ``url`` is known as soon as it is made (the socket is bound
    in the constructor)."""

    def __init__(
        self,
        app: ASGIApp,
        listen: str = "127.0.0.1:0",
        *,
        sock: socket.socket | None = None,
        tls: tuple[Path, Path] | None = None,
    ):
        """``tls``: (certificate, key) PEM files: HTTPS. Without it only a loopback address is
        served (ValueError otherwise): tokens and task data do not cross a network in the clear."""
        self._sock = sock if sock is not None else bind(listen)
        host, port = self._sock.getsockname()[:2]
        if tls is None and not is_loopback_host(host):
            self._sock.close()
            raise ValueError(f"{host} is not a loopback address: a dashboard there is served only over TLS")
        self.host, self.port = host, port
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if tls else 'http'}://{shown}:{port}/"
        config = uvicorn.Config(
            app,
            ssl_certfile=None if tls is None else str(tls[0]),
            ssl_keyfile=None if tls is None else str(tls[1]),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            loop="asyncio",
            ws="none",
        )
        self._server = _Server(config)
        self._task: asyncio.Task[Any] | None = None
        self._thread: threading.Thread | None = None

    # -- on the caller's loop

    def start(self) -> None:
        """Serve on the running event loop (returns at once)."""
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[self._sock]))

    def _closing(self) -> None:
        live = getattr(getattr(self._server.config.app, "state", None), "live", None)
        if live is not None:
            live.closed = True  # open streams end now, not at the graceful-shutdown timeout
        self._server.should_exit = True

    async def stop(self) -> None:
        """Stop serving (open streams end at once); never raises: a server that failed is logged."""
        self._closing()
        task, self._task = self._task, None
        if task is not None:
            await asyncio.wait([task])  # (not `await task`: that would take a cancellation of ours)
            if not task.cancelled() and task.exception() is not None:
                log.error("the dashboard server failed: %r", task.exception())
        self._sock.close()

    # -- on a thread of its own

    def start_thread(self) -> None:
        """Serve on a daemon thread with its own event loop (returns at once)."""
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._server.serve(sockets=[self._sock])), name="dashboard", daemon=True
        )
        self._thread.start()

    def stop_thread(self, timeout_s: float = 5.0) -> None:
        self._closing()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self._sock.close()
