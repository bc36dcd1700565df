"""The node view in a real headless Chromium: it goes live, updates on its own when the node
changes (no reload), acts with the operator token, says its data is stale while the node is
down, and comes back by itself when the node restarts."""

from __future__ import annotations

import pytest

from node.model import Priority, TaskSpec
from tests.browser import chromium, open_tab
from tests.dashboard_node import OPERATOR, DashboardNode
from tests.test_dashboard_node import _fail_for_good
from tests.test_runtime import fast_config

pytestmark = pytest.mark.slow


def test_node_view_is_live_acts_and_reconnects_after_a_restart(redis_url: str) -> None:
    cfg = fast_config()
    with chromium() as browser:
        with DashboardNode(redis_url, config=cfg) as d:
            port = d.port
            d.call(lambda node: node.submit([TaskSpec("resize", priority=Priority.HIGH) for _ in range(3)]))
            tab = open_tab(browser, d.url)
            page = tab.page
            page.wait_for_function("document.querySelector('#live').textContent === 'live'", timeout=10_000)
            page.wait_for_function("document.querySelector('#c-ready').textContent === '3'", timeout=10_000)
            assert page.locator("#node-id").text_content() == "n1"
            assert page.locator("#tasks tbody tr").count() == 3

            # A change in the node reaches the open page by itself.
            (late,) = d.call(lambda node: node.submit([TaskSpec("late-arrival")]))
            page.wait_for_selector(f"#tasks tr[data-task='{late}']", timeout=5_000)
            page.wait_for_function("document.querySelector('#c-ready').textContent === '4'", timeout=5_000)

            # Filters: several statuses at once, then a type.
            page.check("#status-boxes input[value='queued']")
            page.fill("#f-type", "late-arrival")
            page.dispatch_event("#f-type", "change")
            page.wait_for_function("document.querySelectorAll('#tasks tbody tr').length === 1", timeout=5_000)

            # A task's story says why it waits.
            page.click(f"#tasks tr[data-task='{late}']")
            page.wait_for_selector("#detail li", timeout=5_000)
            assert "in line at priority medium" in (page.locator("#detail li").first.text_content() or "")

            # Dead letters: the requeue button waits for the operator token.
            dead = _fail_for_good(d, 2)
            page.wait_for_function("document.querySelector('#c-dead').textContent === '2'", timeout=5_000)
            assert page.locator(f"button[data-requeue='{dead[0]}']").is_disabled()
            page.fill("#token", OPERATOR)
            page.dispatch_event("#token", "change")  # stores it for the tab and reloads
            page.wait_for_function("document.querySelector('#role').textContent === 'role: operator'", timeout=10_000)
            page.wait_for_selector(f"button[data-requeue='{dead[0]}']:not([disabled])", timeout=10_000)
            page.click(f"button[data-requeue='{dead[0]}']")
            page.wait_for_function("document.querySelector('#c-dead').textContent === '1'", timeout=5_000)

            # What a task says is shown as text, never run as HTML.
            evil = '<img src=x onerror="window.__xss=1">'
            (bad,) = _fail_for_good(d, 1, worker="wx", error=evil)
            page.wait_for_selector(f"button[data-requeue='{bad}']", timeout=5_000)
            assert evil in (page.locator("#dead tbody").text_content() or "")
            assert page.evaluate("window.__xss") is None and page.locator("#dead img").count() == 0
            page.click(f"button[data-requeue='{bad}']")
            page.wait_for_function("document.querySelector('#c-dead').textContent === '1'", timeout=5_000)
            tab.shot("dashboard-node.png")
            assert tab.errors == []

        # The node is gone: the page says its data is stale, and keeps what it showed.
        page.wait_for_selector("#stale.show", timeout=10_000)
        assert "stale" in (page.locator("#stale").text_content() or "")
        assert page.locator("#live").text_content() == "reconnecting"

        # Back on the same address and Redis: live again by itself, with what Redis kept.
        with DashboardNode(redis_url, config=cfg, listen=f"127.0.0.1:{port}") as d2:
            page.wait_for_function("document.querySelector('#live').textContent === 'live'", timeout=15_000)
            assert not page.locator("#stale.show").count()
            page.wait_for_function("document.querySelector('#c-dead').textContent === '1'", timeout=5_000)
            # 4 queued, and the 2 dead letters requeued
            page.wait_for_function("document.querySelector('#c-ready').textContent === '6'", timeout=5_000)
            assert d2.sync(lambda node: node.load().ready) == 6
        page.close()
