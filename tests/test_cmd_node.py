"""``fedcoord node`` as a process: it serves, answers health checks, exposes metrics, refuses
unsafe or wrong settings, checks TLS and tokens, and drains on SIGTERM with exit code 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from node.rpc.auth import Tokens, bearer_metadata, channel_credentials
from node.rpc.certs import make_cluster
from protos.fedcoord.v1 import common_pb2 as cpb
from protos.fedcoord.v1 import node_pb2 as npb
from protos.fedcoord.v1 import node_pb2_grpc
from tests.conftest import free_port, wait_until

FEDCOORD = [sys.executable, "-m", "fedcoord"]


class NodeProc:
    def __init__(self, args: list[str], cwd: Path):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.log = cwd / f"node-{os.urandom(4).hex()}.log"  # a file, not a pipe: a full pipe would block the node
        with self.log.open("w") as err:
            self.proc = subprocess.Popen(
                [*FEDCOORD, "node", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=err, text=True, env=env
            )
        self.line = ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def wait_serving(self, timeout_s: float = 30.0) -> tuple[str, str]:
        """The address and metrics URL from the node's one line on stdout."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until the node is up (or dies: then EOF)
        if not line.startswith("serving "):
            self.proc.kill()
            raise AssertionError(f"node did not start: {line!r} {self.log.read_text()}")
        self.line = line
        _, _, _, address, _, metrics = line.split()
        return address, metrics

    def stop(self, timeout_s: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[NodeProc]]:
    procs: list[NodeProc] = []
    yield procs
    for p in procs:
        p.close()


def test_node_serves_plaintext_on_loopback_and_drains_on_sigterm(
    tmp_path: Path, redis_url: str, started: list[NodeProc]
) -> None:
    port = free_port()
    args = ["--node-id", "cn1", "--listen", f"127.0.0.1:{port}", "--metrics-listen", "127.0.0.1:0", "--insecure"]
    p = NodeProc([*args, "--redis-url", redis_url], tmp_path)
    started.append(p)
    address, metrics_url = p.wait_serving()
    assert address == f"127.0.0.1:{port}"
    with grpc.insecure_channel(address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        assert health.Check(health_pb2.HealthCheckRequest(service="fedcoord.v1.NodeService")).status == 1
        stub = node_pb2_grpc.NodeServiceStub(ch)
        ids = stub.Submit(npb.SubmitRequest(tasks=[cpb.TaskSpec(type="t", priority=cpb.PRIORITY_HIGH)] * 3)).task_ids
        assert len(ids) == 3

        def scrape() -> str | None:
            body = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
            return body if 'fedcoord_queue_depth{priority="high"} 3.0' in body else None

        body = wait_until(scrape, timeout_s=15, what="the gauges to show the submit (refreshed every second)")
        assert "fedcoord_rpc_duration_seconds_bucket" in body and "fedcoord_commit_duration_seconds" in body
    assert p.stop() == 0
    # drained: the lock is let go at once, so the next process serves the same node id right away
    p2 = NodeProc([*args, "--redis-url", redis_url], tmp_path)
    started.append(p2)
    address, _ = p2.wait_serving()
    with grpc.insecure_channel(address) as ch:
        stub = node_pb2_grpc.NodeServiceStub(ch)
        assert stub.GetTask(npb.TaskRef(task_id=ids[0])).status == cpb.TASK_STATUS_QUEUED
    assert p2.stop() == 0


def test_node_serves_its_web_view_and_stops_with_a_stream_open(
    tmp_path: Path, redis_url: str, started: list[NodeProc]
) -> None:
    """The second line names the node view's URL and where its operator token is; SIGTERM
    with a page's live stream open still drains and exits 0 at once (the stream is ended)."""
    args = ["--node-id", "wn1", "--listen", "127.0.0.1:0", "--metrics-listen", "", "--insecure"]
    p = NodeProc([*args, "--redis-url", redis_url, "--dashboard-listen", "127.0.0.1:0"], tmp_path)
    started.append(p)
    p.wait_serving()
    assert p.proc.stdout is not None
    line = p.proc.stdout.readline()
    assert line.startswith("dashboard http://127.0.0.1:"), line
    url = line.split()[1]
    token_file = Path(line.split("operator token: ")[1].rstrip(")\n"))
    assert token_file == (tmp_path / "data" / "wn1" / "dashboard-token").resolve()
    assert token_file.stat().st_mode & 0o077 == 0  # the owner's only
    token = token_file.read_text().strip()
    req = urllib.request.Request(url + "api/workers/nobody/remove", method="POST", data=b"")
    req.add_header("Authorization", f"Bearer {token}")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 404  # the token was taken: the worker is unknown
    e.value.close()
    stream = urllib.request.urlopen(url + "api/stream", timeout=10)
    assert stream.readline() == b"retry: 1000\n"
    t0 = time.monotonic()
    assert p.stop() == 0
    assert time.monotonic() - t0 < 10, "the open stream held the node up"
    stream.close()


def test_a_taken_dashboard_address_is_refused_before_serving(tmp_path: Path, redis_url: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = subprocess.run(
            [*FEDCOORD, "node", "--node-id", "bad", "--redis-url", redis_url, "--metrics-listen", "", "--insecure",
             "--listen", "127.0.0.1:0", "--dashboard-listen", f"127.0.0.1:{port}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert "Address already in use" in r.stderr and "Traceback" not in r.stderr
    assert "serving" not in r.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "0.0.0.0:0", "--insecure"], "loopback"),
        (["--listen", "127.0.0.1:0"], "TLS"),
        (["--listen", "127.0.0.1:0", "--insecure", "--log-format", "xml"], "log_format"),
        (["--listen", "127.0.0.1:0", "--insecure", "--dashboard-listen", "localhost"], "dashboard_listen"),
        # a node view off loopback: only over TLS (a plaintext node has no certificate for it)
        (["--listen", "127.0.0.1:0", "--insecure", "--dashboard-listen", "0.0.0.0:0"], "only over TLS"),
    ],
)
def test_unsafe_or_bad_settings_are_refused_before_serving(
    tmp_path: Path, redis_url: str, args: list[str], message: str
) -> None:
    r = subprocess.run(
        [*FEDCOORD, "node", "--node-id", "bad", "--redis-url", redis_url, "--metrics-listen", "", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr


def test_the_node_view_off_loopback_is_served_over_tls_with_the_nodes_certificate(
    tmp_path: Path, redis_url: str, started: list[NodeProc]
) -> None:
    import ssl  # noqa: PLC0415

    files = make_cluster(tmp_path / "certs", ["node1"])
    cert = files.certs["node1"]
    port = free_port()
    p = NodeProc(
        ["--node-id", "tv1", "--listen", f"127.0.0.1:{free_port()}", "--metrics-listen", "", "--redis-url", redis_url,
         "--tls-cert", str(cert.cert), "--tls-key", str(cert.key), "--tokens", str(files.tokens),
         "--dashboard-listen", f"0.0.0.0:{port}"],
        tmp_path,
    )  # fmt: skip
    started.append(p)
    p.wait_serving()
    assert p.proc.stdout is not None
    line = p.proc.stdout.readline()
    assert line.startswith(f"dashboard https://0.0.0.0:{port}/"), line
    ctx = ssl.create_default_context(cafile=str(files.ca.cert))
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/api/info", context=ctx, timeout=10) as r:
        assert r.status == 200 and b'"node_id":"tv1"' in r.read()
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plaintext is not answered
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=10)
    assert p.stop() == 0


def test_tls_and_tokens_with_roles(tmp_path: Path, redis_url: str, started: list[NodeProc]) -> None:
    files = make_cluster(tmp_path / "certs", ["node1", "client1"])
    assert files.tokens is not None
    tokens = Tokens.load(files.tokens)
    node_cert = files.certs["node1"]
    args = [
        "--node-id",
        "tn1",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--metrics-listen",
        "",
        "--redis-url",
        redis_url,
        "--tls-cert",
        str(node_cert.cert),
        "--tls-key",
        str(node_cert.key),
        "--tls-ca",
        str(files.ca.cert),
        "--mtls",
        "--tokens",
        str(files.tokens),
    ]
    p = NodeProc(args, tmp_path)
    started.append(p)
    address, _ = p.wait_serving()
    client = files.certs["client1"]
    creds = channel_credentials(str(files.ca.cert), str(client.cert), str(client.key))
    submit = npb.SubmitRequest(tasks=[cpb.TaskSpec(type="t")])
    with grpc.secure_channel(address, creds) as ch:
        stub = node_pb2_grpc.NodeServiceStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.Submit(submit)
        assert e.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:
            stub.Submit(submit, metadata=bearer_metadata(tokens.worker[0]))
        assert e.value.code() is grpc.StatusCode.PERMISSION_DENIED
        (tid,) = stub.Submit(submit, metadata=bearer_metadata(tokens.client[0])).task_ids
        assert stub.GetTask(npb.TaskRef(task_id=tid), metadata=bearer_metadata(tokens.client[0])).id == tid
    # no client certificate: mutual TLS refuses the connection
    with grpc.secure_channel(address, channel_credentials(str(files.ca.cert))) as ch:
        with pytest.raises(grpc.RpcError) as e:
            node_pb2_grpc.NodeServiceStub(ch).Submit(submit, metadata=bearer_metadata(tokens.client[0]), timeout=5)
        assert e.value.code() is grpc.StatusCode.UNAVAILABLE
    # plaintext to a TLS port gets nowhere
    with grpc.insecure_channel(address) as ch:
        with pytest.raises(grpc.RpcError) as e:
            node_pb2_grpc.NodeServiceStub(ch).Submit(submit, metadata=bearer_metadata(tokens.client[0]), timeout=5)
        assert e.value.code() is grpc.StatusCode.UNAVAILABLE
    assert p.stop() == 0


def test_tls_without_tokens_or_client_certificates_is_refused(tmp_path: Path, redis_url: str) -> None:
    files = make_cluster(tmp_path / "certs", ["node1"])
    cert = files.certs["node1"]
    r = subprocess.run(
        [
            *FEDCOORD,
            "node",
            "--node-id",
            "nt",
            "--redis-url",
            redis_url,
            "--metrics-listen",
            "",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            str(cert.cert),
            "--tls-key",
            str(cert.key),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2, r.stderr
    assert "needs tokens" in r.stderr and "Traceback" not in r.stderr
