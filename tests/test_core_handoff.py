"""The core's side of hand-off, command by command, with exact outputs: begin, finish, abort,
adopt (idempotent), status queries with tombstones, results reported back, dependents of a
handed-off task, restore with hand-offs in flight, and bad input changing nothing."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from node.core import Core, HandoffRecord, Outcome, RemoteStatus
from node.core.transfer import outcome_of, record_of
from node.errors import HandoffProtocolError, InvalidTransitionError, TaskNotFoundError, ValidationError
from node.model import Priority, TaskSpec, TaskStatus, WorkerSpec
from tests.test_core import NEW, UPD, expect, make_core, state, view

S = 1_000_000_000
QUEUED, HANDING_OFF, HANDED_OFF = TaskStatus.QUEUED, TaskStatus.HANDING_OFF, TaskStatus.HANDED_OFF
COMPLETED, FAILED, PENDING = TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.PENDING


def node(node_id: str, **config: Any) -> Core:
    core = make_core(**config)
    core.node_id = node_id  # make_core names every core n1
    core.config = dataclasses.replace(core.config, node_id=node_id)
    return core


def handed(a: Core, b: Core, n: int = 2) -> list[str]:
    """Submit n tasks on a, hand them all to b (begin, adopt, finish); return their ids."""
    ids = a.submit([TaskSpec("job", payload=f"p{i}".encode()) for i in range(n)], S)
    a.begin_handoff(ids, "b", 2 * S)
    res = b.adopt([record_of(a.tasks[t]) for t in ids], "a", 3 * S)
    assert res.adopted == ids
    a.finish_handoff(ids, "b", 4 * S)
    a.drain()
    b.drain()
    return ids


def test_begin_adopt_finish_exact_outputs() -> None:
    a, b = node("a"), node("b")
    keep, x, y = a.submit([TaskSpec("job"), TaskSpec("job", payload=b"x"), TaskSpec("job")], S)
    a.drain()
    a.begin_handoff([x, y], "b", 2 * S)
    out = a.drain()
    # the stored records stay as they are (queued): an intent beside them names the peer
    assert view(out) == expect(events=[(UPD, x, HANDING_OFF), (UPD, y, HANDING_OFF)])
    assert out.intents == {x: "b", y: "b"}
    assert a.load()[:5] == (0, 1, 0, 0, 2)  # leased, ready, delayed, pending, handing_off
    assert a.tasks[x].handoff_peer == "b" and a.handoffs_in_flight() == {"b": [x, y]}
    a.validate()

    records = [record_of(a.tasks[x]), record_of(a.tasks[y])]
    res = b.adopt(records, "a", 3 * S)
    assert (res.adopted, res.already, res.refused) == ([x, y], [], {})
    out = b.drain()
    assert view(out) == expect(
        saved={x: QUEUED, y: QUEUED}, events=[(NEW, x, QUEUED), (NEW, y, QUEUED)], counters={"adopted": 2}
    )
    assert out.adopted == {"job": 2}
    t = b.tasks[x]
    assert (t.origin_node, t.owner_node, t.from_node, t.hops, t.payload) == ("a", "b", "a", 1, b"x")
    b.validate()

    a.finish_handoff([x, y], "b", 4 * S)
    out = a.drain()
    assert view(out) == expect(
        finished={x: HANDED_OFF, y: HANDED_OFF}, events=[(UPD, x, HANDED_OFF), (UPD, y, HANDED_OFF)]
    )
    assert out.intents_done == {x, y} and not out.intents
    assert set(a.tasks) == {keep} and a.load().handing_off == 0
    a.validate()


def test_a_repeated_transfer_changes_nothing_and_gets_the_same_answer() -> None:
    a, b = node("a"), node("b")
    ids = a.submit([TaskSpec("job"), TaskSpec("job")], S)
    a.begin_handoff(ids, "b", 2 * S)
    records = [record_of(a.tasks[t]) for t in ids]
    b.adopt(records, "a", 3 * S)
    b.drain()
    before = state(b)
    again = b.adopt(records, "a", 4 * S)
    assert (again.adopted, again.already, again.owned) == ([], ids, ids)
    assert state(b) == before and not b.out
    # one of them finished at b meanwhile: still "already", from the archive the runtime passes in
    b.register_worker(WorkerSpec("w"), 5 * S)
    [lease] = b.claim("w", 1, 5 * S)
    b.complete(lease, b"done", 6 * S)
    finished = b.drain().finished
    assert b.adopt(records, "a", 7 * S, known=finished).already == ids


def test_abort_puts_tasks_back_at_their_old_place_in_line() -> None:
    a = node("a")
    first, middle, last = a.submit([TaskSpec("job") for _ in range(3)], S)
    a.begin_handoff([middle], "b", 2 * S)
    [newer] = a.submit([TaskSpec("job")], 3 * S)
    a.drain()
    a.abort_handoff([middle], 4 * S)
    out = a.drain()
    assert view(out) == expect(events=[(UPD, middle, QUEUED)])  # its stored record never left its place
    assert out.intents_done == {middle}
    a.validate()
    a.register_worker(WorkerSpec("w", concurrency=10), 5 * S)
    assert [lease.task_id for lease in a.claim("w", 10, 5 * S)] == [first, middle, last, newer]


def test_an_aborted_task_goes_to_a_waiting_claim() -> None:
    a = node("a")
    [t] = a.submit([TaskSpec("job")], S)
    a.begin_handoff([t], "b", 2 * S)
    a.register_worker(WorkerSpec("w"), 2 * S)
    assert a.claim("w", 1, 2 * S, wait=True) == []
    a.drain()
    a.abort_handoff([t], 3 * S, peer="b")
    assert view(a.drain())["grants"] == {"w": [(t, 1)]}
    a.validate()


def _refusals(core: Core, ids: dict[str, str]) -> list[tuple[list[str], str, type[Exception], str]]:
    return [
        (["nope"], "b", TaskNotFoundError, "not found"),
        ([ids["pending"]], "b", InvalidTransitionError, "it is pending"),
        ([ids["delayed"]], "b", InvalidTransitionError, "waiting for its start time"),
        ([ids["leased"]], "b", InvalidTransitionError, "it is assigned"),
        ([ids["parent"]], "b", InvalidTransitionError, "awaited by tasks here"),
        ([ids["ready"], ids["ready"]], "b", ValidationError, "the same task id twice"),
        ([ids["ready"]], "a", ValidationError, "is this node"),
        ([ids["ready"]], "bad peer", ValidationError, "peer"),
        ([ids["ready"], "nope"], "b", TaskNotFoundError, "not found"),  # all or nothing
    ]


def test_begin_refuses_what_must_stay_home_and_changes_nothing() -> None:
    a = node("a")
    a.register_worker(WorkerSpec("w"), 0)
    leased, parent, ready = a.submit([TaskSpec("job"), TaskSpec("job"), TaskSpec("job")], S)
    [delayed] = a.submit([TaskSpec("job", delay_s=60)], S)
    [pending] = a.submit([TaskSpec("job", dependencies=[leased, parent])], S)
    assert [lease.task_id for lease in a.claim("w", 1, S)] == [leased]
    a.drain()
    ids = {"leased": leased, "parent": parent, "ready": ready, "delayed": delayed, "pending": pending}
    before = state(a)
    for task_ids, peer, err, match in _refusals(a, ids):
        with pytest.raises(err, match=match):
            a.begin_handoff(task_ids, peer, 2 * S)
        assert state(a) == before and not a.out, (task_ids, peer)
    assert a.handoff_candidates(10) == [ready]  # the only one that may go


def test_the_hop_limit_keeps_a_task_where_it_is() -> None:
    a, b, c = node("a"), node("b"), node("c")
    [t] = handed(a, b, 1)
    assert b.tasks[t].hops == 1 and b.handoff_candidates(5) == [t]
    b.begin_handoff([t], "c", 5 * S)
    c.adopt([record_of(b.tasks[t])], "b", 6 * S)
    assert (c.tasks[t].hops, c.tasks[t].origin_node, c.tasks[t].from_node) == (2, "a", "b")
    assert c.handoff_candidates(5) == []
    with pytest.raises(InvalidTransitionError, match="at 2 hops"):
        c.begin_handoff([t], "a", 7 * S)
    too_far = record_of(c.tasks[t])
    with pytest.raises(ValidationError, match=r"records\[0\]\.hops: 2 hops already"):
        a.adopt([too_far], "c", 8 * S)


def test_finish_and_abort_only_for_the_peer_the_task_was_handed_to() -> None:
    a = node("a")
    x, y = a.submit([TaskSpec("job"), TaskSpec("job")], S)
    a.begin_handoff([x], "b", 2 * S)
    a.drain()
    before = state(a)
    with pytest.raises(HandoffProtocolError, match="being handed to 'b'"):
        a.finish_handoff([x], "c", 3 * S)
    with pytest.raises(HandoffProtocolError, match="which is queued"):
        a.finish_handoff([x, y], "b", 3 * S)  # y was never offered: nothing applied
    with pytest.raises(HandoffProtocolError, match="not active here"):
        a.abort_handoff(["ghost"], 3 * S, peer="b")
    with pytest.raises(InvalidTransitionError):
        a.abort_handoff([y], 3 * S)
    assert state(a) == before and not a.out


def test_bad_records_are_refused_whole() -> None:
    a, b = node("a"), node("b")
    ids = a.submit([TaskSpec("job"), TaskSpec("job")], S)
    good = record_of(a.tasks[ids[0]])
    bad_spec = record_of(a.tasks[ids[1]])._replace(spec=TaskSpec("job", difficulty=11))
    cases: list[tuple[Any, str]] = [
        ([good, bad_spec], r"records\[1\]\.difficulty: 11 out of range"),
        ([good, ("x",)], r"records\[1\]\.record: must be a HandoffRecord"),
        ([good, good], "the same task id twice"),
        ([good._replace(task_id="bad id")], r"records\[0\]\.task_id"),
        ([good._replace(attempt=-1)], r"records\[0\]\.attempt"),
        ([good._replace(origin_node="")], r"records\[0\]\.origin_node"),
        (good, "expected a sequence of HandoffRecord"),
    ]
    for records, match in cases:
        with pytest.raises(ValidationError, match=match):
            b.adopt(records, "a", 2 * S)
        assert b.tasks == {} and not b.out
    with pytest.raises(ValidationError, match="is this node"):
        b.adopt([good], "b", 2 * S)


def test_an_id_declared_unknown_is_refused_when_its_transfer_arrives_late() -> None:
    a, b = node("a"), node("b")
    x, y = a.submit([TaskSpec("job"), TaskSpec("job")], S)
    a.begin_handoff([x, y], "b", 2 * S)
    b.adopt([record_of(a.tasks[x])], "a", 3 * S)
    b.drain()
    assert b.task_status([x, y], "a", 4 * S) == {x: RemoteStatus.OWNED, y: RemoteStatus.UNKNOWN}
    assert b.drain().refused == {y: 4 * S}  # durable before the answer goes out
    assert b.task_status([x], "c", 4 * S) == {x: RemoteStatus.UNKNOWN}  # not owned on c's behalf
    assert not b.drain().refused  # and not a tombstone: b holds it
    late = b.adopt([record_of(a.tasks[y])], "a", 5 * S)
    assert late.refused == {y: "declared unknown to a status query before this transfer arrived"}
    assert y not in b.tasks


def test_results_go_back_to_the_origin_once_and_are_not_counted_there_again() -> None:
    a, b = node("a"), node("b")
    x, y = handed(a, b)
    b.register_worker(WorkerSpec("w", concurrency=2), 5 * S)
    lx, ly = b.claim("w", 2, 5 * S)
    b.complete(lx, b"answer", 6 * S)
    b.fail(ly, "no", 6 * S, retry=False)
    out = b.drain()
    assert set(out.reports) == {x, y}
    reports = b.pending_reports()
    assert [(o.task_id, o.status, o.result, o.owner_node) for o in reports["a"]] == [
        (x, COMPLETED, b"answer", "b"),
        (y, FAILED, None, "b"),
    ]
    archive = {t: dataclasses.replace(a_rec) for t, a_rec in _archive(a, b, [x, y]).items()}
    final = a.record_result(reports["a"][0], "b", archive[x], 7 * S)
    assert (final.status, final.result, final.owner_node, final.origin_node) == (COMPLETED, b"answer", "b", "a")
    out = a.drain()
    assert out.archived == {x: final} and not out.finished
    assert dict(out.counters) == {"handoff_result:completed": 1}  # not "completed": b counted it
    # a repeated report: the same answer, nothing changes
    assert a.record_result(reports["a"][0], "b", final, 8 * S) == final
    assert not a.out
    with pytest.raises(HandoffProtocolError, match="handed to 'b'"):
        a.record_result(reports["a"][1], "c", archive[y], 8 * S)
    with pytest.raises(HandoffProtocolError, match="never handed off"):
        a.record_result(reports["a"][1], "b", None, 8 * S)
    b.report_done([x, y, "unknown-id"])
    assert b.drain().reports_done == {x, y} and b.pending_reports() == {}


def _archive(a: Core, b: Core, ids: list[str]) -> dict[str, Any]:
    """a's archived records of tasks it handed to b (what the runtime reads from the store)."""
    c = node("a")  # replay on a fresh core to get the finished records out of an outbox
    got = c.submit([TaskSpec("job", payload=f"p{i}".encode(), id=tid) for i, tid in enumerate(ids)], S)
    c.begin_handoff(got, "b", 2 * S)
    c.finish_handoff(got, "b", 4 * S)
    return dict(c.drain().finished)


def test_dependents_that_came_during_the_hand_off_wait_for_the_result() -> None:
    for status, expected in ((COMPLETED, QUEUED), (FAILED, FAILED)):
        a = node("a")
        [t] = a.submit([TaskSpec("job")], S)
        a.begin_handoff([t], "b", 2 * S)
        [d] = a.submit([TaskSpec("job", dependencies=[t])], 3 * S)  # t is active: d waits on it
        a.finish_handoff([t], "b", 4 * S)
        archived = a.drain().finished[t]
        assert a.tasks[d].status is PENDING and t in a._remote_deps
        a.validate()
        outcome = Outcome(t, status, 5 * S, 1, "w", "b", b"r" if status is COMPLETED else None, None)
        a.record_result(outcome, "b", archived, 6 * S)
        if expected is FAILED:
            assert d not in a.tasks and a.drain().finished[d].error == f"dependency {t} failed"
        else:
            assert a.tasks[d].status is QUEUED
        assert not a._remote_deps
        a.validate()


def test_intents_that_begin_and_end_between_two_commits_leave_nothing_stored() -> None:
    """Whatever happens to a task between two commits (begin, abort, begin again, abort again),
    the store ends with the intent the task has, or none: removals apply before additions."""
    a = node("a")
    [x] = a.submit([TaskSpec("job")], S)
    a.begin_handoff([x], "b", 2 * S)
    stored = dict(a.drain().intents)  # an intent is stored
    for steps, want in (
        (["abort"], {}),
        (["abort", "begin"], {x: "b"}),
        (["abort", "begin", "abort"], {}),  # (found by the two-core property test)
        (["abort", "begin", "abort", "begin"], {x: "b"}),
    ):
        store = dict(stored)
        a2 = node("a")
        a2.restore([dataclasses.replace(t, status=QUEUED, handoff_peer=None) for t in a.tasks.values()], [], 3 * S,
                   handoffs=stored)  # fmt: skip
        for i, step in enumerate(steps):
            if step == "abort":
                a2.abort_handoff([x], (4 + i) * S, peer="b")
            else:
                a2.begin_handoff([x], "b", (4 + i) * S)
        out = a2.drain()
        for tid in out.intents_done:
            store.pop(tid, None)
        store.update(out.intents)
        assert store == want, steps
        assert not out.saved  # the stored record is never rewritten for an intent


def test_restore_keeps_hand_offs_in_flight_out_of_line() -> None:
    a = node("a")
    x, y = a.submit([TaskSpec("job"), TaskSpec("job")], S)
    stored = {t.id: dataclasses.replace(t) for t in a.tasks.values()}  # as the store has them: queued
    a.begin_handoff([x], "b", 2 * S)
    intents = a.drain().intents
    fresh = node("a")
    fresh.restore(list(stored.values()), [], 10 * S, handoffs=intents)
    assert fresh.handoffs_in_flight() == {"b": [x]} and fresh.tasks[x].status is HANDING_OFF
    fresh.validate()
    fresh.register_worker(WorkerSpec("w", concurrency=5), 10 * S)
    assert [lease.task_id for lease in fresh.claim("w", 5, 10 * S)] == [y]  # x stays parked
    fresh.abort_handoff([x], 11 * S)
    assert [lease.task_id for lease in fresh.claim("w", 5, 11 * S)] == [x]


def test_restore_keeps_reports_tombstones_and_remote_dependencies() -> None:
    a, b = node("a"), node("b")
    [x] = handed(a, b, 1)
    b.register_worker(WorkerSpec("w"), 5 * S)
    [lease] = b.claim("w", 1, 5 * S)
    b.complete(lease, b"r", 6 * S)
    b.task_status(["never-sent"], "a", 6 * S)
    out = b.drain()
    fresh_b = node("b")
    fresh_b.restore([], [], 10 * S, reports=out.reports.values(), refused=out.refused)
    assert [o.task_id for o in fresh_b.pending_reports()["a"]] == [x]
    assert fresh_b.adopt([HandoffRecord("never-sent", TaskSpec("job"), "a", S, 0, 0, 0)], "a", 11 * S).refused
    # a pending task of the origin that waits on a handed-off task keeps waiting after a restart
    c = node("a")
    [t] = c.submit([TaskSpec("job")], S)
    c.begin_handoff([t], "b", 2 * S)
    [d] = c.submit([TaskSpec("job", dependencies=[t])], 3 * S)
    c.finish_handoff([t], "b", 4 * S)
    archived = c.drain().finished[t]
    fresh_c = node("a")
    fresh_c.restore([dataclasses.replace(c.tasks[d])], [], 10 * S, remote_pending={t})
    assert fresh_c.tasks[d].status is PENDING
    fresh_c.validate()
    fresh_c.record_result(outcome_of(dataclasses.replace(archived, status=COMPLETED)), "b", archived, 11 * S)
    assert fresh_c.tasks[d].status is QUEUED


# ---------------------------------------------------------------------------- from mutation testing


def test_a_result_from_the_second_hop_is_passed_back_to_the_origin() -> None:
    a, b, c = node("a"), node("b"), node("c")
    [t] = handed(a, b, 1)
    b.begin_handoff([t], "c", 5 * S)
    c.adopt([record_of(b.tasks[t])], "b", 6 * S)
    b.finish_handoff([t], "c", 7 * S)
    archived_b = b.drain().finished[t]
    c.register_worker(WorkerSpec("w"), 8 * S)
    [lease] = c.claim("w", 1, 8 * S)
    c.complete(lease, b"r", 9 * S)
    [o] = c.pending_reports()["b"]
    final = b.record_result(o, "c", archived_b, 10 * S)
    assert b.drain().reports == {t: final}
    assert [(x.task_id, x.status, x.result, x.owner_node) for x in b.pending_reports()["a"]] == [
        (t, COMPLETED, b"r", "c")
    ]


def test_hand_off_candidates_are_the_last_in_line_first() -> None:
    a = node("a")
    c0, c1 = a.submit([TaskSpec("job", priority=Priority.CRITICAL) for _ in range(2)], S)
    [low] = a.submit([TaskSpec("job", priority=Priority.LOW)], 2 * S)
    assert a.handoff_candidates(1) == [low]
    assert a.handoff_candidates(3) == [low, c1, c0]
    assert a.handoff_candidates(3, exclude={low}) == [c1, c0]  # offered already


def test_hand_off_candidates_skip_cancelled_entries_and_tasks_at_the_hop_limit() -> None:
    # a priority with no cancelled entry in line is read straight from its deque's tail; one with
    # a cancelled entry (left in line for lazy removal) is scanned: both give the live tasks only
    a = node("a", max_hops=1)
    m0, m1, m2 = a.submit([TaskSpec("job") for _ in range(3)], S)
    [h0, h1] = a.submit([TaskSpec("job", priority=Priority.HIGH) for _ in range(2)], 2 * S)
    assert a.handoff_candidates(2) == [m2, m1]
    a.cancel(m2, 3 * S)  # its entry stays in the MEDIUM deque
    assert a.handoff_candidates(2) == [m1, m0]
    assert a.handoff_candidates(10) == [m1, m0, h1, h0]
    b = node("b", max_hops=1)
    [t] = handed(a, b, 1)  # one hop: at b's limit, so never offered on
    [fresh] = b.submit([TaskSpec("job")], 10 * S)
    assert b.tasks[t].hops == 1 and b.handoff_candidates(5) == [fresh]
    b.validate()


def test_idempotency_keys_stay_with_the_origin() -> None:
    a, b = node("a"), node("b")
    [x] = a.submit([TaskSpec("job", idempotency_key="k", payload=b"p")], S)
    a.begin_handoff([x], "b", 2 * S)
    b.adopt([record_of(a.tasks[x])], "a", 3 * S)
    assert b.tasks[x].spec.idempotency_key is None
    fresh = node("b")  # b restarts and reloads the adopted task
    fresh.restore([dataclasses.replace(b.tasks[x])], [], 4 * S)
    [y] = fresh.submit([TaskSpec("job", idempotency_key="k")], 5 * S)
    assert y != x  # b's own key space is untouched


def test_a_repeated_report_must_say_what_was_recorded() -> None:
    a, b = node("a"), node("b")
    [x] = handed(a, b, 1)
    b.register_worker(WorkerSpec("w"), 5 * S)
    [lease] = b.claim("w", 1, 5 * S)
    b.complete(lease, b"answer", 6 * S)
    [o] = b.pending_reports()["a"]
    final = a.record_result(o, "b", _archive(a, b, [x])[x], 7 * S)
    a.drain()
    assert a.record_result(o, "b", final, 8 * S) == final and not a.out  # the same report again
    for forged in (o._replace(owner_node="c", result=b"forged"), o._replace(result=b"other")):
        with pytest.raises(HandoffProtocolError, match="another result"):
            a.record_result(forged, "c", final, 8 * S)
        assert not a.out


def test_a_hand_off_taken_back_after_a_restart_keeps_a_unique_queue_time() -> None:
    """Found by the two-core property test: after a restart whose clock has not passed the old
    queue times, a task aborted back in line must not share its queue time with a new task."""
    a = node("a")
    x, y = a.submit([TaskSpec("job"), TaskSpec("job")], 1000 * S)  # queued at 1000 s and 1000 s + 1 ns
    a.begin_handoff([y], "b", 1000 * S)
    intents = a.drain().intents
    stored = [dataclasses.replace(t, status=QUEUED, handoff_peer=None) for t in a.tasks.values()]
    fresh = make_core(seed=99)  # (another seed: the same one would make the same ids)
    fresh.node_id, fresh.config = "a", dataclasses.replace(fresh.config, node_id="a")
    fresh.restore(stored, [], 1000 * S, handoffs=intents)  # the new process's clock is no later
    [z] = fresh.submit([TaskSpec("job")], 1000 * S)
    fresh.abort_handoff([y], 1000 * S, peer="b")
    assert fresh.tasks[z].queued_ns != fresh.tasks[y].queued_ns
    fresh.validate()
    assert x in fresh.tasks
