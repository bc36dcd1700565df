"""What the federation costs: a round on the node itself, and a whole federation on this machine.

**On the node.** A node (``LocalNode`` on a private redis-server, served by a ``NodeServer`` on a
free loopback port) with ``--active`` queued tasks and 1 s windows; a ``NodeClient`` calls what
the ClientApp calls each round, ``ApplyFederation`` (a view of ``--view-nodes`` nodes) then
``Summary``, ``--calls`` times. Timed: each pair, end to end over gRPC. Target: under 10 ms.

**The federation** (``--federation-s`` seconds, 0 to skip): ``fedcoord up``'s federation (3
nodes, SuperLink, SuperNodes, demo workers and workload, rounds every ``--period-s``). Measured:
start to the first completed round (target <= 30 s), the longest gap between rounds (every
node's threshold is refreshed at least that often; target <= 20 s), the rounds' latency, and
the machine's CPU time per round (all processes: Flower spawns a ClientApp process per message).

    python -m bench.federation [--calls 200] [--federation-s 90]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench._common import RedisServer, Result, check, install_signal_handlers, percentile, positive_int

NODE_TARGET_MS = 10.0
FIRST_ROUND_TARGET_S = 30.0
REFRESH_TARGET_S = 20.0


def _cpu_s() -> float:
    """CPU seconds the whole machine spent busy so far (/proc/stat, all CPUs)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / 100.0  # USER_HZ


async def _node_side(args: argparse.Namespace, res: Result) -> None:
    from federation.aggregate import aggregate  # noqa: PLC0415
    from federation.privacy.schema import SCHEMA_VERSION, PrivacyCost, ReleasedSummary  # noqa: PLC0415
    from node import LocalNode, NodeConfig, TaskSpec  # noqa: PLC0415
    from node.rpc.client import AsyncNodeClient  # noqa: PLC0415
    from node.rpc.server import NodeServer  # noqa: PLC0415

    server = RedisServer().run()
    cfg = NodeConfig(window_s=1.0)
    cost = PrivacyCost("gaussian", 13.6, 184.96, 0.0081, 3, 1e-6, 0.5, 1.0, 0.5, 14)
    types = ("simple_qa", "quick_analysis", "analysis", "coding", "reasoning", "other")
    edges = cfg.privacy.completion_edges_s
    view_src = [
        ReleasedSummary(SCHEMA_VERSION, f"p{i}", 1, 1.0, types, (1,) * 6, (1,) * 6, (0,) * 6, (0,) * 6, (0,) * 6,
                        edges, (0,) * (len(edges) + 1), 5, 8, cost)
        for i in range(args.view_nodes)
    ]  # fmt: skip
    view = aggregate(view_src, round=1)
    try:
        async with LocalNode.open("bench-fed", server.url, config=cfg) as node:
            for i in range(0, args.active, 10_000):
                await node.submit([TaskSpec("coding") for _ in range(min(10_000, args.active - i))])
            async with NodeServer(node) as srv, AsyncNodeClient(srv.address, insecure=True) as c:
                await asyncio.sleep(1.2)  # a window closes: the first Summary has one to release
                times: list[float] = []
                released = 0
                for _ in range(args.calls):
                    t = time.perf_counter()
                    await c.apply_federation(view)
                    out = await c.summary()
                    times.append((time.perf_counter() - t) * 1e3)
                    released += out.released
    finally:
        server.stop()
    times.sort()
    p50, p99 = percentile(times, 50), percentile(times, 99)
    check(res.errors, released > 0, "no Summary released anything")
    res["node"] = {"calls": args.calls, "active_tasks": args.active, "view_nodes": args.view_nodes,
                   "p50_ms": round(p50, 3), "p99_ms": round(p99, 3), "max_ms": round(times[-1], 3)}  # fmt: skip
    res.row("ApplyFederation + Summary on the node, p50 / p99 ms", f"{p50:.2f} / {p99:.2f}")
    res.target("a round's cost on the node (p99)", "<=", NODE_TARGET_MS, p99, "ms")


def _federation(args: argparse.Namespace, res: Result) -> None:
    from federation.up import Federation, UpConfig  # noqa: PLC0415

    root = Path(tempfile.mkdtemp(prefix="bench-federation-"))
    fed = Federation(UpConfig(nodes=3, period_s=args.period_s), root)
    cpu0, t0 = _cpu_s(), time.monotonic()
    try:
        fed.start()
        while time.monotonic() - t0 < args.federation_s:
            fed.supervise()
            fed.rounds()
            time.sleep(0.5)
        rounds = fed.rounds()
    finally:
        fed.stop()
    cpu = _cpu_s() - cpu0
    check(res.errors, len(rounds) >= 2, f"only {len(rounds)} rounds")
    if len(rounds) < 2:
        return
    starts = [r["started_ns"] / 1e9 + r["latency_s"] for r in rounds]  # when each round completed
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    first = fed.first_round_s or float("nan")
    lat = [r["latency_s"] for r in rounds]
    res["federation"] = {
        "seconds": args.federation_s, "rounds": len(rounds), "first_round_s": round(first, 1),
        "max_gap_s": round(max(gaps), 2), "median_gap_s": round(statistics.median(gaps), 2),
        "latency_s": {"median": round(statistics.median(lat), 2), "max": round(max(lat), 2)},
        "machine_cpu_s_per_round": round(cpu / len(rounds), 2), "submitted": fed.submitted,
    }  # fmt: skip
    res.row("start to the first completed round s", f"{first:.1f}")
    res.row("gap between rounds median / max s", f"{statistics.median(gaps):.1f} / {max(gaps):.1f}")
    res.row("round latency median / max s", f"{statistics.median(lat):.1f} / {max(lat):.1f}")
    res.row("machine CPU per round s (everything)", f"{cpu / len(rounds):.1f}")
    res.target("start to the first completed round", "<=", FIRST_ROUND_TARGET_S, first, "s")
    res.target("every threshold refreshed at least every", "<=", REFRESH_TARGET_S, max(gaps), "s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.federation", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--calls", type=positive_int, default=200, help="ApplyFederation + Summary pairs timed")
    p.add_argument("--active", type=positive_int, default=10_000, help="queued tasks on the node")
    p.add_argument("--view-nodes", type=positive_int, default=100, help="nodes in the view applied")
    p.add_argument("--federation-s", type=float, default=90.0, help="seconds of a whole federation (0: skip)")
    p.add_argument("--period-s", type=float, default=10.0, help="seconds between its rounds")
    args = p.parse_args(argv)
    install_signal_handlers()
    res = Result("federation", args)

    def run() -> None:
        asyncio.run(_node_side(args, res))
        if args.federation_s > 0:
            _federation(args, res)

    return res.run_and_emit(run)


if __name__ == "__main__":
    sys.exit(main())
