"""What a privacy-filtered summary costs: one release on a node, and aggregating many.

**Release.** A core holds ``--active`` active tasks (a tenth leased, the rest queued) of
``--types`` types, and a window with ``--finished`` tasks submitted, claimed and completed in
it (fed outbox by outbox as the runtime's post-commit hook feeds it, with the privacy horizon
on). Timed, ``--releases`` times: what the node does for one ``Summary`` call apart from the
ledger write -- the accountant's decision, folding onto the vocabulary, OpenDP noise,
suppression and post-processing into a checked ``ReleasedSummary``. Timed on their own: the
bounded occupancy count (a pass over the active tasks, which the node makes once per window at
the first tick after it closed, off the ``Summary`` path) and the ledger write (one Lua script
on a private redis-server). Verified: the released types are the vocabulary and ``other``, counts are
non-negative, the completed total equals the histogram's, the cost is what the accountant said.

**Aggregation.** ``--summaries`` released summaries (built directly with noisy-looking counts:
calling OpenDP that many times would only time OpenDP) aggregated into one federation view,
medians of ``--repeats`` passes; and decoding them from records (``ReleasedSummary.from_record``,
what the aggregator does with what arrives). Verified: the view's totals equal the sums.

    python -m bench.privacy [--active 10000] [--finished 20000] [--summaries 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time

from bench._common import RedisServer, Result, check, install_signal_handlers, percentile, positive_int
from federation.privacy.accountant import Accountant
from federation.privacy.config import PrivacyConfig
from federation.privacy.pipeline import CELLS_PER_TASK, WindowInput, build_release, cells_of, scale_to_total
from federation.privacy.schema import SCHEMA_VERSION, PrivacyCost, ReleasedSummary
from node.analytics import Windows
from node.core import Core, CoreConfig
from node.model import TaskSpec, WorkerSpec
from node.runtime.privacy import occupancy
from node.store.base import LedgerEntry
from node.store.redis_store import RedisStore

RELEASE_TARGET_MS = 5.0
AGGREGATE_TARGET_MS = 100.0
S = 1_000_000_000
T0 = 1_700_000_000 * S
WINDOW_S = 20.0


def _node_state(args: argparse.Namespace, cfg: PrivacyConfig) -> tuple[Core, Windows, int]:
    core = Core(CoreConfig(node_id="bench"), rng=random.Random(args.seed))
    core.want_events(False)
    win = Windows("bench", T0, window_s=WINDOW_S, bins=cfg.bins, horizon=cfg.m)
    types = [*cfg.vocabulary, "unlisted-a", "unlisted-b"][: args.types]
    core.register_worker(WorkerSpec("w", concurrency=10_000), T0)
    rng = random.Random(args.seed)
    now = T0 + S
    done = 0
    while done < args.finished:
        n = min(1000, args.finished - done)
        core.submit([TaskSpec(types[rng.randrange(len(types))]) for _ in range(n)], now)
        win.record(core.drain(), now)
        leases = core.claim("w", n, now)
        now += rng.randrange(1, 10) * 1_000_000
        for lease in leases:
            core.complete(lease, b"", now)
        win.record(core.drain(), now)
        done += n
    leased = args.active // 10
    core.register_worker(WorkerSpec("busy", concurrency=max(1, leased)), now)
    for i in range(0, args.active, 10_000):
        k = min(10_000, args.active - i)
        core.submit([TaskSpec(types[rng.randrange(len(types))]) for _ in range(k)], now)
    core.claim("busy", leased, now)
    win.record(core.drain(), now)
    return core, win, now + int(WINDOW_S * S)  # read once the window closed


def run_release(args: argparse.Namespace, res: Result) -> None:
    cfg = PrivacyConfig()
    t = time.perf_counter()
    acc = Accountant(cfg, cells_of(cfg), CELLS_PER_TASK)
    setup_ms = (time.perf_counter() - t) * 1e3
    core, win, now = _node_state(args, cfg)
    closed = win.last_closed(now)
    assert closed is not None and closed.bounded is not None
    b = closed.bounded
    lo, hi = win.horizon_ns(b.window)
    slots = core.load().slots
    times_ms: list[float] = []
    scan_ms: list[float] = []
    summary = None
    occ = 0
    for _ in range(args.releases):
        t0 = time.perf_counter()
        occ = occupancy(core.tasks.values(), lo, hi, now)  # once per window, at its close
        t1 = time.perf_counter()
        decision = acc.decide((), b.window, 0)
        inp = WindowInput(b.window, WINDOW_S, b.counts, b.completion_counts, occ, slots)
        summary = build_release("bench", inp, cfg, acc, decision)
        times_ms.append((time.perf_counter() - t1) * 1e3)
        scan_ms.append((t1 - t0) * 1e3)
    assert summary is not None
    check(res.errors, summary.types == cfg.types, f"types {summary.types}")
    check(res.errors, sum(summary.completed) == sum(summary.completion_counts), "completed total != histogram total")
    check(res.errors, all(v >= 0 for f in ("submitted", "failed") for v in getattr(summary, f)), "negative count")
    check(res.errors, summary.cost.rho == acc.rho, "cost is not the accountant's")
    check(res.errors, occ == args.active, f"occupancy {occ} != {args.active} active tasks")
    raw_completed = sum(c[1] for c in b.counts.values())
    check(res.errors, raw_completed == args.finished, f"bounded completed {raw_completed} != {args.finished}")

    ledger_ms = asyncio.run(_ledger_writes(args.ledger_writes, acc))
    times_ms.sort()
    p50, p99 = percentile(times_ms, 50), percentile(times_ms, 99)
    res["release"] = {
        "active_tasks": args.active,
        "finished_in_window": args.finished,
        "cells": cells_of(cfg),
        "scale": acc.mechanism.scale,
        "rho_per_release": acc.rho,
        "accountant_setup_ms": round(setup_ms, 1),
        "p50_ms": round(p50, 3),
        "p99_ms": round(p99, 3),
        "occupancy_count_at_window_close_p50_ms": round(statistics.median(scan_ms), 3),
        "ledger_write_p50_ms": round(statistics.median(ledger_ms), 3),
        "ledger_write_p99_ms": round(percentile(sorted(ledger_ms), 99), 3),
    }
    res.row("release p50 / p99 ms", f"{p50:.2f} / {p99:.2f}")
    res.row("occupancy count at window close p50 ms", f"{statistics.median(scan_ms):.2f} ({args.active:,} active)")
    res.row("ledger write p50 ms (redis Lua)", f"{statistics.median(ledger_ms):.3f}")
    res.row("accountant setup ms (calibration, cached)", f"{setup_ms:.0f}")
    res.target("one summary built, bounded and noised (p50)", "<=", RELEASE_TARGET_MS, p50, "ms")


async def _ledger_writes(n: int, acc: Accountant) -> list[float]:
    server = RedisServer().run()
    store = RedisStore("bench", server.url)
    try:
        await store.open()
        await store.acquire()
        out = []
        for w in range(n):
            start_us = (T0 // 1000) + w * int(WINDOW_S * 1e6)
            entry = LedgerEntry(
                w, acc.rho, T0, acc.mechanism.kind, acc.mechanism.scale, start_us, start_us + 20_000_000
            )
            t = time.perf_counter()
            await store.ledger_record(entry, m=acc.cfg.m, rho_budget=acc.rho_budget)
            out.append((time.perf_counter() - t) * 1e3)
        state = await store.ledger_read()
        if state.releases != n or state.last_window != n - 1:
            raise AssertionError(f"ledger holds {state.releases} releases, last window {state.last_window}")
        return out
    finally:
        await store.close()
        server.stop()


def _summaries(n: int, seed: int) -> list[ReleasedSummary]:
    cfg = PrivacyConfig()
    rng = random.Random(seed)
    ntypes, nbins = len(cfg.types), len(cfg.completion_edges_s) + 1
    cost = PrivacyCost("gaussian", 13.6, 184.96, 0.0081, 3, 1e-6, 1.0, 1.0, 0.0, 14)

    def cells(k: int) -> tuple[int, ...]:
        return tuple(max(0, int(rng.gauss(40, 20))) for _ in range(k))

    out = []
    for i in range(n):
        done = cells(ntypes)
        hist = tuple(scale_to_total(list(cells(nbins)), sum(done)))  # consistent totals, as released
        out.append(
            ReleasedSummary(
                SCHEMA_VERSION, f"n{i}", 1000, WINDOW_S, cfg.types, cells(ntypes), done, cells(ntypes),
                cells(ntypes), cells(ntypes), cfg.completion_edges_s, hist, rng.randrange(0, 200),
                rng.choice((8, 16, 32)), cost,
            )
        )  # fmt: skip
    return out


def run_aggregate(args: argparse.Namespace, res: Result) -> None:
    from federation.aggregate import aggregate  # noqa: PLC0415 - the release part does not need it

    summaries = _summaries(args.summaries, args.seed)
    records = [s.to_record() for s in summaries]
    agg_ms: list[float] = []
    view = None
    for _ in range(args.repeats):
        t = time.perf_counter()
        view = aggregate(summaries, round=1)
        agg_ms.append((time.perf_counter() - t) * 1e3)
    t = time.perf_counter()
    decoded = [ReleasedSummary.from_record(r) for r in records]
    decode_us = (time.perf_counter() - t) / len(records) * 1e6
    assert view is not None
    check(res.errors, decoded == summaries, "records did not decode to the same summaries")
    check(res.errors, len(view.participants) == args.summaries, f"{len(view.participants)} participants")
    occ = sum(s.occupied_slots for s in summaries)
    check(res.errors, abs(view.occupied.value - occ) < 1e-6, f"occupied {view.occupied.value} != {occ}")
    cap = sum(s.capacity_bucket for s in summaries)
    check(res.errors, view.capacity == cap, f"capacity {view.capacity} != {cap}")
    med = statistics.median(agg_ms)
    res["aggregate"] = {
        "summaries": args.summaries,
        "median_ms": round(med, 2),
        "max_ms": round(max(agg_ms), 2),
        "decode_from_record_us_per_summary": round(decode_us, 1),
    }
    res.row(f"aggregate {args.summaries:,} summaries, median ms", med)
    res.row("decode one summary from its record us", decode_us)
    if args.summaries >= 10_000:  # the target is for 10,000: a smaller run says nothing of it
        res.target(f"aggregating {args.summaries:,} decoded summaries", "<=", AGGREGATE_TARGET_MS, med, "ms")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.privacy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--active", type=positive_int, default=10_000, help="active tasks on the node")
    p.add_argument("--finished", type=positive_int, default=20_000, help="tasks finished in the window")
    p.add_argument("--types", type=positive_int, default=7, help="task types (the vocabulary's 5, then unlisted)")
    p.add_argument("--releases", type=positive_int, default=200, help="releases timed")
    p.add_argument("--ledger-writes", type=positive_int, default=200, help="ledger writes timed")
    p.add_argument("--summaries", type=positive_int, default=10_000, help="summaries aggregated")
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    install_signal_handlers()
    res = Result("privacy", args)

    def run() -> None:
        run_release(args, res)
        run_aggregate(args, res)

    return res.run_and_emit(run)


if __name__ == "__main__":
    sys.exit(main())
