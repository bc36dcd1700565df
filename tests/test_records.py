"""Flower records of the federation's exchange: released summaries up, the view down. Round trips
are exact, and a record that does not decode is refused with SchemaError (nothing half-read)."""

from __future__ import annotations

import dataclasses

import pytest
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from federation.aggregate import aggregate
from federation.privacy.schema import SchemaError
from federation.privacy.status import PrivacyStatus, ReleaseOutcome, ReleaseStatus
from federation.records import (
    outcome_from_records,
    outcome_to_records,
    query_records,
    round_of,
    summary_from_records,
    summary_to_records,
    view_from_records,
)
from tests.test_aggregate import summary, three

STATUS = PrivacyStatus(True, "gaussian", 13.6, 184.96, 3, 1e-6, 1.0, 0.024, 0.008, 4, 1, 99, 0.5, 0.9, 0.1, True)


def test_a_summary_goes_through_plain_records_and_back_exactly() -> None:
    for s in three():
        rd = RecordDict(summary_to_records(s))
        assert isinstance(rd["summary"], MetricRecord) and isinstance(rd["summary.names"], ConfigRecord)
        assert summary_from_records(rd["summary"], rd["summary.names"]) == s


def test_an_outcome_goes_through_records_and_back_with_or_without_a_summary() -> None:
    s = three()[0]
    for o in (
        ReleaseOutcome(ReleaseStatus.RELEASED, s, "window 9 released", STATUS, s.node_id),
        ReleaseOutcome(ReleaseStatus.NO_WINDOW, None, "no complete window yet", STATUS, "n7"),
        ReleaseOutcome(ReleaseStatus.UNAVAILABLE, None, "node at 127.0.0.1:1: down", None, ""),
        ReleaseOutcome(
            ReleaseStatus.BUDGET_EXHAUSTED, None, "privacy budget", dataclasses.replace(STATUS, last_window=None), "n7"
        ),
    ):
        assert outcome_from_records(outcome_to_records(o)) == o


def test_a_view_goes_through_records_and_back_exactly() -> None:
    good = three()
    v = aggregate([*good, {"not": "a summary"}], round=4, now_ns=1, expected=["n1", "n2", "n3", "n9"])
    q = query_records(5, v)
    assert round_of(q) == 5
    assert view_from_records(q["view"], q["view.names"]) == v
    empty = aggregate([], round=1, now_ns=2)
    q = query_records(2, empty)
    assert view_from_records(q["view"], q["view.names"]) == empty
    assert "view" not in query_records(1, None)  # the first round carries no view


def test_records_that_do_not_decode_are_refused() -> None:
    s = summary("n1")
    rd = summary_to_records(s)
    numbers, names = dict(rd["summary"]), dict(rd["summary.names"])
    for bad_numbers, bad_names in (
        ({**numbers, "raw_counts": [1, 2]}, names),  # a field the schema does not have
        ({k: v for k, v in numbers.items() if k != "occupied_slots"}, names),
        ({**numbers, "submitted": [1, 2]}, names),  # a count missing
        ({**numbers, "occupied_slots": -1}, names),
        (numbers, {**names, "extra": "x"}),
        (numbers, {**names, "types": ["a", "b", "c"]}),  # not ending in other
    ):
        with pytest.raises(SchemaError):
            summary_from_records(bad_numbers, bad_names)
    o = outcome_to_records(ReleaseOutcome(ReleaseStatus.RELEASED, s, "ok", None, "n2"))  # says n2, carries n1
    with pytest.raises(SchemaError, match="answered with a summary of"):
        outcome_from_records(o)
    o = outcome_to_records(ReleaseOutcome(ReleaseStatus.NO_WINDOW, None, "none", None, "n1"))
    o["status"] = ConfigRecord({"status": "released", "reason": "x", "node_id": "n1"})  # released, no summary
    with pytest.raises(SchemaError, match="without a summary"):
        outcome_from_records(o)
    o["status"] = ConfigRecord({"status": "exploded", "reason": "x"})
    with pytest.raises(SchemaError, match="status"):
        outcome_from_records(o)
    v = aggregate(three(), round=1, now_ns=1)
    q = query_records(2, v)
    nums = dict(q["view"])
    nums["nodes.window"] = nums["nodes.window"][:1]  # lists that no longer line up
    with pytest.raises(SchemaError, match="line up"):
        view_from_records(nums, q["view.names"])


def test_a_supernode_speaks_for_one_node_and_a_restarted_one_takes_its_name_over() -> None:
    from federation.server_app import _Names  # noqa: PLC0415

    names = _Names()
    assert names.claim(1, "n1", {1}) is None and names.claim(2, "n2", {1, 2}) is None
    assert names.claim(1, "n1", {1, 2}) is None  # the same again: fine
    assert "now claims" in (names.claim(1, "n2", {1, 2}) or "")  # SuperNode 1 cannot turn into n2
    assert "another SuperNode" in (names.claim(3, "n1", {1, 3}) or "")  # n1's SuperNode answered: not yours
    assert names.claim(3, "n1", {2, 3}) is None  # n1's old SuperNode is gone (restarted under a new id)
    assert names.by_supernode == {2: "n2", 3: "n1"}
