"""The pure scheduling core alone: full task lifecycles per second.

One lifecycle = the task is submitted, claimed and completed. Each round submits a batch of
``--batch`` distinct TaskSpec objects, claims them with one ``claim(max_tasks=batch)`` and
completes each lease with its own ``complete`` call; the outbox is drained after each step (as
the runtime's group commit does) and ``tick`` runs every 0.25 s of wall time (as the runtime's
ticker does at most). The specs are built before the timer starts for their round: the Python
API receives them ready-made from the caller. Each variant (events on/off x uniform/mixed tasks)
runs ``--repeats`` times on a fresh core after an untimed warm-up; the median is reported.

The 300,000/s target applies to ``uniform/events-off``: the issue's lifecycle (a no-op task
submitted, claimed and completed) as a node runs it by default (the core builds events only
while somebody listens: an in-process subscriber or a Redis subscriber). The other variants are
reported for reference: events on, and a mix of 4 types x 4 priorities x 10 difficulties (40
queue classes, so a batch claim switches between deques at almost every task).

    python -m bench.core [--lifecycles 200000] [--batch 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from typing import Any

from bench._common import GcMonitor, Result, check, gc_tune, install_signal_handlers, make_specs, positive_int
from node.core import Core, CoreConfig
from node.model import TaskStatus, WorkerSpec

COMPLETED = TaskStatus.COMPLETED
TARGET = 300_000.0
TARGET_VARIANT = "uniform/events-off"  # see the module docstring
TICK_NS = 250_000_000  # the runtime ticks at most this far apart (NodeConfig.tick_max_s)
VARIANTS = ("uniform/events-off", "uniform/events-on", "mix/events-off", "mix/events-on")


def run_once(lifecycles: int, batch: int, *, warmup: int, mix: bool, events: bool, seed: int) -> dict[str, float]:
    """One timed pass on a fresh core; returns lifecycles/s and counts (verified by the caller)."""
    clock = time.time_ns
    perf = time.perf_counter_ns
    rng = random.Random(seed)
    core = Core(CoreConfig(node_id="bench"), random.Random(seed))
    core.emit_events = events
    core.register_worker(WorkerSpec("bench-w", skill=10, concurrency=batch), clock())
    core.drain()
    rounds_warm = -(-warmup // batch)
    rounds = lifecycles // batch
    elapsed = 0
    phases = [0, 0, 0]  # submit, claim, complete (+ tick), ns
    done = submitted = claimed = 0
    last_tick = clock()
    for r in range(rounds_warm + rounds):
        specs = make_specs(batch, mix, rng)  # untimed: the caller builds them
        t0 = perf()
        ids = core.submit(specs, clock())
        core.drain()
        ta = perf()
        leases = core.claim("bench-w", batch, clock())
        core.drain()
        tb = perf()
        complete = core.complete
        for lease in leases:
            complete(lease, b"", clock())
        out = core.drain()
        now = clock()
        if now - last_tick >= TICK_NS:
            core.tick(now)
            core.drain()
            last_tick = now
        t1 = perf()
        ok = sum(1 for t in out.finished.values() if t.status is COMPLETED)  # untimed check
        if r >= rounds_warm:
            elapsed += t1 - t0
            phases[0] += ta - t0
            phases[1] += tb - ta
            phases[2] += t1 - tb
            submitted += len(ids)
            claimed += len(leases)
            done += ok
        elif ok != batch:
            raise RuntimeError(f"warm-up round {r}: {ok} of {batch} completed")
    active = sum(core.status_counts().values())
    return {
        "lifecycles_per_s": done / (elapsed / 1e9),
        "timed_s": elapsed / 1e9,
        "submit_us_per_task": phases[0] / 1e3 / max(done, 1),
        "claim_us_per_task": phases[1] / 1e3 / max(done, 1),
        "complete_us_per_task": phases[2] / 1e3 / max(done, 1),
        "submitted": submitted,
        "claimed": claimed,
        "completed": done,
        "active_left": active + len(core.tasks),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.core", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--lifecycles", type=positive_int, default=200_000, help="timed lifecycles per repeat")
    p.add_argument("--batch", type=positive_int, default=1000, help="tasks per submit / claim (<= 10000)")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed passes per variant (median reported)")
    p.add_argument("--warmup", type=int, default=20_000, help="untimed lifecycles before each pass")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--gc-tune", action="store_true", help="gc.set_threshold(100_000, 50, 100) first")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    install_signal_handlers()
    if args.batch > 10_000:
        p.error("--batch must be <= 10000 (Limits.max_batch)")
    if args.lifecycles < args.batch:
        p.error("--lifecycles must be at least --batch")
    res = Result("core", args)
    res["gc"] = gc_tune(args.gc_tune)
    res["unit"] = "lifecycles/s (submit + claim + complete of one task, pure core, no I/O)"
    mon = GcMonitor()
    variants: dict[str, dict[str, Any]] = {}
    with mon.active():
        for name in args.variants:
            mix = name.startswith("mix")
            events = name.endswith("events-on")
            runs = []
            per_phase: list[tuple[float, float, float]] = []
            for i in range(args.repeats):
                gc.collect()
                r = run_once(
                    args.lifecycles, args.batch, warmup=args.warmup, mix=mix, events=events, seed=args.seed + i
                )
                n = (args.lifecycles // args.batch) * args.batch
                check(res.errors, r["submitted"] == n, f"{name}#{i}: submitted {r['submitted']} != {n}")
                check(res.errors, r["claimed"] == n, f"{name}#{i}: claimed {r['claimed']} != {n}")
                check(res.errors, r["completed"] == n, f"{name}#{i}: completed {r['completed']} != {n}")
                check(res.errors, r["active_left"] == 0, f"{name}#{i}: {r['active_left']} tasks left active")
                runs.append(r["lifecycles_per_s"])
                per_phase.append((r["submit_us_per_task"], r["claim_us_per_task"], r["complete_us_per_task"]))
                print(f"  {name} #{i}: {r['lifecycles_per_s']:,.0f}/s", file=sys.stderr)
            med = statistics.median(runs)
            variants[name] = {
                "mix": mix,
                "events": events,
                "median_lifecycles_per_s": round(med),
                "min": round(min(runs)),
                "max": round(max(runs)),
                "runs": [round(x) for x in runs],
                "lifecycles_per_run": (args.lifecycles // args.batch) * args.batch,
                "median_us_per_task": {
                    ph: round(statistics.median(x[k] for x in per_phase), 3)
                    for k, ph in enumerate(("submit", "claim", "complete"))
                },
            }
            us = variants[name]["median_us_per_task"]
            res.row(
                f"{name} median",
                f"{med:,.0f}/s (min {min(runs):,.0f}, max {max(runs):,.0f}); "
                f"us/task submit {us['submit']:.2f} claim {us['claim']:.2f} complete {us['complete']:.2f}",
            )
            if name == TARGET_VARIANT:
                res.target(f"{name} median lifecycles/s", ">=", TARGET, round(med), "lifecycles/s")
    res["variants"] = variants
    res["gc_during_run"] = mon.report()
    return res.emit()


if __name__ == "__main__":
    sys.exit(main())
