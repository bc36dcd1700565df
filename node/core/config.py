"""Settings of the scheduling core. Pure data; every duration is in seconds."""

from __future__ import annotations

from dataclasses import dataclass, field

from node.model import Limits

__all__ = ["CoreConfig"]


@dataclass(frozen=True, slots=True)
class CoreConfig:
    node_id: str = "node"
    limits: Limits = field(default_factory=Limits)
    # A ready task's place in line is queued time + rank * aging_s: a LOW task that has waited
    # 3 * aging_s longer than a newly queued CRITICAL one goes first, so nothing starves.
    aging_s: float = 60.0
    # A worker that has not been heard from (heartbeat, claim, complete...) for this long is
    # unhealthy; its leases are released to other workers.
    heartbeat_timeout_s: float = 15.0
    # An unhealthy worker is forgotten after this long.
    worker_expiry_s: float = 3600.0
    # Retry delay after the n-th failure: d = min(base * 2**(n-1), max), then uniform in [d/2, d].
    backoff_base_s: float = 1.0
    backoff_max_s: float = 300.0
    # Strict matching: a worker takes a task only if skill >= difficulty.
    strict_matching: bool = True
    # Tasks at or under this difficulty get the seed's speed bonus when scoring workers.
    fast_difficulty: int = 3
    # Smoothing of worker success rate and completion time (exponential moving averages).
    ema_alpha: float = 0.1
    # Load the autoscaling advice aims at.
    target_load: float = 0.7
    # How many idempotency keys of finished tasks the core remembers (the store holds the rest).
    recent_keys: int = 65536
    # Keep the transitions of this many recent tasks for Core.story(task_id); 0: off (the core
    # then builds events only while somebody listens).
    story_tasks: int = 0
    # Hand-off: a task moves between nodes at most this many times.
    max_hops: int = 2
