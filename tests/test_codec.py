"""Task records: what is encoded decodes to the same task, whatever is set or left at default."""

from __future__ import annotations

from types import MappingProxyType

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.model import PRIORITY_ORDER, Task, TaskSpec, TaskStatus
from node.store.codec import CorruptRecordError, decode_task, encode_task

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=12).map(lambda s: "x" + s)
opt_ns = st.none() | st.integers(0, 2**62)


@st.composite
def tasks(draw: st.DrawFn) -> Task:
    difficulty = draw(st.integers(1, 10))
    ctx = draw(st.dictionaries(names, st.text(max_size=20), max_size=3))
    spec = TaskSpec(
        type=draw(names),
        payload=draw(st.binary(max_size=40)),
        context=MappingProxyType(ctx) if ctx else None,
        priority=draw(st.sampled_from(PRIORITY_ORDER)),
        difficulty=difficulty,
        required_capabilities=tuple(draw(st.lists(names, max_size=3, unique=True))),
        dependencies=tuple(draw(st.lists(names, max_size=3, unique=True))),
        max_retries=draw(st.integers(0, 100)),
        timeout_s=draw(st.none() | st.floats(0.001, 1e5)),
        delay_s=0.0,
        idempotency_key=draw(st.none() | st.text(min_size=1, max_size=30)),
        id=None,
    )
    origin = draw(names)
    attempt = draw(st.integers(0, 5))
    return Task(
        id=draw(names),
        spec=spec,
        status=draw(st.sampled_from(list(TaskStatus))),
        origin_node=origin,
        owner_node=draw(st.just(origin) | names),
        created_ns=draw(st.integers(0, 2**62)),
        assigned_worker=draw(names) if attempt else None,
        attempt=attempt,
        failures=draw(st.integers(0, 5)),
        not_before_ns=draw(st.integers(0, 2**62)),
        queued_ns=draw(opt_ns),
        claimed_ns=draw(opt_ns),
        started_ns=draw(opt_ns),
        finished_ns=draw(opt_ns),
        lease_deadline_ns=draw(opt_ns),
        result=draw(st.none() | st.binary(max_size=40)),
        error=draw(st.none() | st.text(max_size=40)),
        waits_on=tuple(draw(st.lists(names, max_size=3, unique=True))),
        hops=draw(st.integers(0, 2)),
        from_node=draw(st.none() | names),
        handoff_peer=None,
    )


@settings(max_examples=300, deadline=None)
@given(tasks())
def test_decode_inverts_encode(t: Task) -> None:
    back = decode_task(encode_task(t))
    assert back.timeout_s == t.timeout_s  # an explicit default timeout may come back as "default"
    expected_spec = t.spec._replace(timeout_s=back.spec.timeout_s)
    expected = {**{f: getattr(t, f) for f in Task.__dataclass_fields__}, "spec": expected_spec}
    if t.status is TaskStatus.HANDING_OFF:  # stored as the queued task it was (the intent is elsewhere)
        expected["status"] = TaskStatus.QUEUED
    assert back == Task(**expected)


def test_record_is_readable_json_without_defaults() -> None:
    t = Task("t1", TaskSpec("resize", payload=b"img", priority=PRIORITY_ORDER[1]), TaskStatus.QUEUED, "n1", "n1", 5)
    d = orjson.loads(encode_task(t))
    assert d == {
        "v": 1,
        "id": "t1",
        "type": "resize",
        "status": "queued",
        "origin_node": "n1",
        "created_ns": 5,
        "priority": "high",
        "payload": "aW1n",
    }


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'{"id": "x"}', b'{"v":1,"id":"x","type":"t","status":"bogus"}'])
def test_corrupt_records_raise_a_clear_error(raw: bytes) -> None:
    with pytest.raises(CorruptRecordError, match="cannot decode task record"):
        decode_task(raw)
