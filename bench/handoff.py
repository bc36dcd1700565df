"""Hand-off between two nodes in one process on one private redis-server (AOF everysec), over the
in-memory transport: tasks per second moved from an origin to a peer, every step durable on both
sides (the origin's intent, the peer's adoption, the origin's handed_off record).

The origin ``a`` gets ``--tasks`` queued no-op tasks (not timed) and no worker; the peer ``b``
has enough worker slots to accept them all. Timed: ``--concurrency`` streams call
``a.handoff.offload("b", --batch)`` again and again until every task is handed off. Each call
is one offer, one group commit on ``a`` (the intent), one transfer (adopted and committed on
``b``), one group commit on ``a`` (handed_off). At the end ``a`` must hold nothing active and
count every task handed off, ``b`` must hold every task queued, and Redis must agree.

    python -m bench.handoff [--tasks 200000] [--batch 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import math
import sys
import time
from typing import Any

from bench._common import GcMonitor, RedisServer, Result, check, install_signal_handlers, make_specs, positive_int
from node import AdmissionConfig, LocalNode, NodeConfig, WorkerSpec
from node.handoff import MemoryTransport
from node.runtime.handoff import HandoffConfig
from node.store.keys import NodeKeys
from node.store.redis_store import RedisStore

TARGET = 50_000.0


def _config(args: argparse.Namespace, peers: tuple[str, ...]) -> NodeConfig:
    return NodeConfig(
        admission=AdmissionConfig(threshold=1.0, margin=0.0),
        handoff=HandoffConfig(peers=peers, auto=False, batch=args.batch, concurrency=args.concurrency),
        history=False,
    )


async def run(args: argparse.Namespace, res: Result) -> None:
    server = RedisServer().run()
    res["redis"] = {"mode": "private redis-server, TCP loopback", "version": server.version()}
    transport = MemoryTransport()
    a = await LocalNode.start("bench-a", server.url, config=_config(args, ("bench-b",)), transport=transport)
    b = await LocalNode.start("bench-b", server.url, config=_config(args, ()), transport=transport)
    try:
        for i in range(math.ceil(args.tasks / 10_000)):
            await b.register_worker(WorkerSpec(f"w{i}", concurrency=10_000))
        for i in range(0, args.tasks, 10_000):
            await a.submit(make_specs(min(10_000, args.tasks - i), args.mix))
        assert a.handoff is not None
        mon = GcMonitor()
        per_call: list[float] = []
        moved = 0
        agent = a.handoff

        async def stream() -> None:
            nonlocal moved
            while moved < args.tasks:
                t = time.perf_counter()
                r = await agent.offload("bench-b", args.batch)
                per_call.append(time.perf_counter() - t)
                if not r.handed_off:
                    if r.reason == "no task may be handed off":
                        return  # the other streams hold the rest
                    res.errors.append(f"an offload moved nothing after {moved}: {r.reason or r.refused}")
                    return
                moved += len(r.handed_off)

        gc.collect()
        with mon.active():
            t0 = time.perf_counter()
            await asyncio.gather(*(stream() for _ in range(args.concurrency)))
            elapsed = time.perf_counter() - t0
        sa, sb = (await a.stats()), (await b.stats())
        keys_a, keys_b = NodeKeys("bench-a"), NodeKeys("bench-b")
        stored: dict[str, Any] = {}
        store = a.store
        if isinstance(store, RedisStore):
            stored = store.run_sync(
                lambda r: {
                    "a_active": r.hlen(keys_a.active),
                    "b_active": r.hlen(keys_b.active),
                    "a_handed_off": int(r.hget(keys_a.counters, "handed_off") or 0),
                    "b_adopted": int(r.hget(keys_b.counters, "adopted") or 0),
                }
            )
    finally:
        await a.close()
        await b.close()
        server.stop()

    n = args.tasks
    check(res.errors, moved == n, f"handed off {moved} of {n}")
    check(res.errors, sa.totals.get("handed_off") == n, f"a counts {sa.totals.get('handed_off')} handed off")
    check(res.errors, sum(sa.active_by_status.values()) == 0, f"a still holds {sa.active_by_status}")
    check(res.errors, sb.totals.get("adopted") == n, f"b counts {sb.totals.get('adopted')} adopted")
    check(res.errors, sb.active_by_status.get("queued") == n, f"b holds {sb.active_by_status}")
    want = {"a_active": 0, "b_active": n, "a_handed_off": n, "b_adopted": n}
    check(res.errors, stored == want, f"Redis holds {stored}, expected {want}")
    rate = moved / elapsed if elapsed > 0 else float("nan")
    per_call.sort()
    res["unit"] = "tasks/s handed off (offer, durable intent, transfer durable at the peer, durable handed_off)"
    res["tasks_per_s"] = round(rate)
    res["elapsed_s"] = round(elapsed, 3)
    res["offload_calls"] = len(per_call)
    res["per_call_ms"] = {
        "p50": round(per_call[len(per_call) // 2] * 1e3, 2) if per_call else None,
        "max": round(per_call[-1] * 1e3, 2) if per_call else None,
    }
    res["redis"]["stored"] = stored
    res["gc_during_run"] = mon.report()
    res.row("tasks/s handed off", rate)
    res.row("elapsed s", elapsed)
    res.row("offload calls (batch)", f"{len(per_call):,} ({args.batch:,})")
    res.row("per call p50 ms", res["per_call_ms"]["p50"] or float("nan"))
    res.target("durable hand-off tasks/s", ">=", TARGET, res["tasks_per_s"], "tasks/s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.handoff", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tasks", type=positive_int, default=200_000, help="tasks to hand off")
    p.add_argument("--batch", type=positive_int, default=2000, help="tasks per offer and transfer (<= 10000)")
    p.add_argument("--concurrency", type=positive_int, default=2, help="offloads in flight at once (<= 16)")
    p.add_argument("--mix", action="store_true", help="mixed types/priorities/difficulties instead of uniform")
    args = p.parse_args(argv)
    install_signal_handlers()
    if args.batch > 10_000 or args.concurrency > 16:
        p.error("--batch must be <= 10000 and --concurrency <= 16")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    res = Result("handoff", args)
    return res.run_and_emit(lambda: asyncio.run(run(args, res)))


if __name__ == "__main__":
    sys.exit(main())
