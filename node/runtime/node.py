"""LocalNode: one node's task manager, the Python API, composed of parts.

The pure core holds the state in memory; the :class:`~node.runtime.committer.GroupCommitter`
makes every change durable before its caller is acknowledged, and runs the post-commit hooks
(grants to waiting claims, analytics, watchers, events); :mod:`~node.runtime.waiters` holds the
callers that wait; :mod:`~node.runtime.timers` runs the tick, the owner lock, the listener check
and the history; :mod:`~node.runtime.rebuild` turns stored records back into a core.

If a write fails (store unreachable) the node stops taking calls (``StoreUnavailableError``),
throws its in-memory state away and, once the store answers again, reloads everything from it:
memory never diverges from what the store holds. Another process taking over the node id
(``FencedError``) stops this one for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from federation.privacy.status import PrivacyStatus, ReleaseOutcome
from federation.view import GlobalView
from node.admission import Admission, FederationView
from node.analytics import Analytics, MinuteRow, NodeStats, PerformanceReport
from node.analytics.window import Windows, WindowSummary
from node.core import Core, HeartbeatReply, Load, Outbox, WorkerInfo
from node.core.queries import QueueLine, TaskPage, TaskQuery, explain, find_tasks, queue_lines
from node.core.story import StoryEntry
from node.embedded import EmbeddedRedis
from node.errors import (
    FedcoordError,
    FencedError,
    InvalidTransitionError,
    NodeClosedError,
    StoreError,
    StoreUnavailableError,
    TaskNotFoundError,
    WaitTimeoutError,
)
from node.events import EventHub, Subscription
from node.handoff import HandoffTransport
from node.model import Lease, Priority, Task, TaskSpec, TaskStatus, WorkerSpec, check_batch, check_name
from node.runtime.committer import GroupCommitter
from node.runtime.config import NodeConfig, NodeState, default_data_dir
from node.runtime.handoff import HandoffAgent, StepHook
from node.runtime.privacy import NodePrivacy
from node.runtime.rebuild import read_records, rebuild_core
from node.runtime.timers import History, Loops, run_listener_check, run_lock_keeper, run_ticker
from node.runtime.waiters import ClaimWaiters, Watchers
from node.store.base import Store
from node.store.codec import CorruptRecordError, WriteBatch, decode_task, encode_batch
from node.store.redis_store import RedisStore

__all__ = ["LocalNode"]

log = logging.getLogger("fedcoord.node")


class LocalNode:
    """The Python API of one node. Create it with :meth:`open` (or :meth:`start` / :meth:`close`)."""

    def __init__(
        self,
        node_id: str,
        store: Store,
        *,
        config: NodeConfig | None = None,
        embedded: EmbeddedRedis | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        transport: HandoffTransport | None = None,
        step_hook: StepHook | None = None,
    ):
        self.node_id = check_name("node_id", node_id)
        self.config = cfg = config or NodeConfig()
        self._core_cfg = dataclasses.replace(cfg.core, node_id=self.node_id)
        self._store = store
        self._embedded = embedded
        self._clock = clock_ns
        self._last_ns = 0
        self._rng = random.Random(cfg.seed if cfg.seed is not None else int.from_bytes(os.urandom(8), "big"))
        self._core = Core(self._core_cfg, random.Random(self._rng.getrandbits(64)))
        self._state = NodeState.STARTING
        self._cause: BaseException | None = None
        self._claims = ClaimWaiters()
        self._watchers = Watchers()
        self._hub = EventHub()
        self._redis_listeners = 0
        self._analytics = Analytics(self.node_id, self._now())
        self._windows = self._new_windows()
        self._privacy = NodePrivacy(self.node_id, cfg.privacy, store, window_s=cfg.window_s)
        self.admission = Admission(cfg.admission)
        self._history = History(self.node_id, self._analytics, store, enabled=cfg.history)
        self._loops = Loops(self.node_id)
        self._recovery: asyncio.Task[None] | None = None
        self.corrupt_records = 0
        self._committer = GroupCommitter(
            self.node_id,
            store,
            self._core,
            self._now,
            serving=lambda: self._state is NodeState.SERVING,
            on_failure=self._commit_failed,
        )
        c = self._committer
        c.add_hook("grants", self._deliver_grants)
        c.add_hook("analytics", self._record_analytics)
        c.add_hook("watchers", self._notify_watchers)
        c.add_hook("events", lambda out, batch, now: self._hub.publish(out.event_list()) if out.events else None)
        self.handoff: HandoffAgent | None = None
        if transport is not None:
            self.handoff = HandoffAgent(self, transport, cfg.handoff, step_hook=step_hook)
            agent = self.handoff
            c.add_hook("handoff", lambda out, batch, now: agent.after_commit(bool(out.reports)))

    def _new_windows(self) -> Windows:
        cfg = self.config
        horizon = cfg.privacy.m if cfg.privacy.enabled else None
        return Windows(self.node_id, self._now(), window_s=cfg.window_s, bins=cfg.completion_bins, horizon=horizon)

    # ------------------------------------------------------------------ opening and closing

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        node_id: str = "node",
        redis_url: str | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        config: NodeConfig | None = None,
        store: Store | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        transport: HandoffTransport | None = None,
        step_hook: StepHook | None = None,
    ) -> AsyncIterator[LocalNode]:
        """``async with LocalNode.open(node_id="n1") as node:`` - start, serve, close.

        With no ``redis_url`` (and no ``store``) the node runs a private redis-server with an
        append-only file in ``data_dir`` (default ``~/.local/share/fedcoord/nodes/<id>``). With a
        ``transport`` the node hands work to the peers of ``config.handoff`` and takes theirs
        (``step_hook`` runs at each named step of the protocol: for fault tests).
        """
        node = await cls.start(
            node_id,
            redis_url,
            data_dir,
            config=config,
            store=store,
            clock_ns=clock_ns,
            transport=transport,
            step_hook=step_hook,
        )
        try:
            yield node
        finally:
            await node.close()

    @classmethod
    async def start(
        cls,
        node_id: str = "node",
        redis_url: str | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        config: NodeConfig | None = None,
        store: Store | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        transport: HandoffTransport | None = None,
        step_hook: StepHook | None = None,
    ) -> LocalNode:
        """Start a node and return it serving; call :meth:`close` when done. ``clock_ns`` is the
        node's clock (Unix ns): task times, lease deadlines and archive buckets follow it."""
        node_id = check_name("node_id", node_id)
        config = config or NodeConfig()
        embedded = None
        if store is None:
            if redis_url is None:
                data = data_dir if data_dir is not None else default_data_dir(node_id)
                embedded = EmbeddedRedis(data, appendfsync=config.embedded_fsync)
                redis_url = embedded.start()
            store = RedisStore(node_id, redis_url, retention_s=config.retention_s)
        node = cls(
            node_id,
            store,
            config=config,
            embedded=embedded,
            clock_ns=clock_ns,
            transport=transport,
            step_hook=step_hook,
        )
        try:
            await node._boot()
        except BaseException:
            await node._shutdown(release=True)  # a lock taken before the failure is let go at once
            raise
        return node

    async def _boot(self) -> None:
        cfg = self.config
        if cfg.gc_thresholds is not None:
            gc.set_threshold(*cfg.gc_thresholds)
        store = self._store
        await store.open()
        warning = getattr(store, "durability_warning", None)
        if warning:
            log.warning("%s", warning)
        await store.acquire(wait_s=cfg.lock_wait_s, lock_ttl_s=cfg.lock_ttl_s, takeover=cfg.takeover)
        await self._privacy.load()
        await self._reload()
        self._state = NodeState.SERVING
        self._committer.start()
        serving = self._serving
        loops = self._loops
        loops.spawn(
            "ticker",
            lambda: run_ticker(
                loops,
                core=lambda: self._core,
                serving=serving,
                now_ns=self._now,
                wake=self._committer.wake,
                max_s=cfg.tick_max_s,
                each_minute=self._history.write,
                each_tick=self._each_tick,
            ),
        )
        loops.spawn(
            "lock",
            lambda: run_lock_keeper(
                loops,
                store=store,
                node_id=self.node_id,
                every_s=cfg.lock_ttl_s / 3,
                serving=serving,
                on_fenced=self._degrade,
            ),
        )
        loops.spawn(
            "listeners",
            lambda: run_listener_check(
                loops, store=store, every_s=cfg.listener_check_s, serving=serving, on_count=self._set_listeners
            ),
        )
        if self.handoff is not None:
            self.handoff.start()
        log.info(
            "node %s serving from %s: %d active tasks, %d workers",
            self.node_id,
            store.description,
            len(self._core.tasks),
            len(self._core.workers),
        )

    async def close(self) -> None:
        """Stop taking calls, commit what was acknowledged-pending, release the node and its Redis."""
        if self._state in (NodeState.CLOSING, NodeState.CLOSED):
            return
        prev = self._state
        self._state = NodeState.CLOSING
        if self.handoff is not None:
            self.handoff.stop()
        self._claims.end()  # the node closes: every waiting claim returns empty
        loops = [self._loops.stop()]
        if self._recovery is not None:
            self._recovery.cancel()
            loops.append(asyncio.gather(self._recovery, return_exceptions=True))  # type: ignore[arg-type]
        await asyncio.gather(*loops)
        if prev is NodeState.SERVING and self._committer.running:
            await self._committer.flush()  # the last group commit, acknowledges its callers
            await self._history.write(self._now(), final=True)
        await self._shutdown(release=prev is not NodeState.FENCED)

    async def kill(self) -> None:
        """Stop at once, as a killed process would, for fault tests and drills: no last commit
        (callers waiting for one get ``NodeClosedError``: they were never acknowledged), the
        owner lock is not released (a new node on the same data waits for it to expire or takes
        it over with ``NodeConfig.takeover``), and a write already sent to Redis may still land
        (it is refused there once another process took the node over)."""
        if self._state is NodeState.CLOSED:
            return
        self._state = NodeState.CLOSING
        if self.handoff is not None:
            self.handoff.stop()
        await self._loops.kill()
        if self._recovery is not None:
            self._recovery.cancel()
            await asyncio.gather(self._recovery, return_exceptions=True)
        if self._embedded is not None:
            self._embedded.kill()  # it would die with the process (parent-death signal)
        await self._shutdown(release=False)

    async def _shutdown(self, *, release: bool) -> None:
        await self._committer.stop()
        self._fail_all(NodeClosedError(f"node {self.node_id!r} is closed"))
        self._hub.close_all()
        if release:
            with contextlib.suppress(StoreError):
                await self._store.release()
        with contextlib.suppress(StoreError):
            await self._store.close()
        if self._embedded is not None:
            self._embedded.stop()
        self._state = NodeState.CLOSED

    @property
    def state(self) -> NodeState:
        return self._state

    @property
    def store(self) -> Store:
        return self._store

    @property
    def embedded(self) -> EmbeddedRedis | None:
        return self._embedded

    # ------------------------------------------------------------------ the parts' plumbing

    def _now(self) -> int:
        t = max(self._clock(), self._last_ns)  # monotonic for the core even if the wall clock steps back
        self._last_ns = t
        return t

    def _serving(self) -> bool:
        return self._state is NodeState.SERVING

    def _check(self) -> Core:
        if self._state is NodeState.SERVING:
            return self._core
        if self._state is NodeState.DEGRADED:
            raise StoreUnavailableError(
                f"node {self.node_id!r}: {self._store.description} is unavailable ({self._cause}); "
                "nothing is acknowledged until it is back (the node retries on its own)"
            )
        if self._state is NodeState.FENCED:
            raise FencedError(f"node {self.node_id!r} was taken over by another process ({self._cause})")
        if self._state is NodeState.STARTING:
            raise NodeClosedError(f"node {self.node_id!r} is still starting")
        raise NodeClosedError(f"node {self.node_id!r} is closed")

    def _set_core(self, core: Core) -> None:
        self._core = core
        self._committer.core = core

    def _set_listeners(self, n: int) -> None:
        self._redis_listeners = n
        self._committer.with_events = n > 0
        self._core.want_events(bool(self._hub) or n > 0)

    def _deliver_grants(self, out: Outbox, batch: WriteBatch, now_ns: int) -> None:
        if out.grants:
            self._claims.deliver(out.grants, self._core.is_current)

    def _record_analytics(self, out: Outbox, batch: WriteBatch, now_ns: int) -> None:
        """Post-commit: the node's analytics and its window summaries, from one pass over the commit."""
        times = self._analytics.record(out, now_ns, batch.counters)
        self._windows.record(out, now_ns, counters=batch.counters, completion_times_s=times)

    def _notify_watchers(self, out: Outbox, batch: WriteBatch, now_ns: int) -> None:
        """Post-commit: tasks that reached their final record. A handed-off task has not: its
        watchers wait on until its result comes back (``out.archived``)."""
        if not self._watchers:
            return
        if out.finished:
            self._watchers.notify({tid: t for tid, t in out.finished.items() if t.status is not TaskStatus.HANDED_OFF})
        if out.archived:
            self._watchers.notify(out.archived)

    def _commit_failed(self, err: BaseException, out: Outbox) -> None:
        self._claims.reject(out.grants, err)
        self._degrade(err)

    def _fail_all(self, err: BaseException) -> None:
        self._committer.reject_pending(err)
        self._claims.reject_all(err)
        self._watchers.reject_all(err)

    def _degrade(self, err: BaseException) -> None:
        if self._state is not NodeState.SERVING:
            return
        self._cause = err
        if isinstance(err, FencedError):
            self._state = NodeState.FENCED
            log.error("node %s: %s; stopping", self.node_id, err)
            self._fail_all(err)
            return
        self._state = NodeState.DEGRADED
        log.error("node %s: store write failed (%s); refusing calls until it is back", self.node_id, err)
        self._fail_all(StoreUnavailableError(str(err)))
        self._core.drain()  # what the core did since is not durable; the reload replaces it
        self._recovery = asyncio.create_task(self._recover(), name=f"fc-recover-{self.node_id}")

    async def _recover(self) -> None:
        delay = 0.05
        while self._state is NodeState.DEGRADED:
            if self._embedded is not None and self._embedded.ensure_running():
                log.warning("node %s: embedded redis-server restarted", self.node_id)
            try:
                await self._store.ping()
                await self._store.reconnect()
                await self._store.refresh()
                await self._reload()
                await self._privacy.load()
            except FencedError as e:
                self._cause = e
                self._state = NodeState.FENCED
                log.error("node %s: %s; stopping", self.node_id, e)
                return
            except (StoreError, OSError) as e:
                log.debug("node %s: store still unavailable: %s", self.node_id, e)
                if await self._loops.pause(delay):  # backing off while an external service is down
                    return
                delay = min(delay * 2, 2.0)
                continue
            except Exception:  # a bug must not end recovery silently: say so, and keep trying
                log.exception("node %s: reload after a store failure failed; retrying", self.node_id)
                if await self._loops.pause(2.0):
                    return
                continue
            # The store may have come back older than what was counted (a restart from a snapshot,
            # the last second of an AOF lost): the windows counted before are thrown away, as on
            # a restart, so a task the reload brings back is never counted twice in a release.
            self._windows = self._new_windows()
            self._privacy.reset_windows()
            self._state = NodeState.SERVING
            self._cause = None
            if self.handoff is not None:
                self.handoff.wake()  # hand-offs the outage interrupted are settled by asking
            log.warning("node %s: store is back; reloaded %d active tasks", self.node_id, len(self._core.tasks))

    async def _reload(self) -> None:
        """Rebuild the core from the store: active tasks, queues, workers; expired leases requeued."""
        t0 = time.perf_counter()
        rec = await read_records(self._store, self.node_id)
        self.corrupt_records += rec.corrupt
        now = self._now()
        dangling = rec.dangling_dependencies()
        if dangling:  # pending tasks may wait on tasks handed off and not back yet
            for tid, raw in (await self._store.get_finished(sorted(dangling), now_ns=now)).items():
                with contextlib.suppress(CorruptRecordError):
                    if decode_task(raw).status is TaskStatus.HANDED_OFF:
                        rec.remote_pending.add(tid)
        t_read = time.perf_counter()
        core = rebuild_core(self._core_cfg, random.Random(self._rng.getrandbits(64)), rec, now)
        core.want_events(bool(self._hub) or self._redis_listeners > 0)
        if self._core.story_log is not None:
            core.story_log = self._core.story_log  # the transitions seen before the reload
        t_rebuilt = time.perf_counter()
        if self.config.gc_freeze:
            gc.freeze()
        rows: list[MinuteRow] = []
        if self.config.history:
            for _, raw in await self._store.read_history(now // 1_000_000 - 86_400_000):
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    rows.append(MinuteRow.from_json(raw))
        first_load = self._state is NodeState.STARTING
        self._analytics.restore(rec.counters, rows, [w.info() for w in rec.workers] if first_load else ())
        self._set_core(core)
        out = core.drain()
        if out:  # what rebuilding changed (leases of lost workers put back in line)
            batch = encode_batch(out, now, with_events=False)
            await self._store.write(batch)
            self._analytics.record(out, now, batch.counters)
        log.info(
            "node %s: loaded %d tasks and %d workers in %.2fs (read and decode %.2fs, rebuild %.2fs)",
            self.node_id,
            len(core.tasks),
            len(rec.workers),
            time.perf_counter() - t0,
            t_read - t0,
            t_rebuilt - t_read,
        )

    async def _finished(self, ids: Sequence[str]) -> dict[str, Task]:
        """Finished tasks by id: not yet durable ones from memory, then the store's archive."""
        found: dict[str, Task] = {}
        for out in (self._core.out, self._committer.inflight):  # newest first
            if out is not None:
                for tid in ids:
                    if tid not in found:
                        t = out.archived.get(tid) or out.finished.get(tid)
                        if t is not None:
                            found[tid] = t
        rest = [tid for tid in ids if tid not in found]
        if rest:
            for tid, raw in (await self._store.get_finished(rest, now_ns=self._now())).items():
                try:
                    found[tid] = decode_task(raw)
                except CorruptRecordError as e:
                    log.error("node %s: corrupt archived record: %s", self.node_id, e)
        return found

    def _each_tick(self, now_ns: int) -> None:
        self._privacy.snapshot(self._windows, self._core, now_ns)
        load = self._core.load()
        self._analytics.sample(now_ns, self.admission.threshold(load, now_ns), load.ratio)

    async def _durable(self) -> None:
        """Wait until everything the core did so far is durable (at once if it already is)."""
        if self._committer.busy:
            await self._committer.commit()

    # ------------------------------------------------------------------ tasks

    async def submit(self, specs: Sequence[TaskSpec]) -> list[str]:
        """Add tasks (all or nothing); returns their ids once they are durable."""
        core = self._check()
        specs = check_batch(specs)
        known: dict[str, TaskStatus] = {}
        known_keys: dict[str, str] = {}
        refs, keys = _references(specs)
        if keys:
            known_keys = await self._store.get_idempotency(keys)
        # Dependencies (and explicit ids) that are not active are looked up among finished
        # tasks. One may finish while we await, so look again until a pass needs no lookup:
        # then what the core sees is consistent. Every pass resolves at least one id.
        missing: set[str] = set()
        while True:
            core = self._check()
            lookups = [tid for tid in refs if tid not in core.tasks and tid not in known and tid not in missing]
            if not lookups:
                break
            found = await self._finished(lookups)
            known.update((tid, t.status) for tid, t in found.items())
            missing.update(tid for tid in lookups if tid not in found)
        ids = core.submit(specs, self._now(), known=known, known_keys=known_keys)
        await self._committer.commit()
        return ids

    async def get(self, task_id: str) -> Task:
        """The task's current record (a copy). Changes not yet durable are waited for."""
        core = self._check()
        if self._committer.dirty(task_id):
            await self._committer.commit()
            core = self._check()
        t = core.get(task_id)
        if t is not None:
            return dataclasses.replace(t)
        found = await self._finished([task_id])
        if task_id in found:
            return dataclasses.replace(found[task_id])
        raise TaskNotFoundError(task_id)

    async def wait(self, task_id: str, timeout_s: float | None = None) -> Task:
        """Wait until the task is finished (durably) and return its final record; a task handed
        off to a peer is followed to its result there. :class:`~node.errors.WaitTimeoutError`
        after ``timeout_s`` (the task goes on)."""
        fut = self._watchers.watch(task_id)  # before looking: a result that lands meanwhile is not missed
        try:
            t = await self.get(task_id)
            if t.status.terminal and t.status is not TaskStatus.HANDED_OFF:
                return t
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            if timeout_s is None:  # not our time limit: pass it on as it is
                raise
            active = self._core.tasks.get(task_id)
            state = f"still {active.status.value}" if active is not None else "not finished (handed off?)"
            raise WaitTimeoutError(f"task {task_id!r} is {state} after {timeout_s:g} s") from None
        finally:
            self._watchers.unwatch(task_id, fut)

    async def cancel(self, task_id: str) -> TaskStatus:
        """Cancel a task; returns the status it had. Cancelling a cancelled task is a no-op; a
        task that finished otherwise cannot be cancelled. A running worker learns of it on its
        next heartbeat; tasks that depend on it fail."""
        core = self._check()
        if task_id in core.tasks:
            prev = core.cancel(task_id, self._now())
            await self._committer.commit()
            return prev
        found = await self._finished([task_id])
        t = found.get(task_id)
        if t is None:
            raise TaskNotFoundError(task_id)
        if t.status is TaskStatus.CANCELLED:
            return t.status
        if t.status is TaskStatus.HANDED_OFF:
            raise InvalidTransitionError(
                task_id, f"handed off to {t.owner_node}", "cancel", f"an active task (cancel it on {t.owner_node})"
            )
        raise InvalidTransitionError(task_id, t.status.value, "cancel", "an active task")

    async def requeue(self, task_id: str) -> None:
        """Put a failed (dead-lettered) task back in line with a fresh retry budget."""
        core = self._check()
        if task_id in core.tasks:
            raise InvalidTransitionError(task_id, core.tasks[task_id].status.value, "requeue", "status failed")
        found = await self._finished([task_id])
        t = found.get(task_id)
        if t is None:
            raise TaskNotFoundError(task_id)
        core = self._check()
        core.requeue(dataclasses.replace(t), self._now())
        await self._committer.commit()

    # ------------------------------------------------------------------ workers and leases

    async def register_worker(self, spec: WorkerSpec) -> WorkerInfo:
        """Add a worker. Registering an id that exists starts a new incarnation of it: what the
        old one held goes back in line at once, and its late reports are stale."""
        core = self._check()
        info = core.register_worker(spec, self._now())
        self._claims.forget(info.id)
        await self._committer.commit()
        return info

    async def deregister_worker(self, worker_id: str, *, registered_ns: int | None = None) -> None:
        """Remove a worker; what it holds goes back in line (a failed attempt). With
        ``registered_ns``, only that incarnation of it (one registered again since stays)."""
        core = self._check()
        if registered_ns is not None:
            w = core.workers.get(worker_id)
            if w is None or w.registered_ns != registered_ns:
                return
        undelivered = self._claims.drop_held(worker_id)
        if undelivered:  # granted, never received: not the worker's failure
            core.unlease(undelivered, self._now())
        core.deregister_worker(worker_id, self._now())
        self._claims.forget(worker_id)
        await self._committer.commit()

    async def heartbeat(self, worker_id: str) -> HeartbeatReply:
        """The worker is alive; the reply lists leases it must drop (cancelled or reassigned).
        Returns once what the reply reflects is durable."""
        core = self._check()
        reply = core.heartbeat(worker_id, self._now())
        await self._durable()
        return reply

    async def claim(
        self, worker_id: str, max_tasks: int = 1, *, wait_s: float = 0.0, max_bytes: int | None = None
    ) -> list[Lease]:
        """Lease up to ``max_tasks`` tasks. With ``wait_s``, wait that long for work when none is
        ready; when several workers wait, new work goes to the best-scored one. Leases granted
        to an earlier claim of this worker that it did not receive (it timed out or was
        replaced meanwhile) come first. With ``max_bytes``, the leases returned carry at most
        about that many bytes of payload (always at least one lease); the rest are kept for the
        worker's next claim (their timeouts run meanwhile)."""
        leases = await self._claim(worker_id, max_tasks, wait_s)
        if max_bytes is not None and len(leases) > 1:
            size = 0
            for i, lease in enumerate(leases):
                size += lease_bytes(lease)
                if size > max_bytes and i > 0:
                    await self.unlease(leases[i:])
                    return leases[:i]
        return leases

    async def unlease(self, leases: Sequence[Lease]) -> int:
        """Leases granted but never delivered to their worker: back in line, not counted as a
        failed attempt (see :meth:`Core.unlease`). Returns how many went back, once durable."""
        n = self._check().unlease(leases, self._now())
        if n:
            await self._committer.commit()
        return n

    def end_claim_waits(self, worker_id: str | None = None) -> None:
        """A claim of ``worker_id`` (of every worker: None) that waits for work returns now,
        empty (the node is draining)."""
        core = self._check()
        for wid in [worker_id] if worker_id is not None else core.waiting_workers():
            core.cancel_wait(wid)
        self._claims.end(worker_id)

    async def _claim(self, worker_id: str, max_tasks: int, wait_s: float) -> list[Lease]:
        core = self._check()
        held = self._claims.take_held(worker_id, core.is_current)
        if held:
            core.touch(worker_id, self._now())
            await self._durable()
            return held
        leases = core.claim(worker_id, max_tasks, self._now(), wait=wait_s > 0)
        if leases or wait_s <= 0:
            await self._durable()
            return leases
        fut = self._claims.wait(worker_id)
        self._committer.wake()
        try:
            return await asyncio.wait_for(asyncio.shield(fut), wait_s)
        except TimeoutError:
            if self._committer.granted(worker_id) and not fut.done():
                return await fut  # work was granted in a commit still being written
            if fut.done():
                return fut.result()
            self._claims.stop_waiting(worker_id, fut)
            self._check().cancel_wait(worker_id)
            return []
        except asyncio.CancelledError:
            self._claims.stop_waiting(worker_id, fut)  # a grant on its way is held for the next claim
            with contextlib.suppress(FedcoordError):
                self._check().cancel_wait(worker_id)
            raise

    async def start_task(self, lease: Lease) -> None:
        """The worker started the task: its timeout now counts from here."""
        core = self._check()
        core.start(lease, self._now())
        await self._committer.commit()

    async def complete(self, lease: Lease, result: bytes = b"") -> None:
        """The task succeeded. Acknowledged once durable; a stale lease gets StaleLeaseError."""
        core = self._check()
        core.complete(lease, result, self._now())
        await self._committer.commit()

    async def fail(self, lease: Lease, error: str, *, retry: bool = True) -> None:
        """The attempt failed: retried after a backoff while retries remain (unless ``retry`` is
        False), then failed for good with ``error`` kept."""
        core = self._check()
        core.fail(lease, error, self._now(), retry=retry)
        await self._committer.commit()

    async def finish_many(
        self,
        completed: Sequence[tuple[Lease, bytes]] = (),
        failed: Sequence[tuple[Lease, str, bool]] = (),
        started: Sequence[Lease] = (),
    ) -> list[tuple[Lease, FedcoordError]]:
        """A batch of workers' reports (a worker stream's message): each is applied as
        :meth:`start_task`, :meth:`complete` or :meth:`fail(lease, error, retry=...) <fail>` would,
        and all are acknowledged by one durable write. Returns the refused ones with why (a stale
        lease, a result too large); the rest are durable when this returns."""
        core = self._check()
        now = self._now()
        refused: list[tuple[Lease, FedcoordError]] = []
        for lease in started:
            try:
                core.start(lease, now)
            except FedcoordError as e:
                refused.append((lease, e))
        for lease, result in completed:
            try:
                core.complete(lease, result, now)
            except FedcoordError as e:
                refused.append((lease, e))
        for lease, error, retry in failed:
            try:
                core.fail(lease, error, now, retry=retry)
            except FedcoordError as e:
                refused.append((lease, e))
        await self._committer.commit()
        return refused

    # ------------------------------------------------------------------ reading

    def subscribe(self, *, max_queue: int = 10_000) -> Subscription:
        """Task events (new_task, task_updated) as they become durable: ``async for e in sub``."""
        sub = self._hub.subscribe(max_queue)
        self._core.want_events(True)
        return sub

    async def workers(self) -> list[WorkerInfo]:
        core = self._check()
        return [w.info() for w in core.workers.values()]

    def load(self) -> Load:
        """The node's load now (running counters; see :class:`~node.core.load.Load`)."""
        return self._check().load()

    async def stats(self) -> NodeStats:
        core = self._check()
        now = self._now()
        return self._analytics.stats(
            now,
            by_status={k.value: v for k, v in core.status_counts().items()},
            by_priority={k.value: v for k, v in core.priority_counts().items()},
            by_type=core.type_counts(),
            workers=[w.info() for w in core.workers.values()],
            scaling=core.advice(),
            load=core.load(),
            store=self._store.description,
            state=self._state.value,
        )

    def summary(self, *, closed: bool = True) -> WindowSummary | None:
        """The raw summary of the last complete window (``closed``), or of the one still open:
        per task type submitted, completed, failed, cancelled, handed off in and out, and the
        completion-time histogram on fixed public bins. Raw: the federation's privacy step
        filters it before anything leaves the node. None before the first window ended."""
        now = self._now()
        return self._windows.last_closed(now) if closed else self._windows.current(now)

    def threshold(self) -> float:
        """The acceptance threshold now (see :class:`~node.admission.Admission`)."""
        return self.admission.threshold(self._check().load(), self._now())

    def apply_federation(self, view: FederationView) -> float:
        """Take a new view from the federation; returns the threshold it gives."""
        self.admission.update(view)
        return self.threshold()

    async def release_summary(self) -> ReleaseOutcome:
        """The privacy-filtered summary of the last complete window, for the federation (the
        ``Summary`` RPC). The ledger in the store records its cost before it is returned; a
        release that would take a task over budget is refused (``BUDGET_EXHAUSTED``, logged),
        and the node goes on serving on its local policy. Asking again for the same window
        returns the same release at no cost."""
        self._check()
        return await self._privacy.release(self._windows, self._core, self._now())

    def privacy_status(self) -> PrivacyStatus:
        """The per-task budget, what was spent and what is left (``fedcoord privacy status``)."""
        return self._privacy.status()

    def apply_view(self, view: GlobalView) -> float:
        """Take a federation view (``ApplyFederation``); returns the threshold it gives. The view
        is dated by this node's clock when it arrives (not by the aggregator's): it goes stale
        when no new one came for ``admission.stale_after_s``, and a view dated in the future by
        a fast or hostile clock cannot hold admission on it."""
        fv = dataclasses.replace(view.admission_view(self.node_id), at_ns=self._now())
        return self.apply_federation(fv)

    def story(self, task_id: str) -> list[StoryEntry]:
        """The task's transitions as this process saw them, oldest first (kept for the last
        ``CoreConfig.story_tasks`` tasks; empty when that is 0, the default)."""
        return self._core.story(task_id)

    # ------------------------------------------------------------------ looking at the node
    # (cheap reads for the dashboard and status views: counters, no scan of the tasks)

    def status_counts(self) -> dict[TaskStatus, int]:
        """Active tasks by status."""
        return self._check().status_counts()

    def type_counts(self) -> dict[str, int]:
        """Active tasks by type."""
        return self._check().type_counts()

    def queue_depths(self) -> dict[Priority, int]:
        """Ready tasks in line by priority."""
        return self._check().queue_depths()

    def oldest_queued_age_s(self) -> float:
        """How long the ready task that has waited longest has been in line (0: none)."""
        oldest = self._check().oldest_queued_ns()
        return 0.0 if oldest is None else max(0.0, (self._now() - oldest) / 1e9)

    def queue_lines(self) -> list[QueueLine]:
        """Every non-empty line: requirement class and priority, depth, oldest, who may take it."""
        return queue_lines(self._check())

    def totals(self) -> dict[str, int]:
        """Cumulative counts, as kept in the store (they survive restarts)."""
        return dict(self._analytics.totals)

    def find_tasks(self, query: TaskQuery) -> TaskPage:
        """A page of active tasks matching ``query``, newest first (see :mod:`node.core.queries`)."""
        return find_tasks(self._check(), query)

    def explain(self, task: Task) -> list[str]:
        """Why ``task`` is where it is (waiting on dependencies, no capable worker, a backoff,
        handed off and to whom, ...)."""
        return explain(self._check(), task, self._now())

    async def dead_letters(self, offset: int = 0, limit: int = 50) -> tuple[int, list[Task]]:
        """Dead letters (failed here for good, within the retention), newest first: how many,
        and a page of their records. From the store's index: right after a restart too."""
        self._check()
        total, ids = await self._store.dead_letters(offset, limit, now_ns=self._now())
        found = await self._finished(ids)
        return total, [found[tid] for tid in ids if tid in found and found[tid].status is TaskStatus.FAILED]

    async def history(self, minutes: int = 60) -> list[dict[str, Any]]:
        """Per-minute analytics of the last ``minutes`` (up to 24 h), oldest first; the current,
        unfinished minute last."""
        self._check()
        return self._analytics.history_rows(self._now(), minutes)

    async def report(self) -> PerformanceReport:
        """Seed 001's final performance report, with per-worker statistics."""
        core = self._check()
        return self._analytics.report(self._now(), [w.info() for w in core.workers.values()])


def lease_bytes(lease: Lease) -> int:
    """About how many bytes a lease takes on the wire (payload, context, names, ids)."""
    sp = lease.spec
    n = 160 + len(sp.payload) + len(sp.type) + len(lease.task_id)
    if sp.context:
        n += sum(len(k) + len(v) + 8 for k, v in sp.context.items())
    n += sum(len(d) + 4 for d in sp.dependencies) + sum(len(c) + 4 for c in sp.required_capabilities)
    if sp.idempotency_key:
        n += len(sp.idempotency_key)
    return n


def _references(specs: list[TaskSpec]) -> tuple[list[str], list[str]]:
    """Task ids the specs refer to (dependencies, explicit ids) and their idempotency keys."""
    ids: list[str] = []
    keys: list[str] = []
    for s in specs:
        if type(s) is not TaskSpec:
            continue  # the core rejects it with a precise error
        deps = s.dependencies
        if deps and isinstance(deps, list | tuple):
            ids.extend(d for d in deps if isinstance(d, str))
        if isinstance(s.id, str):
            ids.append(s.id)
        if isinstance(s.idempotency_key, str) and s.idempotency_key:
            keys.append(s.idempotency_key)
    return ids, keys
