"""A LocalNode with its web view on a free port, on an event loop in a thread of its own: the
test thread talks to it over HTTP like a browser, and runs node calls on its loop."""

from __future__ import annotations

import asyncio
import threading
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson

from fedcoord.dashboard import Access, DashboardServer
from fedcoord.dashboard.node_app import node_app
from node.runtime.config import NodeConfig
from node.runtime.node import LocalNode

T = TypeVar("T")
OPERATOR = "operator-token-123"
VIEWER = "viewer-token-456"


class DashboardNode:
    def __init__(
        self,
        redis_url: str,
        *,
        config: NodeConfig,
        node_id: str = "n1",
        viewer_token: str | None = None,
        listen: str = "127.0.0.1:0",
        trusted_hosts: list[str] | None = None,
    ):
        self.trusted_hosts = trusted_hosts
        self.redis_url = redis_url
        self.config = config
        self.node_id = node_id
        self.access = Access(OPERATOR, viewer_token)
        self.listen = listen
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="dashboard-node", daemon=True)
        self.node: LocalNode | None = None
        self.url = ""
        self.port = 0

    def _main(self) -> None:
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as e:  # noqa: BLE001 - handed to the test thread, which raises it
            self._error = e
            self._ready.set()
        finally:
            self.loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with LocalNode.open(self.node_id, self.redis_url, config=self.config) as node:
            server = DashboardServer(node_app(node, self.access, trusted_hosts=self.trusted_hosts), self.listen)
            server.start()
            self.node, self.url, self.port = node, server.url, server.port
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await server.stop()

    def call(self, fn: Callable[[LocalNode], Awaitable[T]]) -> T:
        """Run ``fn(node)`` on the node's loop; its result."""
        assert self.node is not None
        node = self.node

        async def go() -> T:
            return await fn(node)

        return asyncio.run_coroutine_threadsafe(go(), self.loop).result(30)

    def sync(self, fn: Callable[[LocalNode], T]) -> T:
        """Run a plain function of the node on its loop."""

        async def go(node: LocalNode) -> T:
            return fn(node)

        return self.call(go)

    def __enter__(self) -> DashboardNode:
        self._thread.start()
        assert self._ready.wait(30), "the node did not start"
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


def http(url: str, *, method: str = "GET", token: str | None = None, timeout_s: float = 10.0) -> tuple[int, Any]:
    """(status, decoded JSON body) of one request."""
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())
