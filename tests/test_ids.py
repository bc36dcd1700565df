"""Task ids: UUIDv7 strings, time-ordered and unique."""

from __future__ import annotations

import random
import uuid

from hypothesis import given
from hypothesis import strategies as st

from node.core import Core, CoreConfig
from node.ids import IdGenerator, uuid7_time_ms
from node.model import TaskSpec


@given(st.integers(0, (1 << 74) - 1), st.lists(st.integers(0, 5_000_000), min_size=2, max_size=200))
def test_ids_are_uuid7_monotonic_and_unique(seed: int, steps: list[int]) -> None:
    g = IdGenerator(seed)
    now = 1_700_000_000_000_000_000
    ids = []
    for step in steps:
        now += step * 1000 - 2_000_000_000  # time also goes backwards sometimes
        ids.append(g.next(max(now, 0)))
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for i in ids:
        u = uuid.UUID(i)
        assert u.version == 7 and u.variant == uuid.RFC_4122


def test_time_is_readable_back() -> None:
    tid = IdGenerator(5).next(1_700_000_000_123_456_789)
    assert uuid7_time_ms(tid) == 1_700_000_000_123
    assert uuid7_time_ms("not-a-uuid") is None


def test_counter_wrap_keeps_order() -> None:
    g = IdGenerator((1 << 48) - 3)  # counter about to run out
    now = 1_700_000_000_000_000_000
    ids = [g.next(now) for _ in range(6)]
    assert ids == sorted(ids) and len(set(ids)) == 6


@given(st.integers(0, (1 << 74) - 1), st.lists(st.tuples(st.integers(0, 3_000_000), st.integers(1, 50)), max_size=30))
def test_many_is_the_same_as_repeated_next(seed: int, batches: list[tuple[int, int]]) -> None:
    a, b = IdGenerator(seed), IdGenerator(seed)
    now = 1_700_000_000_000_000_000
    for step, n in batches:
        now += step * 1000
        assert a.many(now, n) == [b.next(now) for _ in range(n)]


def test_generators_of_equal_seed_differ_by_node_id() -> None:
    now = 1_700_000_000_000_000_000
    a, b = IdGenerator.for_node("n1", 7), IdGenerator.for_node("n2", 7)
    ids_a = a.many(now, 5000) + [a.next(now + 1_000_000) for _ in range(100)]
    ids_b = b.many(now, 5000) + [b.next(now + 1_000_000) for _ in range(100)]
    assert not set(ids_a) & set(ids_b)
    # deterministic for one (node id, seed): a simulation with a fixed seed repeats itself
    assert IdGenerator.for_node("n1", 7).many(now, 5000) == ids_a[:5000]


def test_cores_of_equal_seed_make_distinct_ids() -> None:
    now = 1_700_000_000_000_000_000
    ids: list[set[str]] = []
    for node_id in ("n1", "n2", "n3"):
        core = Core(CoreConfig(node_id=node_id), rng=random.Random(0))
        ids.append(set(core.submit([TaskSpec("t") for _ in range(2000)], now)))
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
