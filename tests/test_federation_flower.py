"""The federation through Flower with real processes on loopback: a SuperLink, one SuperNode per
node, fedcoord nodes serving over gRPC, and the fedcoord app submitted as a run. Rounds are read
from the ServerApp's status file; every process is stopped at the end and none is left."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from federation.launch import FLOWER_ENV, FlowerHome, Proc, wait_listening
from tests.conftest import free_port, wait_until

pytestmark = pytest.mark.slow

FLOWER_ENV_OK = dict(os.environ, **FLOWER_ENV)  # what every Flower process here runs with


class Federation:
    def __init__(self, root: Path, n: int, node_env: dict[str, str]):
        self.home = FlowerHome(root)
        self.root = root
        self.node_ports = [free_port() for _ in range(n)]
        self.nodes: list[Proc] = []
        env = dict(self.home.env, **node_env)
        for i, port in enumerate(self.node_ports):
            argv = [
                sys.executable, "-m", "fedcoord", "node", "--node-id", f"n{i + 1}", "--listen", f"127.0.0.1:{port}",
                "--insecure", "--metrics-listen", "", "--data-dir", str(root / f"data-n{i + 1}"),
            ]  # fmt: skip
            self.nodes.append(Proc(f"n{i + 1}", argv, root / "logs" / f"n{i + 1}.log", env).start())
        self.superlink_port = free_port()
        self.superlink = self.home.superlink(self.superlink_port).start()
        wait_listening(f"127.0.0.1:{self.superlink_port}", 60, self.superlink)
        self.supernodes = [
            self.home.supernode(
                f"127.0.0.1:{self.superlink_port}",
                free_port(),
                {"node-address": f"127.0.0.1:{port}", "node-insecure": True},
                f"supernode-{i + 1}",
            ).start()
            for i, port in enumerate(self.node_ports)
        ]
        self.home.name_superlink("fc", f"127.0.0.1:{self.superlink_port}")
        self.status = root / "status.jsonl"

    def rounds(self) -> list[dict[str, Any]]:
        if not self.status.exists():
            return []
        return [json.loads(line) for line in self.status.read_text().splitlines() if line.strip()]

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.tail(15)}" for p in [*self.nodes, self.superlink, *self.supernodes])

    def stop(self) -> None:
        self.home.stop_all()
        for p in self.nodes:
            p.stop()


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    f = Federation(tmp_path, 2, {"FEDCOORD_NODE__WINDOW_S": "1.0", "FEDCOORD_ADMISSION__POLICY": "seed"})
    try:
        yield f
    finally:
        f.stop()
        left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True, check=False)
        assert left.stdout.strip() == "", f"processes left behind:\n{left.stdout}"


def test_rounds_collect_every_node_s_summary_and_hand_each_node_the_view(federation: Federation) -> None:
    f = federation
    run_id = f.home.run(
        "fc", {"rounds": 3, "period-s": 1.0, "ttl-s": 30.0, "status-file": str(f.status), "min-nodes": 2}
    )
    assert run_id > 0
    wait_until(lambda: len(f.rounds()) >= 3, 150, f"three rounds\n{f.logs()}")
    rounds = f.rounds()
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(r["asked"] == 2 and not r["errors"] for r in rounds), rounds
    last = rounds[-1]
    # every SuperNode is known by its fedcoord node, and both released (1 s windows)
    assert sorted(last["statuses"]) == ["n1", "n2"], last
    assert sorted(last["participants"]) == ["n1", "n2"] and last["missing"] == [], last
    assert sorted(last["nodes"]) == ["n1", "n2"]
    # from the second round on each node got the previous view and set its threshold (seed rule)
    assert sorted(last["thresholds"]) == ["n1", "n2"] and set(last["policies"].values()) == {"seed"}
    assert all(t in (0.5, 0.8) for t in last["thresholds"].values()), last["thresholds"]
    assert all(0 <= left <= 1.0 for left in last["budget_left"].values())
    assert os.path.getsize(f.status) > 0


def test_aggregator_and_nodes_that_join_it_run_rounds_and_stop_clean(tmp_path: Path) -> None:
    """The multi-machine shape on one host: `fedcoord aggregator` (SuperLink and run) and two
    `fedcoord node --federation ADDRESS` (each keeps its own SuperNode); SIGTERM stops them all."""
    port = free_port()
    env = dict(FLOWER_ENV_OK, FEDCOORD_NODE__WINDOW_S="1.0")
    fedcoord = str(Path(sys.executable).parent / "fedcoord")
    commands = {
        "agg": [fedcoord, "aggregator", "--listen", f"127.0.0.1:{port}", "--insecure", "--period-s", "2",
                "--min-nodes", "2", "--json", "--dir", str(tmp_path / "federation")],
        **{f"j{i}": [fedcoord, "node", "--node-id", f"j{i}", "--listen", f"127.0.0.1:{free_port()}", "--insecure",
                     "--metrics-listen", "", "--data-dir", str(tmp_path / f"j{i}"), "--federation",
                     f"127.0.0.1:{port}"] for i in (1, 2)},
    }  # fmt: skip
    procs: dict[str, subprocess.Popen[bytes]] = {}
    with contextlib.ExitStack() as files:
        try:
            for name, argv in commands.items():
                stdout = files.enter_context(open(tmp_path / f"{name}.out", "wb"))
                stderr = files.enter_context(open(tmp_path / f"{name}.err", "wb"))
                procs[name] = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=env)

            def rounds() -> list[dict[str, Any]]:
                lines = (tmp_path / "agg.out").read_text().splitlines()
                return [json.loads(x) for x in lines if x.startswith("{")]

            def both() -> bool:
                return any(sorted(r["participants"]) == ["j1", "j2"] for r in rounds())

            wait_until(both, 150, "a round with both nodes\n" + (tmp_path / "agg.err").read_text()[-2000:])
            assert all(not r["errors"] for r in rounds())
        finally:
            for p in procs.values():
                p.terminate()
            codes = {name: p.wait(60) for name, p in procs.items()}
    assert codes == {"agg": 0, "j1": 0, "j2": 0}, codes
    left = subprocess.run(["pgrep", "-af", str(tmp_path)], capture_output=True, text=True, check=False)
    assert left.stdout.strip() == "", f"processes left behind:\n{left.stdout}"
