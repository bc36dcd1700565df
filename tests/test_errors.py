"""The exception hierarchy: every error is a FedcoordError and survives pickling (a sweep runs
cores in worker processes; multiprocessing sends exceptions back by pickle)."""

from __future__ import annotations

import pickle

import pytest

import node
from node.errors import (
    EmbeddedRedisError,
    FedcoordError,
    InvalidTransitionError,
    NotFoundError,
    StaleLeaseError,
    TaskNotFoundError,
    ValidationError,
    WorkerNotFoundError,
)

SAMPLES: list[FedcoordError] = [
    ValidationError("difficulty", "11 out of range", limit="1..10", index=3),
    ValidationError("specs", "must be a list"),
    NotFoundError("peer", "n9"),
    TaskNotFoundError("t-1"),
    WorkerNotFoundError("w-1"),
    InvalidTransitionError("t-1", "completed", "requeue", "status failed"),
    StaleLeaseError("t-1", 2, "the task is queued at attempt 3"),
    EmbeddedRedisError("no redis-server found"),
    node.StoreUnavailableError("down"),
    node.FencedError("taken over"),
    node.NodeOwnedError("owned"),
    node.NodeClosedError("closed"),
    node.WaitTimeoutError("late"),
]


@pytest.mark.parametrize("err", SAMPLES, ids=lambda e: type(e).__name__)
def test_errors_survive_pickling_with_their_fields(err: FedcoordError) -> None:
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert str(back) == str(err)
    assert {k: v for k, v in vars(back).items()} == {k: v for k, v in vars(err).items()}


def test_every_exported_error_is_a_fedcoord_error() -> None:
    exported = [getattr(node, name) for name in node.__all__]
    errors = [e for e in exported if isinstance(e, type) and issubclass(e, BaseException)]
    assert EmbeddedRedisError in errors
    assert all(issubclass(e, FedcoordError) for e in errors), [e for e in errors if not issubclass(e, FedcoordError)]
