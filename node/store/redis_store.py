"""RedisStore: the durable store of a node, on a real Redis (>= 6.2).

Writes go through one dedicated thread with a synchronous redis-py connection (hiredis): each
group commit is one ``EVALSHA`` of the flush script, which checks the owner lock (fencing) and
applies the whole batch atomically. Measured here, a sync pipeline writes about twice as fast
as redis.asyncio, and a thread keeps the event loop free while Redis works. Reads (recovery,
lookups of finished tasks, history) use redis.asyncio on the event loop.

Layout: see :mod:`node.store.keys`. Task records are packed as fields of one hash per purpose
(not one key per task): one command per flush per hash, which sets the throughput ceiling.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ResponseError
from redis.retry import Retry

from node.errors import FencedError, LedgerRefusedError, NodeOwnedError, StoreUnavailableError, ValidationError
from node.store import lua
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
    search_time_s,
)
from node.store.codec import WriteBatch
from node.store.keys import NodeKeys

__all__ = ["RedisStore"]

log = logging.getLogger("fedcoord.store")

_URL_FORMS = "redis://[user:password@]host:port/db, rediss://..., unix:///path/to.sock"
_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, ConnectionError, OSError)
# Up to this many script arguments (about 32 records) a commit is written over asyncio, beyond it
# by the writer thread (the sync client packs a big command about twice as fast).
SMALL_ARGS = 96
T = TypeVar("T")


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


class RedisStore(Store):
    def __init__(
        self,
        node_id: str,
        url: str,
        *,
        retention_s: float = 86400.0,
        bucket_s: int | None = None,
        socket_timeout_s: float = 10.0,
        connect_timeout_s: float = 2.0,
        history_keep_s: float = 86400.0,
    ):
        self.node_id = node_id
        self.url = url
        self.retention_s = retention_s
        self.bucket_s = bucket_s or max(1, math.ceil(retention_s / 24))
        self.keys = NodeKeys(node_id)
        self.history_keep_s = history_keep_s
        self.durability_warning: str | None = None
        self._token: OwnerToken | None = None
        self._lock_ttl_ms = 10_000
        opts: dict[str, Any] = {
            "socket_timeout": socket_timeout_s,
            "socket_connect_timeout": connect_timeout_s,
            "client_name": f"fedcoord:{node_id}",
        }
        # The writer never retries by itself: a flush whose reply was lost may have been applied,
        # and the runtime resolves that by reloading from Redis (counters must not count twice).
        # Connects lazily (on the writer thread): a store made while Redis is down reports it from open().
        try:
            self._sync = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **opts)
        except ValueError as e:  # redis-py's own words name what is wrong with the URL
            raise ValidationError("redis_url", f"{_redact(url)!r}: {e}", limit=_URL_FORMS) from None
        self._aio = aioredis.Redis.from_url(url, **opts)
        # Small group commits go out on this asyncio connection, never retried either.
        self._aio_writer = aioredis.Redis.from_url(url, retry=AsyncRetry(NoBackoff(), 0), **opts)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"fc-writer-{node_id}")
        names = ("ACQUIRE", "TAKEOVER", "REFRESH", "RELEASE", "FLUSH", "FIND_FINISHED", "LEDGER")
        self._shas = {name: _sha(getattr(lua, name)) for name in names}

    @property
    def description(self) -> str:
        return f"redis at {_redact(self.url)}"

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        try:
            info = await self._aio.info("server")
        except _UNAVAILABLE as e:
            raise StoreUnavailableError(f"cannot reach {self.description}: {e}") from e
        version = str(info.get("redis_version", "0"))
        if tuple(int(x) for x in version.split(".")[:2]) < (6, 2):
            raise StoreUnavailableError(f"{self.description} runs Redis {version}; fedcoord needs 6.2 or newer")
        self.durability_warning = await self._durability_warning()

    async def _durability_warning(self) -> str | None:
        try:
            aof = await self._aio.config_get("appendonly")
            save = await self._aio.config_get("save")
        except (ResponseError, *_UNAVAILABLE):
            return None  # CONFIG may be disabled (managed Redis): nothing to say
        if aof.get("appendonly") == "yes" or save.get("save"):
            return None
        return (
            f"{self.description} keeps nothing on disk (no AOF, no RDB): acknowledged tasks survive a node "
            "crash but not a Redis restart"
        )

    async def close(self) -> None:
        with contextlib.suppress(*_UNAVAILABLE):
            await self._aio.aclose()
            await self._aio_writer.aclose()
        await asyncio.get_running_loop().run_in_executor(self._writer, self._sync.close)
        self._writer.shutdown(wait=True)

    async def ping(self) -> None:
        await self._call(self._aio.ping())

    async def reconnect(self) -> None:
        """After an outage every pooled connection may be dead (the server restarted): writes
        are never retried, so start the writers on fresh connections."""
        await self._aio_writer.connection_pool.disconnect()
        await self._aio.connection_pool.disconnect()
        await asyncio.get_running_loop().run_in_executor(self._writer, self._sync.connection_pool.disconnect)

    async def _call(self, aw: Any) -> Any:
        try:
            return await aw
        except _UNAVAILABLE as e:
            raise StoreUnavailableError(f"{self.description} is unreachable: {e}") from e

    async def _script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        sha = self._shas[name]
        try:
            return await self._call(self._aio.evalsha(sha, len(keys), *keys, *args))
        except NoScriptError:
            await self._call(self._aio.script_load(getattr(lua, name)))
            return await self._call(self._aio.evalsha(sha, len(keys), *keys, *args))

    # ------------------------------------------------------------------ owner lock

    async def acquire(self, *, wait_s: float = 0.0, lock_ttl_s: float = 10.0, takeover: bool = False) -> OwnerToken:
        self._lock_ttl_ms = max(1, int(lock_ttl_s * 1000))
        k = self.keys
        deadline = time.monotonic() + wait_s
        while True:
            mine = OwnerToken.mine(0)
            suffix = f"|{mine.host}|{mine.pid}|{mine.nonce}"
            epoch = await self._script("ACQUIRE", [k.owner, k.epoch], [suffix, self._lock_ttl_ms])
            if epoch is None:
                held = await self._call(self._aio.get(k.owner))
                holder = OwnerToken.decode(held.decode()) if held else None
                if held is not None and (takeover or (holder is not None and holder.is_dead_local_process())):
                    who = f"process {holder.pid} on {holder.host}" if holder else repr(held)
                    log.warning("node %s: taking over the owner lock of %s", self.node_id, who)
                    epoch = await self._script("TAKEOVER", [k.owner, k.epoch], [held, suffix, self._lock_ttl_ms])
            if epoch is not None:
                self._token = OwnerToken(int(epoch), mine.host, mine.pid, mine.nonce)
                return self._token
            if time.monotonic() >= deadline:
                held = await self._call(self._aio.get(k.owner))
                raise NodeOwnedError(owned_message(self.node_id, held.decode() if held else None))
            await asyncio.sleep(0.1)  # waiting for another process to let go, not for our own work

    def _require_token(self) -> OwnerToken:
        if self._token is None:
            raise FencedError(f"node {self.node_id!r}: this store does not hold the owner lock")
        return self._token

    async def refresh(self) -> None:
        tok = self._require_token()
        k = self.keys
        r = await self._script("REFRESH", [k.owner, k.epoch], [tok.encode(), tok.epoch, self._lock_ttl_ms])
        if r == 2:
            log.warning("node %s: owner lock had vanished; taken back (epoch %s)", self.node_id, tok.epoch)
        elif r != 1:
            held = r.decode() if isinstance(r, bytes) else str(r)
            raise FencedError(f"node {self.node_id!r} is now owned by {held}; this process must stop serving it")

    async def release(self) -> None:
        if self._token is None:
            return
        with contextlib.suppress(StoreUnavailableError):
            await self._script("RELEASE", [self.keys.owner], [self._token.encode()])
        self._token = None

    # ------------------------------------------------------------------ writes

    async def write(self, batch: WriteBatch) -> None:
        """One atomic EVALSHA of the flush script. A small batch goes over the asyncio
        connection (no thread hand-offs: the latency of a lone claim); a big one is packed and
        sent by the writer thread with the sync client, which is about twice as fast per record."""
        tok = self._require_token()
        keys, args = self._flush_args(batch, tok)
        if len(args) <= SMALL_ARGS:
            await self._evalsha_async(keys, args)
        else:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._writer, self._evalsha_sync, "FLUSH", keys, args)

    async def _evalsha_async(self, keys: list[str], args: list[Any]) -> None:
        sha = self._shas["FLUSH"]
        try:
            try:
                await self._aio_writer.evalsha(sha, len(keys), *keys, *args)
            except NoScriptError:
                await self._aio_writer.script_load(lua.FLUSH)
                await self._aio_writer.evalsha(sha, len(keys), *keys, *args)
        except ResponseError as e:
            if str(e).startswith("FENCED"):
                raise FencedError(f"node {self.node_id!r}: write refused, {e}") from e
            raise
        except _UNAVAILABLE as e:
            raise StoreUnavailableError(f"{self.description} is unreachable: {e}") from e

    def _flush_args(self, batch: WriteBatch, tok: OwnerToken) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of the flush script (see :data:`node.store.lua.FLUSH`)."""
        k = self.keys
        bucket = bucket_of(batch.now_ns / 1e9, self.bucket_s)
        keys = [k.owner, k.epoch, k.active, k.workers, k.counters, k.done(bucket), k.dead]
        handoff = batch.reports or batch.reports_done or batch.refused or batch.intents or batch.intents_done
        if handoff:
            keys += (k.reports, k.refused, k.handoffs)
        keys.extend(k.idem(key) for key, _ in batch.idempotency)
        counters = list(batch.counters.items())
        sizes = (
            f"{len(batch.upserts)} {len(batch.finished)} {len(batch.workers)} {len(batch.dropped_workers)} "
            f"{len(counters)} {len(batch.reports)} {len(batch.reports_done)} {len(batch.refused)} "
            f"{len(batch.intents)} {len(batch.intents_done)} {len(batch.dead)} {len(batch.undead)}"
        )
        args: list[Any] = [
            tok.encode(),
            tok.epoch,
            self._lock_ttl_ms,
            sizes,
            int(bucket + self.bucket_s + self.retention_s),
            max(1, int(self.retention_s)),
            k.events if batch.events is not None else "",
            batch.events or b"",
            batch.now_ns - REFUSED_KEEP_S * 1_000_000_000,
            dead_cutoff_ms(batch.now_ns / 1e9, self.retention_s),
        ]
        for pairs in (batch.upserts, batch.finished, batch.workers):
            for a, b in pairs:
                args.append(a)
                args.append(b)
        args.extend(batch.dropped_workers)
        for a, n in counters:
            args.append(a)
            args.append(n)
        if handoff:
            for tid, raw in batch.reports:
                args.append(tid)
                args.append(raw)
            args.extend(batch.reports_done)
            for tid, at_ns in batch.refused:
                args.append(at_ns)
                args.append(tid)
            args.extend(batch.intents_done)
            for tid, peer in batch.intents:
                args.append(tid)
                args.append(peer)
        args.extend(batch.undead)
        for tid, at_ms in batch.dead:
            args.append(at_ms)
            args.append(tid)
        args.extend(tid for _, tid in batch.idempotency)
        return keys, args

    def _evalsha_sync(self, name: str, keys: list[str], args: list[Any]) -> Any:
        run: Callable[..., Any] = self._sync.execute_command
        try:
            try:
                return run("EVALSHA", self._shas[name], len(keys), *keys, *args)
            except NoScriptError:
                run("SCRIPT", "LOAD", getattr(lua, name))
                return run("EVALSHA", self._shas[name], len(keys), *keys, *args)
        except ResponseError as e:
            if str(e).startswith("FENCED"):
                raise FencedError(f"node {self.node_id!r}: write refused, {e}") from e
            raise
        except _UNAVAILABLE as e:
            raise StoreUnavailableError(f"{self.description} is unreachable: {e}") from e

    # ------------------------------------------------------------------ reads

    async def load(self, *, with_tasks: bool = True) -> Snapshot:
        tasks: list[bytes] = []
        if with_tasks:
            async for chunk in self.iter_active():
                tasks.extend(chunk)
        k = self.keys
        pipe = self._aio.pipeline(transaction=False)
        pipe.hgetall(k.workers)
        pipe.hgetall(k.counters)
        pipe.hvals(k.reports)
        pipe.zrange(k.refused, 0, -1, withscores=True)
        pipe.hgetall(k.handoffs)
        workers, counters, reports, refused, handoffs = await self._call(pipe.execute())
        return Snapshot(
            tasks=list(dict.fromkeys(tasks)),  # HSCAN may return a record twice
            workers=list(workers.values()),
            counters={f.decode(): int(v) for f, v in counters.items()},
            reports=list(reports),
            refused={tid.decode(): int(score) for tid, score in refused},
            handoffs={tid.decode(): peer.decode() for tid, peer in handoffs.items()},
        )

    async def iter_active(self, chunk: int = 20_000) -> AsyncIterator[list[bytes]]:
        """HSCAN on the writer thread's connection (hiredis, no event loop in the way), one chunk
        ahead: Redis and the network work on the next chunk while the caller decodes this one."""
        loop = asyncio.get_running_loop()
        key = self.keys.active

        def scan(cursor: int) -> tuple[int, list[bytes]]:
            try:
                nxt, data = self._sync.hscan(key, cursor, count=chunk)
            except _UNAVAILABLE as e:
                raise StoreUnavailableError(f"{self.description} is unreachable: {e}") from e
            return int(nxt), list(cast(dict[bytes, bytes], data).values())

        fut = loop.run_in_executor(self._writer, scan, 0)
        while True:
            cursor, records = await fut
            if cursor:
                fut = loop.run_in_executor(self._writer, scan, cursor)
            yield records
            if not cursor:
                return

    async def get_finished(self, ids: Sequence[str], *, now_ns: int | None = None) -> dict[str, bytes]:
        """One script call searches every bucket inside Redis and returns only what it found
        (newest bucket first: a requeued-then-finished task's newest record wins). Packing an
        HMGET per bucket in Python cost ~1.5 us per id and bucket, for ids that mostly miss."""
        if not ids:
            return {}
        buckets = buckets_to_search(search_time_s(now_ns), self.retention_s, self.bucket_s)
        keys = [self.keys.done(b) for b in buckets]
        flat = await self._script("FIND_FINISHED", keys, list(ids))
        return {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}

    async def dead_letters(self, offset: int, limit: int, *, now_ns: int | None = None) -> tuple[int, list[str]]:
        cutoff_ms = dead_cutoff_ms(search_time_s(now_ns), self.retention_s)
        pipe = self._aio.pipeline(transaction=False)
        pipe.zcount(self.keys.dead, cutoff_ms, "+inf")
        pipe.zrevrangebyscore(self.keys.dead, "+inf", cutoff_ms, start=offset, num=limit)
        total, ids = await self._call(pipe.execute())
        return int(total), [tid.decode() for tid in ids]

    async def get_idempotency(self, keys: Sequence[str]) -> dict[str, str]:
        if not keys:
            return {}
        vals = await self._call(self._aio.mget([self.keys.idem(key) for key in keys]))
        return {key: v.decode() for key, v in zip(keys, vals, strict=True) if v is not None}

    async def append_history(self, minute_ms: int, row: bytes) -> None:
        cutoff = max(0, minute_ms - int(self.history_keep_s * 1000))
        await self._call(
            self._aio.xadd(self.keys.history, {"minute_ms": minute_ms, "row": row}, minid=cutoff, approximate=True)
        )

    async def read_history(self, since_ms: int) -> list[HistoryRow]:
        entries = await self._call(self._aio.xrange(self.keys.history, min=str(max(0, since_ms - 60_000))))
        rows: dict[int, bytes] = {}
        for _, fields in entries:
            minute = int(fields[b"minute_ms"])
            if minute >= since_ms:
                rows[minute] = fields[b"row"]  # a later entry for the same minute wins
        return sorted(rows.items())

    # ------------------------------------------------------------------ privacy ledger

    async def ledger_read(self) -> LedgerState:
        k = self.keys
        pipe = self._aio.pipeline(transaction=True)
        pipe.hgetall(k.privacy)
        pipe.zrange(k.privacy_releases, 0, -1)
        try:
            totals, raw = await self._call(pipe.execute())
        except ResponseError as e:  # MISCONF, OOM, LOADING...: the ledger cannot be read now
            raise StoreUnavailableError(f"{self.description}: ledger not readable: {e}") from e
        t = {key.decode(): val.decode() for key, val in totals.items()}
        last, end = t.get("last_window"), t.get("last_end_us")
        return LedgerState(
            entries=tuple(LedgerEntry.decode(e) for e in raw),
            releases=int(t.get("releases", 0)),
            refused=int(t.get("refused", 0)),
            rho_total=float(t.get("rho_total", 0.0)),
            worst_rho=float(t.get("worst_rho", 0.0)),
            last_window=None if last is None else int(last),
            last_end_us=None if end is None else int(end),
        )

    async def ledger_record(
        self, entry: LedgerEntry, *, m: int, rho_budget: float, keep_s: float = LEDGER_KEEP_S
    ) -> float:
        tok = self._require_token()
        k = self.keys
        args = [
            tok.encode(), tok.epoch, self._lock_ttl_ms, entry.window, entry.start_us, entry.end_us,
            entry.horizon_start_us(m), repr(entry.rho), repr(rho_budget), entry.encode(), entry.keep_us(m, keep_s),
        ]  # fmt: skip
        try:
            reply = await self._script("LEDGER", [k.owner, k.epoch, k.privacy, k.privacy_releases], args)
        except ResponseError as e:
            if str(e).startswith("FENCED"):
                raise FencedError(f"node {self.node_id!r}: ledger write refused, {e}") from e
            raise StoreUnavailableError(f"{self.description}: ledger not written: {e}") from e
        text = [x.decode() if isinstance(x, bytes) else str(x) for x in reply[1:]]
        if not reply[0]:
            raise LedgerRefusedError(text[1], text[0])
        return float(text[0])

    async def ledger_refused(self) -> None:
        try:
            await self._call(self._aio.hincrby(self.keys.privacy, "refused", 1))
        except ResponseError as e:
            raise StoreUnavailableError(f"{self.description}: ledger not written: {e}") from e

    async def subscribers(self) -> int:
        res = await self._call(self._aio.pubsub_numsub(self.keys.events))
        return int(res[0][1]) if res else 0

    def run_sync(self, fn: Callable[[redis.Redis], T]) -> T:
        """Run ``fn(sync_client)`` on the writer thread's connection (tests, benchmarks)."""
        return self._writer.submit(fn, self._sync).result()


def _redact(url: str) -> str:
    """The URL without its password."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user + ':***@' if user else '***@'}{host}"
