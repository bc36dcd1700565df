"""Sharing work between simulated nodes: hand-off messages and federation rounds, on the virtual clock.

The simulator's event loop (:mod:`federation.sim.run`) hands every event that is not an arrival,
a service end, a tick or a burst switch to :class:`Sharing`. What each node decides, and how,
is the deployed node's code:

* **Admission** (:class:`node.admission.Admission`): ``offload_count`` says when a node offloads
  and how much, ``accept_count`` how much of an offer a peer takes (with what it reserved for
  earlier offers), under the node's policy and the federation's latest view.
* **The hand-off protocol** through the core's own commands, one message each way per step,
  ``net_delay_s`` apart: offer (the peer answers with what it accepts, and reserves room), the
  origin's ``begin_handoff`` of what is still ready, the transfer (the peer's ``adopt``), the
  answer (``finish_handoff`` / ``abort_handoff``), and each result reported back to the origin
  (``record_result``, then ``report_done`` on the peer) as the runtime does after its commits.
* **An offload pass** as :meth:`node.runtime.handoff.HandoffAgent.offload_pass` runs it: offers
  go on while tasks go out, a peer that took less than it was offered (or to which nothing moved)
  is left out for the rest of the pass; peers by power of two choices on what this node knows
  (the loads peers stated in their offer replies first, else the federation view's).
* **Rounds** every ``period_s``: each node's last closed window through the real privacy pipeline
  (:func:`federation.privacy.pipeline.build_release`, the node's accountant and ledger), merged by
  :class:`federation.aggregate.Aggregator`; the view reaches the nodes ``view_delay_s`` later
  (a period by default: with the next round's query, as deployed).
* **Node failures** (``mtbf_s``): messages to a node that is down are lost; the sender of a
  request hears nothing for ``rpc_timeout_s``, leaves the peer out of its choice for a while
  (``HandoffAgent._peer_failed``'s back-off) and, for a transfer, asks the peer with the core's
  ``task_status`` until it answers (the runtime's settle loop); a restarted node asks about the
  hand-offs it was making the same way (:meth:`Sharing.recover`).

What differs from the runtime, and why: the runtime's agent is asyncio and store-bound (~1 ms
per offer), far too slow to drive millions of tasks, so its decisions run here as events; an
overloaded node looks at its load at its next ``check_s`` boundary after an arrival finds every
slot busy, instead of polling every ``check_s`` whatever happens (the same decisions, without
millions of idle checks); a pass makes at most ``offers_per_pass`` offers (the runtime's tries
every peer, which at 1,000 peers would be 1,000 offers); offers run one at a time per node
(the runtime runs two); peer choice samples two candidates directly (``choose_peer`` scans the
peer list, O(peers) per offer); a peer that is down is asked about a lost transfer straight from
its store once it is back (the runtime asks over the network, the same answer); a restarted
node keeps its analytics windows (the runtime resets them). The noise is the simulation's seeded
generator (:mod:`federation.sim.noise`), never OpenDP's.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections import ChainMap
from collections.abc import Callable
from typing import Any

from federation.aggregate import Aggregator
from federation.privacy.accountant import Accountant
from federation.privacy.config import PrivacyConfig
from federation.privacy.pipeline import CELLS_PER_TASK, WindowInput, build_release, cells_of
from federation.privacy.schema import ReleasedSummary
from federation.sim.config import SimConfig
from federation.sim.noise import SimulationNoise, sim_generator
from federation.view import GlobalView
from node.admission import Admission, FederationView
from node.analytics.window import Windows
from node.core import Core
from node.core.transfer import HandoffRecord, Outcome, RemoteStatus, record_of
from node.model import Task, TaskStatus
from node.runtime.privacy import occupancy
from node.store.base import LedgerEntry

__all__ = ["EV_CHECK", "EV_ROUND", "LIVE_KINDS", "Sharing"]

_NS = 1_000_000_000
# event kinds past the event loop's own four (0..3)
EV_CHECK, EV_OFFER, EV_REPLY, EV_TRANSFER, EV_ACK, EV_REPORT, EV_REPORT_ACK, EV_ROUND, EV_VIEW, EV_SETTLE = range(4, 14)
LIVE_KINDS = frozenset({EV_CHECK, EV_OFFER, EV_REPLY, EV_TRANSFER, EV_ACK, EV_REPORT, EV_REPORT_ACK, EV_SETTLE})
_RETRY_S, _RETRY_MAX_S = 0.5, 15.0  # HandoffConfig.retry_s, retry_max_s
_QUEUED = TaskStatus.QUEUED
_HANDING = TaskStatus.HANDING_OFF
_HANDED = TaskStatus.HANDED_OFF

Push = Callable[[int, int, int, Any], None]  # (ns, kind, node, payload)


class Sharing:
    """Hand-off and rounds for one run. ``free`` and ``queued`` are the loop's own per-node
    counters (free slots, ready tasks in line): hand-offs move tasks in and out of line, so they
    change them too; ``claim(i, now)`` fills node ``i``'s free slots and returns how many
    service-end events it pushed."""

    def __init__(
        self,
        cfg: SimConfig,
        *,
        down: list[bool] | None = None,
        cores: list[Core],
        slots: list[int],
        free: list[int],
        queued: list[int],
        push: Push,
        claim: Callable[[int, int], int],
        external: Callable[[Sharing, int], None] | None = None,
        on_view: Callable[[Sharing, GlobalView, int], None] | None = None,
    ):
        self.cfg = cfg
        self.on_view = on_view  # sees each round's merged view (``fedcoord simulate --rounds-file``)
        self.cores = cores
        self.slots = slots
        self.free = free
        self.queued = queued
        self.push = push
        self.claim = claim
        n = cfg.nodes
        self.n = n
        self.ids = [c.node_id for c in cores]
        self.index = {nid: i for i, nid in enumerate(self.ids)}
        adm_cfg = dataclasses.replace(cfg.admission, policy=cfg.admission_policy)
        if cfg.policy == "oracle":  # the exact load of the moment: nothing to smooth, no noise to damp
            adm_cfg = dataclasses.replace(adm_cfg, adaptive_alpha=1.0, hysteresis=0.0)
        self.adm_cfg = adm_cfg
        self.admissions = [Admission(adm_cfg) for _ in range(n)]
        # node failures (the loop's list): messages to a node that is down are lost
        self.down = down if down is not None else [False] * n
        self.failures = cfg.failures
        self.timeout_ns = int(cfg.rpc_timeout_s * _NS)
        self.incarnation = [0] * n  # a node's restarts: answers meant for an earlier run of it are stale
        self.handoff_oid: dict[str, int] = {}  # (with failures) task -> the offer of its hand-off under way
        self.unreachable: list[dict[int, tuple[int, float]]] = [{} for _ in range(n)]  # peer -> (until, wait_s)
        self.rng = [random.Random(f"fedcoord-sim:{cfg.seed}:{i}:peers") for i in range(n)]
        self.delay_ns = int(cfg.net_delay_s * _NS)
        self.check_ns = max(1, int(cfg.check_s * _NS))
        phase = random.Random(f"fedcoord-sim:{cfg.seed}:check-phase")
        self.phase_ns = [phase.randrange(self.check_ns) for _ in range(n)]  # nodes do not look in step
        self.reservation_ns = int(cfg.reservation_s * _NS)
        self.warm_ns = int(cfg.warmup_s * _NS)
        self.end_ns = int(cfg.duration_s * _NS)
        # per node: a check is due, an offer is out, the pass's full peers and offers made
        self.check_due = [False] * n
        self.offering = [False] * n
        self.full: list[set[int]] = [set() for _ in range(n)]
        self.tries = [0] * n
        self.moved = [0] * n  # tasks the pass handed off so far
        # passes in a row that made offers and moved nothing: the next check waits 2^k x check_s
        # (k up to 3), as HandoffAgent's offload loop does
        self.fruitless = [0] * n
        self.not_before = [0] * n
        self.reserved: list[dict[int, tuple[int, int]]] = [{} for _ in range(n)]  # offer -> (tasks, expires)
        self.heard: list[dict[int, float]] = [{} for _ in range(n)]  # peer -> load it stated in a reply
        self.archive: list[dict[str, Task]] = [{} for _ in range(n)]  # handed off, result not back yet
        self.reporting: list[set[str]] = [set() for _ in range(n)]  # results sent, not acknowledged yet
        self.offer_seq = itertools.count()
        # the federation view's per-node loads, once one arrived (None: a node it has no summary of)
        self.view_loads: list[float | None] | None = None
        self.view_mean: float | None = None  # of the view's known loads
        self.oracle = cfg.policy == "oracle"
        self.oracle_at = 0
        self.oracle_view: FederationView | None = None
        # metrics
        self.offers = self.offered = self.accepted = self.handed_off = self.refused = self.bounces = 0
        self.reported = 0
        self.lost_messages = 0  # sent to a node that was down
        self.round_rx: dict[int, int] = {}  # this period's hand-offs, by receiving node
        self.rx_bucket = -1
        self.herding: list[float] = []
        self.rounds = 0
        self.budget: list[tuple[float, float]] = []  # (virtual s, the largest epsilon any node has spent)
        self.epsilon_max = 0.0
        self.releases = 0
        self.rounds_on = cfg.policy in ("seed", "adaptive")
        # rounds run by someone else (the Flower engine path): called at each round's time, it
        # returns when the round is over; meanwhile `release` and `apply_view` answer for the nodes
        self.external = external
        self.round_now = self.round_w = 0
        self.round_worst = 0.0
        self.view_round = -1
        self.last_release: list[ReleasedSummary | None] = [None] * n
        self.node_releases = [0] * n
        self.node_worst = [0.0] * n  # the most any task of node i has spent
        self._privacy_setup()

    # ------------------------------------------------------------------ privacy and rounds

    def _privacy_setup(self) -> None:
        cfg = self.cfg
        self.pcfg = PrivacyConfig(
            epsilon=cfg.epsilon if cfg.epsilon is not None else 1.0,
            delta=cfg.delta,
            m=cfg.m,
            mechanism=cfg.mechanism,
        )
        self.noisy = cfg.epsilon is not None and self.rounds_on
        if self.external is not None and not self.noisy:
            raise ValueError("rounds run elsewhere need the privacy pipeline: a policy that reads the view, an epsilon")
        self.window_ns = int(cfg.period_s * _NS)
        self.windows: list[Windows] | None = None
        if not self.noisy:
            return
        pcfg = self.pcfg
        self.accountant = acc = Accountant(pcfg, cells_of(pcfg), CELLS_PER_TASK)
        scale = acc.mechanism.scale
        self.noise = [
            SimulationNoise(pcfg.mechanism, scale, sim_generator(cfg.seed, i, "privacy")) for i in range(self.n)
        ]
        self.windows = [
            Windows(nid, 0, window_s=cfg.period_s, bins=pcfg.bins, horizon=pcfg.m, keep=2) for nid in self.ids
        ]
        self.ledgers: list[list[LedgerEntry]] = [[] for _ in range(self.n)]
        self.aggregator = Aggregator.for_config(pcfg, window_s=float(cfg.period_s))

    def record(self, i: int, now: int) -> None:
        """Node ``i``'s outbox drained (as a commit): into its windows when it keeps them."""
        out = self.cores[i].drain()
        if self.windows is not None:
            self.windows[i].record(out, now - 1)  # what was drained happened before `now`

    def first_round(self) -> tuple[int, int] | None:
        """(ns, kind) of the first round, or None when the policy reads no federation view."""
        return (self.window_ns, EV_ROUND) if self.rounds_on else None

    def _round(self, now: int) -> None:
        cfg = self.cfg
        w = now // self.window_ns - 1  # the window that just closed
        for i in range(self.n):
            self.record(i, now)
        if self.external is not None:  # the rounds run elsewhere (Flower): they ask for releases
            self.round_now, self.round_w, self.round_worst = now, w, 0.0
            self.external(self, now)
            self.rounds += 1
            self._spent(now, self.round_worst)
            self.push(now + self.window_ns, EV_ROUND, -1, None)
            return
        m = cfg.m
        lo, hi = (w - m + 1) * self.window_ns, (w + 1) * self.window_ns
        pcfg = self.pcfg
        n = self.n
        occ = [0.0] * n
        caps = [pcfg.capacity_bucket(s) for s in self.slots]
        if not self.noisy:
            down = self.down
            for i, core in enumerate(self.cores):
                if not down[i]:
                    occ[i] = float(occupancy(core.tasks.values(), lo, hi, now))
            total_cap = sum(c for c, d in zip(caps, down, strict=True) if not d)
            fed = sum(occ) / total_cap if total_cap else None
            present = [not d for d in down]
            loads: list[float | None] = [
                (o / c if c else o) if up else None for o, c, up in zip(occ, caps, present, strict=True)
            ]
            sd = 0.0
        else:
            agg = self.aggregator
            agg.clear()
            self.round_worst = 0.0
            for i in range(n):
                summary = None if self.down[i] else self.release(i, w, now)
                if summary is not None:
                    agg.add(summary)
            self._spent(now, self.round_worst)
            gv = agg.view(round=self.rounds, now_ns=now)
            if self.on_view is not None:
                self.on_view(self, gv, now)
            nodes = gv.nodes
            occ = [max(0.0, nodes[nid].occupied.value) if nid in nodes else 0.0 for nid in self.ids]
            loads = [max(0.0, nodes[nid].load.value) if nid in nodes else None for nid in self.ids]
            present = [nid in nodes for nid in self.ids]
            fed = gv.federation_load.value if gv.capacity > 0 else None
            sd = gv.federation_load.sd
        total = sum(occ)
        self.rounds += 1
        self.push(now + int(cfg.view_delay * _NS), EV_VIEW, -1, (fed, sd, occ, total, loads, present))
        self.push(now + self.window_ns, EV_ROUND, -1, None)

    def _spent(self, now: int, worst: float) -> None:
        self.epsilon_max = max(self.epsilon_max, worst)
        self.budget.append((now / _NS, worst))

    def release(self, i: int, w: int, now: int) -> ReleasedSummary | None:
        """Node ``i``'s release of window ``w`` through the privacy pipeline (its accountant and
        ledger, the simulation's noise), or None when the accountant refuses it. Asking again for
        the same window gives the same release at no cost, as a deployed node does."""
        last = self.last_release[i]
        if last is not None and last.window == w:
            return last
        cfg, pcfg, acc = self.cfg, self.pcfg, self.accountant
        assert self.windows is not None
        m = cfg.m
        lo, hi = (w - m + 1) * self.window_ns, (w + 1) * self.window_ns
        closed = self.windows[i].last_closed(now)
        b = closed.bounded if closed is not None else None
        counts = b.counts if b is not None and b.window == w else {}
        hist = b.completion_counts if b is not None and b.window == w else (0,) * len(pcfg.bins)
        ledger = self.ledgers[i]
        start_us, end_us = w * self.window_ns // 1000, (w + 1) * self.window_ns // 1000
        entry = LedgerEntry(w, acc.rho, now, acc.mechanism.kind, acc.mechanism.scale, start_us, end_us)
        decision = acc.decide(ledger, w, entry.horizon_start_us(m))
        if not decision.allowed:  # (the calibrated default never gets here)
            return None
        inp = WindowInput(
            w, cfg.period_s, counts, hist, occupancy(self.cores[i].tasks.values(), lo, hi, now), self.slots[i]
        )
        summary = build_release(self.ids[i], inp, pcfg, acc, decision, noise=self.noise[i])
        ledger.append(entry)
        del ledger[: max(0, len(ledger) - m)]
        self.releases += 1
        self.round_worst = max(self.round_worst, decision.epsilon)
        self.node_releases[i] += 1
        self.node_worst[i] = max(self.node_worst[i], decision.epsilon)
        self.last_release[i] = summary
        return summary

    def apply_view(self, i: int, view: GlobalView, now: int) -> float:
        """A federation view reaches node ``i`` (the ``ApplyFederation`` of a deployed node: dated
        by the node's clock on arrival); returns the threshold it gives."""
        self.admissions[i].update(dataclasses.replace(view.admission_view(self.ids[i]), at_ns=now))
        if self.view_round != view.round:  # every node gets the same view in a round
            self.view_round = view.round
            nodes = view.nodes
            self._set_view_loads([max(0.0, nodes[nid].load.value) if nid in nodes else None for nid in self.ids])
        return self.admissions[i].threshold(self.cores[i].load(), now)

    def _herding_close(self) -> None:
        """One period's hand-offs are all in: the largest share that went to one node."""
        moved = sum(self.round_rx.values())
        if moved >= 10:  # (a few hand-offs always look herded)
            self.herding.append(max(self.round_rx.values()) / moved)
        self.round_rx = {}

    def _view(
        self, now: int, payload: tuple[float | None, float, list[float], float, list[float | None], list[bool]]
    ) -> None:
        """The round's view reaches every node that is up, dated by the node's clock on arrival
        (as :meth:`node.runtime.node.LocalNode.apply_view` dates it); a node the view has no
        summary of gets no share (its local threshold), as ``GlobalView.admission_view`` says."""
        fed, sd, occ, total, loads, present = payload
        down = self.down
        for i, adm in enumerate(self.admissions):
            if down[i]:
                continue
            share = (min(1.0, occ[i] / total) if total > 0 else 0.0) if present[i] else None
            adm.update(FederationView(at_ns=now, load_share=share, federation_load=fed, federation_load_sd=sd))
        self._set_view_loads(loads)

    # ------------------------------------------------------------------ hand-off

    def arrived(self, i: int, now: int) -> int:
        """A task arrived at node ``i`` and found every slot busy: look at the load at the next
        check boundary (one check at a time; none while an offer is out)."""
        if self.check_due[i] or self.offering[i]:
            return 0
        self.check_due[i] = True
        c, ph = self.check_ns, self.phase_ns[i]
        at = max(((now - ph) // c + 1) * c + ph, self.not_before[i])
        self.push(at, EV_CHECK, i, None)
        return 1

    def _fresh(self, i: int, now: int) -> None:
        """The oracle: node ``i``'s admission reads the federation's exact load of the moment
        (summed again at most every ``check_s``)."""
        if now - self.oracle_at >= self.check_ns or self.oracle_view is None:
            slots, free, queued = self.slots, self.free, self.queued
            if self.failures:  # the nodes that are up
                up = [j for j in range(self.n) if not self.down[j]]
                slots, free, queued = [slots[j] for j in up], [free[j] for j in up], [queued[j] for j in up]
            demand = sum(slots) - sum(free) + sum(queued)
            self.oracle_at = now
            self.oracle_view = FederationView(at_ns=now, federation_load=demand / sum(slots), federation_load_sd=0.0)
        self.admissions[i].update(self.oracle_view)

    def _ratio(self, p: int) -> float:
        if self.down[p]:
            return math.inf
        s = self.slots[p]
        return (s - self.free[p] + self.queued[p]) / s

    def _choose(self, i: int, now: int) -> int | None:
        """A peer for node ``i``'s next offer, or None (every peer full for this pass, or in
        its back-off after an offer it did not answer)."""
        n, full, rng = self.n, self.full[i], self.rng[i]
        unreachable = self.unreachable[i]
        if unreachable:
            full = full | {p for p, (until, _) in unreachable.items() if until > now}
        left = n - 1 - len(full)
        if left <= 0:
            return None
        if left <= 2:
            cands = [p for p in range(n) if p != i and p not in full]
        else:
            cands = []
            while len(cands) < 2:
                p = rng.randrange(n)
                if p != i and p not in full and p not in cands:
                    cands.append(p)
        if len(cands) == 1 or self.cfg.policy == "random":
            return cands[0]
        a, b = cands[0], cands[1]
        if self.cfg.policy == "oracle":
            return a if self._ratio(a) <= self._ratio(b) else b
        heard, view = self.heard[i], self.view_loads
        if view is None and not heard:
            return a  # nothing known: a random peer
        # what a peer said in its last reply, else the view's load of it
        la = heard.get(a, view[a] if view is not None else None)
        lb = heard.get(b, view[b] if view is not None else None)
        if la is None or lb is None:  # known from neither: the mean of the known (as choose_peer)
            unknown = self.view_mean
            if unknown is None:
                unknown = sum(heard.values()) / len(heard) if heard else 0.0
            la = unknown if la is None else la
            lb = unknown if lb is None else lb
        return a if la <= lb else b

    def _set_view_loads(self, loads: list[float | None]) -> None:
        self.view_loads = loads
        known = [v for v in loads if v is not None]
        self.view_mean = sum(known) / len(known) if known else None

    def _attempt(self, i: int, now: int) -> int:
        """One offer of node ``i``'s pass, if admission finds it too loaded; events pushed."""
        cfg = self.cfg
        core = self.cores[i]
        if self.tries[i] >= cfg.offers_per_pass:
            return self._pass_over(i, now)
        if self.oracle:
            self._fresh(i, now)
        k = min(self.admissions[i].offload_count(core.load(), now), cfg.offer_batch)
        if k <= 0:
            return self._pass_over(i, now)
        peer = self._choose(i, now)
        if peer is None:
            return self._pass_over(i, now)
        ids = core.handoff_candidates(k)
        if not ids:
            return self._pass_over(i, now)
        self.tries[i] += 1
        self.offering[i] = True
        self.offers += 1
        self.offered += len(ids)
        self.push(now + self.delay_ns, EV_OFFER, peer, (next(self.offer_seq), i, ids, self.incarnation[i]))
        return 1

    def _pass_over(self, i: int, now: int) -> int:
        """Node ``i``'s pass ended: a pass that offered and moved nothing makes the next wait."""
        if self.tries[i] and not self.moved[i]:
            self.fruitless[i] += 1
            self.not_before[i] = now + self.check_ns * (1 << min(self.fruitless[i], 3))
        else:  # moved something, or made no offer: as the runtime's loop, start over
            self.fruitless[i] = 0
            self.not_before[i] = 0
        self.tries[i] = self.moved[i] = 0
        return 0

    def _on_offer(self, p: int, now: int, offer: tuple[int, int, list[str], int]) -> int:
        oid, origin, ids, inc = offer
        reserved = self.reserved[p]
        for o in [o for o, (_, exp) in reserved.items() if exp <= now]:
            del reserved[o]
        core = self.cores[p]
        load = core.load()
        if self.oracle:
            self._fresh(p, now)
        k = self.admissions[p].accept_count(load, len(ids), now, reserved=sum(r for r, _ in reserved.values()))
        accepted = ids[:k]
        if accepted:
            reserved[oid] = (k, now + self.reservation_ns)
        self.push(now + self.delay_ns, EV_REPLY, origin, (oid, p, accepted, len(ids), load.ratio, inc))
        return 1

    def _on_reply(self, i: int, now: int, reply: tuple[int, int, list[str], int, float | None, int]) -> int:
        oid, p, accepted, offered, ratio, inc = reply
        if inc != self.incarnation[i]:  # meant for this node before it restarted: nobody waits for it
            return 0
        if ratio is not None:
            self.heard[i][p] = ratio
            if self.unreachable[i]:
                self.unreachable[i].pop(p, None)
        else:  # the offer timed out (the peer is down): left out of the choice for a while, as
            # HandoffAgent._peer_failed does (retry_s 0.5 s, doubling up to retry_max_s 15 s)
            prev = self.unreachable[i].get(p)
            wait_s = 0.5 if prev is None else min(prev[1] * 2, 15.0)
            self.unreachable[i][p] = (now + int(wait_s * _NS), wait_s)
        self.accepted += len(accepted)
        core = self.cores[i]
        tasks = core.tasks
        chosen = [
            tid
            for tid in accepted
            if (t := tasks.get(tid)) is not None and t.status is _QUEUED and t.queued_ns is not None
        ]  # claimed here while the offer was out: those stay
        if len(accepted) < offered or not chosen:
            self.full[i].add(p)  # it took what its threshold leaves room for (or nothing moved)
        if not chosen:
            self.offering[i] = False
            return self._attempt(i, now)
        core.begin_handoff(chosen, self.ids[p], now)
        self.queued[i] -= len(chosen)
        self.bounces += sum(1 for tid in chosen if tasks[tid].hops > 0)
        records = tuple(record_of(tasks[tid]) for tid in chosen)
        if self.failures:
            for tid in chosen:
                self.handoff_oid[tid] = oid
        self.push(now + self.delay_ns, EV_TRANSFER, p, (oid, i, records, inc))
        return 1

    def _on_transfer(self, p: int, now: int, transfer: tuple[int, int, tuple[HandoffRecord, ...], int]) -> int:
        oid, origin, records, inc = transfer
        reserved = self.reserved[p]
        reservation = reserved.pop(oid, None)
        core = self.cores[p]
        recs = list(records)
        known = self._known(p) if self.failures else None  # (a transfer after a restart may repeat one)
        no_room: dict[str, str] = {}
        if reservation is None or reservation[1] <= now:  # expired (or lost in a restart): room now?
            fresh = [r for r in recs if r.task_id not in core.tasks and (known is None or r.task_id not in known)]
            held = sum(k for k, exp in reserved.values() if exp > now)
            room = self.admissions[p].accept_count(core.load(), len(fresh), now, reserved=held)
            no_room = {r.task_id: "no room (the offer's reservation expired)" for r in fresh[room:]}
            recs = [r for r in recs if r.task_id not in no_room]
        res = core.adopt(recs, self.ids[origin], now, known=known)
        if no_room:
            res.refused.update(no_room)
        self.queued[p] += len(res.adopted)
        if self.warm_ns < now <= self.end_ns and res.adopted:
            bucket = now // self.window_ns
            if bucket != self.rx_bucket:
                self._herding_close()
                self.rx_bucket = bucket
            self.round_rx[p] = self.round_rx.get(p, 0) + len(res.adopted)
        self.push(now + self.delay_ns, EV_ACK, origin, (oid, p, res.owned, dict(res.refused), inc))
        return 1 + (self.claim(p, now) if self.free[p] and self.queued[p] else 0)

    def _settle(
        self, i: int, p: int, owned: list[str], refused: list[str], *, now: int, oid: int | None, counted: bool = True
    ) -> int:
        """Node ``i``'s hand-off to ``p`` answered: ``owned`` marked handed off (archived until
        their results come back), ``refused`` back in line; events pushed. With failures, only
        the tasks whose hand-off under way is offer ``oid``'s (None: any, on a restart): an
        answer can come after a restart settled them, or after they went out again.
        ``counted``: refusals by the peer (not tasks taken back after a restart or a timeout)."""
        core = self.cores[i]
        peer = self.ids[p]
        if self.failures:
            tasks, current = core.tasks, self.handoff_oid

            def ours(tid: str) -> bool:
                x = tasks.get(tid)
                ok = x is not None and x.status is _HANDING and x.handoff_peer == peer
                return ok and (oid is None or current.get(tid) == oid)

            owned = [t for t in owned if ours(t)]
            refused = [t for t in refused if ours(t)]
            for tid in owned + refused:
                current.pop(tid, None)
        pushed = 0
        if owned:
            core.finish_handoff(owned, peer, now)
            finished, archive = core.out.finished, self.archive[i]
            for tid in owned:
                archive[tid] = finished[tid]
            self.handed_off += len(owned)
            self.moved[i] += len(owned)
        if refused:
            core.abort_handoff(refused, now, peer=peer)
            self.queued[i] += len(refused)
            if counted:
                self.refused += len(refused)
            if self.free[i] and self.queued[i]:
                pushed += self.claim(i, now)
        return pushed

    def _on_ack(self, i: int, now: int, ack: tuple[int, int, list[str], dict[str, str], int]) -> int:
        oid, p, owned, refused, inc = ack
        pushed = self._settle(i, p, owned, list(refused), now=now, oid=oid)
        if inc != self.incarnation[i]:  # (the pass it answers died with the node)
            return pushed
        self.offering[i] = False
        return pushed + self._attempt(i, now)

    def send_reports(self, now: int) -> int:
        """After a commit (every tick): each node's finished adopted tasks reported to their
        origins (one message per origin); events pushed."""
        pushed = 0
        for p, core in enumerate(self.cores):
            if not core._reports or self.down[p]:
                continue
            flying = self.reporting[p]
            for origin, outcomes in core.pending_reports().items():
                fresh = [o for o in outcomes if o.task_id not in flying]  # (sent, not acknowledged yet: not again)
                if fresh:
                    flying.update(o.task_id for o in fresh)
                    self.push(now + self.delay_ns, EV_REPORT, self.index[origin], (p, fresh))
                    pushed += 1
        return pushed

    def _record(self, i: int, p: int, o: Outcome, now: int) -> None:
        """Node ``i`` takes ``p``'s result of a task it handed to ``p``."""
        core, archive, peer = self.cores[i], self.archive[i], self.ids[p]
        if not self.failures:
            core.record_result(o, peer, archive.pop(o.task_id, None), now)
            self.reported += 1
            return
        # a restarted peer reports again what it reported before: the final record is kept
        prev = archive.get(o.task_id)
        t = core.tasks.get(o.task_id)
        if prev is None and t is not None and t.status is _HANDING:
            # a result proves the peer owns it (the answer to its transfer was lost, or is not
            # in yet): record_result finishes the hand-off
            self.handed_off += 1
            self.handoff_oid.pop(o.task_id, None)
        archive[o.task_id] = core.record_result(o, peer, prev, now)
        self.reported += prev is None or prev.status is _HANDED  # (a repeat is not counted)

    def _on_report(self, i: int, now: int, report: tuple[int, list[Outcome]]) -> int:
        p, outcomes = report
        for o in outcomes:
            self._record(i, p, o, now)
        self.push(now + self.delay_ns, EV_REPORT_ACK, p, [o.task_id for o in outcomes])
        return 1

    def settle_reports(self, now: int) -> None:
        """At the end of a run: every report still pending delivered at once (nothing is left
        unreported: the run's check that every handed-off task got its result back)."""
        while any(c._reports for c in self.cores):
            for p, core in enumerate(self.cores):
                for origin, outcomes in core.pending_reports().items():
                    i = self.index[origin]
                    for o in outcomes:
                        self._record(i, p, o, now)
                    core.report_done([o.task_id for o in outcomes])
                self.reporting[p].clear()

    # ------------------------------------------------------------------ node failures

    def crash(self, i: int) -> None:
        """Node ``i`` is gone: what it kept in memory (the pass, reservations, what it heard,
        the reports it had sent) with it; its store (the core's tasks, the archive) stays."""
        self.incarnation[i] += 1
        self.check_due[i] = self.offering[i] = False
        self.full[i].clear()
        self.tries[i] = self.moved[i] = self.fruitless[i] = self.not_before[i] = 0
        self.reserved[i].clear()
        self.heard[i].clear()
        self.unreachable[i].clear()
        self.reporting[i].clear()
        self.admissions[i] = Admission(self.adm_cfg)
        self.last_release[i] = None

    def recover(self, i: int, now: int) -> int:
        """Node ``i`` back (its core rebuilt): the hand-offs it was making settle as the
        runtime's do after a restart, by asking each peer (the core's ``task_status``): the
        tasks the peer owns are handed off, the rest come back in line, and the peer declares
        them unknown, so that a transfer still on its way is refused when it lands. (The
        runtime asks a peer that is down again later; here its store answers at once.)"""
        core = self.cores[i]
        by_peer: dict[int, list[str]] = {}
        for t in core.tasks.values():
            if t.status is _HANDING and t.handoff_peer is not None:
                by_peer.setdefault(self.index[t.handoff_peer], []).append(t.id)
        pushed = 0
        for p, tids in sorted(by_peer.items()):
            pushed += self._ask(i, p, tids, None, now=now, delay_s=_RETRY_S)
        return pushed

    def _ask(self, i: int, p: int, tids: list[str], oid: int | None, *, now: int, delay_s: float) -> int:
        """Node ``i`` asks ``p`` which of ``tids`` (handed to it, by offer ``oid``; None: any) it
        owns, and settles them; a peer that is down is asked again ``delay_s`` later (doubling up
        to retry_max_s). Events pushed."""
        if self.down[p]:
            self.push(now + int(delay_s * _NS), EV_SETTLE, i, (oid, p, tids, min(delay_s * 2, _RETRY_MAX_S)))
            return 1
        peer = self.cores[p]
        tasks, name = self.cores[i].tasks, self.ids[p]
        tids = [t for t in tids if (x := tasks.get(t)) is not None and x.status is _HANDING and x.handoff_peer == name]
        if not tids:
            return 0
        status = peer.task_status(tids, self.ids[i], now, known=self._known(p))  # (the rest: unknown there)
        owned = [t for t in tids if status[t] is RemoteStatus.OWNED]
        back = [t for t in tids if status[t] is not RemoteStatus.OWNED]
        return self._settle(i, p, owned, back, now=now, oid=oid, counted=False)

    def _known(self, p: int) -> ChainMap[str, Task]:
        """What node ``p`` finished or handed on (its archive, as the runtime reads it): a view,
        not a copy (with failures the archive keeps every final record)."""
        return ChainMap(self.cores[p]._reports, self.archive[p])

    def _on_settle(self, i: int, now: int, payload: tuple[int | None, int, list[str], float]) -> int:
        oid, p, tids, delay_s = payload
        return self._ask(i, p, tids, oid, now=now, delay_s=delay_s)

    def _lost(self, kind: int, i: int, now: int, payload: Any) -> int:
        """A message to node ``i``, which is down: lost. The sender of a request learns it after
        ``rpc_timeout_s`` (as no answer); events pushed."""
        if kind != EV_CHECK:
            self.lost_messages += 1
        if kind == EV_CHECK:
            self.check_due[i] = False
        elif kind == EV_OFFER:
            oid, origin, ids, inc = payload
            self.push(now + self.timeout_ns, EV_REPLY, origin, (oid, i, [], len(ids), None, inc))
            return 1
        elif kind == EV_TRANSFER:
            # no answer: the origin's offer ends after the timeout, its tasks stay handing off
            # (it cannot know whether the peer took them) until it can ask the peer, as the
            # runtime's settle loop does: every retry_s, doubling up to retry_max_s
            oid, origin, records, inc = payload
            ids = [r.task_id for r in records]
            at = now + self.timeout_ns
            self.push(at, EV_ACK, origin, (oid, i, [], {}, inc))
            self.push(at + int(_RETRY_S * _NS), EV_SETTLE, origin, (oid, i, ids, _RETRY_S))
            return 2
        elif kind == EV_REPORT:  # the reporting peer sends it again after its next commit
            p, outcomes = payload
            self.reporting[p].difference_update(o.task_id for o in outcomes)
        # replies, answers, report acknowledgements and its own settle retries to a node that
        # is down: lost (its reservations expire, its restart settles its hand-offs, its peers
        # report again)
        return 0

    # ------------------------------------------------------------------ dispatch

    def handle(self, kind: int, i: int, now: int, payload: Any) -> int:
        """Run one event of ``kind`` (>= 4) at node ``i``; the live events it pushed."""
        if i >= 0 and self.down[i] and kind in LIVE_KINDS:
            return self._lost(kind, i, now, payload)
        if kind == EV_CHECK:
            self.check_due[i] = False
            if self.offering[i]:
                return 0
            self.full[i].clear()
            self.tries[i] = self.moved[i] = 0
            return self._attempt(i, now)
        if kind == EV_OFFER:
            return self._on_offer(i, now, payload)
        if kind == EV_REPLY:
            return self._on_reply(i, now, payload)
        if kind == EV_TRANSFER:
            return self._on_transfer(i, now, payload)
        if kind == EV_ACK:
            return self._on_ack(i, now, payload)
        if kind == EV_REPORT:
            return self._on_report(i, now, payload)
        if kind == EV_SETTLE:
            return self._on_settle(i, now, payload)
        if kind == EV_REPORT_ACK:
            self.cores[i].report_done(payload)
            self.reporting[i].difference_update(payload)
            return 0
        if kind == EV_ROUND:
            self._round(now)
            return 0
        if kind == EV_VIEW:
            self._view(now, payload)
            return 0
        raise ValueError(f"no event kind {kind}")

    def metrics(self, tasks: int) -> dict[str, Any]:
        self._herding_close()
        herd = self.herding
        return {
            "policy": self.cfg.policy,
            "offers": self.offers,
            "offered": self.offered,
            "accepted": self.accepted,
            "handed_off": self.handed_off,
            "handoff_rate": self.handed_off / tasks if tasks else 0.0,
            "refused_at_transfer": self.refused,
            "reject_rate": 1.0 - self.accepted / self.offered if self.offered else 0.0,
            "bounces": self.bounces,
            "bounce_rate": self.bounces / self.handed_off if self.handed_off else 0.0,
            "herding": {"mean": sum(herd) / len(herd), "max": max(herd), "rounds": len(herd)} if herd else None,
            "reported": self.reported,
            "lost_messages": self.lost_messages,
            "rounds": self.rounds,
            "privacy": {
                "noisy": self.noisy,
                "epsilon": self.cfg.epsilon,
                "delta": self.cfg.delta,
                "releases": self.releases,
                "epsilon_spent_max": self.epsilon_max,
                "scale": self.accountant.mechanism.scale if self.noisy else None,
                "budget": [[round(t, 3), e] for t, e in self.budget],
            },
        }
