"""The dashboards of a real ``fedcoord up`` with 3 nodes, in a real headless Chromium, opened as a
new user does from the URL ``up`` prints: the federation view loads with no console error and
shows the 3 nodes, a number moves while tasks flow, the skewed workload's hand-offs are drawn as
flows; a node view linked from it refuses a requeue without the operator token and brings a
dead-lettered task back with it; the federation view says its rounds stopped while the
aggregator (the SuperLink and its ServerApp) is away, and follows the rounds again once ``up`` has
restarted it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from node.model import Priority, TaskSpec, TaskStatus, WorkerSpec
from node.rpc.client import NodeClient
from tests.browser import chromium, open_tab
from tests.conftest import wait_until
from tests.dashboard_node import http
from tests.test_federation_flower import FLOWER_ENV_OK

pytestmark = pytest.mark.slow

ALL_REPORTING = (  # the nodes table: 3 rows, each node's summary in the last round
    "(() => { const rows = [...document.querySelectorAll('#nodes tbody tr')];"
    " return rows.length === 3 && rows.every((r) => r.textContent.includes('reporting')); })()"
)
FLOWS = "echarts.getInstanceByDom(document.getElementById('flows')).getOption().series[0].links"


class Up:
    """``fedcoord up`` as a subprocess; its stderr in a file (the URL, the per-second lines)."""

    def __init__(self, root: Path, log: Path):
        self.root, self.log = root, log
        env = {**FLOWER_ENV_OK, "FEDCOORD_FEDERATION_DASHBOARD_LISTEN": "127.0.0.1:0", "PYTHONUNBUFFERED": "1"}
        with log.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fedcoord", "up", "--nodes", "3", "--period-s", "3", "--dir", str(root)],
                stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True,
            )  # fmt: skip

    def url(self) -> str:
        found: list[str] = []

        def printed() -> bool:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            found.extend(re.findall(r"^dashboard (http://\S+)", self.log.read_text(), re.M))
            return bool(found)

        wait_until(printed, 120, "fedcoord up printing its dashboard URL")
        return found[0]

    def node_address(self, node_id: str) -> str:
        """A node's gRPC address, from its command line (``up`` picks free ports)."""
        r = subprocess.run(
            ["pgrep", "-af", f"fedcoord node --node-id {node_id} "], capture_output=True, text=True, check=False
        )
        for line in r.stdout.splitlines():
            if str(self.root) in line:
                return re.findall(r"--listen (\S+)", line)[0]
        raise AssertionError(f"no process for node {node_id}: {r.stdout}")

    def superlink_pid(self) -> int:
        pattern = f"flower-superlink.*{re.escape(str(self.root))}"
        r = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False)
        pids = [int(p) for p in r.stdout.split()]
        assert pids, "no SuperLink running"
        return min(pids)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    u = Up(tmp_path / "up", tmp_path / "up.log")
    try:
        yield u
    finally:
        u.stop()
        left = subprocess.run(["pgrep", "-af", str(tmp_path / "up")], capture_output=True, text=True, check=False)
        assert left.stdout.strip() == "", f"processes left behind:\n{left.stdout}"


def _all_reporting(page: Page, up: Up, timeout_ms: float) -> None:
    """Wait for the 3 nodes to be shown reporting; on a timeout, say what the page and the last
    round had instead (the rounds file, ``up``'s log)."""
    try:
        page.wait_for_function(ALL_REPORTING, timeout=timeout_ms)
    except PlaywrightTimeout:
        rows = page.locator("#nodes tbody tr").all_text_contents()
        rounds = up.root / "rounds.jsonl"
        lines = rounds.read_text().splitlines() if rounds.exists() else []
        raise AssertionError(
            f"not all 3 nodes reporting after {timeout_ms / 1000:.0f} s\npage rows: {rows}\n"
            f"last rounds: {lines[-2:]}\nup log: {up.log.read_text()[-2500:]}"
        ) from None


def _dead_letter(address: str) -> str:
    """One task failed for good on the node at ``address`` (only the test's worker can take it), its
    error text markup (a task type cannot hold any: the node refuses it)."""
    with NodeClient(address, insecure=True, timeout_s=10) as c:
        (tid,) = c.submit([TaskSpec("doomed", max_retries=0, priority=Priority.CRITICAL,
                                    required_capabilities=("doom-test",))])  # fmt: skip
        c.register_worker(WorkerSpec("doom-worker", capabilities=("doom-test",), concurrency=1))
        (lease,) = c.claim("doom-worker", 1, wait_s=5)
        assert lease.task_id == tid
        c.fail(lease, "ValueError: <script>boom()</script>", retry=False)
        c.deregister_worker("doom-worker")
    return tid


def test_the_dashboard_of_fedcoord_up_moves_acts_and_recovers_after_the_aggregator_restarts(up: Up) -> None:
    url = up.url()
    with chromium() as browser:
        tab = open_tab(browser, url)
        page = tab.page
        page.wait_for_function("document.querySelector('#live').textContent === 'live'", timeout=30_000)
        # the 3 nodes, once a round has heard from them
        _all_reporting(page, up, 150_000)
        rows = page.locator("#nodes tbody tr td:first-child").all_text_contents()
        assert sorted(rows) == ["n1", "n2", "n3"]
        # a number moves while tasks flow: the next round comes with its numbers
        first = page.locator("#c-round").text_content()
        page.wait_for_function(f"document.querySelector('#c-round').textContent !== {json.dumps(first)}",
                               timeout=60_000)  # fmt: skip
        # the skew (most tasks to n1, the smallest) moves work: n1's released out-rate is a flow
        page.wait_for_function(f"{FLOWS}.some((l) => l.source === 'n1 \\u25B8' && l.value > 0)", timeout=90_000)

        # n3's own view, from the link on the federation page
        href = page.locator("#nodes tbody tr", has_text="n3").locator("a").get_attribute("href")
        assert href is not None
        node = open_tab(browser, href)
        np_ = node.page
        np_.wait_for_function("document.querySelector('#live').textContent === 'live'", timeout=30_000)
        done0 = int((np_.locator("#c-completed").text_content() or "0").replace(",", ""))
        np_.wait_for_function(f"Number(document.querySelector('#c-completed').textContent.replace(/,/g, '')) > {done0}",
                              timeout=30_000)  # fmt: skip
        dead = _dead_letter(up.node_address("n3"))
        np_.wait_for_selector(f"button[data-requeue='{dead}']", timeout=10_000)
        assert np_.locator(f"button[data-requeue='{dead}']").is_disabled()  # the viewer role
        assert "<script>" in (np_.locator("#dead tbody").text_content() or "")  # shown as text
        status, _ = http(href + f"api/dead/{dead}/requeue", method="POST")
        assert status == 401
        token = (up.root / "nodes" / "n3" / "dashboard-token").read_text().strip()
        np_.fill("#token", token)
        np_.dispatch_event("#token", "change")
        np_.wait_for_function("document.querySelector('#role').textContent === 'role: operator'", timeout=10_000)
        np_.click(f"button[data-requeue='{dead}']:not([disabled])")
        np_.wait_for_selector(f"button[data-requeue='{dead}']", state="detached", timeout=10_000)
        with NodeClient(up.node_address("n3"), insecure=True, timeout_s=10) as c:
            assert c.get(dead).status is TaskStatus.QUEUED
        assert node.errors == []

        # the aggregator away (stopped: up does not restart it yet): the page says rounds stopped
        pid = up.superlink_pid()
        os.killpg(pid, signal.SIGSTOP)
        try:
            page.wait_for_selector("#stale.show", timeout=90_000)
            assert "No round for" in (page.locator("#stale").text_content() or "")
            before = page.locator("#c-round").text_content()
        finally:
            os.killpg(pid, signal.SIGKILL)  # now it dies; up restarts it and submits the run again
        page.wait_for_function(
            f"document.querySelector('#c-round').textContent !== {json.dumps(before)}"
            " && !document.querySelector('#stale').classList.contains('show')",
            timeout=180_000,
        )
        _all_reporting(page, up, 120_000)
        assert tab.errors == [], tab.errors
