"""The node's timers: the core's tick, the owner lock, listeners of the event channel, and the
per-minute history. Each is a loop run by :class:`Loops`, which stops them all together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from node.analytics import Analytics
from node.core import Core
from node.errors import FencedError, StoreError
from node.store.base import Store

__all__ = ["History", "Loops", "run_listener_check", "run_lock_keeper", "run_ticker"]

log = logging.getLogger("fedcoord.node")


class Loops:
    """Background loops that share one stop signal."""

    def __init__(self, name: str):
        self.name = name
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def spawn(self, name: str, fn: Callable[[], Awaitable[None]]) -> None:
        async def run() -> None:
            try:
                await fn()
            except Exception:  # a loop must not die in silence (nobody awaits it)
                log.exception("node %s: background loop %s died", self.name, name)

        self._tasks.append(asyncio.create_task(run(), name=f"fc-{name}-{self.name}"))

    async def pause(self, delay_s: float) -> bool:
        """A timer: wait ``delay_s``; True if the loops are stopping meanwhile."""
        if self._stop.is_set():
            return True
        try:
            await asyncio.wait_for(self._stop.wait(), delay_s)
        except TimeoutError:
            return False
        return True

    async def wait_for(self, event: asyncio.Event, timeout_s: float) -> bool:
        """Wait until ``event`` is set, the loops stop, or ``timeout_s`` passed; True if stopping."""
        if event.is_set() or self._stop.is_set():
            return self._stop.is_set()
        waiters = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._stop.wait())}
        try:
            await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        return self._stop.is_set()

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Ask every loop to end; cut short those that do not within ``timeout_s`` (stuck in a
        slow store call)."""
        self._stop.set()
        tasks, self._tasks = self._tasks, []
        if not tasks:
            return
        _, stuck = await asyncio.wait(tasks, timeout=timeout_s)
        for t in stuck:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def kill(self) -> None:
        """End every loop at once, wherever it is (one of them may be the caller: it is left to
        unwind by itself)."""
        self._stop.set()
        current = asyncio.current_task()
        tasks, self._tasks = [t for t in self._tasks if t is not current], []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_ticker(
    loops: Loops,
    *,
    core: Callable[[], Core],
    serving: Callable[[], bool],
    now_ns: Callable[[], int],
    wake: Callable[[], None],
    max_s: float,
    each_minute: Callable[[int], Awaitable[None]],
    each_tick: Callable[[int], None] | None = None,
) -> None:
    """Tick the core at its next deadline (lease, retry, heartbeat check), at most ``max_s`` late;
    call ``each_minute`` when a clock minute ended, and ``each_tick`` after every tick."""
    last_minute = now_ns() // 60_000_000_000
    while True:
        nxt = core().next_deadline_ns()
        delay = max_s if nxt is None else min(max(1e-3, (nxt - now_ns()) / 1e9), max_s)
        if await loops.pause(delay):
            return
        if not serving():
            continue
        now = now_ns()
        c = core()
        c.tick(now)
        if c.out:
            wake()
        if each_tick is not None:
            each_tick(now)
        minute = now // 60_000_000_000
        if minute > last_minute:
            last_minute = minute
            await each_minute(now)


async def run_lock_keeper(
    loops: Loops,
    *,
    store: Store,
    node_id: str,
    every_s: float,
    serving: Callable[[], bool],
    on_fenced: Callable[[FencedError], None],
) -> None:
    """Keep the owner lock alive; another owner found means this process must stop serving."""
    while not await loops.pause(every_s):
        if not serving():
            continue
        try:
            await store.refresh()
        except FencedError as e:
            on_fenced(e)
        except StoreError as e:
            log.warning("node %s: could not refresh the owner lock: %s", node_id, e)


async def run_listener_check(
    loops: Loops,
    *,
    store: Store,
    every_s: float,
    serving: Callable[[], bool],
    on_count: Callable[[int], None],
) -> None:
    """Count the listeners of the node's event channel (events are published only while some)."""
    while not loops.stopping:
        if serving():
            with contextlib.suppress(StoreError):  # the next write tells whether the store is down
                on_count(await store.subscribers())
        await loops.pause(every_s)


class History:
    """Per-minute analytics rows, written to the store as minutes close (24 h kept there)."""

    def __init__(self, node_id: str, analytics: Analytics, store: Store, *, enabled: bool):
        self.node_id = node_id
        self.analytics = analytics
        self.store = store
        self.enabled = enabled

    async def write(self, now_ns: int, *, final: bool = False) -> None:
        """Store every minute closed so far (by this call or by a commit's analytics), and with
        ``final`` the current, unfinished one too. Rows that cannot be written are kept for the
        next call."""
        self.analytics.roll(now_ns)
        rows = self.analytics.take_unsaved()
        if final:
            rows.append(self.analytics.minute)
        if not self.enabled:
            return
        for i, row in enumerate(rows):
            try:
                await self.store.append_history(row.minute_ms, row.to_json())
            except StoreError as e:
                log.warning("node %s: could not store analytics history: %s", self.node_id, e)
                self.analytics.keep_unsaved(rows[i:] if not final else rows[i:-1])
                return
