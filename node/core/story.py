"""An optional, bounded log of each task's transitions: what ``Core.story(task_id)`` answers.

Off by default (``CoreConfig.story_tasks = 0``). When on, the core builds its events always and
the log takes them from each outbox as it is drained: the transitions of the last
``story_tasks`` tasks seen (older tasks are forgotten first), at most ``MAX_ENTRIES`` each.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

from node.model import EventKind, TaskStatus

if TYPE_CHECKING:
    from node.core.outbox import RawEvent

__all__ = ["StoryEntry", "StoryLog"]

MAX_ENTRIES = 64


class StoryEntry(NamedTuple):
    at_ns: int
    kind: EventKind
    status: TaskStatus
    worker_id: str | None
    attempt: int
    error: str | None


class StoryLog:
    def __init__(self, max_tasks: int):
        self.max_tasks = max_tasks
        self._by_task: dict[str, list[StoryEntry]] = {}

    def __len__(self) -> int:
        return len(self._by_task)

    def record(self, events: Iterable[RawEvent]) -> None:
        by_task = self._by_task
        for kind, t, status, worker, attempt, ts, error in events:
            entries = by_task.get(t.id)
            if entries is None:
                if len(by_task) >= self.max_tasks:
                    del by_task[next(iter(by_task))]  # the task seen longest ago
                entries = by_task[t.id] = []
            elif len(entries) >= MAX_ENTRIES:
                del entries[0]
            entries.append(StoryEntry(ts, kind, status, worker, attempt, error))

    def story(self, task_id: str) -> list[StoryEntry]:
        return list(self._by_task.get(task_id, ()))
