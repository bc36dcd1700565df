"""Shared helpers of the benchmarks: a private redis-server, temp dirs, percentiles, RSS, GC
pauses, task specs, and the result printing (one JSON object on stdout, a table on stderr).

Exit status of every benchmark: 0 when it verified its counts and met its targets, 3 when it
verified them but missed a target, 1 when the counts did not verify (or it crashed), 2 for bad
parameters (argparse)."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime
import gc
import json
import logging
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import redis

from node.embedded import EmbeddedRedis
from node.model import Priority, TaskSpec

__all__ = [
    "GcMonitor",
    "RedisServer",
    "Result",
    "check",
    "cpu_s",
    "environment",
    "make_specs",
    "make_temp_dir",
    "percentile",
    "process_tree",
    "rss_bytes",
    "summarize_ns",
]

EXIT_OK = 0
EXIT_UNVERIFIED = 1
EXIT_TARGET_MISSED = 3

TASK_TYPE = "bench.noop"
MIX_TYPES = ("bench.a", "bench.b", "bench.c", "bench.d")
PRIORITIES = (Priority.CRITICAL, Priority.HIGH, Priority.MEDIUM, Priority.LOW)
_PAGE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------- process hygiene


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # so that atexit handlers (redis-server, temp dirs) run


def install_signal_handlers() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)


def make_temp_dir(prefix: str) -> Path:
    """A fresh temp dir, removed when the process exits."""
    d = Path(tempfile.mkdtemp(prefix=f"fcbench-{prefix}-"))
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    return d


class RedisServer(EmbeddedRedis):
    """A private redis-server (AOF everysec, no RDB) on a free port in a temp dir, removed at exit."""

    def __init__(self) -> None:
        super().__init__(make_temp_dir("redis"), tcp_port=0)
        atexit.register(self.stop)

    def run(self) -> RedisServer:
        self.start()
        return self

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=60)

    def version(self) -> str:
        c = self.client()
        try:
            return str(c.info("server").get("redis_version"))
        finally:
            c.close()


# ---------------------------------------------------------------------- measuring


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(-(-q * len(sorted_values) // 100)) - 1))
    return sorted_values[k]


def summarize_ns(values_ns: Sequence[int]) -> dict[str, float]:
    """p50/p90/p99/p999/max/mean of durations in ns, reported in microseconds."""
    v = sorted(values_ns)
    if not v:
        return {"count": 0}
    us = 1e3
    return {
        "count": len(v),
        "p50_us": percentile(v, 50) / us,
        "p90_us": percentile(v, 90) / us,
        "p99_us": percentile(v, 99) / us,
        "p999_us": percentile(v, 99.9) / us,
        "max_us": v[-1] / us,
        "mean_us": sum(v) / len(v) / us,
    }


def rss_bytes() -> int:
    """Resident set size of this process now (from /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces and parentheses)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_s(*pids: int) -> float:
    """User + system CPU seconds of processes (from /proc; one that is gone counts 0)."""
    ticks = 0
    for pid in pids:
        try:
            f = _stat_fields(pid)
        except FileNotFoundError:
            continue
        ticks += int(f[11]) + int(f[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants now (from /proc)."""
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                children.setdefault(int(_stat_fields(int(p.name))[1]), []).append(int(p.name))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
    seen, todo = [], [pid]
    while todo:
        q = todo.pop()
        seen.append(q)
        todo.extend(children.get(q, ()))
    return seen


def peak_rss_bytes() -> int:
    import resource  # noqa: PLC0415 - Unix only

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class GcMonitor:
    """Counts garbage collections and their pauses while active (gc.callbacks)."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.pause_ns = [0, 0, 0]
        self.max_pause_ns = [0, 0, 0]
        self._t0 = 0

    def _cb(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter_ns()
            return
        g = info["generation"]
        d = time.perf_counter_ns() - self._t0
        self.count[g] += 1
        self.pause_ns[g] += d
        self.max_pause_ns[g] = max(self.max_pause_ns[g], d)

    @contextlib.contextmanager
    def active(self) -> Iterator[GcMonitor]:
        gc.callbacks.append(self._cb)
        try:
            yield self
        finally:
            gc.callbacks.remove(self._cb)

    def report(self) -> dict[str, Any]:
        return {
            "collections": {f"gen{g}": self.count[g] for g in range(3)},
            "total_pause_ms": {f"gen{g}": round(self.pause_ns[g] / 1e6, 3) for g in range(3)},
            "max_pause_ms": {f"gen{g}": round(self.max_pause_ns[g] / 1e6, 3) for g in range(3)},
        }


def gc_tune(enabled: bool) -> dict[str, Any]:
    """Apply the --gc-tune thresholds if asked; return what is in force."""
    if enabled:
        gc.set_threshold(100_000, 50, 100)
    return {"tuned": enabled, "threshold": list(gc.get_threshold())}


# ---------------------------------------------------------------------- workload


def make_specs(n: int, mix: bool, rng: random.Random | None = None) -> list[TaskSpec]:
    """``n`` distinct TaskSpec objects of no-op tasks with an empty payload.

    Uniform: one type, MEDIUM, difficulty 1. Mix: 4 types, the 4 priorities and difficulties
    1..10 drawn at random (a worker of skill 10 takes them all).
    """
    if not mix:
        medium = Priority.MEDIUM
        return [TaskSpec(TASK_TYPE, b"", None, medium, 1) for _ in range(n)]
    r = rng or random.Random(0)
    rnd = r.random
    out = []
    for _ in range(n):
        x = int(rnd() * 160)  # 4 types x 4 priorities x 10 difficulties
        out.append(TaskSpec(MIX_TYPES[x & 3], b"", None, PRIORITIES[(x >> 2) & 3], 1 + (x >> 4)))
    return out


# ---------------------------------------------------------------------- results


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        r = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "git_commit": _git_commit(),
        "pid": os.getpid(),
    }


def check(errors: list[str], cond: bool, message: str) -> None:
    """Record a failed verification (the run is then reported as not ok)."""
    if not cond:
        errors.append(message)


class Result:
    """Collects one benchmark's output; :meth:`emit` prints it and returns the exit code."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.t0 = time.time()
        self.data: dict[str, Any] = {
            "name": name,
            "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "parameters": {k: v for k, v in vars(args).items() if not k.startswith("_")},
            "environment": environment(),
        }
        self.errors: list[str] = []
        self.rows: list[tuple[str, str]] = []

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def row(self, label: str, value: Any) -> None:
        self.rows.append((label, value if isinstance(value, str) else _fmt(value)))

    def target(self, metric: str, op: str, threshold: float, measured: float | None, unit: str) -> bool:
        ops: dict[str, Callable[[float, float], bool]] = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b}
        ok = measured is not None and not math.isnan(measured) and ops[op](measured, threshold)
        self.data.setdefault("targets", []).append(
            {"metric": metric, "op": op, "threshold": threshold, "measured": measured, "unit": unit, "pass": ok}
        )
        return ok

    def run_and_emit(self, measure: Callable[[], object]) -> int:
        """Run the measurement; a crash is reported in the JSON (not as a bare traceback)."""
        try:
            measure()
        except Exception as e:
            logging.exception("benchmark failed")
            self.errors.append(f"benchmark failed: {e!r}")
        return self.emit()

    def emit(self) -> int:
        d = self.data
        d["environment"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        d["wall_s"] = round(time.time() - self.t0, 3)
        d["verified"] = not self.errors
        d["errors"] = self.errors
        targets = d.get("targets", [])
        # None: nothing to judge (no target among what was run); exit 0 if the counts verified
        d["pass"] = (all(t["pass"] for t in targets) and not self.errors) if targets else None
        sys.stdout.write(json.dumps(d, default=str) + "\n")
        sys.stdout.flush()
        w = max([len(k) for k, _ in self.rows] + [10])
        lines = [f"== {d['name']} ({d['environment']['python']}, load {d['environment']['loadavg_start']})"]
        lines += [f"  {k:<{w}}  {v}" for k, v in self.rows]
        for t in targets:
            verdict = "PASS" if t["pass"] else "FAIL"
            lines.append(f"  target {t['metric']} {t['op']} {_fmt(t['threshold'])} {t['unit']}: {verdict}")
        lines.append(f"  verified: {'yes' if not self.errors else 'NO: ' + '; '.join(self.errors)}")
        sys.stderr.write("\n".join(lines) + "\n")
        sys.stderr.flush()
        if self.errors:
            return EXIT_UNVERIFIED
        return EXIT_TARGET_MISSED if d["pass"] is False else EXIT_OK


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def positive_int(s: str) -> int:
    v = int(s.replace("_", "").replace(",", ""))
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{s!r} is not a positive integer")
    return v
