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


def test_a_malformed_redis_url_is_named_without_a_traceback() -> None:
    proc = _fedcoord("demo", "--redis-url", "nonsense", "--json")
    assert proc.returncode == 1
    assert "redis_url" in proc.stderr
    assert "redis://" in proc.stderr  # the forms it takes
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_node_id_help_shows_the_key_prefix_literally() -> None:
    proc = _fedcoord("demo", "--help")
    assert "fc:<id>:" in proc.stdout


def test_a_second_run_on_the_same_data_reports_its_own_counts(tmp_path: Path) -> None:
    args = ("demo", "--tasks", "40", "--speed", "0.002", "--json", "--data-dir", str(tmp_path / "data"))
    runs = []
    for seed in ("1", "2"):
        proc = _fedcoord(*args, "--seed", seed, timeout_s=60)
        assert proc.returncode == 0, proc.stderr
        runs.append(json.loads(proc.stdout))
    first, second = runs
    for run in runs:
        assert run["demo"]["run_totals"]["submitted"] == run["demo"]["submitted_unique"] == 40
    # the node's own counters are cumulative over both runs on this data
    assert second["stats"]["totals"]["submitted"] == 80
    for key in ("retried", "timed_out", "workers_lost", "completed"):
        assert second["stats"]["totals"].get(key, 0) == first["demo"]["run_totals"].get(key, 0) + second["demo"][
            "run_totals"
        ].get(key, 0), key
