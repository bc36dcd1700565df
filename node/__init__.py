"""One fedcoord node: a durable, fast local task manager.

async with LocalNode.open(node_id="n1") as node:
    ids = await node.submit([TaskSpec("resize", payload=b"...")])
    await node.register_worker(WorkerSpec("w1", skill=5))
    for lease in await node.claim("w1", max_tasks=10):
        await node.complete(lease, result=b"done")
"""

from node.analytics import NodeStats, PerformanceReport
from node.core import CoreConfig, HeartbeatReply, ScalingAdvice, WorkerInfo
from node.errors import (
    EmbeddedRedisError,
    FedcoordError,
    FencedError,
    InvalidTransitionError,
    NodeClosedError,
    NodeOwnedError,
    NotFoundError,
    StaleLeaseError,
    StoreError,
    StoreUnavailableError,
    TaskNotFoundError,
    ValidationError,
    WaitTimeoutError,
    WorkerNotFoundError,
)
from node.events import Subscription
from node.model import Event, EventKind, Lease, Limits, Priority, Task, TaskSpec, TaskStatus, WorkerSpec
from node.runtime import LocalNode, NodeConfig, NodeState
from node.store.memory import MemoryBackend, MemoryStore
from node.store.redis_store import RedisStore

__all__ = [
    "CoreConfig",
    "EmbeddedRedisError",
    "Event",
    "EventKind",
    "FedcoordError",
    "FencedError",
    "HeartbeatReply",
    "InvalidTransitionError",
    "Lease",
    "Limits",
    "LocalNode",
    "MemoryBackend",
    "MemoryStore",
    "NodeClosedError",
    "NodeConfig",
    "NodeOwnedError",
    "NodeState",
    "NodeStats",
    "NotFoundError",
    "PerformanceReport",
    "Priority",
    "RedisStore",
    "ScalingAdvice",
    "StaleLeaseError",
    "StoreError",
    "StoreUnavailableError",
    "Subscription",
    "Task",
    "TaskNotFoundError",
    "TaskSpec",
    "TaskStatus",
    "ValidationError",
    "WaitTimeoutError",
    "WorkerInfo",
    "WorkerNotFoundError",
    "WorkerSpec",
]
