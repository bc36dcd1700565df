"""The federation view: its model from real round records (a simulated federation written as
the ServerApp writes a real one), tailing the rounds file as it grows, the API, and the page
in a real headless Chromium, live as rounds arrive."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedcoord.cmd_dashboard import start_federation_view
from fedcoord.dashboard.fed_model import RoundsTail, federation_view
from tests.browser import chromium, open_tab
from tests.dashboard_node import http

FEDCOORD = [sys.executable, "-m", "fedcoord"]


@pytest.fixture(scope="module")
def sim_rounds(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Round records of a 12-node simulated federation (adaptive, epsilon 1): real RoundResult lines."""
    path = tmp_path_factory.mktemp("sim") / "rounds.jsonl"
    r = subprocess.run(
        [*FEDCOORD, "simulate", "--nodes", "12", "--slots", "2,4,8", "--spread", "0.5", "--policy", "adaptive",
         "--epsilon", "1", "--duration-s", "300", "--period-s", "10", "--rounds-file", str(path)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "rounds written to" in r.stderr
    lines = path.read_text().splitlines()
    assert len(lines) >= 25
    return lines


def test_the_model_shows_nodes_rounds_flows_budgets_and_quantiles(sim_rounds: list[str]) -> None:
    rounds = [json.loads(x) for x in sim_rounds]
    v = federation_view(rounds, node_links={"n0": "http://127.0.0.1:1/"})
    last = rounds[-1]
    assert v["last"]["round"] == last["round"] and v["last"]["participants"] == 12
    assert [n["id"] for n in v["nodes"]] == [f"n{i}" for i in range(12)]  # n2 before n10
    n0 = v["nodes"][0]
    assert n0["url"] == "http://127.0.0.1:1/" and v["nodes"][1]["url"] is None
    assert n0["load"] == last["nodes"]["n0"]["load"] and n0["threshold"] == last["thresholds"]["n0"]
    assert n0["health"] == "reporting" and n0["policy"] == "adaptive"
    est = last["nodes"]["n0"]
    assert n0["queue"] == max(0.0, est["occupied"] - est["capacity"])
    # flows: the mean released out/in rates over the rounds of the last five minutes, per node
    recent = [r for r in rounds if r["started_ns"] >= last["started_ns"] - 300 * 10**9]
    want = sum(max(0.0, r["nodes"]["n0"]["handed_off_out_per_s"]) for r in recent) / len(recent)
    assert v["flows"]["out"].get("n0", 0.0) == pytest.approx(want, abs=1e-4)
    assert sum(v["flows"]["out"].values()) > 0 and sum(v["flows"]["in"].values()) > 0
    assert len(v["rounds"]) == len(rounds)
    assert set(v["budget"]) == set(v["budget_spent"]) == {f"n{i}" for i in range(12)}
    assert all(0 <= x <= 1.0 + 1e-9 for pts in v["budget_spent"].values() for _, x in pts)  # epsilon 1 per task
    assert n0["budget_spent"] == last["budget_spent"]["n0"]
    assert [q["q"] for q in v["quantiles"]] == [q["q"] for q in last["completion_quantiles_s"]]


def test_a_missing_node_and_an_empty_file_are_shown_as_such(sim_rounds: list[str]) -> None:
    assert federation_view([])["last"] is None
    r = json.loads(sim_rounds[-1])
    r["participants"] = [p for p in r["participants"] if p != "n3"]
    r["missing"] = ["n3"]
    del r["nodes"]["n3"]
    v = federation_view([r])
    n3 = next(n for n in v["nodes"] if n["id"] == "n3")
    assert n3["health"] == "missing" and n3["load"] is None
    assert v["last"]["missing"] == ["n3"]
    # a SuperNode missing before it told its node id: the ServerApp's placeholder, shown while the
    # last round has it, gone once a later round knows every node by its id
    early = json.loads(sim_rounds[-2])
    early["missing"] = ["supernode-7151"]
    assert "supernode-7151" in [n["id"] for n in federation_view([json.loads(sim_rounds[-3]), early])["nodes"]]
    later = federation_view([early, json.loads(sim_rounds[-1])])
    assert not any(n["id"].startswith("supernode-") for n in later["nodes"]), later["nodes"]


def test_the_tail_reads_whole_lines_as_they_come_and_a_new_file_again(tmp_path: Path, sim_rounds: list[str]) -> None:
    path = tmp_path / "rounds.jsonl"
    tail = RoundsTail(path)
    assert tail.read() == []
    with path.open("w") as f:
        f.write(sim_rounds[0] + "\n" + sim_rounds[1][:50])  # the second line half written
    assert [r["round"] for r in tail.read()] == [json.loads(sim_rounds[0])["round"]]
    with path.open("a") as f:
        f.write(sim_rounds[1][50:] + "\n")
    assert len(tail.read()) == 2
    path.unlink()
    path.write_text(sim_rounds[5] + "\n")  # replaced (a new run): read from its start
    assert [r["round"] for r in tail.read()] == [json.loads(sim_rounds[5])["round"]]


@pytest.mark.slow
def test_the_page_goes_live_and_follows_new_rounds(tmp_path: Path, sim_rounds: list[str]) -> None:
    path = tmp_path / "rounds.jsonl"
    path.write_text("\n".join(sim_rounds[:10]) + "\n")
    server = start_federation_view(path, "127.0.0.1:0", node_links=lambda: {"n1": "http://127.0.0.1:9/"})
    try:
        status, body = http(server.url + "api/federation")
        assert status == 200 and body["last"]["round"] == json.loads(sim_rounds[9])["round"]
        with chromium() as browser:
            tab = open_tab(browser, server.url)
            page = tab.page
            page.wait_for_function("document.querySelector('#live').textContent === 'live'", timeout=10_000)
            page.wait_for_function("document.querySelectorAll('#nodes tbody tr').length === 12", timeout=10_000)
            first = page.locator("#c-round").text_content() or ""
            assert first.startswith(f"#{json.loads(sim_rounds[9])['round']} ")
            assert page.locator("#nodes a[href='http://127.0.0.1:9/']").count() == 1
            # a new round is appended: the page shows it without a reload
            with path.open("a") as f:
                f.write("\n".join(sim_rounds[10:]) + "\n")
            want = f"#{json.loads(sim_rounds[-1])['round']} "
            page.wait_for_function(
                f"document.querySelector('#c-round').textContent.startsWith({json.dumps(want)})", timeout=5_000
            )
            # the flows chart drew its links (ECharts renders to a canvas: ask its option)
            assert (
                page.evaluate(
                    "echarts.getInstanceByDom(document.getElementById('flows')).getOption().series[0].links.length"
                )
                > 0
            )
            tab.shot("dashboard-federation.png")
            assert tab.errors == []
    finally:
        server.stop_thread()


def test_the_federation_view_off_loopback_needs_tls(tmp_path: Path) -> None:
    rounds = tmp_path / "rounds.jsonl"
    r = subprocess.run(
        [*FEDCOORD, "dashboard", "--rounds-file", str(rounds), "--listen", "0.0.0.0:0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 2 and "only over TLS" in r.stderr and "Traceback" not in r.stderr, r.stderr
    with pytest.raises(ValueError, match="only over TLS"):
        start_federation_view(rounds, "0.0.0.0:0")
