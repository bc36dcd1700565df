"""Example-based tests of the pure scheduling core: every command's exact output.

Each test drives a :class:`Core` with explicit times and asserts what the command returned and
exactly what landed in the outbox (which records are saved or finished, the event list, the
grants to waiting claims, the counters), in the style of dask's worker state machine tests.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from node import model
from node.core import Core, CoreConfig, HeartbeatReply, Load, Outbox, WorkerState, engine
from node.core.workers import score
from node.errors import (
    InvalidTransitionError,
    InvariantError,
    StaleLeaseError,
    TaskNotFoundError,
    ValidationError,
    WorkerNotFoundError,
)
from node.model import EventKind, Lease, Limits, Priority, Task, TaskSpec, TaskStatus, WorkerSpec

S = 1_000_000_000  # one second in ns
NEW, UPD = EventKind.NEW_TASK, EventKind.TASK_UPDATED
PENDING, QUEUED, ASSIGNED, RUNNING = (
    TaskStatus.PENDING,
    TaskStatus.QUEUED,
    TaskStatus.ASSIGNED,
    TaskStatus.IN_PROGRESS,
)
COMPLETED, FAILED, CANCELLED = TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED
HANDING_OFF = TaskStatus.HANDING_OFF
CRITICAL, HIGH, MEDIUM, LOW = Priority.CRITICAL, Priority.HIGH, Priority.MEDIUM, Priority.LOW


# ---------------------------------------------------------------------------- helpers


def make_core(seed: int = 1234, **config: Any) -> Core:
    return Core(CoreConfig(node_id="n1", **config), rng=random.Random(seed))


def view(out: Outbox) -> dict[str, Any]:
    """Everything in an outbox, reduced to comparable values."""
    return {
        "saved": {tid: t.status for tid, t in out.saved.items()},
        "finished": {tid: t.status for tid, t in out.finished.items()},
        "workers": sorted(out.workers),
        "dropped": sorted(out.dropped_workers),
        "idempotency": dict(out.idempotency),
        "events": [(e.kind, e.task_id, e.status) for e in out.event_list()],
        "grants": {wid: [(lease.task_id, lease.attempt) for lease in ls] for wid, ls in out.grants.items()},
        "counters": Counter(out.counters),  # Counter equality ignores zero counts
    }


def expect(
    *,
    saved: Mapping[str, TaskStatus] | None = None,
    finished: Mapping[str, TaskStatus] | None = None,
    workers: Iterable[str] = (),
    dropped: Iterable[str] = (),
    idempotency: Mapping[str, str] | None = None,
    events: Iterable[tuple[EventKind, str, TaskStatus]] = (),
    grants: Mapping[str, list[tuple[str, int]]] | None = None,
    counters: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    return {
        "saved": dict(saved or {}),
        "finished": dict(finished or {}),
        "workers": sorted(workers),
        "dropped": sorted(dropped),
        "idempotency": dict(idempotency or {}),
        "events": list(events),
        "grants": dict(grants or {}),
        "counters": Counter(counters or {}),
    }


def drained(core: Core) -> dict[str, Any]:
    return view(core.drain())


def state(core: Core) -> dict[str, Any]:
    """The observable state of a core, to check that a refused command changed nothing."""
    return {
        "tasks": {
            tid: (t.status, t.attempt, t.failures, t.assigned_worker, t.queued_ns, t.lease_deadline_ns, t.error)
            for tid, t in core.tasks.items()
        },
        "status": core.status_counts(),
        "priority": core.priority_counts(),
        "type": core.type_counts(),
        "workers": {
            wid: (w.healthy, sorted(w.active), list(w.revoked), w.completed, w.failed)
            for wid, w in core.workers.items()
        },
        "waiting": core.waiting_workers(),
        "out": view(core.out),
        "out_nonempty": bool(core.out),
    }


def counts(
    queued: int = 0, pending: int = 0, assigned: int = 0, running: int = 0, handing_off: int = 0
) -> dict[TaskStatus, int]:
    return {PENDING: pending, QUEUED: queued, ASSIGNED: assigned, RUNNING: running, HANDING_OFF: handing_off}


def ids_of(leases: Iterable[Lease]) -> list[str]:
    return [lease.task_id for lease in leases]


# ---------------------------------------------------------------------------- the basic path


def test_submit_claim_start_complete_exact_outputs() -> None:
    core = make_core()
    spec = TaskSpec("render", payload=b"in")
    [a] = core.submit([spec], 1 * S)
    assert drained(core) == expect(saved={a: QUEUED}, events=[(NEW, a, QUEUED)], counters={"submitted": 1})
    assert core.status_counts() == counts(queued=1)
    assert core.priority_counts() == {CRITICAL: 0, HIGH: 0, MEDIUM: 1, LOW: 0}
    assert core.type_counts() == {"render": 1}
    t = core.tasks[a]
    assert (t.status, t.origin_node, t.owner_node, t.created_ns, t.queued_ns, t.attempt) == (
        QUEUED,
        "n1",
        "n1",
        S,
        S,
        0,
    )

    info = core.register_worker(WorkerSpec("w1", capabilities=["render"], skill=5, concurrency=2), 2 * S)
    assert (info.id, info.capabilities, info.skill, info.concurrency, info.healthy) == ("w1", ("render",), 5, 2, True)
    assert drained(core) == expect(workers=["w1"])
    assert core.capacity() == (1, 2)

    leases = core.claim("w1", 5, 3 * S)
    # timeout defaults to 2 * difficulty seconds
    assert leases == [Lease(a, 1, "w1", 5 * S, core.tasks[a].spec)]
    assert drained(core) == expect(saved={a: ASSIGNED}, events=[(UPD, a, ASSIGNED)])
    assert core.status_counts() == counts(assigned=1)
    assert core.leased() == 1
    assert core.workers["w1"].active == {a}
    assert (t.assigned_worker, t.claimed_ns, t.lease_deadline_ns) == ("w1", 3 * S, 5 * S)
    assert core.claim("w1", 5, 3 * S) == []  # nothing else in line
    assert drained(core) == expect()

    core.start(leases[0], 4 * S)
    assert drained(core) == expect(saved={a: RUNNING}, events=[(UPD, a, RUNNING)])
    assert (t.started_ns, t.lease_deadline_ns) == (4 * S, 6 * S)  # the clock restarts at start
    core.start(leases[0], 4 * S + 1)  # a repeated start is a no-op
    assert drained(core) == expect()

    core.complete(leases[0], b"out", 5 * S)
    out = core.drain()
    assert view(out) == expect(finished={a: COMPLETED}, workers=["w1"], events=[(UPD, a, COMPLETED)])
    [ev] = out.event_list()
    assert (ev.worker_id, ev.attempt, ev.ts_ns, ev.error, ev.type, ev.priority) == (
        "w1",
        1,
        5 * S,
        None,
        "render",
        MEDIUM,
    )
    done = out.finished[a]
    assert (done.result, done.error, done.finished_ns, done.lease_deadline_ns) == (b"out", None, 5 * S, None)
    assert core.tasks == {}
    assert core.status_counts() == counts()
    assert core.type_counts() == {}
    w = core.worker_info("w1")
    assert (w.active, w.completed, w.failed, w.success_rate) == (0, 1, 0, 1.0)
    assert w.avg_completion_s == pytest.approx(0.1)  # EMA alpha 0.1 of 1 s (start to complete)
    assert w.busy_s == pytest.approx(1.0)


def test_batch_submit_returns_ids_in_order_and_one_event_each() -> None:
    core = make_core()
    ids = core.submit([TaskSpec("a"), TaskSpec("b", priority="HIGH"), TaskSpec("a", priority=LOW)], S)
    assert len(set(ids)) == 3
    assert ids == sorted(ids)  # UUIDv7: time ordered within one generator
    assert drained(core) == expect(
        saved=dict.fromkeys(ids, QUEUED), events=[(NEW, i, QUEUED) for i in ids], counters={"submitted": 3}
    )
    assert core.priority_counts() == {CRITICAL: 0, HIGH: 1, MEDIUM: 1, LOW: 1}
    assert core.type_counts() == {"a": 2, "b": 1}
    assert core.tasks[ids[1]].priority is HIGH  # the string was normalized


# ---------------------------------------------------------------------------- line order


def test_fifo_within_a_priority_and_priority_order_across() -> None:
    core = make_core()
    core.register_worker(WorkerSpec("w", concurrency=100), 0)
    specs = [
        TaskSpec("t", priority=LOW),
        TaskSpec("t", priority=MEDIUM),
        TaskSpec("t", priority=CRITICAL),
        TaskSpec("t", priority=HIGH),
        TaskSpec("t", priority=MEDIUM),
        TaskSpec("t", priority=CRITICAL),
        TaskSpec("t", priority=LOW),
        TaskSpec("t", priority=HIGH),
    ]
    low1, med1, crit1, high1, med2, crit2, low2, high2 = core.submit(specs, S)
    later_crit = core.submit([TaskSpec("t", priority=CRITICAL)], 2 * S)[0]
    core.drain()
    got = ids_of(core.claim("w", 100, 3 * S))
    assert got == [crit1, crit2, later_crit, high1, high2, med1, med2, low1, low2]


def test_fifo_across_requirement_classes() -> None:
    """Tasks of different classes (capabilities, difficulty) still come out in one line order."""
    core = make_core()
    core.register_worker(WorkerSpec("w", capabilities=["gpu", "cpu"], concurrency=100), 0)
    a = core.submit([TaskSpec("t", difficulty=4)], 1 * S)[0]
    b = core.submit([TaskSpec("t", required_capabilities=["gpu"])], 2 * S)[0]
    c = core.submit([TaskSpec("t")], 3 * S)[0]
    d = core.submit([TaskSpec("t", required_capabilities=["cpu", "gpu"], priority=HIGH)], 4 * S)[0]
    e = core.submit([TaskSpec("t", difficulty=4)], 5 * S)[0]
    # line keys: queued + 120 s for MEDIUM, + 60 s for HIGH
    assert ids_of(core.claim("w", 2, 6 * S)) == [d, a]
    assert ids_of(core.claim("w", 100, 6 * S)) == [b, c, e]


@pytest.mark.parametrize(("priority", "levels"), [(LOW, 3), (MEDIUM, 2), (HIGH, 1)])
def test_aging_lower_priority_goes_first_once_it_waited_rank_times_aging_longer(
    priority: Priority, levels: int
) -> None:
    aging_s = 60.0
    t0 = 10 * S
    gap = int(levels * aging_s * S)  # the lower priority task waited this much longer
    for waited, lower_first in [(gap, True), (gap + 1, True), (gap - 1, False)]:
        core = make_core(aging_s=aging_s)
        core.register_worker(WorkerSpec("w", concurrency=2), 0)
        old = core.submit([TaskSpec("t", priority=priority)], t0)[0]
        new = core.submit([TaskSpec("t", priority=CRITICAL)], t0 + waited)[0]
        got = ids_of(core.claim("w", 2, t0 + waited))
        assert got == ([old, new] if lower_first else [new, old]), (priority, waited)


@pytest.mark.parametrize("critical_class_first", [False, True])
def test_aging_across_requirement_classes(critical_class_first: bool) -> None:
    """The same aging rule holds when the two tasks are in different requirement classes,
    whichever class the core saw first."""
    aging_s = 60.0
    t0 = 10 * S
    for waited, low_first in [(180 * S, True), (180 * S + 1, True), (180 * S - 1, False)]:
        core = make_core(aging_s=aging_s)
        core.register_worker(WorkerSpec("w", capabilities=["x"], concurrency=2), 0)
        if critical_class_first:
            [gone] = core.submit([TaskSpec("t", priority=CRITICAL, required_capabilities=["x"])], 0)
            core.cancel(gone, 0)
        old = core.submit([TaskSpec("t", priority=LOW, difficulty=2)], t0)[0]
        new = core.submit([TaskSpec("t", priority=CRITICAL, required_capabilities=["x"])], t0 + waited)[0]
        got = ids_of(core.claim("w", 1, t0 + waited))
        assert got == ([old] if low_first else [new]), waited


# ---------------------------------------------------------------------------- dependencies


def test_dependent_waits_until_all_dependencies_complete() -> None:
    core = make_core()
    core.register_worker(WorkerSpec("w", concurrency=5), 0)
    a, b = core.submit([TaskSpec("t"), TaskSpec("t")], S)
    core.drain()
    [c] = core.submit([TaskSpec("t", dependencies=[a, b])], 2 * S)
    assert drained(core) == expect(saved={c: PENDING}, events=[(NEW, c, PENDING)], counters={"submitted": 1})
    assert core.status_counts() == counts(queued=2, pending=1)

    la, lb = core.claim("w", 5, 3 * S)  # c is not claimable while pending
    assert ids_of([la, lb]) == [a, b]
    core.drain()
    core.complete(la, b"", 4 * S)
    assert drained(core) == expect(finished={a: COMPLETED}, workers=["w"], events=[(UPD, a, COMPLETED)])
    assert core.tasks[c].status is PENDING
    assert core.claim("w", 5, 4 * S) == []

    core.complete(lb, b"", 5 * S)
    assert drained(core) == expect(
        finished={b: COMPLETED}, saved={c: QUEUED}, workers=["w"], events=[(UPD, b, COMPLETED), (UPD, c, QUEUED)]
    )
    assert core.tasks[c].queued_ns == 5 * S
    assert ids_of(core.claim("w", 5, 6 * S)) == [c]


def test_dependencies_inside_one_batch_are_ordered_first() -> None:
    core = make_core()
    ids = core.submit(
        [
            TaskSpec("t", id="child", dependencies=["parent", "other"]),
            TaskSpec("t", id="parent"),
            TaskSpec("t", id="other", dependencies=["parent"]),
        ],
        S,
    )
    assert ids == ["child", "parent", "other"]
    assert drained(core) == expect(
        saved={"parent": QUEUED, "other": PENDING, "child": PENDING},
        events=[(NEW, "parent", QUEUED), (NEW, "other", PENDING), (NEW, "child", PENDING)],
        counters={"submitted": 3},
    )


def test_dependency_on_finished_tasks_uses_known() -> None:
    core = make_core()
    ids = core.submit(
        [TaskSpec("t", dependencies=["done"]), TaskSpec("t", dependencies=["done", "dead"])],
        S,
        known={"done": COMPLETED, "dead": FAILED},
    )
    ok, bad = ids
    out = core.drain()
    assert view(out) == expect(
        saved={ok: QUEUED},
        finished={bad: FAILED},
        events=[(NEW, ok, PENDING), (UPD, ok, QUEUED), (NEW, bad, PENDING), (UPD, bad, FAILED)],
        counters={"submitted": 2},
    )
    assert out.finished[bad].error == "dependency dead failed"
    assert core.status_counts() == counts(queued=1)


def _chain(core: Core) -> None:
    """a <- b <- c and a <- d (x <- y: y depends on x); a queued, the others pending."""
    core.submit(
        [
            TaskSpec("t", id="a"),
            TaskSpec("t", id="b", dependencies=["a"]),
            TaskSpec("t", id="c", dependencies=["b"]),
            TaskSpec("t", id="d", dependencies=["a"]),
        ],
        S,
    )
    core.drain()


def test_failed_dependency_fails_dependents_transitively() -> None:
    core = make_core()
    _chain(core)
    core.register_worker(WorkerSpec("w"), S)
    [la] = core.claim("w", 1, 2 * S)
    core.drain()
    core.fail(la, "boom", 3 * S, retry=False)
    out = core.drain()
    assert view(out) == expect(
        finished={"a": FAILED, "d": FAILED, "b": FAILED, "c": FAILED},
        workers=["w"],
        events=[(UPD, "a", FAILED), (UPD, "d", FAILED), (UPD, "b", FAILED), (UPD, "c", FAILED)],
    )
    errors = {tid: t.error for tid, t in out.finished.items()}
    assert errors == {
        "a": "boom",
        "b": "dependency a failed",
        "c": "dependency b failed",
        "d": "dependency a failed",
    }
    assert core.tasks == {}
    assert core.status_counts() == counts()


def test_cancelled_dependency_fails_dependents_transitively() -> None:
    core = make_core()
    _chain(core)
    assert core.cancel("b", 2 * S) is PENDING
    out = core.drain()
    assert view(out) == expect(
        finished={"b": CANCELLED, "c": FAILED}, events=[(UPD, "b", CANCELLED), (UPD, "c", FAILED)]
    )
    assert (out.finished["b"].error, out.finished["c"].error) == ("cancelled", "dependency b cancelled")
    assert sorted(core.tasks) == ["a", "d"]
    assert core.status_counts() == counts(queued=1, pending=1)


@pytest.mark.parametrize(
    ("specs", "index", "detail"),
    [
        ([TaskSpec("t"), TaskSpec("t", dependencies=["nope"])], 1, "unknown task id 'nope'"),
        ([TaskSpec("t", id="x", dependencies=["y"]), TaskSpec("t", id="y", dependencies=["x"])], 0, "cycle"),
        ([TaskSpec("t"), TaskSpec("t", id="self", dependencies=["self"])], 1, "cycle"),
        (
            [
                TaskSpec("t", id="p"),
                TaskSpec("t", id="q", dependencies=["p", "s"]),
                TaskSpec("t", id="r", dependencies=["q"]),
                TaskSpec("t", id="s", dependencies=["r"]),
            ],
            1,
            "cycle",
        ),
    ],
)
def test_bad_dependencies_are_refused_and_nothing_is_written(specs: list[TaskSpec], index: int, detail: str) -> None:
    core = make_core()
    core.register_worker(WorkerSpec("w"), 0)
    existing = core.submit([TaskSpec("t"), TaskSpec("t", id="dep-root")], S)
    core.claim("w", 1, S)
    before = state(core)
    with pytest.raises(ValidationError) as ei:
        core.submit(specs, 2 * S)
    e = ei.value
    assert (e.field, e.index) == ("dependencies", index)
    assert detail in e.detail
    assert str(e).startswith(f"specs[{index}].dependencies: ")
    if detail == "cycle":
        assert e.limit == "acyclic"
    assert state(core) == before
    assert sorted(core.tasks) == sorted(existing)


def test_duplicate_explicit_id_is_refused() -> None:
    core = make_core()
    core.submit([TaskSpec("t", id="x")], S)
    before = state(core)
    for specs, known in [
        ([TaskSpec("t", id="x")], None),
        ([TaskSpec("t", id="y"), TaskSpec("t", id="y")], None),
        ([TaskSpec("t", id="z")], {"z": COMPLETED}),
    ]:
        with pytest.raises(ValidationError) as ei:
            core.submit(specs, 2 * S, known=known)
        assert ei.value.field == "id"
        assert state(core) == before


# ---------------------------------------------------------------------------- matching


def test_capabilities_and_skill_decide_who_may_take_a_task() -> None:
    core = make_core()
    [t] = core.submit([TaskSpec("train", difficulty=7, required_capabilities=["gpu"])], S)
    core.register_worker(WorkerSpec("cpu", skill=10), S)
    core.register_worker(WorkerSpec("weak-gpu", capabilities=["gpu"], skill=6), S)
    core.register_worker(WorkerSpec("gpu", capabilities=["gpu", "cuda"], skill=7), S)
    core.drain()
    assert core.claim("cpu", 1, 2 * S) == []
    assert core.claim("weak-gpu", 1, 2 * S) == []
    assert drained(core) == expect()
    assert ids_of(core.claim("gpu", 1, 2 * S)) == [t]


def test_reregistering_with_new_capabilities_changes_what_a_worker_may_take() -> None:
    core = make_core()
    core.register_worker(WorkerSpec("w", skill=3), 0)
    [t] = core.submit([TaskSpec("t", difficulty=5, required_capabilities=["gpu"])], S)
    assert core.claim("w", 1, S) == []
    core.register_worker(WorkerSpec("w", capabilities=["gpu"], skill=5), 2 * S)
    assert ids_of(core.claim("w", 1, 2 * S)) == [t]


def test_non_strict_matching_ignores_skill_but_not_capabilities() -> None:
    core = make_core(strict_matching=False)
    core.register_worker(WorkerSpec("novice", skill=1), 0)
    hard, _gpu = core.submit([TaskSpec("t", difficulty=10), TaskSpec("t", required_capabilities=["gpu"])], S)
    assert ids_of(core.claim("novice", 5, S)) == [hard]


def test_score_of_seed_000() -> None:
    core = make_core()
    core.register_worker(WorkerSpec("w", capabilities=["render"]), 0)
    w = core.workers["w"]
    quick, _ = core.submit([TaskSpec("render", priority=CRITICAL, difficulty=3), TaskSpec("x", difficulty=4)], S)
    t = core.tasks[quick]
    # capability match 50 + CRITICAL 40 + success 1.0 * 20 + speed 10 / max(0.0, 0.1)
    assert score(w, t, 3) == pytest.approx(50 + 40 + 20 + 100)
    w.active = {"a", "b"}
    w.success_rate = 0.5
    w.avg_completion_s = 2.0
    assert score(w, t, 3) == pytest.approx(50 + 40 - 10 + 10 + 5)
    assert score(w, t, 2) == pytest.approx(50 + 40 - 10 + 10)  # too hard for the speed bonus
    other = core.tasks[_]
    assert score(w, other, 3) == pytest.approx(10 - 10 + 10)  # no capability match, MEDIUM


def _two_waiting(core: Core, **kw: Any) -> None:
    core.register_worker(WorkerSpec("first", **kw), 0)
    core.register_worker(WorkerSpec("second", **kw), 0)


def test_waiting_claims_get_new_work_by_score_capability_match() -> None:
    core = make_core()
    core.register_worker(WorkerSpec("plain", concurrency=2), 0)
    core.register_worker(WorkerSpec("renderer", capabilities=["render"], concurrency=2), 0)
    assert core.claim("plain", 1, S, wait=True) == []
    assert core.claim("renderer", 1, S, wait=True) == []
    assert core.waiting_workers() == ["plain", "renderer"]
    core.drain()
    [t] = core.submit([TaskSpec("render")], 2 * S)
    assert drained(core) == expect(
        saved={t: ASSIGNED},
        events=[(NEW, t, QUEUED), (UPD, t, ASSIGNED)],
        grants={"renderer": [(t, 1)]},
        counters={"submitted": 1},
    )
    assert core.waiting_workers() == ["plain"]
    assert core.tasks[t].assigned_worker == "renderer"
    assert core.workers["renderer"].active == {t}
    # a worker with the "general" capability matches every type
    core.register_worker(WorkerSpec("generalist", capabilities=["general"]), 2 * S)
    core.claim("generalist", 1, 2 * S, wait=True)
    core.drain()
    [u] = core.submit([TaskSpec("anything")], 3 * S)
    assert drained(core)["grants"] == {"generalist": [(u, 1)]}
    # nobody waiting: the next task stays in line
    core.claim("plain", 1, 3 * S)
    core.cancel_wait("plain")
    assert core.waiting_workers() == []


def test_waiting_claims_load_penalty() -> None:
    core = make_core()
    _two_waiting(core, concurrency=3)
    [held] = core.submit([TaskSpec("t")], S)
    assert ids_of(core.claim("first", 1, S)) == [held]
    assert core.claim("first", 1, S, wait=True) == []
    assert core.claim("second", 1, S, wait=True) == []
    core.drain()
    [t] = core.submit([TaskSpec("t")], 2 * S)
    # first: -5 for the task it holds; ties would go to the first waiter
    assert drained(core)["grants"] == {"second": [(t, 1)]}


def test_waiting_claims_success_rate() -> None:
    core = make_core()
    _two_waiting(core)
    core.submit([TaskSpec("t", difficulty=5)], S)
    [lx] = core.claim("first", 1, S)
    core.fail(lx, "oops", S, retry=False)  # success rate 1.0 -> 0.9, elapsed 0 s
    assert core.worker_info("first").success_rate == pytest.approx(0.9)
    assert core.claim("first", 1, 2 * S, wait=True) == []
    assert core.claim("second", 1, 2 * S, wait=True) == []
    core.drain()
    [t] = core.submit([TaskSpec("t", difficulty=5)], 3 * S)
    assert drained(core)["grants"] == {"second": [(t, 1)]}


@pytest.mark.parametrize(("difficulty", "winner"), [(3, "second"), (4, "first")])
def test_waiting_claims_speed_bonus_only_for_quick_tasks(difficulty: int, winner: str) -> None:
    core = make_core()
    _two_waiting(core)
    core.submit([TaskSpec("t", timeout_s=100), TaskSpec("t", timeout_s=100)], S)
    [ls] = core.claim("first", 1, S)
    [lq] = core.claim("second", 1, S)
    core.complete(ls, b"", 11 * S)  # 10 s: avg 1.0 s, bonus 10
    core.complete(lq, b"", 2 * S)  # 1 s: avg 0.1 s, bonus 100
    assert core.claim("first", 1, 12 * S, wait=True) == []
    assert core.claim("second", 1, 12 * S, wait=True) == []
    core.drain()
    [t] = core.submit([TaskSpec("t", difficulty=difficulty)], 13 * S)
    assert drained(core)["grants"] == {winner: [(t, 1)]}


def test_waiting_claim_only_gets_what_it_may_take_and_up_to_its_max() -> None:
    core = make_core()
    core.register_worker(WorkerSpec("w", skill=3, concurrency=5), 0)
    assert core.claim("w", 2, S, wait=True) == []
    core.drain()
    hard, a, b, c = core.submit(
        [TaskSpec("t", difficulty=4), TaskSpec("t"), TaskSpec("t", priority=HIGH), TaskSpec("t")], 2 * S
    )
    # the fresh tasks go in line order (b is HIGH) to the waiting claim, two at most
    assert drained(core) == expect(
        saved={hard: QUEUED, a: ASSIGNED, b: ASSIGNED, c: QUEUED},
        events=[
            (NEW, hard, QUEUED),
            (NEW, a, QUEUED),
            (NEW, b, QUEUED),
            (NEW, c, QUEUED),
            (UPD, b, ASSIGNED),
            (UPD, a, ASSIGNED),
        ],
        grants={"w": [(b, 1), (a, 1)]},
        counters={"submitted": 4},
    )
    assert core.waiting_workers() == []
    assert ids_of(core.claim("w", 5, 3 * S)) == [c]


def test_a_waiting_worker_that_completes_gets_the_next_task_in_line() -> None:
    core = make_core()
    core.register_worker(WorkerSpec("w"), 0)
    a, b = core.submit([TaskSpec("t"), TaskSpec("t")], S)
    [la] = core.claim("w", 1, S)
    assert core.claim("w", 1, S, wait=True) == []  # full: waits
    core.drain()
    core.complete(la, b"", 2 * S)
    assert drained(core) == expect(
        saved={b: ASSIGNED},
        finished={a: COMPLETED},
        workers=["w"],
        events=[(UPD, a, COMPLETED), (UPD, b, ASSIGNED)],
        grants={"w": [(b, 1)]},
    )


# ---------------------------------------------------------------------------- leases


def test_lease_fencing_old_attempt_other_worker_and_double_complete() -> None:
    core = make_core(backoff_base_s=1.0)
    core.register_worker(WorkerSpec("w1"), 0)
    core.register_worker(WorkerSpec("w2"), 0)
    [t] = core.submit([TaskSpec("t")], S)
    [old] = core.claim("w1", 1, S)
    core.fail(old, "flaky", 2 * S)  # retry after a backoff
    task = core.tasks[t]
    assert task.status is QUEUED
    core.tick(task.not_before_ns)
    [cur] = core.claim("w2", 1, task.not_before_ns)
    assert (cur.attempt, cur.worker_id) == (2, "w2")
    core.drain()

    before = state(core)
    forged = cur._replace(worker_id="w1")
    for lease in (old, forged):
        with pytest.raises(StaleLeaseError) as ei:
            core.complete(lease, b"x", 5 * S)
        assert (ei.value.task_id, ei.value.attempt) == (t, lease.attempt)
        with pytest.raises(StaleLeaseError):
            core.fail(lease, "x", 5 * S)
        with pytest.raises(StaleLeaseError):
            core.start(lease, 5 * S)
        assert state(core) == before

    core.complete(cur, b"ok", 6 * S)
    assert drained(core) == expect(finished={t: COMPLETED}, workers=["w2"], events=[(UPD, t, COMPLETED)])
    after = state(core)
    with pytest.raises(StaleLeaseError, match="no longer active"):
        core.complete(cur, b"again", 7 * S)
    with pytest.raises(StaleLeaseError):
        core.fail(cur, "late", 7 * S)
    assert state(core) == after
    assert drained(core) == expect()  # finished exactly once
    assert core.worker_info("w2").completed == 1


def test_complete_refuses_a_non_lease() -> None:
    core = make_core()
    with pytest.raises(ValidationError) as ei:
        core.complete(("t", 1, "w", 0, TaskSpec("t")), b"", S)  # type: ignore[arg-type]
    assert ei.value.field == "lease"


def test_lease_expiry_retries_with_exponential_backoff_then_fails() -> None:
    core = make_core(backoff_base_s=1.0)
    core.register_worker(WorkerSpec("w"), 0)
    [t] = core.submit([TaskSpec("t", difficulty=1)], S)  # timeout 2 s, max_retries 3
    now = S
    for n in (1, 2, 3, 4):
        [lease] = core.claim("w", 1, now)
        assert lease.attempt == n
        deadline = now + 2 * S
        assert lease.deadline_ns == deadline
        core.drain()
        core.tick(deadline - 1)
        assert drained(core) == expect()
        assert core.next_deadline_ns() == deadline
        core.heartbeat("w", deadline - 1)
        core.tick(deadline)
        out = core.drain()
        error = f"timed out after 2s (attempt {n})"
        if n <= 3:
            assert view(out) == expect(
                saved={t: QUEUED}, workers=["w"], events=[(UPD, t, QUEUED)], counters={"timed_out": 1, "retried": 1}
            )
            task = core.tasks[t]
            assert (task.failures, task.error, task.queued_ns, task.assigned_worker) == (n, error, None, None)
            d = 1.0 * 2 ** (n - 1)
            delay = task.not_before_ns - deadline
            assert d / 2 * S <= delay <= d * S, (n, delay)
            assert core.next_deadline_ns() == task.not_before_ns
            assert core.claim("w", 1, task.not_before_ns - 1) == []  # not before its time
            core.tick(task.not_before_ns - 1)
            assert drained(core) == expect()
            now = task.not_before_ns
            core.tick(now)
            assert drained(core) == expect(saved={t: QUEUED}, events=[(UPD, t, QUEUED)])
            assert task.queued_ns == now
        else:
            assert view(out) == expect(
                finished={t: FAILED}, workers=["w"], events=[(UPD, t, FAILED)], counters={"timed_out": 1}
            )
            assert out.finished[t].error == error
            assert out.finished[t].failures == 4
        assert core.heartbeat("w", deadline) == HeartbeatReply(healthy=True, revoked=((t, n),))
    w = core.worker_info("w")
    assert (w.timed_out, w.failed, w.completed) == (4, 4, 0)
    assert w.success_rate == pytest.approx(0.9**4)
    assert core.tasks == {}


@pytest.mark.parametrize("max_retries", [0, 3])
def test_a_lease_started_the_instant_it_was_claimed_expires_once(max_retries: int) -> None:
    core = make_core()
    core.register_worker(WorkerSpec("w"), 0)
    [t] = core.submit([TaskSpec("t", max_retries=max_retries)], S)
    [lease] = core.claim("w", 1, S)
    core.start(lease, S)  # same deadline as the claim's
    core.drain()
    core.heartbeat("w", 3 * S)
    core.tick(3 * S)
    if max_retries:
        assert drained(core) == expect(
            saved={t: QUEUED}, workers=["w"], events=[(UPD, t, QUEUED)], counters={"timed_out": 1, "retried": 1}
        )
        assert core.tasks[t].failures == 1
    else:
        assert drained(core) == expect(
            finished={t: FAILED}, workers=["w"], events=[(UPD, t, FAILED)], counters={"timed_out": 1}
        )
    assert core.worker_info("w").timed_out == 1
    assert core.heartbeat("w", 3 * S).revoked == ((t, 1),)


def test_finished_tasks_are_not_kept_alive_by_their_lease_deadlines() -> None:
    """A completed or failed task leaves memory with the outbox, not when its (long) lease
    deadline passes: a busy node with hour-long timeouts would otherwise hold an hour of
    finished tasks, payloads and results included."""
    core = make_core()
    core.register_worker(WorkerSpec("w", concurrency=2000), 0)
    mine = set(core.submit([TaskSpec("t", timeout_s=3600.0, max_retries=0) for _ in range(100)], S))
    leases = core.claim("w", 100, S)
    for i, lease in enumerate(leases):
        if i % 2:
            core.complete(lease, b"r" * 100, 2 * S)
        else:
            core.fail(lease, "e", 2 * S)
    assert len(core.drain().finished) == 100
    del leases
    gc.collect()
    # (only this test's tasks: a node frozen by gc.freeze() in another test keeps its own)
    assert [o for o in gc.get_objects() if type(o) is Task and o.id in mine] == []
    assert core._leases.entries == 100  # stale entries stay (small) until compacted ...
    core.tick(3 * S)
    assert core._leases.entries == 100  # ... which waits until they outnumber live leases
    core.submit([TaskSpec("t", timeout_s=3600.0) for _ in range(2000)], 4 * S)
    for lease in core.claim("w", 2000, 4 * S):
        core.complete(lease, b"", 5 * S)
    core.tick(6 * S)  # 2100 stale entries > 2 x 0 live + 1024
    assert core._leases.entries == 0


def test_a_task_cancelled_while_it_waits_for_its_start_time_is_freed_at_once() -> None:
    core = make_core()
    [t] = core.submit([TaskSpec("t", payload=b"p" * 1000, delay_s=3600.0)], S)
    core.cancel(t, 2 * S)
    assert core.drain().finished[t].status is CANCELLED
    gc.collect()
    assert [o for o in gc.get_objects() if type(o) is Task and o.id == t] == []
    core.tick(3601 * S)  # its entry in the delay heap comes due and is dropped
    assert drained(core) == expect()


def test_a_reused_task_id_times_out_once_even_when_an_old_lease_entry_matches_it() -> None:
    """Ids can come back (an explicit id, once the finished task is forgotten): the stale
    deadline entry of the old task may carry the same id, attempt and deadline as the live one."""
    core = make_core()
    core.register_worker(WorkerSpec("w", concurrency=2), 0)
    core.submit([TaskSpec("t", id="x", timeout_s=10.0)], 0)
    [old] = core.claim("w", 1, 0)  # deadline 10 s
    core.complete(old, b"", S)
    core.submit([TaskSpec("t", id="x", timeout_s=5.0, max_retries=1)], 5 * S)
    [new] = core.claim("w", 1, 5 * S)  # attempt 1 again, deadline 10 s again
    assert (new.attempt, new.deadline_ns) == (old.attempt, old.deadline_ns)
    core.drain()
    core.heartbeat("w", 10 * S)
    core.tick(10 * S)
    assert drained(core) == expect(
        saved={"x": QUEUED}, workers=["w"], events=[(UPD, "x", QUEUED)], counters={"timed_out": 1, "retried": 1}
    )
    assert core.tasks["x"].failures == 1


def test_backoff_is_capped() -> None:
    core = make_core(backoff_base_s=10.0, backoff_max_s=15.0)
    core.register_worker(WorkerSpec("w"), 0)
    [t] = core.submit([TaskSpec("t", max_retries=5)], 0)
    now = 0
    for _ in range(3):
        [lease] = core.claim("w", 1, now)
        core.fail(lease, "e", now)
        delay = core.tasks[t].not_before_ns - now
        now += delay
        core.tick(now)
    # the third failure: d = min(10 * 4, 15) = 15 s
    assert 7.5 * S <= delay <= 15 * S


def test_fail_without_retry_is_final() -> None:
    core = make_core()
    core.register_worker(WorkerSpec("w"), 0)
    [t] = core.submit([TaskSpec("t")], S)
    [lease] = core.claim("w", 1, S)
    core.drain()
    core.fail(lease, "bad input", 2 * S, retry=False)
    out = core.drain()
    assert view(out) == expect(finished={t: FAILED}, workers=["w"], events=[(UPD, t, FAILED)])
    assert (out.finished[t].error, out.finished[t].failures) == ("bad input", 1)
    assert out.event_list()[0].error == "bad input"


def test_fail_with_retry_and_no_retries_left_is_final() -> None:
    core = make_core()
    core.register_worker(WorkerSpec("w"), 0)
    [t] = core.submit([TaskSpec("t", max_retries=0)], S)
    [lease] = core.claim("w", 1, S)
    core.drain()
    core.fail(lease, "e", 2 * S, retry=True)
    assert drained(core) == expect(finished={t: FAILED}, workers=["w"], events=[(UPD, t, FAILED)])


def test_requeue_of_a_failed_task_gives_a_fresh_retry_budget() -> None:
    core = make_core()
    core.register_worker(WorkerSpec("w"), 0)
    [t] = core.submit([TaskSpec("t", max_retries=1)], S)
    [l1] = core.claim("w", 1, S)
    core.fail(l1, "e1", S)
    core.tick(core.tasks[t].not_before_ns)
    [l2] = core.claim("w", 1, 10 * S)
    core.fail(l2, "e2", 10 * S)
    record = core.drain().finished[t]
    assert (record.status, record.failures, record.attempt) == (FAILED, 2, 2)

    core.requeue(record, 20 * S)
    assert drained(core) == expect(
        saved={t: QUEUED}, events=[(UPD, t, PENDING), (UPD, t, QUEUED)], counters={"requeued": 1}
    )
    task = core.tasks[t]
    assert (task.status, task.failures, task.attempt, task.queued_ns, task.finished_ns) == (QUEUED, 0, 2, 20 * S, None)
    assert core.status_counts() == counts(queued=1)
    [l3] = core.claim("w", 1, 21 * S)
    assert l3.attempt == 3
    core.fail(l3, "e3", 21 * S)  # one retry left again
    assert drained(core)["counters"] == Counter({"retried": 1})
    assert core.tasks[t].status is QUEUED

    with pytest.raises(InvalidTransitionError):
        core.requeue(record, 22 * S)  # it is active again
    done = dataclasses.replace(record, status=COMPLETED)
    with pytest.raises(InvalidTransitionError):
        core.requeue(done, 22 * S)


def test_requeue_waits_for_dependencies_that_are_active_again() -> None:
    core = make_core()
    core.register_worker(WorkerSpec("w", concurrency=3), 0)
    core.submit([TaskSpec("t", id="a"), TaskSpec("t", id="b"), TaskSpec("t", id="c", dependencies=["a", "b"])], S)
    la, lb = core.claim("w", 2, S)
    core.fail(la, "a broke", 2 * S, retry=False)
    out = core.drain()
    assert view(out)["finished"] == {"a": FAILED, "c": FAILED}
    core.requeue(out.finished["a"], 3 * S)
    core.requeue(out.finished["c"], 3 * S)
    assert drained(core) == expect(
        saved={"a": QUEUED, "c": PENDING},
        events=[(UPD, "a", PENDING), (UPD, "a", QUEUED), (UPD, "c", PENDING)],
        counters={"requeued": 2},
    )
    # c waits on a and b again: b completing is not enough
    core.complete(lb, b"", 4 * S)
    assert drained(core) == expect(finished={"b": COMPLETED}, workers=["w"], events=[(UPD, "b", COMPLETED)])
    assert core.tasks["c"].status is PENDING
    [la2] = core.claim("w", 3, 5 * S)
    assert la2.task_id == "a"
    core.drain()
    core.complete(la2, b"", 6 * S)
    assert drained(core) == expect(
        finished={"a": COMPLETED},
        saved={"c": QUEUED},
        workers=["w"],
        events=[(UPD, "a", COMPLETED), (UPD, "c", QUEUED)],
    )


def test_requeued_dependent_fails_once_when_a_dependency_fails_again() -> None:
    core = make_core()
    core.register_worker(WorkerSpec("w", concurrency=3), 0)
    core.submit([TaskSpec("t", id="a"), TaskSpec("t", id="b"), TaskSpec("t", id="c", dependencies=["a", "b"])], S)
    la, lb = core.claim("w", 2, S)
    core.fail(la, "a broke", 2 * S, retry=False)
    out = core.drain()
    core.requeue(out.finished["a"], 3 * S)
    core.requeue(out.finished["c"], 3 * S)
    core.drain()
    core.fail(lb, "b broke", 4 * S, retry=False)
    assert drained(core) == expect(
        finished={"b": FAILED, "c": FAILED}, workers=["w"], events=[(UPD, "b", FAILED), (UPD, "c", FAILED)]
    )
    assert sorted(core.tasks) == ["a"]
    assert core.status_counts() == counts(queued=1)


# ---------------------------------------------------------------------------- cancel


def test_cancel_a_queued_task() -> None:
    core = make_core()
    core.register_worker(WorkerSpec("w", concurrency=2), 0)
    a, b = core.submit([TaskSpec("t"), TaskSpec("t")], S)
    core.drain()
    assert core.cancel(a, 2 * S) is QUEUED
    out = core.drain()
    assert view(out) == expect(finished={a: CANCELLED}, events=[(UPD, a, CANCELLED)])
    assert out.finished[a].error == "cancelled"
    assert core.status_counts() == counts(queued=1)
    assert ids_of(core.claim("w", 2, 3 * S)) == [b]
    with pytest.raises(TaskNotFoundError):
        core.cancel(a, 4 * S)
    with pytest.raises(TaskNotFoundError):
        core.cancel("nope", 4 * S)


def test_cancel_a_delayed_retry() -> None:
    core = make_core()
    core.register_worker(WorkerSpec("w"), 0)
    [a] = core.submit([TaskSpec("t")], S)
    [lease] = core.claim("w", 1, S)
    core.fail(lease, "e", S)
    nb = core.tasks[a].not_before_ns
    core.drain()
    assert core.cancel(a, 2 * S) is QUEUED
    assert drained(core) == expect(finished={a: CANCELLED}, events=[(UPD, a, CANCELLED)])
    core.tick(nb)
    assert drained(core) == expect()
    assert core.tasks == {}


@pytest.mark.parametrize("started", [False, True])
def test_cancel_a_running_task_revokes_the_lease(started: bool) -> None:
    core = make_core()
    core.register_worker(WorkerSpec("w"), 0)
    a, b = core.submit([TaskSpec("t"), TaskSpec("t")], S)
    [lease] = core.claim("w", 1, S)
    if started:
        core.start(lease, S)
    core.drain()
    assert core.cancel(a, 2 * S) is (RUNNING if started else ASSIGNED)
    assert drained(core) == expect(finished={a: CANCELLED}, workers=["w"], events=[(UPD, a, CANCELLED)])
    w = core.workers["w"]
    assert w.active == set()
    # the time it held the lease counts as busy; the cancel is not the worker's failure
    assert (w.busy_s, w.completed, w.failed, w.success_rate) == (1.0, 0, 0, 1.0)
    assert core.heartbeat("w", 3 * S) == HeartbeatReply(healthy=True, revoked=((a, 1),))
    assert core.heartbeat("w", 3 * S) == HeartbeatReply(healthy=True, revoked=())
    with pytest.raises(StaleLeaseError):
        core.complete(lease, b"", 3 * S)
    assert ids_of(core.claim("w", 1, 4 * S)) == [b]  # the slot is free again


# ---------------------------------------------------------------------------- workers


def test_missed_heartbeats_release_tasks_to_another_worker() -> None:
    core = make_core()  # heartbeat timeout 15 s
    core.register_worker(WorkerSpec("w1"), 10 * S)
    core.register_worker(WorkerSpec("w2"), 10 * S)
    [a] = core.submit([TaskSpec("t", timeout_s=100)], 10 * S)
    [old] = core.claim("w1", 1, 10 * S)
    assert core.claim("w2", 1, 20 * S, wait=True) == []
    core.drain()

    core.tick(25 * S)  # exactly the timeout: still healthy
    assert drained(core) == expect()
    core.tick(25 * S + 1)
    out = core.drain()
    assert view(out) == expect(
        saved={a: ASSIGNED},
        workers=["w1"],
        events=[(UPD, a, QUEUED), (UPD, a, ASSIGNED)],
        grants={"w2": [(a, 2)]},
        counters={"workers_lost": 1, "retried": 1},
    )
    task = core.tasks[a]
    assert (task.assigned_worker, task.failures, task.error) == ("w2", 1, "worker w1 missed heartbeats")
    assert core.workers["w1"].healthy is False
    assert core.workers["w1"].active == set()
    assert core.capacity() == (1, 1)
    with pytest.raises(StaleLeaseError):
        core.complete(old, b"", 26 * S)
    assert core.heartbeat("w1", 27 * S) == HeartbeatReply(healthy=True, revoked=((a, 1),))
    assert drained(core) == expect(workers=["w1"])
    assert core.capacity() == (2, 2)


def test_missed_heartbeats_put_tasks_back_in_line() -> None:
    core = make_core()
    core.register_worker(WorkerSpec("w1", concurrency=2), 0)
    a, b = core.submit([TaskSpec("t", timeout_s=100), TaskSpec("t", timeout_s=100, priority=LOW)], 0)
    core.claim("w1", 2, 0)
    core.drain()
    core.tick(16 * S)
    assert drained(core) == expect(
        saved={a: QUEUED, b: QUEUED},
        workers=["w1"],
        events=[(UPD, a, QUEUED), (UPD, b, QUEUED)],
        counters={"workers_lost": 1, "retried": 2},
    )
    assert core.status_counts() == counts(queued=2)
    assert core.advice().action == "scale_up"  # work and no healthy slot
    core.register_worker(WorkerSpec("w2", concurrency=2), 17 * S)
    assert [(lease.task_id, lease.attempt) for lease in core.claim("w2", 2, 17 * S)] == [(a, 2), (b, 2)]


def test_unhealthy_worker_is_forgotten_after_expiry() -> None:
    core = make_core(worker_expiry_s=100.0)
    core.register_worker(WorkerSpec("w"), 0)
    core.drain()
    core.tick(15 * S + 1)
    assert drained(core) == expect(workers=["w"], counters={"workers_lost": 1})
    assert core.next_deadline_ns() == 115 * S + 2
    core.tick(115 * S + 1)
    assert drained(core) == expect()
    core.tick(115 * S + 2)
    assert drained(core) == expect(dropped=["w"])
    assert core.workers == {}
    with pytest.raises(WorkerNotFoundError):
        core.heartbeat("w", 116 * S)


def test_deregister_returns_tasks_to_line() -> None:
    core = make_core()
    core.register_worker(WorkerSpec("w"), 0)
    [a] = core.submit([TaskSpec("t")], S)
    [lease] = core.claim("w", 1, S)
    core.drain()
    core.deregister_worker("w", 2 * S)
    assert drained(core) == expect(saved={a: QUEUED}, dropped=["w"], events=[(UPD, a, QUEUED)], counters={"retried": 1})
    assert core.tasks[a].error == "worker w deregistered"
    with pytest.raises(StaleLeaseError):
        core.complete(lease, b"", 3 * S)
    with pytest.raises(WorkerNotFoundError):
        core.claim("w", 1, 3 * S)


# ---------------------------------------------------------------------------- idempotency


def test_idempotency_key_returns_the_same_id() -> None:
    core = make_core()
    [a] = core.submit([TaskSpec("t", idempotency_key="k1")], S)
    assert drained(core) == expect(
        saved={a: QUEUED}, idempotency={"k1": a}, events=[(NEW, a, QUEUED)], counters={"submitted": 1}
    )
    assert core.submit([TaskSpec("t", idempotency_key="k1", priority=HIGH)], 2 * S) == [a]
    assert drained(core) == expect()
    assert list(core.tasks) == [a]

    b, b2, c = core.submit(
        [TaskSpec("t", idempotency_key="k2"), TaskSpec("t", idempotency_key="k2"), TaskSpec("t")], 3 * S
    )
    assert b == b2
    assert c != b
    assert drained(core) == expect(
        saved={b: QUEUED, c: QUEUED},
        idempotency={"k2": b},
        events=[(NEW, b, QUEUED), (NEW, c, QUEUED)],
        counters={"submitted": 2},
    )


def test_idempotency_key_survives_completion_within_recent_keys() -> None:
    core = make_core(recent_keys=2)
    core.register_worker(WorkerSpec("w"), 0)
    ids = {}
    for i, key in enumerate(["k1", "k2", "k3"]):
        [ids[key]] = core.submit([TaskSpec("t", idempotency_key=key)], (i + 1) * S)
        [lease] = core.claim("w", 1, (i + 1) * S)
        core.complete(lease, b"", (i + 1) * S)
    core.drain()
    assert core.tasks == {}
    assert core.submit([TaskSpec("t", idempotency_key="k3")], 10 * S) == [ids["k3"]]
    assert core.submit([TaskSpec("t", idempotency_key="k2")], 10 * S) == [ids["k2"]]
    assert drained(core) == expect()
    # k1 is out of the core's memory: the store's answer (known_keys) still finds it
    assert core.submit([TaskSpec("t", idempotency_key="k1")], 10 * S, known_keys={"k1": ids["k1"]}) == [ids["k1"]]
    assert drained(core) == expect()
    [fresh] = core.submit([TaskSpec("t", idempotency_key="k1")], 11 * S)
    assert fresh != ids["k1"]
    assert drained(core)["idempotency"] == {"k1": fresh}


# ---------------------------------------------------------------------------- validation

BIG = Limits(max_payload_bytes=16)


@pytest.mark.parametrize(
    ("spec", "field", "limit"),
    [
        (TaskSpec("t", difficulty=0), "difficulty", "1..10"),
        (TaskSpec("t", difficulty=11), "difficulty", "1..10"),
        (TaskSpec("t", difficulty=True), "difficulty", "1..10"),
        (TaskSpec("t", difficulty=2.0), "difficulty", "1..10"),  # type: ignore[arg-type]
        (TaskSpec("t", payload=b"x" * 17), "payload", "<= 16 bytes"),
        (TaskSpec("t", payload="text"), "payload", None),  # type: ignore[arg-type]
        (TaskSpec("bad name!"), "type", "[A-Za-z0-9][A-Za-z0-9_.:/@+-]*"),
        (TaskSpec(""), "type", "1..128 chars"),
        (TaskSpec("x" * 129), "type", "1..128 chars"),
        (TaskSpec(7), "type", None),  # type: ignore[arg-type]
        (TaskSpec("t", priority="urgent"), "priority", "critical|high|medium|low"),
        (TaskSpec("t", priority=1), "priority", "critical|high|medium|low"),  # type: ignore[arg-type]
        (TaskSpec("t", max_retries=-1), "max_retries", "0..100"),
        (TaskSpec("t", max_retries=101), "max_retries", "0..100"),
        (TaskSpec("t", timeout_s=0), "timeout_s", "> 0 and <= 604800"),
        (TaskSpec("t", timeout_s=-1.0), "timeout_s", "> 0 and <= 604800"),
        (TaskSpec("t", timeout_s=math.inf), "timeout_s", "> 0 and <= 604800"),
        (TaskSpec("t", timeout_s=math.nan), "timeout_s", "> 0 and <= 604800"),
        (TaskSpec("t", timeout_s=604801.0), "timeout_s", "> 0 and <= 604800"),
        (TaskSpec("t", delay_s=-1.0), "delay_s", ">= 0 and <= 2.592e+06"),
        (TaskSpec("t", context={"k": 1}), "context", None),  # type: ignore[dict-item]
        (TaskSpec("t", context={1: "v"}), "context", None),  # type: ignore[dict-item]
        (TaskSpec("t", context="k=v"), "context", None),  # type: ignore[arg-type]
        (TaskSpec("t", required_capabilities="gpu"), "required_capabilities", None),
        (
            TaskSpec("t", required_capabilities=["ok", "not ok"]),
            "required_capabilities",
            "[A-Za-z0-9][A-Za-z0-9_.:/@+-]*",
        ),
        (TaskSpec("t", dependencies=[""]), "dependencies", "1..128 chars"),
        (TaskSpec("t", idempotency_key=""), "idempotency_key", "1..256 chars"),
        (TaskSpec("t", id="has space"), "id", "[A-Za-z0-9][A-Za-z0-9_.:/@+-]*"),
    ],
)
def test_validation_names_the_field_and_limit(spec: TaskSpec, field: str, limit: str | None) -> None:
    core = make_core(limits=BIG)
    core.submit([TaskSpec("t", id="existing")], S)
    before = state(core)
    batch = [TaskSpec("t"), TaskSpec("t", priority=HIGH), spec]
    with pytest.raises(ValidationError) as ei:
        core.submit(batch, 2 * S)
    e = ei.value
    assert (e.field, e.index, e.limit) == (field, 2, limit)
    assert str(e).startswith(f"specs[2].{field}: ")
    if limit is not None:
        assert str(e).endswith(f"(limit: {limit})")
    assert state(core) == before


def test_validation_of_the_batch_itself() -> None:
    core = make_core(limits=Limits(max_batch=2))
    with pytest.raises(ValidationError) as ei:
        core.submit([TaskSpec("t")] * 3, S)
    assert (ei.value.field, ei.value.limit) == ("specs", "<= 2")
    with pytest.raises(ValidationError) as ei:
        core.submit(TaskSpec("t"), S)  # type: ignore[arg-type]
    assert str(ei.value) == "specs: expected a sequence of TaskSpec, got one TaskSpec (pass [spec])"
    with pytest.raises(ValidationError) as ei:
        core.submit("t", S)  # type: ignore[arg-type]
    assert str(ei.value) == "specs: expected a sequence of TaskSpec, got str"
    with pytest.raises(ValidationError) as ei:
        core.submit([("t",)], S)  # type: ignore[list-item]
    assert (ei.value.field, ei.value.index) == ("spec", 0)
    assert core.tasks == {}
    assert not core.out


def test_task_ids_do_not_fill_the_name_cache() -> None:
    """Explicit ids and dependency ids are checked without being remembered: the cache of
    names (65,536 entries) is for task types and capabilities, which recur."""
    core = make_core()
    ids = [f"job-{i}" for i in range(70_000)]
    for i in range(0, len(ids), 10_000):
        core.submit([TaskSpec("t", id=tid) for tid in ids[i : i + 10_000]], S)
    core.submit([TaskSpec("t", dependencies=ids[:256])], S)
    assert not any(tid in model._seen_names for tid in ids[:256] + ids[-100:])
    core.submit([TaskSpec("a-type-never-seen-before")], S)
    assert "a-type-never-seen-before" in model._seen_names  # new types still get the fast path


@pytest.mark.parametrize(
    ("spec", "field", "limit"),
    [
        (WorkerSpec("w", skill=0), "skill", "1..10"),
        (WorkerSpec("w", skill=11), "skill", "1..10"),
        (WorkerSpec("w", concurrency=0), "concurrency", "1..10000"),
        (WorkerSpec("w", concurrency=True), "concurrency", "1..10000"),
        (WorkerSpec("bad id"), "worker_id", "[A-Za-z0-9][A-Za-z0-9_.:/@+-]*"),
        (WorkerSpec("w", capabilities=["a b"]), "capabilities", "[A-Za-z0-9][A-Za-z0-9_.:/@+-]*"),
    ],
)
def test_worker_validation(spec: WorkerSpec, field: str, limit: str) -> None:
    core = make_core()
    with pytest.raises(ValidationError) as ei:
        core.register_worker(spec, 0)
    assert (ei.value.field, ei.value.limit) == (field, limit)
    assert core.workers == {}
    assert not core.out


@pytest.mark.parametrize("max_tasks", [0, -1, 10_001, True, 1.0])
def test_claim_validates_max_tasks(max_tasks: Any) -> None:
    core = make_core()
    core.register_worker(WorkerSpec("w"), 0)
    with pytest.raises(ValidationError) as ei:
        core.claim("w", max_tasks, S)
    assert (ei.value.field, ei.value.limit) == ("max_tasks", "1..10000")


def test_unknown_worker() -> None:
    core = make_core()
    for call in (
        lambda: core.claim("ghost", 1, S),
        lambda: core.heartbeat("ghost", S),
        lambda: core.deregister_worker("ghost", S),
        lambda: core.worker_info("ghost"),
    ):
        with pytest.raises(WorkerNotFoundError):
            call()


# ---------------------------------------------------------------------------- advice


def test_autoscaling_advice() -> None:
    core = make_core()
    assert (core.advice().action, core.advice().recommended_workers) == ("hold", 0)
    core.submit([TaskSpec("t")], S)
    adv = core.advice()  # no slot: the load is the demand itself, as if there were one slot
    assert (adv.load, adv.action, adv.recommended_workers, adv.delta) == (1.0, "scale_up", 1, 1)

    core.register_worker(WorkerSpec("w1", concurrency=2), S)
    core.submit([TaskSpec("t")], S)
    adv = core.advice()  # 2 / 2 = 1.0 > 0.7
    assert (adv.load, adv.workers, adv.action, adv.recommended_workers) == (1.0, 1, "scale_up", 2)
    core.claim("w1", 2, S)
    assert core.advice().load == 1.0  # running work counts too

    core2 = make_core()
    for i in range(3):
        core2.register_worker(WorkerSpec(f"w{i}"), 0)
    core2.submit([TaskSpec("t")], S)
    adv = core2.advice()  # 1 / 3 < 0.35
    assert (adv.action, adv.workers, adv.recommended_workers) == ("scale_down", 3, 2)
    core2.submit([TaskSpec("t")], S)
    adv = core2.advice()  # 2 / 3: between half the target and the target
    assert (adv.action, adv.recommended_workers) == ("hold", 3)

    core3 = make_core()
    core3.register_worker(WorkerSpec("w", concurrency=10), 0)
    core3.submit([TaskSpec("t")] * 7, S)
    assert (core3.advice().load, core3.advice().action) == (0.7, "hold")  # at the target exactly
    core3.submit([TaskSpec("t")], S)
    assert core3.advice().action == "scale_up"

    core4 = make_core()
    core4.register_worker(WorkerSpec("only", concurrency=10), 0)
    core4.submit([TaskSpec("t")], S)
    assert core4.advice().action == "hold"  # low load, but the last worker stays


# ---------------------------------------------------------------------------- restore


def _records(core: Core) -> list[Task]:
    return [dataclasses.replace(t) for t in core.tasks.values()]


def _worker_record(core: Core, wid: str, **changes: Any) -> WorkerState:
    w = core.workers[wid]
    fields: dict[str, Any] = {
        "id": w.id,
        "capabilities": w.capabilities,
        "skill": w.skill,
        "concurrency": w.concurrency,
        "registered_ns": w.registered_ns,
        "last_seen_ns": w.last_seen_ns,
        "healthy": w.healthy,
        "completed": w.completed,
        "failed": w.failed,
        "timed_out": w.timed_out,
        "success_rate": w.success_rate,
        "avg_completion_s": w.avg_completion_s,
        "busy_s": w.busy_s,
        "unhealthy_since_ns": w.unhealthy_since_ns,
    }
    fields.update(changes)
    return WorkerState(**fields)


def test_restore_rebuilds_the_same_line_order() -> None:
    rng = random.Random(5)
    core = make_core(aging_s=10.0)
    core.register_worker(WorkerSpec("w", capabilities=["a", "b"], concurrency=1000), 0)
    for i in range(60):
        spec = TaskSpec(
            rng.choice(["x", "y"]),
            priority=rng.choice(list(Priority)),
            difficulty=rng.randint(1, 4),
            required_capabilities=rng.choice([(), ("a",), ("a", "b")]),
        )
        core.submit([spec], (i // 3) * S)  # three at a time: same-time ties too
    # some go through a failure and come back later in line, each at its own time
    for lease in core.claim("w", 10, 30 * S):
        core.fail(lease, "e", 30 * S)
    for nb in sorted(t.not_before_ns for t in core.tasks.values() if t.queued_ns is None):
        core.tick(nb)
    assert core.status_counts() == counts(queued=60)
    records = _records(core)
    workers = [_worker_record(core, "w")]

    fresh = make_core(seed=99, aging_s=10.0)
    fresh.restore(records, workers, 200 * S)
    assert drained(fresh) == expect()
    assert fresh.status_counts() == core.status_counts()
    assert fresh.priority_counts() == core.priority_counts()
    assert fresh.type_counts() == core.type_counts()
    expected = ids_of(core.claim("w", 1000, 200 * S))
    assert len(expected) == 60
    assert ids_of(fresh.claim("w", 1000, 200 * S)) == expected


def test_restore_rewatches_leases_and_requeues_orphans() -> None:
    core = make_core()
    for wid in ("w1", "w2", "w3"):
        core.register_worker(WorkerSpec(wid), 0)
    low = core.submit([TaskSpec("t", priority=LOW)], 1 * S)[0]
    crit = core.submit([TaskSpec("t", priority=CRITICAL, timeout_s=10)], 2 * S)[0]
    med = core.submit([TaskSpec("t", priority=MEDIUM)], 3 * S)[0]
    high = core.submit([TaskSpec("t", priority=HIGH)], 4 * S)[0]
    [pend] = core.submit([TaskSpec("t", dependencies=[crit])], 4 * S)
    assert ids_of(core.claim("w1", 1, 5 * S)) == [crit]  # deadline 15 s
    assert ids_of(core.claim("w2", 1, 5 * S)) == [high]
    assert ids_of(core.claim("w3", 1, 5 * S)) == [med]
    records = _records(core)
    # w2 is gone (no record), w3 was unhealthy when the node stopped
    workers = [_worker_record(core, "w1"), _worker_record(core, "w3", healthy=False, unhealthy_since_ns=6 * S)]

    fresh = make_core(seed=99)
    fresh.restore(records, workers, 12 * S)
    assert drained(fresh) == expect(
        saved={med: QUEUED, high: QUEUED},
        events=[(UPD, med, QUEUED), (UPD, high, QUEUED)],
        counters={"retried": 2},
    )
    statuses = {tid: t.status for tid, t in fresh.tasks.items()}
    assert statuses == {low: QUEUED, crit: ASSIGNED, med: QUEUED, high: QUEUED, pend: PENDING}
    assert fresh.status_counts() == counts(queued=3, assigned=1, pending=1)
    assert (fresh.tasks[high].error, fresh.tasks[med].error) == ("worker w2 is gone", "worker w3 is gone")
    # back in line in record order, at consecutive nanoseconds (queue times are unique)
    assert (fresh.tasks[med].failures, fresh.tasks[med].queued_ns) == (1, 12 * S)
    assert (fresh.tasks[high].failures, fresh.tasks[high].queued_ns) == (1, 12 * S + 1)
    assert fresh.workers["w1"].active == {crit}
    assert fresh.workers["w3"].active == set()
    # w1 keeps its lease but is of unknown health until it is heard from: its slot does not count
    assert (fresh.workers["w1"].health, fresh.workers["w3"].health) == ("unknown", "unhealthy")
    assert fresh.capacity() == (0, 0)
    assert fresh.heartbeat("w1", 12 * S).healthy
    assert fresh.capacity() == (1, 1)
    assert fresh.next_deadline_ns() == 15 * S  # the lease of crit

    # line: high (12 + 60 s), low (1 + 180 s), med (12 + 120 s)
    fresh.register_worker(WorkerSpec("w4", concurrency=5), 12 * S)
    w4_leases = fresh.claim("w4", 5, 12 * S)
    assert ids_of(w4_leases) == [high, med, low]
    for lease in w4_leases:
        fresh.complete(lease, b"", 13 * S)

    fresh.drain()
    fresh.tick(15 * S - 1)
    assert drained(fresh) == expect()
    fresh.tick(15 * S)  # the re-watched lease expires
    assert drained(fresh) == expect(
        saved={crit: QUEUED}, workers=["w1"], events=[(UPD, crit, QUEUED)], counters={"timed_out": 1, "retried": 1}
    )
    assert fresh.heartbeat("w1", 15 * S).revoked == ((crit, 1),)
    # the dependency is still tracked
    fresh.tick(fresh.tasks[crit].not_before_ns)
    [lc] = fresh.claim("w1", 1, fresh.tasks[crit].not_before_ns)
    fresh.drain()
    fresh.complete(lc, b"", 20 * S)
    assert drained(fresh) == expect(
        finished={crit: COMPLETED},
        saved={pend: QUEUED},
        workers=["w1"],
        events=[(UPD, crit, COMPLETED), (UPD, pend, QUEUED)],
    )


@pytest.mark.parametrize("outcome", [COMPLETED, FAILED])
def test_restore_with_dependents_in_any_record_order(outcome: TaskStatus) -> None:
    """Records come back from the store in no particular order; dependents are settled once."""
    core = make_core()
    core.submit(
        [
            TaskSpec("t", id="a"),
            TaskSpec("t", id="b", dependencies=["a"]),
            TaskSpec("t", id="c", dependencies=["a", "b"]),
        ],
        S,
    )
    fresh = make_core(seed=3)
    fresh.restore(list(reversed(_records(core))), [], 2 * S)
    assert fresh.status_counts() == counts(queued=1, pending=2)
    fresh.register_worker(WorkerSpec("w"), 2 * S)
    [la] = fresh.claim("w", 1, 2 * S)
    fresh.drain()
    if outcome is FAILED:
        fresh.fail(la, "a broke", 3 * S, retry=False)
        out = fresh.drain()
        assert view(out) == expect(
            finished={"a": FAILED, "b": FAILED, "c": FAILED},
            workers=["w"],
            events=[(UPD, "a", FAILED), (UPD, "b", FAILED), (UPD, "c", FAILED)],
        )
        assert (out.finished["b"].error, out.finished["c"].error) == ("dependency a failed", "dependency a failed")
        assert fresh.tasks == {}
        assert fresh.status_counts() == counts()
    else:
        fresh.complete(la, b"", 3 * S)
        assert drained(fresh) == expect(
            finished={"a": COMPLETED},
            saved={"b": QUEUED},
            workers=["w"],
            events=[(UPD, "a", COMPLETED), (UPD, "b", QUEUED)],
        )
        [lb] = fresh.claim("w", 1, 4 * S)
        assert lb.task_id == "b"
        fresh.drain()
        fresh.complete(lb, b"", 5 * S)
        assert drained(fresh) == expect(
            finished={"b": COMPLETED},
            saved={"c": QUEUED},
            workers=["w"],
            events=[(UPD, "b", COMPLETED), (UPD, "c", QUEUED)],
        )


def test_restore_then_tick_requeues_leases_that_expired_meanwhile() -> None:
    core = make_core()
    core.register_worker(WorkerSpec("w"), 0)
    [a] = core.submit([TaskSpec("t")], S)
    core.claim("w", 1, S)  # deadline 3 s
    fresh = make_core(seed=3)
    fresh.restore(_records(core), [_worker_record(core, "w")], 60 * S)
    assert fresh.tasks[a].status is ASSIGNED
    fresh.tick(60 * S)
    assert drained(fresh) == expect(
        saved={a: QUEUED}, workers=["w"], events=[(UPD, a, QUEUED)], counters={"timed_out": 1, "retried": 1}
    )
    assert fresh.tasks[a].error == "timed out after 2s (attempt 1)"


def test_restore_needs_an_empty_core_and_active_records() -> None:
    core = make_core()
    core.submit([TaskSpec("t")], S)
    with pytest.raises(RuntimeError):
        core.restore([], [], S)
    fresh = make_core()
    done = dataclasses.replace(_records(core)[0], status=COMPLETED)
    with pytest.raises(ValueError, match="terminal"):
        fresh.restore([done], [], S)


T0 = 1_700_000_000 * S


def test_delay_applies_to_a_task_with_dependencies_once_they_are_met() -> None:
    core = Core(CoreConfig(node_id="n"))
    core.register_worker(WorkerSpec("w", concurrency=5), T0)
    (parent,) = core.submit([TaskSpec("t")], T0)
    (child,) = core.submit([TaskSpec("t", dependencies=[parent], delay_s=10)], T0)
    (lease,) = core.claim("w", 5, T0)
    core.complete(lease, b"", T0 + S)
    t = core.tasks[child]
    assert t.status is TaskStatus.QUEUED and t.queued_ns is None and t.not_before_ns == T0 + 10 * S
    assert core.claim("w", 5, T0 + 9 * S) == []
    core.tick(T0 + 10 * S)
    assert [x.task_id for x in core.claim("w", 5, T0 + 10 * S)] == [child]


def test_cancel_frees_a_slot_for_the_worker_s_waiting_claim() -> None:
    core = Core(CoreConfig(node_id="n"))
    core.register_worker(WorkerSpec("w", concurrency=1), T0)
    running, queued = core.submit([TaskSpec("t"), TaskSpec("t")], T0)
    (_lease,) = core.claim("w", 1, T0)
    assert core.claim("w", 1, T0, wait=True) == []  # full: the claim waits
    core.drain()
    core.cancel(running, T0 + S)
    out = core.drain()
    assert [x.task_id for x in out.grants["w"]] == [queued]


# ---------------------------------------------------------------------------- review defects (issue 11)


def test_grants_accumulate_when_a_served_claim_waits_again() -> None:
    """A waiting claim is served, the worker waits again before the runtime drained the first
    grant: both grants reach it (an overwritten grant is a lease its worker never receives)."""
    core = make_core()
    core.register_worker(WorkerSpec("w", concurrency=4), 0)
    assert core.claim("w", 2, S, wait=True) == []
    core.drain()
    [a] = core.submit([TaskSpec("t")], 2 * S)
    assert core.claim("w", 2, 3 * S, wait=True) == []  # the line is empty: it waits again
    [b] = core.submit([TaskSpec("t")], 4 * S)
    assert view(core.drain())["grants"] == {"w": [(a, 1), (b, 1)]}
    assert core.workers["w"].active == {a, b}


def test_load_is_leased_plus_ready_over_healthy_slots() -> None:
    core = make_core(backoff_base_s=10.0)
    assert core.load() == Load(0, 0, 0, 0, 0, 0, 0.0)  # no slot and no work: 0, not a division
    core.register_worker(WorkerSpec("w", concurrency=4), 0)
    a, b = core.submit([TaskSpec("t", timeout_s=100), TaskSpec("t")], S)
    core.submit([TaskSpec("t", delay_s=30), TaskSpec("t", dependencies=[b])], S)
    [lease] = core.claim("w", 1, S)
    assert lease.task_id == a
    assert core.load() == Load(leased=1, ready=1, delayed=1, pending=1, handing_off=0, slots=4, ratio=0.5)
    assert core.advice().load == 0.5  # the advice reads the same load
    core.fail(lease, "boom", 2 * S)  # retried after a backoff: delayed, not load
    assert core.load() == Load(leased=0, ready=1, delayed=2, pending=1, handing_off=0, slots=4, ratio=0.25)
    assert core.advice().load == 0.25
    core.tick(40 * S)  # both not-before times passed
    assert core.load()[:5] == (0, 3, 0, 1, 0)
    core.deregister_worker("w", 41 * S)
    assert (core.load().slots, core.load().ratio) == (0, 3.0)  # no slot: the demand itself
    core.register_worker(WorkerSpec("w2", concurrency=2), 42 * S)
    assert core.load().ratio == 1.5


def test_load_follows_worker_health() -> None:
    core = make_core()
    core.register_worker(WorkerSpec("a", concurrency=3), 0)
    core.register_worker(WorkerSpec("b", concurrency=5), 10 * S)
    assert core.load().slots == 8
    core.tick(15 * S + 1)  # a missed its heartbeats
    assert (core.load().slots, core.capacity()) == (5, (1, 5))
    core.heartbeat("a", 16 * S)
    assert core.load().slots == 8
    core.register_worker(WorkerSpec("b", concurrency=1), 17 * S)  # registered again, smaller
    assert core.load().slots == 4


def test_registering_again_starts_a_new_incarnation() -> None:
    """After a node restart the same worker id registers again: what its old incarnation held
    goes back in line at once (not after every lease timed out), and the old leases are stale."""
    core = make_core()
    core.register_worker(WorkerSpec("w", concurrency=3), 0)
    ids = core.submit([TaskSpec("t", timeout_s=1000) for _ in range(3)], S)
    old = core.claim("w", 3, S)
    fresh = make_core(seed=5)
    fresh.restore(_records(core), [_worker_record(core, "w")], 5 * S)
    assert fresh.workers["w"].health == "unknown" and fresh.workers["w"].active == set(ids)
    fresh.drain()
    fresh.register_worker(WorkerSpec("w", concurrency=3), 6 * S)
    out = view(fresh.drain())
    assert out["saved"] == dict.fromkeys(ids, QUEUED) and out["counters"] == Counter({"retried": 3})
    new = fresh.claim("w", 3, 6 * S)
    assert sorted((lease.task_id, lease.attempt) for lease in new) == sorted((tid, 2) for tid in ids)
    before = state(fresh)
    for lease in old:
        with pytest.raises(StaleLeaseError):
            fresh.complete(lease, b"late", 7 * S)
        with pytest.raises(StaleLeaseError):
            fresh.fail(lease, "late", 7 * S)
        with pytest.raises(StaleLeaseError):
            fresh.start(lease, 7 * S)
    assert state(fresh) == before
    w = fresh.workers["w"]
    assert (w.failed, w.success_rate) == (0, 1.0)  # a new incarnation is not the worker's failure
    assert fresh.heartbeat("w", 8 * S).revoked == tuple(sorted((tid, 1) for tid in ids))


def test_registering_again_without_a_restart_also_starts_a_new_incarnation() -> None:
    core = make_core()
    core.register_worker(WorkerSpec("w", concurrency=2), 0)
    [a] = core.submit([TaskSpec("t")], S)
    [old] = core.claim("w", 1, S)
    core.register_worker(WorkerSpec("w", capabilities=["gpu"], concurrency=2), 2 * S)
    assert core.tasks[a].status is QUEUED
    with pytest.raises(StaleLeaseError):
        core.complete(old, b"", 3 * S)
    [new] = core.claim("w", 1, 3 * S)
    assert (new.task_id, new.attempt) == (a, 2)


def test_a_worker_loaded_at_recovery_is_unknown_until_heard_from_then_lost() -> None:
    core = make_core()  # heartbeat timeout 15 s
    core.register_worker(WorkerSpec("w", concurrency=2), 0)
    [a] = core.submit([TaskSpec("t", timeout_s=1000)], S)
    core.claim("w", 1, S)
    fresh = make_core(seed=5)
    fresh.restore(_records(core), [_worker_record(core, "w")], 100 * S)
    [b] = fresh.submit([TaskSpec("t")], 100 * S)
    assert fresh.load().slots == 0
    assert fresh.next_deadline_ns() == 115 * S + 1  # its grace period
    fresh.drain()
    fresh.tick(115 * S + 1)  # never heard from: lost, its lease goes back in line
    assert drained(fresh) == expect(
        saved={a: QUEUED}, workers=["w"], events=[(UPD, a, QUEUED)], counters={"workers_lost": 1, "retried": 1}
    )
    assert fresh.workers["w"].health == "unhealthy"
    assert {lease.task_id for lease in fresh.claim("w", 2, 116 * S)} == {a, b}  # a claim: it is back


def test_dispatch_uses_the_tested_score(monkeypatch: pytest.MonkeyPatch) -> None:
    """The score that decides which waiting worker gets new work is workers.score() itself."""
    core = make_core()
    _two_waiting(core)
    assert core.claim("first", 1, S, wait=True) == []
    assert core.claim("second", 1, S, wait=True) == []
    monkeypatch.setattr(engine, "score", lambda w, t, fast: 1.0 if w.id == "second" else 0.0)
    [t] = core.submit([TaskSpec("t")], 2 * S)
    assert view(core.drain())["grants"] == {"second": [(t, 1)]}


def test_worker_statistics_learn_the_same_from_every_way_a_lease_ends() -> None:
    """Completion, failure, lease expiry and lost heartbeats all update the worker's time
    spent and completion-time average the same way (one function)."""

    def held_for_2s(end: str) -> WorkerState:
        core = make_core(heartbeat_timeout_s=2.0)
        core.register_worker(WorkerSpec("w"), 0)
        core.submit([TaskSpec("t", timeout_s=2.0 if end == "expiry" else 100.0)], 0)
        [lease] = core.claim("w", 1, 0)
        if end == "complete":
            core.complete(lease, b"", 2 * S)
        elif end == "fail":
            core.fail(lease, "x", 2 * S)
        elif end == "expiry":
            core.heartbeat("w", 2 * S)
            core.tick(2 * S)
        else:  # lost: silent for the heartbeat timeout
            core.tick(2 * S + 1)
        return core.workers["w"]

    done = held_for_2s("complete")
    assert (done.busy_s, done.avg_completion_s, done.completed, done.success_rate) == (2.0, 0.2, 1, 1.0)
    for end in ("fail", "expiry", "lost"):
        w = held_for_2s(end)
        assert w.busy_s == pytest.approx(2.0, abs=1e-8), end
        assert w.avg_completion_s == pytest.approx(0.2, abs=1e-8), end
        assert (w.completed, w.failed, w.success_rate) == (0, 1, pytest.approx(0.9)), end
    assert held_for_2s("expiry").timed_out == 1


def test_a_report_on_an_older_attempt_by_the_same_worker_is_stale() -> None:
    """The task timed out, was retried and claimed again by the same worker: the worker's
    report on its first lease must not complete (or fail, or start) the second attempt."""
    core = make_core(backoff_base_s=1.0)
    core.register_worker(WorkerSpec("w"), 0)
    [a] = core.submit([TaskSpec("t", timeout_s=5)], 0)
    [old] = core.claim("w", 1, 0)
    core.heartbeat("w", 5 * S)
    core.tick(5 * S)  # the lease expired; the retry waits out a backoff of 0.5-1 s
    core.tick(7 * S)
    [new] = core.claim("w", 1, 7 * S)
    assert (new.task_id, new.worker_id, old.worker_id, new.attempt, old.attempt) == (a, "w", "w", 2, 1)
    core.drain()
    before = state(core)
    with pytest.raises(StaleLeaseError, match="attempt 1 is stale"):
        core.complete(old, b"from attempt 1", 8 * S)
    with pytest.raises(StaleLeaseError):
        core.fail(old, "from attempt 1", 8 * S)
    with pytest.raises(StaleLeaseError):
        core.start(old, 8 * S)
    assert state(core) == before and drained(core) == expect()
    core.complete(new, b"from attempt 2", 9 * S)
    assert view(core.drain())["finished"] == {a: COMPLETED}


# ---------------------------------------------------------------------------- validate, story


def _busy_core() -> tuple[Core, dict[str, str]]:
    """A core with a task in every active status, workers healthy, lost and waiting."""
    core = make_core(backoff_base_s=10.0)
    core.register_worker(WorkerSpec("w", concurrency=4), 0)
    core.register_worker(WorkerSpec("idle", capabilities=["gpu"]), 0)
    leased, ready, retried = core.submit([TaskSpec("t", timeout_s=99) for _ in range(3)], S)
    [delayed] = core.submit([TaskSpec("t", delay_s=50, idempotency_key="k")], S)
    [pending] = core.submit([TaskSpec("t", dependencies=[leased])], S)
    leases = core.claim("w", 2, 2 * S)
    assert [lease.task_id for lease in leases] == [leased, ready]
    core.fail(leases[1], "boom", 3 * S)  # back after a backoff
    [lease] = core.claim("w", 1, 3 * S)
    assert lease.task_id == retried
    core.start(lease, 3 * S)
    core.claim("idle", 1, 3 * S, wait=True)
    core.drain()
    return core, {"leased": leased, "ready": ready, "running": retried, "delayed": delayed, "pending": pending}


def test_validate_accepts_a_busy_core() -> None:
    core, ids = _busy_core()
    core.validate()
    assert {ids["leased"], ids["running"]} == core.workers["w"].active


def _first_deque_holding(core: Core, tid: str) -> Any:
    for cls in core._queues.classes.values():
        for dq in cls.deques:
            if any(t.id == tid for t in dq):
                return cls, dq
    raise AssertionError(tid)


def _drop_from_line(core: Core, tid: str) -> None:
    cls, dq = _first_deque_holding(core, tid)
    dq.remove(core.tasks[tid])
    cls.size -= 1


def _twice_in_line(core: Core, tid: str) -> None:
    cls, dq = _first_deque_holding(core, tid)
    dq.append(core.tasks[tid])
    cls.size += 1


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda c, ids: c._by_status.__setitem__(QUEUED, 9), "status counts"),
        (lambda c, ids: setattr(c, "_n_delayed", 0), "delayed counter 0"),
        (lambda c, ids: setattr(c, "_slots", 99), "capacity"),
        (lambda c, ids: c._delayed.clear(), "without a timer"),
        (lambda c, ids: c._leases.queues.clear(), "is not watched"),
        (lambda c, ids: c.workers["w"].active.add("ghost"), "worker w holds"),
        (lambda c, ids: c._deps.unmet.pop(ids["pending"]), "waits on nothing"),
        (lambda c, ids: c._idem.__setitem__("k2", ids["pending"]), "idempotency key 'k2'"),
        (lambda c, ids: setattr(c.tasks[ids["pending"]], "handoff_peer", "n2"), "names hand-off peer"),
        (lambda c, ids: c._waiters.__setitem__("w-gone", 1), "a claim of 'w-gone' waits"),
        (lambda c, ids: setattr(c.tasks[ids["leased"]], "assigned_worker", "nobody"), "unknown worker 'nobody'"),
    ],
)
def test_validate_names_what_is_broken(corrupt: Any, message: str) -> None:
    core, ids = _busy_core()
    corrupt(core, ids)
    with pytest.raises(InvariantError, match="invariant") as ei:
        core.validate()
    assert any(message in p for p in ei.value.problems), ei.value.problems


def test_validate_sees_the_ready_queues_and_the_tasks_disagree() -> None:
    core, ids = _busy_core()
    core.tick(60 * S)  # every retry and delay is due: their tasks are in line
    core.validate()
    ready = next(t.id for t in core.tasks.values() if t.status is QUEUED)
    _twice_in_line(core, ready)
    with pytest.raises(InvariantError, match="in line twice"):
        core.validate()
    core, ids = _busy_core()
    core.tick(60 * S)
    _drop_from_line(core, ids["delayed"])
    with pytest.raises(InvariantError, match="ready queues differ"):
        core.validate()


def test_story_keeps_each_recent_task_s_transitions() -> None:
    core = make_core(story_tasks=2)
    core.want_events(False)  # nobody listens: the story log still gets its events
    core.register_worker(WorkerSpec("w"), 0)
    [a] = core.submit([TaskSpec("t")], S)
    [lease] = core.claim("w", 1, 2 * S)
    core.complete(lease, b"", 3 * S)
    core.drain()
    assert [(e.at_ns, e.status, e.worker_id, e.attempt) for e in core.story(a)] == [
        (S, QUEUED, None, 0),
        (2 * S, ASSIGNED, "w", 1),
        (3 * S, COMPLETED, "w", 1),
    ]
    b, c = core.submit([TaskSpec("t"), TaskSpec("t")], 4 * S)
    core.drain()
    assert core.story(a) == [] and len(core.story(b)) == 1 and len(core.story(c)) == 1  # a was forgotten
    assert make_core().story(a) == []  # off by default


def test_a_dependency_that_was_cancelled_fails_a_new_dependent() -> None:
    core = make_core()
    [t] = core.submit([TaskSpec("t", dependencies=["gone"])], S, known={"gone": CANCELLED})
    assert view(core.drain())["finished"] == {t: FAILED}
    core2 = make_core()
    [t2] = core2.submit([TaskSpec("t", dependencies=["gone"])], S, known={"gone": COMPLETED})
    assert core2.tasks[t2].status is QUEUED


def test_a_delayed_task_cancelled_or_restored_keeps_the_delayed_count_exact() -> None:
    core = make_core()
    [d] = core.submit([TaskSpec("t", delay_s=50)], S)
    assert core.load().delayed == 1
    core.cancel(d, 2 * S)
    assert (core.load().delayed, core.load().ready) == (0, 0)
    core.validate()
    core = make_core()
    [d] = core.submit([TaskSpec("t", delay_s=50)], S)
    fresh = make_core(seed=3)
    fresh.restore(_records(core), [], 2 * S)
    assert (fresh.load().delayed, fresh.load().ready) == (1, 0)
    fresh.validate()


def test_fifo_within_a_priority_through_the_general_submit_path() -> None:
    core = make_core()
    core.register_worker(WorkerSpec("w", concurrency=10), 0)
    ids = []
    for i in range(4):  # idempotency keys take the general path (push), not the plain one
        ids += core.submit([TaskSpec("t", idempotency_key=f"k{i}")], S + i)
    assert [lease.task_id for lease in core.claim("w", 10, 10 * S)] == ids


def test_unlease_puts_undelivered_leases_back_uncounted_and_stales_them() -> None:
    core = make_core()
    ids = core.submit([TaskSpec("t"), TaskSpec("t")], 1)
    core.register_worker(WorkerSpec("w", concurrency=2), 1)
    first, second = core.claim("w", 2, 2)
    assert core.unlease([second], 3) == 1
    assert core.unlease([second], 4) == 0  # not current any more: left alone
    t = core.get(second.task_id)
    assert t is not None and (t.status, t.failures, t.attempt, t.assigned_worker) == (TaskStatus.QUEUED, 0, 1, None)
    assert core.worker_info("w").active == 1 and core.worker_info("w").failed == 0
    with pytest.raises(StaleLeaseError):
        core.complete(second, b"", 5)
    core.complete(first, b"", 5)
    (again,) = core.claim("w", 1, 6)
    assert (again.task_id, again.attempt) == (second.task_id, 2)
    core.validate()
    assert set(ids) == {first.task_id, second.task_id}
