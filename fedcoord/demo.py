"""``fedcoord demo``: one node on a real Redis, a mixed workload, simulated workers, a live view
and seed 001's final performance report.

:func:`run_demo` is library code: it returns a :class:`DemoResult` (``ok`` says whether every
task finished) and never exits the process; the CLI turns the result into an exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shutil
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcoord.demo_view import DemoView, Header, Snapshot
from fedcoord.demo_workers import DEFAULT_ROSTER, POISON, Behavior, Role, SimWorker, WorkerCounters, WorkerPlan
from fedcoord.demo_workload import PlannedTask, WorkloadPlan, plan_workload
from node import (
    CoreConfig,
    InvalidTransitionError,
    LocalNode,
    NodeClosedError,
    NodeConfig,
    NodeStats,
    PerformanceReport,
    StoreUnavailableError,
    Task,
    TaskNotFoundError,
    TaskSpec,
    ValidationError,
)

__all__ = ["DEFAULT_SPEED", "DEFAULT_TASKS", "DemoOptions", "DemoResult", "run_demo", "task_timeout_s"]

log = logging.getLogger("fedcoord.demo")

DEFAULT_TASKS = 400
DEFAULT_SPEED = 0.05
HEARTBEAT_S = 0.2  # workers heartbeat this often ...
HEARTBEAT_TIMEOUT_S = 1.0  # ... and are declared lost (their leases released) after this much silence
TIMEOUT_FLOOR_S = 1.5  # task timeouts never go below this (above the heartbeat timeout, see task_timeout_s)
ERROR_RATE = 0.04
HANG_RATE = 0.12
CRASH_AT = 0.3  # the crashing worker dies once this share of the tasks has finished
THROUGHPUT_WINDOW_S = 5.0
SUBMIT_ATTEMPTS = 5


def task_timeout_s(difficulty: int, speed: float) -> float:
    """Seed 001's timeout (2 x difficulty seconds) on the demo's time scale, with a floor.

    The floor keeps the timeout above event-loop jitter and above the heartbeat timeout, so a
    crashed worker's leases are released by the missed heartbeats (not by the task timeout).
    """
    return max(2.0 * difficulty * speed, TIMEOUT_FLOOR_S)


@dataclass(frozen=True, slots=True)
class DemoOptions:
    tasks: int = DEFAULT_TASKS
    speed: float = DEFAULT_SPEED
    seed: int | None = None  # None: a random one (reported, so a run can be repeated)
    node_id: str = "demo"
    redis_url: str | None = None  # None: the embedded redis-server in data_dir
    data_dir: Path | None = None  # None: a fresh temporary directory
    keep: bool = False  # keep the temporary directory
    deadline_s: float | None = None  # None: generous, from the workload size and speed
    roster: tuple[WorkerPlan, ...] = DEFAULT_ROSTER


@dataclass(slots=True)
class DemoResult:
    seed: int
    node_id: str
    store: str
    data_location: str
    duration_s: float
    submitted_unique: int
    duplicate_submits: int
    dedup_hits: int
    cancel_requests: int
    cancel_too_late: int
    submit_retries: int
    preexisting_tasks: int
    outcome: dict[str, int]  # final status -> count, over this run's tasks
    unfinished: list[str]  # descriptions of tasks still unfinished at the deadline
    problems: list[str]
    report: PerformanceReport
    stats: NodeStats  # the node's (cumulative over every run on this data: see run_totals)
    run_totals: dict[str, int]  # stats.totals counted since this run began
    workers: dict[str, WorkerCounters]
    roles: dict[str, str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        stats = self.stats
        return {
            "ok": self.ok,
            "problems": self.problems,
            "report": self.report.to_dict(),
            "demo": {
                "seed": self.seed,
                "node_id": self.node_id,
                "store": self.store,
                "data_location": self.data_location,
                "duration_s": self.duration_s,
                "submitted_unique": self.submitted_unique,
                "duplicate_submits": self.duplicate_submits,
                "dedup_hits": self.dedup_hits,
                "cancel_requests": self.cancel_requests,
                "cancel_too_late": self.cancel_too_late,
                "submit_retries": self.submit_retries,
                "preexisting_tasks": self.preexisting_tasks,
                "outcome": self.outcome,
                "run_totals": self.run_totals,
                "unfinished": self.unfinished,
                "roles": self.roles,
                "workers": {wid: _counters_dict(c) for wid, c in self.workers.items()},
            },
            "stats": {
                "totals": stats.totals,
                "totals_by_type": stats.totals_by_type,
                "completion_s": stats.completion_s,
                "queue_wait_s": stats.queue_wait_s,
                "failures_by_kind": stats.failures_by_kind,
                "scaling": {
                    "load": stats.scaling.load,
                    "target_load": stats.scaling.target_load,
                    "workers": stats.scaling.workers,
                    "recommended_workers": stats.scaling.recommended_workers,
                    "action": stats.scaling.action,
                },
            },
        }


def _counters_dict(c: WorkerCounters) -> dict[str, Any]:
    return {
        "attempts": c.attempts,
        "succeeded": c.succeeded,
        "reported_failed": c.reported_failed,
        "hung": c.hung,
        "revoked": c.revoked,
        "refused": c.refused,
        "crashed": c.crashed,
    }


async def run_demo(options: DemoOptions, view: DemoView) -> DemoResult:
    """Run the demo to the end (or the deadline) and return what happened."""
    seed = options.seed if options.seed is not None else int.from_bytes(os.urandom(4), "big")
    config = NodeConfig(
        core=CoreConfig(heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S, backoff_base_s=0.5, backoff_max_s=4.0),
        seed=seed,
    )
    tmp: Path | None = None
    data_dir = options.data_dir
    if options.redis_url is None and data_dir is None:
        tmp = data_dir = Path(tempfile.mkdtemp(prefix="fedcoord-demo-"))
    if options.redis_url is not None:
        location = f"Redis at {options.redis_url} (keys fc:{options.node_id}:*)"
    else:
        note = " (temporary: removed at the end; --keep keeps it)" if tmp is not None and not options.keep else ""
        location = f"{data_dir}{note}"
    try:
        async with LocalNode.open(options.node_id, options.redis_url, data_dir, config=config) as node:
            return await _Demo(node, options, seed, view, location).run()
    finally:
        if tmp is not None and not options.keep:
            shutil.rmtree(tmp, ignore_errors=True)


@dataclass(slots=True)
class _Tracker:
    """This run's tasks and how they ended (``node.wait`` per task)."""

    node: LocalNode
    ids: dict[str, int] = field(default_factory=dict)  # task id -> plan index
    final: dict[str, Task] = field(default_factory=dict)
    finish_times: deque[float] = field(default_factory=deque)
    all_submitted: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _waiters: list[asyncio.Task[None]] = field(default_factory=list)

    def add(self, task_id: str, index: int) -> None:
        if task_id in self.ids:
            return
        self.ids[task_id] = index
        self._waiters.append(asyncio.create_task(self._wait(task_id), name=f"demo-wait-{task_id}"))

    def submitted_all(self) -> None:
        self.all_submitted = True
        self._check()

    async def _wait(self, task_id: str) -> None:
        while True:
            try:
                t = await self.node.wait(task_id)
                break
            except StoreUnavailableError:
                await asyncio.sleep(0.5)  # the node reloads from the store on its own
            except NodeClosedError:
                return
        self.final[task_id] = t
        self.finish_times.append(time.monotonic())
        self._check()

    def _check(self) -> None:
        if self.all_submitted and len(self.final) == len(self.ids):
            self.done.set()

    def recent_rate(self, now: float, elapsed: float) -> float:
        times = self.finish_times
        while times and times[0] < now - THROUGHPUT_WINDOW_S:
            times.popleft()
        return len(times) / max(min(THROUGHPUT_WINDOW_S, elapsed), 1e-3)

    def outcome(self) -> dict[str, int]:
        return dict(Counter(t.status.value for t in self.final.values()))

    async def stop(self) -> None:
        for w in self._waiters:
            w.cancel()
        await asyncio.gather(*self._waiters, return_exceptions=True)


class _Demo:
    def __init__(self, node: LocalNode, options: DemoOptions, seed: int, view: DemoView, location: str):
        self.node = node
        self.opts = options
        self.seed = seed
        self.view = view
        self.location = location
        self.rng = random.Random(seed)
        self.tracker = _Tracker(node)
        self.id_of: dict[int, str] = {}
        self.duplicate_submits = 0
        self.dedup_hits = 0
        self.base_totals: dict[str, int] = {}
        self.cancel_requests = 0
        self.cancel_too_late = 0
        self.submit_retries = 0
        self.problems: list[str] = []
        self.started = time.monotonic()
        self._side: list[asyncio.Task[None]] = []
        behavior = Behavior(speed=options.speed, error_rate=ERROR_RATE, hang_rate=HANG_RATE, heartbeat_s=HEARTBEAT_S)
        self.workers = [
            SimWorker(
                node,
                p,
                behavior,
                random.Random(self.rng.getrandbits(64)),
                crash_when=self._crash_time if p.role is Role.CRASHES else None,
            )
            for p in options.roster
        ]

    # ------------------------------------------------------------------ the run

    async def run(self) -> DemoResult:
        node, opts = self.node, self.opts
        stable = [p for p in opts.roster if p.role is not Role.CRASHES]
        by_cap: dict[str, int] = {}
        for p in stable:
            for cap in p.capabilities:
                by_cap[cap] = max(by_cap.get(cap, 0), p.skill)
        slots = sum(p.concurrency for p in stable)
        est_drain_s = opts.tasks * 5.0 * opts.speed / max(slots, 1)
        plan = plan_workload(
            self.rng,
            opts.tasks,
            max_skill=max(p.skill for p in stable),
            max_skill_by_capability=by_cap,
            window_s=min(max(0.4 * est_drain_s, 1.0), 8.0),
            key_prefix=f"demo-{os.urandom(4).hex()}",
        )
        deadline_s = opts.deadline_s or max(60.0, plan.batches[-1].at_s + 5 * est_drain_s + 30.0)
        pre = await node.stats()
        self.base_totals = dict(pre.totals)  # the node's counters are lifetime ones: show this run's
        preexisting = sum(pre.active_by_status.values())
        if preexisting:
            log.warning("node %s: %d active tasks from an earlier run are worked on too", node.node_id, preexisting)
        for w in self.workers:
            await w.register()
        self.view.start(
            Header(
                node_id=node.node_id,
                store=node.store.description,
                data_location=self.location,
                seed=self.seed,
                speed=opts.speed,
                tasks=opts.tasks,
                roster=opts.roster,
                heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
                deadline_s=deadline_s,
                preexisting_tasks=preexisting,
            )
        )
        monitor = asyncio.create_task(self._monitor(), name="demo-monitor") if self.view.interval_s else None
        try:
            for w in self.workers:
                w.start()
            await self._submit(plan)
            remaining = deadline_s - (time.monotonic() - self.started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.tracker.done.wait(), max(remaining, 0.0))
            unfinished = await self._unfinished(deadline_s) if not self.tracker.done.is_set() else []
        finally:
            await asyncio.gather(*(w.stop() for w in self.workers))
            for t in self._side:
                t.cancel()
            await asyncio.gather(*self._side, return_exceptions=True)
            if monitor is not None:
                monitor.cancel()
                await asyncio.gather(monitor, return_exceptions=True)
            await self.tracker.stop()
        report = await node.report()
        stats = await node.stats()
        self.view.update(self._snapshot(stats))
        self.view.stop()
        outcome = self.tracker.outcome()
        if not unfinished and not preexisting:
            self._check_report(report, outcome)
        return DemoResult(
            seed=self.seed,
            node_id=node.node_id,
            store=node.store.description,
            data_location=self.location,
            duration_s=time.monotonic() - self.started,
            submitted_unique=len(self.tracker.ids),
            duplicate_submits=self.duplicate_submits,
            dedup_hits=self.dedup_hits,
            cancel_requests=self.cancel_requests,
            cancel_too_late=self.cancel_too_late,
            submit_retries=self.submit_retries,
            preexisting_tasks=preexisting,
            outcome=outcome,
            unfinished=unfinished,
            problems=self.problems,
            report=report,
            stats=stats,
            run_totals=self._run_totals(stats),
            workers={w.id: w.counters for w in self.workers},
            roles={w.id: w.label for w in self.workers},
        )

    def _crash_time(self) -> bool:
        return len(self.tracker.final) >= CRASH_AT * self.opts.tasks

    # ------------------------------------------------------------------ submitting

    async def _submit(self, plan: WorkloadPlan) -> None:
        for batch in plan.batches:
            delay = batch.at_s - (time.monotonic() - self.started)
            if delay > 0:
                await asyncio.sleep(delay)
            dups = [plan.tasks[i] for i in batch.duplicates]
            specs = [self._spec(t) for t in (*batch.tasks, *dups)]
            ids = await self._submit_batch(specs)
            for t, tid in zip(batch.tasks, ids, strict=False):
                self.id_of[t.index] = tid
                self.tracker.add(tid, t.index)
                if t.cancel:
                    later = self.rng.uniform(0.0, 0.3)
                    self._side.append(asyncio.create_task(self._cancel_later(tid, later), name=f"demo-cancel-{tid}"))
            for t, tid in zip(dups, ids[len(batch.tasks) :], strict=True):
                self.duplicate_submits += 1
                if tid == self.id_of[t.index]:
                    self.dedup_hits += 1
                else:
                    self.problems.append(
                        f"idempotency key {t.idempotency_key} submitted again got a new id {tid} "
                        f"instead of {self.id_of[t.index]}"
                    )
                    self.tracker.add(tid, t.index)
        self.tracker.submitted_all()

    async def _submit_batch(self, specs: list[TaskSpec]) -> list[str]:
        """``node.submit``, retried when a dependency finished while the node looked up the rest.

        Works around a race in ``LocalNode.submit``: it decides which dependencies to look up in
        the store before awaiting the look-ups, so a dependency that finishes during those awaits
        is found nowhere and the batch is refused ("unknown task id"). Nothing was added then (a
        submit is all or nothing), so submitting again is safe and finds it among finished tasks.
        """
        for attempt in range(1, SUBMIT_ATTEMPTS + 1):
            try:
                return await self.node.submit(specs)
            except ValidationError as e:
                if (
                    e.field != "dependencies"
                    or not e.detail.startswith("unknown task id")
                    or attempt == SUBMIT_ATTEMPTS
                ):
                    raise
                self.submit_retries += 1
                log.info("submit refused (%s); a dependency finished meanwhile, submitting again", e)
        raise AssertionError("unreachable")

    def _spec(self, t: PlannedTask) -> TaskSpec:
        return TaskSpec(
            type=t.type,
            payload=f'{{"task": {t.index}}}'.encode(),
            context={"fault": POISON} if t.poison else None,
            priority=t.priority,
            difficulty=t.difficulty,
            required_capabilities=t.capabilities,
            dependencies=tuple(self.id_of[p] for p in t.parents),
            max_retries=t.max_retries,
            timeout_s=task_timeout_s(t.difficulty, self.opts.speed),
            delay_s=t.delay_s,
            idempotency_key=t.idempotency_key,
        )

    async def _cancel_later(self, task_id: str, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        self.cancel_requests += 1
        try:
            await self.node.cancel(task_id)
        except InvalidTransitionError:
            self.cancel_too_late += 1  # it finished first
        except (NodeClosedError, StoreUnavailableError) as e:
            log.debug("cancel %s: %s", task_id, e)

    # ------------------------------------------------------------------ watching

    async def _monitor(self) -> None:
        interval = self.view.interval_s or 1.0
        while True:
            await asyncio.sleep(interval)
            try:
                stats = await self.node.stats()
            except StoreUnavailableError:
                continue  # the node reloads from the store on its own
            self.view.update(self._snapshot(stats))

    def _run_totals(self, stats: NodeStats) -> dict[str, int]:
        return {k: v - self.base_totals.get(k, 0) for k, v in stats.totals.items()}

    def _snapshot(self, stats: NodeStats) -> Snapshot:
        now = time.monotonic()
        elapsed = now - self.started
        tr = self.tracker
        return Snapshot(
            elapsed_s=elapsed,
            planned=self.opts.tasks,
            submitted=len(tr.ids),
            finished=len(tr.final),
            outcome=tr.outcome(),
            throughput_recent=tr.recent_rate(now, elapsed),
            throughput_avg=len(tr.final) / max(elapsed, 1e-3),
            dedup_hits=self.dedup_hits,
            stats=stats,
            run_totals=self._run_totals(stats),
            roles={w.id: w.label for w in self.workers},
            counters={w.id: w.counters for w in self.workers},
        )

    async def _unfinished(self, deadline_s: float) -> list[str]:
        missing = [tid for tid in self.tracker.ids if tid not in self.tracker.final]
        lines: list[str] = []
        for tid in missing:
            try:
                t = await self.node.get(tid)
            except TaskNotFoundError:
                lines.append(f"{tid}: lost (the node does not know it)")
                continue
            if t.status.terminal:  # finished just now
                self.tracker.final[tid] = t
                continue
            lines.append(
                f"{tid}: {t.status.value} ({t.type}, difficulty {t.difficulty}, attempt {t.attempt}, "
                f"worker {t.assigned_worker or '-'}, last error {t.error or '-'})"
            )
        if lines:
            self.problems.append(f"{len(lines)} of {len(self.tracker.ids)} tasks unfinished after {deadline_s:.0f}s")
        return lines

    def _check_report(self, report: PerformanceReport, outcome: dict[str, int]) -> None:
        """The node's report must account for exactly this run's tasks."""
        ours = {k: outcome.get(k, 0) for k in ("completed", "failed", "cancelled")}
        theirs = {"completed": report.completed, "failed": report.failed, "cancelled": report.cancelled}
        if ours != theirs:
            self.problems.append(f"the node's report counts {theirs} but this run's tasks ended {ours}")
