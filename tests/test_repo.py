"""House rules a broken commit would break: CI runs the README's test command exactly; lint
and strict typing pass."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", text, re.S)
    return [b.strip() for b in blocks[:2]]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    main_job, tests = readme_commands()
    assert "fedcoord up" in main_job and "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == tests


def test_ruff_is_clean() -> None:
    r = subprocess.run([BIN / "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict_is_clean() -> None:
    r = subprocess.run([BIN / "mypy"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


README_OUTPUT = [
    ("status=<TaskStatus.", "PerformanceReport("),  # using a node from Python
    ("[('completed', 'n2', b'IMG-0'), ('completed', 'n2', b'IMG-1')]",),  # hand-off between nodes
]


@pytest.mark.parametrize("n", range(len(README_OUTPUT)))
def test_readme_python_examples_run(n: int, tmp_path: Path) -> None:
    examples = re.findall(r"```python\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)
    examples = [e for e in examples if "NodeClient(" not in e]  # needs a node: tests/test_readme_services.py
    assert len(examples) == len(README_OUTPUT)
    script = tmp_path / "example.py"
    script.write_text(examples[n])
    r = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for text in README_OUTPUT[n]:
        assert text in r.stdout, r.stdout
