"""Rebuilding a core from stored records: at start, after a store outage, and in tests.

:func:`rebuild_core` is pure (records and a time in, a core out); :func:`read_records` is the
I/O half, which streams the active tasks from the store and decodes them chunk by chunk as they
arrive. Records that cannot be decoded are skipped and reported (never fatal: one corrupt
record must not keep a node down).
"""

from __future__ import annotations

import gc
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from node.core import Core, CoreConfig, WorkerState
from node.model import Task, TaskStatus
from node.store.base import Store
from node.store.codec import CorruptRecordError, decode_task, decode_worker

__all__ = ["Records", "decode_tasks", "decode_workers", "read_records", "rebuild_core"]

log = logging.getLogger("fedcoord.node")


@dataclass(slots=True)
class Records:
    """What a node reloads: decoded active tasks and workers, cumulative counters, and how many
    records could not be decoded."""

    tasks: list[Task] = field(default_factory=list)
    workers: list[WorkerState] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    reports: list[Task] = field(default_factory=list)  # adopted tasks' results not yet acknowledged
    refused: dict[str, int] = field(default_factory=dict)  # ids declared unknown to a peer
    handoffs: dict[str, str] = field(default_factory=dict)  # task id -> peer, hand-offs in flight
    remote_pending: set[str] = field(default_factory=set)  # handed-off tasks pending ones wait on
    corrupt: int = 0

    def dangling_dependencies(self) -> set[str]:
        """Ids pending tasks wait on that are not active here (finished, or handed off)."""
        active = {t.id for t in self.tasks}
        return {
            d
            for t in self.tasks
            if t.status is TaskStatus.PENDING
            for d in (t.waits_on or t.spec.dependencies)
            if d not in active
        }


def decode_tasks(raws: Iterable[bytes], into: Records, node_id: str) -> None:
    append = into.tasks.append
    for raw in raws:
        try:
            append(decode_task(raw))
        except CorruptRecordError as e:
            into.corrupt += 1
            log.error("node %s: skipping a corrupt task record: %s", node_id, e)


def decode_workers(raws: Iterable[bytes], into: Records, node_id: str) -> None:
    for raw in raws:
        try:
            into.workers.append(decode_worker(raw))
        except CorruptRecordError as e:
            into.corrupt += 1
            log.error("node %s: skipping a corrupt worker record: %s", node_id, e)


async def read_records(store: Store, node_id: str) -> Records:
    """Everything the store holds for a node's core. The cyclic garbage collector is off while
    a million records may be decoded (it would run full collections over a growing heap)."""
    rec = Records()
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        async for chunk in store.iter_active():
            decode_tasks(chunk, rec, node_id)
        snap = await store.load(with_tasks=False)
        decode_workers(snap.workers, rec, node_id)
        rec.counters = snap.counters
        reports = Records()
        decode_tasks(snap.reports, reports, node_id)
        rec.reports, rec.corrupt = reports.tasks, rec.corrupt + reports.corrupt
        rec.refused = snap.refused
        rec.handoffs = snap.handoffs
    finally:
        if gc_was_on:
            gc.enable()
    return rec


def rebuild_core(config: CoreConfig, rng: random.Random, rec: Records, now_ns: int) -> Core:
    """A core holding what the records say, as of ``now_ns``: queues rebuilt in line order,
    leases of workers that are gone put back in line, hand-offs in flight parked, and the first
    tick run (leases that expired meanwhile fail over). What that changed is in the core's
    outbox, to be written."""
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        core = Core(config, rng)
        core.restore(
            rec.tasks,
            rec.workers,
            now_ns,
            reports=rec.reports,
            refused=rec.refused,
            remote_pending=rec.remote_pending,
            handoffs=rec.handoffs,
        )
        core.tick(now_ns)
    finally:
        if gc_was_on:
            gc.enable()
    return core
