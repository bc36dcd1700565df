"""``fedcoord up``: a whole federation on this machine, supervised.

N nodes (``fedcoord node`` processes, each on its own embedded Redis, every node the others'
hand-off peer, the ``adaptive`` admission policy), a Flower SuperLink with a database (so
SuperNodes reconnect after it restarts), one SuperNode per node, the fedcoord app submitted as a
run, demo workers of unequal capacity on every node, and a skewed demo workload (most tasks go to
the first node) so that thresholds move and hand-offs happen.

:class:`Federation` starts, watches and stops all of it. :meth:`Federation.supervise` restarts a
child that died (a SuperLink that died is restarted on its database and the run submitted
again); :meth:`Federation.stop` stops the run and every process group, so nothing is left.
:meth:`Federation.snapshot` reads what the dashboard shows: per node its queue, load, threshold,
hand-offs and privacy budget (``Stats``, as the node's own client), per round what the
ServerApp wrote to its status file.
"""

from __future__ import annotations

import fcntl
import json
import logging
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from federation.launch import FlowerError, FlowerHome, Proc, free_port, wait_listening

__all__ = ["Federation", "UpConfig", "read_rounds"]

log = logging.getLogger("fedcoord.up")

FEDERATION = "fedcoord-up"


def read_rounds(path: Path) -> list[dict[str, Any]]:
    """The rounds the ServerApp wrote to its status file so far (one JSON object per line)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written (or cut short by a SuperLink killed mid-write)
    return out


@dataclass(frozen=True, slots=True)
class UpConfig:
    nodes: int = 3
    period_s: float = 10.0  # a round every this often (Flower's deployment runtime: ~5-10 s a broadcast)
    ttl_s: float = 15.0
    window_s: float = 5.0  # the nodes' summary windows
    policy: str = "adaptive"
    slots: tuple[int, ...] = (2, 6, 12)  # worker slots per node, cycled: unequal capacity
    rate_per_s: float = 40.0  # demo tasks submitted per second, in all
    skew: float = 0.8  # share of them sent to the first node
    task_s: float = 0.2  # mean run time of a demo task (the sleep handler, scaled)
    seed: int = 1
    node_env: tuple[tuple[str, str], ...] = ()  # more FEDCOORD_* settings for the nodes

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= 32:
            raise ValueError(f"nodes: {self.nodes} (1..32)")
        for name in ("period_s", "ttl_s", "window_s", "task_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)!r}")
        if not self.rate_per_s >= 0:
            raise ValueError(f"rate_per_s: must be >= 0, got {self.rate_per_s!r}")
        if not 0 <= self.skew <= 1:
            raise ValueError(f"skew: {self.skew!r} (0..1)")


@dataclass
class _Node:
    node_id: str
    port: int
    proc: Proc
    worker: Proc
    supernode: Proc | None = None
    dashboard_port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}/"


@dataclass
class Federation:
    cfg: UpConfig
    root: Path
    home: FlowerHome = field(init=False)
    nodes: list[_Node] = field(default_factory=list)
    superlink: Proc | None = None
    superlink_port: int = 0
    run_id: int | None = None
    restarts: dict[str, int] = field(default_factory=dict)
    submitted: int = 0
    started_at: float = 0.0
    first_round_s: float | None = None
    dashboard_url: str | None = None  # the federation view, when the launcher serves one
    _stop: threading.Event = field(default_factory=threading.Event)
    _workload: threading.Thread | None = None
    _lock: IO[str] | None = None

    def __post_init__(self) -> None:
        self.home = FlowerHome(self.root)

    @property
    def status_file(self) -> Path:
        return self.root / "rounds.jsonl"

    # ------------------------------------------------------------------ starting

    def start(self, progress: Callable[[str], None] = lambda _: None) -> None:
        self.started_at = time.monotonic()
        cfg = self.cfg
        self._lock_root()
        self._fresh_flower_state()
        env = dict(
            self.home.env,
            FEDCOORD_NODE__WINDOW_S=str(cfg.window_s),
            FEDCOORD_ADMISSION__POLICY=cfg.policy,
            FEDCOORD_HANDOFF__CHECK_S="0.5",
        )
        env.update(cfg.node_env)
        ports = [free_port() for _ in range(cfg.nodes)]
        ids = [f"n{i + 1}" for i in range(cfg.nodes)]
        progress(f"starting {cfg.nodes} nodes")
        for i, (nid, port) in enumerate(zip(ids, ports, strict=True)):
            peers = [f"--peer={other}=127.0.0.1:{p}" for other, p in zip(ids, ports, strict=True) if other != nid]
            dport = free_port()  # its node view (kept across restarts: the federation view links to it)
            argv = [
                sys.executable, "-m", "fedcoord", "node", "--node-id", nid, "--listen", f"127.0.0.1:{port}",
                "--insecure", "--metrics-listen", "", "--dashboard-listen", f"127.0.0.1:{dport}",
                "--data-dir", str(self.root / "nodes" / nid), *peers,
            ]  # fmt: skip
            proc = Proc(nid, argv, self.root / "logs" / f"{nid}.log", env).start()
            slots = cfg.slots[i % len(cfg.slots)]
            wargv = [
                sys.executable, "-m", "fedcoord", "worker", "--node", f"127.0.0.1:{port}", "--insecure",
                "--default", "sleep", "--time-scale", str(cfg.task_s / 5), "--concurrency", str(slots),
            ]  # fmt: skip
            worker = Proc(f"{nid}-worker", wargv, self.root / "logs" / f"{nid}-worker.log", self.home.env)
            self.nodes.append(_Node(nid, port, proc, worker, dashboard_port=dport))
        progress("starting the Flower SuperLink")  # meanwhile: the nodes start in parallel
        self.superlink_port = free_port()
        self.superlink = self.home.superlink(self.superlink_port).start()
        for n in self.nodes:
            wait_listening(n.address, 60, n.proc)
            n.worker.start()
        wait_listening(f"127.0.0.1:{self.superlink_port}", 60, self.superlink)
        progress(f"starting {cfg.nodes} SuperNodes")
        for n in self.nodes:
            n.supernode = self._supernode(n)
        self.home.name_superlink(FEDERATION, f"127.0.0.1:{self.superlink_port}")
        progress("submitting the federation's run")
        self._submit()
        self._workload = threading.Thread(target=self._submit_loop, name="fedcoord-up-workload", daemon=True)
        self._workload.start()

    def _lock_root(self) -> None:
        """Hold ``root`` for this federation (until :meth:`stop`, or the process's end): a second
        ``fedcoord up`` on the same directory would remove the first one's SuperLink database."""
        self.root.mkdir(parents=True, exist_ok=True)
        f = open(self.root / "up.lock", "a+")  # noqa: SIM115 - held for the federation's life
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise OSError(f"{self.root} is in use by another fedcoord up (its up.lock is held)") from None
        self._lock = f

    def _fresh_flower_state(self) -> None:
        """In a ``root`` an earlier ``fedcoord up`` used, the nodes keep their data (queued tasks
        are recovered, privacy ledgers go on spending the same budgets), but the Flower side starts
        over: its database knows SuperNodes and runs that are gone, and the rounds file is the
        old run's (kept as ``rounds.previous.jsonl``)."""
        for name in ("superlink.db", "superlink.db-shm", "superlink.db-wal"):
            (self.root / name).unlink(missing_ok=True)
        if self.status_file.exists():
            self.status_file.replace(self.root / "rounds.previous.jsonl")

    def _start_superlink(self) -> None:
        self.superlink = self.home.superlink(self.superlink_port).start()
        wait_listening(f"127.0.0.1:{self.superlink_port}", 60, self.superlink)

    def _supernode(self, n: _Node) -> Proc:
        p = self.home.supernode(
            f"127.0.0.1:{self.superlink_port}",
            free_port(),
            {"node-address": n.address, "node-insecure": True},
            f"supernode-{n.node_id}",
        )
        return p.start()

    def _submit(self) -> None:
        rc: dict[str, str | int | float] = {
            "rounds": 0,
            "period-s": self.cfg.period_s,
            "ttl-s": self.cfg.ttl_s,
            "status-file": str(self.status_file),
            "min-nodes": self.cfg.nodes,
        }
        self.run_id = self.home.run(FEDERATION, rc)

    # ------------------------------------------------------------------ the demo workload

    def _submit_loop(self) -> None:
        from node.model import TaskSpec  # noqa: PLC0415
        from node.rpc.client import NodeClient  # noqa: PLC0415

        cfg = self.cfg
        rng = random.Random(cfg.seed)
        clients = [NodeClient(n.address, insecure=True, linger_ms=20.0) for n in self.nodes]
        try:
            interval = 1.0 / cfg.rate_per_s if cfg.rate_per_s > 0 else None
            while interval is not None and not self._stop.wait(interval):
                i = 0 if rng.random() < cfg.skew or len(clients) == 1 else rng.randrange(1, len(clients))
                spec = TaskSpec(rng.choice(("simple_qa", "analysis", "coding")), difficulty=rng.randint(1, 9))
                try:
                    clients[i].submit_one(spec)
                    self.submitted += 1
                except Exception as e:  # noqa: BLE001 - a node restarting: the demo goes on
                    log.debug("demo submit to %s failed: %s", self.nodes[i].node_id, e)
        finally:
            for c in clients:
                c.close()

    # ------------------------------------------------------------------ supervising

    def supervise(self) -> list[str]:
        """Restart what died; returns what was restarted (for the dashboard and the report)."""
        done: list[str] = []
        sl = self.superlink
        if sl is not None and not sl.alive:
            log.warning("the SuperLink exited (%s); restarting it on its database", sl.popen and sl.popen.returncode)
            self._start_superlink()
            try:
                self._submit()
            except FlowerError as e:
                log.warning("could not submit the run again yet: %s", e)
            done.append("superlink")
        for n in self.nodes:
            for name, p, restart in (
                (n.node_id, n.proc, lambda n=n: n.proc.start()),
                (f"{n.node_id}-worker", n.worker, lambda n=n: n.worker.start()),
                (f"supernode-{n.node_id}", n.supernode, lambda n=n: setattr(n, "supernode", self._supernode(n))),
            ):
                if p is not None and p.popen is not None and not p.alive:
                    restart()
                    done.append(name)
        for name in done:
            self.restarts[name] = self.restarts.get(name, 0) + 1
        return done

    # ------------------------------------------------------------------ reading

    def node_links(self) -> dict[str, str]:
        """Node id -> URL of its node view."""
        return {n.node_id: n.dashboard_url for n in self.nodes}

    def rounds(self) -> list[dict[str, Any]]:
        out = read_rounds(self.status_file)
        if out and self.first_round_s is None:
            self.first_round_s = time.monotonic() - self.started_at
        return out

    def snapshot(self) -> dict[str, Any]:
        from node.rpc.client import NodeClient  # noqa: PLC0415

        nodes: dict[str, Any] = {}
        for n in self.nodes:
            try:
                with NodeClient(n.address, insecure=True, timeout_s=2.0) as c:
                    st = c.stats()
                p = st.privacy
                nodes[n.node_id] = {
                    "queue": st.load.ready + st.load.delayed + st.load.pending,
                    "leased": st.load.leased,
                    "slots": st.load.slots,
                    "load": st.load.ratio,
                    "threshold": st.threshold,
                    "handed_off_out": st.totals.get("handed_off", 0),
                    "handed_off_in": st.totals.get("adopted", 0),
                    "completed": st.totals.get("completed", 0),
                    "budget_left": None if p is None else p.epsilon_left,
                    "releases": None if p is None else p.releases,
                    "up": True,
                }
            except Exception as e:  # noqa: BLE001 - a node down is shown as down
                nodes[n.node_id] = {"up": False, "error": str(e)[:200]}
        rounds = self.rounds()
        return {
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "run_id": self.run_id,
            "submitted": self.submitted,
            "nodes": nodes,
            "rounds": len(rounds),
            "last_round": rounds[-1] if rounds else None,
            "first_round_s": None if self.first_round_s is None else round(self.first_round_s, 1),
            "restarts": dict(self.restarts),
            "dashboard": self.dashboard_url,
            "node_views": self.node_links(),
        }

    # ------------------------------------------------------------------ stopping

    def stop(self) -> None:
        self._stop.set()
        if self._workload is not None:
            self._workload.join(5)
        if self.run_id is not None and self.superlink is not None and self.superlink.alive:
            try:
                self.home.stop_run(FEDERATION, self.run_id, timeout_s=20)
            except (FlowerError, OSError) as e:  # the processes go below either way
                log.debug("flwr stop: %s", e)
        for n in self.nodes:
            if n.supernode is not None:
                n.supernode.stop()
        if self.superlink is not None:
            self.superlink.stop()
        for n in self.nodes:
            n.worker.stop()
        for n in self.nodes:
            n.proc.stop(timeout_s=35)
        if self._lock is not None:
            self._lock.close()  # lets the directory go
            self._lock = None
