"""Hand-off between nodes: the messages, the transport interface, and the in-memory transport.

The protocol (DESIGN.md, Hand-off), for a batch of tasks from an origin O to a peer P:

1. **Offer** (metadata only, no payload): P answers which it accepts, given its threshold and
   what it already reserved, with a reservation that expires.
2. O records ``handing_off(P)`` durably, then **transfers** the records. P adopts them
   (idempotent on task id), makes them durable, and answers which it owns now.
3. O marks those ``handed_off`` (terminal on O, owned by P) and puts the refused ones back in
   line at their old place.
4. When P finishes a task, it **reports the result** to O (retried until O acknowledges); O
   archives it so that ``get`` and ``wait`` on O follow the task to its end.
5. After a crash, O finds its hand-offs still in flight and asks P their **task status**: owned
   (finish), or unknown (abort; P then refuses that task for good, so a transfer still on its way
   cannot make a second owner). O never guesses: while P does not answer, the tasks wait.

Written once against :class:`HandoffTransport`; :class:`MemoryTransport` carries it between
nodes of one process (tests, benchmarks, the simulator); gRPC implements it between processes.
A transport raises :class:`~node.errors.PeerUnavailableError` when it gets no answer: the
outcome is then unknown, and the node settles it later by asking.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from node.core.transfer import HandoffRecord, Outcome, RemoteStatus
from node.errors import FedcoordError, PeerUnavailableError
from node.model import Priority

__all__ = [
    "HandoffEndpoint",
    "HandoffTransport",
    "MemoryTransport",
    "Offer",
    "OfferItem",
    "OfferReply",
    "Report",
    "ReportReply",
    "StatusQuery",
    "StatusReply",
    "Transfer",
    "TransferReply",
    "choose_peer",
]


class OfferItem(NamedTuple):
    """What a peer needs to decide whether it can take a task: never the payload. (A tuple:
    offers carry thousands of them.)"""

    task_id: str
    type: str
    priority: Priority
    difficulty: int
    required_capabilities: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Offer:
    offer_id: str
    from_node: str
    items: tuple[OfferItem, ...]


@dataclass(frozen=True, slots=True)
class OfferReply:
    offer_id: str
    accepted: tuple[str, ...]  # task ids the peer will take (a reservation holds room for them)
    expires_ns: int = 0  # until when the reservation holds (the peer's clock)
    reason: str = ""  # why not all were accepted


@dataclass(frozen=True, slots=True)
class Transfer:
    offer_id: str
    from_node: str
    records: tuple[HandoffRecord, ...]


@dataclass(frozen=True, slots=True)
class TransferReply:
    owned: tuple[str, ...]  # the peer holds these durably now (taken now or by an earlier transfer)
    refused: Mapping[str, str] = field(default_factory=dict)  # task id -> why (the origin keeps them)


@dataclass(frozen=True, slots=True)
class StatusQuery:
    from_node: str
    task_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StatusReply:
    statuses: Mapping[str, RemoteStatus]


@dataclass(frozen=True, slots=True)
class Report:
    from_node: str
    outcomes: tuple[Outcome, ...]


@dataclass(frozen=True, slots=True)
class ReportReply:
    recorded: tuple[str, ...]  # archived (or archived before: the same answer)
    rejected: Mapping[str, str] = field(default_factory=dict)  # task id -> why (never handed to the sender)


class HandoffEndpoint(Protocol):
    """The peer's side of the protocol (the node's hand-off agent implements it)."""

    async def on_offer(self, offer: Offer) -> OfferReply: ...
    async def on_transfer(self, transfer: Transfer) -> TransferReply: ...
    async def on_status(self, query: StatusQuery) -> StatusReply: ...
    async def on_report(self, report: Report) -> ReportReply: ...

    @property
    def alive(self) -> bool:
        """Whether the node behind it serves (a dead one cannot answer)."""
        ...


class HandoffTransport(Protocol):
    """Carries the protocol to peers by node id."""

    def bind(self, node_id: str, endpoint: HandoffEndpoint) -> None:
        """This node answers under ``node_id`` (its peers reach it through the transport)."""
        ...

    def unbind(self, node_id: str, endpoint: HandoffEndpoint) -> None: ...

    async def offer(self, peer: str, offer: Offer) -> OfferReply: ...
    async def transfer(self, peer: str, transfer: Transfer) -> TransferReply: ...
    async def task_status(self, peer: str, query: StatusQuery) -> StatusReply: ...
    async def report_result(self, peer: str, report: Report) -> ReportReply: ...

    def peer_loads(self) -> Mapping[str, float]:
        """The load ratio of peers as the transport last learned it (an offer reply carries it over
        gRPC); empty when it knows none. The agent chooses peers by it while there is no federation view."""
        ...


Interceptor = Callable[[str, str, Any], Awaitable[None]]  # (operation, peer, message)


class MemoryTransport:
    """Hand-off between nodes of one process. A call to a peer that is not bound, or dies
    while answering, raises :class:`PeerUnavailableError` (as a lost connection would); a
    peer's own errors (bad input, protocol errors) reach the caller as they are.

    ``before`` / ``after`` run around every call (tests use them to cut links or count)."""

    def __init__(self) -> None:
        self._endpoints: dict[str, HandoffEndpoint] = {}
        self.before: Interceptor | None = None
        self.after: Interceptor | None = None
        self.calls: dict[str, int] = {}

    def bind(self, node_id: str, endpoint: HandoffEndpoint) -> None:
        self._endpoints[node_id] = endpoint

    def unbind(self, node_id: str, endpoint: HandoffEndpoint) -> None:
        if self._endpoints.get(node_id) is endpoint:
            del self._endpoints[node_id]

    def peers(self) -> list[str]:
        return sorted(self._endpoints)

    def peer_loads(self) -> Mapping[str, float]:
        return {}  # in one process, loads come from the federation view (or none: random choice)

    async def _call(self, op: str, peer: str, msg: Any, fn: Callable[[HandoffEndpoint], Awaitable[Any]]) -> Any:
        self.calls[op] = self.calls.get(op, 0) + 1
        if self.before is not None:
            await self.before(op, peer, msg)
        ep = self._endpoints.get(peer)
        if ep is None or not ep.alive:
            raise PeerUnavailableError(f"peer {peer!r} is not reachable")
        try:
            reply = await fn(ep)
        except FedcoordError as e:
            if not ep.alive or self._endpoints.get(peer) is not ep:
                raise PeerUnavailableError(f"peer {peer!r} went away while answering {op}: {e}") from e
            raise
        except BaseException as e:
            if not ep.alive or self._endpoints.get(peer) is not ep:  # it died mid-call: no answer came
                raise PeerUnavailableError(f"peer {peer!r} went away while answering {op}") from e
            raise
        if self.after is not None:
            await self.after(op, peer, reply)
        return reply

    async def offer(self, peer: str, offer: Offer) -> OfferReply:
        return await self._call("offer", peer, offer, lambda ep: ep.on_offer(offer))  # type: ignore[no-any-return]

    async def transfer(self, peer: str, transfer: Transfer) -> TransferReply:
        return await self._call("transfer", peer, transfer, lambda ep: ep.on_transfer(transfer))  # type: ignore[no-any-return]

    async def task_status(self, peer: str, query: StatusQuery) -> StatusReply:
        return await self._call("task_status", peer, query, lambda ep: ep.on_status(query))  # type: ignore[no-any-return]

    async def report_result(self, peer: str, report: Report) -> ReportReply:
        return await self._call("report_result", peer, report, lambda ep: ep.on_report(report))  # type: ignore[no-any-return]


def choose_peer(
    peers: Sequence[str], loads: Mapping[str, float], rng: random.Random, *, exclude: Sequence[str] = ()
) -> str | None:
    """Power of two choices: two peers at random, the less loaded one by ``loads``. A peer
    ``loads`` does not know counts as the average of those it knows (none known: a random
    choice), so it gets tried as often as an average peer and its own answer then says how
    loaded it is; counting it as full would keep sending everything to the first peer that
    answered (what the demo did)."""
    cands = [p for p in peers if p not in exclude]
    if not cands:
        return None
    if len(cands) == 1:
        return cands[0]
    a, b = rng.sample(cands, 2)
    known = [loads[p] for p in cands if p in loads]
    unknown = sum(known) / len(known) if known else 0.0
    la, lb = loads.get(a, unknown), loads.get(b, unknown)
    return a if la <= lb else b
