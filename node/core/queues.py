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

import heapq
from collections import deque
from collections.abc import Iterator, Sequence
from itertools import islice

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
        # Per priority rank: entries still in the deques whose task is no longer queued
        # (cancelled in line, left there for lazy removal), so depths() needs no scan.
        self.stale: list[int] = [0] * len(PRIORITY_ORDER)
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

    def remove(self, task: Task) -> None:
        """Take ``task`` out of line now (not lazily): it is being handed off and may come back
        (:meth:`put_back`). Tasks chosen for hand-off are taken from the tail, so the search
        from the right is short."""
        cls, _ = self.class_of(task)
        dq = cls.deques[_RANKS[task.spec.priority]]  # type: ignore[index]
        if dq and dq[-1] is task:
            dq.pop()
        else:
            for i in range(len(dq) - 1, -1, -1):
                if dq[i] is task:
                    del dq[i]
                    break
            else:
                raise KeyError(task.id)
        cls.size -= 1

    def put_back(self, task: Task, cls: TaskClass) -> None:
        """Return ``task`` to its old place in line (by its unchanged ``queued_ns``)."""
        dq = cls.deques[_RANKS[task.spec.priority]]  # type: ignore[index]
        q = task.queued_ns
        assert q is not None
        i = len(dq)
        while i > 0 and (dq[i - 1].queued_ns or 0) > q:
            i -= 1
        dq.insert(i, task)
        cls.size += 1

    def tails(self, n: int) -> tuple[list[Task], bool]:
        """Up to ``n`` queued tasks from the back of every deque (the ones that would wait the
        longest), candidates for a hand-off; and whether they all came from one deque (then
        they are in line order already, last in line first)."""
        out: list[Task] = []
        sources = 0
        stale = self.stale
        for cls in self.classes.values():
            if not cls.size:
                continue
            for rank, dq in enumerate(cls.deques):
                if not dq:
                    continue
                if not stale[rank]:  # no cancelled entry of this priority anywhere: all are queued
                    out.extend(islice(reversed(dq), n))
                    sources += 1
                    continue
                taken = 0
                for t in reversed(dq):
                    if taken >= n:
                        break
                    if t.status is _QUEUED:
                        out.append(t)
                        taken += 1
                if taken:
                    sources += 1
        return out, sources <= 1

    def pop_for(self, classes: list[TaskClass], n: int) -> list[Task]:
        """Remove and return up to ``n`` tasks in line order among ``classes``.

        The heads of the non-empty deques go in a small heap ordered by line key (on equal
        keys the lower priority first: it has waited longer). Tasks are taken in runs: from
        the first deque while its head stays ahead of the heap's top, so a batch from one deque
        costs no heap work and a switch between deques costs O(log k).
        """
        out: list[Task] = []
        offsets = self.offsets
        heap: list[tuple[int, int, int, deque[Task], TaskClass]] = []
        for cls in classes:
            if not cls.size:
                continue
            for rank, dq in enumerate(cls.deques):
                while dq:
                    head = dq[0]
                    if head.status is _QUEUED:
                        heap.append((head.queued_ns + offsets[rank], -rank, len(heap), dq, cls))  # type: ignore[operator]
                        break
                    dq.popleft()  # cancelled or otherwise gone: drop the stale entry
                    cls.size -= 1
                    self.stale[rank] -= 1
        if not heap:
            return out
        heapq.heapify(heap)
        append = out.append
        while heap and len(out) < n:
            _, neg_rank, idx, dq, cls = heapq.heappop(heap)
            off = offsets[-neg_rank]
            next_key, next_neg_rank = (heap[0][0], heap[0][1]) if heap else (None, 0)
            popleft = dq.popleft
            taken = 0
            while dq:
                head = dq[0]
                if head.status is not _QUEUED:
                    popleft()
                    taken += 1
                    self.stale[-neg_rank] -= 1
                    continue
                key = head.queued_ns + off  # type: ignore[operator]
                if len(out) >= n:
                    break
                if next_key is not None and (key > next_key or (key == next_key and neg_rank > next_neg_rank)):
                    heapq.heappush(heap, (key, neg_rank, idx, dq, cls))
                    break
                append(popleft())
                taken += 1
            cls.size -= taken
        return out

    def depths(self) -> list[int]:
        """Tasks in line per priority rank, O(classes): the deques' lengths less their stale entries."""
        n = [0] * len(PRIORITY_ORDER)
        for cls in self.classes.values():
            if cls.size:
                for rank, dq in enumerate(cls.deques):
                    n[rank] += len(dq)
        return [a - b for a, b in zip(n, self.stale, strict=True)]

    def oldest_ns(self) -> int | None:
        """The smallest ``queued_ns`` in line (each deque is in queue-time order: its first live
        entry is its oldest), O(classes) plus the stale entries at the heads; None when empty."""
        best: int | None = None
        for cls in self.classes.values():
            if not cls.size:
                continue
            for dq in cls.deques:
                for t in dq:
                    if t.status is _QUEUED:
                        q = t.queued_ns
                        if q is not None and (best is None or q < best):
                            best = q
                        break
        return best

    def live(self) -> Iterator[Task]:
        """Every queued task still in line (for checks and snapshots; O(n))."""
        for cls in self.classes.values():
            for dq in cls.deques:
                for t in dq:
                    if t.status is _QUEUED:
                        yield t
