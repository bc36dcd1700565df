"""What admission and the federation read from a node, and what it costs: ``Core.load()`` (from
running counters) and building a raw window summary (per type counts and the completion-time
histogram on fixed public bins) with many tasks finished in the window.

The core gets ``--queued`` ready tasks, ``--leased`` leased ones and some delayed ones; the
summary's window sees ``--finished`` tasks of ``--types`` types submitted, claimed and
completed (fed outbox by outbox, as the runtime's post-commit hook feeds it). Timed: ``load()``
``--calls`` times, and ``current()`` (the open window's summary) ``--builds`` times; medians of
``--repeats`` passes. Verified: the load and the summary's counts equal what was done.

    python -m bench.summary [--finished 100000] [--types 8]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

from bench._common import Result, check, install_signal_handlers, positive_int
from node.analytics import Windows
from node.core import Core, CoreConfig
from node.model import TaskSpec, WorkerSpec

LOAD_TARGET_US = 1.0
SUMMARY_TARGET_MS = 1.0
S = 1_000_000_000
T0 = 1_700_000_000 * S


def run(args: argparse.Namespace, res: Result) -> None:
    core = Core(CoreConfig(node_id="bench"), rng=random.Random(args.seed))
    core.want_events(False)
    win = Windows("bench", T0, window_s=3600.0)
    types = [f"type-{i}" for i in range(args.types)]
    core.register_worker(WorkerSpec("w", concurrency=10_000), T0)
    now = T0 + S
    rng = random.Random(args.seed)
    done = 0
    while done < args.finished:
        n = min(1000, args.finished - done)
        core.submit([TaskSpec(types[rng.randrange(len(types))]) for _ in range(n)], now)
        win.record(core.drain(), now)
        leases = core.claim("w", n, now)
        now += rng.randrange(1, 50) * 10_000_000  # 10-500 ms of work
        for lease in leases:
            core.complete(lease, b"", now)
        win.record(core.drain(), now)
        done += n
    core.register_worker(WorkerSpec("busy", concurrency=args.leased), now)
    for i in range(0, args.leased, 10_000):
        core.submit([TaskSpec("held") for _ in range(min(10_000, args.leased - i))], now)
        core.claim("busy", min(10_000, args.leased - i), now)
    for i in range(0, args.queued, 10_000):
        core.submit([TaskSpec("waiting") for _ in range(min(10_000, args.queued - i))], now)
    core.submit([TaskSpec("later", delay_s=60) for _ in range(100)], now)
    core.drain()

    load_us: list[float] = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        for _ in range(args.calls):
            core.load()
        load_us.append((time.perf_counter() - t) / args.calls * 1e6)
    build_ms: list[float] = []
    summary = win.current(now)
    for _ in range(args.repeats):
        t = time.perf_counter()
        for _ in range(args.builds):
            summary = win.current(now)
        build_ms.append((time.perf_counter() - t) / args.builds * 1e3)

    ld = core.load()
    check(res.errors, (ld.leased, ld.ready, ld.delayed) == (args.leased, args.queued, 100), f"load {ld}")
    check(res.errors, ld.slots == 10_000 + args.leased, f"slots {ld.slots}")
    check(res.errors, summary.total("completed") == args.finished, f"summary counts {summary.total('completed')}")
    check(res.errors, summary.completion_s.count == args.finished, "histogram count")
    check(res.errors, len(summary.types) == args.types, f"{len(summary.types)} types in the summary")
    load_med = statistics.median(load_us)
    build_med = statistics.median(build_ms)
    res["load_us"] = round(load_med, 3)
    res["summary_build_ms"] = round(build_med, 4)
    res["finished_in_window"] = args.finished
    res["load"] = ld._asdict()
    res.row("Core.load() us", load_med)
    res.row("window summary build ms", build_med)
    res.row("tasks finished in the window", args.finished)
    res.target("Core.load()", "<=", LOAD_TARGET_US, load_med, "us")
    res.target("window summary build", "<=", SUMMARY_TARGET_MS, build_med, "ms")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.summary", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--finished", type=positive_int, default=100_000, help="tasks finished in the window")
    p.add_argument("--types", type=positive_int, default=8, help="task types")
    p.add_argument("--queued", type=positive_int, default=50_000)
    p.add_argument("--leased", type=positive_int, default=5_000)
    p.add_argument("--calls", type=positive_int, default=200_000, help="load() calls per pass")
    p.add_argument("--builds", type=positive_int, default=1_000, help="summary builds per pass")
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    install_signal_handlers()
    res = Result("summary", args)
    return res.run_and_emit(lambda: run(args, res))


if __name__ == "__main__":
    sys.exit(main())
