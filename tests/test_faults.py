"""Faults injected for real: kill -9 of a node process mid-load, Redis killed mid-load."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from node import LocalNode, NodeConfig, NodeState, StoreUnavailableError, TaskSpec, TaskStatus, WorkerSpec
from node.errors import StaleLeaseError
from node.model import Lease
from tests.conftest import RedisServer, async_wait_until, wait_until

ROOT = Path(__file__).resolve().parent.parent


def complete_lines(path: Path) -> list[str]:
    """Lines that were fully written (a kill can cut the last one)."""
    if not path.exists():
        return []
    text = path.read_text()
    return text.split("\n")[:-1]


async def finish_everything(node: LocalNode, worker: str) -> None:
    """Run every remaining task to completion with a fresh worker."""
    await node.register_worker(WorkerSpec(worker, concurrency=1000))
    while True:
        stats = await node.stats()
        active = sum(stats.active_by_status.values())
        if active == 0:
            return
        for lease in await node.claim(worker, 1000, wait_s=0.5):
            await node.complete(lease)


@pytest.mark.slow
def test_kill9_node_process_mid_load_loses_nothing(redis_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.load_node", redis_url, "victim", str(tmp_path)],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: len(complete_lines(tmp_path / "completed.log")) >= 3000, 60, "3000 completions")
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    acked_submit = set(complete_lines(tmp_path / "submitted.log"))
    acked_done = set(complete_lines(tmp_path / "completed.log"))
    assert len(acked_done) >= 3000

    async def check() -> None:
        # The dead process's lock is taken over at once (same host, its pid is gone).
        async with LocalNode.open("victim", redis_url, config=NodeConfig(tick_max_s=0.05)) as node:
            for tid in acked_submit:
                await node.get(tid)  # raises TaskNotFoundError if an acknowledged submit was lost
            for tid in acked_done:
                assert (await node.get(tid)).status is TaskStatus.COMPLETED
            # Leases the dead worker held are fenced: its late completions are refused.
            stale = [t for t in node._core.tasks.values() if t.status is TaskStatus.ASSIGNED][:5]
            for t in stale:
                with pytest.raises(StaleLeaseError):
                    await node.complete(Lease(t.id, t.attempt - 1, "w", 0, t.spec))
            await node.deregister_worker("w")  # its leases go back in line
            await finish_everything(node, "w2")
            stats = await node.stats()
            everything = set(acked_submit)
            # tasks submitted durably whose ack never reached the log are also there: count them in
            completed_ids = {tid for tid in everything if (await node.get(tid)).status is TaskStatus.COMPLETED}
            assert completed_ids == everything
            assert stats.totals["completed"] == stats.totals["submitted"], stats.totals
            assert stats.totals["completed"] >= len(everything)

    asyncio.run(check())


@pytest.mark.slow
def test_redis_killed_and_restarted_mid_load_loses_nothing_acknowledged(own_redis: RedisServer) -> None:
    async def main() -> None:
        acked_submit: set[str] = set()
        acked_done: set[str] = set()
        errors = 0
        stop = asyncio.Event()
        cfg = NodeConfig(tick_max_s=0.05)
        async with LocalNode.open("n1", own_redis.url, config=cfg) as node:
            await node.register_worker(WorkerSpec("w", concurrency=500))

            async def serving_or_stopped() -> None:
                """While Redis is down the load waits for the node to be back, as a client would."""
                await async_wait_until(lambda: node.state is NodeState.SERVING or stop.is_set(), 60, "recovery")

            async def produce() -> None:
                nonlocal errors
                while not stop.is_set():
                    try:
                        acked_submit.update(await node.submit([TaskSpec("t") for _ in range(50)]))
                    except StoreUnavailableError:
                        errors += 1
                        await serving_or_stopped()

            async def work() -> None:
                nonlocal errors
                while not stop.is_set():
                    try:
                        leases = await node.claim("w", 100, wait_s=0.2)
                    except StoreUnavailableError:
                        errors += 1
                        await serving_or_stopped()
                        continue

                    async def done(lease: object) -> None:
                        nonlocal errors
                        try:
                            await node.complete(lease)  # type: ignore[arg-type]
                            acked_done.add(lease.task_id)  # type: ignore[attr-defined]
                        except (StoreUnavailableError, StaleLeaseError):
                            errors += 1

                    await asyncio.gather(*(done(lease) for lease in leases))

            load = [asyncio.create_task(produce()), asyncio.create_task(work())]
            await async_wait_until(lambda: len(acked_done) >= 2000, 60, "2000 completions before the crash")
            own_redis.kill()
            await async_wait_until(lambda: node.state is NodeState.DEGRADED, 30, "the node to notice")
            own_redis.start()
            await async_wait_until(lambda: node.state is NodeState.SERVING, 30, "the node to recover")
            mark = len(acked_done)
            await async_wait_until(lambda: len(acked_done) >= mark + 2000, 60, "2000 completions after recovery")
            stop.set()
            await asyncio.gather(*load)
            assert errors > 0  # the outage was seen by callers, as errors, not as false acks
            r = own_redis.client()
            stored = {k.decode() for k in r.hkeys("fc:n1:active")}
            assert set(node._core.tasks) == stored  # memory agrees with Redis
            for tid in acked_submit:
                await node.get(tid)
            for tid in acked_done:
                assert (await node.get(tid)).status is TaskStatus.COMPLETED
            await node.deregister_worker("w")
            await finish_everything(node, "w2")
            stats = await node.stats()
            assert stats.totals["completed"] == stats.totals["submitted"]
            r.close()

    asyncio.run(main())
