"""The node's hand-off agent: it runs the protocol of :mod:`node.handoff` over a transport,
using the core's hand-off commands, and acts only on durable state.

Origin side: :meth:`HandoffAgent.offload` (offer, record the intent durably, transfer, record
the answer durably), started by a timer whenever admission says the node is over its threshold
plus margin, or called directly. Settling: hand-offs left in flight by a crash (or by a peer
that did not answer) are settled by asking the peer, and finished adopted tasks are reported
to the node they came from; both are retried with backoff until they succeed.

Peer side: the ``on_*`` methods answer a peer's calls; each answer goes out only once what it
says is durable here.

Named steps (for fault tests, ``step_hook(node_id, step)`` runs at each): ``intent_recorded``
(origin, handing_off durable, nothing sent), ``transfer_received`` (peer, before adopting),
``peer_acked`` (peer, adopted durably, answer not sent), ``ack_received`` (origin, answer in
hand, not recorded), ``handed_off_recorded`` (origin), ``result_sent`` (owner, the origin
acknowledged the result, not yet recorded here) and ``result_recorded`` (origin, archived
durably, answer not sent).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from node.core import Core
from node.core.transfer import RemoteStatus, record_of
from node.errors import (
    FedcoordError,
    HandoffProtocolError,
    NodeClosedError,
    PeerUnavailableError,
    StoreUnavailableError,
    ValidationError,
)
from node.handoff import (
    HandoffTransport,
    Offer,
    OfferItem,
    OfferReply,
    Report,
    ReportReply,
    StatusQuery,
    StatusReply,
    Transfer,
    TransferReply,
    choose_peer,
)
from node.model import Task, TaskStatus, check_name

if TYPE_CHECKING:
    from node.runtime.node import LocalNode

__all__ = ["HandoffAgent", "HandoffConfig", "HandoffResult", "StepHook"]

log = logging.getLogger("fedcoord.handoff")
StepHook = Callable[[str, str], Awaitable[None]]
_NS = 1_000_000_000
RECENT_KEPT = 4096  # settled hand-offs remembered (peer, tasks), for the dashboard


@dataclass(frozen=True, slots=True)
class HandoffConfig:
    """Settings of hand-off (the transport is given to ``LocalNode.open``)."""

    peers: tuple[str, ...] = ()  # node ids this node may hand work to
    auto: bool = True  # offload on its own whenever admission says so (else only offload() calls)
    check_s: float = 0.2  # how often the node looks at its load to decide (an offer costs ~1 ms)
    batch: int = 1000  # tasks per offer and transfer at most
    concurrency: int = 2  # offloads in flight at once (one writes while another waits on Redis)
    reservation_s: float = 10.0  # how long an accepted offer holds room on this node
    retry_s: float = 0.5  # first retry of settling / reporting; doubles up to retry_max_s
    retry_max_s: float = 15.0

    def __post_init__(self) -> None:
        if isinstance(self.peers, str) or not isinstance(self.peers, tuple):
            raise ValidationError("handoff.peers", "must be a tuple of node ids")
        for p in self.peers:
            check_name("handoff.peers", p)
        if type(self.batch) is not int or not 1 <= self.batch <= 10_000:
            raise ValidationError("handoff.batch", f"{self.batch!r}", limit="1..10000")
        if type(self.concurrency) is not int or not 1 <= self.concurrency <= 16:
            raise ValidationError("handoff.concurrency", f"{self.concurrency!r}", limit="1..16")
        for name in ("check_s", "reservation_s", "retry_s", "retry_max_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
                raise ValidationError(f"handoff.{name}", f"{v!r}", limit="> 0 seconds")


@dataclass(slots=True)
class HandoffResult:
    """What one offload did."""

    peer: str | None = None
    offered: int = 0
    accepted: int = 0
    handed_off: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # back in line here
    unsettled: list[str] = field(default_factory=list)  # no answer: settled later by asking
    reason: str = ""


class HandoffAgent:
    def __init__(
        self,
        node: LocalNode,
        transport: HandoffTransport,
        cfg: HandoffConfig,
        *,
        step_hook: StepHook | None = None,
    ):
        self.node = node
        self.node_id = node.node_id
        self.transport = transport
        self.cfg = cfg
        self.step_hook = step_hook
        self._rng = random.Random(int.from_bytes(os.urandom(8), "big"))
        # offer id -> (task ids accepted, expires at ns): room held for an offer this process accepted
        self._reserved: dict[str, tuple[frozenset[str], int]] = {}
        self._offered: set[str] = set()  # tasks in an offer still out (a concurrent offload skips them)
        self._down: dict[str, tuple[int, float]] = {}  # peer -> (left out of the choice until ns, back-off s)
        self._busy: set[str] = set()  # tasks an offload of this process is moving right now
        self._slots = asyncio.Semaphore(cfg.concurrency)  # offloads in flight at once
        # One offload at a time chooses, offers and records its intent; the transfers and finishes
        # of others go on meanwhile. This keeps concurrent offloads a step apart: in lockstep,
        # group commit would merge their steps into the same writes, and every write would
        # leave the event loop idle.
        self._begin_lock = asyncio.Lock()
        self._wake = asyncio.Event()  # something to settle or report
        self.stats: dict[str, int] = {"offers": 0, "handed_off": 0, "adopted": 0, "refused": 0, "reported": 0}
        # (wall ns, peer, tasks) per settled hand-off, this process: who got what lately
        self.recent: deque[tuple[int, str, int]] = deque(maxlen=RECENT_KEPT)

    # ------------------------------------------------------------------ plumbing

    @property
    def alive(self) -> bool:
        return self.node._serving()

    def _core(self) -> Core:
        return self.node._check()

    async def _durable(self) -> None:
        await self.node._committer.commit()

    async def _step(self, name: str) -> None:
        if self.step_hook is not None:
            await self.step_hook(self.node_id, name)

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self.transport.bind(self.node_id, self)
        loops = self.node._loops
        loops.spawn("handoff-settle", self._settle_loop)
        if self.cfg.auto and self.cfg.peers:
            loops.spawn("handoff-offload", self._offload_loop)
        if self._core().handoffs_in_flight() or self._core().pending_reports():
            self.wake()

    def stop(self) -> None:
        self.transport.unbind(self.node_id, self)

    def after_commit(self, reports: bool) -> None:
        if reports:
            self.wake()

    # ------------------------------------------------------------------ origin

    async def offload(
        self, peer: str | None = None, max_tasks: int | None = None, *, full: set[str] | None = None
    ) -> HandoffResult:
        """Hand up to ``max_tasks`` ready tasks (default: what admission says is too much, at
        most one batch) to ``peer`` (default: chosen by load, see :meth:`peer_loads`). ``full``:
        peers not to choose, to which a peer that took less than it was offered is added (the
        offload loop keeps one such set per pass)."""
        async with self._slots:
            return await self._offload(peer, max_tasks, full)

    async def _offload(self, peer: str | None, max_tasks: int | None, full: set[str] | None) -> HandoffResult:
        res = HandoffResult()
        chosen: list[str] = []
        try:
            async with self._begin_lock:
                offer_id = await self._choose_offer_begin(peer, max_tasks, res, chosen, full)
            if offer_id is not None and res.peer is not None:
                await self._transfer_and_settle(res.peer, offer_id, chosen, res)
            return res
        finally:
            core = self.node._core
            if any((t := core.tasks.get(tid)) is not None and t.status is TaskStatus.HANDING_OFF for tid in chosen):
                self.wake()  # cut short (store outage, a bad answer...): settled by asking the peer

    def peer_loads(self, now_ns: int) -> Mapping[str, float]:
        """The peers' loads to choose from: what each peer itself said in its last offer reply
        (exact, and fresher than any round) where the transport has it, else the federation's
        view of it while the view still counts (a stale view decays to nothing, as the
        threshold does: it never freezes the choice). The view's per-node loads carry one
        node's privacy noise; they are for peers this node has not heard from."""
        admission = self.node.admission
        view = admission.view
        heard = self.transport.peer_loads()
        if view is None or not view.peer_loads or admission.view_weight(now_ns) <= 0:
            return heard
        if not heard:
            return view.peer_loads
        return {**view.peer_loads, **heard}

    def _reachable(self, now_ns: int) -> list[str]:
        """Peers to choose among: those not in their back-off after failing to answer an offer."""
        down = self._down
        return [p for p in self.cfg.peers if p not in down or down[p][0] <= now_ns]

    def _peer_failed(self, peer: str, now_ns: int) -> None:
        """``peer`` did not answer an offer: leave it out of the choice for a while (``retry_s``,
        doubling up to ``retry_max_s`` while it keeps failing)."""
        prev = self._down.get(peer)
        wait_s = self.cfg.retry_s if prev is None else min(prev[1] * 2, self.cfg.retry_max_s)
        self._down[peer] = (now_ns + int(wait_s * _NS), wait_s)

    async def _choose_offer_begin(
        self, peer: str | None, max_tasks: int | None, res: HandoffResult, chosen: list[str], full: set[str] | None
    ) -> str | None:
        """Choose tasks, offer them, record the hand-off of what the peer accepted durably; the
        offer's id, or None when there is nothing to transfer (``res.reason`` says why)."""
        node = self.node
        core = self._core()
        now = node._now()
        # by default: what admission finds too much, less what offers still out already take
        n = node.admission.offload_count(core.load(), now) - len(self._offered) if max_tasks is None else max_tasks
        n = min(n, self.cfg.batch)
        if n <= 0:
            res.peer, res.reason = peer, "nothing to hand off"
            return None
        if peer is None:
            reachable = self._reachable(now)
            peer = choose_peer(reachable, self.peer_loads(now), self._rng, exclude=tuple(full or ()))
            if peer is None:
                if not self.cfg.peers:
                    res.reason = "no peer"
                elif reachable:
                    res.reason = "every peer is full"
                else:
                    res.reason = "no peer reachable (all in back-off)"
                return None
        res.peer = peer
        ids = core.handoff_candidates(n, exclude=self._offered)
        if not ids:
            res.reason = "no task may be handed off"
            return None
        self._offered.update(ids)
        try:
            return await self._offer_and_begin(peer, ids, res, chosen, full)
        finally:
            self._offered.difference_update(ids)

    async def _offer_and_begin(
        self, peer: str, ids: list[str], res: HandoffResult, chosen: list[str], full: set[str] | None
    ) -> str | None:
        node = self.node
        core = self._core()
        tasks = core.tasks
        new = tuple.__new__
        items = tuple(
            new(OfferItem, (tid, (sp := tasks[tid].spec).type, sp.priority, sp.difficulty, sp.required_capabilities))
            for tid in ids
        )
        offer = Offer(f"{self.node_id}:{time.time_ns():x}:{self._rng.getrandbits(32):08x}", self.node_id, items)
        res.offered = len(items)
        self.stats["offers"] += 1
        try:
            reply = await self.transport.offer(peer, offer)
        except PeerUnavailableError as e:
            self._peer_failed(peer, node._now())
            res.reason = str(e)
            return None
        self._down.pop(peer, None)
        if full is not None and len(reply.accepted) < len(ids):
            full.add(peer)  # it took what its threshold leaves room for: the others, for now
        offered = set(ids)
        stray = [tid for tid in reply.accepted if tid not in offered]
        if stray:
            raise HandoffProtocolError(f"peer {peer!r} accepted tasks it was never offered: {stray[:5]}")
        core = self._core()
        # claimed or cancelled while the offer was out: those stay
        chosen.extend(tid for tid in reply.accepted if (t := core.tasks.get(tid)) is not None and _ready(t))
        res.accepted = len(chosen)
        if not chosen:
            res.reason = reply.reason or "the peer accepted none"
            return None
        core.begin_handoff(chosen, peer, node._now())
        self._offered.difference_update(chosen)  # out of line now: no longer load, nor offerable
        self._busy.update(chosen)
        try:
            await self._durable()
        except BaseException:
            self._busy.difference_update(chosen)
            raise
        await self._step("intent_recorded")
        return offer.offer_id

    async def _transfer_and_settle(self, peer: str, offer_id: str, chosen: list[str], res: HandoffResult) -> None:
        """Send the tasks whose intent is durable; record the peer's answer durably."""
        try:
            core = self._core()
            records = tuple(record_of(core.tasks[tid]) for tid in chosen)
            try:
                answer = await self.transport.transfer(peer, Transfer(offer_id, self.node_id, records))
            except PeerUnavailableError as e:
                res.unsettled = list(chosen)
                res.reason = f"no answer to the transfer, settled later: {e}"
                self.wake()
                return
            await self._step("ack_received")
            await self._settle_answer(peer, chosen, answer.owned, answer.refused, res)
        finally:
            self._busy.difference_update(chosen)
        await self._step("handed_off_recorded")

    async def _settle_answer(
        self, peer: str, sent: list[str], owned: tuple[str, ...], refused: Mapping[str, str], res: HandoffResult
    ) -> None:
        """Record a peer's answer on tasks ``sent`` to it: owned ones are handed off, refused ones
        go back in line; the answer must be about those tasks only."""
        refused_map = dict(refused)
        answered = set(owned) | set(refused_map)
        if not answered <= set(sent):
            raise HandoffProtocolError(
                f"peer {peer!r} answered for tasks it was never sent: {sorted(answered - set(sent))[:5]}"
            )
        core = self._core()
        now = self.node._now()
        if owned:
            core.finish_handoff(list(owned), peer, now)
        back = [tid for tid in sent if tid in refused_map]
        if back:
            core.abort_handoff(back, now, peer=peer)
        missing = [tid for tid in sent if tid not in answered]  # the peer said nothing about them
        await self._durable()
        res.handed_off = list(owned)
        res.refused = {tid: refused_map[tid] for tid in back}
        res.unsettled = missing
        self.stats["handed_off"] += len(owned)
        self.stats["refused"] += len(back)
        if owned:
            self.recent.append((time.time_ns(), peer, len(owned)))
        if missing:
            self.wake()

    async def settle(self) -> bool:
        """Settle hand-offs in flight (ask each peer) and send pending reports, once. True when
        nothing is left to do; peers that do not answer are left for the next round."""
        done = True
        core = self._core()
        for peer, in_flight in core.handoffs_in_flight().items():
            ids = [tid for tid in in_flight if tid not in self._busy]
            if not ids:
                continue
            try:
                reply = await self.transport.task_status(peer, StatusQuery(self.node_id, tuple(ids)))
            except PeerUnavailableError as e:
                log.info("node %s: hand-offs to %s not settled yet: %s", self.node_id, peer, e)
                done = False
                continue
            owned = tuple(tid for tid in ids if reply.statuses.get(tid) is RemoteStatus.OWNED)
            unknown = {tid: "the peer never got it" for tid in ids if reply.statuses.get(tid) is RemoteStatus.UNKNOWN}
            core = self._core()
            live = [tid for tid in ids if (t := core.tasks.get(tid)) is not None and t.status is TaskStatus.HANDING_OFF]
            res = HandoffResult(peer=peer)
            await self._settle_answer(
                peer, live, tuple(t for t in owned if t in live), {k: v for k, v in unknown.items() if k in live}, res
            )
            log.info(
                "node %s: settled hand-offs to %s: %d handed off, %d back in line",
                self.node_id,
                peer,
                len(res.handed_off),
                len(res.refused),
            )
            if res.unsettled:
                done = False
        core = self._core()
        inflight = self.node._committer.inflight
        not_durable = set(core.out.reports) | (set(inflight.reports) if inflight is not None else set())
        for to_node, all_outcomes in core.pending_reports().items():
            outcomes = [o for o in all_outcomes if o.task_id not in not_durable]  # the rest: next round
            if not outcomes:
                done = False
                continue
            try:
                ack = await self.transport.report_result(to_node, Report(self.node_id, tuple(outcomes)))
            except PeerUnavailableError as e:
                log.info("node %s: results for %s not delivered yet: %s", self.node_id, to_node, e)
                done = False
                continue
            await self._step("result_sent")
            for tid, why in ack.rejected.items():
                log.error(
                    "node %s: %s refused the result of task %s (%s); dropping it", self.node_id, to_node, tid, why
                )
            self._core().report_done([*ack.recorded, *ack.rejected])
            self.stats["reported"] += len(ack.recorded)
            await self._durable()
        return done

    # ------------------------------------------------------------------ peer

    def _reserved_now(self, now_ns: int) -> int:
        for oid in [oid for oid, (_, exp) in self._reserved.items() if exp <= now_ns]:
            del self._reserved[oid]
        return sum(len(ids) for ids, _ in self._reserved.values())

    async def on_offer(self, offer: Offer) -> OfferReply:
        core = self._core()
        node = self.node
        now = node._now()
        workers = [w for w in core.workers.values() if w.healthy]
        strict = core.config.strict_matching
        verdicts: dict[tuple[tuple[str, ...], int], bool] = {}  # per requirement class, not per task

        def can_run(caps: tuple[str, ...], difficulty: int) -> bool:
            need = set(caps)
            return any(need <= w.capabilities and (not strict or difficulty <= w.skill) for w in workers)

        runnable = []
        for it in offer.items:
            key = (it.required_capabilities, it.difficulty)
            ok = verdicts.get(key)
            if ok is None:
                ok = verdicts[key] = can_run(*key)
            if ok:
                runnable.append(it.task_id)
        k = node.admission.accept_count(core.load(), len(runnable), now, reserved=self._reserved_now(now))
        accepted = tuple(runnable[:k])
        expires = now + int(self.cfg.reservation_s * _NS)
        if accepted:
            self._reserved[offer.offer_id] = (frozenset(accepted), expires)
        reason = ""
        if len(accepted) < len(offer.items):
            reason = (
                f"{len(offer.items) - len(runnable)} need a worker this node lacks"
                if len(runnable) < len(offer.items)
                else ""
            )
            if k < len(runnable):
                reason = (reason + "; " if reason else "") + "over the threshold after the rest"
        return OfferReply(offer.offer_id, accepted, expires, reason)

    async def on_transfer(self, transfer: Transfer) -> TransferReply:
        """Adopt what the origin sends, durably, then say which tasks this node owns.

        A repeated transfer must get the same answer, so ids not active here are looked up among
        finished tasks, except when the transfer is the first one of an offer this process
        accepted and still holds room for: the origin offers only tasks it owns and has not
        transferred (its own hand-off commands refuse anything else), so those ids cannot have
        been adopted here before; the in-memory checks (active tasks, ids declared unknown) still
        apply. A repeated transfer, or one after this node restarted, gets the full lookup."""
        node = self.node
        core = self._core()
        ids = [r.task_id for r in transfer.records if isinstance(r.task_id, str)]
        reservation = self._reserved.pop(transfer.offer_id, None)
        fresh_offer = reservation is not None and reservation[1] > node._now() and reservation[0].issuperset(ids)
        maybe_known = [
            r.task_id
            for r in transfer.records
            if r.task_id not in core.tasks and (not fresh_offer or getattr(r.spec, "id", None) is not None)
        ]  # (ids a user chose may collide with ids used here: always looked up)
        known = await node._finished(maybe_known) if maybe_known else {}
        await self._step("transfer_received")
        core = self._core()
        now = node._now()
        records = list(transfer.records)
        no_room: dict[str, str] = {}
        if reservation is None or reservation[1] <= now:  # expired or never made: is there room now?
            fresh = [r for r in records if r.task_id not in core.tasks and r.task_id not in known]
            room = node.admission.accept_count(core.load(), len(fresh), now, reserved=self._reserved_now(now))
            no_room = {r.task_id: "no room (the offer's reservation expired)" for r in fresh[room:]}
            records = [r for r in records if r.task_id not in no_room]
        res = core.adopt(records, transfer.from_node, now, known=known)
        await self._durable()  # also what an earlier transfer of the same tasks adopted
        self.stats["adopted"] += len(res.adopted)
        await self._step("peer_acked")
        return TransferReply(tuple(res.owned), {**res.refused, **no_room})

    async def on_status(self, query: StatusQuery) -> StatusReply:
        node = self.node
        core = self._core()
        maybe_known = [tid for tid in query.task_ids if tid not in core.tasks]
        known = await node._finished(maybe_known) if maybe_known else {}
        core = self._core()
        statuses = core.task_status(list(query.task_ids), query.from_node, node._now(), known=known)
        await self._durable()  # "unknown" is a promise to refuse: it must hold before it is told
        return StatusReply(statuses)

    async def on_report(self, report: Report) -> ReportReply:
        node = self.node
        ids = [o.task_id for o in report.outcomes]
        archived = await node._finished(ids)
        core = self._core()
        now = node._now()
        recorded: list[str] = []
        rejected: dict[str, str] = {}
        for o in report.outcomes:
            try:
                core.record_result(o, report.from_node, archived.get(o.task_id), now)
            except (HandoffProtocolError, ValidationError) as e:
                rejected[o.task_id] = str(e)
            else:
                recorded.append(o.task_id)
        await self._durable()
        await self._step("result_recorded")
        return ReportReply(tuple(recorded), rejected)

    # ------------------------------------------------------------------ loops

    async def _settle_loop(self) -> None:
        loops = self.node._loops
        delay = self.cfg.retry_s
        while not loops.stopping:
            if await loops.wait_for(self._wake, self.cfg.retry_max_s):
                return
            if not self._wake.is_set() and not self._anything_to_settle():
                continue  # the periodic look: nothing in flight, nothing to report
            self._wake.clear()
            if not self.node._serving():
                if await loops.pause(delay):
                    return
                self._wake.set()
                continue
            try:
                done = await self.settle()
            except (NodeClosedError, StoreUnavailableError):
                done = False
            except FedcoordError:
                log.exception("node %s: settling hand-offs failed", self.node_id)
                done = False
            if done:
                delay = self.cfg.retry_s
                continue
            if await loops.pause(delay):
                return
            delay = min(delay * 2, self.cfg.retry_max_s)
            self._wake.set()

    def _anything_to_settle(self) -> bool:
        node = self.node
        if not node._serving():
            return False
        core = node._core
        return core.load().handing_off > len(self._busy) or bool(core._reports)

    async def offload_pass(self) -> int:
        """Offload what admission finds too much, to as many peers as it takes; how many tasks
        were handed off.

        Offers go on (``concurrency`` in flight) while tasks go out, each to a peer not yet
        found full in this pass. A peer takes what its threshold leaves room for, often a few
        tasks, and the load it stated in its reply is from before it accepted: without leaving
        it out, the next offer went to the same, now full, peer and the pass ended with one
        peer's room per check (the demo offloaded ~13 tasks/s while its peers sat idle). The
        pass ends when a round of attempts neither hands anything off nor makes an offer: every
        peer full (or in back-off), or nothing left to hand off. A peer an attempt moved nothing
        to is full for the rest of the pass, whatever the reason (it took none, or refused at
        transfer what it had accepted), so each round that moves nothing rules out a peer: a
        pass reaches every peer however few attempts run at once, and ends."""
        full: set[str] = set()
        moved = 0
        while True:
            results = await asyncio.gather(*(self.offload(full=full) for _ in range(self.cfg.concurrency)))
            n = sum(len(r.handed_off) for r in results)
            full.update(r.peer for r in results if r.peer is not None and r.offered and not r.handed_off)
            if not n and not any(r.offered for r in results):
                return moved
            moved += n

    async def _offload_loop(self) -> None:
        """A pass every ``check_s``; after a pass that made offers and moved nothing (every peer
        full), the next waits twice as long, up to 8 x ``check_s``, until a pass moves work
        again: offers that peers keep refusing cost both sides and change nothing (the
        simulator found overloaded nodes making several offers per task handed off)."""
        loops = self.node._loops
        fruitless = 0
        while not await loops.pause(self.cfg.check_s * (1 << min(fruitless, 3))):
            if not self.node._serving():
                continue
            offers = self.stats["offers"]
            try:
                moved = await self.offload_pass()
            except (NodeClosedError, StoreUnavailableError):
                continue
            except Exception:  # a bug or a peer's bad answer: say so, and keep offloading later
                log.exception("node %s: offloading failed", self.node_id)
                continue
            fruitless = fruitless + 1 if self.stats["offers"] > offers and not moved else 0


def _ready(t: Task) -> bool:
    return t.status is TaskStatus.QUEUED and t.queued_ns is not None
