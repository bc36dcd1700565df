"""The discrete-event loop: a virtual clock over N nodes, each the real scheduling core.

Every node is a :class:`~node.core.Core` (the same object the runtime drives, with
``MemoryStore``'s semantics: nothing is written anywhere) with one worker of ``slots``
concurrency (or, in a mixed workload, workers of several skills with waiting claims). Events, in
virtual nanoseconds, from one heap: a task arrives at a node (the core's ``submit``, then
``claim`` while a slot is free), a task's service ends (``complete`` or ``fail``, then ``claim``
again), a periodic tick (the core's ``tick``, and its outbox drained, as the runtime's group
commit does), burst switches, node failures and recoveries (the core rebuilt with the runtime's
``rebuild_core``), and with a sharing policy the hand-off messages and federation rounds, which
:class:`~federation.sim.share.Sharing` handles.

**Randomness is simulation-only**: arrival gaps and service times come from ``random.Random``
streams seeded from the config's seed, one per node and purpose, so the same config gives the
same result byte for byte. Deployed nodes never use these (their noise is OpenDP's).
"""

from __future__ import annotations

import bisect
import gc
import heapq
import itertools
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from federation.sim.config import SimConfig
from federation.sim.share import LIVE_KINDS, Sharing
from federation.view import GlobalView
from node.core import Core, CoreConfig
from node.model import Lease, Limits, TaskSpec, TaskStatus, WorkerSpec, normalize_specs

__all__ = ["SimResult", "mmpp_rates", "node_rates", "simulate"]

_NS = 1_000_000_000
_ARRIVAL, _DONE, _TICK, _SWITCH = 0, 1, 2, 3
_FAIL, _RECOVER = 20, 21  # (past Sharing's kinds)
_LEASED = (TaskStatus.ASSIGNED, TaskStatus.IN_PROGRESS)
_HANDING_OFF = TaskStatus.HANDING_OFF
_WORKER = "slots"


@dataclass(frozen=True, slots=True)
class SimResult:
    """``result`` depends only on the config (the same seed gives the same bytes as JSON);
    ``wall_s`` and ``events_per_s`` are how long it took here."""

    result: dict[str, Any]
    wall_s: float
    events_per_s: float
    engine: dict[str, Any] | None = None  # the Flower engine path's wall times (not reproducible)


def _stream(seed: int, node: int, purpose: str) -> random.Random:
    # seeded by a string: hashed with SHA-512 by random, the same on every run and machine
    return random.Random(f"fedcoord-sim:{seed}:{node}:{purpose}")


def mmpp_rates(rate: float, factor: float, share: float, burst_mean_s: float) -> tuple[float, float, float, float]:
    """A two-state Markov-modulated Poisson process of mean rate ``rate``: (rate outside bursts,
    rate in them (``factor`` x), rate of leaving a burst, rate of entering one), so that bursts
    last ``burst_mean_s`` on average and take ``share`` of the time."""
    low = rate / (1 - share + factor * share)
    return low, low * factor, 1.0 / burst_mean_s, share / ((1 - share) * burst_mean_s)


def simulate(
    cfg: SimConfig,
    progress: Callable[[float], None] | None = None,
    *,
    rounds: Callable[[Sharing, int], None] | None = None,
    on_view: Callable[[Sharing, GlobalView, int], None] | None = None,
) -> SimResult:
    """Run ``cfg`` to its end: arrivals stop at ``duration_s``, then every task still in the
    system runs to completion. ``progress`` is called at every tick with the virtual seconds
    reached (for a progress bar; the run's result does not depend on it). ``rounds``, when
    given, runs the federation's rounds instead of the simulator (the Flower engine path,
    :mod:`federation.sim.flower`): it is called at each round's virtual time and returns when
    the round is over, having asked the nodes through :meth:`Sharing.release` and
    :meth:`Sharing.apply_view`. ``on_view`` sees each round's merged view when the simulator
    runs the rounds with noise (``fedcoord simulate --rounds-file``: the federation dashboard's
    input).

    While it runs, the cyclic garbage collector runs less often (``gc.set_threshold(100_000,
    50, 100)``, put back after): the run allocates millions of short-lived, acyclic objects and
    the default thresholds spent a third of a 1,000-node run collecting (33.8k -> 54.0k events/s)."""
    old = gc.get_threshold()
    gc.set_threshold(100_000, 50, 100)
    try:
        return _simulate(cfg, progress, rounds, on_view)
    finally:
        gc.set_threshold(*old)


def _mixed_metrics(
    cfg: SimConfig,
    *,
    soj: np.ndarray,
    soj_type: list[int],
    wplan: list[list[tuple[int, int]]],
    wbusy_ns: list[list[int]],
    failed: int,
    retried: int,
    arrived: int,
) -> dict[str, Any]:
    """A mixed workload's own figures: failures, sojourn per type, utilization per worker skill."""
    types = np.asarray(soj_type, dtype=np.int64)
    by_type: dict[str, Any] = {}
    weights = cfg.type_weights()
    for k in range(cfg.types):
        a = soj[types == k] if soj.size else soj
        p50, p99 = (float(x) for x in np.percentile(a, [50, 99])) if a.size else (None, None)
        by_type[f"t{k}"] = {"difficulty": cfg.difficulty(k), "share": weights[k], "measured": int(a.size),
                            "p50": p50, "p99": p99}  # fmt: skip
    span = cfg.duration_s * _NS - cfg.warmup_s * _NS
    busy: dict[int, float] = {}
    cap: dict[int, float] = {}
    for i, plan in enumerate(wplan):
        for k, (skill, c) in enumerate(plan):
            busy[skill] = busy.get(skill, 0.0) + wbusy_ns[i][k]
            cap[skill] = cap.get(skill, 0.0) + c * span
    return {
        "failed": failed,  # failed for good (retries spent)
        "failed_rate": failed / arrived if arrived else 0.0,
        "retried": retried,  # attempts that failed and were retried
        "by_type": by_type,
        "utilization_by_skill": {str(sk): busy[sk] / cap[sk] for sk in sorted(busy, reverse=True)},
    }


def node_rates(cfg: SimConfig) -> list[float]:
    """Each node's mean arrival rate: ``load`` x its capacity, times ``1 + spread x u_i`` with
    the u_i evenly over [-1, 1] in a seeded order, scaled back so that the federation's load
    is ``load``."""
    n = cfg.nodes
    base = [cfg.arrival_rate_per_s(i) for i in range(n)]
    if cfg.spread == 0.0 or n == 1:
        return base
    order = list(range(n))
    random.Random(f"fedcoord-sim:{cfg.seed}:spread").shuffle(order)
    u = [0.0] * n
    for rank, i in enumerate(order):
        u[i] = -1.0 + 2.0 * rank / (n - 1)
    raw = [b * (1.0 + cfg.spread * u[i]) for i, b in enumerate(base)]
    k = sum(base) / sum(raw)
    return [r * k for r in raw]


def _simulate(
    cfg: SimConfig,
    progress: Callable[[float], None] | None,
    rounds: Callable[[Sharing, int], None] | None,
    on_view: Callable[[Sharing, GlobalView, int], None] | None = None,
) -> SimResult:
    t0 = time.perf_counter()
    n = cfg.nodes
    # workers are only silent when idle here: no heartbeat timeouts; task timeouts beyond any run
    year_s = 365 * 86400.0
    core_cfgs = [CoreConfig(node_id=f"n{i}", heartbeat_timeout_s=year_s, worker_expiry_s=year_s) for i in range(n)]
    cores = [Core(core_cfgs[i], _stream(cfg.seed, i, "core")) for i in range(n)]
    slots = [cfg.node_slots(i) for i in range(n)]
    mixed = cfg.mixed
    # per node: its workers' (skill, slots), most skilled first (one worker "slots" unless mixed)
    wplan = [cfg.worker_slots(i) if mixed else [(10, slots[i])] for i in range(n)]
    wnames = [_WORKER] if not mixed else [f"w{k}" for k in range(max(len(p) for p in wplan))]

    def workers_up(i: int, now: int) -> None:
        core = cores[i]
        core.emit_events = False
        for k, (skill, c) in enumerate(wplan[i]):
            core.register_worker(WorkerSpec(wnames[k], concurrency=c, skill=skill), now)
        core.drain()

    for i in range(n):
        workers_up(i, 0)
    arrival_expo = [_stream(cfg.seed, i, "arrivals").expovariate for i in range(n)]
    service_expo = [_stream(cfg.seed, i, "service").expovariate for i in range(n)]
    rates = node_rates(cfg)
    node_load = [rates[i] * cfg.service_mean_s / slots[i] for i in range(n)]
    # Bursts (a two-state Markov-modulated Poisson process per node): the rate is `burst_factor`
    # times higher during bursts, which take `burst_share` of the time, with the mean rate kept.
    # At a switch the next arrival is drawn again at the new rate (exact: the gaps are memoryless);
    # the arrival drawn before is stale, told by its generation number.
    bursty = cfg.burst_factor > 1.0
    share = cfg.burst_share
    mmpp = [mmpp_rates(r, cfg.burst_factor, share, cfg.burst_mean_s) for r in rates]
    low = [m[0] for m in mmpp]
    high = [m[1] for m in mmpp]
    leave_hot, leave_cold = mmpp[0][2], mmpp[0][3]
    switch_expo = [_stream(cfg.seed, i, "bursts").expovariate for i in range(n)]
    hot = [bursty and _stream(cfg.seed, i, "burst-start").random() < share for i in range(n)]  # stationary
    if bursty:
        rates = [high[i] if hot[i] else low[i] for i in range(n)]
    gen = [0] * n
    mu = 1.0 / cfg.service_mean_s
    free = list(slots)
    queued = [0] * n  # ready tasks in line, per node
    busy_ns = [0] * n
    # the longest timeout there is (7 days) counts from the claim: services are capped far below
    norm, plain = normalize_specs([TaskSpec("sim", timeout_s=7 * 86400.0)], Limits())
    assert plain
    batch = list(norm)  # validated once: each arrival submits it with submit_normalized
    # a mixed workload: one batch per type, the type of each arrival drawn from the Zipf weights
    type_batches: list[list[TaskSpec]] = []
    for k in range(cfg.types if mixed else 0):
        norm, plain = normalize_specs(
            [TaskSpec(f"t{k}", difficulty=cfg.difficulty(k), timeout_s=7 * 86400.0)], Limits()
        )
        assert plain
        type_batches.append(list(norm))
    weights = cfg.type_weights()
    cum_weights = list(itertools.accumulate(weights))
    mean_difficulty = sum(w * cfg.difficulty(k) for k, w in enumerate(weights))
    # the service rate of a task of difficulty d (index d): mean service_mean_s x d / mean difficulty
    mu_of = [0.0] + [mean_difficulty / (cfg.service_mean_s * d) for d in range(1, 11)]
    type_rng = [_stream(cfg.seed, i, "types").random for i in range(n)]
    fail_rng = [_stream(cfg.seed, i, "failures").random for i in range(n)]
    fail_rate = cfg.fail_rate
    type_of = {f"t{k}": k for k in range(cfg.types)}
    end_ns = int(cfg.duration_s * _NS)
    warm_ns = int(cfg.warmup_s * _NS)
    tick_ns = int(cfg.tick_s * _NS)

    heap: list[tuple[int, int, int, int, Any]] = []  # (ns, seq, kind, node, lease or generation or message)
    counter = itertools.count()
    push, pop = heapq.heappush, heapq.heappop

    def push_event(at: int, kind: int, node: int, payload: Any) -> None:
        push(heap, (at, next(counter), kind, node, payload))

    waits_ns: list[int] = []
    # Node failures: a node that fails loses its running services (their ends are stale, told by
    # their lease), refuses arrivals and loses the messages sent to it until it is rebuilt
    failures = cfg.failures
    down = [False] * n
    lost: set[tuple[str, int]] = set()
    lease_end: dict[tuple[str, int], int] = {}  # a running lease's end (to take back its unspent busy time)
    fail_expo = [_stream(cfg.seed, i, "node-failures").expovariate for i in range(n)]
    repair_expo = [_stream(cfg.seed, i, "node-repairs").expovariate for i in range(n)]
    crashes = rejected = lost_leases = 0
    down_ns = [0] * n  # time down within [warmup, end]

    def claim(i: int, now: int) -> int:
        """Fill node ``i``'s free slots from its line; the service ends pushed."""
        leases = cores[i].claim(_WORKER, min(free[i], queued[i]), now)
        k = len(leases)
        free[i] -= k
        queued[i] -= k
        expo = service_expo[i]
        tasks = cores[i].tasks
        for lease in leases:
            d = int(expo(mu) * _NS)
            busy_ns[i] += max(0, min(now + d, end_ns) - max(now, warm_ns))  # within [warmup, end]
            t = tasks[lease.task_id]
            if t.created_ns >= warm_ns and t.failures == 0:  # (its first wait: not again after a crash)
                waits_ns.append(now - t.created_ns)
            if failures:
                lease_end[lease.task_id, lease.attempt] = now + d
            push(heap, (now + d, next(counter), _DONE, i, lease))
        return k

    # A mixed workload: each worker keeps a waiting claim for its free slots, and the core gives
    # what becomes ready to the best-scored waiting worker that may take it (as the runtime's
    # long-polling workers): after every change, the grants are started and workers claim again.
    wfree = [[c for _, c in p] for p in wplan]
    waiting = [[False] * len(p) for p in wplan]
    widx = {name: k for k, name in enumerate(wnames)}
    wbusy_ns = [[0] * len(p) for p in wplan]

    def start(i: int, k: int, leases: list[Lease], now: int) -> int:
        m = len(leases)
        wfree[i][k] -= m
        free[i] -= m
        queued[i] -= m
        expo = service_expo[i]
        tasks = cores[i].tasks
        for lease in leases:
            d = int(expo(mu_of[lease.spec.difficulty]) * _NS)
            b = max(0, min(now + d, end_ns) - max(now, warm_ns))
            busy_ns[i] += b
            wbusy_ns[i][k] += b
            t = tasks[lease.task_id]
            if t.created_ns >= warm_ns and t.failures == 0:
                waits_ns.append(now - t.created_ns)
            if failures:
                lease_end[lease.task_id, lease.attempt] = now + d
            push(heap, (now + d, next(counter), _DONE, i, lease))
        return m

    def fill(i: int, now: int) -> int:
        """Node ``i``'s grants started, and its workers with free slots waiting again."""
        core, k_pushed = cores[i], 0
        grants = core.out.grants
        if grants:
            for wid, leases in grants.items():
                k = widx[wid]
                waiting[i][k] = False
                k_pushed += start(i, k, leases, now)
            grants.clear()
        wf, wt = wfree[i], waiting[i]
        for k in range(len(wf)):
            while wf[k] and not wt[k]:
                leases = core.claim(wnames[k], wf[k], now, wait=True)
                if not leases:
                    wt[k] = True
                    break
                k_pushed += start(i, k, leases, now)
        return k_pushed

    sharing = (
        Sharing(
            cfg,
            down=down,
            cores=cores,
            slots=slots,
            free=free,
            queued=queued,
            push=push_event,
            claim=fill if mixed else claim,
            external=rounds,
            on_view=on_view,
        )
        if cfg.sharing
        else None
    )
    live = 0  # events other than ticks and rounds still to come (the run ends when only those are left)
    for i in range(n):
        first = int(arrival_expo[i](rates[i]) * _NS)
        if first < end_ns:
            heap.append((first, next(counter), _ARRIVAL, i, 0))
            live += 1
        if bursty:  # a switch can start a node's arrivals again: it keeps the run going too
            first = int(switch_expo[i](leave_hot if hot[i] else leave_cold) * _NS)
            if first < end_ns:
                heap.append((first, next(counter), _SWITCH, i, None))
                live += 1
    if failures:
        assert cfg.mtbf_s is not None
        rate_fail, rate_repair = 1.0 / cfg.mtbf_s, 1.0 / cfg.mttr_s
        for i in range(n):
            first = int(fail_expo[i](rate_fail) * _NS)
            if first < end_ns:
                heap.append((first, next(counter), _FAIL, i, None))
                live += 1
    heap.append((tick_ns, next(counter), _TICK, -1, None))
    if sharing is not None and (first_round := sharing.first_round()) is not None:
        heap.append((first_round[0], next(counter), first_round[1], -1, None))
    heapq.heapify(heap)
    live_kinds = LIVE_KINDS
    handle = sharing.handle if sharing is not None else None

    sojourn_ns: list[int] = []
    deadline_ns = int(cfg.deadline_s * _NS)
    late = 0
    arrived = completed = 0
    last_arrival_ns: int | None = None
    imbalance: list[float] = []
    spread_max: list[float] = []

    def crash(i: int, now: int) -> None:
        """Node ``i`` and its workers are gone: what they ran is lost (its busy time not spent)."""
        nonlocal crashes, lost_leases
        crashes += 1
        core = cores[i]
        for t in core.tasks.values():
            if t.assigned_worker is not None and t.status in _LEASED:
                key = (t.id, t.attempt)
                lost.add(key)
                lost_leases += 1
                end = lease_end.pop(key, None)
                if end is not None:
                    back = max(0, min(end, end_ns) - max(now, warm_ns))
                    busy_ns[i] -= back
                    if mixed:
                        wbusy_ns[i][widx[t.assigned_worker]] -= back
        if sharing is not None:
            sharing.record(i, now)
            sharing.crash(i)
        down[i] = True
        free[i] = queued[i] = 0
        for k in range(len(wfree[i])):
            wfree[i][k] = 0
            waiting[i][k] = False

    def recover(i: int, now: int) -> int:
        """Node ``i`` back, rebuilt from what its store held (the runtime's ``rebuild_core``:
        the gone workers' leases back in line), its workers registered again; events pushed."""
        from node.runtime.rebuild import Records, rebuild_core  # noqa: PLC0415 - only runs with failures

        old = cores[i]
        old.drain()
        handing = {t.id: t.handoff_peer for t in old.tasks.values() if t.status is _HANDING_OFF and t.handoff_peer}
        rec = Records(
            tasks=list(old.tasks.values()), reports=list(old._reports.values()), refused=dict(old._refused),
            handoffs=handing,
        )  # fmt: skip
        core = cores[i] = rebuild_core(core_cfgs[i], _stream(cfg.seed, i, f"core-{crashes}"), rec, now)
        core.emit_events = False
        workers_up(i, now)
        down[i] = False
        free[i] = slots[i]
        for k, (_, c) in enumerate(wplan[i]):
            wfree[i][k] = c
        pushed = sharing.recover(i, now) if sharing is not None else 0
        queued[i] = core.load().ready
        return pushed + (fill(i, now) if mixed else claim(i, now) if free[i] and queued[i] else 0)

    failed = retried = 0
    retry_wait = 0  # tasks in a retry backoff (no event of theirs is queued: the run waits for them)
    soj_type: list[int] = []  # a mixed workload: the type of each sojourn measured

    while live or retry_wait:
        now, _, kind, i, lease = pop(heap)
        if kind == _TICK:
            for j, core in enumerate(cores):
                if not down[j]:
                    core.tick(now)
            if mixed:  # retries due are ready now: granted to waiting workers, or in line
                retry_wait = 0
                for j, core in enumerate(cores):
                    if down[j]:
                        retry_wait += core.load().delayed
                        continue
                    live += fill(j, now)
                    ld = core.load()  # (after the grants were started: they are leased, not ready)
                    queued[j] = ld.ready
                    retry_wait += ld.delayed
            if sharing is not None:
                for j in range(n):
                    sharing.record(j, now)
                live += sharing.send_reports(now)
            else:
                for core in cores:
                    core.drain()
            if now >= warm_ns and n > 1 and now <= end_ns:
                ratios = [(slots[j] - free[j] + queued[j]) / slots[j] for j in range(n) if not down[j]]
                mean = sum(ratios) / len(ratios) if ratios else 0.0
                if mean > 0:
                    imbalance.append(statistics.pstdev(ratios) / mean)
                    spread_max.append(max(ratios) / mean)
            push(heap, (now + tick_ns, next(counter), _TICK, -1, None))
            if progress is not None:
                progress(now / _NS)
            continue
        if kind >= _FAIL:
            live -= 1
            if kind == _FAIL:
                crash(i, now)
                up = now + int(repair_expo[i](rate_repair) * _NS)
                down_ns[i] += max(0, min(up, end_ns) - max(now, warm_ns))
                push(heap, (up, next(counter), _RECOVER, i, None))
            else:
                live += recover(i, now)
                nxt = now + int(fail_expo[i](rate_fail) * _NS)
                if nxt < end_ns:
                    push(heap, (nxt, next(counter), _FAIL, i, None))
                    live += 1
            live += 1 if kind == _FAIL else 0
            continue
        if kind > _SWITCH:
            assert handle is not None
            if kind in live_kinds:
                live -= 1
            live += handle(kind, i, now, lease)
            continue
        if kind == _SWITCH:
            live -= 1
            h = hot[i] = not hot[i]
            r = rates[i] = high[i] if h else low[i]
            g = gen[i] = gen[i] + 1
            nxt = now + int(arrival_expo[i](r) * _NS)
            if nxt < end_ns:
                push(heap, (nxt, next(counter), _ARRIVAL, i, g))
                live += 1
            nxt = now + int(switch_expo[i](leave_hot if h else leave_cold) * _NS)
            if nxt < end_ns:
                push(heap, (nxt, next(counter), _SWITCH, i, None))
                live += 1
            continue
        if kind == _ARRIVAL and lease != gen[i]:  # drawn before a switch: replaced by a new draw
            live -= 1
            continue
        live -= 1
        if failures:
            if kind == _DONE:
                key = (lease.task_id, lease.attempt)
                if key in lost:  # it died with its node
                    lost.discard(key)
                    continue
                del lease_end[key]
            elif down[i]:  # an arrival at a node that is down: refused
                rejected += 1
                nxt = now + int(arrival_expo[i](rates[i]) * _NS)
                if nxt < end_ns:
                    push(heap, (nxt, next(counter), _ARRIVAL, i, lease))
                    live += 1
                continue
        core = cores[i]
        if kind == _ARRIVAL:
            if mixed:  # of a type drawn from the Zipf weights
                x = type_rng[i]() * cum_weights[-1]
                core.submit_normalized(type_batches[bisect.bisect_right(cum_weights, x)], now)
            else:
                core.submit_normalized(batch, now)
            arrived += 1
            last_arrival_ns = now
            queued[i] += 1
            nxt = now + int(arrival_expo[i](rates[i]) * _NS)
            if nxt < end_ns:
                push(heap, (nxt, next(counter), _ARRIVAL, i, lease))
                live += 1
        elif mixed:
            k = widx[lease.worker_id]
            wfree[i][k] += 1
            free[i] += 1
            waiting[i][k] = False  # it claims again below, for all its free slots
            if fail_rate and fail_rng[i]() < fail_rate:
                core.fail(lease, "simulated failure", now)
                if lease.task_id in core.tasks:
                    retried += 1
                    retry_wait += 1
                else:
                    failed += 1
            else:
                created = core.tasks[lease.task_id].created_ns
                core.complete(lease, b"", now)
                completed += 1
                if created >= warm_ns:
                    d = now - created
                    sojourn_ns.append(d)
                    soj_type.append(type_of[lease.spec.type])
                    if d > deadline_ns:
                        late += 1
        else:
            created = core.tasks[lease.task_id].created_ns
            core.complete(lease, b"", now)
            free[i] += 1
            completed += 1
            if created >= warm_ns:
                d = now - created
                sojourn_ns.append(d)
                if d > deadline_ns:
                    late += 1
        if mixed:  # the grants started, every worker with free slots waiting again
            live += fill(i, now)
        elif free[i] and queued[i]:  # a slot and a task
            live += claim(i, now)
        if queued[i] and sharing is not None:  # every slot busy: the node looks at its load
            live += sharing.arrived(i, now)

    events = arrived + completed + failed + retried  # (ticks, switches, stale arrivals, messages not counted)
    last_ns = now if events else 0
    if sharing is not None:
        for j in range(n):
            sharing.record(j, last_ns)
        sharing.settle_reports(last_ns)
    for core in cores:
        core.tick(last_ns)
        core.drain()
        if cfg.validate:
            core.validate()
    left = sum(len(c.tasks) for c in cores)
    soj = np.asarray(sojourn_ns, dtype=np.float64) / _NS
    waits = np.asarray(waits_ns, dtype=np.float64) / _NS
    util = [busy_ns[i] / (slots[i] * (end_ns - warm_ns)) for i in range(n)]  # over [warmup, end of arrivals]

    def stats(a: np.ndarray) -> dict[str, float] | None:
        if a.size == 0:
            return None
        p50, p99 = np.percentile(a, [50, 99])
        return {"mean": float(a.mean()), "p50": float(p50), "p99": float(p99), "max": float(a.max())}

    result: dict[str, Any] = {
        "config": cfg.to_record(),
        "tasks": arrived,
        "completed": completed,
        "left_active": left,
        "measured": len(sojourn_ns),
        "events": events,
        "virtual_s": last_ns / _NS,
        "sojourn_s": stats(soj),
        "wait_s": stats(waits),
        "waited_share": float((waits > 0).mean()) if waits.size else None,  # tasks that found every slot busy
        "timeout_rate": late / len(sojourn_ns) if sojourn_ns else None,  # sojourn over deadline_s
        "last_arrival_s": None if last_arrival_ns is None else last_arrival_ns / _NS,
        "utilization": {"mean": float(np.mean(util)), "min": float(min(util)), "max": float(max(util))},
        # nodes whose own load is 1 or more (with spread): alone, their queues grow for the whole
        # run, so without sharing the tail depends on duration_s
        "nodes_over_capacity": sum(1 for i in range(n) if node_load[i] >= 1.0),
        "max_node_load": max(node_load),
        # across nodes, sampled every tick in [warmup, end of arrivals]: sd / mean of the load ratios
        # (0: all alike), and the largest ratio / mean
        "imbalance": {
            "cv_mean": float(np.mean(imbalance)) if imbalance else None,
            "max_over_mean": float(np.mean(spread_max)) if spread_max else None,
        },
        "sharing": sharing.metrics(arrived) if sharing is not None else None,
        # node failures: crashes, the leases that died with them, arrivals refused while down
        "failures": {
            "crashes": crashes,
            # failed for good because crashes took their attempts (the core counts a lease lost
            # with its worker as a failed attempt; max_retries 3)
            "failed": arrived - completed - left - (failed if mixed else 0),
            "lost_leases": lost_leases,
            "rejected": rejected,
            "reject_rate": rejected / (arrived + rejected) if arrived + rejected else 0.0,
            "down_share": sum(down_ns) / (n * (end_ns - warm_ns)),  # of node time in [warmup, end]
        }
        if failures
        else None,
        "workload": (
            _mixed_metrics(
                cfg,
                soj=soj,
                soj_type=soj_type,
                wplan=wplan,
                wbusy_ns=wbusy_ns,
                failed=failed,
                retried=retried,
                arrived=arrived,
            )
            if mixed
            else None
        ),
    }
    wall = time.perf_counter() - t0
    return SimResult(result, wall, events / wall if wall > 0 else 0.0)
