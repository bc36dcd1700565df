"""Hypothesis strategies of fedcoord.v1 request messages for the RPC fuzz (tests/test_rpc_fuzz.py).

Every strategy mixes values the node knows (``KNOWN``: real task ids, current and stale leases,
registered workers, node ids, filled in by the fuzz module's fixtures at run time) with odd ones:
empty, huge (100 KB), unicode, NUL bytes, names breaking the name rule, negative numbers, int32
and int64 extremes, NaN and infinities, enum values no .proto declares (open enums take any
int32), huge repeated fields and maps with odd keys. Large constants are built once and sampled,
never generated (hypothesis would spend its time building them).

``junk`` adds well-formed protobuf that no client of ours writes: fields unknown to the message,
known field numbers with another wire type (kept as unknown fields by the parser), and known
numeric fields again with raw 64-bit values (the last one wins: a 64-bit varint in an int32
field, any bit pattern in a double).
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hypothesis import strategies as st

from protos.fedcoord.v1 import common_pb2 as cpb
from protos.fedcoord.v1 import federation_pb2 as fpb
from protos.fedcoord.v1 import handoff_pb2 as hpb
from protos.fedcoord.v1 import node_pb2 as npb

T = TypeVar("T")
Ref = tuple[str, int, str]  # (task id, attempt, worker id)


@dataclass
class Known:
    """What the node under test holds, refreshed before each fuzz test."""

    task_ids: list[str] = field(default_factory=list)
    handed_off: list[str] = field(default_factory=list)  # handed to the peer: reports on these are real
    leases: list[Ref] = field(default_factory=list)  # current when the test started
    stale: list[Ref] = field(default_factory=list)  # completed, failed, re-leased: refused
    workers: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)  # the node's own id, its peer's


KNOWN = Known()


def short(m: object, limit: int = 400) -> str:
    text = str(m).replace("\n", " ")
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


class Case:
    """What one example sends: a message (or a list of them) and junk bytes to append. Its repr
    is short: hypothesis writes the repr of every example, and some carry megabytes."""

    __slots__ = ("junk", "message")

    def __init__(self, message: Any, junk: bytes = b""):
        self.message = message
        self.junk = junk

    def __repr__(self) -> str:
        return f"Case({short(self.message)}, junk={self.junk!r})"


INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
HUGE_TEXT = "x" * 100_000
HUGE_UNICODE = "\u00e9\U0001f600" * 25_000  # 150 KB of UTF-8
HUGE_BYTES = bytes(range(256)) * 400  # 100 KB
OVER_LIMIT_BYTES = b"\x01" * ((1 << 20) + 1)  # one byte over the node's payload and result limits
ODD_TEXT = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\x00" * 64,
    "\u00e9",
    "\u540d\u524d",
    "\U0001f600",
    "\u200b",
    "\ufeffa",
    "a" * 128,
    "a" * 129,
    "-a",
    "_a",
    "a b",
    "a\nb",
    "a\tb",
    "../../etc/passwd",
    "%s%n",
    "{}",
    "null",
    "a" * 4096,
    "a" * 4097,
    HUGE_TEXT,
    HUGE_UNICODE,
)
ODD_INT32 = (0, 1, -1, 2, 3, 9, 10, 11, 100, 101, 10_000, 10_001, 100_000, 100_001, INT32_MAX, INT32_MIN, -2, 255)
ODD_INT64 = (0, 1, -1, INT64_MAX, INT64_MIN, INT32_MAX, 1 << 53, 10**18)
ODD_DOUBLE = (
    0.0,
    -0.0,
    0.001,
    0.5,
    1.0,
    -1.0,
    -0.001,
    300.0,
    300.5,
    5e-324,
    -5e-324,
    1e308,
    -1e308,
    7 * 86400.0,
    7 * 86400.0 + 1,
    30 * 86400.0 + 1,
    math.nan,
    -math.nan,
    math.inf,
    -math.inf,
)


def pick(get: Callable[[], Sequence[T]], empty: T) -> st.SearchStrategy[T]:
    """One of what ``get()`` returns when drawn (the pools change between tests), ``empty``
    when it returns nothing."""

    def choose(i: int) -> T:
        pool = get()
        return pool[i % len(pool)] if pool else empty

    return st.integers(0, 1 << 16).map(choose)


def _text(raw: bytes) -> str:
    """Any text (NUL, controls, astral planes, no surrogates) from raw bytes: one draw where
    st.text() takes one per character (every draw costs, and the fuzz makes tens of thousands)."""
    chars = []
    for i in range(0, len(raw) - 1, 2):
        c = int.from_bytes(raw[i : i + 2], "big")
        c = c if c < 0x80 or raw[i] & 1 else c * 17 % 0x110000  # mostly ASCII, sometimes anywhere
        chars.append(chr(c if not 0xD800 <= c <= 0xDFFF else c - 0x800))
    return "".join(chars)


NAME_CHARS = "abcxyz019_.:/@+-"
names = st.binary(min_size=1, max_size=10).map(lambda b: "".join(NAME_CHARS[x % len(NAME_CHARS)] for x in b))
texts = st.one_of(st.sampled_from(ODD_TEXT), st.binary(max_size=24).map(_text), names)
int32s = st.one_of(st.sampled_from(ODD_INT32), st.integers(INT32_MIN, INT32_MAX))
int64s = st.one_of(st.sampled_from(ODD_INT64), st.integers(INT64_MIN, INT64_MAX))
doubles = st.one_of(st.sampled_from(ODD_DOUBLE), st.floats())
enums = st.one_of(st.integers(-1, 11), int32s)


def rarely(common: st.SearchStrategy[T], rare: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """``rare`` about one time in 40 (hypothesis draws the bounds of a range far more often than
    the rest: the rare case takes a value inside)."""
    return st.integers(0, 39).flatmap(lambda i: rare if i == 17 else common)


payloads = rarely(
    st.one_of(st.sampled_from((b"", b"\x00", "\u00e9".encode())), st.binary(max_size=32)),
    st.sampled_from((HUGE_BYTES, OVER_LIMIT_BYTES)),
)
task_ids = st.one_of(
    pick(lambda: [*KNOWN.task_ids, *KNOWN.handed_off, *(r[0] for r in KNOWN.leases)], ""),
    texts,
)
worker_ids = st.one_of(pick(lambda: KNOWN.workers, ""), texts)
node_ids = st.one_of(pick(lambda: KNOWN.nodes, ""), texts)
MANY_IDS = tuple(f"t{i}" for i in range(10_001))  # past every batch limit
MANY_HUGE = (HUGE_TEXT,) * 30  # 3 MB


def lists_of(elements: st.SearchStrategy[T], huge: Sequence[Sequence[T]] = ()) -> st.SearchStrategy[list[T]]:
    """Up to 3 elements, rarely one of the ``huge`` lists."""
    small = st.lists(elements, max_size=3)
    return rarely(small, st.sampled_from([list(h) for h in huge])) if huge else small


id_lists = lists_of(task_ids, [MANY_IDS, MANY_HUGE, ("a", "a")])
name_lists = lists_of(texts, [MANY_IDS[:33], MANY_IDS, ("", "a"), MANY_HUGE])
contexts = st.one_of(
    st.dictionaries(texts, texts, max_size=2),
    st.sampled_from(
        [
            {"": ""},
            {"\x00": "\x00"},
            {"k" * 129: "v"},
            {"k": "v" * 4097},
            {f"k{i}": "v" for i in range(65)},
            {HUGE_TEXT: HUGE_TEXT},
        ]
    ),
)


_CURRENT = pick(lambda: KNOWN.leases, ("", 0, ""))
_STALE = pick(lambda: KNOWN.stale, ("", 0, ""))
_EITHER = st.one_of(_CURRENT, _STALE)
_KINDS = st.sampled_from(("current", "stale", "mangled", "random"))
_PARTS = st.sampled_from(("task", "attempt", "worker"))
_NEAR = st.sampled_from((-1, 1))


@st.composite
def _refs(draw: st.DrawFn) -> Ref:
    kind = draw(_KINDS)
    if kind == "current":
        return draw(_CURRENT)
    if kind == "stale":
        return draw(_STALE)
    if kind == "random":
        return draw(task_ids), draw(int32s), draw(worker_ids)
    tid, attempt, wid = draw(_EITHER)
    part = draw(_PARTS)
    if part == "task":
        return draw(task_ids), attempt, wid
    if part == "attempt":
        return tid, attempt + draw(_NEAR) if draw(st.booleans()) else draw(int32s), wid
    return tid, attempt, draw(worker_ids)


refs = _refs()  # a lease: current, stale, one of those with one part changed, or made up
lease_refs = refs.map(lambda r: cpb.LeaseRef(task_id=r[0], attempt=r[1], worker_id=r[2]))
_TYPES = st.one_of(names, texts)
_SPEC_FLAGS = st.integers(0, 511)


@st.composite
def _task_specs(draw: st.DrawFn) -> cpb.TaskSpec:
    m = cpb.TaskSpec(type=draw(_TYPES), payload=draw(payloads), priority=draw(enums))  # type: ignore[arg-type]
    flags = draw(_SPEC_FLAGS)  # which of the other fields are set (one draw for all)
    if flags & 1:
        m.context.update(draw(contexts))
    if flags & 2:
        m.required_capabilities.extend(draw(name_lists))
    if flags & 4:
        m.dependencies.extend(draw(id_lists))
    if flags & 8:
        m.difficulty = draw(int32s)
    if flags & 16:
        m.max_retries = draw(int32s)
    if flags & 32:
        m.timeout_s = draw(doubles)
    if flags & 64:
        m.idempotency_key = draw(texts)
    if flags & 128:
        m.id = draw(task_ids)
    if flags & 256:
        m.delay_s = draw(doubles)
    return m


task_specs = _task_specs()
MANY_SPECS = [cpb.TaskSpec(type="t")] * 10_001  # one past the batch limit
submit_requests = lists_of(task_specs, [MANY_SPECS]).map(lambda ts: npb.SubmitRequest(tasks=ts))
_FLAGS3 = st.integers(0, 7)


@st.composite
def _worker_specs(draw: st.DrawFn) -> npb.WorkerSpec:
    m = npb.WorkerSpec(id=draw(worker_ids), capabilities=draw(name_lists))
    flags = draw(_FLAGS3)
    if flags & 1:
        m.skill = draw(int32s)
    if flags & 2:
        m.concurrency = draw(int32s)
    return m


worker_specs = _worker_specs()
deregister_requests = st.builds(npb.DeregisterWorkerRequest, worker_id=worker_ids)
heartbeat_requests = st.builds(npb.HeartbeatRequest, worker_id=worker_ids)
# Valid waits are short: a claim or wait that is right to wait must not hold the fuzz up.
SHORT_WAITS = st.sampled_from((0.0, 0.001, 0.005))
BAD_WAITS = st.sampled_from((-0.001, -1.0, -math.inf, math.nan, -math.nan, 300.5, 1e308, math.inf, -5e-324))
WAITS = st.one_of(SHORT_WAITS, BAD_WAITS)
claim_requests = st.builds(npb.ClaimRequest, worker_id=worker_ids, max_tasks=int32s, wait_s=WAITS)
wait_requests = st.builds(npb.WaitTaskRequest, task_id=task_ids, timeout_s=WAITS)
complete_requests = st.one_of(
    st.builds(npb.CompleteRequest, lease=lease_refs, result=payloads),
    st.builds(npb.CompleteRequest, result=payloads),  # no lease at all
)
fail_requests = st.one_of(
    st.builds(npb.FailRequest, lease=lease_refs, error=texts, no_retry=st.booleans()),
    st.builds(npb.FailRequest, error=texts),
)
task_refs = st.builds(npb.TaskRef, task_id=task_ids)
stats_requests = st.builds(npb.StatsRequest, report=st.booleans(), history=st.booleans())

# ---------------------------------------------------------------------------------- federation

summary_requests = st.just(npb.SummaryRequest())  # nothing to fuzz but the junk
_SANE_DOUBLES = st.floats(-1e9, 1e9, allow_nan=False)
_SANE_SDS = st.one_of(st.just(0.0), st.floats(0.0, 1e6))
_SANE_NAMES = st.binary(min_size=1, max_size=8).map(lambda b: "n" + "".join(NAME_CHARS[x % len(NAME_CHARS)] for x in b))
_SANE_NODES = st.one_of(pick(lambda: KNOWN.nodes, "n"), _SANE_NAMES)
_SANE_TYPES = st.lists(st.sampled_from(("simple_qa", "coding", "analysis", "t")), unique=True, max_size=4).map(
    lambda ts: [*ts, "other"]
)


@dataclass(frozen=True)
class _ViewParts:
    """What a view's fields are drawn from: sane values only (the view checks and is applied) or
    any values (odd ones anywhere: it is most likely refused, naming the field)."""

    counts: st.SearchStrategy[int]
    doubles: st.SearchStrategy[float]
    sds: st.SearchStrategy[float]
    names: st.SearchStrategy[str]
    node_ids: st.SearchStrategy[str]
    types: st.SearchStrategy[list[str]]
    node_lists: st.SearchStrategy[list[str]]


_SANE = _ViewParts(
    counts=st.integers(0, INT64_MAX),
    doubles=_SANE_DOUBLES,
    sds=_SANE_SDS,
    names=st.sampled_from(("simple_qa", "coding", "other")),
    node_ids=_SANE_NODES,
    types=_SANE_TYPES,
    node_lists=st.lists(_SANE_NODES, max_size=3, unique=True),
)


def _mostly(sane: st.SearchStrategy[T], odd: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """``odd`` one time in 6 (not at a bound of the range: hypothesis draws those far more often)."""
    return st.integers(0, 5).flatmap(lambda i: odd if i == 3 else sane)


_ANY = _ViewParts(  # every field mostly sane: the odd values may be anywhere
    counts=_mostly(_SANE.counts, int64s),
    doubles=_mostly(_SANE.doubles, doubles),
    sds=_mostly(_SANE.sds, doubles),
    names=_mostly(_SANE.names, texts),
    node_ids=_mostly(_SANE.node_ids, node_ids),
    types=_mostly(_SANE.types, name_lists),
    node_lists=_mostly(_SANE.node_lists, lists_of(node_ids, [MANY_IDS, ("a", "a"), ("", "a")])),
)
_PARTS_OF = st.sampled_from((_SANE, _ANY))
_WINDOWS = st.sampled_from((20.0, 5.0, 0.5, 86400.0))
_VIEW_FLAGS = st.integers(0, 255)


@st.composite
def _estimate(draw: st.DrawFn, p: _ViewParts) -> fpb.Estimate:
    return fpb.Estimate(value=draw(p.doubles), sd=draw(p.sds))


@st.composite
def _quantile(draw: st.DrawFn, p: _ViewParts) -> fpb.QuantileEstimate:
    if p is _SANE or draw(st.booleans()):
        low, value, high = sorted(draw(st.lists(_SANE_DOUBLES, min_size=3, max_size=3)))
        return fpb.QuantileEstimate(q=draw(st.floats(0.0, 1.0)), value=value, low=low, high=high)
    return fpb.QuantileEstimate(q=draw(doubles), value=draw(doubles), low=draw(doubles), high=draw(doubles))


@st.composite
def _global_views(draw: st.DrawFn) -> fpb.GlobalView:
    p = draw(_PARTS_OF)
    m = fpb.GlobalView(
        round=draw(p.counts),
        at_ns=draw(p.counts),
        window=draw(p.counts),
        window_s=draw(_WINDOWS if p is _SANE else _mostly(_WINDOWS, doubles)),
        types=draw(p.types),
        participants=draw(p.node_lists),
        missing=draw(p.node_lists),
        capacity=draw(p.counts),
    )
    flags = draw(_VIEW_FLAGS)  # which of the other fields are set (one draw for all)
    if flags & 1:
        m.dropped.extend(
            fpb.Dropped(node_id=draw(st.one_of(st.just("?"), p.node_ids)), reason=draw(texts))
            for _ in range(draw(st.integers(0, 2)))
        )
    for bit, name in ((2, "submitted_per_s"), (4, "throughput_per_s"), (8, "failed_per_s")):
        if flags & bit:
            for key in draw(st.lists(p.names, max_size=3)):
                getattr(m, name)[key].CopyFrom(draw(_estimate(p)))
    if flags & 16:
        for name in ("handed_off_per_s", "occupied", "federation_load", "completed_in_histogram"):
            getattr(m, name).CopyFrom(draw(_estimate(p)))
    if flags & 32:
        m.completion_quantiles_s.extend(draw(st.lists(_quantile(p), max_size=3)))
    if flags & 64:
        for key in draw(st.lists(p.node_ids, max_size=3)):
            node_id = key if p is _SANE or draw(st.booleans()) else draw(p.node_ids)
            m.nodes[key].CopyFrom(
                fpb.NodeEstimate(
                    node_id=node_id,
                    window=draw(p.counts),
                    occupied=draw(_estimate(p)),
                    capacity=draw(p.counts),
                    load=draw(_estimate(p)),
                )
            )
    return m


# A view: half the time from sane values (it checks, and the node applies it), else with odd
# values here and there.
global_views = _global_views()
apply_federation_requests = st.one_of(
    global_views.map(lambda v: npb.ApplyFederationRequest(view=v)),
    st.just(npb.ApplyFederationRequest()),  # no view at all
)

# ---------------------------------------------------------------------------------- hand-off

offer_items = st.builds(
    hpb.OfferItem,
    task_id=task_ids,
    type=texts,
    priority=enums,
    difficulty=int32s,
    required_capabilities=st.one_of(st.just([]), name_lists),
)
MANY_OFFER_ITEMS = [hpb.OfferItem(task_id=f"o{i}", type="t") for i in range(10_001)]
offer_requests = st.builds(
    hpb.OfferRequest, offer_id=texts, from_node=node_ids, items=lists_of(offer_items, [MANY_OFFER_ITEMS])
)
# Specs are fuzzed in full by Submit (the same conversion and checks): records mostly carry
# plain ones, so the fuzz spends its time on the records' own fields.
PLAIN_SPECS = (
    cpb.TaskSpec(type="t"),
    cpb.TaskSpec(type="t", payload=b"p", priority=cpb.PRIORITY_HIGH, difficulty=3),
    cpb.TaskSpec(type="t", required_capabilities=["gpu"], max_retries=0, timeout_s=1.0),
    cpb.TaskSpec(type="t", id="r-explicit"),
    cpb.TaskSpec(type="t", dependencies=["r-dep"]),
)
_RECORD_SPECS = st.one_of(st.sampled_from(PLAIN_SPECS), task_specs)
_HOPS = st.one_of(st.integers(0, 2), int32s)
_MAYBE_TEXT = st.one_of(st.none(), texts)


@st.composite
def _handoff_records(draw: st.DrawFn) -> hpb.HandoffRecord:
    return hpb.HandoffRecord(
        task_id=draw(task_ids),
        spec=draw(_RECORD_SPECS),
        origin_node=draw(node_ids),
        created_ns=draw(int64s),
        attempt=draw(int32s),
        failures=draw(int32s),
        hops=draw(_HOPS),
        error=draw(_MAYBE_TEXT),
    )


handoff_records = _handoff_records()
MANY_RECORDS = [hpb.HandoffRecord(task_id=f"r{i}", spec=cpb.TaskSpec(type="t"), origin_node="p") for i in range(10_001)]
transfer_requests = st.builds(
    hpb.TransferRequest, offer_id=texts, from_node=node_ids, records=lists_of(handoff_records, [MANY_RECORDS])
)
status_requests = st.builds(hpb.TaskStatusRequest, from_node=node_ids, task_ids=id_lists)


@st.composite
def _outcomes(draw: st.DrawFn) -> hpb.Outcome:
    m = hpb.Outcome(
        task_id=draw(task_ids),
        status=draw(enums),  # type: ignore[arg-type]
        finished_ns=draw(int64s),
        attempt=draw(int32s),
        owner_node=draw(node_ids),
    )
    flags = draw(_FLAGS3)
    if flags & 1:
        m.worker_id = draw(worker_ids)
    if flags & 2:
        m.result = draw(payloads)
    if flags & 4:
        m.error = draw(texts)
    return m


outcomes = _outcomes()
report_requests = st.builds(hpb.ReportRequest, from_node=node_ids, outcomes=st.lists(outcomes, max_size=3))

# ---------------------------------------------------------------------------------- streams

completions = st.builds(lambda r, res: npb.Completion(task_id=r[0], attempt=r[1], result=res), refs, payloads)
failures = st.builds(
    lambda r, err, nr: npb.Failure(task_id=r[0], attempt=r[1], error=err, no_retry=nr), refs, texts, st.booleans()
)
credits = st.one_of(st.sampled_from((0, 1, 5, -1, 100_000, 100_001, INT32_MAX, INT32_MIN)), st.integers(-5, 50))
_STARTED = st.lists(lease_refs, max_size=2)
_COMPLETIONS = st.lists(completions, max_size=2)
_FAILURES = st.lists(failures, max_size=2)


@st.composite
def _worker_messages(draw: st.DrawFn, hello: bool) -> npb.WorkerMessage:
    m = npb.WorkerMessage(credit=draw(credits), heartbeat=draw(st.booleans()))
    if hello:
        m.hello.CopyFrom(draw(worker_specs))
    m.started.extend(draw(_STARTED))
    m.completions.extend(draw(_COMPLETIONS))
    m.failures.extend(draw(_FAILURES))
    return m


_HELLO, _PLAIN = _worker_messages(True), _worker_messages(False)
_LATER = st.lists(st.one_of(_PLAIN, _PLAIN, _PLAIN, _HELLO), max_size=4)  # a second hello now and then
_FIRST = st.sampled_from(("hello", "hello", "hello", "none", "empty"))


@st.composite
def _work_sequences(draw: st.DrawFn) -> list[npb.WorkerMessage]:
    first = draw(_FIRST)
    msgs = [draw(_HELLO)] if first == "hello" else [draw(_PLAIN)] if first == "none" else []
    return msgs + draw(_LATER)


# What a worker stream sends: usually a hello first (sometimes none, sometimes another one later),
# then a few messages of any mix.
work_sequences = _work_sequences()
watch_requests = st.builds(
    npb.WatchRequest, max_queue=st.one_of(st.sampled_from((0, 1, -1, 100_000, 100_001, INT32_MIN, INT32_MAX)), int32s)
)


# ---------------------------------------------------------------------------------- junk


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, wire: int, value: Any) -> bytes:
    key = _varint((number << 3) | wire)
    if wire == 0:
        return key + _varint(value)
    if wire == 1:
        return key + struct.pack("<Q", value & ((1 << 64) - 1))
    if wire == 5:
        return key + struct.pack("<I", value & 0xFFFFFFFF)
    blob: bytes = value
    return key + _varint(len(blob)) + blob


def junk_for(message: type[Any]) -> st.SearchStrategy[bytes]:
    """Well-formed protobuf to append to a serialized ``message``: it still parses. Built from
    one drawn seed (cheap), none a third of the time."""
    numeric: dict[int, list[int]] = {0: [], 1: []}  # wire type -> numbers it is right for (last one wins)
    other: list[int] = []  # numbers a numeric wire type is wrong for: kept as unknown fields
    for f in message.DESCRIPTOR.fields:
        if f.type == f.TYPE_DOUBLE:
            numeric[1].append(f.number)
        elif f.type not in (f.TYPE_STRING, f.TYPE_BYTES, f.TYPE_MESSAGE):  # int32, int64, bool, enum
            numeric[0].append(f.number)
        other.append(f.number)
    kinds = ["unknown", "wrong", *(f"right{w}" for w, ns in numeric.items() if ns)]

    def build(seed: int) -> bytes:
        if seed % 3 == 0:
            return b""
        rng = random.Random(seed)
        out = []
        for _ in range(rng.randint(1, 3)):
            kind = rng.choice(kinds)
            value = rng.choice((0, 1, (1 << 64) - 1, 1 << 31, (1 << 32) - 1, rng.getrandbits(64)))
            if kind == "unknown":
                wire = rng.choice((0, 1, 2, 5))
                blob = rng.randbytes(rng.randint(0, 16))
                out.append(_field(rng.choice((50, 99, 1000, (1 << 29) - 1)), wire, blob if wire == 2 else value))
            elif kind == "wrong":
                out.append(_field(rng.choice(other or [77]), 5, value))
            else:
                wire = int(kind[-1])
                out.append(_field(rng.choice(numeric[wire]), wire, value))
        return b"".join(out)

    return st.integers(0, (1 << 32) - 1).map(build)
