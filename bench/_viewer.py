"""A dashboard viewer in a process of its own, for the benchmarks: either what an open node
page asks for over plain HTTP (the live stream; a task page when the counts changed and the
dead letters when the failed or requeued totals did, at most once a second, as node.js does),
or a real headless Chromium on the page. Run as ``python -m bench._viewer URL {stream,browser}
SECONDS``; prints one JSON line (requests made, snapshots received)."""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request


def _stream(url: str, seconds: float) -> dict[str, int]:
    counts = {"snapshots": 0, "requests": 0}
    stop = time.monotonic() + seconds
    changed = threading.Event()
    what = {"tasks": False, "dead": False}

    def follow() -> None:
        with urllib.request.urlopen(url + "api/stream", timeout=30) as r:
            last_active = last_totals = None
            for line in r:
                if time.monotonic() > stop:
                    return
                if line.startswith(b"data: "):
                    counts["snapshots"] += 1
                    snap = json.loads(line[6:])
                    active, totals = snap.get("active"), snap.get("totals")
                    if active != last_active or totals != last_totals:
                        what["tasks"] = True
                    dead = (totals or {}).get("failed", 0), (totals or {}).get("requeued", 0)
                    if last_totals is None or dead != (
                        (last_totals or {}).get("failed", 0),
                        (last_totals or {}).get("requeued", 0),
                    ):
                        what["dead"] = True
                    last_active, last_totals = active, totals
                    if what["tasks"] or what["dead"]:
                        changed.set()

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    while time.monotonic() < stop:  # as node.js: what changed is fetched again, at most once a second
        if changed.wait(0.5):
            changed.clear()
            paths = [p for k, p in (("tasks", "api/tasks?offset=0&limit=50"), ("dead", "api/dead?limit=20")) if what[k]]
            what["tasks"] = what["dead"] = False
            for path in paths:
                with urllib.request.urlopen(url + path, timeout=30) as r:
                    r.read()
                counts["requests"] += 1
            time.sleep(1.0)
    return counts


def _browser(url: str, seconds: float) -> dict[str, int]:
    from tests.browser import chromium, open_tab  # noqa: PLC0415

    with chromium() as b:
        tab = open_tab(b, url)
        tab.page.wait_for_function("document.querySelector('#live').textContent === 'live'", timeout=30_000)
        time.sleep(seconds)
        return {"console_errors": len(tab.errors)}


if __name__ == "__main__":
    url, mode, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    print(json.dumps((_stream if mode == "stream" else _browser)(url, seconds)), flush=True)
