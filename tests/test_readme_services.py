"""The README's service examples run as written: two node processes with a worker each, a
skewed load on one, hand-offs seen from both (the shell block), and the NodeClient example
against a running node. Ports are swapped for free ones; nothing else is changed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.test_cmd_node import NodeProc

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _block(lang: str, first_line: str) -> str:
    blocks = re.findall(rf"```{lang}\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)
    found = [b for b in blocks if first_line in b]
    assert len(found) == 1, f"one README {lang} block with {first_line!r} expected, found {len(found)}"
    return found[0]


def _free_ports(text: str) -> str:
    """Every 127.0.0.1:PORT of the text on a free port (the same port for the same one)."""
    ports: dict[str, int] = {}
    return re.sub(r"127\.0\.0\.1:(\d{4,5})", lambda m: f"127.0.0.1:{ports.setdefault(m[1], free_port())}", text)


@pytest.mark.slow
def test_readme_two_node_example_runs_and_hands_off(tmp_path: Path) -> None:
    script = _free_ports(_block("sh", "export N1=")).replace("F=.venv/bin/fedcoord", f"F={BIN}/fedcoord")
    env = {k: v for k, v in os.environ.items() if k != "FEDCOORD_DASHBOARD_LISTEN"}  # the README's ports, as written
    r = subprocess.run(
        ["bash", "-e", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False, env=env
    )
    logs = {p.name: p.read_text()[-3000:] for p in tmp_path.glob("*.log")}
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n{logs}"
    outcomes = (tmp_path / "outcomes.txt").read_text().splitlines()
    assert len(outcomes) == 400 and all(" completed " in line for line in outcomes), outcomes[:5]
    handed = re.search(r'fedcoord_handoffs_total\{event="handed_off"\} (\d+)', r.stdout)
    assert handed is not None and int(handed[1]) > 0, r.stdout
    assert "handed_off" in r.stdout and "adopted" in r.stdout  # n1's and n2's status views
    assert "epsilon 1, delta 1e-06, m 3" in r.stdout  # n1's privacy budget
    for name, text in logs.items():
        assert "Traceback" not in text, f"{name}: {text}"


def test_readme_client_example_runs_against_a_node(tmp_path: Path, redis_url: str) -> None:
    port = free_port()
    args = ["--node-id", "readme", "--listen", f"127.0.0.1:{port}", "--insecure", "--metrics-listen", ""]
    node = NodeProc([*args, "--redis-url", redis_url], tmp_path)
    try:
        node.wait_serving()
        code = _block("python", "NodeClient(").replace("127.0.0.1:50051", f"127.0.0.1:{port}")
        (tmp_path / "client.py").write_text(code)
        r = subprocess.run(
            [sys.executable, "client.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.startswith("queued Load(")  # nobody works on this node: the task waits
        assert node.stop() == 0
    finally:
        node.close()
