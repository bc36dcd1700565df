"""Per-window raw summaries, fed from a core's outboxes, and the fixed-bin histogram under them."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.analytics import FixedBinHistogram, FixedBins, Windows
from node.core import Core, CoreConfig
from node.errors import ValidationError
from node.model import TaskSpec, WorkerSpec

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
