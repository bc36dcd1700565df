"""Property tests of the pure scheduling core.

A hypothesis state machine drives one :class:`Core` with random commands (submits with random
priorities, difficulties, capabilities and dependencies, workers coming and going, claims,
starts, completions, failures, cancels, heartbeats, time passing, requeues, restarts from
records) and checks after every step that no task is lost or in two states, every count is
exact, stale leases change nothing, claims come in line order and pending tasks really wait.
A few plain ``@given`` properties cover validation and the backoff.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from node.core import Core, CoreConfig, WorkerState
from node.errors import StaleLeaseError, TaskNotFoundError, ValidationError, WorkerNotFoundError
from node.model import PRIORITY_ORDER, Lease, Priority, Task, TaskSpec, TaskStatus, WorkerSpec

S = 1_000_000_000
PENDING, QUEUED, ASSIGNED, RUNNING = (
    TaskStatus.PENDING,
    TaskStatus.QUEUED,
    TaskStatus.ASSIGNED,
    TaskStatus.IN_PROGRESS,
)
COMPLETED, FAILED, CANCELLED = TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED
ACTIVE = (PENDING, QUEUED, ASSIGNED, RUNNING, TaskStatus.HANDING_OFF)
LEASED = (ASSIGNED, RUNNING)
RANK = {p: i for i, p in enumerate(PRIORITY_ORDER)}

TYPES = ("x", "y", "a")  # type "a" matches capability "a" (scoring)
CAPS = ("a", "b", "general")
WORKER_IDS = ("w0", "w1", "w2", "w3")
KEYS = ("k0", "k1", "k2")
AGING_S = 5.0
CONFIG = CoreConfig(
    node_id="n",
    aging_s=AGING_S,
    heartbeat_timeout_s=15.0,
    worker_expiry_s=60.0,
    backoff_base_s=1.0,
    backoff_max_s=8.0,
)
AGING_NS = int(AGING_S * 1e9)
DT = st.sampled_from([0, 1_000_000, S // 2, 2 * S, 5 * S, 16 * S, 70 * S])


def line_key(t: Task) -> int:
    assert t.queued_ns is not None
    return t.queued_ns + RANK[t.priority] * AGING_NS


def is_ready(t: Task) -> bool:
    return t.status is QUEUED and t.queued_ns is not None


def may_take(w: WorkerState, t: Task) -> bool:
    return set(t.required_capabilities) <= w.capabilities and t.difficulty <= w.skill


def is_current(core: Core, lease: Lease) -> bool:
    t = core.tasks.get(lease.task_id)
    return t is not None and t.status in LEASED and t.attempt == lease.attempt and t.assigned_worker == lease.worker_id


def snapshot(core: Core) -> dict[str, Any]:
    """The observable state of a core (to check that a refused command changed nothing)."""
    return {
        "tasks": {
            tid: (
                t.status,
                t.attempt,
                t.failures,
                t.assigned_worker,
                t.queued_ns,
                t.not_before_ns,
                t.lease_deadline_ns,
                t.started_ns,
                t.result,
                t.error,
            )
            for tid, t in core.tasks.items()
        },
        "status": core.status_counts(),
        "priority": core.priority_counts(),
        "type": core.type_counts(),
        "workers": {
            wid: (
                w.healthy,
                sorted(w.active),
                list(w.revoked),
                w.completed,
                w.failed,
                w.timed_out,
                w.success_rate,
                w.last_seen_ns,
            )
            for wid, w in core.workers.items()
        },
        "waiting": core.waiting_workers(),
        "next_deadline": core.next_deadline_ns(),
        "out": bool(core.out),
    }


def worker_record(w: WorkerState) -> WorkerState:
    """What the store would give back for a worker: its persisted fields only."""
    return WorkerState(
        id=w.id,
        capabilities=w.capabilities,
        skill=w.skill,
        concurrency=w.concurrency,
        registered_ns=w.registered_ns,
        last_seen_ns=w.last_seen_ns,
        healthy=w.healthy,
        completed=w.completed,
        failed=w.failed,
        timed_out=w.timed_out,
        success_rate=w.success_rate,
        avg_completion_s=w.avg_completion_s,
        busy_s=w.busy_s,
        unhealthy_since_ns=w.unhealthy_since_ns,
    )


class CoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.core = Core(CONFIG, rng=random.Random(0))
        self.seed = 0
        self.now = 1_000 * S
        self.submitted: set[str] = set()
        self.done: dict[str, Task] = {}  # finished (and not requeued since): id -> final record
        self.leases: list[Lease] = []  # every lease ever handed out
        self.waits: dict[str, set[str]] = {}  # model: task id -> dependencies it still waits on
        self.waiting: dict[str, int] = {}  # model: worker id -> max tasks of its waiting claim
        self.last_key: dict[str, int] = {}  # worker id -> line key of the last task it claimed
        self.ready: set[tuple[str, int]] = set()  # (id, line key) of the tasks in line
        self.next_id = 0
        self.key_owner: dict[str, str] = {}  # idempotency key -> the id of the task that used it first
        self.stored_keys: set[str] = set()  # keys only the store remembers (used before a restart)

    @initialize(seed=st.integers(0, 2**32 - 1))
    def setup(self, seed: int) -> None:
        self.seed = seed
        self.core = Core(CONFIG, rng=random.Random(seed))
        self.run(self.core.register_worker, WorkerSpec("w0", CAPS, 10, 3), self.now)

    def _worker_id(self, data: st.DataObject) -> str:
        """Mostly a registered worker, sometimes any id (maybe unknown)."""
        known = sorted(self.core.workers)
        if known and data.draw(st.integers(0, 3)) != 0:
            return data.draw(st.sampled_from(known))
        return data.draw(st.sampled_from(WORKER_IDS))

    def _lease(self, data: st.DataObject) -> Lease:
        """Mostly a current lease, sometimes any lease ever handed out (most of those are stale)."""
        current = [lease for lease in self.leases if is_current(self.core, lease)]
        if current and data.draw(st.integers(0, 3)) != 0:
            return data.draw(st.sampled_from(current))
        return data.draw(st.sampled_from(self.leases))

    # ------------------------------------------------------------------ helpers

    def run(self, fn: Any, *args: Any, **kw: Any) -> Any:
        """Run one command, then take its outbox and check it against the model."""
        waiting_before = set(self.core.waiting_workers())
        result = fn(*args, **kw)
        self.settle(waiting_before)
        return result

    def refused(self, exc: type[Exception], fn: Any, *args: Any, **kw: Any) -> Exception:
        """The command must raise ``exc`` and change nothing."""
        before = snapshot(self.core)
        with pytest.raises(exc) as ei:
            fn(*args, **kw)
        assert snapshot(self.core) == before
        return ei.value

    def settle(self, waiting_before: set[str]) -> None:
        core = self.core
        out = core.drain()
        failed_now: set[str] = set()
        for tid, t in out.finished.items():
            assert t.id == tid
            assert t.status.terminal, t
            assert tid not in core.tasks, f"{tid} finished but still active"
            assert tid not in self.done, f"{tid} finished twice"
            self.done[tid] = t
            if t.status is not COMPLETED:
                failed_now.add(tid)
        for tid, t in out.saved.items():
            assert core.tasks.get(tid) is t, f"saved record {tid} is not the active one"
        # the last event of each task tells its current status
        last: dict[str, TaskStatus] = {}
        for e in out.event_list():
            last[e.task_id] = e.status
        for tid, st_ in last.items():
            now_status = core.tasks[tid].status if tid in core.tasks else self.done[tid].status
            assert st_ is now_status, (tid, st_, now_status)
        # grants go to claims that were waiting, within their size, to workers that may take them
        for wid, leases in out.grants.items():
            assert wid in waiting_before, f"grant to {wid}, which was not waiting"
            assert wid not in core.waiting_workers()
            assert 0 < len(leases) <= self.waiting[wid]
            w = core.workers[wid]
            for lease in leases:
                assert lease.worker_id == wid
                assert is_current(core, lease)
                assert may_take(w, core.tasks[lease.task_id])
                self.check_not_early(core.tasks[lease.task_id])
            assert len(w.active) <= w.concurrency
            self.leases.extend(leases)
        self.waiting = {wid: n for wid, n in self.waiting.items() if wid in core.waiting_workers()}
        # dependencies: a completed one is met; a failed or cancelled one fails its dependents now
        for tid, t in out.finished.items():
            self.waits.pop(tid, None)
            if t.status is COMPLETED:
                for on in self.waits.values():
                    on.discard(tid)
        for tid, on in self.waits.items():
            bad = on & failed_now
            assert not bad, f"{tid} still active though its dependencies {bad} failed"
        # the line gained tasks: earlier claims say nothing about the next ones
        ready = {(t.id, line_key(t)) for t in core.tasks.values() if is_ready(t)}
        if ready - self.ready:
            self.last_key.clear()
        self.ready = ready

    def check_not_early(self, t: Task) -> None:
        """A delayed task is not handed out before its delay has passed."""
        if t.spec.delay_s and not t.dependencies:
            assert self.now >= t.created_ns + int(t.spec.delay_s * S), t

    # ------------------------------------------------------------------ rules: tasks

    def _spec(self, data: st.DataObject, pool: list[str], batch_ids: list[str]) -> TaskSpec:
        deps: list[str] = []
        if pool and data.draw(st.integers(0, 2)) == 0:
            deps = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True))
        tid = None
        key = None
        if data.draw(st.integers(0, 3)) == 0:
            tid = f"t{self.next_id}"
            self.next_id += 1
            batch_ids.append(tid)
        elif data.draw(st.integers(0, 3)) == 0:
            key = data.draw(st.sampled_from(KEYS))
        return TaskSpec(
            data.draw(st.sampled_from(TYPES)),
            priority=data.draw(st.sampled_from(PRIORITY_ORDER)),
            difficulty=data.draw(st.integers(1, 6)),
            required_capabilities=data.draw(st.lists(st.sampled_from(CAPS), max_size=2, unique=True)),
            dependencies=deps,
            max_retries=data.draw(st.integers(0, 2)),
            timeout_s=data.draw(st.sampled_from([None, 1.0, 30.0])),
            delay_s=data.draw(st.sampled_from([0.0, 0.0, 0.0, 3.0])),
            idempotency_key=key,
            id=tid,
        )

    @rule(data=st.data())
    def submit(self, data: st.DataObject) -> None:
        core = self.core
        n = data.draw(st.integers(1, 4))
        base_pool = sorted(core.tasks) + sorted(self.done)
        batch_ids: list[str] = []
        specs = [self._spec(data, base_pool + batch_ids, batch_ids) for _ in range(n)]
        known = {d: self.done[d].status for s in specs for d in s.dependencies if d in self.done}
        # the store's answer for keys of tasks that finished before a restart (a fresh core
        # remembers only the keys it saw finish)
        known_keys = {k: tid for k, tid in self.key_owner.items() if tid in self.done and k in self.stored_keys}
        ids = self.run(core.submit, specs, self.now, known=known, known_keys=known_keys)
        assert len(ids) == len(specs)
        new = [tid for tid in dict.fromkeys(ids) if tid not in self.submitted]
        for spec, tid in zip(specs, ids, strict=True):
            if spec.id is not None:
                assert tid == spec.id
            key = spec.idempotency_key
            if key is not None:  # the same key gives the same id, also after the task finished
                assert self.key_owner.setdefault(key, tid) == tid, key
        self.submitted.update(new)
        for tid in new:
            spec = core.tasks[tid].spec if tid in core.tasks else self.done[tid].spec
            failed_deps = [d for d in spec.dependencies if d in self.done and self.done[d].status is not COMPLETED]
            active_deps = {d for d in spec.dependencies if d in core.tasks}
            if failed_deps:
                assert self.done[tid].status is FAILED, (tid, failed_deps)
            elif active_deps:
                self.waits[tid] = active_deps
            else:
                assert tid in core.tasks and core.tasks[tid].status in (QUEUED, ASSIGNED)

    @rule(data=st.data())
    def submit_bad_batch(self, data: st.DataObject) -> None:
        """A batch with one bad spec is refused whole, naming the spec; nothing changes."""
        core = self.core
        n = data.draw(st.integers(0, 3))
        pool = sorted(core.tasks)
        specs = [self._spec(data, pool, []) for _ in range(n)]
        specs = [s._replace(id=None, dependencies=(), idempotency_key=None) for s in specs]
        bad, field = data.draw(
            st.sampled_from(
                [
                    (TaskSpec("x", dependencies=["no-such-task"]), "dependencies"),
                    (TaskSpec("x", difficulty=0), "difficulty"),
                    (TaskSpec("x", difficulty=11), "difficulty"),
                    (TaskSpec("x", priority="urgent"), "priority"),
                    (TaskSpec("x", timeout_s=math.nan), "timeout_s"),
                    (TaskSpec("x", id="cyc", dependencies=["cyc"]), "dependencies"),
                ]
            )
        )
        at = data.draw(st.integers(0, n))
        specs.insert(at, bad)
        e = self.refused(ValidationError, core.submit, specs, self.now)
        assert isinstance(e, ValidationError)
        assert (e.field, e.index) == (field, at)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        core = self.core
        pool = [*sorted(self.submitted), "unknown"]
        tid = data.draw(st.sampled_from(pool))
        t = core.tasks.get(tid)
        if t is None:
            self.refused(TaskNotFoundError, core.cancel, tid, self.now)
            return
        prev = t.status
        holder = t.assigned_worker if prev in LEASED else None
        attempt = t.attempt
        assert self.run(core.cancel, tid, self.now) is prev
        assert self.done[tid].status is CANCELLED
        if holder is not None and holder in core.workers:
            assert (tid, attempt) in core.workers[holder].revoked

    @precondition(lambda self: any(t.status is FAILED for t in self.done.values()))
    @rule(data=st.data())
    def requeue(self, data: st.DataObject) -> None:
        core = self.core
        tid = data.draw(st.sampled_from(sorted(i for i, t in self.done.items() if t.status is FAILED)))
        record = dataclasses.replace(self.done[tid])  # the runtime passes a stored copy
        del self.done[tid]
        self.run(core.requeue, record, self.now)
        t = core.tasks[tid]
        assert t.failures == 0
        active_deps = {d for d in t.dependencies if d in core.tasks}
        if active_deps:
            self.waits[tid] = active_deps
            assert t.status is PENDING
        else:
            assert t.status in (QUEUED, ASSIGNED)

    # ------------------------------------------------------------------ rules: workers

    @rule(
        wid=st.sampled_from(WORKER_IDS),
        caps=st.lists(st.sampled_from(CAPS), max_size=3, unique=True),
        skill=st.integers(1, 10),
        concurrency=st.integers(1, 3),
    )
    def register(self, wid: str, caps: list[str], skill: int, concurrency: int) -> None:
        info = self.run(self.core.register_worker, WorkerSpec(wid, caps, skill, concurrency), self.now)
        assert (info.id, set(info.capabilities), info.skill, info.concurrency) == (wid, set(caps), skill, concurrency)
        self.last_key.pop(wid, None)

    @rule(data=st.data())
    def deregister(self, data: st.DataObject) -> None:
        core = self.core
        wid = self._worker_id(data)
        if wid not in core.workers:
            self.refused(WorkerNotFoundError, core.deregister_worker, wid, self.now)
            return
        if data.draw(st.integers(0, 2)):  # keep workers around more often than not
            return
        held = set(core.workers[wid].active)
        self.run(core.deregister_worker, wid, self.now)
        assert wid not in core.workers
        for tid in held:  # back in line (or failed for good when out of retries)
            assert tid in self.done or core.tasks[tid].assigned_worker != wid
            assert tid in self.done or core.tasks[tid].error == f"worker {wid} deregistered"

    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        core = self.core
        wid = self._worker_id(data)
        if wid not in core.workers:
            self.refused(WorkerNotFoundError, core.heartbeat, wid, self.now)
            return
        reply = self.run(core.heartbeat, wid, self.now)
        assert reply.healthy
        for tid, attempt in reply.revoked:
            t = core.tasks.get(tid)
            assert not (t is not None and t.status in LEASED and t.attempt == attempt and t.assigned_worker == wid)
        assert core.workers[wid].revoked == []

    @rule(data=st.data(), max_tasks=st.integers(1, 3), wait=st.booleans())
    def claim(self, data: st.DataObject, max_tasks: int, wait: bool) -> None:
        core = self.core
        ready = [t for t in core.tasks.values() if is_ready(t)]
        busy = sorted(
            wid
            for wid, w in core.workers.items()
            if len(w.active) < w.concurrency and any(may_take(w, t) for t in ready)
        )
        # mostly a worker that will get something
        wid = data.draw(st.sampled_from(busy)) if busy and data.draw(st.integers(0, 3)) != 0 else self._worker_id(data)
        if wid not in core.workers:
            self.refused(WorkerNotFoundError, core.claim, wid, max_tasks, self.now, wait=wait)
            return
        w = core.workers[wid]
        room = max(0, min(max_tasks, w.concurrency - len(w.active)))
        keys = {t.id: line_key(t) for t in core.tasks.values() if is_ready(t) and may_take(w, t)}
        leases = self.run(core.claim, wid, max_tasks, self.now, wait=wait)
        assert len(leases) == min(room, len(keys)), (room, len(keys))
        got = []
        for lease in leases:
            assert lease.task_id in keys, "leased a task the worker may not take or that was not in line"
            assert lease.worker_id == wid
            assert is_current(core, lease)
            assert core.tasks[lease.task_id].status is ASSIGNED
            self.check_not_early(core.tasks[lease.task_id])
            got.append(keys[lease.task_id])
        # (e) line order: within the claim, against what stays in line, and across claims
        assert got == sorted(got), "a claim returned tasks out of line order"
        rest = [k for tid, k in keys.items() if tid not in {lease.task_id for lease in leases}]
        if got and rest:
            assert max(got) <= min(rest), "a claim skipped a task earlier in line"
        if got and wid in self.last_key:
            assert got[0] >= self.last_key[wid], "a later claim got a task that was earlier in line"
        if got:
            self.last_key[wid] = got[-1]
        self.leases.extend(leases)
        if not leases and wait:
            assert wid in core.waiting_workers()
            self.waiting[wid] = max_tasks
        else:
            assert wid not in core.waiting_workers()
            self.waiting.pop(wid, None)

    @rule(data=st.data())
    def cancel_wait(self, data: st.DataObject) -> None:
        wid = self._worker_id(data)
        self.run(self.core.cancel_wait, wid)
        assert wid not in self.core.waiting_workers()
        self.waiting.pop(wid, None)

    # ------------------------------------------------------------------ rules: leases

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def start(self, data: st.DataObject) -> None:
        core = self.core
        lease = self._lease(data)
        if not is_current(core, lease):
            self.refused(StaleLeaseError, core.start, lease, self.now)
            return
        t = core.tasks[lease.task_id]
        was, deadline = t.status, t.lease_deadline_ns
        self.run(core.start, lease, self.now)
        assert t.status is RUNNING
        if was is ASSIGNED:  # the timeout counts from the start
            assert t.started_ns == self.now
            assert t.lease_deadline_ns == self.now + int(t.timeout_s * S)
        else:  # a repeated start changes nothing
            assert t.lease_deadline_ns == deadline

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        core = self.core
        lease = self._lease(data)
        if not is_current(core, lease):  # (d) a lease that is no longer current changes nothing
            self.refused(StaleLeaseError, core.complete, lease, b"late", self.now)
            return
        self.run(core.complete, lease, b"done", self.now)
        assert self.done[lease.task_id].status is COMPLETED
        assert self.done[lease.task_id].result == b"done"
        self.refused(StaleLeaseError, core.complete, lease, b"again", self.now)

    @precondition(lambda self: self.leases)
    @rule(data=st.data(), retry=st.booleans())
    def fail(self, data: st.DataObject, retry: bool) -> None:
        core = self.core
        lease = self._lease(data)
        if not is_current(core, lease):
            self.refused(StaleLeaseError, core.fail, lease, "late", self.now, retry=retry)
            return
        t = core.tasks[lease.task_id]
        retries_left = t.failures < t.max_retries
        self.run(core.fail, lease, "boom", self.now, retry=retry)
        tid = lease.task_id
        if retry and retries_left:
            assert core.tasks[tid].status is QUEUED
            assert core.tasks[tid].not_before_ns > self.now
        else:
            assert self.done[tid].status is FAILED
            assert self.done[tid].error == "boom"
        self.refused(StaleLeaseError, core.fail, lease, "again", self.now, retry=retry)

    # ------------------------------------------------------------------ rules: time

    @rule(dt=DT)
    def advance(self, dt: int) -> None:
        self.now += dt

    @rule(dt=DT)
    def tick(self, dt: int) -> None:
        self.now += dt
        self.run(self.core.tick, self.now)
        core = self.core
        for t in core.tasks.values():
            if t.status in LEASED:
                assert t.lease_deadline_ns is not None and t.lease_deadline_ns > self.now
            if t.status is QUEUED and t.queued_ns is None:
                assert t.not_before_ns > self.now
        for w in core.workers.values():
            if w.healthy:
                assert self.now - w.last_seen_ns <= CONFIG.heartbeat_timeout_s * S
        deadline = core.next_deadline_ns()
        assert deadline is None or deadline > self.now

    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        """Rebuild a fresh core from the records (in any order), as after a process restart."""
        if data.draw(st.integers(0, 2)):  # now and then
            return
        old = self.core
        records = [dataclasses.replace(t) for t in old.tasks.values()]
        workers = [worker_record(w) for w in old.workers.values()]
        records = data.draw(st.permutations(records))
        self.seed += 1
        self.stored_keys = set(self.key_owner)
        fresh = Core(CONFIG, rng=random.Random(self.seed))
        self.core = fresh
        self.leases = [lease for lease in self.leases if is_current(old, lease)]
        self.waiting.clear()
        self.last_key.clear()
        self.run(fresh.restore, records, workers, self.now)
        for lease in self.leases:  # leases survive unless their holder was unhealthy (healthy or unknown)
            holder = old.workers[lease.worker_id]
            assert is_current(fresh, lease) == (holder.health != "unhealthy")
        for w in fresh.workers.values():  # nobody is healthy until heard from
            assert w.health == ("unhealthy" if old.workers[w.id].health == "unhealthy" else "unknown")

    # ------------------------------------------------------------------ invariants

    @invariant()
    def core_validates(self) -> None:
        self.core.validate()

    @invariant()
    def one_state_and_nothing_lost(self) -> None:
        core = self.core
        # (a) + (b): every id is active (with one status) or finished, never both, never neither
        for tid in self.submitted:
            assert (tid in core.tasks) != (tid in self.done), tid
        assert set(core.tasks) <= self.submitted
        assert set(self.done) <= self.submitted
        for tid, t in core.tasks.items():
            assert t.id == tid
            assert t.status in ACTIVE

    @invariant()
    def counts_are_exact(self) -> None:
        core = self.core
        tasks = list(core.tasks.values())
        by_status = Counter(t.status for t in tasks)
        assert core.status_counts() == {s: by_status[s] for s in ACTIVE}
        by_priority = Counter(t.priority for t in tasks)
        assert core.priority_counts() == {p: by_priority[p] for p in PRIORITY_ORDER}
        assert core.type_counts() == dict(Counter(t.type for t in tasks))
        assert core.leased() == by_status[ASSIGNED] + by_status[RUNNING]
        healthy = [w for w in core.workers.values() if w.healthy]
        assert core.capacity() == (len(healthy), sum(w.concurrency for w in healthy))
        # (c) every leased task is in exactly its worker's active set, and nothing else is
        held: dict[str, set[str]] = {wid: set() for wid in core.workers}
        for t in tasks:
            if t.status in LEASED:
                assert t.assigned_worker in core.workers, t
                assert t.lease_deadline_ns is not None
                held[t.assigned_worker].add(t.id)
            else:
                assert t.assigned_worker is None, t
        for wid, w in core.workers.items():
            assert w.active == held[wid], wid
            if w.health == "unhealthy":
                assert not w.active
        assert set(core.waiting_workers()) <= {wid for wid, w in core.workers.items() if w.healthy}
        assert set(core.waiting_workers()) == set(self.waiting)

    @invariant()
    def pending_tasks_wait(self) -> None:
        core = self.core
        for tid, t in core.tasks.items():
            # (f) a pending task has at least one active dependency
            if t.status is PENDING:
                assert any(d in core.tasks for d in t.dependencies), tid
            # and it is pending exactly while a dependency it waits on is still active
            waits = self.waits.get(tid, set())
            assert waits <= set(core.tasks), (tid, waits)
            assert (t.status is PENDING) == bool(waits), (tid, t.status, waits)
        assert set(self.waits) <= set(core.tasks)

    @invariant()
    def timers_are_scheduled(self) -> None:
        core = self.core
        due = [t.not_before_ns for t in core.tasks.values() if t.status is QUEUED and t.queued_ns is None]
        due += [t.lease_deadline_ns for t in core.tasks.values() if t.status in LEASED]  # type: ignore[misc]
        for t in core.tasks.values():
            if t.status is QUEUED:
                assert (t.queued_ns is None) == (t.not_before_ns > 0), t
        # queue times are unique, so they alone give the FIFO order (and restore() relies on it)
        queued = [t.queued_ns for t in core.tasks.values() if is_ready(t)]
        assert len(queued) == len(set(queued))
        if due:
            deadline = core.next_deadline_ns()
            assert deadline is not None and deadline <= min(due)


CoreMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    # the explain phase traces every line (sys.settrace on Python 3.11): minutes for a failure
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
TestCoreMachine = CoreMachine.TestCase


# ---------------------------------------------------------------------------- plain properties

FAST = settings(max_examples=150, deadline=None)


@FAST
@given(
    batches=st.lists(
        st.tuples(
            st.integers(0, 400 * S),
            st.lists(st.tuples(st.sampled_from(PRIORITY_ORDER), st.integers(1, 3)), min_size=1, max_size=5),
        ),
        min_size=1,
        max_size=10,
    )
)
def test_claims_follow_line_keys_and_fifo(batches: list[tuple[int, list[tuple[Priority, int]]]]) -> None:
    """Whatever the submit times, batches and priorities, one worker gets tasks in line-key
    order, and FIFO within a priority (in submission order, also inside one batch and across
    requirement classes)."""
    core = Core(CONFIG, rng=random.Random(1))
    core.register_worker(WorkerSpec("w", concurrency=1000), 0)
    order: list[str] = []
    for at, batch in sorted(batches, key=lambda b: b[0]):
        order += core.submit([TaskSpec("t", priority=p, difficulty=d) for p, d in batch], at)
    queued = {t.id: t for t in core.tasks.values()}
    got = [lease.task_id for lease in core.claim("w", 1000, 500 * S)]
    assert sorted(got) == sorted(order)
    keys = [line_key(queued[tid]) for tid in got]
    assert keys == sorted(keys)
    for p in PRIORITY_ORDER:
        assert [tid for tid in got if queued[tid].priority is p] == [tid for tid in order if queued[tid].priority is p]


@FAST
@given(difficulty=st.one_of(st.integers(-5, 20), st.booleans(), st.floats(0, 11)))
def test_difficulty_accepted_iff_int_in_range(difficulty: Any) -> None:
    core = Core(CONFIG)
    ok = type(difficulty) is int and 1 <= difficulty <= 10
    if ok:
        [tid] = core.submit([TaskSpec("t", difficulty=difficulty)], S)
        assert core.tasks[tid].difficulty == difficulty
    else:
        with pytest.raises(ValidationError) as ei:
            core.submit([TaskSpec("t", difficulty=difficulty)], S)
        assert (ei.value.field, ei.value.limit, ei.value.index) == ("difficulty", "1..10", 0)
        assert core.tasks == {}
        assert not core.out


@FAST
@given(timeout=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10**7)))
def test_timeout_accepted_iff_finite_positive_and_bounded(timeout: float) -> None:
    core = Core(CONFIG)
    ok = math.isfinite(timeout) and 0 < timeout <= CONFIG.limits.max_timeout_s
    if ok:
        [tid] = core.submit([TaskSpec("t", timeout_s=timeout)], S)
        assert core.tasks[tid].timeout_s == float(timeout)
    else:
        with pytest.raises(ValidationError) as ei:
            core.submit([TaskSpec("t", timeout_s=timeout)], S)
        assert ei.value.field == "timeout_s"
        assert core.tasks == {}


@FAST
@given(
    base=st.floats(0.01, 10.0),
    cap=st.floats(0.01, 100.0),
    max_retries=st.integers(1, 8),
    seed=st.integers(0, 2**32 - 1),
)
def test_retry_backoff_lies_in_half_to_full_delay(base: float, cap: float, max_retries: int, seed: int) -> None:
    core = Core(CoreConfig(backoff_base_s=base, backoff_max_s=cap, heartbeat_timeout_s=1e6), rng=random.Random(seed))
    core.register_worker(WorkerSpec("w"), 0)
    [tid] = core.submit([TaskSpec("t", max_retries=max_retries)], 0)
    now = 0
    for n in range(1, max_retries + 1):
        [lease] = core.claim("w", 1, now)
        core.fail(lease, "e", now)
        t = core.tasks[tid]
        d = min(base * 2 ** (n - 1), cap)
        delay = t.not_before_ns - now
        assert int(d / 2 * S) <= delay <= int(d * S), (n, d, delay)
        now = t.not_before_ns
        core.tick(now)
        assert core.tasks[tid].queued_ns == now
    [lease] = core.claim("w", 1, now)
    core.fail(lease, "last", now)
    assert tid not in core.tasks
    assert core.drain().finished[tid].status is FAILED


@FAST
@given(
    claimed_at=st.integers(0, 100 * S),
    started_after=st.one_of(st.none(), st.integers(0, 50 * S)),
    took=st.integers(0, 200 * S),
    history=st.lists(st.sampled_from(["completed", "failed"]), max_size=6),
)
def test_the_completion_fast_path_updates_a_worker_as_worker_done_does(
    claimed_at: int, started_after: int | None, took: int, history: list[str]
) -> None:
    """Core.complete writes the completed case of Engine._worker_done out for speed: both must
    leave a worker with exactly the same statistics."""

    def run(via_worker_done: bool) -> WorkerState:
        core = Core(CONFIG, rng=random.Random(3))
        core.register_worker(WorkerSpec("w", concurrency=10), 0)
        now = claimed_at
        for outcome in history:  # some statistics to start from
            core.submit([TaskSpec("t")], now)
            [lease] = core.claim("w", 1, now)
            now += S
            if outcome == "completed":
                core.complete(lease, b"", now)
            else:
                core.fail(lease, "e", now)
        core.submit([TaskSpec("t", timeout_s=600_000.0)], now)
        [lease] = core.claim("w", 1, now)
        if started_after is not None:
            core.start(lease, now + started_after)
        end = now + (started_after or 0) + took
        core.heartbeat("w", end)
        if via_worker_done:
            t, w = core.tasks[lease.task_id], core.workers["w"]
            core._worker_done(t, w, end, True, True)
        else:
            core.complete(lease, b"", end)
        return core.workers["w"]

    fast, shared = run(False), run(True)
    fields = ("active", "last_seen_ns", "busy_s", "avg_completion_s", "success_rate", "completed", "failed")
    assert {f: getattr(fast, f) for f in fields} == {f: getattr(shared, f) for f in fields}
