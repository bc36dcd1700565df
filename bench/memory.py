"""Memory of the node process: bytes per queued task (payload excluded), and flatness over a
long run of lifecycles.

Per queued task: ``--tasks`` no-op tasks with an empty payload are submitted (batches of
``--batch``) through the pure Core (outbox drained after each batch, as the runtime does) and
through LocalNode (on a private redis-server, which is another process); the growth of the
process is measured with tracemalloc (Python allocations) and, in a separate process without
tracemalloc, with the RSS from /proc/self/statm. Every measurement runs in a fresh child
process, after a warm-up batch (which stays queued, in the base) and gc.collect(), so nothing
from an earlier one is counted.

Flatness: ``--lifecycles`` submit/claim/complete lifecycles in batches through the Core (and
through LocalNode with ``--durable``), sampling RSS every ``--sample-every``; the first sample
is taken after that many lifecycles (warm-up). A leak is a trend, not a swing (the collector
and the allocator make RSS go up and down by a few MB): target, the peak of the second half of
the run <= 1.1 x the peak of the first half.

    python -m bench.memory [--tasks 1000000] [--lifecycles 1000000] [--durable]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import random
import subprocess
import sys
import time
import tracemalloc
from typing import Any

from bench._common import (
    RedisServer,
    Result,
    check,
    install_signal_handlers,
    make_specs,
    positive_int,
    rss_bytes,
)
from node import LocalNode, WorkerSpec
from node.core import Core, CoreConfig
from node.model import TaskStatus

TARGET_BYTES = 1024.0
TARGET_FLAT = 1.10
TICK_NS = 250_000_000
NODE_ID = "bench-memory"
WORKER = "w-mem"


# ---------------------------------------------------------------------- child measurements


class Meter:
    """Python heap (tracemalloc) or RSS, whichever this child measures."""

    def __init__(self, kind: str):
        self.kind = kind
        if kind == "trace":
            tracemalloc.start()

    def now(self) -> int:
        gc.collect()
        if self.kind == "trace":
            return tracemalloc.get_traced_memory()[0]
        return rss_bytes()


def _core_lifecycle(core: Core, batch: int, mix: bool, rng: random.Random) -> int:
    clock = time.time_ns
    core.submit(make_specs(batch, mix, rng), clock())
    core.drain()
    leases = core.claim(WORKER, batch, clock())
    core.drain()
    for lease in leases:
        core.complete(lease, b"", clock())
    out = core.drain()
    return sum(1 for t in out.finished.values() if t.status is TaskStatus.COMPLETED)


def child_queued_core(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    core = Core(CoreConfig(node_id=NODE_ID), random.Random(args.seed))
    core.emit_events = False
    core.submit(make_specs(args.batch, args.mix, rng), time.time_ns())  # warm-up: classes, names, dicts
    core.drain()
    meter = Meter(args._measure)
    base = meter.now()
    left = args.tasks
    while left > 0:
        n = min(args.batch, left)
        core.submit(make_specs(n, args.mix, rng), time.time_ns())
        core.drain()
        left -= n
    after = meter.now()
    queued = core.status_counts()[TaskStatus.QUEUED]
    return {"base": base, "after": after, "queued": queued, "tasks_in_core": len(core.tasks)}


async def _node_queued(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    async with LocalNode.open(NODE_ID, args._redis_url) as node:
        await node.register_worker(WorkerSpec(WORKER, skill=10, concurrency=args.batch))
        await node.submit(make_specs(args.batch, args.mix, rng))  # warm-up (stays queued, in the base)
        await asyncio.sleep(0.5)  # background loops (ticker, lock keeper) settle
        meter = Meter(args._measure)
        base = meter.now()
        left = args.tasks
        while left > 0:
            n = min(args.batch, left)
            ids = await node.submit(make_specs(n, args.mix, rng))
            left -= len(ids)
        await asyncio.sleep(0.5)
        after = meter.now()
        stats = await node.stats()
    return {
        "base": base,
        "after": after,
        "queued": stats.active_by_status.get("queued", 0),
        "submitted_total": stats.totals.get("submitted"),
    }


def child_queued_node(args: argparse.Namespace) -> dict[str, Any]:
    return asyncio.run(_node_queued(args))


def child_flat_core(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    core = Core(CoreConfig(node_id=NODE_ID), random.Random(args.seed))
    core.emit_events = False
    core.register_worker(WorkerSpec(WORKER, skill=10, concurrency=args.batch), time.time_ns())
    start_rss = rss_bytes()
    samples: list[tuple[int, int]] = []
    done = 0
    next_sample = args.sample_every
    last_tick = time.time_ns()
    t0 = time.perf_counter()
    while done < args.lifecycles:
        done += _core_lifecycle(core, min(args.batch, args.lifecycles - done), args.mix, rng)
        now = time.time_ns()
        if now - last_tick >= TICK_NS:  # as the runtime's ticker
            core.tick(now)
            core.drain()
            last_tick = now
        if done >= next_sample:
            samples.append((done, rss_bytes()))
            next_sample += args.sample_every
    return {
        "start_rss": start_rss,
        "samples": samples,
        "completed": done,
        "active_left": len(core.tasks),
        "elapsed_s": time.perf_counter() - t0,
    }


async def _flat_node(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    async with LocalNode.open(NODE_ID, args._redis_url) as node:
        await node.register_worker(WorkerSpec(WORKER, skill=10, concurrency=args.batch))
        start_rss = rss_bytes()
        samples: list[tuple[int, int]] = []
        done = 0
        errors = 0
        next_sample = args.sample_every
        t0 = time.perf_counter()
        while done < args.lifecycles:
            n = min(args.batch, args.lifecycles - done)
            await node.submit(make_specs(n, args.mix, rng))
            got = 0
            while got < n:
                leases = await node.claim(WORKER, n - got, wait_s=1.0)
                got += len(leases)
                rs = await asyncio.gather(*(node.complete(lease) for lease in leases), return_exceptions=True)
                errors += sum(1 for r in rs if r is not None)
                done += sum(1 for r in rs if r is None)
            if done >= next_sample:
                samples.append((done, rss_bytes()))
                next_sample += args.sample_every
        elapsed = time.perf_counter() - t0
        stats = await node.stats()
    return {
        "start_rss": start_rss,
        "samples": samples,
        "completed": done,
        "complete_errors": errors,
        "active_left": sum(stats.active_by_status.values()),
        "totals": stats.totals,
        "elapsed_s": elapsed,
    }


def child_flat_node(args: argparse.Namespace) -> dict[str, Any]:
    return asyncio.run(_flat_node(args))


CHILDREN = {
    "queued-core": child_queued_core,
    "queued-node": child_queued_node,
    "flat-core": child_flat_core,
    "flat-node": child_flat_node,
}


# ---------------------------------------------------------------------- parent


def spawn(args: argparse.Namespace, kind: str, measure: str = "rss", redis_url: str = "") -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "bench.memory",
        "--tasks", str(args.tasks),
        "--batch", str(args.batch),
        "--lifecycles", str(args.lifecycles),
        "--sample-every", str(args.sample_every),
        "--seed", str(args.seed),
        "--_child", kind,
        "--_measure", measure,
        "--_redis-url", redis_url,
    ]  # fmt: skip
    if args.mix:
        cmd.append("--mix")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {kind}/{measure} exited with {proc.returncode}")
    out: dict[str, Any] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    return out


def _flat_summary(res: Result, label: str, r: dict[str, Any]) -> dict[str, Any]:
    samples = r["samples"]
    mib = 2**20
    if not samples:
        res.errors.append(f"{label}: no RSS sample (fewer lifecycles than --sample-every)")
        return {"samples": []}
    first, last, peak = samples[0][1], samples[-1][1], max(s[1] for s in samples)
    summary = {
        "start_rss_mb": round(r["start_rss"] / mib, 1),
        "first_mb": round(first / mib, 1),
        "last_mb": round(last / mib, 1),
        "max_mb": round(peak / mib, 1),
        "last_over_first": round(last / first, 4),
        "second_half_peak_over_first_half_peak": round(_halves_ratio(samples), 4),
        "samples_mb": [[n, round(b / mib, 1)] for n, b in samples],
        "completed": r["completed"],
        "lifecycles_per_s": round(r["completed"] / r["elapsed_s"]),
    }
    res.row(f"{label} RSS first/last/max MB", f"{first / mib:.1f} / {last / mib:.1f} / {peak / mib:.1f}")
    res.target(
        f"{label} RSS peak, 2nd half / 1st half of the run",
        "<=",
        TARGET_FLAT,
        summary["second_half_peak_over_first_half_peak"],
        "ratio",
    )
    return summary


def _halves_ratio(samples: list[list[int]]) -> float:
    half = max(1, len(samples) // 2)
    first = max(b for _, b in samples[:half])
    second = max(b for _, b in samples[half:]) if samples[half:] else first
    return second / first


def parent(args: argparse.Namespace, res: Result) -> None:
    res["unit"] = "bytes per queued task (payload excluded: empty payloads)"
    server = RedisServer().run()
    try:
        res["redis"] = {"mode": "private redis-server, TCP loopback", "version": server.version()}
        queued: dict[str, Any] = {}
        for path in ("core", "node"):
            per: dict[str, Any] = {}
            for measure in ("trace", "rss"):
                if path == "node":
                    c = server.client()
                    c.flushall()
                    c.close()
                r = spawn(args, f"queued-{path}", measure, server.url)
                want = args.tasks + args.batch  # the warm-up batch stays queued (in the base)
                check(res.errors, r["queued"] == want, f"{path}/{measure}: {r['queued']} queued != {want}")
                if path == "node":
                    got = r["submitted_total"]
                    check(res.errors, got == want, f"node/{measure}: totals submitted {got} != {want}")
                per[f"{measure}_bytes_per_task"] = round((r["after"] - r["base"]) / args.tasks, 1)
                per[f"{measure}_growth_mb"] = round((r["after"] - r["base"]) / 2**20, 1)
            queued[path] = per
            res.row(
                f"{path}: bytes/queued task",
                f"tracemalloc {per['trace_bytes_per_task']:.0f}, RSS {per['rss_bytes_per_task']:.0f}",
            )
            worst = max(per["trace_bytes_per_task"], per["rss_bytes_per_task"])
            res.target(f"{path} bytes per queued task (max of tracemalloc, RSS)", "<=", TARGET_BYTES, worst, "bytes")
        res["queued"] = queued

        flat: dict[str, Any] = {}
        r = spawn(args, "flat-core")
        check(res.errors, r["completed"] == args.lifecycles, f"flat-core completed {r['completed']}")
        check(res.errors, r["active_left"] == 0, f"flat-core: {r['active_left']} tasks left active")
        flat["core"] = _flat_summary(res, "core", r)
        if args.durable:
            c = server.client()
            c.flushall()
            c.close()
            r = spawn(args, "flat-node", redis_url=server.url)
            n = args.lifecycles
            check(res.errors, r["completed"] == n, f"flat-node completed {r['completed']} != {n}")
            check(res.errors, r["complete_errors"] == 0, f"flat-node: {r['complete_errors']} complete() errors")
            check(res.errors, r["active_left"] == 0, f"flat-node: {r['active_left']} tasks left active")
            check(res.errors, r["totals"].get("completed") == n, f"flat-node totals {r['totals']}")
            flat["node"] = _flat_summary(res, "node", r)
        res["flatness"] = flat
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.memory", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tasks", type=positive_int, default=1_000_000, help="queued tasks measured (N)")
    p.add_argument("--batch", type=positive_int, default=1000, help="tasks per submit / claim (<= 10000)")
    p.add_argument("--lifecycles", type=positive_int, default=1_000_000, help="lifecycles of the flatness run")
    p.add_argument("--sample-every", type=positive_int, default=100_000, help="RSS sample interval (lifecycles)")
    p.add_argument("--durable", action="store_true", help="also run the flatness test through LocalNode")
    p.add_argument("--mix", action="store_true", help="mixed types/priorities/difficulties")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--_child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--_measure", choices=("rss", "trace"), default="rss", help=argparse.SUPPRESS)
    p.add_argument("--_redis-url", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    install_signal_handlers()
    if args.batch > 10_000:
        p.error("--batch must be <= 10000 (Limits.max_batch)")
    if args._child:
        out = CHILDREN[args._child](args)
        sys.stdout.write(json.dumps(out) + "\n")
        return 0
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    res = Result("memory", args)
    return res.run_and_emit(lambda: parent(args, res))


if __name__ == "__main__":
    sys.exit(main())
