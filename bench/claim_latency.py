"""Claim latency through LocalNode with a deep queue (default 100,000 queued tasks).

The queue is filled first (untimed, submits of 10,000). Then one worker, alone, repeats:
``await node.claim(w, 1)`` (timed with perf_counter_ns around the await, nothing else), then
``await node.complete(lease)`` (timed separately, for reference). The first ``--warmup`` claims
are not recorded. A claim returns once its lease is durable, so each one includes a group
commit to Redis (AOF everysec). Reported: p50/p90/p99/p99.9/max of the claim call.

    python -m bench.claim_latency [--queued 100000] [--claims 20000] [--embedded]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import random
import sys
import time

from bench._common import (
    GcMonitor,
    RedisServer,
    Result,
    check,
    gc_tune,
    install_signal_handlers,
    make_specs,
    make_temp_dir,
    positive_int,
    summarize_ns,
)
from node import LocalNode, WorkerSpec

TARGET_P99_US = 1000.0
NODE_ID = "bench-claim"
WORKER = "w-latency"


async def run(args: argparse.Namespace, res: Result) -> None:
    server = None
    if args.embedded:
        data_dir = make_temp_dir("claim")
        node = await LocalNode.start(NODE_ID, data_dir=data_dir)
        res["redis"] = {"mode": "embedded (LocalNode's own redis-server, unix socket)"}
    else:
        server = RedisServer().run()
        res["redis"] = {"mode": "private redis-server, TCP loopback", "version": server.version()}
        node = await LocalNode.start(NODE_ID, server.url)
    claim_ns: list[int] = []
    complete_ns: list[int] = []
    try:
        rng = random.Random(args.seed)
        left = args.queued
        t_fill = time.perf_counter()
        while left > 0:
            ids = await node.submit(make_specs(min(10_000, left), args.mix, rng))
            left -= len(ids)
        t_fill = time.perf_counter() - t_fill
        await node.register_worker(WorkerSpec(WORKER, skill=10, concurrency=1))
        before = await node.stats()
        perf = time.perf_counter_ns
        claim, complete = node.claim, node.complete
        mon = GcMonitor()
        gc.collect()
        for _ in range(args.warmup):
            (lease,) = await claim(WORKER, 1)
            await complete(lease)
        with mon.active():
            for _ in range(args.claims):
                t0 = perf()
                leases = await claim(WORKER, 1)
                t1 = perf()
                if len(leases) != 1:
                    raise RuntimeError(f"claim returned {len(leases)} leases with a full queue")
                await complete(leases[0])
                t2 = perf()
                claim_ns.append(t1 - t0)
                complete_ns.append(t2 - t1)
        after = await node.stats()
    finally:
        await node.close()
        if server is not None:
            server.stop()

    n_done = args.warmup + args.claims
    q0 = before.active_by_status.get("queued", 0)
    q1 = after.active_by_status.get("queued", 0)
    check(res.errors, q0 == args.queued, f"queued before {q0} != {args.queued}")
    check(res.errors, q1 == args.queued - n_done, f"queued after {q1} != {args.queued - n_done}")
    check(res.errors, after.totals.get("completed") == n_done, f"completed {after.totals.get('completed')} != {n_done}")
    check(res.errors, after.totals.get("submitted") == args.queued, f"submitted {after.totals.get('submitted')}")
    check(res.errors, len(claim_ns) == args.claims, f"{len(claim_ns)} claims timed, {args.claims} asked")

    c = summarize_ns(claim_ns)
    res["unit"] = "microseconds per claim call (await node.claim(w, 1), lease durable on return)"
    res["queued_at_start"] = q0
    res["queued_at_end"] = q1
    res["fill_s"] = round(t_fill, 3)
    res["claim"] = {k: round(v, 1) for k, v in c.items()}
    res["complete"] = {k: round(v, 1) for k, v in summarize_ns(complete_ns).items()}
    res["gc_during_run"] = mon.report()
    res.row("queued start / end", f"{q0:,} / {q1:,}")
    for k in ("p50_us", "p90_us", "p99_us", "p999_us", "max_us"):
        res.row(f"claim {k}", c[k])
    res.row("complete p50 / p99 us", f"{res['complete']['p50_us']} / {res['complete']['p99_us']}")
    g = mon.report()
    res.row("gc gen2 collections (max ms)", f"{g['collections']['gen2']} ({g['max_pause_ms']['gen2']})")
    res.target("claim p99", "<=", TARGET_P99_US, round(c["p99_us"], 1), "us")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.claim_latency", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--queued", type=positive_int, default=100_000, help="tasks queued before measuring")
    p.add_argument("--claims", type=positive_int, default=20_000, help="timed claim calls (M)")
    p.add_argument("--warmup", type=int, default=1000, help="untimed claim+complete rounds first")
    p.add_argument("--mix", action="store_true", help="mixed types/priorities/difficulties in the queue")
    p.add_argument("--embedded", action="store_true", help="use LocalNode's embedded redis-server")
    p.add_argument("--gc-tune", action="store_true", help="gc.set_threshold(100_000, 50, 100) first")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    install_signal_handlers()
    if args.warmup + args.claims > args.queued:
        p.error("--warmup + --claims must not exceed --queued (the queue must never run dry)")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    res = Result("claim_latency", args)
    res["gc"] = gc_tune(args.gc_tune)
    return res.run_and_emit(lambda: asyncio.run(run(args, res)))


if __name__ == "__main__":
    sys.exit(main())
