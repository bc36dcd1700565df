"""Recovery time: a node with N active (queued) tasks in Redis starts and serves.

Filling (untimed, in a child process so that the timed process starts with a clean heap):
``--fill store`` (default) makes the tasks with the real Core and writes them with the real
store path (codec.encode_batch + RedisStore.write, the group-commit Lua script), 10,000 per
write, exactly as a node would have stored them; ``--fill node`` submits them through a
LocalNode in batches of 10,000 and closes it. Timed: ``LocalNode.start()`` (load + decode +
restore of every record), then ``register_worker`` and the first ``claim`` that returns a lease
(the node serves). With ``--embedded`` the node's own redis-server is stopped after the fill and
started again by ``LocalNode.start()``, so the time includes Redis reading its append-only file.

    python -m bench.recovery [--tasks 1000000] [--fill store|node] [--embedded]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from bench._common import (
    RedisServer,
    Result,
    check,
    install_signal_handlers,
    make_specs,
    make_temp_dir,
    peak_rss_bytes,
    positive_int,
    rss_bytes,
)
from node import LocalNode, WorkerSpec
from node.core import Core, CoreConfig
from node.embedded import EmbeddedRedis
from node.store.codec import encode_batch
from node.store.keys import NodeKeys
from node.store.redis_store import RedisStore

TARGET_S = 10.0
NODE_ID = "bench-recovery"
WORKER = "w-recovery"
CHUNK = 10_000  # Limits.max_batch


# ---------------------------------------------------------------------- fill (child process)


async def _fill_store(url: str, n: int, mix: bool, seed: int) -> None:
    store = RedisStore(NODE_ID, url)
    await store.open()
    await store.acquire()
    try:
        rng = random.Random(seed)
        left, chunk_no = n, 0
        while left > 0:
            k = min(CHUNK, left)
            # A fresh core per chunk keeps the filler's memory small; ids stay unique (each
            # generator has its own 74 random bits, and the time part moves on).
            core = Core(CoreConfig(node_id=NODE_ID), random.Random(rng.getrandbits(64)))
            core.emit_events = False
            now = time.time_ns()
            core.submit(make_specs(k, mix, rng), now)
            await store.write(encode_batch(core.drain(), now, with_events=False))
            left -= k
            chunk_no += 1
    finally:
        await store.release()
        await store.close()


async def _fill_node(url: str | None, data_dir: str | None, n: int, mix: bool, seed: int) -> None:
    rng = random.Random(seed)
    async with LocalNode.open(NODE_ID, url, data_dir) as node:
        left = n
        while left > 0:
            ids = await node.submit(make_specs(min(CHUNK, left), mix, rng))
            left -= len(ids)


def child_fill(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    embedded = None
    url = args._url or None
    if args.fill == "store":
        if url is None:
            embedded = EmbeddedRedis(args._data_dir)
            url = embedded.start()
        try:
            asyncio.run(_fill_store(url, args.tasks, args.mix, args.seed))
        finally:
            if embedded is not None:
                embedded.stop()  # SIGTERM: Redis fsyncs its AOF and exits
    else:
        asyncio.run(_fill_node(url, args._data_dir if url is None else None, args.tasks, args.mix, args.seed))
    return {"fill_s": time.perf_counter() - t0}


# ---------------------------------------------------------------------- timed start (parent)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _stored_counts(url: str) -> dict[str, int]:
    k = NodeKeys(NODE_ID)
    c = redis.Redis.from_url(url, socket_timeout=120)
    try:
        return {"active_records": int(c.hlen(k.active)), "submitted": int(c.hget(k.counters, "submitted") or 0)}
    finally:
        c.close()


async def timed_start(args: argparse.Namespace, res: Result, url: str | None, data_dir: Path | None) -> None:
    cap = _Capture()
    nlog = logging.getLogger("fedcoord.node")
    nlog.addHandler(cap)
    nlog.setLevel(logging.INFO)
    nlog.propagate = False  # captured into the JSON (and the table), not printed twice
    rss0 = rss_bytes()
    perf = time.perf_counter
    t0 = perf()
    node = await LocalNode.start(NODE_ID, url, data_dir)
    t_started = perf()
    try:
        await node.register_worker(WorkerSpec(WORKER, skill=10, concurrency=1))
        leases = await node.claim(WORKER, 1)
        t_served = perf()
        rss1 = rss_bytes()
        check(res.errors, len(leases) == 1, f"first claim returned {len(leases)} leases")
        stats = await node.stats()
        corrupt = node.corrupt_records
    finally:
        await node.close()
        nlog.removeHandler(cap)
        nlog.propagate = True
    n = args.tasks
    by = stats.active_by_status
    check(res.errors, by.get("queued") == n - 1, f"queued after start {by.get('queued')} != {n - 1}")
    check(res.errors, by.get("assigned") == 1, f"assigned after the first claim {by.get('assigned')} != 1")
    check(res.errors, stats.totals.get("submitted") == n, f"totals submitted {stats.totals.get('submitted')} != {n}")
    check(res.errors, corrupt == 0, f"{corrupt} corrupt records skipped")
    serve_s = t_served - t0
    res["start_s"] = round(t_started - t0, 3)
    res["serve_s"] = round(serve_s, 3)
    res["first_claim_s"] = round(t_served - t_started, 4)
    res["node_log"] = [m for m in cap.messages if "loaded" in m or "serving" in m]
    res["rss_mb"] = {"before_start": round(rss0 / 2**20, 1), "serving": round(rss1 / 2**20, 1)}
    res["peak_rss_mb"] = round(peak_rss_bytes() / 2**20, 1)
    res["active_after"] = by
    res.row("LocalNode.start() s", t_started - t0)
    res.row("until first claim s", serve_s)
    for m in res["node_log"]:
        res.row("node log", m)
    res.row("RSS serving MB", rss1 / 2**20)
    res.target("start until first successful claim", "<=", TARGET_S, round(serve_s, 3), "s")


def parent(args: argparse.Namespace, res: Result) -> None:
    res["unit"] = "seconds from LocalNode.start() to the first successful claim"
    server = None
    data_dir: Path | None = None
    url: str | None = None
    try:
        if args.embedded:
            data_dir = make_temp_dir("recovery")
            res["redis"] = {"mode": "embedded: redis-server restarted from its AOF inside LocalNode.start()"}
        else:
            server = RedisServer().run()
            url = server.url
            res["redis"] = {"mode": "private redis-server (stays up), TCP loopback", "version": server.version()}
        cmd = [sys.executable, "-m", "bench.recovery", "--tasks", str(args.tasks), "--fill", args.fill]
        cmd += ["--seed", str(args.seed), "--_child-fill", "--_url", url or "", "--_data-dir", str(data_dir or "")]
        if args.mix:
            cmd.append("--mix")
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"fill child exited with {proc.returncode}")
        filled = json.loads(proc.stdout.decode().strip().splitlines()[-1])
        res["fill_s"] = round(filled["fill_s"], 2)
        res.row("fill s (untimed)", filled["fill_s"])
        if url is not None:
            stored = _stored_counts(url)
            res["stored_before_start"] = stored
            check(res.errors, stored["active_records"] == args.tasks, f"{stored['active_records']} records stored")
        elif data_dir is not None:
            aof = sum(f.stat().st_size for f in (data_dir / "redis").rglob("*.aof"))
            res["aof_mb"] = round(aof / 2**20, 1)
            res.row("AOF MB", aof / 2**20)
        asyncio.run(timed_start(args, res, url, data_dir))
    finally:
        if server is not None:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.recovery", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tasks", type=positive_int, default=1_000_000, help="active tasks in Redis (N)")
    p.add_argument("--fill", choices=("store", "node"), default="store", help="how Redis is filled (untimed)")
    p.add_argument("--embedded", action="store_true", help="LocalNode's embedded redis-server, restarted")
    p.add_argument("--mix", action="store_true", help="mixed types/priorities/difficulties")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--_child-fill", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--_url", default="", help=argparse.SUPPRESS)
    p.add_argument("--_data-dir", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    install_signal_handlers()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if args._child_fill:
        sys.stdout.write(json.dumps(child_fill(args)) + "\n")
        return 0
    res = Result("recovery", args)
    return res.run_and_emit(lambda: parent(args, res))


if __name__ == "__main__":
    sys.exit(main())
