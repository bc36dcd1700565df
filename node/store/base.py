"""The store interface: what a node needs from durable storage.

Two backends implement it and pass one shared test suite (tests/test_store_contract.py):
:class:`~node.store.redis_store.RedisStore` (the real one) and
:class:`~node.store.memory.MemoryStore` (simulation and pure tests).
"""

from __future__ import annotations

import abc
import math
import os
import socket
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import orjson

from node.store.codec import WriteBatch

__all__ = [
    "LEDGER_KEEP_S",
    "REFUSED_KEEP_S",
    "HistoryRow",
    "LedgerEntry",
    "LedgerState",
    "OwnerToken",
    "Snapshot",
    "Store",
    "bucket_of",
    "buckets_to_search",
    "dead_cutoff_ms",
    "owned_message",
    "search_time_s",
    "spent_since",
    "wall_s",
]


@dataclass(frozen=True, slots=True)
class OwnerToken:
    """Who holds a node: ``epoch|host|pid|nonce``. The epoch is the fencing token."""

    epoch: int
    host: str
    pid: int
    nonce: str

    def encode(self) -> str:
        return f"{self.epoch}|{self.host}|{self.pid}|{self.nonce}"

    @classmethod
    def decode(cls, raw: str) -> OwnerToken | None:
        parts = raw.split("|")
        if len(parts) != 4:
            return None
        try:
            return cls(int(parts[0]), parts[1], int(parts[2]), parts[3])
        except ValueError:
            return None

    @classmethod
    def mine(cls, epoch: int) -> OwnerToken:
        return cls(epoch, socket.gethostname(), os.getpid(), os.urandom(6).hex())

    def is_dead_local_process(self) -> bool:
        """True when the holder ran on this host and its process is gone (a crash left the lock)."""
        if self.host != socket.gethostname() or self.pid == os.getpid():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


@dataclass(slots=True)
class Snapshot:
    """Everything a node reloads at start: raw records, decoded by the runtime."""

    tasks: list[bytes] = field(default_factory=list)
    workers: list[bytes] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    handoffs: dict[str, str] = field(default_factory=dict)  # task id -> peer it is being handed to
    reports: list[bytes] = field(default_factory=list)  # final records of adopted tasks to report back
    refused: dict[str, int] = field(default_factory=dict)  # ids declared unknown to a peer -> ns


HistoryRow = tuple[int, bytes]  # (minute start in ms, JSON)
REFUSED_KEEP_S = 86_400  # ids declared unknown are remembered this long (far beyond any RPC deadline)


def bucket_of(now_s: float, width_s: int) -> int:
    """Start (Unix s) of the archive bucket for tasks finished at ``now_s``."""
    return int(now_s // width_s) * width_s


def buckets_to_search(now_s: float, retention_s: float, width_s: int) -> list[int]:
    """Bucket starts that may still exist, newest first."""
    newest = bucket_of(now_s, width_s)
    n = math.ceil(retention_s / width_s) + 1
    return [newest - i * width_s for i in range(n + 1)]


# The ledger's history of releases is kept this long, and at least twice the horizon (m windows):
# enough to check any release; a release whose horizon reaches further back than what was kept
# (the window length or m grew a lot since) is refused. The totals are kept for ever.
LEDGER_KEEP_S = 3600.0


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One release recorded in the privacy ledger: its window and what it cost (zCDP rho).

    The window is also kept as times (``[start_us, end_us)``, Unix microseconds): the budget is
    checked over the releases whose window ends after the oldest creation time a task counting
    in the new release can have, which stays right when the window length changes between runs."""

    window: int
    rho: float
    at_ns: int
    mechanism: str
    scale: float
    start_us: int
    end_us: int

    def encode(self) -> bytes:
        return orjson.dumps(
            {"window": self.window, "rho": self.rho, "at_ns": self.at_ns, "mechanism": self.mechanism,
             "scale": self.scale, "start_us": self.start_us, "end_us": self.end_us}
        )  # fmt: skip

    @classmethod
    def decode(cls, raw: bytes | str) -> LedgerEntry:
        d = orjson.loads(raw)
        return cls(
            int(d["window"]), float(d["rho"]), int(d["at_ns"]), str(d["mechanism"]), float(d["scale"]),
            int(d["start_us"]), int(d["end_us"]),
        )  # fmt: skip

    def horizon_start_us(self, m: int) -> int:
        """The oldest creation time (us) of a task that may count in this release: ``m`` windows back."""
        return self.start_us - (m - 1) * (self.end_us - self.start_us)

    def keep_us(self, m: int, keep_s: float) -> int:
        """How far back from its end the history must reach after this release."""
        return max(int(keep_s * 1e6), 2 * m * (self.end_us - self.start_us))


@dataclass(frozen=True, slots=True)
class LedgerState:
    """The privacy ledger as stored: the newest releases (oldest first) and lifetime totals."""

    entries: tuple[LedgerEntry, ...] = ()
    releases: int = 0
    refused: int = 0
    rho_total: float = 0.0
    worst_rho: float = 0.0  # the largest sum of rho over m consecutive windows at any release
    last_window: int | None = None
    last_end_us: int | None = None  # where the last released window ended: the next must start there or later


def spent_since(entries: Sequence[LedgerEntry], lo_us: int) -> float:
    """The sum of rho of the recorded releases whose window ends after ``lo_us``: what a task
    created at ``lo_us`` or later can have spent already."""
    return math.fsum(e.rho for e in entries if e.end_us > lo_us)


class Store(abc.ABC):
    """Durable state of one node. Every write is one atomic batch (a group commit)."""

    node_id: str
    retention_s: float
    bucket_s: int

    @property
    @abc.abstractmethod
    def description(self) -> str:
        """Where the data lives, for logs and errors."""

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def acquire(self, *, wait_s: float = 0.0, lock_ttl_s: float = 10.0, takeover: bool = False) -> OwnerToken:
        """Take the owner lock of this node id or raise NodeOwnedError naming the holder.
        A lock left by a dead process on this host is taken over; with ``takeover`` any lock is
        (the caller knows its holder is dead). Either way the old holder is fenced off."""

    @abc.abstractmethod
    async def refresh(self) -> None:
        """Extend the owner lock; FencedError if another process holds it now. Retakes a lock
        that vanished (expired, or Redis lost it) if nobody else took it."""

    @abc.abstractmethod
    async def release(self) -> None: ...

    @abc.abstractmethod
    async def write(self, batch: WriteBatch) -> None:
        """Make the batch durable, atomically, only while this process owns the node.
        Raises StoreUnavailableError (nothing or all may have been applied) or FencedError."""

    @abc.abstractmethod
    async def load(self, *, with_tasks: bool = True) -> Snapshot:
        """Workers, counters and hand-off state (reports, refused ids), and (unless
        ``with_tasks`` is False) every active task record."""

    @abc.abstractmethod
    def iter_active(self) -> AsyncIterator[list[bytes]]:
        """Active task records in chunks (a record may appear twice: callers dedupe by id)."""

    @abc.abstractmethod
    async def get_finished(self, ids: Sequence[str], *, now_ns: int | None = None) -> dict[str, bytes]:
        """Archived records of finished tasks within the retention period. Writes file a record
        under the bucket of the batch's ``now_ns`` (the node's clock), so a lookup must search
        by the same clock: pass it as ``now_ns`` (default: this machine's wall clock)."""

    @abc.abstractmethod
    async def dead_letters(self, offset: int, limit: int, *, now_ns: int | None = None) -> tuple[int, list[str]]:
        """Dead letters (tasks failed for good here, not requeued since) within the retention
        period: how many there are, and the ids of ``limit`` of them from ``offset``, newest
        first. Read from an index kept with each commit: no scan of the archive."""

    @abc.abstractmethod
    async def get_idempotency(self, keys: Sequence[str]) -> dict[str, str]: ...

    @abc.abstractmethod
    async def append_history(self, minute_ms: int, row: bytes) -> None: ...

    @abc.abstractmethod
    async def read_history(self, since_ms: int) -> list[HistoryRow]: ...

    # privacy ledger (see federation.privacy): one entry per release, checked and written atomically

    @abc.abstractmethod
    async def ledger_read(self) -> LedgerState: ...

    @abc.abstractmethod
    async def ledger_record(
        self, entry: LedgerEntry, *, m: int, rho_budget: float, keep_s: float = LEDGER_KEEP_S
    ) -> float:
        """Record a release, atomically and only if it keeps every task within ``rho_budget``: its
        rho plus that of every recorded release whose window ends after
        ``entry.horizon_start_us(m)`` must not exceed it, its window must start where the last
        released one ended or later, and the history must still reach back to that horizon
        (entries older than ``keep_s``, and than twice the horizon, are dropped). Returns that sum. Raises
        :class:`~node.errors.LedgerRefusedError` (nothing written) otherwise, and
        :class:`~node.errors.FencedError` from a process that no longer owns the node."""

    @abc.abstractmethod
    async def ledger_refused(self) -> None:
        """Count a release refused for budget (the total survives restarts)."""

    @abc.abstractmethod
    async def subscribers(self) -> int:
        """Listeners on the node's event channel (events are not published when there are none)."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise StoreUnavailableError unless the store answers."""

    async def reconnect(self) -> None:
        """Drop connections that may predate an outage (called when the store is back)."""
        return None


def wall_s() -> float:
    return time.time()


def dead_cutoff_ms(at_s: float, retention_s: float) -> int:
    """Dead letters that failed before this (Unix ms) are past the retention: not listed, trimmed."""
    return int(at_s * 1000) - int(retention_s * 1000)


def search_time_s(now_ns: int | None) -> float:
    """The time a lookup of archived records searches around (see :meth:`Store.get_finished`)."""
    return wall_s() if now_ns is None else now_ns / 1e9


def owned_message(node_id: str, held: str | None) -> str:
    holder = OwnerToken.decode(held or "")
    who = f"pid {holder.pid} on host {holder.host}" if holder else repr(held)
    return (
        f"node {node_id!r} is already served by {who}; stop that process, wait for its lock to "
        "expire, or use another node id"
    )
