"""Starting Flower's processes for a federation: a SuperLink, SuperNodes, and the run.

Used by ``fedcoord up`` and ``fedcoord aggregator`` and by the integration tests. Every process
runs in a session of its own (a SuperNode spawns a ``flwr-clientapp`` process per message, a
SuperLink its ``flwr-serverapp``): stopping one stops its whole group, so nothing is left behind.
Flower's environment is set for each (telemetry off, no update check, no dependency installs at
run time) and ``FLWR_HOME`` points into the caller's directory, so a federation's state and its
named SuperLinks stay with it. The venv's ``bin`` goes first on ``PATH``: Flower spawns its
helper processes by name.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "FLOWER_ENV",
    "FlowerError",
    "FlowerHome",
    "Proc",
    "app_dir",
    "free_port",
    "node_config_arg",
    "wait_listening",
]

FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


class FlowerError(RuntimeError):
    """A Flower command failed; the message holds what it printed."""


def app_dir() -> Path:
    """The packaged Flower app (its ``pyproject.toml``; the code is the installed package)."""
    return Path(__file__).resolve().parent / "flwr_app"


def _bin() -> Path:
    return Path(sys.executable).parent


def free_port() -> int:
    """A TCP port free on loopback now (for a child process to listen on)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(address: str, timeout_s: float = 30.0, proc: Proc | None = None) -> None:
    """Until something accepts TCP connections at ``host:port`` (a process just started);
    :class:`FlowerError` after ``timeout_s``, or at once if ``proc`` exited meanwhile."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    delay = 0.02
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return
        except OSError:
            pass
        if proc is not None and not proc.alive:
            raise FlowerError(f"{proc.name} exited before listening on {address}:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise FlowerError(f"nothing listens on {address} after {timeout_s:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def node_config_arg(values: Mapping[str, str | bool | int | float]) -> str:
    """``--node-config`` text: ``key='value' key2=true``."""
    parts = []
    for k, v in values.items():
        if isinstance(v, bool):
            parts.append(f"{k}={'true' if v else 'false'}")
        elif isinstance(v, int | float):
            parts.append(f"{k}={v}")
        else:
            if "'" in v:
                raise ValueError(f"node config {k}: a quote in {v!r}")
            parts.append(f"{k}='{v}'")
    return " ".join(parts)


@dataclass
class Proc:
    """One process (and its group) with its output in a log file."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None
    started: float = 0.0

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        try:
            self.popen = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        finally:
            log.close()
        self.started = time.monotonic()
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self.popen is None else self.popen.pid

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM to the group, then SIGKILL to what is left after ``timeout_s``."""
        p = self.popen
        if p is None:
            return
        for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                break
            try:
                p.wait(wait_s)
                # the leader is gone; its group may not be (spawned helpers): make sure
                with _suppress_lookup():
                    os.killpg(p.pid, signal.SIGKILL)
                break
            except subprocess.TimeoutExpired:
                continue

    def kill(self) -> None:
        """SIGKILL the group at once (fault tests: no clean shutdown)."""
        if self.popen is not None:
            with _suppress_lookup():
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""


class _suppress_lookup:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is ProcessLookupError or exc[0] is PermissionError


@dataclass
class FlowerHome:
    """A federation's working directory: ``FLWR_HOME``, the SuperLink's database, logs."""

    root: Path
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "flwr").mkdir(exist_ok=True)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ, **FLOWER_ENV)
        env["FLWR_HOME"] = str(self.root / "flwr")
        env["PATH"] = f"{_bin()}{os.pathsep}{env.get('PATH', '')}"
        return env

    def _exe(self, name: str) -> str:
        return str(_bin() / name)

    def superlink(
        self, port: int, *, host: str = "127.0.0.1", name: str = "superlink", tls: Sequence[Path] | None = None
    ) -> Proc:
        """``tls``: (certificate, key, CA certificate) files; None: plaintext (loopback only)."""
        security = ["--insecure"] if tls is None else [
            "--ssl-certfile", str(tls[0]), "--ssl-keyfile", str(tls[1]), "--ssl-ca-certfile", str(tls[2]),
        ]  # fmt: skip
        argv = [
            self._exe("flower-superlink"), *security, "--database", str(self.root / "superlink.db"),
            "--port", str(port), "--host", host,
        ]  # fmt: skip
        p = Proc(name, argv, self.root / "logs" / f"{name}.log", self.env)
        self.procs.append(p)
        return p

    def supernode(
        self,
        superlink: str,
        port: int,
        node_config: Mapping[str, str | bool | int | float],
        name: str,
        *,
        root_certificates: Path | None = None,
    ) -> Proc:
        """``root_certificates``: the CA of a TLS SuperLink; None: plaintext (loopback only)."""
        security = ["--insecure"] if root_certificates is None else ["--root-certificates", str(root_certificates)]
        argv = [
            self._exe("flower-supernode"), *security, "--superlink", superlink, "--port", str(port),
            "--node-config", node_config_arg(node_config),
        ]  # fmt: skip
        p = Proc(name, argv, self.root / "logs" / f"{name}.log", self.env)
        self.procs.append(p)
        return p

    def name_superlink(self, federation: str, address: str, *, root_certificates: Path | None = None) -> None:
        """``flwr run APP FEDERATION`` finds the SuperLink by this name (``$FLWR_HOME/config.toml``)."""
        path = self.root / "flwr" / "config.toml"
        security = "insecure = true" if root_certificates is None else f'root-certificates = "{root_certificates}"'
        path.write_text(f'[superlink.{federation}]\naddress = "{address}"\n{security}\n')

    def _flwr(self, args: Sequence[str], timeout_s: float) -> str:
        r = subprocess.run(
            [self._exe("flwr"), *args], env=self.env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if r.returncode != 0:
            raise FlowerError(f"flwr {' '.join(args[:2])} failed ({r.returncode}): {(r.stdout + r.stderr)[-2000:]}")
        return r.stdout

    def run(self, federation: str, run_config: Mapping[str, str | int | float], timeout_s: float = 120.0) -> int:
        """Submit the fedcoord app as a run; returns its run id."""
        rc = " ".join(f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in run_config.items())
        out = self._flwr(["run", str(app_dir()), federation, "--format", "json", "--run-config", rc], timeout_s)
        doc = json.loads(out[out.index("{") :])
        if not doc.get("success", True) or "run-id" not in doc:
            raise FlowerError(f"flwr run: {doc}")
        return int(doc["run-id"])

    def stop_run(self, federation: str, run_id: int, timeout_s: float = 60.0) -> None:
        self._flwr(["stop", str(run_id), federation], timeout_s)

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()
