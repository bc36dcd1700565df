"""The node view: a Starlette app over a running :class:`LocalNode`, on the node's own loop.

Pages: ``/`` (the node view). API (JSON): ``/api/overview``, ``/api/stream`` (server-sent
events of the overview), ``/api/tasks`` (filters: ``status`` several at once, ``type``,
``priority``, ``worker``; ``offset``/``limit``), ``/api/tasks/{id}`` (record, why it waits,
transitions), ``/api/dead`` (dead letters), ``/api/report``, ``/api/history?minutes=``.
Actions (operator token): ``POST /api/dead/{id}/requeue``, ``POST /api/workers/{id}/remove``.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fedcoord.dashboard import node_model
from fedcoord.dashboard.access import Access, Role
from fedcoord.dashboard.web import Live, error, guarded, json, page, static_routes, stream
from node.errors import FedcoordError, TaskNotFoundError, ValidationError, WorkerNotFoundError
from node.runtime.node import LocalNode

__all__ = ["node_app"]


def _failure(e: Exception) -> Response:
    if isinstance(e, ValidationError):
        return error(400, str(e), getattr(e, "field", None))
    if isinstance(e, TaskNotFoundError | WorkerNotFoundError):
        return error(404, str(e))
    if isinstance(e, FedcoordError):
        return error(409, str(e))
    raise e


def node_app(node: LocalNode, access: Access, *, live: Live | None = None, federation_url: str | None = None) -> Any:
    live = live or Live()

    async def overview(_: Request) -> Response:
        return json(await node_model.overview(node))

    async def live_stream(request: Request) -> Response:
        return await stream(request, live, lambda: node_model.overview(node))

    async def tasks(request: Request) -> Response:
        try:
            q = node_model.parse_task_query(request.query_params)
            return json(node_model.tasks(node, q))
        except FedcoordError as e:
            return _failure(e)

    async def task(request: Request) -> Response:
        try:
            return json(await node_model.task_detail(node, request.path_params["task_id"]))
        except FedcoordError as e:
            return _failure(e)

    async def dead(request: Request) -> Response:
        try:
            q = node_model.parse_task_query({k: v for k, v in request.query_params.items() if k in ("offset", "limit")})
            return json(await node_model.dead_letters(node, q.offset, q.limit))
        except FedcoordError as e:
            return _failure(e)

    async def report(_: Request) -> Response:
        return json(await node_model.report(node))

    async def history(request: Request) -> Response:
        raw = request.query_params.get("minutes", "60")
        if not raw.isdigit() or not 1 <= int(raw) <= 1440:
            return error(400, f"minutes: {raw!r} out of range (1..1440)", "minutes")
        return json(await node_model.history(node, int(raw)))

    async def requeue(request: Request) -> Response:
        tid = request.path_params["task_id"]
        try:
            await node.requeue(tid)
        except FedcoordError as e:
            return _failure(e)
        return json({"requeued": tid})

    async def remove_worker(request: Request) -> Response:
        wid = request.path_params["worker_id"]
        try:
            await node.deregister_worker(wid)
        except FedcoordError as e:
            return _failure(e)
        return json({"removed": wid})

    async def info(request: Request) -> Response:
        return json(
            {
                "node_id": node.node_id,
                "role": (access.role_of(request) or "viewer"),
                "federation_url": federation_url,
                "needs_token": access.viewer_token is not None,
            }
        )

    def read(handler: Any) -> Any:
        return guarded(access, Role.VIEWER, handler)

    def act(handler: Any) -> Any:
        return guarded(access, Role.OPERATOR, handler)

    routes = [
        Route("/", page("node.html")),
        Route("/api/info", read(info)),
        Route("/api/overview", read(overview)),
        Route("/api/stream", read(live_stream)),
        Route("/api/tasks", read(tasks)),
        Route("/api/tasks/{task_id:str}", read(task)),
        Route("/api/dead", read(dead)),
        Route("/api/report", read(report)),
        Route("/api/history", read(history)),
        Route("/api/dead/{task_id:str}/requeue", act(requeue), methods=["POST"]),
        Route("/api/workers/{worker_id:str}/remove", act(remove_worker), methods=["POST"]),
        *static_routes(),
    ]
    app = Starlette(routes=routes)
    app.state.live = live
    return app
