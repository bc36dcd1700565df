"""Hand-off between two node processes over gRPC, each node on a private redis-server of its own
(AOF everysec): tasks per second moved from an origin to a peer with every step durable on both
sides, and the latency of one Offer + Transfer round trip.

This process is the origin ``bench-a`` (a LocalNode, a GrpcTransport, a NodeServer for its peer's
calls); the peer ``bench-b`` is another process (``python -m tests.node_proc``, the node runner of
the fault tests) with idle worker slots enough to accept every task. Plaintext on loopback.

* **Latency**: ``--latency-rounds`` offloads of ``--latency-batch`` tasks, one after the other
  (after a short warm-up). Measured in the origin: the Offer call plus the Transfer call of each
  (the round trips to the peer: the peer's decision, and its adoption made durable), and the whole
  offload (those two plus the origin's two durable writes, the intent and the handed_off record).
* **Throughput**: ``--concurrency`` streams call ``node.handoff.offload("bench-b", --batch)`` until
  ``--tasks`` more are handed off.

At the end the origin must hold nothing active and count every task handed off, and the peer's
Redis must hold every task active and count it adopted.

    python -m bench.handoff_grpc [--tasks 50000] [--batch 2000] [--latency-rounds 500]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import (
    GcMonitor,
    RedisServer,
    Result,
    check,
    install_signal_handlers,
    make_specs,
    make_temp_dir,
    percentile,
    positive_int,
)
from node import AdmissionConfig, LocalNode, NodeConfig
from node.handoff import Offer, OfferReply, Transfer, TransferReply
from node.rpc.server import NodeServer, ServerOptions
from node.rpc.transport import GrpcTransport
from node.runtime.handoff import HandoffConfig
from node.store.keys import NodeKeys

TARGET_RATE = 10_000.0
TARGET_P99_MS = 5.0
WARMUP_ROUNDS = 20
ROOT = Path(__file__).resolve().parent.parent
A, B = "bench-a", "bench-b"


class TimedTransport(GrpcTransport):
    """Records how long each Offer and Transfer call takes while ``timing`` is on."""

    timing = False

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self.offer_ns: list[int] = []
        self.transfer_ns: list[int] = []

    async def offer(self, peer: str, offer: Offer) -> OfferReply:
        t = time.perf_counter_ns()
        reply = await super().offer(peer, offer)
        if self.timing:
            self.offer_ns.append(time.perf_counter_ns() - t)
        return reply

    async def transfer(self, peer: str, transfer: Transfer) -> TransferReply:
        t = time.perf_counter_ns()
        reply = await super().transfer(peer, transfer)
        if self.timing:
            self.transfer_ns.append(time.perf_counter_ns() - t)
        return reply


def _ms(values_ns: list[int]) -> dict[str, float | None]:
    v = sorted(values_ns)
    if not v:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    return {k: round(percentile(v, q) / 1e6, 3) for k, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))}


class Peer:
    """The peer node process."""

    def __init__(self, redis_url: str, origin_address: str, slots: int):
        self.dir = make_temp_dir("handoff-grpc")
        self.log = self.dir / f"{B}.log"
        args = ["--node-id", B, "--redis-url", redis_url, "--listen", "127.0.0.1:0", "--insecure"]
        args += ["--peer", f"{A}={origin_address}", "--control-dir", str(self.dir), "--slots", str(slots)]
        args += ["--tick-s", "0.25"]  # a node's default timers (the runner's default is the tests' fast ones)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.node_proc", *args],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def address(self, timeout_s: float = 60.0) -> str:
        ready = self.dir / f"{B}.ready"
        deadline = time.monotonic() + timeout_s
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the peer process did not start ({self.proc.poll()}): {self.tail()}")
            await asyncio.sleep(0.02)  # polling a child process for readiness
        return str(json.loads(ready.read_text())["listen"])

    def tail(self) -> str:
        return " | ".join(self.log.read_text(errors="replace").splitlines()[-8:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def run(args: argparse.Namespace, res: Result) -> None:
    redis_a, redis_b = RedisServer().run(), RedisServer().run()
    res["redis"] = {"mode": "a private redis-server per node, TCP loopback, AOF everysec", "version": redis_a.version()}
    latency_tasks = (WARMUP_ROUNDS + args.latency_rounds) * args.latency_batch
    total = args.tasks + latency_tasks
    config = NodeConfig(
        admission=AdmissionConfig(threshold=1.0, margin=0.0),
        handoff=HandoffConfig(peers=(B,), auto=False, batch=args.batch, concurrency=args.concurrency),
        history=False,
    )
    transport = TimedTransport({}, insecure=True)
    a = await LocalNode.start(A, redis_a.url, config=config, transport=transport)
    server = NodeServer(a, ServerOptions(), handoff_endpoint=transport.local_endpoint)
    peer: Peer | None = None
    stored: dict[str, Any] = {}
    moved = 0
    per_call: list[float] = []
    elapsed = float("nan")
    mon = GcMonitor()
    try:
        await server.start()
        peer = Peer(redis_b.url, server.address, total)
        transport.set_peer(B, await peer.address())
        for i in range(0, total, 10_000):
            await a.submit(make_specs(min(10_000, total - i), args.mix))
        agent = a.handoff
        assert agent is not None
        gc.collect()

        # latency: one small offload at a time
        offload_ns: list[int] = []
        for i in range(WARMUP_ROUNDS + args.latency_rounds):
            transport.timing = i >= WARMUP_ROUNDS
            t = time.perf_counter_ns()
            r = await agent.offload(B, args.latency_batch)
            if transport.timing:
                offload_ns.append(time.perf_counter_ns() - t)
            if len(r.handed_off) != args.latency_batch:
                res.errors.append(f"a latency round moved {len(r.handed_off)}: {r.reason or r.refused}")
                break
        transport.timing = False
        round_trip = [o + x for o, x in zip(transport.offer_ns, transport.transfer_ns, strict=True)]

        # throughput: batches, several offloads in flight
        async def stream() -> None:
            nonlocal moved
            while moved < args.tasks:
                t = time.perf_counter()
                r = await agent.offload(B, args.batch)
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
        sa = await a.stats()
        ka, kb = NodeKeys(A), NodeKeys(B)
        ca, cb = redis_a.client(), redis_b.client()
        try:
            stored = {
                "a_active": ca.hlen(ka.active),
                "a_handed_off": int(ca.hget(ka.counters, "handed_off") or 0),
                "b_active": cb.hlen(kb.active),
                "b_adopted": int(cb.hget(kb.counters, "adopted") or 0),
            }
        finally:
            ca.close()
            cb.close()
    finally:
        await server.stop()
        await a.close()
        await transport.close()
        if peer is not None:
            peer.stop()
            if peer.proc.returncode not in (0, None):
                res.errors.append(f"the peer process exited with {peer.proc.returncode}: {peer.tail()}")
        redis_a.stop()
        redis_b.stop()

    check(res.errors, moved == args.tasks, f"handed off {moved} of {args.tasks} in the throughput run")
    check(res.errors, sa.totals.get("handed_off") == total, f"a counts {sa.totals.get('handed_off')} handed off")
    check(res.errors, sum(sa.active_by_status.values()) == 0, f"a still holds {sa.active_by_status}")
    want = {"a_active": 0, "a_handed_off": total, "b_active": total, "b_adopted": total}
    check(res.errors, stored == want, f"Redis holds {stored}, expected {want}")
    rate = moved / elapsed if elapsed > 0 else float("nan")
    per_call.sort()
    rt = _ms(round_trip)
    res["unit"] = (
        "tasks/s handed off between processes (offer, durable intent, transfer durable at the peer, durable handed_off)"
    )
    res["tasks_per_s"] = None if math.isnan(rate) else round(rate)
    res["elapsed_s"] = round(elapsed, 3)
    res["offload_calls"] = len(per_call)
    res["per_call_ms"] = {
        "p50": round(per_call[len(per_call) // 2] * 1e3, 2) if per_call else None,
        "max": round(per_call[-1] * 1e3, 2) if per_call else None,
    }
    res["latency"] = {
        "rounds": len(round_trip),
        "batch": args.latency_batch,
        "offer_transfer_ms": rt,
        "offer_ms": _ms(transport.offer_ns),
        "transfer_ms": _ms(transport.transfer_ns),
        "offload_ms": _ms(offload_ns),
    }
    res["redis"]["stored"] = stored
    res["gc_during_run"] = mon.report()
    res.row("tasks/s handed off", rate)
    res.row("offload calls (batch)", f"{len(per_call):,} ({args.batch:,})")
    res.row("offer+transfer p50 / p99 ms", f"{rt['p50']} / {rt['p99']} ({args.latency_batch} tasks)")
    off = res["latency"]["offload_ms"]
    res.row("whole offload p50 / p99 ms", f"{off['p50']} / {off['p99']}")
    res.target("hand-off between processes tasks/s", ">=", TARGET_RATE, res["tasks_per_s"], "tasks/s")
    res.target("offer+transfer round trip p99", "<=", TARGET_P99_MS, rt["p99"], "ms")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.handoff_grpc", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tasks", type=positive_int, default=50_000, help="tasks to hand off in the throughput run")
    p.add_argument("--batch", type=positive_int, default=2000, help="tasks per offer and transfer (<= 10000)")
    p.add_argument("--concurrency", type=positive_int, default=2, help="offloads in flight at once (<= 16)")
    p.add_argument("--latency-rounds", type=positive_int, default=500, help="small offloads timed one by one")
    p.add_argument("--latency-batch", type=positive_int, default=10, help="tasks in each of them")
    p.add_argument("--mix", action="store_true", help="mixed types/priorities/difficulties instead of uniform")
    args = p.parse_args(argv)
    install_signal_handlers()
    if args.batch > 10_000 or args.latency_batch > 10_000 or args.concurrency > 16:
        p.error("--batch and --latency-batch must be <= 10000, --concurrency <= 16")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    res = Result("handoff_grpc", args)
    return res.run_and_emit(lambda: asyncio.run(run(args, res)))


if __name__ == "__main__":
    sys.exit(main())
