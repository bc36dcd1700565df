"""Worker registry state, the seed's assignment score, and the autoscaling advice."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from node.core.load import load_ratio
from node.model import Priority, Task

if TYPE_CHECKING:
    from node.core.queues import TaskClass

__all__ = [
    "PRIORITY_BOOST",
    "ScalingAdvice",
    "WorkerHealth",
    "WorkerInfo",
    "WorkerState",
    "scaling_advice",
    "score",
]

# Seed 000: capability match +50, priority boost, load penalty 5 per task held,
# success rate * 20, speed bonus 10 / max(avg time, 0.1) for quick tasks.
CAPABILITY_MATCH = 50.0
PRIORITY_BOOST = {Priority.CRITICAL: 40.0, Priority.HIGH: 25.0, Priority.MEDIUM: 10.0, Priority.LOW: 5.0}
LOAD_PENALTY = 5.0
SUCCESS_WEIGHT = 20.0
SPEED_WEIGHT = 10.0
GENERAL = "general"


class WorkerHealth(StrEnum):
    HEALTHY = "healthy"  # heard from within the heartbeat timeout; its slots count
    UNKNOWN = "unknown"  # loaded at recovery, not heard from since: its slots do not count yet
    UNHEALTHY = "unhealthy"  # missed its heartbeats: its leases went back in line


@dataclass(slots=True, eq=False)
class WorkerState:
    id: str
    capabilities: frozenset[str]
    skill: int
    concurrency: int
    registered_ns: int
    last_seen_ns: int
    # healthy, or not: then unhealthy since ``unhealthy_since_ns``, or of unknown health when
    # that is None (loaded at recovery and not heard from since; see ``health``).
    healthy: bool = True
    completed: int = 0
    failed: int = 0
    timed_out: int = 0
    success_rate: float = 1.0  # EMA, alpha from the config
    avg_completion_s: float = 0.0  # EMA
    busy_s: float = 0.0  # total time spent on tasks (for utilization)
    unhealthy_since_ns: int | None = None
    # Not persisted: derived or transient.
    active: set[str] = field(default_factory=set)  # task ids leased to this worker
    revoked: list[tuple[str, int]] = field(default_factory=list)  # (task id, attempt) to stop, told on heartbeat
    eligible: list[TaskClass] = field(default_factory=list)

    @property
    def health(self) -> WorkerHealth:
        if self.healthy:
            return WorkerHealth.HEALTHY
        return WorkerHealth.UNKNOWN if self.unhealthy_since_ns is None else WorkerHealth.UNHEALTHY

    def can_take(self, cls: TaskClass, strict: bool) -> bool:
        return cls.capabilities <= self.capabilities and (not strict or cls.difficulty <= self.skill)

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            id=self.id,
            capabilities=tuple(sorted(self.capabilities)),
            skill=self.skill,
            concurrency=self.concurrency,
            healthy=self.healthy,
            health=self.health.value,
            active=len(self.active),
            completed=self.completed,
            failed=self.failed,
            timed_out=self.timed_out,
            success_rate=self.success_rate,
            avg_completion_s=self.avg_completion_s,
            busy_s=self.busy_s,
            registered_ns=self.registered_ns,
            last_seen_ns=self.last_seen_ns,
        )


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A read-only snapshot of a worker, for callers."""

    id: str
    capabilities: tuple[str, ...]
    skill: int
    concurrency: int
    healthy: bool
    health: str  # "healthy", "unknown" (loaded at recovery, not heard from yet) or "unhealthy"
    active: int
    completed: int
    failed: int
    timed_out: int
    success_rate: float
    avg_completion_s: float
    busy_s: float
    registered_ns: int
    last_seen_ns: int


def score(worker: WorkerState, task: Task, fast_difficulty: int) -> float:
    """How well ``worker`` suits ``task`` (seed 000's assignment score); higher is better. The
    core's dispatch of new work to waiting claims uses this function (and nothing else)."""
    s = PRIORITY_BOOST[task.priority] - LOAD_PENALTY * len(worker.active) + SUCCESS_WEIGHT * worker.success_rate
    caps = worker.capabilities
    if task.type in caps or GENERAL in caps:
        s += CAPABILITY_MATCH
    if task.difficulty <= fast_difficulty:
        s += SPEED_WEIGHT / max(worker.avg_completion_s, 0.1)
    return s


@dataclass(frozen=True, slots=True)
class ScalingAdvice:
    """Seed 001's worker scaling rule made explicit: aim at ``target_load``; add workers above it,
    remove idle ones under half of it."""

    load: float  # (leased + ready) / healthy worker slots; with no slot, leased + ready itself
    target_load: float
    workers: int  # healthy workers now
    recommended_workers: int
    action: str  # "scale_up" | "scale_down" | "hold"

    @property
    def delta(self) -> int:
        return self.recommended_workers - self.workers


def scaling_advice(demand: int, workers: int, slots: int, target_load: float) -> ScalingAdvice:
    """``demand`` = leased + ready tasks; ``slots`` = concurrency summed over healthy workers."""
    if slots == 0:
        load = load_ratio(demand, slots)
        rec = 1 if demand else 0
    else:
        load = demand / slots
        per_worker = slots / workers
        rec = max(1, math.ceil(demand / (per_worker * target_load))) if demand else (1 if workers else 0)
    if load > target_load:
        action = "scale_up"
        rec = max(rec, workers + 1)
    elif load < target_load * 0.5 and workers > 1:
        action = "scale_down"
        rec = min(max(rec, 1), workers - 1)
    else:
        action = "hold"
        rec = workers
    return ScalingAdvice(load=load, target_load=target_load, workers=workers, recommended_workers=rec, action=action)
