"""Test fixtures: a private redis-server per test session (free port, temp dir, AOF on) that
tests can kill, restart and inspect; every test starts from an empty database."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from node.embedded import EmbeddedRedis

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
# Nodes that tests start serve their web view on a free port (the default, 9465, is one per machine)
os.environ.setdefault("FEDCOORD_DASHBOARD_LISTEN", "127.0.0.1:0")
os.environ.setdefault("FEDCOORD_FEDERATION_DASHBOARD_LISTEN", "127.0.0.1:0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _poll_delays(timeout_s: float, what: str) -> Iterator[float]:
    """Delays between polls (2 ms doubling up to 100 ms). After ``timeout_s`` the caller gets one
    last look, then the test fails."""
    deadline = time.monotonic() + timeout_s
    delay = 0.002
    while time.monotonic() <= deadline:
        yield delay
        delay = min(delay * 2, 0.1)
    yield 0.0
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def wait_until(cond: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition") -> Any:
    """Poll ``cond`` until it returns something truthy; fail the test after ``timeout_s``."""
    for delay in _poll_delays(timeout_s, what):
        v = cond()
        if v:
            return v
        time.sleep(delay)
    return None  # unreachable: _poll_delays raises


async def async_wait_until(cond: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition") -> Any:
    for delay in _poll_delays(timeout_s, what):
        v = cond()
        if v:
            return v
        await asyncio.sleep(delay)
    return None  # unreachable: _poll_delays raises


async def async_wait_until_async(
    cond: Callable[[], Awaitable[Any]], timeout_s: float = 10.0, what: str = "condition"
) -> Any:
    """Like async_wait_until, for a condition that has to await (a node call, say)."""
    for delay in _poll_delays(timeout_s, what):
        v = await cond()
        if v:
            return v
        await asyncio.sleep(delay)
    return None  # unreachable: _poll_delays raises


class RedisServer(EmbeddedRedis):
    """A real redis-server owned by the tests (127.0.0.1, a free port, AOF on): they can kill -9
    it, restart it on the same port and directory, and inspect it."""

    def __init__(self, workdir: Path):
        super().__init__(workdir, tcp_port=0)

    @property
    def port(self) -> int:
        assert self.tcp_port
        return self.tcp_port

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session server's URL, with an empty database (the server is restarted if a test killed it)."""
    if not redis_server.alive() or not redis_server.ping():
        redis_server.restart()
    c = redis_server.client()
    c.flushall()
    c.close()
    yield redis_server.url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone (for tests that kill it)."""
    server = RedisServer(tmp_path / "own-redis")
    server.start()
    yield server
    server.stop()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        print("\nERROR: pytest collected no tests: this run proves nothing (exit code 5).")
