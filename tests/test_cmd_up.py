"""``fedcoord up`` as a user runs it: a federation on this machine (nodes on embedded Redis, a
SuperLink, SuperNodes, the rounds, demo workers and workload) for a while, a JSON report at the
end, and no process left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_federation_flower import FLOWER_ENV_OK

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def _left_behind(path: Path) -> str:
    r = subprocess.run(["pgrep", "-af", str(path)], capture_output=True, text=True, check=False)
    return r.stdout.strip()


def test_up_runs_a_federation_that_rounds_and_hands_off_then_stops_clean(tmp_path: Path) -> None:
    root = tmp_path / "up"
    err = tmp_path / "stderr.txt"
    with open(err, "w") as e:
        # stopped by its 3rd round, not by a time that a slow day may not reach
        argv = [str(BIN / "fedcoord"), "up", "--nodes", "2", "--rounds", "3", "--duration", "200", "--period-s", "5"]
        argv.append("--json")
        r = subprocess.run(
            [*argv, "--dir", str(root)],
            stdout=subprocess.PIPE,
            stderr=e,
            text=True,
            timeout=280,
            check=False,
            env=FLOWER_ENV_OK,
        )
    assert r.returncode == 0, err.read_text()[-3000:]
    report = json.loads(r.stdout)
    assert report["rounds"] == 3, report  # --rounds stopped it (not --duration)
    assert report["first_round_s"] is not None and report["first_round_s"] < 150
    assert sorted(report["nodes"]) == ["n1", "n2"] and all(n["up"] for n in report["nodes"].values())
    last = report["last_round"]
    assert sorted(last["participants"]) == ["n1", "n2"] and last["missing"] == []
    assert set(last["policies"].values()) == {"adaptive"}
    assert report["submitted"] > 0 and report["nodes"]["n1"]["handed_off_out"] > 0  # the skew moved work
    assert report["nodes"]["n2"]["handed_off_in"] > 0
    assert _left_behind(root) == ""


def test_up_refuses_an_unknown_policy_by_name(tmp_path: Path) -> None:
    argv = [str(BIN / "fedcoord"), "up", "--policy", "bogus", "--dir", str(tmp_path / "up")]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and "--policy" in r.stderr and "bogus" in r.stderr
    assert _left_behind(tmp_path) == ""


def test_up_again_on_the_same_dir_keeps_the_nodes_data_and_starts_flower_over(tmp_path: Path) -> None:
    """What a second ``fedcoord up --dir`` finds of the first: the nodes' data stays (their
    queues and privacy ledgers live there), the SuperLink's database (SuperNodes and runs that
    are gone) is removed, and the old rounds file is kept aside, not read as this run's."""
    from federation.up import Federation, UpConfig  # noqa: PLC0415

    root = tmp_path / "up"
    (root / "nodes" / "n1").mkdir(parents=True)
    (root / "nodes" / "n1" / "appendonly.aof").write_text("kept")
    for name in ("superlink.db", "superlink.db-wal", "superlink.db-shm"):
        (root / name).write_text("old")
    (root / "rounds.jsonl").write_text('{"round": 7}\n')
    fed = Federation(UpConfig(nodes=1), root)
    fed._fresh_flower_state()
    assert fed.rounds() == []
    assert (root / "rounds.previous.jsonl").read_text() == '{"round": 7}\n'
    assert not any(root.glob("superlink.db*"))
    assert (root / "nodes" / "n1" / "appendonly.aof").read_text() == "kept"


def test_a_second_up_on_a_dir_in_use_is_refused_and_touches_nothing(tmp_path: Path) -> None:
    """While one federation holds its directory, another on it stops before removing anything
    (it would delete the running SuperLink's database)."""
    from federation.up import Federation, UpConfig  # noqa: PLC0415

    root = tmp_path / "up"
    first = Federation(UpConfig(nodes=1), root)
    first._lock_root()
    (root / "superlink.db").write_text("in use")
    second = Federation(UpConfig(nodes=1), root)
    with pytest.raises(OSError, match="in use by another fedcoord up"):
        second.start()
    second.stop()
    assert (root / "superlink.db").read_text() == "in use" and second.nodes == []
    first.stop()  # lets it go: the directory can be used again
    third = Federation(UpConfig(nodes=1), root)
    third._lock_root()
    third.stop()
