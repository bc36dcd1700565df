"""Per-window raw summaries, fed from a core's outboxes, and the fixed-bin histogram under them."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from node.analytics import FixedBinHistogram, FixedBins, Windows
from node.analytics.window import WindowSummary
from node.core import Core, CoreConfig
from node.errors import ValidationError
from node.model import Lease, Task, TaskSpec, TaskStatus, WorkerSpec

S = 1_000_000_000
T0 = 1_700_000_000 * S  # a multiple of 20 s


def make_core() -> Core:
    core = Core(CoreConfig(node_id="n"), rng=random.Random(1))
    core.register_worker(WorkerSpec("w", concurrency=100), T0)
    return core


def test_a_window_counts_by_type_as_commits_arrive() -> None:
    core = make_core()
    win = Windows("n", T0, window_s=20, bins=FixedBins((1.0, 2.0, 5.0)))
    a = core.submit([TaskSpec("a") for _ in range(3)] + [TaskSpec("b", max_retries=0)], T0 + S)
    win.record(core.drain(), T0 + S)
    leases = core.claim("w", 10, T0 + 2 * S)
    done = {lease.task_id: lease for lease in leases}
    core.complete(done[a[0]], b"", T0 + 2 * S + S // 2)  # 0.5 s
    core.complete(done[a[1]], b"", T0 + 5 * S)  # 3 s
    core.fail(done[a[3]], "boom", T0 + 5 * S)  # no retries: failed
    core.cancel(a[2], T0 + 5 * S)
    win.record(core.drain(), T0 + 5 * S)
    now = win.current(T0 + 6 * S)
    assert (now.closed, now.start_ns, now.end_ns) == (False, T0, T0 + 6 * S)
    ta, tb = now.types["a"], now.types["b"]
    assert (ta.submitted, ta.completed, ta.failed, ta.cancelled) == (3, 2, 0, 1)
    assert (tb.submitted, tb.completed, tb.failed) == (1, 0, 1)
    assert now.completion_s.counts == [1, 0, 1, 0]  # [0,1) and [2,5)
    assert now.total("submitted") == 4 and now.completion_s.count == 2
    assert win.last_closed(T0 + 6 * S) is None


def test_windows_close_on_the_node_clock_and_keep_empty_ones() -> None:
    core = make_core()
    win = Windows("n", T0, window_s=20, keep=4)
    core.submit([TaskSpec("a")], T0 + S)
    win.record(core.drain(), T0 + S)
    core.submit([TaskSpec("a"), TaskSpec("a")], T0 + 65 * S)  # three windows later
    win.record(core.drain(), T0 + 65 * S)
    closed = win.closed(T0 + 65 * S)
    assert [(w.start_ns - T0) // S for w in closed] == [0, 20, 40]
    assert [w.total("submitted") for w in closed] == [1, 0, 0]
    assert all(w.closed and w.end_ns - w.start_ns == 20 * S for w in closed)
    assert win.current(T0 + 66 * S).total("submitted") == 2
    last = win.last_closed(T0 + 200 * S)  # a long silence: only `keep` windows are kept
    assert last is not None and (last.start_ns - T0) // S == 180
    assert len(win.closed(T0 + 200 * S)) == 4


def test_summary_dict_is_plain_data() -> None:
    core = make_core()
    win = Windows("n", T0)
    core.submit([TaskSpec("a")], T0)
    win.record(core.drain(), T0)
    d = win.current(T0 + S).to_dict()
    assert d["types"]["a"]["submitted"] == 1 and len(d["completion_s"]) == len(d["completion_edges_s"]) + 1


def test_window_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="window_s"):
        Windows("n", T0, window_s=0)
    for edges in [(), (1.0, 1.0), (2.0, 1.0), (-1.0,), (float("inf"),)]:
        with pytest.raises(ValidationError, match=r"bins\.edges"):
            FixedBins(edges)


@given(st.lists(st.floats(min_value=0, max_value=2000, allow_nan=False), max_size=300))
def test_fixed_bins_count_every_value_once_in_its_bin(values: list[float]) -> None:
    bins = FixedBins((0.5, 1.0, 10.0, 100.0))
    h = FixedBinHistogram(bins)
    h.add_many(values)
    assert h.count == len(values)
    for i, n in enumerate(h.counts):
        lo, hi = bins.bounds(i)
        assert n == sum(1 for v in values if lo <= v < hi)
    g = FixedBinHistogram(bins)
    for v in values:
        g.add(v)
    assert g == h
    merged = FixedBinHistogram(bins)
    merged.merge(h)
    merged.merge(g)
    assert merged.counts == [2 * n for n in h.counts]
    assert FixedBinHistogram.from_dict(h.to_dict()) == h


def test_fixed_bin_quantiles_interpolate_inside_a_bin() -> None:
    h = FixedBinHistogram(FixedBins((1.0, 2.0, 4.0)))
    assert h.quantile(0.5) is None
    h.add_many([1.5] * 10)
    assert h.quantile(0.5) == pytest.approx(1.5)
    h.add_many([10.0] * 30)  # the open last bin answers its lower edge
    assert h.quantile(0.99) == 4.0
    with pytest.raises(ValidationError, match="different bins"):
        h.merge(FixedBinHistogram(FixedBins((1.0,))))


def test_a_completion_time_on_a_bin_edge_counts_in_the_bin_it_opens() -> None:
    core = make_core()
    win = Windows("n", T0, window_s=20, bins=FixedBins((1.0, 2.0, 5.0)))
    core.submit([TaskSpec("a")], T0 + S)
    [lease] = core.claim("w", 1, T0 + 2 * S)
    core.complete(lease, b"", T0 + 3 * S)  # exactly 1.0 s: bin [1, 2)
    win.record(core.drain(), T0 + 3 * S)
    assert win.current(T0 + 4 * S).completion_s.counts == [0, 1, 0, 0]


def test_the_runtime_s_counters_and_the_outbox_give_the_same_summary() -> None:
    """The runtime feeds a window the counters and completion times its commit already computed;
    the simulator feeds it outboxes alone. Both must count the same."""
    from node.analytics import Analytics  # noqa: PLC0415 - only here
    from node.store.codec import encode_batch  # noqa: PLC0415 - only here

    core = make_core()
    by_outbox = Windows("n", T0, bins=FixedBins((0.5, 1.0, 5.0)))
    by_runtime = Windows("n", T0, bins=FixedBins((0.5, 1.0, 5.0)))
    analytics = Analytics("n", T0)
    ids = core.submit([TaskSpec(f"t{i % 3}", max_retries=0) for i in range(30)], T0 + S)
    core.cancel(ids[0], T0 + S)
    leases = core.claim("w", 30, T0 + 2 * S)
    for i, lease in enumerate(leases):
        if i % 4:
            core.complete(lease, b"", T0 + 2 * S + i * 100_000_000)
        else:
            core.fail(lease, "x", T0 + 3 * S)
    out = core.drain()
    batch = encode_batch(out, T0 + 4 * S, with_events=False)
    by_outbox.record(out, T0 + 4 * S)
    times = analytics.record(out, T0 + 4 * S, batch.counters)
    by_runtime.record(out, T0 + 4 * S, counters=batch.counters, completion_times_s=times)
    a, b = by_outbox.current(T0 + 5 * S), by_runtime.current(T0 + 5 * S)
    assert a.types == b.types and a.completion_s == b.completion_s
    assert a.total("completed") == 21 and a.total("failed") == 8 and a.total("cancelled") == 1


# ---------------------------------------------------------------------------- bounded counts (privacy horizon)
#
# With ``horizon=m`` a window also keeps bounded counts, the privacy pipeline's input: a task
# counts there only in the windows [c, c + m - 1], c the window of its creation, and a task
# requeued in a window does not count an ending there again. The sensitivity claim of the
# release (federation.privacy.pipeline.CELLS_PER_TASK) rests on it.

WS = 20  # window length, s (T0 is a multiple of it)
W0 = T0 // (WS * S)  # the window index of T0
ZERO = (0, 0, 0, 0, 0)


def by_window(win: Windows, now_ns: int) -> dict[int, WindowSummary]:
    """The closed windows by index relative to T0's window."""
    return {w.start_ns // (WS * S) - W0: w for w in win.closed(now_ns)}


def bounded_of(w: WindowSummary, ttype: str) -> tuple[int, int, int, int, int]:
    assert w.bounded is not None
    return w.bounded.counts.get(ttype, ZERO)


def test_a_task_counts_in_bounded_windows_only_within_m_windows_of_its_creation() -> None:
    core = make_core()
    win = Windows("n", T0, window_s=WS, horizon=2, bins=FixedBins((1.0, 30.0)))
    spec = TaskSpec("a", timeout_s=1000)
    core.submit([spec, spec], T0 + S)  # created in window 0
    leases = core.claim("w", 2, T0 + 2 * S)
    win.record(core.drain(), T0 + 2 * S)
    core.complete(leases[0], b"", T0 + 25 * S)  # window 1: within m = 2 windows of its creation
    win.record(core.drain(), T0 + 25 * S)
    core.complete(leases[1], b"", T0 + 45 * S)  # window 2: beyond
    win.record(core.drain(), T0 + 45 * S)
    ws = by_window(win, T0 + 65 * S)
    assert [ws[i].types["a"].completed for i in (1, 2)] == [1, 1]  # the raw counts have both
    assert bounded_of(ws[0], "a") == (2, 0, 0, 0, 0)
    assert bounded_of(ws[1], "a") == (0, 1, 0, 0, 0)
    assert bounded_of(ws[2], "a") == ZERO  # more than m - 1 windows after its creation
    hist = [w.bounded.completion_counts for w in (ws[1], ws[2]) if w.bounded is not None]
    assert hist == [(0, 1, 0), (0, 0, 0)] and ws[2].completion_s.counts == [0, 0, 1]


def test_an_adopted_task_counts_by_its_creation_time_on_its_origin() -> None:
    from node.core.transfer import HandoffRecord  # noqa: PLC0415 - only here

    core = make_core()
    win = Windows("n", T0, window_s=WS, horizon=3)
    now = T0 + 65 * S  # window 3: the horizon is windows [1, 3]
    old = HandoffRecord("t-old", TaskSpec("a", timeout_s=1000), "peer", T0 + S, 0, 0, 0)  # created in window 0
    new = HandoffRecord("t-new", TaskSpec("a", timeout_s=1000), "peer", T0 + 45 * S, 0, 0, 0)  # window 2
    res = core.adopt([old, new], "peer", now)
    assert sorted(res.adopted) == ["t-new", "t-old"]
    leases = core.claim("w", 2, now)
    for lease in leases:
        core.complete(lease, b"", now + S)
    win.record(core.drain(), now + S)
    w3 = win.current(now + 2 * S)
    assert (w3.types["a"].handed_off_in, w3.types["a"].completed) == (2, 2)  # raw: both
    assert w3.bounded is not None and w3.bounded.counts["a"] == (0, 1, 0, 1, 0)  # bounded: the new one only
    assert sum(w3.bounded.completion_counts) == 1


def test_a_requeued_task_counts_one_ending_per_window() -> None:
    core = make_core()
    win = Windows("n", T0, window_s=WS, horizon=3)

    def submit(ttype: str, at_s: int) -> str:
        (tid,) = core.submit([TaskSpec(ttype, max_retries=0, timeout_s=1000)], T0 + at_s * S)
        win.record(core.drain(), T0 + at_s * S)
        return tid

    def fail(tid: str, at_s: int) -> Task:
        (lease,) = core.claim("w", 1, T0 + at_s * S)
        assert lease.task_id == tid
        core.fail(lease, "boom", T0 + at_s * S, retry=False)
        out = core.drain()
        win.record(out, T0 + at_s * S)
        assert out.finished[tid].status is TaskStatus.FAILED
        return out.finished[tid]

    def requeue(record: Task, at_s: int) -> None:
        core.requeue(dataclasses.replace(record), T0 + at_s * S)
        win.record(core.drain(), T0 + at_s * S)

    def complete(tid: str, at_s: int) -> None:
        (lease,) = core.claim("w", 1, T0 + at_s * S)
        assert lease.task_id == tid
        core.complete(lease, b"", T0 + at_s * S)
        win.record(core.drain(), T0 + at_s * S)

    a = submit("a", 1)
    requeue(fail(a, 2), 3)  # window 0: failed, requeued,
    requeue(fail(a, 4), 5)  # failed again, requeued again,
    complete(a, 6)  # and completed: one ending in window 0
    b = submit("b", 8)
    record = fail(b, 10)  # window 0: failed
    requeue(record, 25)  # window 1: requeued, no ending
    complete(b, 45)  # window 2: its first ending there counts
    ws = by_window(win, T0 + 61 * S)
    assert (ws[0].types["a"].failed, ws[0].types["a"].completed) == (2, 1)  # raw: every ending
    assert bounded_of(ws[0], "a") == (1, 0, 1, 0, 0)  # bounded: came, and one ending
    assert bounded_of(ws[0], "b") == (1, 0, 1, 0, 0)
    assert bounded_of(ws[1], "b") == ZERO
    assert bounded_of(ws[2], "b") == (0, 1, 0, 0, 0)
    assert [sum(ws[i].bounded.completion_counts) for i in range(3) if ws[i].bounded is not None] == [0, 0, 1]


def test_cancelled_tasks_are_not_in_the_bounded_counts() -> None:
    core = make_core()
    win = Windows("n", T0, window_s=WS, horizon=3)
    ids = core.submit([TaskSpec("a", timeout_s=1000) for _ in range(3)], T0 + S)
    leases = core.claim("w", 1, T0 + 2 * S)
    core.cancel(leases[0].task_id, T0 + 3 * S)  # leased
    core.cancel(next(i for i in ids if i != leases[0].task_id), T0 + 3 * S)  # queued
    win.record(core.drain(), T0 + 3 * S)
    now = win.current(T0 + 4 * S)
    assert now.types["a"].cancelled == 2
    assert now.bounded is not None and now.bounded.counts["a"] == (3, 0, 0, 0, 0)


def test_occupancy_counts_each_task_once_and_only_inside_the_horizon() -> None:
    from node.runtime.privacy import occupancy  # noqa: PLC0415 - only here

    core = make_core()
    win = Windows("n", T0, window_s=WS, horizon=2)
    spec = TaskSpec("a", timeout_s=1000)
    core.submit([spec] * 3, T0 + S)  # window 0
    core.submit([spec] * 2, T0 + 25 * S)  # window 1
    core.submit([TaskSpec("a", delay_s=1000)], T0 + 25 * S)  # queued but not claimable yet
    leases = core.claim("w", 2, T0 + 26 * S)  # leased: still occupied
    lo, hi = win.horizon_ns(W0 + 1)
    assert (lo, hi) == (T0, T0 + 2 * WS * S)
    assert occupancy(core.tasks.values(), lo, hi, T0 + 40 * S) == 5
    core.complete(leases[0], b"", T0 + 30 * S)
    assert occupancy(core.tasks.values(), lo, hi, T0 + 40 * S) == 4
    lo, hi = win.horizon_ns(W0 + 2)  # window 0's tasks are out of it
    assert occupancy(core.tasks.values(), lo, hi, T0 + 60 * S) == 2 - (leases[0].task_id in core.tasks)


# The sensitivity claim, as a property: tasks that cannot influence each other (each needs a
# capability only its own worker has, ids given, no retry backoff), a random life for each, and
# commits at random moments (a commit may land in a later window than what it carries). Removing
# one task's events changes every window's bounded cells (5 counts per type and the histogram
# bins) by at most 1 each, in at most CELLS_PER_TASK cells together with the occupancy counted
# at the window's close, and only in the m windows from the task's creation.

SLOTS = 10  # a window is 10 slots of 2 s
SLOT_NS = WS * S // SLOTS
# single steps; "run" (claim, complete), "die" (claim, fail for good) and "retry" (claim, fail,
# requeue at once) to reach endings, and several in one window, often
OPS = (
    "claim",
    "start",
    "complete",
    "fail",
    "requeue",
    "cancel",
    "handoff",
    "run",
    "die",
    "retry",
    "run",
    "die",
    "retry",
)
BINS = FixedBins((1.0, 5.0, 30.0))

task_plans = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["a", "b"]),
        "adopted_from": st.none() | st.integers(0, 3),  # None: submitted here; k: adopted, created k windows before
        "arrives": st.integers(0, 4 * SLOTS),  # slot
        # (slots later, op): often in the same window, sometimes windows later
        "ops": st.lists(st.tuples(st.integers(1, 3) | st.integers(1, 2 * SLOTS), st.sampled_from(OPS)), max_size=7),
    }
)


def simulate(
    plans: list[dict[str, Any]], m: int, commits: set[int], skip: int | None
) -> tuple[dict[int, list[int]], dict[int, int]]:
    """Bounded cells and occupancy (counted at the window's close) per window index, without
    task ``skip``."""
    from node.core.transfer import HandoffRecord  # noqa: PLC0415 - only here
    from node.runtime.privacy import occupancy  # noqa: PLC0415 - only here

    core = Core(CoreConfig(node_id="n"), rng=random.Random(1))
    for i in range(len(plans)):
        core.register_worker(WorkerSpec(f"w{i}", capabilities=(f"c{i}",), concurrency=2), T0 - S)
    win = Windows("n", T0, window_s=WS, bins=BINS, horizon=m, keep=64)
    events: dict[int, list[tuple[int, str]]] = {}
    for i, p in enumerate(plans):
        slot = p["arrives"]
        events.setdefault(slot, []).append((i, "arrive"))
        for dt, op in p["ops"]:
            slot += dt
            events.setdefault(slot, []).append((i, op))
    last = max(events) + SLOTS  # the same timeline (ticks, commits) with or without task `skip`
    if skip is not None:
        events = {slot: [e for e in evs if e[0] != skip] for slot, evs in events.items()}
    leases: dict[int, Lease] = {}
    finished: dict[str, Task] = {}
    occupied: dict[int, int] = {}
    for slot in range(last + 1):
        now = T0 + slot * SLOT_NS
        if slot % SLOTS == 0 and slot:  # a window closed: its occupancy, counted now
            lo, hi = win.horizon_ns(W0 + slot // SLOTS - 1)
            occupied[slot // SLOTS - 1] = occupancy(core.tasks.values(), lo, hi, now)
        for i, op in events.get(slot, []):
            tid = f"t{i}"
            t = core.tasks.get(tid)
            spec = TaskSpec(plans[i]["type"], required_capabilities=(f"c{i}",), max_retries=0, timeout_s=1e5)
            ready = t is not None and t.status is TaskStatus.QUEUED and t.not_before_ns <= now
            if op == "arrive" and plans[i]["adopted_from"] is None:
                core.submit([spec._replace(id=tid)], now)
            elif op == "arrive":
                created = now - plans[i]["adopted_from"] * WS * S
                core.adopt([HandoffRecord(tid, spec, "peer1", created, 0, 0, 0)], "peer1", now)
            elif op in ("claim", "run", "die", "retry") and ready:
                (leases[i],) = core.claim(f"w{i}", 1, now)
                if op == "run":
                    core.complete(leases.pop(i), b"", now + SLOT_NS // 2)
                elif op != "claim":
                    core.fail(leases.pop(i), "x", now, retry=False)
                if op == "retry":
                    core.requeue(dataclasses.replace(core.out.finished[tid]), now)
            elif op in ("start", "complete", "fail") and i in leases and core.is_current(leases[i]):
                if op == "start":
                    core.start(leases[i], now)
                elif op == "complete":
                    core.complete(leases.pop(i), b"", now)
                else:
                    core.fail(leases.pop(i), "x", now, retry=False)
            elif op == "requeue" and t is None and tid in finished and finished[tid].status is TaskStatus.FAILED:
                core.requeue(dataclasses.replace(finished.pop(tid)), now)
            elif op == "cancel" and t is not None and t.status is not TaskStatus.HANDING_OFF:
                core.cancel(tid, now)
                leases.pop(i, None)
            elif op == "handoff" and ready and t is not None and t.hops < core.config.max_hops:
                core.begin_handoff([tid], "peer2", now)
                core.finish_handoff([tid], "peer2", now)
            if tid in core.out.finished:
                finished[tid] = core.out.finished[tid]
        if slot in commits or slot == last:
            win.record(core.drain(), now)
    cells: dict[int, list[int]] = {}
    for w in win.closed(T0 + (last + SLOTS) * SLOT_NS):
        assert w.bounded is not None
        idx = w.start_ns // (WS * S) - W0
        cells[idx] = [v for ttype in ("a", "b") for v in w.bounded.counts.get(ttype, ZERO)]
        cells[idx] += list(w.bounded.completion_counts)
    return cells, occupied


def plan(arrives: int, *ops: tuple[int, str], ttype: str = "a", adopted_from: int | None = None) -> dict[str, Any]:
    return {"type": ttype, "adopted_from": adopted_from, "arrives": arrives, "ops": list(ops)}


EVERY_SLOT = set(range(20 * SLOTS))


@settings(max_examples=500, deadline=None)
# the paths the claim depends on, always tried: endings after a requeue in the same window...
@example(m=1, plans=[plan(0, (1, "die"), (1, "requeue"), (1, "run"))], commits=EVERY_SLOT)
@example(m=2, plans=[plan(5, (1, "die"), (1, "requeue"), (1, "die"), (1, "requeue"))], commits=EVERY_SLOT)
# ...came, failed, requeued and still waiting when the window closes (3 cells with the occupancy)...
@example(m=2, plans=[plan(2, (1, "die"), (1, "requeue")), plan(3, (1, "run"), ttype="b")], commits=EVERY_SLOT)
# ...adopted (old and recent creation), run, handed on...
@example(m=3, plans=[plan(3, (1, "run"), adopted_from=1), plan(4, (2, "handoff"), adopted_from=3)], commits=EVERY_SLOT)
# ...and a late commit: created in window 0, committed in window 1 (m = 1: counted nowhere)
@example(m=1, plans=[plan(9, (2, "run")), plan(8, (9, "claim"))], commits={15})
@given(
    m=st.integers(1, 3),
    plans=st.lists(task_plans, min_size=1, max_size=4),
    commits=st.sets(st.integers(0, 16 * SLOTS)) | st.just(set(range(20 * SLOTS))),
)
def test_one_task_changes_at_most_3_cells_by_1_in_at_most_m_windows(
    m: int, plans: list[dict[str, Any]], commits: set[int]
) -> None:
    from federation.privacy.pipeline import CELLS_PER_TASK  # noqa: PLC0415 - only here

    cells, occupied = simulate(plans, m, commits, None)
    for i, p in enumerate(plans):
        created_slot = p["arrives"] - (0 if p["adopted_from"] is None else p["adopted_from"] * SLOTS)
        c = created_slot // SLOTS  # the window of its creation (floor: adopted ones may predate T0's window)
        without, occ_without = simulate(plans, m, commits, i)
        touched = []
        for w in set(cells) | set(without):
            a, b = cells.get(w), without.get(w)
            a = a if a is not None else [0] * len(b or ())
            b = b if b is not None else [0] * len(a)
            diff = [x - y for x, y in zip(a, b, strict=True)]
            assert all(0 <= d <= 1 for d in diff), (w, diff)  # a task only adds, and 1 per cell
            d_occ = occupied.get(w, 0) - occ_without.get(w, 0)
            assert 0 <= d_occ <= 1
            n = sum(diff) + d_occ
            assert n <= CELLS_PER_TASK, (w, diff, d_occ)
            if n:
                touched.append(w)
        assert all(c <= w <= c + m - 1 for w in touched), (c, touched)  # hence at most m windows
