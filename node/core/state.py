"""The core's state and its bookkeeping: what the engine and the commands work on, and the
read-only views of it. See :mod:`node.core.core` for the state machine as a whole."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from node.core.config import CoreConfig
from node.core.deps import DependencyGraph
from node.core.leases import LeaseClock
from node.core.load import Load
from node.core.outbox import Outbox
from node.core.queues import ReadyQueues, TaskClass
from node.core.story import StoryEntry, StoryLog
from node.core.validate import check_invariants
from node.core.workers import (
    ScalingAdvice,
    WorkerInfo,
    WorkerState,
    scaling_advice,
)
from node.errors import InvariantError, WorkerNotFoundError
from node.ids import IdGenerator
from node.model import (
    PRIORITY_ORDER,
    EventKind,
    Lease,
    Priority,
    Task,
    TaskSpec,
    TaskStatus,
)

__all__ = ["CoreState", "HeartbeatReply"]

PENDING = TaskStatus.PENDING
QUEUED = TaskStatus.QUEUED
ASSIGNED = TaskStatus.ASSIGNED
IN_PROGRESS = TaskStatus.IN_PROGRESS
HANDING_OFF = TaskStatus.HANDING_OFF
HANDED_OFF = TaskStatus.HANDED_OFF
COMPLETED = TaskStatus.COMPLETED
FAILED = TaskStatus.FAILED
CANCELLED = TaskStatus.CANCELLED
NEW_TASK = EventKind.NEW_TASK
TASK_UPDATED = EventKind.TASK_UPDATED
_LEASED = (ASSIGNED, IN_PROGRESS)
_ACTIVE_ORDER = (PENDING, QUEUED, ASSIGNED, IN_PROGRESS, HANDING_OFF)
_NS = 1_000_000_000
_RANK = {p: i for i, p in enumerate(PRIORITY_ORDER)}
_new_tuple = tuple.__new__


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    healthy: bool
    revoked: tuple[tuple[str, int], ...]  # (task id, attempt): stop these, the lease is gone


# The default timeout (2 x difficulty seconds) in ns, by difficulty: looked up, not computed,
# on every lease (Engine._fill reads it inline).
_DEFAULT_TIMEOUT_NS = tuple(int(2.0 * d * _NS) for d in range(11))


def _timeout_ns(spec: TaskSpec) -> int:
    t = spec.timeout_s
    return _DEFAULT_TIMEOUT_NS[spec.difficulty] if t is None else int(t * _NS)


class CoreState:
    def __init__(self, config: CoreConfig | None = None, rng: random.Random | None = None):
        self.config = cfg = config or CoreConfig()
        self.node_id = cfg.node_id
        self.limits = cfg.limits
        self._rng = rng or random.Random(0)
        self._ids = IdGenerator.for_node(cfg.node_id, self._rng.getrandbits(74))
        self.out = Outbox()
        self.emit_events = True  # build events (see want_events)
        self.story_log: StoryLog | None = StoryLog(cfg.story_tasks) if cfg.story_tasks > 0 else None
        self.tasks: dict[str, Task] = {}
        self.workers: dict[str, WorkerState] = {}
        self._queues = ReadyQueues(cfg.aging_s)
        # (not_before_ns, seq, task id): by id, so that a task cancelled while it waits is freed at once
        self._delayed: list[tuple[int, int, str]] = []
        self._delay_seq = 0
        self._n_delayed = 0  # queued tasks that wait for their not-before time (queued_ns None)
        self._n_healthy = 0  # healthy workers ...
        self._slots = 0  # ... and their concurrency summed (load = (leased + ready) / slots)
        self._leases = LeaseClock(self.tasks)
        self._deps = DependencyGraph()
        # Hand-off: handed-off tasks that pending tasks here still wait on (settled when their
        # result comes back); final records of adopted tasks not yet acknowledged by the node
        # they came from; ids this node declared unknown to a peer that asked (id -> ns), whose
        # late transfers it refuses.
        self._remote_deps: set[str] = set()
        self._reports: dict[str, Task] = {}
        self._refused: dict[str, int] = {}
        self._dependents = self._deps.dependents  # the same dict: read on every completion
        self._idem: dict[str, str] = {}  # idempotency key -> id, active tasks
        self._recent_idem: dict[str, str] = {}  # ... and recently finished ones (bounded)
        self._recent_idem_order: deque[str] = deque()
        self._waiters: dict[str, int] = {}  # worker id -> max tasks of its waiting claim
        self._fresh: list[Task] = []  # became ready while claims wait; dispatched at command end
        # queued_ns is strictly increasing (tasks made ready by one command get consecutive
        # nanoseconds), so it is also the FIFO order: restore() sorts by it alone.
        self._last_queued_ns = 0
        # Active tasks by status, by priority and by type, exact at every transition.
        self._by_status: dict[TaskStatus, int] = dict.fromkeys(_ACTIVE_ORDER, 0)
        self._by_priority: dict[Priority, int] = dict.fromkeys(PRIORITY_ORDER, 0)
        self._by_type: dict[str, int] = {}
        self._hb_ns = int(cfg.heartbeat_timeout_s * _NS)
        self._expiry_ns = int(cfg.worker_expiry_s * _NS)
        self._alpha = cfg.ema_alpha
        self._keep = 1 - cfg.ema_alpha
        self._strict = cfg.strict_matching
        self._fast = cfg.fast_difficulty

    def _enter(self, t: Task) -> None:
        self.tasks[t.id] = t
        sp = t.spec
        self._by_status[t.status] += 1
        self._by_priority[sp.priority] += 1  # type: ignore[index]
        self._by_type[sp.type] = self._by_type.get(sp.type, 0) + 1

    def _move(self, t: Task, status: TaskStatus) -> None:
        b = self._by_status
        b[t.status] -= 1
        b[status] += 1
        t.status = status

    def _leave(self, t: Task) -> None:
        del self.tasks[t.id]
        if t.queued_ns is None and t.status is QUEUED:
            self._n_delayed -= 1
        sp = t.spec
        self._by_status[t.status] -= 1
        self._by_priority[sp.priority] -= 1  # type: ignore[index]
        n = self._by_type[sp.type] - 1
        if n:
            self._by_type[sp.type] = n
        else:
            del self._by_type[sp.type]

    def _event(self, t: Task, now_ns: int, kind: EventKind = TASK_UPDATED) -> None:
        self.out.events.append((kind, t, t.status, t.assigned_worker, t.attempt, now_ns, t.error))

    def _worker(self, worker_id: str) -> WorkerState:
        w = self.workers.get(worker_id)
        if w is None:
            raise WorkerNotFoundError(worker_id)
        return w

    def _seen(self, w: WorkerState, now_ns: int) -> None:
        """The worker was heard from: it is healthy (again) and its slots count."""
        w.last_seen_ns = now_ns
        if not w.healthy:
            w.healthy, w.unhealthy_since_ns = True, None
            self._n_healthy += 1
            self._slots += w.concurrency
            self.out.workers[w.id] = w

    def _not_healthy(self, w: WorkerState, now_ns: int) -> None:
        """The worker stops counting as healthy (it missed heartbeats, or it leaves)."""
        if w.healthy:
            self._n_healthy -= 1
            self._slots -= w.concurrency
        w.healthy, w.unhealthy_since_ns = False, now_ns

    def _class_of(self, t: Task) -> TaskClass:
        cls, created = self._queues.class_of(t)
        if created:
            strict = self._strict
            for w in self.workers.values():
                if w.can_take(cls, strict):
                    w.eligible.append(cls)
        return cls

    def _backoff_ns(self, failures: int) -> int:
        """Exponential backoff with jitter: uniform in [d/2, d], d = min(base * 2**(n-1), max)."""
        cfg = self.config
        d = min(cfg.backoff_base_s * (2 ** (failures - 1)), cfg.backoff_max_s)
        return int((d / 2 + self._rng.random() * d / 2) * _NS)

    # ------------------------------------------------------------------ reading

    def drain(self) -> Outbox:
        """Take the outbox (and start a new one)."""
        out, self.out = self.out, Outbox()
        if self.story_log is not None and out.events:
            self.story_log.record(out.events)
        return out

    def want_events(self, listening: bool) -> None:
        """Build events while somebody listens (or while the story log is on); off, the hot
        paths skip them."""
        self.emit_events = listening or self.story_log is not None

    def story(self, task_id: str) -> list[StoryEntry]:
        """The task's transitions, oldest first (empty unless ``CoreConfig.story_tasks``)."""
        return [] if self.story_log is None else self.story_log.story(task_id)

    def validate(self) -> None:
        """Check every invariant from scratch (O(n), for tests and simulations): raises
        :class:`~node.errors.InvariantError` listing what is broken."""
        problems = check_invariants(self)
        if problems:
            raise InvariantError(problems)

    def get(self, task_id: str) -> Task | None:
        return self.tasks.get(task_id)

    def is_current(self, lease: Lease) -> bool:
        """Whether ``lease`` is the task's current lease (what complete and fail accept)."""
        t = self.tasks.get(lease.task_id)
        return (
            t is not None
            and t.attempt == lease.attempt
            and t.assigned_worker == lease.worker_id
            and (t.status is ASSIGNED or t.status is IN_PROGRESS)
        )

    def worker_info(self, worker_id: str) -> WorkerInfo:
        return self._worker(worker_id).info()

    def status_counts(self) -> dict[TaskStatus, int]:
        """Active tasks by status."""
        return dict(self._by_status)

    def priority_counts(self) -> dict[Priority, int]:
        """Active tasks by priority."""
        return dict(self._by_priority)

    def type_counts(self) -> dict[str, int]:
        """Active tasks by type."""
        return dict(self._by_type)

    def queue_depths(self) -> dict[Priority, int]:
        """Ready tasks in line by priority (delayed ones are not in line yet). O(task classes):
        no scan of the tasks, cheap enough for a metrics refresh every second."""
        return dict(zip(PRIORITY_ORDER, self._queues.depths(), strict=True))

    def oldest_queued_ns(self) -> int | None:
        """When the ready task that has waited longest in line was queued (its ``queued_ns``);
        None when no task is ready. O(task classes)."""
        return self._queues.oldest_ns()

    def leased(self) -> int:
        return self._by_status[ASSIGNED] + self._by_status[IN_PROGRESS]

    def capacity(self) -> tuple[int, int]:
        """(healthy workers, their summed concurrency)."""
        return self._n_healthy, self._slots

    def load(self) -> Load:
        """The load admission reads: running counters, no scan (see :class:`~node.core.load.Load`)."""
        b = self._by_status
        leased = b[ASSIGNED] + b[IN_PROGRESS]
        delayed = self._n_delayed
        ready = b[QUEUED] - delayed
        slots = self._slots
        demand = leased + ready
        return _new_tuple(
            Load,
            (leased, ready, delayed, b[PENDING], b[HANDING_OFF], slots, demand / slots if slots else float(demand)),
        )

    def advice(self) -> ScalingAdvice:
        """Autoscaling advice from the load: (leased + ready) / healthy worker slots."""
        b = self._by_status
        demand = b[ASSIGNED] + b[IN_PROGRESS] + b[QUEUED] - self._n_delayed
        return scaling_advice(demand, self._n_healthy, self._slots, self.config.target_load)

    def waiting_workers(self) -> list[str]:
        return list(self._waiters)
