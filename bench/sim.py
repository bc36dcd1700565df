"""The simulator's speed: simulated events per second on one core, and the issue's scale case.

Default: ``--nodes`` nodes of ``--slots`` slots, exponential service of mean 10 s, load 0.9, for
``--hours`` virtual hours (an event: a task's arrival or its completion; ticks not counted).
Target: 200,000 events/s. With ``--scale``: 1,000 nodes of 8 slots, one virtual hour (about 2.6
million tasks), target at most 60 s. ``--policy`` shares work (the issue's scale case asks for
aggregation every 20 s: ``--scale --policy adaptive --epsilon 1``). Verified: every task that
arrived completed, none left, every hand-off's result reported back.

    python -m bench.sim [--nodes 100] [--slots 8] [--hours 1] [--scale] [--policy P] [--epsilon E]
"""

from __future__ import annotations

import argparse
import sys

from bench._common import Result, check, install_signal_handlers, positive_int
from federation.sim import SimConfig, simulate

EVENTS_TARGET = 200_000.0
SCALE_TARGET_S = 60.0


def run(args: argparse.Namespace, res: Result) -> None:
    nodes = 1000 if args.scale else args.nodes
    slots = 8 if args.scale else args.slots
    hours = 1.0 if args.scale else args.hours
    cfg = SimConfig(
        nodes=nodes, slots=(slots,), load=0.9, service_mean_s=10.0, duration_s=hours * 3600, seed=1,
        policy=args.policy, epsilon=args.epsilon, period_s=20.0,
    )  # fmt: skip
    out = simulate(cfg)
    r = out.result
    check(res.errors, r["completed"] == r["tasks"], f"{r['completed']} of {r['tasks']} completed")
    check(res.errors, r["left_active"] == 0, f"{r['left_active']} tasks left in the cores")
    sh = r["sharing"]
    if sh is not None:
        check(res.errors, sh["reported"] == sh["handed_off"], f"{sh['reported']} of {sh['handed_off']} reported")
        res["handoff_rate"] = sh["handoff_rate"]
        res["offers"] = sh["offers"]
    res["unit"] = "simulated events per second (arrivals and completions), one core"
    res["config"] = r["config"]
    res["tasks"] = r["tasks"]
    res["events"] = r["events"]
    res["sim_wall_s"] = round(out.wall_s, 2)
    res["events_per_s"] = round(out.events_per_s)
    res["sojourn_s"] = r["sojourn_s"]
    res.row("nodes x slots, virtual hours", f"{nodes} x {slots}, {hours:g}")
    res.row("tasks / events", f"{r['tasks']:,} / {r['events']:,}")
    res.row("wall s", f"{out.wall_s:.2f}")
    res.row("events/s", f"{out.events_per_s:,.0f}")
    res.target("simulated events/s", ">=", EVENTS_TARGET, res["events_per_s"], "events/s")
    if args.scale:
        res.target("1,000 nodes x 8 slots, one virtual hour", "<=", SCALE_TARGET_S, res["sim_wall_s"], "s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.sim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--nodes", type=positive_int, default=100, help="simulated nodes")
    p.add_argument("--slots", type=positive_int, default=8, help="worker slots per node")
    p.add_argument("--hours", type=float, default=1.0, help="virtual hours of arrivals")
    p.add_argument("--scale", action="store_true", help="the issue's case: 1,000 nodes x 8 slots, one hour")
    p.add_argument("--policy", default="none", help="none, random, seed, adaptive, oracle")
    p.add_argument("--epsilon", type=float, default=None, help="epsilon per task of the releases (default: no noise)")
    args = p.parse_args(argv)
    if not args.hours > 0:
        p.error("--hours must be > 0")
    install_signal_handlers()
    res = Result("sim", args)
    return res.run_and_emit(lambda: run(args, res))


if __name__ == "__main__":
    sys.exit(main())
