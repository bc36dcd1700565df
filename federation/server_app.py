"""The Flower ServerApp: one ``query.summary`` broadcast per round, aggregated into the federation view.

It runs until stopped (``rounds = 0``, ``flwr stop RUN_ID``), or for ``rounds`` rounds. Each
round sends every SuperNode the round number and the previous round's view (one broadcast per
round: Flower's deployment runtime costs 6-11 s per broadcast here whatever the flags), pushes
the messages itself and pulls the replies every 0.1 s (about a second faster than
``send_and_receive``). A round ends when every node that answered last round has answered, or
when the TTL runs out: a node that missed the last round is still asked but not waited for, so
a SuperNode that is gone costs one TTL once, not every round. Replies are aggregated with
:func:`federation.aggregate.aggregate`; a reply that does not decode, or that names another
fedcoord node than its SuperNode did before, is left out with a logged reason.

After each round a JSON line goes to ``status-file`` (run config) for ``fedcoord up`` and
``fedcoord aggregator`` to show: the round, its latency, participants, missing, dropped, the
global load with its sd, and per node the threshold it set and the privacy budget left.

Run config (``flwr run ... --run-config "period-s=20 rounds=0"``): ``period-s`` (20),
``rounds`` (0: until stopped), ``ttl-s`` (15), ``status-file`` ("": none), ``min-nodes`` (1:
the first round waits for this many SuperNodes), ``wait-nodes-s`` (60).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from federation.aggregate import aggregate
from federation.privacy.schema import ReleasedSummary, SchemaError
from federation.privacy.status import ReleaseOutcome, ReleaseStatus
from federation.records import outcome_from_records, query_records
from federation.view import GlobalView

__all__ = ["RoundClock", "RoundResult", "ServerSettings", "WallClock", "app", "run_round", "serve"]

log = logging.getLogger("fedcoord.serverapp")

app = ServerApp()
PULL_EVERY_S = 0.1


@dataclass(frozen=True, slots=True)
class ServerSettings:
    period_s: float = 20.0
    rounds: int = 0
    ttl_s: float = 15.0
    status_file: str = ""
    min_nodes: int = 1
    wait_nodes_s: float = 60.0

    @classmethod
    def from_run_config(cls, rc: Mapping[str, Any]) -> ServerSettings:
        s = cls(
            period_s=float(rc.get("period-s", 20.0)),
            rounds=int(rc.get("rounds", 0)),
            ttl_s=float(rc.get("ttl-s", 15.0)),
            status_file=str(rc.get("status-file", "")),
            min_nodes=int(rc.get("min-nodes", 1)),
            wait_nodes_s=float(rc.get("wait-nodes-s", 60.0)),
        )
        if not (s.period_s > 0 and s.ttl_s > 0 and s.rounds >= 0 and s.min_nodes >= 0 and s.wait_nodes_s >= 0):
            raise ValueError(f"run config out of range: {s}")
        return s


@dataclass(slots=True)
class RoundResult:
    """One round as the status file records it."""

    round: int
    started_ns: int
    latency_s: float
    asked: int
    view: GlobalView
    thresholds: dict[str, float] = field(default_factory=dict)  # fedcoord node -> threshold it set
    policies: dict[str, str] = field(default_factory=dict)
    budget_left: dict[str, float] = field(default_factory=dict)  # fedcoord node -> epsilon left
    budget_spent: dict[str, float] = field(default_factory=dict)  # ... epsilon its tasks still counting spent
    statuses: dict[str, str] = field(default_factory=dict)  # fedcoord node -> release status
    reasons: dict[str, str] = field(default_factory=dict)  # fedcoord node -> why it sent no summary
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        v = self.view
        return json.dumps(
            {
                "round": self.round,
                "started_ns": self.started_ns,
                "latency_s": round(self.latency_s, 3),
                "asked": self.asked,
                "participants": list(v.participants),
                "missing": list(v.missing),
                "dropped": [list(d) for d in v.dropped],
                "federation_load": {"value": v.federation_load.value, "sd": v.federation_load.sd},
                "capacity": v.capacity,
                "nodes": {
                    k: {
                        "load": n.load.value,
                        "load_sd": n.load.sd,
                        "occupied": n.occupied.value,
                        "capacity": n.capacity,
                        "handed_off_out_per_s": n.handed_off_out_per_s.value,
                        "handed_off_in_per_s": n.handed_off_in_per_s.value,
                    }
                    for k, n in v.nodes.items()
                },
                "handed_off_per_s": v.handed_off_per_s.value,
                "throughput_per_s": sum(e.value for e in v.throughput_per_s.values()),
                "completion_quantiles_s": [q.to_record() for q in v.completion_quantiles_s],
                "thresholds": self.thresholds,
                "policies": self.policies,
                "budget_left": self.budget_left,
                "budget_spent": self.budget_spent,
                "statuses": self.statuses,
                "reasons": self.reasons,
                "errors": self.errors,
            }
        )


class _Names:
    """Which fedcoord node each SuperNode speaks for: the first name it gave stays its name."""

    def __init__(self) -> None:
        self.by_supernode: dict[int, str] = {}

    def claim(self, supernode: int, node_id: str, connected: set[int]) -> str | None:
        """None if fine; the reason to drop the summary otherwise. A name held by a SuperNode that
        did not answer (not among ``connected``: those that replied this round) passes to the one
        claiming it: a restarted SuperNode comes back under a new id."""
        known = self.by_supernode.get(supernode)
        if known is None:
            holder = next((sn for sn, name in self.by_supernode.items() if name == node_id), None)
            if holder is not None and holder in connected:
                return f"SuperNode {supernode} claims node {node_id!r}, which another SuperNode speaks for"
            if holder is not None:
                del self.by_supernode[holder]
            self.by_supernode[supernode] = node_id
            return None
        if known != node_id:
            return f"SuperNode {supernode} spoke for node {known!r} and now claims {node_id!r}"
        return None


def run_round(
    grid: Grid,
    round_no: int,
    view: GlobalView | None,
    *,
    settings: ServerSettings,
    names: _Names,
    answered_last: set[int],
) -> tuple[RoundResult, set[int]]:
    """Ask every SuperNode once, collect what comes back within the TTL, aggregate."""
    t0 = time.monotonic()
    started_ns = time.time_ns()
    ids = sorted(grid.get_node_ids())
    content = query_records(round_no, view)
    msgs = [
        Message(content, dst_node_id=i, message_type="query.summary", ttl=settings.ttl_s, group_id=str(round_no))
        for i in ids
    ]
    pending = {mid: dst for mid, dst in zip(grid.push_messages(msgs), ids, strict=True)}
    waiting_for = {i for i in ids if i in answered_last} or set(ids)  # the first round waits for everyone
    replies: dict[int, Message] = {}
    deadline = t0 + settings.ttl_s
    while pending and time.monotonic() < deadline:
        for reply in grid.pull_messages(list(pending)):
            dst = pending.pop(reply.metadata.reply_to_message_id, None)
            if dst is not None:
                replies[dst] = reply
        if not waiting_for - set(replies):
            break
        time.sleep(PULL_EVERY_S)
    latency = time.monotonic() - t0

    res = RoundResult(round_no, started_ns, latency, len(ids), view or _empty(round_no))
    summaries: list[ReleasedSummary] = []
    dropped: list[tuple[str, str]] = []
    outcomes: dict[str, ReleaseOutcome] = {}
    for sn, reply in sorted(replies.items()):
        if reply.has_error():
            res.errors.append(f"SuperNode {sn}: {reply.error.reason}")
            continue
        try:
            outcome = outcome_from_records(reply.content)
        except SchemaError as e:
            node = names.by_supernode.get(sn, f"supernode-{sn}")
            dropped.append((node, e.reason))
            log.warning("round %d: reply of SuperNode %d (node %s) dropped: %s", round_no, sn, node, e.reason)
            continue
        claimed = outcome.node_id or (outcome.summary.node_id if outcome.summary is not None else "")
        if claimed:
            why = names.claim(sn, claimed, set(replies))  # a holder that answered this round is there
            if why is not None:
                dropped.append((claimed, why))
                log.warning("round %d: reply dropped: %s", round_no, why)
                continue
        if outcome.summary is not None:
            summaries.append(outcome.summary)
        node = names.by_supernode.get(sn, f"supernode-{sn}")
        outcomes[node] = outcome
        if "applied" in reply.content:
            applied: Mapping[str, Any] = reply.content["applied"]
            named: Mapping[str, Any] = reply.content["applied.names"]
            res.thresholds[node] = float(applied["threshold"])
            res.policies[node] = str(named["policy"])
    expected = [names.by_supernode.get(i, f"supernode-{i}") for i in ids]
    new_view = aggregate(summaries, round=round_no, expected=expected)
    if dropped:
        new_view = dataclasses.replace(new_view, dropped=(*new_view.dropped, *dropped))
    # a node that answered without a summary (no window yet, budget spent) is not missing data it
    # was asked for, but it sent nothing to merge: it stays in `missing`, its status says why
    res.view = new_view
    for node, o in outcomes.items():
        res.statuses[node] = o.status.value
        if o.summary is None:
            res.reasons[node] = o.reason[:300]
            if o.status in (ReleaseStatus.UNAVAILABLE, ReleaseStatus.BUDGET_EXHAUSTED):
                log.warning("round %d: node %s sent no summary (%s): %s", round_no, node, o.status.value, o.reason)
        if o.privacy is not None:
            res.budget_left[node] = o.privacy.epsilon_left
            res.budget_spent[node] = o.privacy.epsilon_current
    return res, {sn for sn, r in replies.items() if not r.has_error()}


def _empty(round_no: int) -> GlobalView:
    return aggregate([], round=round_no)


def _write_status(path: str, line: str) -> None:
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def _wait_for_nodes(grid: Grid, settings: ServerSettings) -> None:
    deadline = time.monotonic() + settings.wait_nodes_s
    while len(list(grid.get_node_ids())) < settings.min_nodes and time.monotonic() < deadline:
        time.sleep(0.5)


class RoundClock(Protocol):
    """When rounds run: :class:`WallClock` in a federation, the virtual clock in the Flower engine
    path of the simulator (:mod:`federation.sim.flower`)."""

    def wait(self, round_no: int) -> bool:
        """Return when round ``round_no`` is due; False when no more rounds are to run."""

    def done(self, result: RoundResult) -> None:
        """Round ``result.round`` is over."""


class WallClock:
    """Rounds every ``period_s`` of wall time (the period counts from a round's start), for
    ``rounds`` rounds (0: until stopped); each round's line goes to the status file."""

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self._started: float | None = None

    def wait(self, round_no: int) -> bool:
        s = self.settings
        if s.rounds and round_no > s.rounds:
            return False
        if self._started is not None:
            rest = s.period_s - (time.monotonic() - self._started)
            if rest > 0:
                time.sleep(rest)
        self._started = time.monotonic()
        return True

    def done(self, result: RoundResult) -> None:
        _write_status(self.settings.status_file, result.to_json())
        view = result.view
        log.info(
            "round %d: %d of %d nodes in %.1f s, federation load %.2f (sd %.2f), missing %s",
            result.round,
            len(view.participants),
            result.asked,
            result.latency_s,
            view.federation_load.value,
            view.federation_load.sd,
            list(view.missing),
        )


def serve(grid: Grid, settings: ServerSettings, clock: RoundClock) -> None:
    """The federation's rounds, one broadcast each, when ``clock`` says: each round's query
    carries the view of the round before."""
    names = _Names()
    view: GlobalView | None = None
    answered: set[int] = set()
    round_no = 1
    while clock.wait(round_no):
        res, answered = run_round(grid, round_no, view, settings=settings, names=names, answered_last=answered)
        view = res.view
        clock.done(res)
        round_no += 1


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = ServerSettings.from_run_config(context.run_config)
    log.info("fedcoord federation: rounds every %.1f s (TTL %.1f s)", settings.period_s, settings.ttl_s)
    _wait_for_nodes(grid, settings)
    serve(grid, settings, WallClock(settings))
