"""Claim-to-lease latency over gRPC at a steady 1,000 tasks per second, against a ``fedcoord node``
process on its own embedded Redis (append-only file, fsync every commit).

Two measurements, each ``--tasks`` long after ``--warmup`` untimed ones:

* **unary**: the queue is filled first; a worker on the synchronous ``NodeClient`` then calls
  ``Claim(max_tasks=1)`` 1,000 times a second (paced), timed from the call to the lease in hand
  (the lease is durable on the node before it is sent); each lease is completed from a thread.
* **stream**: a worker holds a ``Work`` stream with credit; a producer submits one task at a time,
  1,000 a second; timed from the submit's acknowledgment (the task is durable and ready) to the
  lease arriving on the stream. This is what a waiting worker sees.

    python -m bench.claim_grpc [--tasks 5000] [--rate 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from bench._common import Result, check, install_signal_handlers, make_temp_dir, percentile, positive_int
from bench.e2e import _free_port, process
from node import TaskSpec, WorkerSpec
from node.rpc.client import AsyncNodeClient, NodeClient
from protos.fedcoord.v1 import node_pb2 as npb
from protos.fedcoord.v1 import node_pb2_grpc

TARGET_P99_MS = 3.0


def _summary(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {
        "samples": len(ms),
        "p50": round(percentile(ms, 50), 3),
        "p90": round(percentile(ms, 90), 3),
        "p99": round(percentile(ms, 99), 3),
        "max": round(ms[-1], 3),
    }


def unary(address: str, n: int, warmup: int, rate: float) -> list[float]:
    """A simple worker's loop on the synchronous client (each lease completed from a thread)."""
    with NodeClient(address, insecure=True) as client, ThreadPoolExecutor(2) as pool:
        client.submit([TaskSpec("bench.claim") for _ in range(n + warmup)])
        client.register_worker(WorkerSpec("wu", concurrency=10_000))
        gap = 1.0 / rate
        out: list[float] = []
        done = []
        t0 = time.perf_counter()
        for i in range(n + warmup):
            wait = t0 + i * gap - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            start = time.perf_counter()
            (lease,) = client.claim("wu", 1)
            if i >= warmup:
                out.append((time.perf_counter() - start) * 1e3)
            done.append(pool.submit(client.complete, lease))
        for f in done:
            f.result()
        return out


async def stream(address: str, n: int, warmup: int, rate: float) -> list[float]:
    async with AsyncNodeClient(address, insecure=True) as client, grpc.aio.insecure_channel(address) as channel:
        call = node_pb2_grpc.NodeServiceStub(channel).Work()
        await call.write(npb.WorkerMessage(hello=npb.WorkerSpec(id="ws", concurrency=64), credit=64))
        first = await call.read()
        assert first.HasField("registered")
        acked: dict[str, float] = {}
        seen: dict[str, float] = {}

        async def read() -> None:
            while len(seen) < n + warmup:
                m = await call.read()
                now = time.perf_counter()
                if m is grpc.aio.EOF:
                    return
                if m.leases:
                    for x in m.leases:
                        seen[x.task_id] = now
                    results = [npb.Completion(task_id=x.task_id, attempt=x.attempt) for x in m.leases]
                    await call.write(npb.WorkerMessage(credit=len(m.leases), completions=results))

        reader = asyncio.create_task(read())
        gap = 1.0 / rate
        order: list[str] = []
        t0 = time.perf_counter()
        for i in range(n + warmup):
            wait = t0 + i * gap - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            (tid,) = await client.submit([TaskSpec("bench.stream")])
            acked[tid] = time.perf_counter()
            order.append(tid)
        await asyncio.wait_for(reader, 60)
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        # a lease can arrive before the submit's answer does: that counts as no wait at all
        return [max(0.0, seen[t] - acked[t]) * 1e3 for t in order[warmup:]]


def run(args: argparse.Namespace, res: Result) -> None:
    tmp = make_temp_dir("claim-grpc")
    address = f"127.0.0.1:{_free_port()}"
    node_args = ["node", "--node-id", "bench-claim", "--listen", address, "--insecure", "--metrics-listen", ""]
    node_args += ["--dashboard-listen", ""]  # no web view (nor its default port)
    with process([*node_args, "--data-dir", str(tmp / "node"), "--log-level", "warning"], tmp / "node.log") as node:
        assert node.stdout is not None
        if not node.stdout.readline().startswith("serving"):
            raise RuntimeError(f"the node did not start: {(tmp / 'node.log').read_text()[-2000:]}")
        u = unary(address, args.tasks, args.warmup, args.rate)
        s = asyncio.run(stream(address, args.tasks, args.warmup, args.rate))
    check(res.errors, len(u) == args.tasks, f"{len(u)} unary claims timed of {args.tasks}")
    check(res.errors, len(s) == args.tasks, f"{len(s)} stream leases timed of {args.tasks}")
    res["unit"] = "ms, claim call to lease in hand (unary) / submit acknowledged to lease on the stream"
    res["unary_ms"] = us = _summary(u)
    res["stream_ms"] = ss = _summary(s)
    res.row("unary Claim p50 / p99 / max ms", f"{us['p50']} / {us['p99']} / {us['max']}")
    res.row("stream lease p50 / p99 / max ms", f"{ss['p50']} / {ss['p99']} / {ss['max']}")
    res.target("unary claim-to-lease p99 ms", "<=", TARGET_P99_MS, us["p99"], "ms")
    res.target("stream ready-to-lease p99 ms", "<=", TARGET_P99_MS, ss["p99"], "ms")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.claim_grpc", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tasks", type=positive_int, default=5000, help="timed claims (and leases) of each kind")
    p.add_argument("--warmup", type=int, default=500, help="untimed ones first")
    p.add_argument("--rate", type=float, default=1000.0, help="claims (and submits) per second")
    args = p.parse_args(argv)
    if args.rate <= 0 or args.warmup < 0:
        p.error("--rate must be > 0 and --warmup >= 0")
    install_signal_handlers()
    res = Result("claim_grpc", args)
    return res.run_and_emit(lambda: run(args, res))


if __name__ == "__main__":
    sys.exit(main())
