"""A real headless Chromium for the dashboard tests: Debian's (``/usr/bin/chromium``; the
README's test command installs it when it is missing), driven by Playwright. Console errors
and failed requests are collected: a page that logs one fails its test."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = os.environ.get("FEDCOORD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Screenshots for the docs: set FEDCOORD_SCREENSHOTS to a directory to keep them.
SHOTS = os.environ.get("FEDCOORD_SCREENSHOTS")


@dataclass
class Tab:
    page: Page
    errors: list[str] = field(default_factory=list)

    def shot(self, name: str) -> None:
        if SHOTS:
            Path(SHOTS).mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(Path(SHOTS) / name), full_page=True)


@contextmanager
def chromium() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        raise AssertionError(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (the README's test command does)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


def open_tab(browser: Browser, url: str, *, width: int = 1400, height: int = 1000) -> Tab:
    page = browser.new_page(viewport={"width": width, "height": height})
    tab = Tab(page)
    page.on("console", lambda m: tab.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: tab.errors.append(f"page error: {e}"))
    page.goto(url)
    return tab
