"""In-process event subscriptions: ``node.subscribe()`` yields each durable task event.

Each subscriber has a bounded queue; a subscriber that falls that far behind loses the oldest
events, and ``dropped`` says how many (the node never blocks on a slow reader).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType

from node.errors import WaitTimeoutError
from node.model import Event

__all__ = ["EventHub", "Subscription"]


class Subscription:
    def __init__(self, hub: EventHub, max_queue: int):
        self._hub = hub
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(max_queue)
        self.dropped = 0
        self.closed = False

    def _put(self, e: Event | None) -> None:
        q = self._queue
        if q.full():
            q.get_nowait()
            self.dropped += 1
        q.put_nowait(e)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        if self.closed and self._queue.empty():
            raise StopAsyncIteration
        e = await self._queue.get()
        if e is None:
            self.closed = True
            raise StopAsyncIteration
        return e

    async def get(self, timeout_s: float | None = None) -> Event:
        """The next event; :class:`~node.errors.WaitTimeoutError` after ``timeout_s``;
        StopAsyncIteration once closed."""
        try:
            return await asyncio.wait_for(self.__anext__(), timeout_s)
        except TimeoutError:
            if timeout_s is None:  # not our time limit: pass it on as it is
                raise
            raise WaitTimeoutError(f"no event within {timeout_s:g} s") from None

    def drain(self, max_events: int) -> list[Event]:
        """Up to ``max_events`` events already waiting, without waiting (after :meth:`get`, to
        send what piled up in one batch). Stops at the end of the stream."""
        out: list[Event] = []
        q = self._queue
        while len(out) < max_events and not q.empty():
            e = q.get_nowait()
            if e is None:
                self.closed = True
                break
            out.append(e)
        return out

    def close(self) -> None:
        if not self.closed:
            self._hub.remove(self)
            self._put(None)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class EventHub:
    def __init__(self) -> None:
        self._subs: set[Subscription] = set()

    def __bool__(self) -> bool:
        return bool(self._subs)

    def subscribe(self, max_queue: int = 10_000) -> Subscription:
        s = Subscription(self, max_queue)
        self._subs.add(s)
        return s

    def remove(self, s: Subscription) -> None:
        self._subs.discard(s)

    def publish(self, events: Iterable[Event]) -> None:
        if not self._subs:
            return
        evs = list(events)
        for s in list(self._subs):
            for e in evs:
                s._put(e)

    def close_all(self) -> None:
        for s in list(self._subs):
            s.close()
