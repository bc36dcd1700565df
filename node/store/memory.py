"""MemoryStore: the store interface over Python dicts, for simulation and pure tests.

Several MemoryStore objects can share one :class:`MemoryBackend` (like several processes
sharing one Redis), which is how the owner lock and fencing are exercised without Redis.
Expiry follows the injected clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from node.errors import FencedError, LedgerRefusedError, NodeOwnedError, StoreUnavailableError
from node.store.base import (
    LEDGER_KEEP_S,
    REFUSED_KEEP_S,
    HistoryRow,
    LedgerEntry,
    LedgerState,
    OwnerToken,
    Snapshot,
    Store,
    bucket_of,
    buckets_to_search,
    dead_cutoff_ms,
    owned_message,
    spent_since,
    wall_s,
)
from node.store.codec import WriteBatch

__all__ = ["MemoryBackend", "MemoryStore"]


@dataclass
class _NodeData:
    active: dict[str, bytes] = field(default_factory=dict)
    done: dict[int, dict[str, bytes]] = field(default_factory=dict)  # bucket -> records
    done_expiry: dict[int, float] = field(default_factory=dict)
    workers: dict[str, bytes] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    idem: dict[str, tuple[str, float]] = field(default_factory=dict)  # key -> (task id, expires at)
    owner: tuple[str, float] | None = None  # (token, expires at)
    epoch: int = 0
    history: dict[int, bytes] = field(default_factory=dict)
    handoffs: dict[str, str] = field(default_factory=dict)
    reports: dict[str, bytes] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    dead: dict[str, int] = field(default_factory=dict)  # dead letters: id -> finish time ms
    ledger: LedgerState = field(default_factory=LedgerState)
    ledger_trimmed_until_us: int | None = None


class MemoryBackend:
    """The shared 'server': node data by node id. ``available = False`` simulates an outage."""

    def __init__(self, clock: Callable[[], float] = wall_s):
        self.clock = clock
        self.nodes: dict[str, _NodeData] = {}
        self.available = True
        self.subscribers: dict[str, int] = {}
        self.published: dict[str, list[bytes]] = {}

    def node(self, node_id: str) -> _NodeData:
        return self.nodes.setdefault(node_id, _NodeData())


class MemoryStore(Store):
    def __init__(
        self,
        node_id: str,
        backend: MemoryBackend | None = None,
        *,
        retention_s: float = 86400.0,
        bucket_s: int | None = None,
    ):
        self.node_id = node_id
        self.backend = backend or MemoryBackend()
        self.retention_s = retention_s
        self.bucket_s = bucket_s or max(1, math.ceil(retention_s / 24))
        self._token: OwnerToken | None = None
        self._lock_ttl_s = 10.0

    @property
    def description(self) -> str:
        return "memory"

    @property
    def _d(self) -> _NodeData:
        if not self.backend.available:
            raise StoreUnavailableError("memory backend unavailable (simulated outage)")
        return self.backend.node(self.node_id)

    async def open(self) -> None:
        _ = self._d

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        _ = self._d

    def _owner_now(self) -> str | None:
        d = self._d
        if d.owner is not None and d.owner[1] <= self.backend.clock():
            d.owner = None
        return None if d.owner is None else d.owner[0]

    async def acquire(self, *, wait_s: float = 0.0, lock_ttl_s: float = 10.0, takeover: bool = False) -> OwnerToken:
        self._lock_ttl_s = lock_ttl_s
        deadline = self.backend.clock() + wait_s
        while True:
            held = self._owner_now()
            holder = OwnerToken.decode(held) if held else None
            if held is None or takeover or (holder is not None and holder.is_dead_local_process()):
                d = self._d
                d.epoch += 1
                tok = OwnerToken.mine(d.epoch)
                d.owner = (tok.encode(), self.backend.clock() + lock_ttl_s)
                self._token = tok
                return tok
            if self.backend.clock() >= deadline:
                raise NodeOwnedError(owned_message(self.node_id, held))
            await asyncio.sleep(0.05)

    async def refresh(self) -> None:
        tok = self._require_token()
        held = self._owner_now()
        if held != tok.encode() and (held is not None or self._d.epoch != tok.epoch):
            raise FencedError(f"node {self.node_id!r} was taken over by {held}")
        self._d.owner = (tok.encode(), self.backend.clock() + self._lock_ttl_s)

    async def release(self) -> None:
        if self._token is None or not self.backend.available:
            return
        d = self._d
        if d.owner is not None and d.owner[0] == self._token.encode():
            d.owner = None
        self._token = None

    def _require_token(self) -> OwnerToken:
        if self._token is None:
            raise FencedError(f"node {self.node_id!r}: this store does not hold the owner lock")
        return self._token

    async def write(self, batch: WriteBatch) -> None:
        # Like the Redis flush script: a lock that vanished is taken back only if nobody
        # acquired the node since (the epoch counter is still ours).
        d = self._check_owner()
        now = self.backend.clock()
        for tid, raw in batch.upserts:
            d.active[tid] = raw
        if batch.finished:
            b = bucket_of(batch.now_ns / 1e9, self.bucket_s)
            bucket = d.done.setdefault(b, {})
            for tid, raw in batch.finished:
                d.active.pop(tid, None)
                bucket[tid] = raw
            d.done_expiry[b] = b + self.bucket_s + self.retention_s
        for wid, raw in batch.workers:
            d.workers[wid] = raw
        for wid in batch.dropped_workers:
            d.workers.pop(wid, None)
        for k, v in batch.counters.items():
            d.counters[k] = d.counters.get(k, 0) + v
        for key, tid in batch.idempotency:
            d.idem[key] = (tid, now + self.retention_s)
        for tid in batch.intents_done:  # ended ones first, as the Redis script does
            d.handoffs.pop(tid, None)
        for tid, peer in batch.intents:
            d.handoffs[tid] = peer
        for tid, raw in batch.reports:
            d.reports[tid] = raw
        for tid in batch.reports_done:
            d.reports.pop(tid, None)
        if batch.refused:
            d.refused.update(batch.refused)
            cutoff = batch.now_ns - REFUSED_KEEP_S * 1_000_000_000
            for tid in [tid for tid, at in d.refused.items() if at < cutoff]:
                del d.refused[tid]
        for tid in batch.undead:  # requeued ones first, as the Redis script does
            d.dead.pop(tid, None)
        if batch.dead:
            d.dead.update(batch.dead)
            cutoff_ms = dead_cutoff_ms(batch.now_ns / 1e9, self.retention_s)
            for tid in [tid for tid, at in d.dead.items() if at < cutoff_ms]:
                del d.dead[tid]
        if batch.events is not None:
            self.backend.published.setdefault(self.node_id, []).append(batch.events)

    def _expire(self) -> None:
        d = self._d
        now = self.backend.clock()
        for b in [b for b, exp in d.done_expiry.items() if exp <= now]:
            d.done.pop(b, None)
            del d.done_expiry[b]
        for k in [k for k, (_, exp) in d.idem.items() if exp <= now]:
            del d.idem[k]

    async def load(self, *, with_tasks: bool = True) -> Snapshot:
        d = self._d
        tasks = list(d.active.values()) if with_tasks else []
        return Snapshot(
            tasks=tasks,
            workers=list(d.workers.values()),
            counters=dict(d.counters),
            handoffs=dict(d.handoffs),
            reports=list(d.reports.values()),
            refused=dict(d.refused),
        )

    async def iter_active(self) -> AsyncIterator[list[bytes]]:
        records = list(self._d.active.values())
        for i in range(0, len(records), 10_000):
            yield records[i : i + 10_000]

    async def get_finished(self, ids: Sequence[str], *, now_ns: int | None = None) -> dict[str, bytes]:
        self._expire()
        d = self._d
        found: dict[str, bytes] = {}
        at_s = self.backend.clock() if now_ns is None else now_ns / 1e9
        for b in buckets_to_search(at_s, self.retention_s, self.bucket_s):
            bucket = d.done.get(b)
            if bucket is None:
                continue
            for tid in ids:
                if tid not in found and tid in bucket:
                    found[tid] = bucket[tid]
        return found

    async def dead_letters(self, offset: int, limit: int, *, now_ns: int | None = None) -> tuple[int, list[str]]:
        at_s = self.backend.clock() if now_ns is None else now_ns / 1e9
        cutoff_ms = dead_cutoff_ms(at_s, self.retention_s)
        live = sorted(((at, tid) for tid, at in self._d.dead.items() if at >= cutoff_ms), reverse=True)
        return len(live), [tid for _, tid in live[offset : offset + limit]]

    async def get_idempotency(self, keys: Sequence[str]) -> dict[str, str]:
        self._expire()
        d = self._d
        return {k: d.idem[k][0] for k in keys if k in d.idem}

    async def append_history(self, minute_ms: int, row: bytes) -> None:
        d = self._d
        d.history[minute_ms] = row
        cutoff = minute_ms - 86_400_000
        for k in [k for k in d.history if k < cutoff]:
            del d.history[k]

    async def read_history(self, since_ms: int) -> list[HistoryRow]:
        return sorted((k, v) for k, v in self._d.history.items() if k >= since_ms)

    def _check_owner(self) -> _NodeData:
        tok = self._require_token()
        held = self._owner_now()
        d = self._d
        if held != tok.encode():
            if held is not None or d.epoch != tok.epoch:
                raise FencedError(f"node {self.node_id!r} is owned by {held!r}, not by this process")
            d.owner = (tok.encode(), self.backend.clock() + self._lock_ttl_s)
        return d

    async def ledger_read(self) -> LedgerState:
        return self._d.ledger

    async def ledger_record(
        self, entry: LedgerEntry, *, m: int, rho_budget: float, keep_s: float = LEDGER_KEEP_S
    ) -> float:
        d = self._check_owner()
        led = d.ledger
        if led.last_end_us is not None and led.last_end_us > entry.start_us:
            raise LedgerRefusedError(
                f"window {entry.window} starts before the last released window ended (window {led.last_window})",
                "released",
            )
        lo = entry.horizon_start_us(m)
        if d.ledger_trimmed_until_us is not None and lo < d.ledger_trimmed_until_us:
            raise LedgerRefusedError(
                f"the ledger no longer holds the releases a task counting in window {entry.window} may be in "
                f"(history kept from {d.ledger_trimmed_until_us} us)"
            )
        total = spent_since(led.entries, lo) + entry.rho
        if total > rho_budget:
            raise LedgerRefusedError(
                f"over budget: rho {total!r} for a task counting in window {entry.window}, budget {rho_budget!r}"
            )
        cutoff = entry.end_us - entry.keep_us(m, keep_s)
        entries = tuple(e for e in (*led.entries, entry) if e.end_us > cutoff)
        if len(entries) < len(led.entries) + 1:
            d.ledger_trimmed_until_us = cutoff
        d.ledger = LedgerState(
            entries, led.releases + 1, led.refused, led.rho_total + entry.rho, max(led.worst_rho, total),
            entry.window, entry.end_us,
        )  # fmt: skip
        return total

    async def ledger_refused(self) -> None:
        d = self._d
        d.ledger = dataclasses.replace(d.ledger, refused=d.ledger.refused + 1)

    async def subscribers(self) -> int:
        _ = self._d  # unavailable like every other call during an outage
        return self.backend.subscribers.get(self.node_id, 0)
