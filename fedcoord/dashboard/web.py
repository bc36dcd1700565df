"""Pieces both dashboards share: JSON responses and errors, the live stream, static files."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from fedcoord.dashboard.access import Access, Denied, Role
from node.rpc.auth import is_loopback_host

__all__ = [
    "LOOPBACK_HOSTS",
    "STATIC",
    "Guard",
    "Handler",
    "Live",
    "build_app",
    "error",
    "guarded",
    "json",
    "page",
    "static_routes",
    "stream",
    "trusted_for",
]  # fmt: skip

STATIC = Path(str(resources.files("fedcoord.dashboard") / "static"))
Handler = Callable[[Request], Awaitable[Response]]


def json(data: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
        status_code=status,
        media_type="application/json",
        headers={"cache-control": "no-store"},
    )


def error(status: int, message: str, parameter: str | None = None) -> Response:
    body: dict[str, Any] = {"error": message}
    if parameter is not None:
        body["parameter"] = parameter
    return json(body, status)


def guarded(access: Access, need: Role, handler: Handler, *, query_token: bool = False) -> Handler:
    async def run(request: Request) -> Response:
        try:
            access.check(request, need, query_token=query_token)
        except Denied as e:
            return error(e.status, e.message)
        return await handler(request)

    return run


class Live:
    """The live streams of one app: one snapshot per period shared by every open stream (the
    cost does not grow with the pages open), at most ``max_streams`` of them, and a flag that
    ends them all when the process closes (so uvicorn's shutdown need not wait them out)."""

    def __init__(self, period_s: float = 0.5, keepalive_s: float = 15.0, max_streams: int = 32):
        self.period_s = period_s
        self.keepalive_s = keepalive_s
        self.max_streams = max_streams
        self.closed = False  # set from any thread: open streams end within period_s
        self.streams = 0
        self._body: bytes = b""
        self._at = -1.0

    async def body(self, snapshot: Callable[[], Awaitable[Any]]) -> bytes:
        """The current snapshot as JSON, made at most once per period."""
        now = time.monotonic()
        if now - self._at >= self.period_s * 0.9:
            self._at = now
            try:
                self._body = orjson.dumps(await snapshot(), option=orjson.OPT_NON_STR_KEYS)
            except Exception as e:  # noqa: BLE001 - the stream says what failed and goes on
                self._body = orjson.dumps({"error": f"{type(e).__name__}: {e}"})
        return self._body


async def stream(request: Request, live: Live, snapshot: Callable[[], Awaitable[Any]]) -> Response:
    """Server-sent events: the snapshot whenever it changed, checked every ``period_s``; a
    comment line to keep proxies from closing an idle stream. The browser's EventSource
    reconnects by itself after a restart (``retry: 1000``)."""
    if live.streams >= live.max_streams:
        return error(503, f"{live.streams} live streams open already (at most {live.max_streams})")

    async def events() -> AsyncIterator[bytes]:
        live.streams += 1
        try:
            yield b"retry: 1000\n\n"
            last: bytes | None = None
            idle_s = 0.0
            while not live.closed:
                body = await live.body(snapshot)
                if body != last:
                    yield b"data: " + body + b"\n\n"
                    last, idle_s = body, 0.0
                elif idle_s >= live.keepalive_s:
                    yield b": keepalive\n\n"
                    idle_s = 0.0
                if await request.is_disconnected():
                    return
                await asyncio.sleep(live.period_s)
                idle_s += live.period_s
        finally:
            live.streams -= 1

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"cache-control": "no-store", "x-accel-buffering": "no"}
    )


class Guard:
    """Routes' access rules: ``read`` for viewers (``stream=True``: the token may come in the
    address), ``act`` for operators."""

    def __init__(self, access: Access):
        self.access = access

    def read(self, handler: Handler, *, stream: bool = False) -> Handler:
        return guarded(self.access, Role.VIEWER, handler, query_token=stream)

    def act(self, handler: Handler) -> Handler:
        checked = guarded(self.access, Role.OPERATOR, handler)

        async def same_origin_only(request: Request) -> Response:
            why = cross_site(request)
            return error(403, why) if why is not None else await checked(request)

        return same_origin_only


def cross_site(request: Request) -> str | None:
    """Why an action comes from another site, or None. A browser says where a request comes from
    (``Sec-Fetch-Site``, ``Origin`` on every POST); a client that is not a browser sends neither
    and still needs the operator token."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site: {site})"
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
        return f"cross-site request refused (Origin: {origin[:100]})"
    return None


LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


def trusted_for(host: str) -> list[str] | None:
    """The Host names a page bound to ``host`` answers to: loopback names on loopback, any
    name elsewhere (a page on a network interface is reached by names it cannot know)."""
    return LOOPBACK_HOSTS if is_loopback_host(host) else None


def build_app(routes: Sequence[BaseRoute], live: Live, *, trusted_hosts: list[str] | None) -> Starlette:
    """The app with its static routes; ``trusted_hosts``: the Host names it answers to (a page
    served on loopback refuses other names: a DNS-rebinding site cannot read it). None: any."""
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=trusted_hosts)] if trusted_hosts else []
    app = Starlette(routes=[*routes, *static_routes()], middleware=middleware)
    app.state.live = live
    return app


def page(name: str) -> Handler:
    async def serve(_: Request) -> Response:
        return FileResponse(STATIC / name, headers={"cache-control": "no-store"})

    return serve


def static_routes() -> list[Route | Mount]:
    return [
        Route("/favicon.ico", page("favicon.svg")),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
