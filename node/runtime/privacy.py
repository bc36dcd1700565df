"""The node's releases: its bounded window counts through the privacy pipeline, paid for in the ledger.

One release per window, of the newest complete window, and only after the store's ledger has
recorded its cost (atomically, with the budget checked again there): nothing leaves the node
that the ledger does not hold. A release that would take a task over budget is refused and
logged once per window; the node keeps serving, and admission falls back to the local policy
as the federation view goes stale. The ledger lives in the store, so a restart neither resets
it nor allows a window to be released twice (the in-memory copy of the last release is gone
after a restart: that window is not released again).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterable

from federation.privacy.accountant import Accountant
from federation.privacy.config import PrivacyConfig
from federation.privacy.pipeline import CELLS_PER_TASK, WindowInput, build_release, cells_of
from federation.privacy.schema import ReleasedSummary
from federation.privacy.status import PrivacyStatus, ReleaseOutcome, ReleaseStatus
from node.analytics.window import Windows
from node.core import Core
from node.errors import LedgerRefusedError, StoreError
from node.model import Task, TaskStatus
from node.store.base import LedgerEntry, LedgerState, Store

__all__ = ["NodePrivacy", "occupancy"]

log = logging.getLogger("fedcoord.privacy")

_ASSIGNED, _IN_PROGRESS, _QUEUED = TaskStatus.ASSIGNED, TaskStatus.IN_PROGRESS, TaskStatus.QUEUED


def occupancy(tasks: Iterable[Task], lo_ns: int, hi_ns: int, now_ns: int) -> int:
    """Tasks created in ``[lo_ns, hi_ns)`` that are leased, or queued and claimable now: each
    task counts at most once (the load's numerator, bounded by the privacy horizon). One pass
    over the active tasks (~100 ns each)."""
    n = 0
    for t in tasks:
        if lo_ns <= t.created_ns < hi_ns:
            st = t.status
            if st is _ASSIGNED or st is _IN_PROGRESS or (st is _QUEUED and t.not_before_ns <= now_ns):
                n += 1
    return n


class NodePrivacy:
    """A node's privacy part: configuration, accountant, the ledger's in-memory copy, the last release."""

    def __init__(self, node_id: str, cfg: PrivacyConfig, store: Store, *, window_s: float):
        self.node_id = node_id
        self.cfg = cfg
        self.window_s = window_s
        self._store = store
        # Refuses a configuration whose single release is over budget (ValidationError naming it).
        self.accountant = Accountant(cfg, cells_of(cfg), CELLS_PER_TASK) if cfg.enabled else None
        self._ledger = LedgerState()
        self._last: ReleasedSummary | None = None
        self._refused_window: int | None = None
        self._snap: tuple[int, int, int] | None = None  # (window, occupied, slots) taken at its close
        self._lock = asyncio.Lock()
        acc = self.accountant
        if acc is not None and acc.releases_per_m < cfg.m:
            log.warning(
                "node %s: one release costs rho %.4g; the budget (rho %.4g) allows %d releases in any %d windows, "
                "so some windows will not be released",
                node_id,
                acc.rho,
                acc.rho_budget,
                acc.releases_per_m,
                cfg.m,
            )

    def snapshot(self, windows: Windows, core: Core, now_ns: int) -> None:
        """At the first tick after a window closed: its occupied slots, counted then (one pass
        over the active tasks, ~140 ns each) so that the release does not scan. Counting at any
        time after the window's end keeps the bound: a task that ended in the window is not
        leased or ready any more."""
        if self.accountant is None:
            return
        closed = now_ns // windows.window_ns - 1
        snap = self._snap
        if snap is not None and snap[0] >= closed:
            return
        lo, hi = windows.horizon_ns(closed)
        self._snap = (closed, occupancy(core.tasks.values(), lo, hi, now_ns), core.load().slots)

    async def load(self) -> None:
        """Read the ledger from the store (at start)."""
        self._ledger = await self._store.ledger_read()

    def _outcome(self, status: ReleaseStatus, reason: str, summary: ReleasedSummary | None = None) -> ReleaseOutcome:
        return ReleaseOutcome(status, summary, reason, self.status(), self.node_id)

    async def release(self, windows: Windows, core: Core, now_ns: int) -> ReleaseOutcome:
        acc = self.accountant
        if acc is None:
            return self._outcome(ReleaseStatus.DISABLED, "privacy.enabled is false: this node releases nothing")
        async with self._lock:
            closed = windows.last_closed(now_ns)
            if closed is None or closed.bounded is None:
                first_end_s = (windows.current(now_ns).start_ns + windows.window_ns - now_ns) / 1e9
                return self._outcome(
                    ReleaseStatus.NO_WINDOW, f"no complete window yet: the first ends in {max(0.0, first_end_s):.1f}s"
                )
            b = closed.bounded
            w = b.window
            last = self._last
            if last is not None and last.window == w:
                return self._outcome(ReleaseStatus.REPEATED, f"window {w} again (released before: no new cost)", last)
            led = self._ledger
            start_us, end_us = closed.start_ns // 1000, closed.end_ns // 1000
            if led.last_end_us is not None and start_us < led.last_end_us:
                next_s = (closed.end_ns + windows.window_ns - now_ns) / 1e9
                return self._outcome(
                    ReleaseStatus.NO_WINDOW,
                    f"window {w} was released already (before a restart); the next ends in {max(0.0, next_s):.1f}s",
                )
            cfg = self.cfg
            entry = LedgerEntry(w, acc.rho, now_ns, acc.mechanism.kind, acc.mechanism.scale, start_us, end_us)
            decision = acc.decide(led.entries, w, entry.horizon_start_us(cfg.m))
            if not decision.allowed:
                reason = (
                    f"privacy budget: release of window {w} refused: a task would spend epsilon "
                    f"{decision.epsilon:.4g} over {cfg.m} windows, budget {cfg.epsilon:g} at delta {cfg.delta:g}"
                )
                await self._refused(w, reason)
                return self._outcome(ReleaseStatus.BUDGET_EXHAUSTED, reason)
            snap = self._snap
            if snap is None or snap[0] != w:  # not taken yet (the ticker runs at most tick_max_s late)
                self.snapshot(windows, core, now_ns)
                snap = self._snap
            occupied, slots = (snap[1], snap[2]) if snap is not None and snap[0] == w else (0, core.load().slots)
            inp = WindowInput(w, self.window_s, b.counts, b.completion_counts, occupied, slots)
            summary = build_release(self.node_id, inp, cfg, acc, decision)
            try:
                total = await self._store.ledger_record(entry, m=cfg.m, rho_budget=acc.rho_budget)
            except LedgerRefusedError as e:
                # The store knows better than this copy (a write whose reply was lost landed after all)
                await self._reread()
                reason = f"privacy ledger refused the release of window {w}: {e.reason}"
                if e.kind == "released":
                    return self._outcome(ReleaseStatus.NO_WINDOW, reason)
                await self._refused(w, reason)
                return self._outcome(ReleaseStatus.BUDGET_EXHAUSTED, reason)
            except StoreError as e:
                log.warning(
                    "node %s: release of window %d not made: the ledger could not record it: %s", self.node_id, w, e
                )
                await self._reread()  # the script may have run with its reply lost
                return self._outcome(ReleaseStatus.UNAVAILABLE, f"the ledger could not record the release: {e}")
            if total != decision.rho_total:  # this copy was behind the store: say what was really spent
                log.warning(
                    "node %s: the ledger's copy was behind (rho %.6g here, %.6g in the store); read again",
                    self.node_id,
                    decision.rho_total,
                    total,
                )
                eps = acc.epsilon(total)
                cost = dataclasses.replace(summary.cost, epsilon=eps, epsilon_left=max(0.0, float(cfg.epsilon) - eps))
                summary = dataclasses.replace(summary, cost=cost)
                await self._reread()
            else:
                keep = (*(x for x in led.entries if x.end_us > entry.horizon_start_us(cfg.m)), entry)
                self._ledger = LedgerState(
                    keep, led.releases + 1, led.refused, led.rho_total + entry.rho, max(led.worst_rho, total), w, end_us
                )
            self._last = summary
            return self._outcome(ReleaseStatus.RELEASED, f"window {w} released", summary)

    async def _reread(self) -> None:
        """Read the ledger again from the store (after an error: the store is the authority)."""
        try:
            self._ledger = await self._store.ledger_read()
        except StoreError as e:
            log.warning("node %s: could not read the privacy ledger again: %s", self.node_id, e)

    def reset_windows(self) -> None:
        """The node's window counts were thrown away (a reload after the store came back): forget
        the occupancy taken for them too."""
        self._snap = None

    async def _refused(self, window: int, reason: str) -> None:
        if self._refused_window == window:
            return
        self._refused_window = window
        log.warning("node %s: %s; the node keeps serving on its local policy", self.node_id, reason)
        try:
            await self._store.ledger_refused()
        except StoreError as e:
            log.warning("node %s: could not count the refusal in the ledger: %s", self.node_id, e)
            return
        self._ledger = dataclasses.replace(self._ledger, refused=self._ledger.refused + 1)

    def status(self) -> PrivacyStatus:
        cfg = self.cfg
        led = self._ledger
        acc = self.accountant
        if acc is None:
            return PrivacyStatus(
                False, cfg.mechanism, 0.0, 0.0, cfg.m, float(cfg.delta), float(cfg.epsilon), 0.0, 0.0,
                led.releases, led.refused, led.last_window, 0.0, 0.0, 0.0, False,
            )  # fmt: skip
        # the next release: the window after the last one released (the earliest it can be)
        window_us = round(self.window_s * 1e6)
        start = led.last_end_us if led.last_end_us is not None else 0
        lo = start - (cfg.m - 1) * window_us
        nxt = (led.last_window + 1) if led.last_window is not None else 0
        current = acc.trailing(led.entries, lo)
        d = acc.decide(led.entries, nxt, lo)
        mech = acc.mechanism
        return PrivacyStatus(
            enabled=True,
            mechanism=mech.kind,
            scale=mech.scale,
            variance=mech.variance,
            m=cfg.m,
            delta=float(cfg.delta),
            epsilon_budget=float(cfg.epsilon),
            rho_budget=acc.rho_budget,
            rho_per_release=mech.rho,
            releases=led.releases,
            refused=led.refused,
            last_window=led.last_window,
            epsilon_current=acc.epsilon(current),
            epsilon_worst=acc.worst_epsilon(led),
            epsilon_left=d.epsilon_left,
            next_allowed=d.allowed,
        )
