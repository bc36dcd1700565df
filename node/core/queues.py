"""Ready queues: per requirement class, one FIFO per priority, with aging.

Tasks are grouped by *class* = (required capabilities, difficulty), because a worker either can
or cannot take every task of a class; each worker keeps the list of classes it may take. Inside
a class there is one FIFO deque per priority. The next task for a worker is the head with the
smallest *line key* ``queued_ns + rank * aging_ns`` among its classes: within a priority this is
FIFO, across priorities a higher priority wins unless a lower one has waited ``aging`` longer
per level (so LOW work is never starved). Keys are static, so no re-sorting as time passes.

Cancelled tasks stay in their deque and are skipped when they reach the head (lazy removal).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

from node.model import PRIORITY_ORDER, Task, TaskStatus

__all__ = ["ReadyQueues", "TaskClass", "class_key"]

_QUEUED = TaskStatus.QUEUED
_RANKS = {p: i for i, p in enumerate(PRIORITY_ORDER)}

ClassKey = tuple[frozenset[str], int]


def class_key(task: Task) -> ClassKey:
    return (frozenset(task.required_capabilities), task.difficulty)


class TaskClass:
    __slots__ = ("capabilities", "deques", "difficulty", "key", "size")

    def __init__(self, key: ClassKey):
        self.key = key
        self.capabilities, self.difficulty = key
        self.deques: tuple[deque[Task], ...] = tuple(deque() for _ in PRIORITY_ORDER)
        self.size = 0  # entries in the deques, cancelled ones included until skipped

    def __repr__(self) -> str:
        return f"TaskClass(caps={sorted(self.capabilities)}, difficulty={self.difficulty}, size={self.size})"


class ReadyQueues:
    def __init__(self, aging_s: float):
        aging_ns = int(aging_s * 1e9)
        self.offsets: tuple[int, ...] = tuple(rank * aging_ns for rank in range(len(PRIORITY_ORDER)))
        self.classes: dict[ClassKey, TaskClass] = {}
        # (required capabilities as given, difficulty) -> class: a cache that skips the frozenset
        self.by_requirements: dict[tuple[Sequence[str], int], TaskClass] = {}

    def line_key(self, task: Task) -> int:
        assert task.queued_ns is not None
        return task.queued_ns + self.offsets[_RANKS[task.priority]]

    def class_of(self, task: Task) -> tuple[TaskClass, bool]:
        """The class of a task, and whether it was created just now."""
        fast = (task.spec.required_capabilities, task.spec.difficulty)
        cls = self.by_requirements.get(fast)
        if cls is not None:
            return cls, False
        key = class_key(task)
        cls = self.classes.get(key)
        created = cls is None
        if cls is None:
            cls = self.classes[key] = TaskClass(key)
        if len(self.by_requirements) < 4096:
            self.by_requirements[fast] = cls
        return cls, created

    def push(self, task: Task, cls: TaskClass) -> None:
        cls.deques[_RANKS[task.spec.priority]].append(task)  # type: ignore[index]
        cls.size += 1

    def pop_for(self, classes: list[TaskClass], n: int) -> list[Task]:
        """Remove and return up to ``n`` tasks in line order among ``classes``.

        Takes runs: once the best head is found, keeps taking from the same deque while its
        head stays ahead of the runner-up, so a batch from one deque costs one comparison pass.
        On equal line keys the lower priority goes first: it has waited longer.
        """
        out: list[Task] = []
        offsets = self.offsets
        while len(out) < n:
            best_key = second_key = None
            best_cls: TaskClass | None = None
            best_dq: deque[Task] | None = None
            best_off = best_rank = second_rank = 0
            for cls in classes:
                if not cls.size:
                    continue
                for rank, dq in enumerate(cls.deques):
                    while dq:
                        head = dq[0]
                        if head.status is _QUEUED:
                            key = head.queued_ns + offsets[rank]  # type: ignore[operator]
                            if best_key is None or key < best_key or (key == best_key and rank > best_rank):
                                second_key, second_rank = best_key, best_rank
                                best_key, best_cls, best_dq, best_off, best_rank = key, cls, dq, offsets[rank], rank
                            elif second_key is None or key < second_key or (key == second_key and rank > second_rank):
                                second_key, second_rank = key, rank
                            break
                        dq.popleft()  # cancelled or otherwise gone: drop the stale entry
                        cls.size -= 1
            if best_dq is None or best_cls is None:
                break
            # Take a run from the best deque while it stays first in line.
            popleft = best_dq.popleft
            append = out.append
            taken = 0
            while best_dq and len(out) < n:
                head = best_dq[0]
                if head.status is not _QUEUED:
                    popleft()
                    taken += 1
                    continue
                if second_key is not None:
                    key = head.queued_ns + best_off  # type: ignore[operator]
                    if key > second_key or (key == second_key and second_rank > best_rank):
                        break
                append(popleft())
                taken += 1
            best_cls.size -= taken
        return out

    def live(self) -> Iterator[Task]:
        """Every queued task still in line (for checks and snapshots; O(n))."""
        for cls in self.classes.values():
            for dq in cls.deques:
                for t in dq:
                    if t.status is _QUEUED:
                        yield t
