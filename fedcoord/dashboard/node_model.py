"""What the node view shows, as JSON-ready dicts built from a running :class:`LocalNode`.

Every number comes from the node itself (its core's counters and the store), read when asked:
the dashboard keeps no copy, so it is right after a restart. Nothing here scans the tasks
except a filtered task page, which stops when the page is full.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

from node.core.queries import TaskQuery
from node.core.workers import WorkerInfo
from node.errors import ValidationError
from node.model import PRIORITY_ORDER, Priority, Task, TaskStatus
from node.runtime.node import LocalNode

__all__ = ["MAX_PAGE", "dead_letters", "history", "overview", "parse_task_query", "report", "task_detail", "tasks"]

MAX_PAGE = 500
_NS = 1_000_000_000
_ACTIVE = [s for s in TaskStatus if not s.terminal]
_STATUS = {s.value: s for s in TaskStatus}
_PRIORITY = {p.value: p for p in Priority}


def _age_s(now_ns: int, at_ns: int | None) -> float | None:
    return None if at_ns is None else round(max(0.0, (now_ns - at_ns) / _NS), 3)


def _task_row(t: Task, now_ns: int) -> dict[str, Any]:
    return {
        "id": t.id,
        "type": t.spec.type,
        "status": t.status.value,
        "priority": str(t.spec.priority),
        "difficulty": t.spec.difficulty,
        "worker": t.assigned_worker,
        "attempt": t.attempt,
        "failures": t.failures,
        "age_s": _age_s(now_ns, t.created_ns),
        "created_ns": t.created_ns,
        "finished_ns": t.finished_ns,
        "error": t.error,
        "from_node": t.from_node,
        "owner_node": t.owner_node,
        "handoff_peer": t.handoff_peer,
    }


_WORKER_FIELDS = tuple(f.name for f in dataclasses.fields(WorkerInfo))


def _shallow(obj: Any) -> dict[str, Any]:
    """A flat dataclass as a dict (``dataclasses.asdict`` deep-copies: 20 us a worker)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _worker_row(w: WorkerInfo) -> dict[str, Any]:
    d = {k: getattr(w, k) for k in _WORKER_FIELDS}
    d["capabilities"] = list(w.capabilities)
    d["load"] = round(w.active / w.concurrency, 3) if w.concurrency else 0.0
    d["success_rate"] = round(w.success_rate, 4)
    d["avg_completion_s"] = round(w.avg_completion_s, 4)
    d["busy_s"] = round(w.busy_s, 3)
    return d


async def overview(node: LocalNode, *, now_ns: int | None = None, flows_s: float = 300.0) -> dict[str, Any]:
    """The live part of the node view: pushed to open pages on every change (cheap: counters)."""
    now = time.time_ns() if now_ns is None else now_ns
    load = node.load()
    lines = node.queue_lines()
    by_priority: dict[str, dict[str, Any]] = {
        p.value: {"depth": n, "oldest_age_s": None} for p, n in node.queue_depths().items()
    }
    for q in lines:
        row = by_priority[q.priority.value]
        age = _age_s(now, q.oldest_queued_ns)
        if age is not None and (row["oldest_age_s"] is None or age > row["oldest_age_s"]):
            row["oldest_age_s"] = age
    workers = [_worker_row(w) for w in await node.workers()]
    agent = node.handoff
    privacy = node.privacy_status()
    return {
        "node_id": node.node_id,
        "state": node.state.value,
        "taken_s": round(now / _NS, 3),
        "load": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in load._asdict().items()},
        "threshold": round(node.threshold(), 4),
        "active": {s.value: n for s, n in node.status_counts().items()},
        "queues": [{"priority": p, **row} for p, row in by_priority.items()],
        "oldest_queued_age_s": round(node.oldest_queued_age_s(), 3),
        "lines": [
            {
                "capabilities": list(q.capabilities),
                "difficulty": q.difficulty,
                "priority": q.priority.value,
                "depth": q.depth,
                "oldest_age_s": _age_s(now, q.oldest_queued_ns),
                "takers": q.takers,
            }
            for q in lines[:200]
        ],
        "types": dict(sorted(node.type_counts().items(), key=lambda kv: -kv[1])[:50]),
        "totals": node.totals(),
        "workers": sorted(workers, key=lambda w: w["id"]),
        "handoff": None
        if agent is None
        else {"stats": dict(agent.stats), "to_peers": _recent(agent.recent, now, flows_s)},
        "privacy": _shallow(privacy) if privacy.enabled else None,
    }


def _recent(recent: Any, now_ns: int, window_s: float) -> dict[str, int]:
    """Tasks handed to each peer over the last ``window_s`` (the agent's log, newest last)."""
    since = now_ns - int(window_s * _NS)
    out: dict[str, int] = {}
    for at, peer, n in reversed(recent):
        if at < since:
            break
        out[peer] = out.get(peer, 0) + n
    return out


def _one(params: Mapping[str, str], name: str) -> str | None:
    v = params.get(name)
    return v if v else None


def _int(params: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise ValidationError(name, f"{raw!r} is not a whole number") from None
    if not lo <= v <= hi:
        raise ValidationError(name, f"{v} out of range", limit=f"{lo}..{hi}")
    return v


def parse_task_query(params: Mapping[str, str]) -> TaskQuery:
    """A task filter from query parameters: ``status`` (comma-separated, several at once),
    ``type``, ``priority``, ``worker``, ``offset``, ``limit``. Unknown values are refused by name."""
    statuses: set[TaskStatus] = set()
    for part in (params.get("status") or "").split(","):
        raw = part.strip()
        if not raw:
            continue
        st = _STATUS.get(raw)
        if st is None or st.terminal:
            allowed = ", ".join(s.value for s in _ACTIVE)
            raise ValidationError("status", f"{raw!r} is not an active status", limit=allowed)
        statuses.add(st)
    prio_raw = _one(params, "priority")
    prio = None
    if prio_raw is not None:
        prio = _PRIORITY.get(prio_raw)
        if prio is None:
            raise ValidationError("priority", f"{prio_raw!r} unknown", limit=", ".join(p.value for p in PRIORITY_ORDER))
    return TaskQuery(
        statuses=frozenset(statuses),
        type=_one(params, "type"),
        priority=prio,
        worker=_one(params, "worker"),
        offset=_int(params, "offset", 0, 0, 10_000_000),
        limit=_int(params, "limit", 50, 1, MAX_PAGE),
    )


def tasks(node: LocalNode, q: TaskQuery, *, now_ns: int | None = None) -> dict[str, Any]:
    now = time.time_ns() if now_ns is None else now_ns
    page = node.find_tasks(q)
    return {
        "tasks": [_task_row(t, now) for t in page.tasks],
        "total": page.total,
        "more": page.more,
        "offset": q.offset,
        "limit": q.limit,
    }


async def task_detail(node: LocalNode, task_id: str, *, now_ns: int | None = None) -> dict[str, Any]:
    """One task: its record, why it is where it is, and its transitions (when the node keeps them)."""
    now = time.time_ns() if now_ns is None else now_ns
    t = await node.get(task_id)  # raises TaskNotFoundError
    row = _task_row(t, now)
    row["dependencies"] = list(t.spec.dependencies)
    row["required_capabilities"] = list(t.spec.required_capabilities)
    row["hops"] = t.hops
    row["why"] = node.explain(t)
    row["story"] = [
        {
            "at_ns": e.at_ns,
            "kind": e.kind.value,
            "status": e.status.value,
            "worker": e.worker_id,
            "attempt": e.attempt,
            "error": e.error,
        }
        for e in node.story(task_id)
    ]
    return row


async def dead_letters(node: LocalNode, offset: int, limit: int, *, now_ns: int | None = None) -> dict[str, Any]:
    now = time.time_ns() if now_ns is None else now_ns
    total, found = await node.dead_letters(offset, limit)
    return {"total": total, "offset": offset, "limit": limit, "tasks": [_task_row(t, now) for t in found]}


async def report(node: LocalNode) -> dict[str, Any]:
    return (await node.report()).to_dict()


async def history(node: LocalNode, minutes: int) -> dict[str, Any]:
    """Per-minute rows (throughput, quantiles, the node's threshold and load as sampled)."""
    return {"minutes": minutes, "rows": await node.history(minutes)}
