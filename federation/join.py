"""``fedcoord node --federation ADDRESS``: the node runs its own Flower SuperNode, kept alive.

The SuperNode connects to the federation's SuperLink at ``ADDRESS`` (TLS with the SuperLink's CA
from ``--federation-ca``; plaintext only to a loopback SuperLink) and tells its ClientApp where
this node is and how to reach it (address, CA, the federation-role token). A SuperNode that dies
is started again (after 1 s, doubling up to 30 s while it keeps dying); it stops with the node.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from federation.launch import FlowerHome, Proc, free_port
from node.rpc.auth import is_loopback

__all__ = ["FederationJoin", "SuperNodeKeeper"]

log = logging.getLogger("fedcoord.join")


@dataclass(frozen=True, slots=True)
class FederationJoin:
    """Where the SuperLink is and how this node's ClientApp reaches the node."""

    superlink: str
    node_address: str
    superlink_ca: Path | None = None  # None: plaintext, loopback SuperLinks only
    node_insecure: bool = False
    node_ca: Path | None = None
    node_token: str | None = None

    def __post_init__(self) -> None:
        host, sep, port = self.superlink.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"--federation: {self.superlink!r} is not host:port")
        if self.superlink_ca is None and not is_loopback(self.superlink):
            raise ValueError(
                f"--federation: {self.superlink} is not on loopback: give the SuperLink's CA (--federation-ca) "
                "for TLS; plaintext is only for a SuperLink on this machine"
            )

    def node_config(self) -> dict[str, str | bool]:
        address = self.node_address
        host, _, port = address.rpartition(":")
        if host in ("0.0.0.0", "[::]", "::"):  # listening everywhere: reach it on loopback
            address = f"127.0.0.1:{port}"
        cfg: dict[str, str | bool] = {"node-address": address, "node-insecure": self.node_insecure}
        if self.node_ca is not None:
            cfg["node-ca"] = str(self.node_ca)
        if self.node_token:
            cfg["node-token"] = self.node_token
        return cfg


class SuperNodeKeeper:
    """Runs one SuperNode for this node and starts it again when it dies."""

    def __init__(self, join: FederationJoin, root: Path, name: str):
        self.join = join
        self.home = FlowerHome(root)
        self.name = name
        self.proc: Proc | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        self.proc = self.home.supernode(
            self.join.superlink,
            free_port(),
            self.join.node_config(),
            self.name,
            root_certificates=self.join.superlink_ca,
        ).start()
        log.info("SuperNode for %s started (pid %s) towards %s", self.name, self.proc.pid, self.join.superlink)

    def start(self) -> SuperNodeKeeper:
        self._start()
        self._thread = threading.Thread(target=self._watch, name=f"supernode-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        backoff = 1.0
        while not self._stop.wait(1.0):
            p = self.proc
            if p is not None and not p.alive:
                log.warning(
                    "the SuperNode exited (%s); starting it again in %.0f s", p.popen and p.popen.returncode, backoff
                )
                if self._stop.wait(backoff):
                    return
                self._start()
                self.restarts += 1
                backoff = min(backoff * 2, 30.0)
            elif p is not None and p.alive:
                backoff = 1.0

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self.proc is not None:
            self.proc.stop()
