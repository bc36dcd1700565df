"""The federation with real processes on loopback (the ``fedcoord up`` federation): rounds that
move thresholds and hand-offs, a SuperNode killed (rounds go on with the others within the
period), and the SuperLink killed and restarted (nodes keep serving, thresholds decay to local
meanwhile, rounds resume)."""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Iterator

import pytest

from federation.up import Federation, UpConfig
from node.rpc.client import NodeClient
from tests.conftest import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """One federation for the module (starting one takes ~20 s): the tests run in order."""
    tmp_path = tmp_path_factory.mktemp("faults")
    cfg = UpConfig(
        nodes=3,
        period_s=2.0,
        ttl_s=20.0,
        window_s=1.0,
        rate_per_s=20.0,
        # a view older than 3 s loses weight over 3 s: the decay to local is visible in a test
        node_env=(("FEDCOORD_ADMISSION__STALE_AFTER_S", "3"), ("FEDCOORD_ADMISSION__DECAY_S", "3")),
    )
    f = Federation(cfg, tmp_path / "up")
    try:
        f.start()
        yield f
    finally:
        f.stop()
        left = subprocess.run(["pgrep", "-af", str(tmp_path)], capture_output=True, text=True, check=False)
        assert left.stdout.strip() == "", f"processes left behind:\n{left.stdout}"


def _serving(f: Federation) -> bool:
    for n in f.nodes:
        with NodeClient(n.address, insecure=True, timeout_s=5) as c:
            if c.stats().state != "serving":
                return False
    return True


def _rounds_with(f: Federation, nodes: set[str], after: int) -> bool:
    return any(r["round"] > after and set(r["participants"]) >= nodes for r in f.rounds())


def test_rounds_set_thresholds_from_the_load_and_hand_offs_go_to_the_peers_with_room(fed: Federation) -> None:
    """Three rounds with every node: the thresholds the nodes report follow the federation's
    load (adaptive, not the local 0.8), and the skewed workload moves from n1 to both peers."""
    wait_until(lambda: sum(1 for r in fed.rounds() if set(r["participants"]) == {"n1", "n2", "n3"}) >= 3, 150,
               "three rounds with every node")  # fmt: skip
    rounds = [r for r in fed.rounds() if set(r["participants"]) == {"n1", "n2", "n3"}]
    assert all(r["policies"] == {"n1": "adaptive", "n2": "adaptive", "n3": "adaptive"} for r in rounds[1:])
    thresholds = [t for r in rounds[1:] for t in r["thresholds"].values()]  # after the first view arrived
    assert thresholds and any(abs(t - 0.8) > 1e-6 for t in thresholds), thresholds
    # the federation's load carries the privacy noise (it can come out negative): only its sd is sure
    assert all(math.isfinite(r["federation_load"]["value"]) and r["federation_load"]["sd"] > 0 for r in rounds)
    snap = fed.snapshot()["nodes"]
    assert snap["n1"]["handed_off_out"] > 0 and snap["n1"]["handed_off_in"] == 0
    assert snap["n2"]["handed_off_in"] > 0 and snap["n3"]["handed_off_in"] > 0, snap


def test_a_supernode_killed_rounds_go_on_with_the_others(fed: Federation) -> None:
    wait_until(lambda: _rounds_with(fed, {"n1", "n2", "n3"}, 1), 150, "rounds with every node")
    sn = fed.nodes[2].supernode
    assert sn is not None
    sn.kill()
    last = max(r["round"] for r in fed.rounds())
    # the next rounds complete with n1 and n2, each within the period plus the TTL at worst,
    # and after the first one n3 is not waited for
    wait_until(lambda: _rounds_with(fed, {"n1", "n2"}, last + 1), 120, "rounds without n3")
    later = [r for r in fed.rounds() if r["round"] > last + 1]
    assert later and all(r["latency_s"] < fed.cfg.ttl_s for r in later)
    assert all("n3" not in r["participants"] for r in later)
    assert _serving(fed)  # n3 itself keeps serving on its local policy


def test_a_superlink_killed_and_restarted(fed: Federation) -> None:
    fed.supervise()  # n3's SuperNode (killed by the test before) comes back
    now = max(r["round"] for r in fed.rounds())
    wait_until(lambda: _rounds_with(fed, {"n1", "n2", "n3"}, now), 150, "rounds with every node")
    assert fed.superlink is not None
    fed.superlink.kill()  # SIGKILL: no goodbye
    last = max(r["round"] for r in fed.rounds())
    # the last view a node got rode in the query of the last round that started (wall clock)
    last_view_ns = max(r["started_ns"] for r in fed.rounds())
    # meanwhile the nodes keep serving and their federated thresholds decay to the local one
    assert _serving(fed)
    local = 0.8

    def decayed() -> bool:
        with NodeClient(fed.nodes[0].address, insecure=True, timeout_s=5) as c:
            return abs(c.stats().threshold - local) < 1e-9

    wait_until(decayed, 30, "n1's threshold back at the local one")
    # not before the view went stale (stale_after_s 3, counted from the view's arrival, which is
    # before the kill: a round that ran late leaves less than 3 s between the kill and the decay)
    assert time.time_ns() - last_view_ns >= 3 * 10**9
    assert "superlink" in fed.supervise() and fed.restarts["superlink"] == 1
    # the run was submitted again: its rounds count from 1 again, with every node back
    n_before = len(fed.rounds())
    wait_until(lambda: any(r["round"] >= 1 and set(r["participants"]) == {"n1", "n2", "n3"}
                           for r in fed.rounds()[n_before:]), 150, "rounds after the restart")  # fmt: skip
    assert last >= 2 and _serving(fed)
