"""Rounds of a simulated federation, written as the ServerApp writes a real one's
(``rounds.jsonl``, one :class:`~federation.server_app.RoundResult` a line): the federation
dashboard reads either. Times are the run's virtual time from ``start_ns`` (the wall clock
when the run began)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import IO

from federation.server_app import RoundResult
from federation.sim.flower import _privacy_status
from federation.sim.share import Sharing
from federation.view import GlobalView

__all__ = ["RoundsWriter"]


class RoundsWriter:
    def __init__(self, path: Path, *, start_ns: int | None = None):
        self.path = path
        self.start_ns = time.time_ns() if start_ns is None else start_ns
        self._f: IO[str] | None = path.open("w")
        self.written = 0

    def __call__(self, sh: Sharing, view: GlobalView, now: int) -> None:
        assert self._f is not None
        thresholds, policies, budget, spent, statuses = {}, {}, {}, {}, {}
        for i, nid in enumerate(sh.ids):
            if sh.down[i]:
                continue
            adm = sh.admissions[i]
            thresholds[nid] = round(adm.threshold(sh.cores[i].load(), now), 4)
            policies[nid] = str(adm.cfg.policy)
            status = _privacy_status(sh, i)
            budget[nid] = round(status.epsilon_left, 6)
            spent[nid] = round(status.epsilon_current, 6)
            statuses[nid] = "released" if nid in view.nodes else "refused"
        expected = [nid for i, nid in enumerate(sh.ids) if not sh.down[i]]
        missing = tuple(sorted(set(expected) - set(view.participants)))
        at = self.start_ns + now
        v = dataclasses.replace(view, at_ns=at, missing=missing)
        r = RoundResult(
            round=view.round, started_ns=at, latency_s=0.0, asked=len(expected), view=v,
            thresholds=thresholds, policies=policies, budget_left=budget, budget_spent=spent, statuses=statuses,
        )  # fmt: skip
        self._f.write(r.to_json() + "\n")
        self._f.flush()
        self.written += 1

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
