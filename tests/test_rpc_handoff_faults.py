"""Hand-off between real node processes over gRPC, under real faults: ``kill -9`` of the origin
or of the peer at every named step of the protocol and a restart, a peer that stops answering
(SIGSTOP), and a network link cut in the middle of a hand-off between two hosts the test makes
(network namespaces joined by a veth pair).

Each node is ``python -m tests.node_proc`` with a redis-server of its own (AOF; reached over a
Unix socket, which a network namespace does not cut off, so the test can read both stores and
call both nodes whatever happens to the link). Afterwards every task has exactly one owner (in
the two stores together), none is lost, none was completed twice (the workers' acknowledged
completions and the durable counters agree), and every result is seen from the origin."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import redis

from node import TaskSpec, TaskStatus
from node.embedded import EmbeddedRedis
from node.model import Task
from node.rpc import convert as cv
from node.rpc.auth import bearer_metadata
from node.rpc.certs import issue, make_ca
from protos.fedcoord.v1 import node_pb2 as npb
from protos.fedcoord.v1 import node_pb2_grpc as npb_grpc
from tests.conftest import free_port, wait_until
from tests.test_handoff import STEPS, owners
from tests.test_runtime import hgetall_json

ROOT = Path(__file__).resolve().parent.parent
N = 12
COMPLETED = TaskStatus.COMPLETED


class NodeProc:
    """A node process (tests/node_proc.py), started and restarted with the same arguments."""

    def __init__(self, node_id: str, args: Sequence[str], control: Path, prefix: Sequence[str] = ()):
        self.node_id = node_id
        self.args = ["--node-id", node_id, "--control-dir", str(control), *args]
        self.control = control
        self.prefix = list(prefix)  # e.g. ip netns exec NS
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = control / f"{node_id}.log"
        self.socket = control / f"{node_id}.sock"
        self.args += ["--client-listen", f"unix:{self.socket}"]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, *extra: str) -> None:
        ready = self.control / f"{self.node_id}.ready"
        ready.unlink(missing_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", "tests.node_proc", *self.args, *extra],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        proc = self.proc
        wait_until(lambda: ready.exists() or proc.poll() is not None, 30, f"{self.node_id} to serve")
        if proc.poll() is not None:
            raise AssertionError(f"{self.node_id} exited with {proc.returncode} at start:\n{self.tail()}")

    def wait_exit(self, timeout_s: float = 30) -> int:
        proc = self.proc
        assert proc is not None
        wait_until(lambda: proc.poll() is not None, timeout_s, f"{self.node_id} to exit\n{self.tail()}")
        return proc.wait()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            if proc is not None:
                proc.wait()
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def logged(self, text: str) -> int:
        try:
            return self.log.read_text(errors="replace").count(text)
        except FileNotFoundError:
            return 0

    def completions(self) -> list[str]:
        path = self.control / f"{self.node_id}.completions"
        return path.read_text().split() if path.exists() else []

    @contextlib.contextmanager
    def client(self, token: str | None = None) -> Iterator[Client]:
        c = Client(self.socket, token)
        try:
            yield c
        finally:
            c.close()


class Client:
    """The node service of a node process, over its Unix socket."""

    def __init__(self, path: Path, token: str | None):
        self.channel = grpc.insecure_channel(f"unix:{path}")
        self.stub = npb_grpc.NodeServiceStub(self.channel)
        self.md = bearer_metadata(token)

    def submit(self, specs: list[TaskSpec]) -> list[str]:
        reply = self.stub.Submit(
            npb.SubmitRequest(tasks=[cv.spec_to_pb(s) for s in specs]), metadata=self.md, timeout=10
        )
        return list(reply.task_ids)

    def wait(self, task_id: str, timeout_s: float) -> Task:
        req = npb.WaitTaskRequest(task_id=task_id, timeout_s=timeout_s)
        return cv.task_from_pb(self.stub.WaitTask(req, metadata=self.md, timeout=timeout_s + 5))

    def close(self) -> None:
        self.channel.close()


@dataclass
class Pair:
    """Origin ``a`` (hands work to ``b`` on its own: over its threshold, with a slow worker of
    one slot) and peer ``b`` (a worker of N slots), each with its own Redis."""

    control: Path
    procs: dict[str, NodeProc] = field(default_factory=dict)
    redis_servers: dict[str, EmbeddedRedis] = field(default_factory=dict)
    token: str | None = None

    def store(self, node_id: str) -> redis.Redis:
        return redis.Redis.from_url(self.redis_servers[node_id].url, socket_timeout=5)

    def check_every_task_has_one_owner(self, ids: list[str], timeout_s: float = 30) -> dict[str, str]:
        """Wait for every task to finish (seen from a) and every hand-off and report to settle;
        then check: one owner each, nothing completed twice, each result at a. Task id -> owner."""
        a, b = self.procs["a"], self.procs["b"]
        with a.client(self.token) as client:
            finals = {tid: client.wait(tid, timeout_s) for tid in ids}
        ra, rb = self.store("a"), self.store("b")
        try:
            wait_until(
                lambda: ra.hlen("fc:a:handoffs") == 0 and rb.hlen("fc:b:reports") == 0,
                timeout_s,
                "every hand-off and report to settle",
            )
            held = owners(ra, ids)
            for tid, on_b in owners(rb, ids).items():
                held[tid] += on_b
            assert all(len(v) == 1 for v in held.values()), {t: v for t, v in held.items() if len(v) != 1}
            runs = Counter(a.completions() + b.completions())
            assert not [t for t in ids if runs[t] > 1], "a task was completed twice"
            completed = sum(int(r.hget(f"fc:{n}:counters", "completed") or 0) for n, r in (("a", ra), ("b", rb)))
            assert completed == len(ids), f"{completed} completions counted for {len(ids)} tasks"
        finally:
            ra.close()
            rb.close()
        for tid, t in finals.items():
            owner = held[tid][0]
            assert (t.status, t.owner_node, t.result) == (COMPLETED, owner, f"by {owner}".encode()), t
        return {tid: v[0] for tid, v in held.items()}


@contextlib.contextmanager
def pair(
    a_args: Sequence[str] = (),
    b_args: Sequence[str] = (),
    *,
    hosts: tuple[str, str] = ("127.0.0.1", "127.0.0.1"),
    prefixes: tuple[Sequence[str], Sequence[str]] = ((), ()),
    security: Sequence[str] = ("--insecure",),
    token: str | None = None,
    start: bool = True,
) -> Iterator[Pair]:
    control = Path(tempfile.mkdtemp(prefix="fcp-"))  # short: Unix socket paths are limited
    env = Pair(control, token=token)
    try:
        pa, pb = free_port(), free_port()
        addr = {"a": f"{hosts[0]}:{pa}", "b": f"{hosts[1]}:{pb}"}
        common = [*security, *([f"--token={token}"] if token else []), "--retry-max-s", "0.3"]
        for node_id, other, extra, prefix in (("a", "b", a_args, prefixes[0]), ("b", "a", b_args, prefixes[1])):
            env.redis_servers[node_id] = r = EmbeddedRedis(control / f"redis-{node_id}")
            r.start()
            args = ["--redis-url", r.url, "--listen", addr[node_id], "--peer", f"{other}={addr[other]}", *common]
            env.procs[node_id] = NodeProc(node_id, [*args, *extra], control, prefix)
        if start:
            for p in env.procs.values():
                p.start()
        yield env
    finally:
        for p in env.procs.values():
            p.stop()
        for r in env.redis_servers.values():
            r.stop()
        shutil.rmtree(control, ignore_errors=True)


ORIGIN = ["--auto", "--threshold", "0.5", "--workers", "1", "--work-ms", "30"]
PEER = ["--workers", str(N), "--work-ms", "2"]
SPECS = [TaskSpec("job", payload=f"p{i}".encode()) for i in range(N)]


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("victim", "step"), STEPS, ids=[f"{v}-{s}" for v, s in STEPS])
def test_kill_9_at_any_step_then_a_restart_leaves_every_task_with_one_owner(victim: str, step: str) -> None:
    a_args = [*ORIGIN, *(["--crash-at", step] if victim == "a" else [])]
    b_args = [*PEER, *(["--crash-at", step] if victim == "b" else [])]
    with pair(a_args, b_args) as env:
        with env.procs["a"].client() as client:
            ids = client.submit(SPECS)
        killed = env.procs[victim]
        code = killed.wait_exit()
        assert code == -signal.SIGKILL, f"{victim} exited with {code}, not killed at {step}:\n{killed.tail()}"
        assert killed.logged(f"killing itself at {step}") == 1
        killed.args = [x for x in killed.args if x not in ("--crash-at", step)]
        killed.start()  # the same node on the same Redis: the dead process's lock is taken over
        held = env.check_every_task_has_one_owner(ids)
        if step not in ("intent_recorded", "transfer_received"):  # else b said "unknown" and a ran them
            assert "b" in held.values()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_offers_to_a_peer_that_stopped_answering_time_out_and_the_tasks_stay_home() -> None:
    """b is frozen (SIGSTOP: its connections stay open, nothing answers). a's offers run out of
    time; nothing is begun, the tasks wait at a. Once b goes on, they are handed off and run."""
    with pair(["--auto", "--threshold", "0.5", "--offer-timeout-s", "0.3"], PEER) as env:
        a, b = env.procs["a"], env.procs["b"]
        os.kill(b.pid, signal.SIGSTOP)
        try:
            with a.client() as client:
                ids = client.submit(SPECS)
            timed_out = "Offer to peer 'b'"
            wait_until(lambda: a.logged(timed_out) >= 2, 20, "a's offers to b to time out twice")
            assert "DEADLINE_EXCEEDED" in a.tail(200)
            ra, rb = env.store("a"), env.store("b")
            try:
                at_a = {k: v["status"] for k, v in hgetall_json(ra, "fc:a:active").items()}
                assert at_a == dict.fromkeys(ids, "queued") and ra.hlen("fc:a:handoffs") == 0
                assert rb.hlen("fc:b:active") == 0
            finally:
                ra.close()
                rb.close()
        finally:
            os.kill(b.pid, signal.SIGCONT)
        held = env.check_every_task_has_one_owner(ids)
        assert set(held.values()) == {"b"}  # a has no worker: b ran them all once it answered


# ---------------------------------------------------------------------------- two hosts, one link


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=False)
    if proc.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


@dataclass
class Hosts:
    ns: tuple[str, str]
    veth: tuple[str, str]
    ip: tuple[str, str]

    def link(self, up: bool) -> None:
        """Cut (or mend) the link at b's end: a's interface stays up, what it sends is lost."""
        _ip("-n", self.ns[1], "link", "set", self.veth[1], "up" if up else "down")


@contextlib.contextmanager
def two_hosts() -> Iterator[Hosts]:
    """Two network namespaces (unique names), a veth pair between them, 10.x addresses."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("network namespaces need the ip tool and root: this test cannot cut a link here")
    tag = secrets.token_hex(3)
    ns = (f"fc-{tag}-a", f"fc-{tag}-b")
    veth = (f"fcv{tag}a", f"fcv{tag}b")
    subnet = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(256)}"
    hosts = Hosts(ns, veth, (f"{subnet}.1", f"{subnet}.2"))
    made: list[str] = []
    try:
        try:
            for name in ns:
                _ip("netns", "add", name)
                made.append(name)
        except OSError as e:
            pytest.skip(f"cannot make network namespaces here ({e}): this test needs them to cut a link")
        _ip("link", "add", veth[0], "type", "veth", "peer", "name", veth[1])
        for i in (0, 1):
            _ip("link", "set", veth[i], "netns", ns[i])
            _ip("-n", ns[i], "addr", "add", f"{hosts.ip[i]}/24", "dev", veth[i])
            _ip("-n", ns[i], "link", "set", veth[i], "up")
            _ip("-n", ns[i], "link", "set", "lo", "up")
        yield hosts
    finally:
        for name in made:
            with contextlib.suppress(OSError):
                _ip("netns", "del", name)  # takes its end of the veth pair (and so the pair) with it


def _release(fifo: Path) -> bool:
    """Tell a node held at a step to go on (it reads the FIFO); False while it has not opened it."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ENXIO:  # no reader yet
            return False
        raise
    try:
        os.write(fd, b"go")
    finally:
        os.close(fd)
    return True


def _certs(control: Path, hosts: Hosts) -> dict[str, list[str]]:
    """A CA and a certificate per node for its address: mutual TLS between the hosts (plaintext
    is allowed on loopback only)."""
    ca = make_ca(control / "tls")
    out = {}
    for i, node_id in enumerate(("a", "b")):
        c = issue(control / "tls", node_id, [hosts.ip[i]])
        out[node_id] = ["--tls-cert", str(c.cert), "--tls-key", str(c.key), "--tls-ca", str(ca.cert)]
    return out


CUTS = [("b", "transfer_received"), ("a", "intent_recorded")]


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("held", "step"), CUTS, ids=[f"{h}-{s}" for h, s in CUTS])
def test_a_link_cut_in_the_middle_of_a_hand_off_heals_to_one_owner_per_task(held: str, step: str) -> None:
    """The hand-off is held at a step (``--pause-at``) on one host while the test cuts the link
    (``ip link set ... down``), then goes on: b adopts and answers into the void, or a transfers
    into it. a's calls run out of time, a keeps asking b about its hand-offs and gets no answer,
    the link comes back: a learns what b holds, and every task ends with one owner."""
    token = secrets.token_urlsafe(24)
    with two_hosts() as hosts:
        netns = [["ip", "netns", "exec", name] for name in hosts.ns]
        # b held: a's transfer deadline must outlast the time the test takes to see b paused, cut
        # the link and release it (else b's handler is cancelled at the deadline and never adopts:
        # seen once in CI with the machine loaded); a's call still runs out, into the cut link
        timeouts = ["--timeout-s", "4" if held == "b" else "1.5", "--offer-timeout-s", "1"]
        pause = ["--pause-at", step]
        with pair(
            [*ORIGIN, *timeouts, *(pause if held == "a" else [])],
            [*PEER, *(pause if held == "b" else [])],
            hosts=hosts.ip,
            prefixes=(netns[0], netns[1]),
            security=[],
            token=token,
            start=False,
        ) as env:
            tls = _certs(env.control, hosts)
            for node_id, p in env.procs.items():
                p.args += tls[node_id]
                p.start()
            a, holder = env.procs["a"], env.procs[held]
            with a.client(token) as client:
                ids = client.submit(SPECS)
            paused = env.control / f"{held}.paused-{step}"
            wait_until(paused.exists, 20, f"{held} to reach {step}")
            hosts.link(up=False)
            fifo = env.control / f"{held}.release-{step}"
            wait_until(lambda: _release(fifo), 10, f"{held} to take the word to go on")
            if held == "b":  # b adopts durably and answers; the answer is lost
                rb = env.store("b")
                try:
                    wait_until(lambda: rb.hlen("fc:b:active") > 0, 10, "b to adopt what it was sent")
                finally:
                    rb.close()
            wait_until(lambda: a.logged("Transfer to peer 'b'") >= 1, 20, "a's transfer to run out of time")
            wait_until(lambda: a.logged("TaskStatus to peer 'b'") >= 2, 40, "a to ask b, twice, in vain")
            ra = env.store("a")
            try:
                assert ra.hlen("fc:a:handoffs") > 0, "a settled a hand-off without hearing from b"
            finally:
                ra.close()
            hosts.link(up=True)
            owner = env.check_every_task_has_one_owner(ids, timeout_s=40)
            assert holder.logged(f"held at {step}") == 1
            if held == "b":
                assert "b" in owner.values()
