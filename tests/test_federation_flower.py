"""The federation through Flower with real processes on loopback: a SuperLink, one SuperNode per
node, fedcoord nodes serving over gRPC (and one broken node), and the fedcoord app submitted as a
run. Rounds are read from the ServerApp's status file; every process is stopped at the end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest

from federation.launch import FLOWER_ENV, FlowerHome, Proc, wait_listening
from protos.fedcoord.v1 import node_pb2, node_pb2_grpc
from tests.conftest import free_port, wait_until

pytestmark = pytest.mark.slow

FLOWER_ENV_OK = dict(os.environ, **FLOWER_ENV)  # what every Flower process here runs with


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


class _BadNode(node_pb2_grpc.NodeServiceServicer):
    """A node that answers Summary with a release the schema refuses (a count too many), and
    takes any view: what a broken or hostile node looks like to its ClientApp."""

    async def Summary(self, request: Any, context: Any) -> Any:
        from federation.privacy.status import ReleaseOutcome, ReleaseStatus  # noqa: PLC0415
        from node.rpc import convert as cv  # noqa: PLC0415
        from tests.test_rpc_privacy import a_summary  # noqa: PLC0415

        reply = cv.release_to_pb(ReleaseOutcome(ReleaseStatus.RELEASED, a_summary(), "window 7 released", None, "bad"))
        reply.summary.node_id = "bad"
        reply.summary.submitted.append(99)  # one count more than there are types
        return reply

    async def ApplyFederation(self, request: Any, context: Any) -> Any:
        return node_pb2.ApplyFederationReply(threshold=0.8, policy="local")


def _serve_bad_node(port: int, stop: threading.Event) -> None:
    async def main() -> None:
        server = grpc.aio.server()
        node_pb2_grpc.add_NodeServiceServicer_to_server(_BadNode(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)  # until the test is done
        await server.stop(1)

    asyncio.run(main())


def test_a_malformed_summary_and_a_spent_ledger_leave_a_node_out_with_its_reason(tmp_path: Path) -> None:
    """n1 is healthy; n2's ledger allows one release in any 3 windows (an explicit noise scale),
    so it is refused in between and keeps serving on its local policy; `bad` answers with a
    release the schema refuses. The view is made of what checked alone, and says who is missing."""
    from federation.privacy.config import PrivacyConfig  # noqa: PLC0415
    from federation.privacy.mechanism import calibrate_scale, rho_for_epsilon  # noqa: PLC0415
    from federation.privacy.pipeline import CELLS_PER_TASK, cells_of  # noqa: PLC0415

    pc = PrivacyConfig()
    scale = calibrate_scale(pc.mechanism, cells_of(pc), CELLS_PER_TASK, rho_for_epsilon(pc.epsilon, pc.delta) * 0.75)
    home = FlowerHome(tmp_path / "fed")
    env = dict(home.env, FEDCOORD_NODE__WINDOW_S="1.0")
    ports = {"n1": free_port(), "n2": free_port(), "bad": free_port()}
    stop = threading.Event()
    bad = threading.Thread(target=_serve_bad_node, args=(ports["bad"], stop), daemon=True)
    bad.start()
    procs: list[Proc] = []
    try:
        for nid in ("n1", "n2"):
            # n2: windows longer than the gap between rounds, so that its second window comes
            # within m = 3 windows of its first release: refused (one release fits in 3 windows)
            extra = {"FEDCOORD_PRIVACY__SCALE": repr(scale), "FEDCOORD_NODE__WINDOW_S": "8.0"} if nid == "n2" else {}
            argv = [sys.executable, "-m", "fedcoord", "node", "--node-id", nid, "--listen", f"127.0.0.1:{ports[nid]}",
                    "--insecure", "--metrics-listen", "", "--data-dir", str(tmp_path / nid)]  # fmt: skip
            procs.append(Proc(nid, argv, tmp_path / "logs" / f"{nid}.log", dict(env, **extra)).start())
        sl_port = free_port()
        procs.append(home.superlink(sl_port).start())
        wait_listening(f"127.0.0.1:{sl_port}", 60, procs[-1])
        for nid, port in ports.items():
            config = {"node-address": f"127.0.0.1:{port}", "node-insecure": True}
            procs.append(home.supernode(f"127.0.0.1:{sl_port}", free_port(), config, f"sn-{nid}").start())
        home.name_superlink("fc", f"127.0.0.1:{sl_port}")
        status = tmp_path / "status.jsonl"
        home.run("fc", {"rounds": 6, "period-s": 1.0, "ttl-s": 30.0, "status-file": str(status), "min-nodes": 3})

        def rounds() -> list[dict[str, Any]]:
            return [json.loads(x) for x in status.read_text().splitlines()] if status.exists() else []

        wait_until(lambda: len(rounds()) >= 6, 300, "six rounds")
    finally:
        home.stop_all()
        for p in procs:
            p.stop()
        stop.set()
        bad.join(10)
    left = subprocess.run(["pgrep", "-af", str(tmp_path)], capture_output=True, text=True, check=False)
    assert left.stdout.strip() == "", f"processes left behind:\n{left.stdout}"
    rs = rounds()
    for r in rs:
        assert "bad" not in r["participants"] and "bad" not in r["nodes"]  # never merged
    # bad's ClientApp refused its release and said why; the round recorded it as unavailable
    late = [r for r in rs if r["round"] >= 2]
    assert any(st == "unavailable" for r in late for st in r["statuses"].values()), late
    assert any("summary refused" in reason for r in rs for reason in r["reasons"].values())
    # n2 was refused for budget in some rounds: missing there, released in others, and serving throughout
    n2 = [r["statuses"].get("n2") for r in rs]
    assert "budget_exhausted" in n2 and "released" in n2, n2
    assert all("n2" in r["missing"] for r in rs if r["statuses"].get("n2") == "budget_exhausted")
    assert all(set(r["nodes"]) <= {"n1", "n2"} and "n1" in r["nodes"] for r in late)
    # from the second round on, every node got the previous round's view and set its threshold
    assert all({"n1", "n2"} <= set(r["thresholds"]) and r["policies"]["n1"] == "local" for r in late)
    assert all(not r["errors"] and r["asked"] == 3 for r in rs)
