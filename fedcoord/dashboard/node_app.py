"""The node view: a Starlette app over a running :class:`LocalNode`, on the node's own loop.

Pages: ``/`` (the node view). API (JSON): ``/api/overview``, ``/api/stream`` (server-sent
events of the overview), ``/api/tasks`` (filters: ``status`` several at once, ``type``,
``priority``, ``worker``; ``offset``/``limit``), ``/api/tasks/{id}`` (record, why it waits,
transitions), ``/api/dead`` (dead letters), ``/api/report``, ``/api/history?minutes=``.
Actions (operator token): ``POST /api/dead/{id}/requeue``, ``POST /api/workers/{id}/remove``.
Ids may hold ``/``: the routes take the rest of the path.

A node that is not serving (its store down, taken over, closing) still answers the overview
with its state and why; the other reads answer 503 meanwhile.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fedcoord.dashboard import node_model
from fedcoord.dashboard.access import Access
from fedcoord.dashboard.web import Guard, Live, build_app, error, json, page, stream
from node.errors import (
    FedcoordError,
    FencedError,
    NodeClosedError,
    StoreUnavailableError,
    TaskNotFoundError,
    ValidationError,
    WorkerNotFoundError,
)
from node.runtime.node import LocalNode

__all__ = ["node_app"]


def _failure(e: FedcoordError) -> Response:
    if isinstance(e, ValidationError):
        return error(400, str(e), e.field)
    if isinstance(e, TaskNotFoundError | WorkerNotFoundError):
        return error(404, str(e))
    if isinstance(e, StoreUnavailableError | FencedError | NodeClosedError):
        return error(503, str(e))  # the node is not serving now
    return error(409, str(e))


def _answers(handler: Callable[[Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[Response]]:
    """A handler's result as JSON; the node's refusals as their HTTP status."""

    async def run(request: Request) -> Response:
        try:
            return json(await handler(request))
        except FedcoordError as e:
            return _failure(e)

    return run


def node_app(
    node: LocalNode, access: Access, *, live: Live | None = None, trusted_hosts: list[str] | None = None
) -> Any:
    live = live or Live()
    guard = Guard(access)

    async def snapshot() -> dict[str, Any]:
        try:
            return await node_model.overview(node)
        except FedcoordError as e:  # not serving: say so, and why
            return {"node_id": node.node_id, "state": node.state.value, "error": str(e)}

    async def overview(_: Request) -> Any:
        return await snapshot()

    async def live_stream(request: Request) -> Response:
        return await stream(request, live, snapshot)

    async def tasks(request: Request) -> Any:
        return node_model.tasks(node, node_model.parse_task_query(request.query_params))

    async def task(request: Request) -> Any:
        return await node_model.task_detail(node, request.path_params["task_id"])

    async def dead(request: Request) -> Any:
        q = node_model.parse_task_query({k: v for k, v in request.query_params.items() if k in ("offset", "limit")})
        return await node_model.dead_letters(node, q.offset, q.limit)

    async def report(_: Request) -> Any:
        return await node_model.report(node)

    async def history(request: Request) -> Any:
        raw = request.query_params.get("minutes", "60")
        if not raw.isdigit() or not 1 <= int(raw) <= 1440:
            raise ValidationError("minutes", f"{raw!r} out of range", limit="1..1440")
        return await node_model.history(node, int(raw))

    async def requeue(request: Request) -> Any:
        tid = request.path_params["task_id"]
        await node.requeue(tid)
        return {"requeued": tid}

    async def remove_worker(request: Request) -> Any:
        wid = request.path_params["worker_id"]
        await node.deregister_worker(wid)
        return {"removed": wid}

    async def info(request: Request) -> Any:
        return {
            "node_id": node.node_id,
            "role": access.role_of(request) or "viewer",
            "needs_token": access.viewer_token is not None,
        }

    routes = [
        Route("/", page("node.html")),
        Route("/api/info", guard.read(_answers(info))),
        Route("/api/overview", guard.read(_answers(overview))),
        Route("/api/stream", guard.read(live_stream, stream=True)),
        Route("/api/tasks", guard.read(_answers(tasks))),
        Route("/api/tasks/{task_id:path}", guard.read(_answers(task))),
        Route("/api/dead", guard.read(_answers(dead))),
        Route("/api/report", guard.read(_answers(report))),
        Route("/api/history", guard.read(_answers(history))),
        Route("/api/dead/{task_id:path}/requeue", guard.act(_answers(requeue)), methods=["POST"]),
        Route("/api/workers/{worker_id:path}/remove", guard.act(_answers(remove_worker)), methods=["POST"]),
    ]
    return build_app(routes, live, trusted_hosts=trusted_hosts)
