"""A LocalNode with its web view on a free port, on an event loop in a thread of its own: the
test thread talks to it over HTTP like a browser, and runs node calls on its loop."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from typing import Any

import orjson

from fedcoord.dashboard import Access, DashboardServer
from fedcoord.dashboard.node_app import node_app
from node.runtime.config import NodeConfig
from node.runtime.node import LocalNode
from tests.node_thread import NodeThread

OPERATOR = "operator-token-123"
VIEWER = "viewer-token-456"


class DashboardNode(NodeThread):
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
        super().__init__("dashboard-node")
        self.trusted_hosts = trusted_hosts
        self.redis_url = redis_url
        self.config = config
        self.node_id = node_id
        self.access = Access(OPERATOR, viewer_token)
        self.listen = listen
        self.url = ""
        self.port = 0

    async def _serve(self, stop: asyncio.Event) -> None:
        async with LocalNode.open(self.node_id, self.redis_url, config=self.config) as node:
            server = DashboardServer(node_app(node, self.access, trusted_hosts=self.trusted_hosts), self.listen)
            server.start()
            self.node, self.url, self.port = node, server.url, server.port
            self.ready()
            try:
                await stop.wait()
            finally:
                await server.stop()


def http(
    url: str,
    *,
    method: str = "GET",
    token: str | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10.0,
) -> tuple[int, Any]:
    """(status, decoded JSON body) of one request."""
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None, headers=headers or {})
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())
