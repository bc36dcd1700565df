"""The pure scheduling core: a state machine over one node's tasks and workers (no I/O)."""

from node.core.config import CoreConfig
from node.core.core import Core, HeartbeatReply
from node.core.load import Load
from node.core.outbox import Outbox
from node.core.transfer import AdoptResult, HandoffRecord, Outcome, RemoteStatus
from node.core.workers import ScalingAdvice, WorkerHealth, WorkerInfo, WorkerState

__all__ = [
    "AdoptResult",
    "Core",
    "CoreConfig",
    "HandoffRecord",
    "HeartbeatReply",
    "Load",
    "Outbox",
    "Outcome",
    "RemoteStatus",
    "ScalingAdvice",
    "WorkerHealth",
    "WorkerInfo",
    "WorkerState",
]
