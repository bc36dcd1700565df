"""The demo's workload: a reproducible plan of mixed tasks, arriving in bursts.

Pure: everything comes from the ``random.Random`` passed in. The plan holds what the demo
submits and when; dependencies refer to earlier planned tasks by index (the demo turns them into
the ids the node returned), so parents are always submitted before their dependents.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from node import Priority

__all__ = ["TASK_TYPES", "Batch", "PlannedTask", "WorkloadPlan", "plan_workload"]

# Task type -> (lowest, highest) difficulty, and how often it occurs (seed 000's agent tasks).
TASK_TYPES: Mapping[str, tuple[int, int, float]] = {
    "simple_qa": (1, 3, 0.25),
    "quick_analysis": (2, 4, 0.20),
    "analysis": (3, 7, 0.25),
    "coding": (4, 9, 0.18),
    "reasoning": (6, 10, 0.12),
}
GPU_TYPES = frozenset({"analysis", "coding", "reasoning"})
PRIORITY_WEIGHTS: Mapping[Priority, float] = {
    Priority.CRITICAL: 0.10,
    Priority.HIGH: 0.25,
    Priority.MEDIUM: 0.40,
    Priority.LOW: 0.25,
}

GPU_SHARE = 0.15  # of GPU-capable types
DEPENDENT_SHARE = 0.20  # tasks that depend on 1-3 earlier ones
DELAYED_SHARE = 0.06
KEYED_SHARE = 0.08  # tasks with an idempotency key ...
DUPLICATE_SHARE = 0.5  # ... of which this many are submitted again with the next batch
POISON_SHARE = 0.015  # always fail: retried, then dead-lettered (and their dependents fail)
CANCEL_SHARE = 0.02  # cancelled by the demo shortly after they are submitted
BATCHES = 12
_K = TypeVar("_K")


@dataclass(frozen=True, slots=True)
class PlannedTask:
    index: int
    type: str
    priority: Priority
    difficulty: int
    capabilities: tuple[str, ...]
    parents: tuple[int, ...]  # indexes of earlier planned tasks
    delay_s: float
    idempotency_key: str | None
    max_retries: int
    poison: bool
    cancel: bool


@dataclass(frozen=True, slots=True)
class Batch:
    at_s: float  # when to submit it, seconds after the start
    tasks: tuple[PlannedTask, ...]
    duplicates: tuple[int, ...]  # earlier keyed tasks submitted again (same key: same id expected)


@dataclass(frozen=True, slots=True)
class WorkloadPlan:
    batches: tuple[Batch, ...]
    tasks: tuple[PlannedTask, ...]

    @property
    def total_work(self) -> int:
        """Summed difficulty: the work in difficulty units (one attempt each)."""
        return sum(t.difficulty for t in self.tasks)


def _weighted(rng: random.Random, weights: Mapping[_K, float]) -> _K:
    keys = list(weights)
    return rng.choices(keys, weights=[weights[k] for k in keys])[0]


def plan_workload(
    rng: random.Random,
    n_tasks: int,
    *,
    max_skill: int,
    max_skill_by_capability: Mapping[str, int],
    window_s: float,
    key_prefix: str,
) -> WorkloadPlan:
    """Plan ``n_tasks`` tasks in bursts spread over ``window_s`` seconds.

    Difficulties are capped so that some worker can take every task under strict matching:
    at ``max_skill`` overall, and at ``max_skill_by_capability[cap]`` for tasks requiring ``cap``.
    Idempotency keys start with ``key_prefix`` (make it unique per run: a key used by an earlier
    run against the same Redis would return that run's task).
    """
    types = {name: w for name, (_, _, w) in TASK_TYPES.items()}
    sizes = _batch_sizes(rng, n_tasks)
    tasks: list[PlannedTask] = []
    batches: list[Batch] = []
    keyed: list[int] = []
    prev_start = 0
    for b, size in enumerate(sizes):
        first_of_batch = len(tasks)
        for _ in range(size):
            i = len(tasks)
            ttype = _weighted(rng, types)
            lo, hi, _ = TASK_TYPES[ttype]
            difficulty = rng.randint(lo, hi)
            caps: tuple[str, ...] = ()
            if ttype in GPU_TYPES and "gpu" in max_skill_by_capability and rng.random() < GPU_SHARE:
                caps = ("gpu",)
                difficulty = min(difficulty, max_skill_by_capability["gpu"])
            difficulty = max(1, min(difficulty, max_skill))
            parents: tuple[int, ...] = ()
            if first_of_batch > 0 and rng.random() < DEPENDENT_SHARE:
                pool = range(max(0, first_of_batch - 60), first_of_batch)  # recent tasks: chains and DAGs
                parents = tuple(sorted(rng.sample(pool, k=min(len(pool), rng.randint(1, 3)))))
            key = None
            if rng.random() < KEYED_SHARE:
                key = f"{key_prefix}-{i}"
                keyed.append(i)
            poison = rng.random() < POISON_SHARE
            tasks.append(
                PlannedTask(
                    index=i,
                    type=ttype,
                    priority=_weighted(rng, PRIORITY_WEIGHTS),
                    difficulty=difficulty,
                    capabilities=caps,
                    parents=parents,
                    delay_s=round(rng.uniform(0.5, 3.0), 2) if rng.random() < DELAYED_SHARE else 0.0,
                    idempotency_key=key,
                    max_retries=2 if poison else 3,
                    poison=poison,
                    cancel=rng.random() < CANCEL_SHARE,
                )
            )
        dups = tuple(k for k in keyed if prev_start <= k < first_of_batch and rng.random() < DUPLICATE_SHARE)
        prev_start = first_of_batch
        at = 0.0 if b == 0 else round(window_s * b / max(1, len(sizes) - 1), 3)
        batches.append(Batch(at_s=at, tasks=tuple(tasks[first_of_batch:]), duplicates=dups))
    return WorkloadPlan(batches=tuple(batches), tasks=tuple(tasks))


def _batch_sizes(rng: random.Random, n_tasks: int) -> Sequence[int]:
    """Bursty batch sizes summing to ``n_tasks``: a big first burst, then uneven waves."""
    n = max(1, min(BATCHES, n_tasks))
    weights = [rng.expovariate(1.0) + 0.2 for _ in range(n)]
    weights[0] = max(weights) * 1.5
    total = sum(weights)
    sizes = [int(n_tasks * w / total) for w in weights]
    for i in range(n_tasks - sum(sizes)):
        sizes[i % n] += 1
    return sizes
