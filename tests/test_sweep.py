"""``fedcoord privacy sweep``: the grid, its files and plots, resuming after an interrupt, bad input."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from federation.sim import SimConfig
from federation.sim.sweep import Cell, SweepConfig, SweepError, rows_of, run_sweep, summarize
from node.errors import ValidationError
from tests.conftest import wait_until

_BASE = SimConfig(nodes=4, slots=(2, 6), load=0.85, spread=0.3, service_mean_s=1.0, duration_s=400.0, warmup_s=50.0)
_CLI = [sys.executable, "-m", "fedcoord", "privacy", "sweep", "--nodes", "4", "--slots", "2,6", "--load", "0.85",
        "--service-mean-s", "1", "--duration-s", "400", "--warmup-s", "50", "--seeds", "0,1"]  # fmt: skip


def test_the_grid_runs_policies_that_read_no_view_once_per_seed() -> None:
    cfg = SweepConfig(base=_BASE, epsilons=(None, 1.0, 0.1), policies=("none", "adaptive", "oracle"), seeds=(0, 1))
    cells = cfg.cells()
    assert len(cells) == 2 + 3 * 2 + 2
    assert Cell("adaptive", 0.1, 1) in cells and Cell("none", 1.0, 0) not in cells
    assert len({c.key for c in cells}) == len(cells)


def test_a_sweep_resumes_with_only_the_missing_cells_and_refuses_another_sweeps_directory(tmp_path: Path) -> None:
    cfg = SweepConfig(base=_BASE, epsilons=(None, 1.0), policies=("none", "adaptive"), seeds=(0,))
    first = run_sweep(cfg, tmp_path, workers=2)
    assert [r["key"] for r in first] == [c.key for c in cfg.cells()]
    log = tmp_path / "cells.jsonl"
    lines = log.read_text().splitlines()
    assert len(lines) == 3
    # as if killed while the last cell was being written: that line torn, one cell missing
    log.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    ran: list[tuple[str, bool]] = []
    again = run_sweep(cfg, tmp_path, workers=1, on_cell=lambda c, r, resumed: ran.append((c.key, resumed)))
    assert sorted(resumed for _, resumed in ran) == [False, True, True]
    assert json.dumps([r["result"] for r in again]) == json.dumps([r["result"] for r in first])  # byte for byte
    # a cell recorded with other settings than this sweep's (an older version, a hand edit) runs again
    lines = log.read_text().splitlines()
    rec = json.loads(lines[0])
    rec["result"]["config"]["load"] = 0.5
    log.write_text("\n".join([json.dumps(rec), *lines[1:]]) + "\n")
    ran.clear()
    third = run_sweep(cfg, tmp_path, workers=1, on_cell=lambda c, r, resumed: ran.append((c.key, resumed)))
    assert (rec["key"], False) in ran and sorted(resumed for _, resumed in ran) == [False, True, True]
    assert json.dumps([r["result"] for r in third]) == json.dumps([r["result"] for r in first])
    other = SweepConfig(base=_BASE, epsilons=(None,), policies=("none",), seeds=(0,))
    with pytest.raises(SweepError, match="another sweep"):
        run_sweep(other, tmp_path)
    rows = rows_of(cfg, again)
    assert {(r["policy"], r["epsilon"]) for r in rows} == {
        ("none", "none"),
        ("none", 1.0),
        ("adaptive", "none"),
        ("adaptive", 1.0),
    }
    head = summarize(cfg, rows)["headline"]["adaptive"]
    assert head["1.0"]["cut_vs_none"] > 0.2  # sharing cuts the p99 by far on this workload


def test_the_cli_writes_csv_json_and_plots_and_resumes_after_ctrl_c(tmp_path: Path) -> None:
    out = tmp_path / "sw"
    argv = [*_CLI, "--out", str(out), "--epsilons", "none,3,1,0.3", "--workers", "1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "cells.jsonl"
    wait_until(lambda: log.exists() and len(log.read_text().splitlines()) >= 2, 120, "two finished cells")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "resumes" in err
    kept = len(log.read_text().splitlines())
    assert 2 <= kept < 2 + 4 * 2 + 2  # some kept, not all: the rest is still to run
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert f"{kept} cells were finished before (resumed)" in done.stderr
    assert "p99 sojourn" in done.stdout
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * 4 * 2  # policies x epsilons x seeds
    res = json.loads((out / "results.json").read_text())
    assert set(res) == {"sweep", "rows", "summary"} and res["summary"]["headline"]["adaptive"]["1.0"]["p99_s"] > 0
    for name in ("privacy_utility", "handoff_rate", "imbalance", "budget"):
        png = (out / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000


@pytest.mark.parametrize(
    ("args", "named"),
    [(["--epsilons", "1,0"], "--epsilons"), (["--epsilons", "-1"], "--epsilons"), (["--epsilons", "x"], "--epsilons"),
     (["--policies", "greedy"], "sweep.policies"), (["--load", "1.2"], "sim.load"), (["--nodes", "0"], "sim.nodes"),
     (["--seeds", "1,1"], "sweep.seeds"), (["--workers", "1000"], "sweep.workers")],
)  # fmt: skip
def test_bad_sweep_settings_are_refused_naming_the_parameter(tmp_path: Path, args: list[str], named: str) -> None:
    r = subprocess.run([*_CLI, "--out", str(tmp_path / "x"), *args], capture_output=True, text=True, timeout=60,
                       check=False, env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert named in r.stderr


def test_sweep_config_refuses_empty_and_repeated_grids() -> None:
    for kw, name in (({"epsilons": ()}, "sweep.epsilons"), ({"epsilons": (1.0, 1.0)}, "sweep.epsilons"),
                     ({"policies": ()}, "sweep.policies"), ({"seeds": ()}, "sweep.seeds")):  # fmt: skip
        with pytest.raises(ValidationError, match=name):
            SweepConfig(base=_BASE, **kw)  # type: ignore[arg-type]


def test_a_sweep_on_ray_gives_the_same_rows_as_local_processes(tmp_path: Path) -> None:
    """``--ray-address local`` starts a Ray here (Flower's simulation extra brings it) and runs
    the cells as Ray tasks: the same results as the worker processes, byte for byte but for
    how long each took; an address where nothing answers is refused at once, naming it."""
    grid = ["--epsilons", "none,1", "--policies", "none,adaptive"]
    local = subprocess.run([*_CLI, *grid, "--out", str(tmp_path / "local")], capture_output=True, text=True,
                           timeout=300, check=False)  # fmt: skip
    assert local.returncode == 0, local.stderr
    on_ray = subprocess.run([*_CLI, *grid, "--out", str(tmp_path / "ray"), "--ray-address", "local"],
                            capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert on_ray.returncode == 0, on_ray.stderr
    assert "on Ray at local" in on_ray.stderr

    def rows(d: str) -> list[dict[str, object]]:
        return [
            {k: v for k, v in r.items() if k != "wall_s"}
            for r in json.loads((tmp_path / d / "results.json").read_text())["rows"]
        ]

    assert rows("local") == rows("ray") and len(rows("ray")) == 2 * 2 * 2
    nobody = subprocess.run([*_CLI, *grid, "--out", str(tmp_path / "x"), "--ray-address", "127.0.0.1:1"],
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert nobody.returncode == 1 and "no Ray cluster answers at '127.0.0.1:1'" in nobody.stderr
