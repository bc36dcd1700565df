"""Submitting over gRPC one task at a time: tasks per second acknowledged (durable on the node) when
one producer process calls ``NodeClient.submit_one(spec)`` once per task, in a loop.

The node runs in a process of its own (``--serve``: a LocalNode on an embedded redis-server with
its append-only file in a temp dir, served by a NodeServer on a free loopback port, plaintext);
this process is the producer. ``submit_one`` returns a future at once; the client's flusher
thread sends what piled up as one ``Submit`` when the oldest has waited ``--linger-ms`` or a batch
is full, with up to ``--inflight`` batches in flight. Timed: from the first ``submit_one`` to the
last id acknowledged. Then the node must count every task submitted and hold each one queued,
and every id must be distinct.

    python -m bench.submit [--tasks 200000] [--linger-ms 2] [--max-batch 1000] [--inflight 4]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import (
    GcMonitor,
    Result,
    check,
    gc_tune,
    install_signal_handlers,
    make_specs,
    make_temp_dir,
    percentile,
    positive_int,
)
from node import LocalNode, NodeConfig
from node.rpc.client import NodeClient
from node.rpc.server import NodeServer

TARGET = 8_000.0
NODE_ID = "bench-submit"


# ---------------------------------------------------------------------- the node's process


async def serve(data_dir: Path) -> None:
    """Serve a node until stdin closes (the producer exited) or SIGTERM; print its address first."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), stop.set)  # EOF (or anything) on stdin: the parent is done
    async with (
        LocalNode.open(NODE_ID, redis_url=None, data_dir=data_dir, config=NodeConfig(history=False)) as node,
        NodeServer(node) as server,
    ):
        embedded = node.embedded
        redis = {"url": embedded.url, "appendfsync": embedded.appendfsync} if embedded is not None else None
        info = {"address": server.address, "pid": os.getpid(), "redis": redis}
        sys.stdout.write(json.dumps(info) + "\n")
        sys.stdout.flush()
        await stop.wait()


@contextlib.contextmanager
def node_process(data_dir: Path) -> Any:
    """Start ``python -m bench.submit --serve`` and yield what it printed (its address)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.submit", "--serve", "--data-dir", str(data_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the node process exited ({proc.wait()}) before it served")
        yield json.loads(line)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------- the producer


def _latency(into: list[float], sent: float) -> Any:
    return lambda _fut: into.append(time.perf_counter() - sent)


def produce(args: argparse.Namespace, address: str, res: Result) -> None:
    specs = make_specs(args.tasks, args.mix)
    sample_every = max(1, args.tasks // 2000)
    latencies: list[float] = []
    mon = GcMonitor()
    with NodeClient(
        address,
        insecure=True,
        linger_ms=args.linger_ms,
        max_batch=args.max_batch,
        max_inflight=args.inflight,
        max_pending=args.max_pending,
    ) as client:
        client.submit(make_specs(10, False))  # connect and warm up (not timed, not counted below)
        gc.collect()
        futures: list[concurrent.futures.Future[str]] = []
        with mon.active():
            t0 = time.perf_counter()
            for i, spec in enumerate(specs):
                fut = client.submit_one(spec)
                if i % sample_every == 0:
                    fut.add_done_callback(_latency(latencies, time.perf_counter()))
                futures.append(fut)
            loop_s = time.perf_counter() - t0
            ids = [f.result() for f in futures]
            elapsed = time.perf_counter() - t0
        stats = client.stats()

    n = args.tasks
    check(res.errors, len(set(ids)) == n, f"{len(set(ids))} distinct ids for {n} tasks")
    submitted = stats.totals.get("submitted", 0) - 10
    check(res.errors, submitted == n, f"the node counts {submitted} submitted, expected {n}")
    queued = stats.active_by_status.get("queued", 0) - 10
    check(res.errors, queued == n, f"the node holds {queued} queued, expected {n}")
    rate = n / elapsed if elapsed > 0 else float("nan")
    latencies.sort()
    res["unit"] = "tasks/s acknowledged (durable on the node), one submit_one call per task from one process"
    res["tasks_per_s"] = round(rate)
    res["elapsed_s"] = round(elapsed, 3)
    res["submit_loop_s"] = round(loop_s, 3)
    res["ack_latency_ms"] = {
        "samples": len(latencies),
        "p50": round(percentile(latencies, 50) * 1e3, 2),
        "p99": round(percentile(latencies, 99) * 1e3, 2),
        "max": round(latencies[-1] * 1e3, 2) if latencies else None,
    }
    res["node"] = {"totals": stats.totals, "active_by_status": stats.active_by_status}
    res["gc_during_run"] = mon.report()
    res.row("tasks/s acknowledged", rate)
    res.row("elapsed s", elapsed)
    res.row("submit_one loop s", loop_s)
    res.row("ack latency p50 / p99 ms", f"{res['ack_latency_ms']['p50']} / {res['ack_latency_ms']['p99']}")
    res.target("submit_one tasks/s acknowledged", ">=", TARGET, res["tasks_per_s"], "tasks/s")


def run(args: argparse.Namespace, res: Result) -> None:
    data_dir = make_temp_dir("submit-node")
    with node_process(data_dir) as info:
        res["node_process"] = info
        produce(args, info["address"], res)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.submit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tasks", type=positive_int, default=200_000, help="tasks to submit, one call each")
    p.add_argument("--linger-ms", type=float, default=2.0, help="how long a spec may wait for others to batch with")
    p.add_argument("--max-batch", type=positive_int, default=1000, help="specs per Submit at most (<= 10000)")
    p.add_argument("--inflight", type=positive_int, default=4, help="Submit calls in flight at once (<= 64)")
    p.add_argument("--max-pending", type=positive_int, default=100_000, help="specs pending in the client at most")
    p.add_argument("--mix", action="store_true", help="mixed types/priorities/difficulties instead of uniform")
    p.add_argument("--gc-tune", action="store_true", help="gc.set_threshold(100_000, 50, 100) in the producer first")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the node's process
    p.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if args.serve:
        if args.data_dir is None:
            p.error("--serve needs --data-dir")
        asyncio.run(serve(args.data_dir))
        return 0
    install_signal_handlers()
    if args.max_batch > 10_000 or args.inflight > 64 or not 0 <= args.linger_ms <= 1000:
        p.error("--max-batch must be <= 10000, --inflight <= 64 and --linger-ms in 0..1000")
    del args.serve, args.data_dir
    res = Result("submit", args)
    res["gc"] = gc_tune(args.gc_tune)
    return res.run_and_emit(lambda: run(args, res))


if __name__ == "__main__":
    sys.exit(main())
