"""One fedcoord node: a durable, fast local task manager.

async with LocalNode.open(node_id="n1") as node:
    ids = await node.submit([TaskSpec("resize", payload=b"...")])
    await node.register_worker(WorkerSpec("w1", skill=5))
    for lease in await node.claim("w1", max_tasks=10):
        await node.complete(lease, result=b"done")

The names below are imported on first use (PEP 562): ``import node.core`` (the pure scheduling
core, which the simulator runs alone) loads no I/O library, runtime or store.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# Set before anything imports grpc (its core reads both once, at import; the environment wins):
# - fork support off. With it on, gRPC's fork handlers run in every child forked while a gRPC
#   server of ours runs, and now and then abort it (SIGABRT) between fork and exec: Ray's head
#   (``simulate --engine flower``, started by ``Popen(preexec_fn=...)`` beside the nodes' server)
#   then lost its GCS or raylet and timed out after 30 s (docs/notes/simulation.md). Every child we or
#   Ray start execs a program: none uses gRPC across a bare fork, so the handlers buy nothing.
# - core log level ERROR: no INFO line per fork or per connection.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

if TYPE_CHECKING:
    from node.admission import Admission, AdmissionConfig, FederationView
    from node.analytics import FixedBins, NodeStats, PerformanceReport, WindowSummary
    from node.core import CoreConfig, HeartbeatReply, Load, ScalingAdvice, WorkerHealth, WorkerInfo
    from node.errors import (
        EmbeddedRedisError,
        FedcoordError,
        FencedError,
        InvalidTransitionError,
        NodeClosedError,
        NodeOwnedError,
        NotFoundError,
        OverloadedError,
        StaleLeaseError,
        StoreError,
        StoreUnavailableError,
        TaskNotFoundError,
        ValidationError,
        WaitTimeoutError,
        WorkerNotFoundError,
    )
    from node.events import Subscription
    from node.handoff import MemoryTransport
    from node.model import Event, EventKind, Lease, Limits, Priority, Task, TaskSpec, TaskStatus, WorkerSpec
    from node.runtime import LocalNode, NodeConfig, NodeState
    from node.runtime.handoff import HandoffConfig
    from node.store.memory import MemoryBackend, MemoryStore
    from node.store.redis_store import RedisStore

_WHERE = {
    "node.admission": ("Admission", "AdmissionConfig", "FederationView"),
    "node.analytics": ("FixedBins", "NodeStats", "PerformanceReport", "WindowSummary"),
    "node.core": ("CoreConfig", "HeartbeatReply", "Load", "ScalingAdvice", "WorkerHealth", "WorkerInfo"),
    "node.errors": (
        "EmbeddedRedisError",
        "FedcoordError",
        "FencedError",
        "InvalidTransitionError",
        "NodeClosedError",
        "OverloadedError",
        "NodeOwnedError",
        "NotFoundError",
        "StaleLeaseError",
        "StoreError",
        "StoreUnavailableError",
        "TaskNotFoundError",
        "ValidationError",
        "WaitTimeoutError",
        "WorkerNotFoundError",
    ),
    "node.events": ("Subscription",),
    "node.handoff": ("MemoryTransport",),
    "node.runtime.handoff": ("HandoffConfig",),
    "node.model": ("Event", "EventKind", "Lease", "Limits", "Priority", "Task", "TaskSpec", "TaskStatus", "WorkerSpec"),
    "node.runtime": ("LocalNode", "NodeConfig", "NodeState"),
    "node.store.memory": ("MemoryBackend", "MemoryStore"),
    "node.store.redis_store": ("RedisStore",),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = [
    "Admission",
    "AdmissionConfig",
    "CoreConfig",
    "EmbeddedRedisError",
    "Event",
    "EventKind",
    "FedcoordError",
    "FederationView",
    "FencedError",
    "FixedBins",
    "HandoffConfig",
    "HeartbeatReply",
    "InvalidTransitionError",
    "Lease",
    "Limits",
    "Load",
    "LocalNode",
    "MemoryBackend",
    "MemoryStore",
    "MemoryTransport",
    "NodeClosedError",
    "NodeConfig",
    "NodeOwnedError",
    "NodeState",
    "NodeStats",
    "NotFoundError",
    "OverloadedError",
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
    "WindowSummary",
    "WorkerHealth",
    "WorkerInfo",
    "WorkerNotFoundError",
    "WorkerSpec",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'node' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
