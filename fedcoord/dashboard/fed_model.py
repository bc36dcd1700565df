"""What the federation view shows, from the rounds the ServerApp records (``rounds.jsonl``).

Only what the federation itself saw: each round's merged view of the nodes' privacy-filtered
summaries (noisy loads with their standard deviations, hand-off rates per node, completion
quantiles from the merged histograms) and what the nodes answered (the threshold each set, its
release status, the budget it has left). Never a node's raw counts. Hand-offs are drawn from
each node's released out and in rates: which peer got a task is not released (a count per pair
of nodes would be one more noisy cell per pair), so the flows go from senders to receivers
through the federation, not pair by pair.
"""

from __future__ import annotations

import json
import os
import re
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["RoundsTail", "federation_view"]

KEEP_ROUNDS = 720  # rounds kept for the charts (an hour at one round every 5 s)


class RoundsTail:
    """Reads new lines of a rounds file as they are appended. A partly written last line waits
    for the next read; a file replaced, cut short or rewritten from its start (its first line
    changed) is read again; a long file is read from its last ``start_bytes`` only (the charts
    keep ``keep`` rounds)."""

    def __init__(self, path: Path, keep: int = KEEP_ROUNDS, start_bytes: int = 8 << 20):
        self.path = path
        self.start_bytes = start_bytes
        self.rounds: deque[dict[str, Any]] = deque(maxlen=keep)
        self._offset = 0
        self._inode: int | None = None
        self._head = b""  # the file's first bytes when it was last read: a rewrite changes them

    def read(self) -> list[dict[str, Any]]:
        try:
            st = os.stat(self.path)
            with open(self.path, "rb") as f:
                head = f.read(256)
                if st.st_ino != self._inode or st.st_size < self._offset or not head.startswith(self._head):
                    self._inode, self._head = st.st_ino, head
                    self.rounds.clear()
                    self._offset = max(0, st.st_size - self.start_bytes)
                    if self._offset:  # start at a line's beginning
                        f.seek(self._offset - 1)
                        self._offset += len(f.readline()) - 1
                elif len(self._head) < len(head):
                    self._head = head
                if st.st_size <= self._offset:
                    return list(self.rounds)
                f.seek(self._offset)
                chunk = f.read(st.st_size - self._offset)
        except FileNotFoundError:
            return list(self.rounds)
        end = chunk.rfind(b"\n") + 1  # whole lines only
        for line in chunk[:end].splitlines():
            try:
                self.rounds.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a SuperLink killed mid-write
        self._offset += end
        return list(self.rounds)


def _natural(name: str) -> list[Any]:
    """n2 before n10."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _health(node: str, r: Mapping[str, Any]) -> str:
    if node in r.get("participants", ()):
        return "reporting"
    if node in r.get("missing", ()):
        return "missing"
    for who, why in r.get("dropped", ()):
        if who == node:
            return f"dropped: {why}"
    reason = r.get("reasons", {}).get(node)
    return f"no summary: {reason}" if reason else "not in this round"


def federation_view(
    rounds: Iterable[Mapping[str, Any]],
    *,
    node_links: Mapping[str, str] | None = None,
    flows_s: float = 300.0,
    series: int = 240,
) -> dict[str, Any]:
    """The federation view's JSON: nodes as of the last round, the rounds, budgets over time,
    completion quantiles, and the hand-off flows over the last ``flows_s``."""
    rs = list(rounds)
    links = dict(node_links or {})
    if not rs:
        return {"rounds": [], "nodes": [], "flows": {"out": {}, "in": {}}, "quantiles": [], "budget": {}, "last": None}
    last = rs[-1]
    known: dict[str, None] = {}
    for r in rs:
        for k in (*r.get("nodes", {}), *r.get("thresholds", {}), *r.get("missing", ())):
            # "supernode-ID": a SuperNode missing before it ever told its node id (the ServerApp's
            # placeholder); once it has, it is listed by its id: the placeholder stays only while
            # the last round still has it
            if not k.startswith("supernode-") or r is last:
                known.setdefault(k, None)
    for k in links:
        known.setdefault(k, None)
    nodes = []
    for nid in sorted(known, key=_natural):
        est = last.get("nodes", {}).get(nid)
        occupied = est.get("occupied") if est else None
        capacity = est.get("capacity") if est else None
        queue = None if occupied is None or capacity is None else max(0.0, occupied - capacity)
        nodes.append(
            {
                "id": nid,
                "health": _health(nid, last),
                "load": est.get("load") if est else None,
                "load_sd": est.get("load_sd") if est else None,
                "occupied": occupied,
                "capacity": capacity,
                "queue": queue,  # occupied beyond capacity: the released estimate of its line
                "threshold": last.get("thresholds", {}).get(nid),
                "policy": last.get("policies", {}).get(nid),
                "release": last.get("statuses", {}).get(nid),
                "budget_left": last.get("budget_left", {}).get(nid),
                "budget_spent": last.get("budget_spent", {}).get(nid),
                "handed_off_out_per_s": est.get("handed_off_out_per_s") if est else None,
                "handed_off_in_per_s": est.get("handed_off_in_per_s") if est else None,
                "url": links.get(nid),
            }
        )
    since = last["started_ns"] - int(flows_s * 1e9)
    recent = [r for r in rs if r["started_ns"] >= since]
    out: dict[str, float] = {}
    into: dict[str, float] = {}
    for r in recent:
        for nid, est in r.get("nodes", {}).items():
            out[nid] = out.get(nid, 0.0) + max(0.0, est.get("handed_off_out_per_s") or 0.0) / len(recent)
            into[nid] = into.get(nid, 0.0) + max(0.0, est.get("handed_off_in_per_s") or 0.0) / len(recent)
    tail = rs[-series:]
    budget: dict[str, list[tuple[int, float | None]]] = {}
    spent: dict[str, list[tuple[int, float | None]]] = {}
    for r in tail:
        at_ms = r["started_ns"] // 1_000_000
        for nid, left in r.get("budget_left", {}).items():
            budget.setdefault(nid, []).append((at_ms, left))
        for nid, x in r.get("budget_spent", {}).items():
            spent.setdefault(nid, []).append((at_ms, x))
    return {
        "last": {
            "round": last["round"],
            "started_ns": last["started_ns"],
            "latency_s": last.get("latency_s"),
            "participants": len(last.get("participants", ())),
            "missing": list(last.get("missing", ())),
            "asked": last.get("asked"),
            "federation_load": last.get("federation_load"),
            "capacity": last.get("capacity"),
            "handed_off_per_s": last.get("handed_off_per_s"),
            "throughput_per_s": last.get("throughput_per_s"),
            "errors": last.get("errors", []),
        },
        "nodes": nodes,
        "rounds": [
            {
                "round": r["round"],
                "at_ms": r["started_ns"] // 1_000_000,
                "latency_s": r.get("latency_s"),
                "participants": len(r.get("participants", ())),
                "missing": len(r.get("missing", ())),
                "load": (r.get("federation_load") or {}).get("value"),
                "load_sd": (r.get("federation_load") or {}).get("sd"),
                "handed_off_per_s": r.get("handed_off_per_s"),
                "throughput_per_s": r.get("throughput_per_s"),
            }
            for r in tail
        ],
        "flows": {
            "out": {k: round(v, 4) for k, v in out.items() if v > 0},
            "in": {k: round(v, 4) for k, v in into.items() if v > 0},
        },
        "flows_s": flows_s,
        "quantiles": last.get("completion_quantiles_s", []),
        "budget": budget,
        "budget_spent": spent,
    }
