"""Durable task lifecycles through LocalNode (Python API) on a private redis-server (AOF everysec).

``--producers`` coroutines submit batches of ``--batch`` distinct no-op specs (they pause while
``--max-backlog`` submitted tasks are not yet completed, so the queue stays bounded);
``--workers`` coroutines each loop ``claim(max_tasks=--claim, wait_s=--wait-s)`` and complete
every lease with concurrent ``node.complete`` calls (asyncio.gather). Only lifecycles whose
complete was acknowledged (durable) count. The rate is taken over the steady part: between the
moments when ``--trim`` and ``1 - --trim`` of all tasks had been acknowledged. At the end the
node's totals (and the counters hash in Redis) must say completed == submitted == --tasks.

    python -m bench.durable [--tasks 300000] [--producers 2] [--workers 4] [--claim 100] [--embedded]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import random
import subprocess
import sys
import time
from typing import Any

from bench._common import (
    GcMonitor,
    RedisServer,
    Result,
    check,
    cpu_s,
    gc_tune,
    install_signal_handlers,
    make_specs,
    make_temp_dir,
    peak_rss_bytes,
    positive_int,
    process_tree,
)
from node import LocalNode, NodeConfig, WorkerSpec
from node.store.keys import NodeKeys
from node.store.redis_store import RedisStore

TARGET = 15_000.0
NODE_ID = "bench-durable"


class Counters:
    def __init__(self, total: int, max_backlog: int):
        self.total = total
        self.max_backlog = max_backlog
        self.submitted = 0  # acknowledged by submit()
        self.completed = 0  # acknowledged by complete()
        self.complete_errors: list[str] = []
        self.acks: list[tuple[float, int]] = []  # (perf_counter, completes acknowledged at once)
        self.room = asyncio.Event()
        self.all_done = asyncio.Event()
        self.claims = 0
        self.empty_claims = 0


async def producer(node: LocalNode, c: Counters, n_tasks: int, *, batch: int, mix: bool, seed: int) -> None:
    rng = random.Random(seed)
    left = n_tasks
    while left > 0:
        while c.submitted - c.completed >= c.max_backlog:
            c.room.clear()
            await c.room.wait()
        specs = make_specs(min(batch, left), mix, rng)
        ids = await node.submit(specs)
        if len(ids) != len(specs):
            raise RuntimeError(f"submit returned {len(ids)} ids for {len(specs)} specs")
        c.submitted += len(ids)
        left -= len(ids)


async def worker(node: LocalNode, c: Counters, wid: str, k: int, wait_s: float) -> None:
    perf = time.perf_counter
    while not c.all_done.is_set():
        leases = await node.claim(wid, k, wait_s=wait_s)
        c.claims += 1
        if not leases:
            c.empty_claims += 1
            continue
        results = await asyncio.gather(*(node.complete(lease) for lease in leases), return_exceptions=True)
        ok = 0
        for r in results:
            if r is None:
                ok += 1
            else:
                c.complete_errors.append(repr(r))
        c.completed += ok
        c.acks.append((perf(), ok))
        if c.submitted - c.completed < c.max_backlog:
            c.room.set()
        if c.completed >= c.total:
            c.all_done.set()


async def _until_done(c: Counters, tasks: list[asyncio.Task[None]], timeout_s: float, res: Result) -> None:
    """Wait until every task is completed, or a producer/worker fails, or the timeout."""
    waiter = asyncio.create_task(c.all_done.wait())
    pending: set[asyncio.Task[Any]] = {waiter, *tasks}
    deadline = time.monotonic() + timeout_s
    try:
        while not c.all_done.is_set():
            finished, pending = await asyncio.wait(
                pending, timeout=max(0.0, deadline - time.monotonic()), return_when=asyncio.FIRST_COMPLETED
            )
            if not finished:
                res.errors.append(f"timed out after {timeout_s}s: {c.completed} of {c.total} completed")
                return
            if any(t is not waiter and t.exception() is not None for t in finished):
                return  # reported by the caller
    finally:
        waiter.cancel()


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def steady_rate(acks: list[tuple[float, int]], total: int, trim: float) -> dict[str, float]:
    """Rate between the moments when trim*total and (1-trim)*total completes were acknowledged."""
    acks = sorted(acks)
    lo_n, hi_n = trim * total, (1 - trim) * total
    cum = 0
    t_lo = t_hi = None
    c_lo = c_hi = 0
    for t, n in acks:
        cum += n
        if t_lo is None and cum >= lo_n:
            t_lo, c_lo = t, cum
        if cum >= hi_n:
            t_hi, c_hi = t, cum
            break
    if t_lo is None or t_hi is None or t_hi <= t_lo:
        return {"steady_lifecycles_per_s": float("nan"), "steady_window_s": 0.0, "steady_lifecycles": 0}
    return {
        "steady_lifecycles_per_s": (c_hi - c_lo) / (t_hi - t_lo),
        "steady_window_s": t_hi - t_lo,
        "steady_lifecycles": c_hi - c_lo,
    }


async def run(args: argparse.Namespace, res: Result) -> None:
    server = None
    if args.embedded:
        data_dir = make_temp_dir("durable")
        config = NodeConfig() if args.fsync is None else NodeConfig(embedded_fsync=args.fsync)
        node = await LocalNode.start(NODE_ID, data_dir=data_dir, config=config)
        res["redis"] = {
            "mode": "embedded (LocalNode's own redis-server, unix socket)",
            "appendfsync": config.embedded_fsync,
            "data_dir": str(data_dir),
        }
    else:
        server = RedisServer().run()
        res["redis"] = {"mode": "private redis-server, TCP loopback", "version": server.version(), "url": server.url}
        node = await LocalNode.start(NODE_ID, server.url)
    dash = viewer = None
    if args.dashboard != "off":  # the node view open and updating, its viewer in another process
        from fedcoord.dashboard import Access, DashboardServer  # noqa: PLC0415
        from fedcoord.dashboard.node_app import node_app  # noqa: PLC0415

        dash = DashboardServer(node_app(node, Access.generated()), "127.0.0.1:0")
        dash.start()
        viewer = subprocess.Popen(
            [sys.executable, "-m", "bench._viewer", dash.url, args.dashboard, str(args.timeout_s)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        if args.viewer_cpus is not None:  # before it starts its browser, which inherits it
            os.sched_setaffinity(viewer.pid, args.viewer_cpus)
        await asyncio.sleep(5.0 if args.dashboard == "browser" else 1.0)  # the page is open and live
        res["dashboard"] = {"mode": args.dashboard, "url": dash.url}
    try:
        c = Counters(args.tasks, args.max_backlog)
        for i in range(args.workers):
            await node.register_worker(WorkerSpec(f"w{i}", skill=10, concurrency=args.claim))
        mon = GcMonitor()
        per_producer = [
            args.tasks // args.producers + (1 if i < args.tasks % args.producers else 0) for i in range(args.producers)
        ]
        gc.collect()
        with mon.active():
            t0 = time.perf_counter()
            viewer_pids = process_tree(viewer.pid) if viewer is not None else []
            viewer_cpu0 = cpu_s(*viewer_pids)
            workers = [
                asyncio.create_task(worker(node, c, f"w{i}", args.claim, args.wait_s)) for i in range(args.workers)
            ]
            producers = [
                asyncio.create_task(producer(node, c, n, batch=args.batch, mix=args.mix, seed=args.seed + i))
                for i, n in enumerate(per_producer)
            ]
            await _until_done(c, [*producers, *workers], args.timeout_s, res)
            t_end = max((t for t, _ in c.acks), default=time.perf_counter())
            if viewer is not None:  # what the viewer (the browser's processes) took from the two cores
                res["dashboard"]["viewer_cpu_pct"] = round(
                    100 * (cpu_s(*viewer_pids) - viewer_cpu0) / (time.perf_counter() - t0), 1
                )
            c.all_done.set()
            for t in producers:  # only after a failure or a timeout is one still running
                t.cancel()
            await asyncio.gather(*producers, return_exceptions=True)
            # Workers leave once their pending claim returns (at most --wait-s).
            done, pending = await asyncio.wait(workers, timeout=args.wait_s + 5)
            for t in pending:
                t.cancel()
            for t in done:
                if t.exception() is not None:
                    res.errors.append(f"worker failed: {t.exception()!r}")
            for t in producers:
                if not t.cancelled() and t.exception() is not None:
                    res.errors.append(f"producer failed: {t.exception()!r}")
        steady = steady_rate(c.acks, args.tasks, args.trim)
        overall = c.completed / (t_end - t0) if t_end > t0 else float("nan")
        stats = await node.stats()
        keys = NodeKeys(NODE_ID)
        store = node.store
        stored: dict[str, Any] = {}
        if isinstance(store, RedisStore):
            counters, active = store.run_sync(lambda r: (r.hgetall(keys.counters), r.hlen(keys.active)))
            stored = {"counters": {_text(k): int(v) for k, v in counters.items()}, "active_records": active}
    finally:
        if viewer is not None:
            viewer.kill()
            viewer.wait()
        if dash is not None:
            await dash.stop()
        await node.close()
        if server is not None:
            server.stop()

    n = args.tasks
    check(res.errors, c.submitted == n, f"submitted (acknowledged) {c.submitted} != {n}")
    check(res.errors, c.completed == n, f"completed (acknowledged) {c.completed} != {n}")
    check(
        res.errors, not c.complete_errors, f"{len(c.complete_errors)} complete() calls failed: {c.complete_errors[:3]}"
    )
    tot = stats.totals
    check(res.errors, tot.get("submitted") == n, f"node totals submitted {tot.get('submitted')} != {n}")
    check(res.errors, tot.get("completed") == n, f"node totals completed {tot.get('completed')} != {n}")
    check(res.errors, sum(stats.active_by_status.values()) == 0, f"tasks still active: {stats.active_by_status}")
    if stored:
        sc = stored["counters"]
        check(res.errors, sc.get("submitted") == n, f"Redis counters submitted {sc.get('submitted')} != {n}")
        check(res.errors, sc.get("completed") == n, f"Redis counters completed {sc.get('completed')} != {n}")
        check(res.errors, stored["active_records"] == 0, f"{stored['active_records']} active records left in Redis")

    res["unit"] = "durable lifecycles/s (submit, claim, complete each acknowledged after the group commit)"
    res["steady_lifecycles_per_s"] = round(steady["steady_lifecycles_per_s"])
    res["steady_window_s"] = round(steady["steady_window_s"], 3)
    res["steady_lifecycles"] = steady["steady_lifecycles"]
    res["overall_lifecycles_per_s"] = round(overall)
    res["elapsed_s"] = round(t_end - t0, 3)
    res["completed_acknowledged"] = c.completed
    res["submitted_acknowledged"] = c.submitted
    res["claims"] = {"calls": c.claims, "empty": c.empty_claims}
    res["node_totals"] = tot
    res["redis_counters"] = stored.get("counters")
    res["gc_during_run"] = mon.report()
    res["peak_rss_mb"] = round(peak_rss_bytes() / 2**20, 1)
    res.row("steady lifecycles/s", steady["steady_lifecycles_per_s"])
    res.row("overall lifecycles/s", overall)
    res.row("elapsed s", t_end - t0)
    res.row("completed / submitted", f"{c.completed:,} / {c.submitted:,} (node totals {tot.get('completed'):,})")
    res.row("claims (empty)", f"{c.claims:,} ({c.empty_claims:,})")
    g = mon.report()
    res.row("gc collections gen0/1/2", "/".join(str(v) for v in g["collections"].values()))
    res.target("steady durable lifecycles/s", ">=", TARGET, res["steady_lifecycles_per_s"], "lifecycles/s")


def _cpus(text: str) -> set[int]:
    """``1`` or ``0,2`` or ``2-3``: a set of CPU numbers."""
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise argparse.ArgumentTypeError(f"not a CPU list: {text!r} (e.g. 1 or 0,2 or 2-3)")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.durable", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tasks", type=positive_int, default=300_000, help="lifecycles in all")
    p.add_argument("--producers", type=positive_int, default=2)
    p.add_argument("--batch", type=positive_int, default=500, help="specs per submit call (<= 10000)")
    p.add_argument("--workers", type=positive_int, default=4)
    p.add_argument("--claim", type=positive_int, default=100, help="max_tasks per claim (worker concurrency)")
    p.add_argument("--wait-s", type=float, default=0.5, help="claim wait_s")
    p.add_argument("--max-backlog", type=positive_int, default=50_000, help="producers pause above this many")
    p.add_argument("--trim", type=float, default=0.1, help="fraction cut at each end for the steady rate")
    p.add_argument("--mix", action="store_true", help="mixed types/priorities/difficulties instead of uniform")
    p.add_argument("--embedded", action="store_true", help="use LocalNode's embedded redis-server")
    p.add_argument(
        "--fsync",
        choices=("everysec", "always"),
        default=None,
        help="the embedded redis-server's appendfsync (with --embedded; default: the node's, always)",
    )
    p.add_argument("--gc-tune", action="store_true", help="gc.set_threshold(100_000, 50, 100) first")
    p.add_argument("--timeout-s", type=float, default=600.0)
    p.add_argument(
        "--dashboard",
        choices=("off", "stream", "browser"),
        default="off",
        help="serve the node view while it runs, watched by another process: its live stream and the task "
        "pages it fetches (stream), or a headless Chromium on the page (browser)",
    )
    p.add_argument(
        "--viewer-cpus",
        type=_cpus,
        default=None,
        help="CPUs for the viewer (and its browser), e.g. 1; this process and its Redis get the others, whatever "
        "--dashboard is (so that off and browser compare the node on the same CPUs, the browser not taking from "
        "them, as on a machine of its own)",
    )
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if args.viewer_cpus is not None:
        node_cpus = os.sched_getaffinity(0) - args.viewer_cpus
        if not node_cpus or not args.viewer_cpus <= os.sched_getaffinity(0):
            p.error(f"--viewer-cpus must be a strict subset of this process's CPUs {sorted(os.sched_getaffinity(0))}")
        os.sched_setaffinity(0, node_cpus)  # before any thread or child: they inherit it
    install_signal_handlers()
    if args.batch > 10_000 or args.claim > 10_000:
        p.error("--batch and --claim must be <= 10000 (Limits.max_batch)")
    if not 0 <= args.trim < 0.5:
        p.error("--trim must be in [0, 0.5)")
    if args.fsync is not None and not args.embedded:
        p.error("--fsync applies to the embedded redis-server: add --embedded")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    res = Result("durable", args)
    res["gc"] = gc_tune(args.gc_tune)
    res["cpus"] = {
        "node": sorted(os.sched_getaffinity(0)),
        "viewer": sorted(args.viewer_cpus) if args.viewer_cpus is not None else None,
    }
    return res.run_and_emit(lambda: asyncio.run(run(args, res)))


if __name__ == "__main__":
    sys.exit(main())
