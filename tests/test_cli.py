"""The ``fedcoord`` command line, run as a real subprocess (embedded Redis, real workers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from fedcoord.demo_workers import DEFAULT_ROSTER

_SCRIPT = Path(sys.executable).parent / "fedcoord"
_ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}


def _fedcoord(*args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    cmd = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "fedcoord.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout_s, env=_ENV, check=False)


def test_demo_json_report_accounts_for_every_task() -> None:
    proc = _fedcoord("demo", "--tasks", "60", "--speed", "0.002", "--json", "--seed", "1", timeout_s=60)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    data = json.loads(proc.stdout)  # nothing but the JSON report on stdout
    report, demo = data["report"], data["demo"]
    assert data["ok"] is True
    assert data["problems"] == []
    unique = demo["submitted_unique"]
    assert unique == 60
    assert report["completed"] + report["failed"] + report["cancelled"] == unique
    assert sum(demo["outcome"].values()) == unique
    assert report["tasks_finished"] == unique
    assert demo["unfinished"] == []
    assert demo["dedup_hits"] == demo["duplicate_submits"]
    workers = {w.id for w in DEFAULT_ROSTER}
    assert set(report["worker_stats"]) == workers
    for wid, ws in report["worker_stats"].items():
        assert {"skill", "completed_tasks", "failed_tasks", "success_rate"} <= ws.keys(), wid
    assert sum(ws["completed_tasks"] for ws in report["worker_stats"].values()) >= report["completed"]
    assert report["completed"] > 0


def test_help_explains_the_commands_and_options() -> None:
    top = _fedcoord("--help")
    assert top.returncode == 0, top.stderr
    assert "demo" in top.stdout
    assert "--version" in top.stdout
    sub = _fedcoord("demo", "--help")
    assert sub.returncode == 0, sub.stderr
    for option in ("--tasks", "--data-dir", "--keep", "--redis-url", "--seed", "--speed", "--json", "--node-id"):
        assert option in sub.stdout, option


def test_version() -> None:
    proc = _fedcoord("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"fedcoord {version('fedcoord')}"
    mod = subprocess.run(
        [sys.executable, "-m", "fedcoord", "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    assert mod.returncode == 0, mod.stderr
    assert mod.stdout.strip() == proc.stdout.strip()


def test_bad_option_is_a_usage_error() -> None:
    proc = _fedcoord("demo", "--tasks", "0")
    assert proc.returncode == 2
    assert "--tasks" in proc.stderr
