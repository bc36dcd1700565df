"""Dependencies between tasks: who waits on whom, and batch validation (unknown ids, cycles)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from node.errors import ValidationError

__all__ = ["DependencyGraph", "order_batch"]


class DependencyGraph:
    """Pending tasks and the active tasks they wait on."""

    def __init__(self) -> None:
        # waiting task id -> the dependencies it still waits on (a set: an entry of ``dependents``
        # that is repeated or left over from before a requeue must not count twice)
        self.unmet: dict[str, set[str]] = {}
        self.dependents: dict[str, list[str]] = {}  # task id -> tasks waiting on it

    def wait(self, task_id: str, on: Sequence[str]) -> None:
        for d in on:
            self.dependents.setdefault(d, []).append(task_id)
        self.unmet[task_id] = set(on)

    def take_dependents(self, task_id: str) -> list[str]:
        """The tasks waiting on ``task_id`` (which just finished); forgets them as its dependents."""
        return self.dependents.pop(task_id, [])

    def waits_on(self, task_id: str, dep_id: str) -> bool:
        left = self.unmet.get(task_id)
        return left is not None and dep_id in left

    def met_one(self, task_id: str, dep_id: str) -> bool:
        """``dep_id`` of ``task_id`` completed; True when none is left (it is ready)."""
        left = self.unmet.get(task_id)
        if left is None or dep_id not in left:
            return False
        left.discard(dep_id)
        if left:
            return False
        del self.unmet[task_id]
        return True

    def forget(self, task_id: str) -> None:
        self.unmet.pop(task_id, None)


def order_batch(
    deps: Sequence[Sequence[str]],
    ids: Sequence[str],
    new: Sequence[int],
    batch_ids: dict[str, int],
    exists: Callable[[str], bool],
) -> list[int]:
    """Check the dependencies of the specs at indexes ``new`` and return those indexes in an
    order where every spec comes after the specs of this batch it depends on.

    A dependency must be in the batch or ``exists``; cycles inside the batch are refused (a new
    task cannot be a dependency of an existing one, so no other cycle is possible).
    """
    indeg = dict.fromkeys(new, 0)
    children: dict[int, list[int]] = {}
    for i in new:
        for d in deps[i]:
            j = batch_ids.get(d)
            if j is not None:
                indeg[i] += 1
                children.setdefault(j, []).append(i)
            elif not exists(d):
                raise ValidationError("dependencies", f"unknown task id {d!r}", index=i)
    ready = [i for i in reversed(new) if indeg[i] == 0]
    order: list[int] = []
    while ready:
        j = ready.pop()
        order.append(j)
        for i in reversed(children.get(j, ())):
            indeg[i] -= 1
            if indeg[i] == 0:
                ready.append(i)
    if len(order) < len(new):
        i = min(i for i in new if indeg[i] > 0)
        raise ValidationError(
            "dependencies", f"task {ids[i]!r} is part of a dependency cycle", limit="acyclic", index=i
        )
    return order
