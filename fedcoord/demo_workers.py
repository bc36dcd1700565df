"""Simulated workers for the demo: in-process asyncio loops that use the node's worker API.

Each worker registers, then claims up to its free slots (``claim(..., wait_s=...)``), reports
start, "works" for ``difficulty * speed`` seconds (with jitter) and completes or fails the lease
the way seed 001's workers do: success iff ``skill >= difficulty``, plus a small rate of
transient errors. A separate loop heartbeats and drops leases the node revoked.

Roles add the faults the node must handle: a *flaky* worker sometimes runs past the task
timeout (the node times the attempt out and retries it elsewhere; the late completion is
refused), and a *crashing* worker stops dead mid-run, holding leases (the node notices the
missed heartbeats and gives its tasks to others).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from node import (
    FedcoordError,
    Lease,
    LocalNode,
    NodeClosedError,
    StaleLeaseError,
    StoreUnavailableError,
    WorkerSpec,
)

__all__ = ["DEFAULT_ROSTER", "POISON", "Behavior", "Role", "SimWorker", "WorkerCounters", "WorkerPlan"]

log = logging.getLogger("fedcoord.demo.worker")

POISON = "poison"  # a task whose context has {"fault": POISON} always fails


class Role(StrEnum):
    STEADY = "steady"
    FLAKY = "flaky"  # sometimes runs past the task timeout
    CRASHES = "crashes"  # stops dead mid-run, without a word


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    id: str
    skill: int
    concurrency: int
    capabilities: tuple[str, ...] = ()
    role: Role = Role.STEADY


DEFAULT_ROSTER: tuple[WorkerPlan, ...] = (
    WorkerPlan("w-novice", skill=3, concurrency=1),
    WorkerPlan("w-junior", skill=5, concurrency=2),
    WorkerPlan("w-flaky", skill=6, concurrency=2, role=Role.FLAKY),
    WorkerPlan("w-senior", skill=8, concurrency=2, role=Role.CRASHES),
    WorkerPlan("w-gpu", skill=9, concurrency=2, capabilities=("gpu",)),
    WorkerPlan("w-expert", skill=10, concurrency=3),
)


@dataclass(frozen=True, slots=True)
class Behavior:
    speed: float  # seconds of simulated work per difficulty unit
    error_rate: float  # chance of a transient error per attempt
    hang_rate: float  # flaky workers: chance to run past the timeout
    heartbeat_s: float  # heartbeat interval
    claim_wait_s: float = 0.5


@dataclass(slots=True)
class WorkerCounters:
    """What a worker saw from its side (the node keeps its own statistics)."""

    attempts: int = 0
    succeeded: int = 0
    reported_failed: int = 0
    hung: int = 0  # attempts that ran past the timeout on purpose (flaky)
    revoked: int = 0  # attempts dropped because the node revoked the lease (heartbeat reply)
    refused: int = 0  # late reports the node refused (stale lease: fencing works)
    crashed: bool = False


@dataclass(slots=True)
class _Running:
    lease: Lease
    task: asyncio.Task[None]
    revoked: bool = False


@dataclass(slots=True)
class SimWorker:
    node: LocalNode
    plan: WorkerPlan
    behavior: Behavior
    rng: random.Random
    crash_when: Callable[[], bool] | None = None  # for Role.CRASHES: crash once this says so
    counters: WorkerCounters = field(default_factory=WorkerCounters)
    _running: dict[tuple[str, int], _Running] = field(default_factory=dict)
    _loops: list[asyncio.Task[None]] = field(default_factory=list)
    _slot_free: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def id(self) -> str:
        return self.plan.id

    @property
    def label(self) -> str:
        if self.counters.crashed:
            return "crashed"
        return self.plan.role.value

    async def register(self) -> None:
        p = self.plan
        await self.node.register_worker(WorkerSpec(p.id, p.capabilities, p.skill, p.concurrency))

    def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._claim_loop(), name=f"demo-claim-{self.id}"),
            asyncio.create_task(self._heartbeat_loop(), name=f"demo-heartbeat-{self.id}"),
        ]

    async def stop(self) -> None:
        """Stop claiming, heartbeating and working (unfinished attempts are simply dropped)."""
        tasks = [*self._loops, *(r.task for r in self._running.values())]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loops = []
        self._running.clear()

    def crash(self) -> None:
        """Die on the spot: no more claims, heartbeats or reports; leases stay with the node."""
        self.counters.crashed = True
        log.info("worker %s crashes holding %d leases", self.id, len(self._running))
        current = asyncio.current_task()
        for t in [*self._loops, *(r.task for r in self._running.values())]:
            if t is not current:
                t.cancel()

    # ------------------------------------------------------------------ loops

    async def _claim_loop(self) -> None:
        node = self.node
        while True:
            free = self.plan.concurrency - len(self._running)
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            try:
                leases = await node.claim(self.id, max_tasks=free, wait_s=self.behavior.claim_wait_s)
            except NodeClosedError:
                return
            except StoreUnavailableError:
                await asyncio.sleep(0.2)  # the node reloads from the store on its own
                continue
            for lease in leases:
                key = (lease.task_id, lease.attempt)
                task = asyncio.create_task(self._execute(lease), name=f"demo-run-{self.id}-{lease.task_id}")
                self._running[key] = _Running(lease, task)
            if leases and self.crash_when is not None and self.crash_when():
                await asyncio.sleep(0.05)  # long enough for the attempts to report start
                self.crash()
                return

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.behavior.heartbeat_s)
            try:
                reply = await self.node.heartbeat(self.id)
            except NodeClosedError:
                return
            except FedcoordError as e:
                log.debug("worker %s: heartbeat failed: %s", self.id, e)
                continue
            for key in reply.revoked:
                run = self._running.get(key)
                if run is not None and not run.task.done():
                    run.revoked = True
                    run.task.cancel()

    # ------------------------------------------------------------------ one attempt

    async def _execute(self, lease: Lease) -> None:
        key = (lease.task_id, lease.attempt)
        try:
            await self._attempt(lease)
        except asyncio.CancelledError:
            run = self._running.get(key)
            if run is not None and run.revoked:
                self.counters.revoked += 1
                return  # the node took the lease back; stop quietly
            raise
        except StaleLeaseError:
            self.counters.refused += 1  # reported after the lease was gone: refused, never applied twice
        except (NodeClosedError, StoreUnavailableError) as e:
            log.debug("worker %s: could not report %s: %s", self.id, lease.task_id, e)
        except FedcoordError as e:
            log.warning("worker %s: task %s: %s", self.id, lease.task_id, e)
        finally:
            self._running.pop(key, None)
            self._slot_free.set()

    async def _attempt(self, lease: Lease) -> None:
        node, b, rng = self.node, self.behavior, self.rng
        self.counters.attempts += 1
        await node.start_task(lease)
        duration = lease.difficulty * b.speed * rng.uniform(0.7, 1.3)
        if self.plan.role is Role.FLAKY and rng.random() < b.hang_rate:
            self.counters.hung += 1
            duration = lease.timeout_s * 1.2 + 0.2  # stuck past the deadline
        await asyncio.sleep(duration)
        error = None
        if self.plan.skill < lease.difficulty:  # seed 001: success iff skill >= difficulty
            error = f"skill {self.plan.skill} < difficulty {lease.difficulty}"
        elif lease.context.get("fault") == POISON:
            error = "ValueError: malformed payload"
        elif rng.random() < b.error_rate:
            error = "transient: upstream unavailable (503)"
        if error is None:
            await node.complete(lease, result=f"done by {self.id}".encode())
            self.counters.succeeded += 1
        else:
            await node.fail(lease, error)
            self.counters.reported_failed += 1
