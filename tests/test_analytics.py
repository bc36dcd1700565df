"""Analytics: histogram accuracy, per-minute history, stats and the performance report."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from node.analytics import Analytics, LogHistogram, MinuteRow, error_kind
from node.core import Core, CoreConfig
from node.core.outbox import Outbox
from node.model import TaskSpec, WorkerSpec
from node.store.codec import encode_batch

S = 1_000_000_000
T0 = 1_700_000_040 * S  # a minute boundary (1_700_000_040 = 60 * 28_333_334)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=1e-5, max_value=1e4), min_size=1, max_size=400), st.floats(0, 1))
def test_histogram_quantiles_are_within_one_percent(values: list[float], q: float) -> None:
    h = LogHistogram()
    for v in values:
        h.add(v)
    exact = sorted(values)[int(q * (len(values) - 1))]
    got = h.quantile(q)
    assert got is not None
    assert abs(got - exact) <= 0.0101 * exact


def test_histogram_merge_and_round_trip() -> None:
    rng = random.Random(1)
    a, b, both = LogHistogram(), LogHistogram(), LogHistogram()
    for _ in range(1000):
        v = rng.expovariate(10)
        (a if rng.random() < 0.5 else b).add(v)
        both.add(v)
    a.merge(b)
    assert a.counts == both.counts and a.count == both.count
    c = LogHistogram.from_dict(a.to_dict())
    assert c.quantile(0.99) == a.quantile(0.99) and c.count == 1000


def test_error_kinds() -> None:
    assert error_kind("timed out after 2s (attempt 1)") == "timeout"
    assert error_kind("worker w1 missed heartbeats") == "worker_lost"
    assert error_kind("dependency abc failed") == "dependency"
    assert error_kind("ValueError: bad input") == "task_error"


def record(a: Analytics, out: Outbox, now: int) -> None:
    """As the runtime does after a durable flush: with the counters the flush wrote."""
    a.record(out, now, encode_batch(out, now, with_events=False).counters)


def run_lifecycles(core: Core, a: Analytics, n: int, now: int, *, fail_every: int = 0) -> int:
    core.submit([TaskSpec("t") for _ in range(n)], now)
    record(a, core.drain(), now)
    leases = core.claim("w", n, now + S)
    for i, lease in enumerate(leases):
        if fail_every and i % fail_every == 0:
            core.fail(lease, "boom", now + 3 * S, retry=False)
        else:
            core.complete(lease, b"", now + 3 * S)
    record(a, core.drain(), now + 3 * S)
    return now + 3 * S


def test_minutes_roll_into_history_and_stats_add_up() -> None:
    core = Core(CoreConfig(node_id="n"))
    core.register_worker(WorkerSpec("w", concurrency=1000), T0)
    a = Analytics("n", T0)
    now = run_lifecycles(core, a, 100, T0, fail_every=10)
    assert a.minute.completed == 90 and a.minute.failed == 10 and a.minute.submitted == 100
    now = run_lifecycles(core, a, 60, T0 + 60 * S)  # next minute
    assert [r.completed for r in a.history] == [90]
    assert a.minute.completed == 60
    ws = [w.info() for w in core.workers.values()]
    s = a.stats(
        now,
        by_status={},
        by_priority={},
        by_type={},
        workers=ws,
        scaling=core.advice(),
        load=core.load(),
        store="memory",
        state="serving",
    )
    assert s.throughput_per_hour == 150
    # per-minute history: the closed minute, then the current one
    assert [(r["completed"], r["failed"]) for r in s.history] == [(90, 10), (60, 0)]
    assert s.load == {
        "leased": 0, "ready": 0, "delayed": 0, "pending": 0, "handing_off": 0, "slots": 1000, "ratio": 0.0
    }  # fmt: skip
    # 3 s into the current minute: its 60 completions, plus the last 57 s worth of the previous 90
    assert abs(s.throughput_per_s_1m - (60 + 90 * 57 / 60) / 60) < 1e-9
    assert s.totals["completed"] == 150 and s.totals["failed"] == 10
    assert abs(s.error_rate - 10 / 160) < 1e-12
    assert s.completion_s["count"] == 150
    assert abs((s.completion_s["p50"] or 0) - 2.0) < 0.03  # claimed at +1 s, finished at +3 s
    assert abs((s.queue_wait_s["p99"] or 0) - 1.0) < 0.02
    rep = a.report(now, ws)
    assert rep.completed == 150 and rep.failed == 10 and rep.worker_stats["w"]["completed_tasks"] == 150
    assert rep.errors_by_kind == {"task_error": 10}


def test_minute_row_round_trip() -> None:
    m = MinuteRow(minute_ms=60_000, completed=3)
    m.completion_s.add(0.5)
    back = MinuteRow.from_json(m.to_json())
    assert back.completed == 3 and back.completion_s.quantile(0.5) == m.completion_s.quantile(0.5)


def test_history_survives_restore() -> None:
    a = Analytics("n", T0 + 600 * S)
    rows = [MinuteRow(minute_ms=(T0 // S // 60) * 60_000 + i * 60_000, completed=i) for i in range(5)]
    a.restore({"completed": 10}, rows)
    assert [r.completed for r in a.history] == [0, 1, 2, 3, 4]
    assert a.totals["completed"] == 10


def test_report_counts_tasks_not_worker_attempts() -> None:
    """Task failures and worker failures differ: a worker that fails attempts of tasks that
    are retried and then complete has failures, while no task failed."""
    core = Core(CoreConfig(node_id="n", backoff_base_s=0.001))
    core.register_worker(WorkerSpec("w", concurrency=10), T0)
    a = Analytics("n", T0)
    core.submit([TaskSpec("t") for _ in range(3)], T0)
    for lease in core.claim("w", 3, T0):
        core.fail(lease, "flaky", T0 + S)
    core.tick(T0 + 2 * S)
    for lease in core.claim("w", 3, T0 + 2 * S):
        core.complete(lease, b"", T0 + 3 * S)
    record(a, core.drain(), T0 + 3 * S)
    rep = a.report(T0 + 3 * S, [w.info() for w in core.workers.values()])
    assert (rep.completed, rep.failed) == (3, 0)
    assert rep.worker_stats["w"]["failed_tasks"] == 3 and rep.worker_stats["w"]["completed_tasks"] == 3


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1e4), max_size=200))
def test_add_many_is_repeated_add(values: list[float]) -> None:
    a, b = LogHistogram(), LogHistogram()
    for v in values:
        a.add(v)
    b.add_many(values)
    assert (a.counts, a.zeros, a.count, a.min, a.max) == (b.counts, b.zeros, b.count, b.min, b.max)


def test_rate_in_the_first_minute_counts_since_start() -> None:
    a = Analytics("n", T0)
    core = Core(CoreConfig(node_id="n"))
    core.register_worker(WorkerSpec("w", concurrency=100), T0)
    now = run_lifecycles(core, a, 30, T0)  # 30 completions 3 s after start
    s = a.stats(
        now,
        by_status={},
        by_priority={},
        by_type={},
        workers=[],
        scaling=core.advice(),
        load=core.load(),
        store="memory",
        state="serving",
    )
    assert s.throughput_per_s_1m == 30 / 3
