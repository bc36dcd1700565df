"""A LocalNode on an event loop of its own, in a thread: for tests whose own thread blocks
(sync clients, the command line, HTTP and browsers). Subclasses open the node and whatever
serves it in :meth:`NodeThread._serve`, set ``self.node`` and call :meth:`ready`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Self, TypeVar

from node.runtime.node import LocalNode

T = TypeVar("T")


class NodeThread:
    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.node: LocalNode | None = None

    def _main(self) -> None:
        try:
            self.loop.run_until_complete(self._run())
        except BaseException as e:  # noqa: BLE001 - handed to the test thread, which raises it
            self._error = e
            self._ready.set()
        finally:
            self.loop.close()

    async def _run(self) -> None:
        self._stop = asyncio.Event()
        await self._serve(self._stop)

    async def _serve(self, stop: asyncio.Event) -> None:
        """Open the node (and what serves it), call :meth:`ready`, wait for ``stop``."""
        raise NotImplementedError

    def ready(self) -> None:
        self._ready.set()

    def call(self, fn: Callable[[LocalNode], Awaitable[T]]) -> T:
        """Run ``fn(node)`` on the node's loop; its result."""
        assert self.node is not None
        node = self.node

        async def go() -> T:
            return await fn(node)

        return asyncio.run_coroutine_threadsafe(go(), self.loop).result(30)

    def sync(self, fn: Callable[[LocalNode], T]) -> T:
        """Run a plain function of the node on its loop."""

        async def go(node: LocalNode) -> T:
            return fn(node)

        return self.call(go)

    def __enter__(self) -> Self:
        self._thread.start()
        assert self._ready.wait(30), "the node did not start"
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
