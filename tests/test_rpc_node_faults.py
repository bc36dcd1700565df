"""``kill -9`` of a ``fedcoord node`` process under load, with ``fedcoord worker`` processes
attached and a producer submitting: the workers reconnect to the restarted node by themselves,
and every task whose submit was acknowledged completes (nothing acknowledged is lost)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from node import TaskSpec
from node.errors import FedcoordError
from node.rpc.client import NodeClient
from tests.conftest import RedisServer, free_port, wait_until
from tests.test_cmd_node import NodeProc

WORKER = [sys.executable, "-m", "fedcoord", "worker", "--default", "sleep", "--time-scale", "0.002"]
WORKER += ["--concurrency", "16", "--heartbeat-s", "0.5"]


def start_worker(address: str, wid: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        return subprocess.Popen(
            [*WORKER, "--node", address, "--insecure", "--id", wid],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


@pytest.mark.slow
def test_kill_9_of_the_node_under_load_loses_nothing_acknowledged(tmp_path: Path, own_redis: RedisServer) -> None:
    address = f"127.0.0.1:{free_port()}"
    args = ["--node-id", "kn1", "--listen", address, "--insecure", "--metrics-listen", "", "--redis-url", own_redis.url]
    # the owner lock of a killed process is taken over at restart (else the new one waits out its TTL)
    env_args = [*args, "--log-level", "warning"]
    node = NodeProc(env_args, tmp_path)
    workers: list[subprocess.Popen[bytes]] = []
    acked: list[str] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def produce() -> None:
        with NodeClient(address, insecure=True, timeout_s=5) as client:
            n = 0
            while not stop.is_set():
                try:
                    ids = client.submit([TaskSpec("work", payload=b"%d" % (n + i), difficulty=1) for i in range(20)])
                except FedcoordError:  # the node is down: not acknowledged, so not ours to find later
                    time.sleep(0.05)
                    continue
                except BaseException as e:  # noqa: BLE001 (handed to the test's thread, which fails on it)
                    errors.append(e)
                    return
                acked.extend(ids)
                n += 20
                time.sleep(0.005)  # a steady trickle, not a flood

    producer = threading.Thread(target=produce, name="producer")
    try:
        node.wait_serving()
        workers = [start_worker(address, f"kw{i}", tmp_path / f"w{i}.log") for i in range(2)]
        with NodeClient(address, insecure=True) as client:
            wait_until(lambda: len(client.stats().workers) == 2, timeout_s=30, what="both workers to attach")
        producer.start()
        wait_until(lambda: len(acked) >= 400, timeout_s=60, what="some load acknowledged")
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait()
        before_kill = len(acked)
        node.close()
        node = NodeProc([*env_args, "--config", str(_takeover_config(tmp_path))], tmp_path)
        node.wait_serving()
        wait_until(lambda: len(acked) >= before_kill + 400, timeout_s=60, what="submits acknowledged after restart")
        stop.set()
        producer.join(30)
        assert not errors, errors
        with NodeClient(address, insecure=True) as client:
            wait_until(lambda: len(client.stats().workers) == 2, timeout_s=30, what="both workers to come back")

            def all_done() -> bool:
                totals = client.stats().totals
                return totals.get("completed", 0) + totals.get("failed", 0) >= len(acked)

            wait_until(all_done, timeout_s=120, what="every acknowledged task to finish")
            statuses = {client.get(tid).status.value for tid in acked}
        assert statuses == {"completed"}, statuses
        assert all(w.poll() is None for w in workers), "a worker process died instead of reconnecting"
        assert node.stop() == 0
    finally:
        stop.set()
        if producer.is_alive():
            producer.join(30)
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
        node.close()


def _takeover_config(tmp_path: Path) -> Path:
    """The restarted process takes the node over from the killed one at once."""
    path = tmp_path / "takeover.toml"
    path.write_text("[node]\ntakeover = true\n")
    return path
