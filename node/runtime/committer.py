"""Group commit: what the core did, made durable in one store write, then acknowledged.

Every mutating call runs the core synchronously and then waits on :meth:`GroupCommitter.commit`.
A flusher task takes everything the core produced since the last commit (from all concurrent
callers: the outbox), encodes it and writes it in one atomic store write; all those callers are
acknowledged together when it returns. A caller is never told "done" before its change is in
the store.

Once a commit is durable and its callers are acknowledged, the **post-commit hooks** run in the
order they were added, each with the outbox, its encoded batch and the commit time: grants to
waiting claims, analytics, watchers, events, and whatever acts on durable state only (hand-off,
admission, the federation's summaries). A hook that raises is a bug: it is logged and the next
hook still runs (the commit stands).

``on_write``, when set, is called with ``(seconds, n_changes)`` after each successful write,
before the callers are acknowledged: the time to encode and write the commit, and the records
it wrote (task upserts and finished tasks, worker records and dropped workers). It is for
metrics and must be cheap; if it raises, that is logged and the commit stands.

A failed write acknowledges nobody: the waiting callers get the error and ``on_failure`` is
called, with the outbox that was lost, so the node can degrade and reload.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from node.core import Core, Outbox
from node.errors import FedcoordError, NodeClosedError, StoreError, StoreUnavailableError
from node.store.base import Store
from node.store.codec import WriteBatch, encode_batch

__all__ = ["GroupCommitter", "PostCommitHook", "WriteObserver"]

log = logging.getLogger("fedcoord.node")

PostCommitHook = Callable[[Outbox, WriteBatch, int], None]
FailureHandler = Callable[[BaseException, Outbox], None]
WriteObserver = Callable[[float, int], None]


class GroupCommitter:
    def __init__(
        self,
        node_id: str,
        store: Store,
        core: Core,
        clock_ns: Callable[[], int],
        *,
        serving: Callable[[], bool],
        on_failure: FailureHandler,
    ):
        self.node_id = node_id
        self.store = store
        self.core = core  # replaced by the node when it reloads
        self.clock_ns = clock_ns
        self.with_events = False  # also publish the events on the store's channel (someone listens)
        self.inflight: Outbox | None = None  # the outbox being written now
        self.on_write: WriteObserver | None = None  # (seconds, n_changes) of each successful write
        self._hooks: list[tuple[str, PostCommitHook]] = []
        self._serving = serving
        self._on_failure = on_failure
        self._pending: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def add_hook(self, name: str, hook: PostCommitHook) -> None:
        """Run ``hook(outbox, batch, now_ns)`` after each durable commit, after the hooks added before."""
        self._hooks.append((name, hook))

    # ------------------------------------------------------------------ callers

    def commit(self) -> asyncio.Future[None]:
        """A future that resolves when everything the core did so far is durable."""
        fut = asyncio.get_running_loop().create_future()
        self._pending.append(fut)
        self._wake.set()
        return fut

    def wake(self) -> None:
        """The core has something to write that no caller waits for (a tick, a heartbeat)."""
        self._wake.set()

    @property
    def busy(self) -> bool:
        """Something is not durable yet: in the core's outbox, or being written."""
        return bool(self.core.out) or self.inflight is not None

    def dirty(self, task_id: str) -> bool:
        """Whether a change to ``task_id`` is not durable yet."""
        out = self.core.out
        if task_id in out.saved or task_id in out.finished:
            return True
        inflight = self.inflight
        return inflight is not None and (task_id in inflight.saved or task_id in inflight.finished)

    def granted(self, worker_id: str) -> bool:
        """Whether leases granted to ``worker_id`` are on their way (in the outbox or being written)."""
        inflight = self.inflight
        return worker_id in self.core.out.grants or (inflight is not None and worker_id in inflight.grants)

    def reject_pending(self, err: BaseException) -> None:
        waiters, self._pending = self._pending, []
        _reject(waiters, err)

    # ------------------------------------------------------------------ the flusher

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"fc-flusher-{self.node_id}")

    async def stop(self) -> None:
        """Stop the flusher at once (a flush under way is cut short: its callers get nothing)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    @property
    def running(self) -> bool:
        return self._task is not None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._serving():
                await self.flush()

    async def flush(self) -> None:
        """One group commit (callers that arrive meanwhile go into the next one)."""
        async with self._lock:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        waiters, self._pending = self._pending, []
        out = self.core.drain()
        if not out:
            _resolve(waiters)
            return
        now = self.clock_ns()
        self.inflight = out
        t0 = time.perf_counter()
        try:
            batch = encode_batch(out, now, with_events=self.with_events)
            await self.store.write(batch)
        except asyncio.CancelledError:  # the node stops mid-write: its callers are not acknowledged
            self.inflight = None
            _reject(waiters, NodeClosedError(f"node {self.node_id!r} stopped before the write was acknowledged"))
            raise
        except (StoreError, FedcoordError) as e:
            self.inflight = None
            _reject(waiters, e)
            self._on_failure(e, out)
            return
        except Exception as e:  # a bug (say, in encoding): never acknowledge, and say so loudly
            log.exception("node %s: group commit failed unexpectedly", self.node_id)
            self.inflight = None
            err = StoreUnavailableError(f"group commit failed: {e!r}")
            _reject(waiters, err)
            self._on_failure(err, out)
            return
        self.inflight = None
        on_write = self.on_write
        if on_write is not None:
            n = len(batch.upserts) + len(batch.finished) + len(batch.workers) + len(batch.dropped_workers)
            try:
                on_write(time.perf_counter() - t0, n)
            except Exception:  # a metrics bug must not cost the commit its acknowledgement
                log.exception("node %s: on_write observer failed", self.node_id)
        _resolve(waiters)
        for name, hook in self._hooks:
            try:
                hook(out, batch, now)
            except Exception:  # the commit stands; one broken hook must not silence the others
                log.exception("node %s: post-commit hook %s failed", self.node_id, name)


def _resolve(futs: list[asyncio.Future[None]]) -> None:
    for f in futs:
        if not f.done():
            f.set_result(None)


def _reject(futs: list[asyncio.Future[None]], err: BaseException) -> None:
    for f in futs:
        if not f.done():
            f.set_exception(err)
