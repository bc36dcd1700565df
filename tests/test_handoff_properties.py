"""Property test of hand-off between two pure cores: one owner per task, whatever the network does.

A hypothesis state machine drives two :class:`Core` objects, node ``a`` (the origin: every task
is submitted there) and node ``b`` (the peer it hands tasks to), through the core's hand-off
commands, sequenced the way the node's hand-off agent (:mod:`node.runtime.handoff`) does it, with
random interleavings, messages delayed, reordered and lost, and crashes of either node.

The model (pure and synchronous: no asyncio, no store):

* Each node has a core and a *durable store*: plain dicts that change only when that node's
  outbox is drained (a commit: the group commit), as the stores apply a batch: active records
  from ``saved`` (as the codec writes them: a task being handed off is stored as the queued task
  it was), removed on ``finished``; hand-off intents from ``intents_done`` then ``intents``; an
  archive from ``finished`` and ``archived`` (newest wins); results to report from ``reports``
  minus ``reports_done``; tombstones from ``refused``. A crash throws the core and its undrained
  outbox away, with the agent's process state, and restores a fresh core (new seed) from the
  store (``restore(..., reports=, refused=, handoffs=)``); the worker registers again.
* Messages in flight are a list: any one may be delivered next (reordering) or dropped (loss),
  and crashes happen while they are in flight. Answers sent to an incarnation of ``a`` that
  crashed may still reach its successor.
* The discipline of the real agent: ``a`` sends a transfer only once its ``begin_handoff`` is
  durable; ``b`` answers a transfer or a status query only once what the answer says is durable
  (the answer goes out at ``b``'s next commit), looking finished ids up in memory then in its
  archive (``LocalNode._finished``) for ``known=``; a transfer whose reservation expired may be
  refused for lack of room (no tombstone); ``a`` applies an answer only to tasks still handing
  off in its current core; ``a`` asks the status of tasks its agent is not moving right now
  (``_busy``) -- and, on purpose, also of tasks whose transfer is still on its way (the race the
  tombstones exist for: ``b`` says unknown, ``a`` takes them back, the late transfer must be
  refused). ``b`` reports results once they are durable; ``a`` records them (``archived`` looked
  up like ``known``) and acknowledges once that is durable; ``b`` forgets a report when the
  acknowledgement arrives.

What "owner" means (checked after every step, on the durable stores, which is what survives):
``a`` owns a task when its store holds it active and not handing off (no intent beside a queued
record), or archived as finished with ``owner_node == "a"``; ``b`` owns it when its store holds
it active, or archived as finished there. A task ``a`` holds as handing off is *in doubt*: ``b``
owns it if ``b``'s store has it, else ``a`` does (it can still take it back). Every task ever
durably submitted has exactly one owner: never both nodes, never neither; a task ``a`` marked
handed off is held by ``b``; a tombstoned id is never held by ``b``; a submit a crash undid
leaves no trace; and no core *acts* as owner (active there, not handing off: it may run the
task) while the other node owns it or acts as owner too. No task reaches a final status durably
twice (so none is completed twice), and ``a`` never refuses a result ``b`` reports. At the end
(teardown) the machine drives everything to quiescence with no crash and no loss and checks that
every task's final result reached the origin and is the one its owner recorded. ``validate()``
runs on both cores after every step.
"""

from __future__ import annotations

import dataclasses
import random
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from node.core import Core, CoreConfig, HandoffRecord, Outcome, RemoteStatus
from node.core.transfer import record_of
from node.errors import HandoffProtocolError, ValidationError
from node.model import PRIORITY_ORDER, Lease, Task, TaskSpec, TaskStatus, WorkerSpec

S = 1_000_000_000
A, B = "a", "b"
QUEUED, HANDING_OFF, HANDED_OFF = TaskStatus.QUEUED, TaskStatus.HANDING_OFF, TaskStatus.HANDED_OFF
COMPLETED, FAILED, CANCELLED = TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED
FINAL = (COMPLETED, FAILED, CANCELLED)
MAX_TASKS = 12
WORKER = WorkerSpec("w", concurrency=3)
DT = st.sampled_from([0, 1_000_000, S // 2, 2 * S, 5 * S, 16 * S])


def copy(t: Task) -> Task:
    """What the store would give back: a record of its own, not the core's object."""
    return dataclasses.replace(t)


def as_stored(t: Task) -> Task:
    """An active record as the codec writes it: a task being handed off is stored as the queued
    task it was (the intent beside it says where it is going), and no record names a peer."""
    status = QUEUED if t.status is HANDING_OFF else t.status
    return dataclasses.replace(t, status=status, handoff_peer=None)


# ---------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class TransferMsg:  # a -> b: the records of one batch whose begin_handoff is durable
    batch: int
    records: tuple[HandoffRecord, ...]


@dataclass(frozen=True, slots=True)
class TransferReplyMsg:  # b -> a, once the adoption is durable
    batch: int
    owned: tuple[str, ...]
    refused: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QueryMsg:  # a -> b: do you own these?
    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QueryReplyMsg:  # b -> a, once the tombstones are durable
    statuses: tuple[tuple[str, RemoteStatus], ...]


@dataclass(frozen=True, slots=True)
class ReportMsg:  # b -> a: durable results of adopted tasks
    outcomes: tuple[Outcome, ...]


@dataclass(frozen=True, slots=True)
class AckMsg:  # a -> b, once the results are durable at a
    ids: tuple[str, ...]


Msg = TransferMsg | TransferReplyMsg | QueryMsg | QueryReplyMsg | ReportMsg | AckMsg


# ---------------------------------------------------------------------------- nodes


@dataclass(slots=True)
class Durable:
    """A node's store: what a crash leaves."""

    active: dict[str, Task] = field(default_factory=dict)
    intents: dict[str, str] = field(default_factory=dict)  # task id -> peer: hand-offs begun (beside the record)
    archive: dict[str, Task] = field(default_factory=dict)
    reports: dict[str, Task] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)


def stored_status(rec: Task, intent: str | None) -> TaskStatus:
    """A stored active record's status as a restore reads it: an intent beside a queued record
    makes it handing off (``Core.restore(handoffs=...)``)."""
    return HANDING_OFF if intent is not None and rec.status is QUEUED else rec.status


def brief(t: Task | None) -> str:
    return "-" if t is None else f"{t.status.value}@{t.owner_node}"


def fresh_core(name: str, seed: int) -> Core:
    return Core(CoreConfig(node_id=name), rng=random.Random(seed))


@dataclass(slots=True)
class Node:
    name: str
    core: Core
    store: Durable = field(default_factory=Durable)
    leases: list[Lease] = field(default_factory=list)  # handed to this incarnation's worker
    after_commit: list[Msg] = field(default_factory=list)  # answers that wait until what they say is durable

    def finished(self, ids: Iterable[str]) -> dict[str, Task]:
        """Finished records by id: not yet durable ones from the outbox first, then the store's
        archive (``LocalNode._finished``)."""
        out = self.core.out
        found: dict[str, Task] = {}
        for tid in ids:
            t = out.archived.get(tid) or out.finished.get(tid) or self.store.archive.get(tid)
            if t is not None:
                found[tid] = t
        return found

    def handing_off(self) -> list[str]:
        return sorted(tid for tid, t in self.core.tasks.items() if t.status is HANDING_OFF)


# ---------------------------------------------------------------------------- the machine


class HandoffMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1_000 * S
        self.seed = 0
        self.a = Node(A, fresh_core(A, 0))
        self.b = Node(B, fresh_core(B, 1))
        self.net: list[Msg] = []  # in flight, any order
        self.next_id = 0
        self.next_batch = 0
        self.created: list[str] = []  # every id a submit returned (durable or not)
        self.submitting: set[str] = set()  # submitted at a, not durable yet (the caller has no answer)
        self.submitted: set[str] = set()  # durably submitted: these must never be lost
        self.lost: set[str] = set()  # submits a crash undid before they were durable: must leave no trace
        self.finals: Counter[str] = Counter()  # durable final records at the node that ran the task
        self.completions: Counter[str] = Counter()
        # a's hand-off agent (its process state, gone with a crash): batches begun but not yet
        # durable, durable but not sent, sent and awaited; the tasks it is moving (``_busy``)
        self.intents: set[int] = set()
        self.to_send: set[int] = set()
        self.awaited: set[int] = set()
        self.busy: dict[str, int] = {}  # task id -> batch

    @initialize(seed=st.integers(0, 2**32 - 1))
    def setup(self, seed: int) -> None:
        self.seed = seed
        self.a.core = fresh_core(A, seed)
        self.b.core = fresh_core(B, seed + 1)
        for n in (self.a, self.b):
            n.core.register_worker(WORKER, self.now)

    def node(self, name: str) -> Node:
        return self.a if name == A else self.b

    # ------------------------------------------------------------------ durability

    def commit(self, n: Node) -> None:
        """The group commit: write the drained outbox to the store, then send what waited for it."""
        out = n.core.drain()
        st_ = n.store
        assert not set(out.saved) & set(out.finished), "a record both saved and finished in one commit"
        for tid, t in out.saved.items():
            assert t.status not in FINAL and t.status is not HANDED_OFF, t
            st_.active[tid] = as_stored(t)
        for tid, t in out.finished.items():
            st_.active.pop(tid, None)
            st_.archive[tid] = copy(t)
            if t.status in FINAL:  # it ran (or failed, or was cancelled) here: its one final record
                assert t.owner_node == n.name, t
                self.finals[tid] += 1
                assert self.finals[tid] == 1, f"task {tid} reached a final status twice (now {t.status} at {n.name})"
                if t.status is COMPLETED:
                    self.completions[tid] += 1
                    assert self.completions[tid] == 1, f"task {tid} completed twice"
        for tid, t in out.archived.items():  # results that came back (archived, not counted)
            assert tid not in st_.active, tid
            st_.archive[tid] = copy(t)
        for tid, t in out.reports.items():
            st_.reports[tid] = copy(t)
        for tid in out.reports_done:
            st_.reports.pop(tid, None)
        st_.refused.update(out.refused)
        # intents in the order the stores apply them (MemoryStore.write, lua.FLUSH): ended ones first
        for tid in out.intents_done:
            st_.intents.pop(tid, None)
        for tid, peer in out.intents.items():
            st_.intents[tid] = peer
        self.net.extend(n.after_commit)
        n.after_commit.clear()
        if n is self.a:
            self.submitted |= self.submitting
            self.submitting.clear()
            self.to_send |= self.intents  # the intent is durable: the transfer may go
            self.intents.clear()

    def crash(self, n: Node, order: Sequence[Task]) -> None:
        """Lose the core, its outbox and the agent's process state; restore from the store."""
        self.seed += 2
        st_ = n.store
        n.core = fresh_core(n.name, self.seed)
        n.core.restore(
            [copy(t) for t in order],
            [],
            self.now,
            reports=[copy(t) for t in st_.reports.values()],
            refused=dict(st_.refused),
            remote_pending=set(),
            handoffs=dict(st_.intents),
        )
        n.core.register_worker(WORKER, self.now)
        n.leases.clear()
        n.after_commit.clear()  # never sent: nobody hears those answers
        if n is self.a:
            self.lost |= self.submitting
            self.submitting.clear()
            self.intents.clear()
            self.to_send.clear()
            self.awaited.clear()
            self.busy.clear()

    # ------------------------------------------------------------------ a's agent

    def send_transfer(self, batch: int) -> None:
        """The records of a batch whose intent is durable (tasks it still moves, still handing off)."""
        self.to_send.discard(batch)
        core = self.a.core
        ids = [tid for tid, k in self.busy.items() if k == batch and core.tasks[tid].status is HANDING_OFF]
        if not ids:
            return
        self.net.append(TransferMsg(batch, tuple(record_of(core.tasks[tid]) for tid in ids)))
        self.awaited.add(batch)

    def settle_answer(self, owned: Iterable[str], refused: Iterable[str]) -> None:
        """a records a peer's answer, for tasks still handing off to b in its current core only
        (an answer may be stale: about tasks a settled since, or sent to a crashed incarnation)."""
        core = self.a.core

        def live(tid: str) -> bool:
            t = core.tasks.get(tid)
            return t is not None and t.status is HANDING_OFF and t.handoff_peer == B

        mine = [tid for tid in dict.fromkeys(owned) if live(tid)]
        back = [tid for tid in dict.fromkeys(refused) if live(tid) and tid not in mine]
        if mine:
            core.finish_handoff(mine, B, self.now)
        if back:
            core.abort_handoff(back, self.now, peer=B)
        for tid in mine + back:
            self.busy.pop(tid, None)

    def query(self, ids: Sequence[str]) -> None:
        self.net.append(QueryMsg(tuple(ids)))

    # ------------------------------------------------------------------ delivery

    def deliver(self, msg: Msg, room: int | None = None) -> None:
        """One message arrives. ``room``: b's reservation for a transfer expired and it has room for
        only that many new tasks (the rest are refused, without a tombstone: the agent's no_room)."""
        a, b = self.a, self.b
        if isinstance(msg, TransferMsg):  # on_transfer: adopt, durable, then answer
            ids = [r.task_id for r in msg.records]
            known = b.finished(tid for tid in ids if tid not in b.core.tasks)
            records = list(msg.records)
            no_room: list[str] = []
            if room is not None:
                fresh = [r.task_id for r in records if r.task_id not in b.core.tasks and r.task_id not in known]
                no_room = fresh[room:]
                records = [r for r in records if r.task_id not in no_room]
            res = b.core.adopt(records, A, self.now, known=known)
            assert set(res.owned) | set(res.refused) | set(no_room) == set(ids), res
            b.after_commit.append(TransferReplyMsg(msg.batch, tuple(res.owned), (*res.refused, *no_room)))
        elif isinstance(msg, TransferReplyMsg):
            self.awaited.discard(msg.batch)
            for tid in [tid for tid, k in self.busy.items() if k == msg.batch]:
                del self.busy[tid]  # unanswered ones are settled by asking
            self.settle_answer(msg.owned, msg.refused)  # (a task put back may be offered again at once)
        elif isinstance(msg, QueryMsg):  # on_status: answer, durable (tombstones), then reply
            known = b.finished(tid for tid in msg.ids if tid not in b.core.tasks)
            statuses = b.core.task_status(list(msg.ids), A, self.now, known=known)
            assert set(statuses) == set(msg.ids)
            b.after_commit.append(QueryReplyMsg(tuple(sorted(statuses.items()))))
        elif isinstance(msg, QueryReplyMsg):
            owned = [tid for tid, s in msg.statuses if s is RemoteStatus.OWNED]
            unknown = [tid for tid, s in msg.statuses if s is RemoteStatus.UNKNOWN]
            self.settle_answer(owned, unknown)
        elif isinstance(msg, ReportMsg):  # on_report: record each, durable, then acknowledge
            for o in msg.outcomes:
                archived = a.finished([o.task_id]).get(o.task_id)
                try:
                    final = a.core.record_result(o, B, archived, self.now)
                except (HandoffProtocolError, ValidationError) as e:
                    # the agent acknowledges a refused result too, and b drops it for good: the owner's
                    # durable result must never be refused (it would never reach the origin)
                    raise AssertionError(f"a refused b's result for {o.task_id} ({brief(archived)}): {e}") from e
                assert (final.status, final.result, final.owner_node) == (o.status, o.result, o.owner_node)
            a.after_commit.append(AckMsg(tuple(o.task_id for o in msg.outcomes)))
        else:
            b.core.report_done(list(msg.ids))

    # ------------------------------------------------------------------ the steps
    # One rule picks the next step among those that can do something. (Hypothesis enables a
    # random subset of a machine's rules in each run; with one rule per step most runs would miss
    # one of submit, offload, commit or deliver, and hand nothing off.) Weights: how often each
    # is picked. Steps that move work along commit right after it most of the time, as the agent
    # does; the crash windows are the times they do not.

    STEPS: ClassVar[dict[str, int]] = {
        "submit": 2,
        "offload": 3,
        "transfer": 2,
        "time out": 1,
        "settle": 2,
        "report": 2,
        "deliver": 8,
        "lose": 1,
        "commit": 3,
        "claim": 2,
        "finish lease": 3,
        "tick": 1,
        "crash": 2,
    }

    def can(self, step: str) -> bool:
        a = self.a
        match step:
            case "submit":
                return self.next_id < MAX_TASKS
            case "offload":
                return bool(a.core.handoff_candidates(1))
            case "transfer":
                return bool(self.to_send)
            case "time out":
                return bool(self.awaited)
            case "settle":
                return bool(a.handing_off())
            case "report":
                return any(o.task_id in self.b.store.reports for o in self.b.core.pending_reports().get(A, []))
            case "deliver" | "lose":
                return bool(self.net)
            case "finish lease":
                return any(n.core.is_current(lease) for n in (a, self.b) for lease in n.leases)
            case _:
                return True

    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        steps = [name for name, weight in self.STEPS.items() if self.can(name) for _ in range(weight)]
        name = data.draw(st.sampled_from(steps), label="step")
        getattr(self, "step_" + name.replace(" ", "_"))(data)

    def step_submit(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(1, min(4, MAX_TASKS - self.next_id)), label="tasks")
        retries = data.draw(st.integers(0, 1), label="max_retries")
        specs = []
        for _ in range(n):
            tid = f"t{self.next_id}"
            self.next_id += 1
            p = data.draw(st.sampled_from(PRIORITY_ORDER), label="priority")
            specs.append(TaskSpec("job", payload=tid.encode(), priority=p, max_retries=retries, timeout_s=30.0, id=tid))
        ids = self.a.core.submit(specs, self.now)
        self.created += ids
        self.submitting.update(ids)
        if data.draw(st.booleans(), label="commit"):
            self.commit(self.a)

    def step_offload(self, data: st.DataObject) -> None:
        """offload(): the peer accepted these ready tasks: begin, make the intent durable, send
        the transfer -- or stop after begin or commit (the rest happens in later steps, or never)."""
        cands = sorted(self.a.core.handoff_candidates(MAX_TASKS))
        ids = data.draw(st.lists(st.sampled_from(cands), min_size=1, max_size=4, unique=True), label="begin")
        self.a.core.begin_handoff(ids, B, self.now)
        batch = self.next_batch
        self.next_batch += 1
        self.intents.add(batch)
        for tid in ids:
            self.busy[tid] = batch
        upto = data.draw(st.sampled_from(["send", "commit", "begin"]), label="up to")
        if upto != "begin":
            self.commit(self.a)
            if upto == "send":
                self.send_transfer(batch)

    def step_transfer(self, data: st.DataObject) -> None:
        """An offload whose intent became durable sends its transfer."""
        self.send_transfer(data.draw(st.sampled_from(sorted(self.to_send)), label="batch"))

    def step_time_out(self, data: st.DataObject) -> None:
        """a stops waiting for an answer (PeerUnavailableError): the tasks are settled later by
        asking, while the transfer (or its answer) may still be on its way."""
        batch = data.draw(st.sampled_from(sorted(self.awaited)), label="batch")
        self.awaited.discard(batch)
        for tid in [tid for tid, k in self.busy.items() if k == batch]:
            del self.busy[tid]

    def step_settle(self, data: st.DataObject) -> None:
        """settle(): ask b about tasks handing off that the agent is not moving right now -- or,
        racing, the dangerous race on purpose: also about tasks whose transfer may still be on its
        way (b says unknown, so it must refuse that transfer when it arrives)."""
        racing = data.draw(st.booleans(), label="racing a transfer")
        ids = [tid for tid in self.a.handing_off() if racing or tid not in self.busy]
        if ids:
            self.query(data.draw(st.lists(st.sampled_from(ids), min_size=1, unique=True), label="ask"))

    def step_report(self, data: st.DataObject) -> None:
        """b's settle(): the results of adopted tasks that are durable and not yet acknowledged."""
        b = self.b
        outcomes = [o for o in b.core.pending_reports().get(A, []) if o.task_id in b.store.reports]
        self.net.append(ReportMsg(tuple(outcomes)))

    def step_deliver(self, data: st.DataObject) -> None:
        """Any message in flight arrives (reordering); its receiver commits after it, or later."""
        msg = self.net.pop(data.draw(st.integers(0, len(self.net) - 1), label="message"))
        room = None
        if isinstance(msg, TransferMsg) and data.draw(st.integers(0, 3), label="reservation expired") == 0:
            room = data.draw(st.integers(0, 2), label="room")
        self.deliver(msg, room)
        if data.draw(st.sampled_from([True, True, False]), label="commit"):
            self.commit(self.b if isinstance(msg, TransferMsg | QueryMsg | AckMsg) else self.a)

    def step_lose(self, data: st.DataObject) -> None:
        self.net.pop(data.draw(st.integers(0, len(self.net) - 1), label="message"))

    def step_commit(self, data: st.DataObject) -> None:
        self.commit(self.node(data.draw(st.sampled_from([A, B]), label="node")))

    def step_claim(self, data: st.DataObject) -> None:
        node = self.node(data.draw(st.sampled_from([A, B, B]), label="node"))
        node.leases += node.core.claim(WORKER.id, data.draw(st.integers(1, 3), label="max_tasks"), self.now)

    def step_finish_lease(self, data: st.DataObject) -> None:
        """The worker reports on one of its current leases: complete, fail and retry, fail for good."""
        for n in (self.a, self.b):
            n.leases = [lease for lease in n.leases if n.core.is_current(lease)]
        held = {f"{n.name}:{lease.task_id}#{lease.attempt}": (n, lease) for n in (self.a, self.b) for lease in n.leases}
        n, lease = held[data.draw(st.sampled_from(sorted(held)), label="lease")]
        n.leases.remove(lease)
        how = data.draw(st.sampled_from(["complete", "complete", "retry", "fail"]), label="how")
        if how == "complete":
            n.core.complete(lease, f"done {lease.task_id} at {n.name}".encode(), self.now)
        else:
            n.core.fail(lease, "boom", self.now, retry=how == "retry")
        if data.draw(st.booleans(), label="commit"):
            self.commit(n)

    def step_tick(self, data: st.DataObject) -> None:
        self.now += data.draw(DT, label="dt")
        self.a.core.tick(self.now)
        self.b.core.tick(self.now)

    def step_crash(self, data: st.DataObject) -> None:
        node = self.node(data.draw(st.sampled_from([A, B]), label="crash"))
        order = data.draw(st.permutations(sorted(node.store.active)), label="records in the order read")
        self.crash(node, [node.store.active[tid] for tid in order])

    # ------------------------------------------------------------------ invariants

    @invariant()
    def cores_validate(self) -> None:
        self.a.core.validate()
        self.b.core.validate()

    @invariant()
    def one_owner(self) -> None:
        a, b = self.a, self.b
        ids = set(self.created)
        assert set(b.store.active) | set(b.store.archive) | set(b.core.tasks) <= ids
        assert set(a.store.intents) <= set(a.store.active), "an intent without its record"
        assert not b.store.intents, "b hands nothing on"
        for tid in self.created:
            a_act, a_arc = a.store.active.get(tid), a.store.archive.get(tid)
            b_act, b_arc = b.store.active.get(tid), b.store.archive.get(tid)
            assert a_act is None or a_arc is None, f"{tid} both active and archived at a"
            assert b_act is None or b_arc is None, f"{tid} both active and archived at b"
            if b_arc is not None:  # b hands nothing on: what it archives it finished itself
                assert b_arc.status in FINAL and b_arc.owner_node == B, b_arc
            a_status = None if a_act is None else stored_status(a_act, a.store.intents.get(tid))
            a_owns = (a_status is not None and a_status is not HANDING_OFF) or (
                a_arc is not None and a_arc.status in FINAL and a_arc.owner_node == A
            )
            in_doubt = a_status is HANDING_OFF
            ceded = a_arc is not None and not a_owns  # handed off (a result may have come back)
            b_owns = b_act is not None or b_arc is not None
            # in memory: a core that may run the task (active, not handing off) acts as its owner
            a_t = a.core.tasks.get(tid)
            a_acts = a_t is not None and a_t.status is not HANDING_OFF
            b_acts = tid in b.core.tasks
            assert not ((a_owns or a_acts) and (b_owns or b_acts)), (
                f"{tid}: two owners (a: stored {brief(a_act or a_arc)} intent {a.store.intents.get(tid)}, "
                f"core {brief(a_t)}; b: stored {brief(b_act or b_arc)}, core {brief(b.core.tasks.get(tid))})"
            )
            handed = a.core.out.finished.get(tid)
            if handed is not None and handed.status is HANDED_OFF:
                assert b_owns, f"{tid} marked handed off at a, not durable at b"
            if tid in b.store.refused:
                assert not b_owns and not b_acts, f"{tid} declared unknown by b, yet b holds it"
            if tid in self.lost:
                assert not (a_act or a_arc or a_t or b_owns or b_acts), f"{tid}: an undone submit left a trace"
            if tid not in self.submitted:
                continue
            assert a_act is not None or a_arc is not None, f"{tid}: the origin lost its record"
            assert a_owns or b_owns or in_doubt, (
                f"{tid}: no owner (a: {brief(a_act or a_arc)}, b: {brief(b_act or b_arc)})"
            )
            if ceded:
                assert b_owns, f"{tid}: a handed it off, b does not hold it"

    # ------------------------------------------------------------------ quiescence

    def quiesce(self) -> None:
        """No more crashes or losses: finish every hand-off, run every task, report every result."""
        a, b = self.a, self.b
        for _ in range(200):
            self.commit(a)
            self.commit(b)
            self.one_owner()
            if self.net:
                while self.net:
                    self.deliver(self.net.pop(0))
                continue
            if self.to_send:
                for batch in sorted(self.to_send):
                    self.send_transfer(batch)
                continue
            if self.awaited:  # their transfers or answers were lost: the agent times out
                self.awaited.clear()
                self.busy.clear()
            if a.handing_off():
                self.query(a.handing_off())
                continue
            outcomes = [o for o in b.core.pending_reports().get(A, []) if o.task_id in b.store.reports]
            if outcomes:
                self.net.append(ReportMsg(tuple(outcomes)))
                continue
            worked = False
            for n in (a, b):
                for lease in n.leases:
                    if n.core.is_current(lease):
                        n.core.complete(lease, f"done {lease.task_id} at {n.name}".encode(), self.now)
                        worked = True
                n.leases = n.core.claim(WORKER.id, 3, self.now)
                worked = worked or bool(n.leases)
            if worked:
                continue
            due = [t.not_before_ns for n in (a, b) for t in n.core.tasks.values() if t.status is QUEUED]
            if due:  # retries waiting for their backoff
                self.now = max(self.now, *due)
                a.core.tick(self.now)
                b.core.tick(self.now)
                continue
            break
        else:
            raise AssertionError("no quiescence after 200 rounds")
        assert not a.core.tasks and not b.core.tasks and not a.store.active and not b.store.active
        assert not b.store.reports and not b.core.pending_reports()
        for tid in self.submitted:
            final = a.store.archive[tid]
            assert final.status in FINAL, f"{tid}: its result never reached the origin ({final.status} at a)"
            if final.owner_node == B:  # what the origin says is what the owner recorded
                there = b.store.archive[tid]
                got = (final.status, final.result, final.finished_ns)
                kept = (there.status, there.result, there.finished_ns)
                assert got == kept, f"{tid}: the origin has {got}, its owner {kept}"
            else:
                assert final.owner_node == A and tid not in b.store.archive, f"{tid}: {brief(final)}, also at b"
            assert self.finals[tid] == 1, tid

    def teardown(self) -> None:
        if sys.exc_info()[0] is not None:  # a step failed: that is the report, not this
            return
        self.quiesce()
        self.cores_validate()


HandoffMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    # the explain phase traces every line (sys.settrace on Python 3.11): minutes for a failure
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
TestHandoffMachine = HandoffMachine.TestCase
