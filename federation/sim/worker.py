"""A sweep's worker process: one simulation per line of JSON in, one line of JSON out.

``python -m federation.sim.worker`` reads ``{"key": ..., "config": {...}}`` lines on stdin and
answers each with ``{"key": ..., "result": {...}, "wall_s": ..., "events_per_s": ...}`` (or
``{"key": ..., "error": "..."}``) on stdout, until stdin closes. JSON both ways: nothing that
crosses the process boundary is pickled.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from federation.sim.config import SimConfig
from federation.sim.run import simulate
from node.errors import FedcoordError

__all__ = ["main", "run_cell"]


def run_cell(line: str) -> str:
    """One request line -> one answer line (without the newline). Also what a Ray task runs."""
    req = json.loads(line)
    key = req.get("key")
    try:
        res = simulate(SimConfig.from_record(req["config"]))
    except (FedcoordError, KeyError, TypeError, ValueError) as e:
        return json.dumps({"key": key, "error": f"{type(e).__name__}: {e}"})
    out: dict[str, Any] = {"key": key, "result": res.result, "wall_s": res.wall_s, "events_per_s": res.events_per_s}
    return json.dumps(out)


def main() -> int:
    for line in sys.stdin:
        if line.strip():
            sys.stdout.write(run_cell(line) + "\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
