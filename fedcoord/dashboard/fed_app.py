"""The federation view: a Starlette app over the rounds file the ServerApp writes, served by
``fedcoord up`` and ``fedcoord aggregator`` (on a thread of their own).

Page: ``/``. API: ``/api/federation`` (JSON) and ``/api/stream`` (server-sent events of it).
Reads only: the federation view has no actions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fedcoord.dashboard.access import Access
from fedcoord.dashboard.fed_model import RoundsTail, federation_view
from fedcoord.dashboard.web import Guard, Live, build_app, json, page, stream

__all__ = ["federation_app"]


def federation_app(
    rounds_file: Path,
    access: Access,
    *,
    node_links: Callable[[], Mapping[str, str]] | None = None,
    live: Live | None = None,
    trusted_hosts: list[str] | None = None,
) -> Any:
    """``node_links``: node id -> URL of its node view, when the launcher knows them."""
    live = live or Live()
    guard = Guard(access)
    tail = RoundsTail(rounds_file)

    async def snapshot() -> dict[str, Any]:
        return federation_view(tail.read(), node_links=node_links() if node_links else None)

    async def view(_: Request) -> Response:
        return json(await snapshot())

    async def live_stream(request: Request) -> Response:
        return await stream(request, live, snapshot)

    async def info(request: Request) -> Response:
        return json({"role": access.role_of(request) or "viewer", "needs_token": access.viewer_token is not None})

    routes = [
        Route("/", page("federation.html")),
        Route("/api/info", guard.read(info)),
        Route("/api/federation", guard.read(view)),
        Route("/api/stream", guard.read(live_stream, stream=True)),
    ]
    return build_app(routes, live, trusted_hosts=trusted_hosts)
