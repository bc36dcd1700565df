"""End to end across processes: one producer calling ``NodeClient.submit_one`` once per task, one
``fedcoord worker`` process running a no-op handler, and a ``fedcoord node`` process on its own
embedded Redis (append-only file, its default fsync: every commit). Three processes plus redis-server, the
real commands, plaintext on loopback.

Timed: from the first ``submit_one`` to the moment the node counts every task completed (this
process asks the node's ``Stats`` every 20 ms). Verified: every id distinct and every task
completed, none failed. With ``--rate``, the producer paces itself (tasks per second) and the
run also reports how long tasks waited: submit acknowledged to completion, from each task's
record (created, claimed and finished times, one clock: the node's).

    python -m bench.e2e [--tasks 100000] [--concurrency 256] [--rate 0]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from bench._common import (
    Result,
    check,
    cpu_s,
    install_signal_handlers,
    make_specs,
    make_temp_dir,
    percentile,
    positive_int,
)
from node.rpc.client import NodeClient

TARGET = 8_000.0
NODE_ID = "bench-e2e"
ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def process(args: list[str], log: Path) -> Iterator[subprocess.Popen[str]]:
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedcoord", *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def run(args: argparse.Namespace, res: Result) -> None:
    tmp = make_temp_dir("e2e")
    address = f"127.0.0.1:{_free_port()}"
    node_args = ["node", "--node-id", NODE_ID, "--listen", address, "--insecure", "--metrics-listen", ""]
    node_args += ["--data-dir", str(tmp / "node"), "--log-level", "warning"]
    node_args += ["--dashboard-listen", "127.0.0.1:0" if args.dashboard != "off" else ""]
    with process(node_args, tmp / "node.log") as node, contextlib.ExitStack() as viewers:
        assert node.stdout is not None
        line = node.stdout.readline()
        if not line.startswith("serving"):
            raise RuntimeError(f"the node did not start: {(tmp / 'node.log').read_text()[-2000:]}")
        if args.dashboard != "off":  # the node view open and updating, its viewer in another process
            url = node.stdout.readline().split()[1]
            viewer = subprocess.Popen([sys.executable, "-m", "bench._viewer", url, args.dashboard, "3600"])
            viewers.callback(viewer.wait)
            viewers.callback(viewer.kill)  # (callbacks run last in, first out: kill, then wait)
            time.sleep(5.0 if args.dashboard == "browser" else 1.0)
            res["dashboard"] = {"mode": args.dashboard, "url": url}
        worker_args = ["worker", "--node", address, "--insecure", "--id", "w1", "--default", "noop"]
        worker_args += ["--concurrency", str(args.concurrency), "--log-format", "text"]
        with process(worker_args, tmp / "worker.log") as worker, NodeClient(address, insecure=True) as client:
            deadline = time.monotonic() + 30
            while not client.stats().workers:  # the worker registered (its stream is open)
                if time.monotonic() > deadline or worker.poll() is not None:
                    raise RuntimeError(f"the worker did not attach: {(tmp / 'worker.log').read_text()[-2000:]}")
                time.sleep(0.05)
            specs = make_specs(args.tasks, False)
            cpu0 = {"node": cpu_s(node.pid), "worker": cpu_s(worker.pid), "producer": time.process_time()}
            futures: list[concurrent.futures.Future[str]] = []
            t0 = time.perf_counter()
            gap = 1.0 / args.rate if args.rate else 0.0
            for i, spec in enumerate(specs):
                if gap:
                    wait = t0 + i * gap - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                futures.append(client.submit_one(spec))
            ids = [f.result() for f in futures]
            acked_s = time.perf_counter() - t0
            done = 0
            stats = client.stats()
            deadline = time.monotonic() + max(60.0, args.tasks / 1000)
            while True:
                stats = client.stats()
                done = stats.totals.get("completed", 0) + stats.totals.get("failed", 0)
                if done >= args.tasks or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            elapsed = time.perf_counter() - t0
            cpu = {
                "node": round(cpu_s(node.pid) - cpu0["node"], 2),
                "worker": round(cpu_s(worker.pid) - cpu0["worker"], 2),
                "producer": round(time.process_time() - cpu0["producer"], 2),
            }
            waits_ms: list[float] = []
            if args.rate:
                step = max(1, len(ids) // 1000)
                for tid in ids[::step]:
                    t = client.get(tid)
                    if t.finished_ns is not None and t.claimed_ns is not None:
                        waits_ms.append((t.finished_ns - t.created_ns) / 1e6)
                waits_ms.sort()
    n = args.tasks
    check(res.errors, len(set(ids)) == n, f"{len(set(ids))} distinct ids for {n} tasks")
    completed = stats.totals.get("completed", 0)
    failed = stats.totals.get("failed", 0)
    check(res.errors, completed == n, f"the node counts {completed} completed of {n} (failed: {failed})")
    rate = n / elapsed
    res["unit"] = "tasks/s end to end (submit_one per task -> completed by a worker process), 3 processes"
    res["tasks_per_s"] = round(rate)
    res["elapsed_s"] = round(elapsed, 3)
    res["submitted_acked_s"] = round(acked_s, 3)
    res["cpu_s"] = cpu
    res["node_totals"] = stats.totals
    res.row("tasks/s end to end", rate)
    res.row("elapsed s (all acked after)", f"{elapsed:.2f} ({acked_s:.2f})")
    res.row("cpu s node / worker / producer", f"{cpu['node']} / {cpu['worker']} / {cpu['producer']}")
    if waits_ms:
        res["submit_to_done_ms"] = {
            "samples": len(waits_ms),
            "p50": round(percentile(waits_ms, 50), 2),
            "p99": round(percentile(waits_ms, 99), 2),
            "max": round(waits_ms[-1], 2),
        }
        res.row("submit to done p50 / p99 ms", f"{res['submit_to_done_ms']['p50']} / {res['submit_to_done_ms']['p99']}")
    if not args.rate:
        res.target("end-to-end tasks/s", ">=", TARGET, res["tasks_per_s"], "tasks/s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.e2e", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tasks", type=positive_int, default=100_000, help="tasks to submit, one submit_one each")
    p.add_argument("--concurrency", type=positive_int, default=256, help="the worker's concurrency")
    p.add_argument("--rate", type=float, default=0.0, help="pace the producer (tasks/s); 0: as fast as it goes")
    p.add_argument(
        "--dashboard",
        choices=("off", "stream", "browser"),
        default="off",
        help="the node's web view open while it runs: its live stream and task pages (stream), or Chromium",
    )
    args = p.parse_args(argv)
    if args.rate < 0:
        p.error("--rate must be >= 0")
    install_signal_handlers()
    res = Result("e2e", args)
    return res.run_and_emit(lambda: run(args, res))


if __name__ == "__main__":
    sys.exit(main())
