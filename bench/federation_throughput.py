"""Node throughput with the federation on and off, side by side.

One ``fedcoord node`` process (embedded Redis), one ``fedcoord worker`` process (no-op handler)
and this process submitting as fast as it can (``submit_one`` per task), as in ``bench.e2e``.
Runs alternate, ``--pairs`` times: **off** (no federation on the machine) then **on**: the node
started with ``--federation`` against a ``fedcoord aggregator`` (a SuperLink, the ServerApp,
rounds every ``--period-s``), so the node runs its own SuperNode and Flower spawns a ClientApp
process per round that calls the node's ``ApplyFederation`` and ``Summary``. An "on" run starts
submitting only after the node took part in a round, and counts the rounds it spans.

Reported per mode: tasks/s (median of the runs), the node process's CPU per 1,000 tasks (what
federating costs the node itself), and the machine's CPU per second (/proc/stat: what the
federation costs everything on these 2 cores). With ``--contended``, each pair also gets a
"contended" run: the node *not* joined while the aggregator runs rounds with another node on the
machine, which splits Flower's cost to the machine from the node's own cost of federating.

    python -m bench.federation_throughput [--tasks 300000] [--pairs 2] [--period-s 10] [--contended]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._common import Result, check, cpu_s, install_signal_handlers, make_specs, make_temp_dir, positive_int
from bench.e2e import _free_port, process
from bench.federation import _cpu_s as _machine_cpu_s
from federation.up import read_rounds as _rounds
from node.rpc.client import NodeClient

ON_VS_OFF_TARGET = 0.6


def _wait(cond: Any, timeout_s: float, what: str, procs: list[Any]) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what}: a process exited (rc {p.returncode})")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.1)


def _took_part(rounds_file: Path, node_id: str) -> Callable[[], bool]:
    return lambda: any(node_id in r["participants"] for r in _rounds(rounds_file))


def _one_run(
    args: argparse.Namespace, tmp: Path, label: str, federation: str | None, rounds_file: Path | None
) -> dict[str, Any]:
    node_id = f"bench-{label}"
    address = f"127.0.0.1:{_free_port()}"
    node_args = ["node", "--node-id", node_id, "--listen", address, "--insecure", "--metrics-listen", ""]
    node_args += ["--dashboard-listen", ""]  # no web view (nor its default port)
    node_args += ["--data-dir", str(tmp / node_id), "--log-level", "warning"]
    if federation is not None:
        node_args += ["--federation", federation]
    with process(node_args, tmp / f"{node_id}.log") as node:
        assert node.stdout is not None
        line = node.stdout.readline()
        if not line.startswith("serving"):
            raise RuntimeError(f"the node did not start: {(tmp / f'{node_id}.log').read_text()[-2000:]}")
        worker_args = ["worker", "--node", address, "--insecure", "--id", "w1", "--default", "noop"]
        worker_args += ["--concurrency", str(args.concurrency), "--log-format", "text"]
        with (
            process(worker_args, tmp / f"{node_id}-worker.log") as worker,
            NodeClient(address, insecure=True) as client,
        ):
            _wait(lambda: bool(client.stats().workers), 30, "the worker attaching", [node, worker])
            if rounds_file is not None:  # took part in a round: the SuperNode and ClientApp path is warm
                _wait(_took_part(rounds_file, node_id), 120, f"{node_id} taking part in a round", [node, worker])
            rounds_before = len(_rounds(rounds_file)) if rounds_file is not None else 0
            specs = make_specs(args.tasks, False)
            node_cpu0, machine0 = cpu_s(node.pid), _machine_cpu_s()
            t0 = time.perf_counter()
            futures: list[concurrent.futures.Future[str]] = [client.submit_one(s) for s in specs]
            ids = [f.result() for f in futures]
            deadline = time.monotonic() + max(60.0, args.tasks / 1000)
            while True:
                totals = client.stats().totals
                done = totals.get("completed", 0) + totals.get("failed", 0)
                if done >= args.tasks or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            elapsed = time.perf_counter() - t0
            node_cpu, machine = cpu_s(node.pid) - node_cpu0, _machine_cpu_s() - machine0
            spanned = [r for r in _rounds(rounds_file)[rounds_before:]] if rounds_file is not None else []
    return {
        "mode": "on" if federation else "off",
        "tasks": args.tasks,
        "distinct_ids": len(set(ids)),
        "completed": totals.get("completed", 0),
        "tasks_per_s": round(args.tasks / elapsed),
        "elapsed_s": round(elapsed, 2),
        "node_cpu_ms_per_1000_tasks": round(node_cpu * 1e6 / args.tasks, 1),
        "machine_cpu_s_per_s": round(machine / elapsed, 2),
        "rounds_during_run": len(spanned),
        "rounds_with_node": sum(1 for r in spanned if node_id in r["participants"]),
    }


def run(args: argparse.Namespace, res: Result) -> None:
    tmp = make_temp_dir("fed-throughput")
    runs: list[dict[str, Any]] = []
    for pair in range(args.pairs):
        runs.append(_one_run(args, tmp, f"off{pair}", None, None))
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
        link = f"127.0.0.1:{_free_port()}"
        agg_dir = tmp / f"aggregator{pair}"
        agg_args = ["aggregator", "--listen", link, "--dir", str(agg_dir), "--insecure", "--dashboard-listen", ""]
        agg_args += ["--period-s", str(args.period_s), "--ttl-s", "15"]
        with process(agg_args, tmp / f"aggregator{pair}.log"):
            if args.contended:  # Flower busy on the machine with another node; this one not in it
                rounds_file = agg_dir / "rounds.jsonl"
                by = f"bystander{pair}"
                by_args = ["node", "--node-id", by, "--listen", f"127.0.0.1:{_free_port()}", "--insecure"]
                by_args += ["--metrics-listen", "", "--dashboard-listen", "", "--data-dir", str(tmp / by)]
                by_args += ["--federation", link]
                with process(by_args, tmp / f"{by}.log") as bystander:
                    _wait(_took_part(rounds_file, by), 120, f"{by} taking part in a round", [bystander])
                    runs.append({**_one_run(args, tmp, f"contended{pair}", None, None), "mode": "contended"})
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
            runs.append(_one_run(args, tmp, f"on{pair}", link, agg_dir / "rounds.jsonl"))
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    res["runs"] = runs
    for r in runs:
        check(res.errors, r["distinct_ids"] == r["tasks"], f"{r['mode']}: {r['distinct_ids']} distinct ids")
        check(res.errors, r["completed"] == r["tasks"], f"{r['mode']}: {r['completed']} of {r['tasks']} completed")
        if r["mode"] == "on" and r["elapsed_s"] > 2 * args.period_s:  # (a short smoke run may fall between rounds)
            check(res.errors, r["rounds_with_node"] >= 1, f"on: the node took part in {r['rounds_with_node']} rounds")
    res["unit"] = "tasks/s end to end on one node (submit_one per task -> completed by a worker process)"
    for mode in ("off", "contended", "on") if args.contended else ("off", "on"):
        mine = [r for r in runs if r["mode"] == mode]
        med = {
            k: statistics.median(r[k] for r in mine)
            for k in ("tasks_per_s", "node_cpu_ms_per_1000_tasks", "machine_cpu_s_per_s")
        }
        res[mode] = med
        res.row(f"federation {mode}: tasks/s", med["tasks_per_s"])
        res.row(f"federation {mode}: node CPU ms per 1000 tasks", med["node_cpu_ms_per_1000_tasks"])
        res.row(f"federation {mode}: machine CPU s per s", med["machine_cpu_s_per_s"])
    res["on_vs_off"] = round(res["on"]["tasks_per_s"] / res["off"]["tasks_per_s"], 3)
    res.row("on / off tasks/s", res["on_vs_off"])
    # Ours (the issue asks for the figure, not a bound): on these 2 cores Flower's own processes
    # compete with the node for CPU; the federation may not cost the node more than 40%.
    res.target("federation on / off tasks/s", ">=", ON_VS_OFF_TARGET, res["on_vs_off"], "ratio")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.federation_throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--tasks", type=positive_int, default=300_000, help="tasks per run, one submit_one each")
    p.add_argument("--pairs", type=positive_int, default=2, help="off/on pairs of runs")
    p.add_argument("--period-s", type=float, default=10.0, help="seconds between the federation's rounds")
    p.add_argument("--concurrency", type=positive_int, default=256, help="the worker's concurrency")
    p.add_argument(
        "--contended",
        action="store_true",
        help="also a run with the node not joined while Flower runs rounds with another node on the machine",
    )
    args = p.parse_args(argv)
    if args.period_s < 1:
        p.error("--period-s must be >= 1")
    install_signal_handlers()
    res = Result("federation_throughput", args)
    return res.run_and_emit(lambda: run(args, res))


if __name__ == "__main__":
    sys.exit(main())
