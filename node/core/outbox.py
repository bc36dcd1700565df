"""What the core asks the runtime to persist and announce: the mutations since the last drain.

The outbox is the core's only output. The runtime swaps it out at each group commit, writes
it durably, and only then acknowledges the callers and publishes its events. Tests assert
its exact contents.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from node.model import Event, EventKind, Lease, Task, TaskStatus

if TYPE_CHECKING:
    from node.core.workers import WorkerState

__all__ = ["Outbox", "RawEvent"]

# (kind, task, status, worker id, attempt, time, error): cheap to make; Event objects are built
# only when somebody listens (see Outbox.event_list). The task's id, type and priority never change.
RawEvent = tuple[EventKind, Task, TaskStatus, str | None, int, int, str | None]


@dataclass(slots=True)
class Outbox:
    saved: dict[str, Task] = field(default_factory=dict)  # active records to upsert (latest state wins)
    finished: dict[str, Task] = field(default_factory=dict)  # terminal: leave the active set, archive
    workers: dict[str, WorkerState] = field(default_factory=dict)  # worker records to upsert
    dropped_workers: set[str] = field(default_factory=set)
    idempotency: dict[str, str] = field(default_factory=dict)  # new key -> task id
    events: list[RawEvent] = field(default_factory=list)
    grants: dict[str, list[Lease]] = field(default_factory=dict)  # waiting claims that got work
    counters: Counter[str] = field(default_factory=Counter)  # submitted, retried, timed_out, ...
    submitted: dict[str, int] = field(default_factory=dict)  # task type -> tasks submitted (for summaries)
    adopted: dict[str, int] = field(default_factory=dict)  # task type -> tasks taken over from peers
    # The same with creation times, for the privacy bounding of the summaries: (created ns,
    # type -> tasks) per submit call, (created ns, type) per adopted task, and the ids of failed
    # tasks put back in line (their second ending in a window is not counted).
    submitted_at: list[tuple[int, dict[str, int]]] = field(default_factory=list)
    adopted_at: list[tuple[int, str]] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    # Hand-off: intents (a task's stored record stays as it was, queued, while an intent names the
    # peer: a cheap write, and an abort leaves the record in its old place in line), final records
    # of adopted tasks to report to the node they came from (kept until it
    # acknowledges), reports acknowledged, final records of handed-off tasks that came back (archive
    # only: the owner counted them), and ids declared unknown to a peer that asked (task id -> ns).
    intents: dict[str, str] = field(default_factory=dict)  # task id -> peer it is being handed to
    intents_done: set[str] = field(default_factory=set)  # hand-offs that ended (finished or aborted)
    reports: dict[str, Task] = field(default_factory=dict)
    reports_done: set[str] = field(default_factory=set)
    archived: dict[str, Task] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(
            self.saved
            or self.finished
            or self.workers
            or self.dropped_workers
            or self.idempotency
            or self.events
            or self.grants
            or self.counters
            or self.submitted
            or self.adopted
            or self.requeued
            or self.intents
            or self.intents_done
            or self.reports
            or self.reports_done
            or self.archived
            or self.refused
        )

    def event_list(self) -> list[Event]:
        return [
            Event(kind, t.id, st, t.type, t.priority, worker, attempt, ts, error)
            for kind, t, st, worker, attempt, ts, error in self.events
        ]
