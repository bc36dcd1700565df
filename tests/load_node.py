"""A node process under load, for fault tests: submits and completes tasks forever and logs
every acknowledged id (one per line) so a test can kill it at any moment and check the store.

    python -m tests.load_node REDIS_URL NODE_ID OUT_DIR
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from node import LocalNode, NodeConfig, TaskSpec, WorkerSpec


async def main(url: str, node_id: str, out: Path) -> None:
    submitted = (out / "submitted.log").open("a", buffering=1)
    completed = (out / "completed.log").open("a", buffering=1)
    async with LocalNode.open(node_id, url, config=NodeConfig(lock_ttl_s=30)) as node:
        await node.register_worker(WorkerSpec("w", concurrency=200))
        (out / "ready").write_text("1")

        async def produce() -> None:
            while True:
                ids = await node.submit([TaskSpec("load", payload=b"p") for _ in range(50)])
                submitted.write("".join(f"{i}\n" for i in ids))

        async def work() -> None:
            while True:
                leases = await node.claim("w", 100, wait_s=1)

                async def done(lease: object) -> None:
                    await node.complete(lease)  # type: ignore[arg-type]
                    completed.write(f"{lease.task_id}\n")  # type: ignore[attr-defined]

                await asyncio.gather(*(done(lease) for lease in leases))

        await asyncio.gather(produce(), work())


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], Path(sys.argv[3])))
