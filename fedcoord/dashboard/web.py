"""Pieces both dashboards share: JSON responses and errors, the live stream, static files."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from fedcoord.dashboard.access import Access, Denied, Role

__all__ = ["STATIC", "Handler", "Live", "error", "guarded", "json", "page", "static_routes", "stream"]

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


def guarded(access: Access, need: Role, handler: Handler) -> Handler:
    async def run(request: Request) -> Response:
        try:
            access.check(request, need)
        except Denied as e:
            return error(e.status, e.message)
        return await handler(request)

    return run


class Live:
    """Tells open streams the process is closing (so uvicorn's shutdown need not wait them out)."""

    def __init__(self, period_s: float = 0.5, keepalive_s: float = 15.0):
        self.period_s = period_s
        self.keepalive_s = keepalive_s
        self.closed = False  # set from any thread: open streams end within period_s
        self.streams = 0


async def stream(request: Request, live: Live, snapshot: Callable[[], Awaitable[Any]]) -> Response:
    """Server-sent events: the snapshot whenever it changed, checked every ``period_s``; a
    comment line to keep proxies from closing an idle stream. The browser's EventSource
    reconnects by itself after a restart (``retry: 1000``)."""

    async def events() -> AsyncIterator[bytes]:
        live.streams += 1
        try:
            yield b"retry: 1000\n\n"
            last: bytes | None = None
            idle_s = 0.0
            while not live.closed:
                try:
                    body = orjson.dumps(await snapshot(), option=orjson.OPT_NON_STR_KEYS)
                except Exception as e:  # noqa: BLE001 - the stream says what failed and goes on
                    body = orjson.dumps({"error": f"{type(e).__name__}: {e}"})
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


def page(name: str) -> Handler:
    async def serve(_: Request) -> Response:
        return FileResponse(STATIC / name, headers={"cache-control": "no-store"})

    return serve


def static_routes() -> list[Route | Mount]:
    return [
        Route("/favicon.ico", page("favicon.svg")),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
