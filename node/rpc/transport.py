"""Hand-off between node processes: :class:`GrpcTransport` carries the protocol of
:mod:`node.handoff` to peers over gRPC (``fedcoord.v1.HandoffService``).

Wiring in a node process (the transport is both ends: it calls peers, and the node's server
answers them with the endpoint the node bound on it)::

    transport = GrpcTransport({"n2": "10.0.0.2:50051"}, token=token, ca_file="ca.pem",
                              cert_file="n1.pem", key_file="n1.key")
    config = NodeConfig(handoff=HandoffConfig(peers=("n2",)))
    node = await LocalNode.start("n1", redis_url, config=config, transport=transport)  # binds it
    server = NodeServer(node, ServerOptions(listen="10.0.0.1:50051", credentials=...),
                        handoff_endpoint=transport.local_endpoint)
    await server.start()
    ...
    await server.drain(); await node.close(); await transport.close()

Peers come from a static map (node id -> address) for now; the federation's view will feed it
later. One channel per peer, opened at the first call, with keepalive and a short reconnect
backoff (a restarted peer is reached again within ``reconnect_max_s``). Every call carries the
bearer token and has a deadline (``offer_timeout_s`` for offers, ``timeout_s`` for the rest).

What a failed call raises:

* no answer (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``CANCELLED``, a broken connection, the
  peer overloaded or failing internally): :class:`~node.errors.PeerUnavailableError`. What the
  peer did is unknown; the agent settles it later by asking, never by guessing. A call that ran
  out of time also drops the channel, so the next call does not wait on a dead connection.
* refused credentials (``UNAUTHENTICATED``, ``PERMISSION_DENIED``) or a server without the
  hand-off service (``UNIMPLEMENTED``): :class:`~node.errors.PeerUnavailableError` saying so,
  logged as an error once per peer (a configuration to fix, not a passing fault).
* ``FAILED_PRECONDITION`` and the other protocol refusals: :class:`~node.errors.HandoffProtocolError`.
* ``INVALID_ARGUMENT``: :class:`~node.errors.ValidationError` (the peer names the field).

Every offer reply carries the peer's load ratio: :meth:`GrpcTransport.peer_loads` returns the
last one of each peer (for ``load_ttl_s``), which the agent's power-of-two choice uses while
there is no federation view. Transfers and reports bigger than one gRPC message are sent in
several calls; the replies are merged (a part that got no answer leaves its tasks unanswered:
the agent settles them by asking).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

import grpc

from node.errors import HandoffProtocolError, NodeClosedError, PeerUnavailableError, ValidationError
from node.handoff import (
    HandoffEndpoint,
    Offer,
    OfferReply,
    Report,
    ReportReply,
    StatusQuery,
    StatusReply,
    Transfer,
    TransferReply,
)
from node.model import check_name
from node.rpc import convert as cv
from node.rpc.auth import bearer_metadata, channel_credentials, check_plaintext
from protos.fedcoord.v1 import handoff_pb2_grpc as hpb_grpc

__all__ = ["GrpcTransport", "parse_peers"]

log = logging.getLogger("fedcoord.rpc.transport")
M = TypeVar("M")

_C = grpc.StatusCode
# No usable answer: the outcome is unknown (settled later by asking).
_NO_ANSWER = frozenset(
    {
        _C.UNAVAILABLE,
        _C.DEADLINE_EXCEEDED,
        _C.CANCELLED,
        _C.RESOURCE_EXHAUSTED,
        _C.ABORTED,
        _C.UNKNOWN,
        _C.INTERNAL,
        _C.DATA_LOSS,
    }
)
# The peer will not talk to us until someone fixes a configuration (credentials, versions).
_MISCONFIGURED = {
    _C.UNAUTHENTICATED: "the peer refused this node's credentials (check the bearer token and certificates)",
    _C.PERMISSION_DENIED: "the peer does not grant this node's token the peer role",
    _C.UNIMPLEMENTED: "the server there does not serve fedcoord.v1.HandoffService",
}
_HEADROOM = 64 << 10  # room left in a message for its envelope (ids, offer id, framing)
_EMPTY: Mapping[str, float] = MappingProxyType({})


def _byte_size(m: Any) -> int:
    return int(m.ByteSize())


def _utf8_size(s: str) -> int:
    return len(s.encode())


def parse_peers(items: Sequence[str]) -> dict[str, str]:
    """``["n2=10.0.0.2:50051", ...]`` (the command line's ``--peer``) as {node id: address}."""
    peers: dict[str, str] = {}
    for item in items:
        node_id, sep, address = item.partition("=")
        if not sep or not address:
            raise ValidationError("peers", f"{item!r}: expected NODE_ID=HOST:PORT")
        check_name("peers", node_id)
        if node_id in peers:
            raise ValidationError("peers", f"{node_id!r} is given twice")
        peers[node_id] = address
    return peers


class _Closed:
    """The endpoint served while no node is bound: peers get UNAVAILABLE (retry later), never a
    protocol error."""

    alive = False

    async def _refuse(self, _msg: object) -> Any:
        raise NodeClosedError("this node is not serving hand-off now (starting or closing): retry later")

    on_offer = on_transfer = on_status = on_report = _refuse


_CLOSED = _Closed()


@dataclass(slots=True)
class _Channel:
    channel: grpc.aio.Channel
    stub: hpb_grpc.HandoffServiceStub
    loop: asyncio.AbstractEventLoop
    closer: asyncio.Task[None] | None = None


class GrpcTransport:
    """:class:`~node.handoff.HandoffTransport` over gRPC. ``peers``: node id -> address
    (``host:port``). TLS by default: ``ca_file`` (None: the system's roots), and for mutual TLS
    this node's ``cert_file`` and ``key_file``; ``insecure=True`` for plaintext, allowed on
    loopback addresses only. ``token`` goes out as ``authorization: Bearer <token>`` on every call.
    Use it from one event loop (channels belong to the loop that opened them)."""

    def __init__(
        self,
        peers: Mapping[str, str],
        *,
        token: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        insecure: bool = False,
        timeout_s: float = 5.0,
        offer_timeout_s: float = 2.0,
        keepalive_s: float = 10.0,
        reconnect_max_s: float = 2.0,
        max_message_bytes: int = 16 << 20,
        load_ttl_s: float = 30.0,
    ):
        for name, v in (
            ("timeout_s", timeout_s),
            ("offer_timeout_s", offer_timeout_s),
            ("keepalive_s", keepalive_s),
            ("reconnect_max_s", reconnect_max_s),
            ("load_ttl_s", load_ttl_s),
        ):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise ValidationError(f"transport.{name}", f"{v!r}", limit="> 0 seconds")
        if max_message_bytes < 1 << 20:
            raise ValidationError("transport.max_message_bytes", f"{max_message_bytes}", limit=">= 1 MiB")
        self._credentials: grpc.ChannelCredentials | None = None
        if insecure:
            if ca_file or cert_file or key_file:
                raise ValidationError("tls", "insecure (plaintext) and TLS files exclude each other")
        else:
            self._credentials = channel_credentials(ca_file, cert_file, key_file)
        self._peers: dict[str, str] = {}
        self._channels: dict[str, _Channel] = {}
        self._dropped: list[_Channel] = []  # channels being closed (a call on them timed out, a peer moved)
        self._metadata = bearer_metadata(token)
        self.timeout_s = float(timeout_s)
        self.offer_timeout_s = float(offer_timeout_s)
        self.load_ttl_s = float(load_ttl_s)
        self._max_bytes = max_message_bytes
        keepalive_ms = int(keepalive_s * 1000)
        self._options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            # pings only while calls are out (the server would answer idle pings with GOAWAY); the
            # timeout also bounds how long unacknowledged data may wait (TCP_USER_TIMEOUT)
            ("grpc.keepalive_time_ms", keepalive_ms),
            ("grpc.keepalive_timeout_ms", max(1000, min(keepalive_ms, int(self.timeout_s * 1000)))),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.max_pings_without_data", 0),
            # a restarted peer is found again soon (the default backoff grows to 2 minutes); the
            # connect timeout itself stays gRPC's (20 s: calls end by their own deadlines first)
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", int(reconnect_max_s * 1000)),
            ("grpc.enable_retries", 0),  # a call is tried once; the agent decides what follows
            ("grpc.use_local_subchannel_pool", 1),  # a connection of our own per peer
        ]
        self._endpoint: HandoffEndpoint | None = None
        self.node_id: str | None = None
        self._loads: dict[str, tuple[float, float]] = {}  # peer -> (load ratio, monotonic time)
        self._told: set[tuple[str, grpc.StatusCode]] = set()  # configuration errors logged already
        self.calls: dict[str, int] = {}  # per method: calls made
        self.failures: dict[str, int] = {}  # per method: calls that got no answer
        for node_id, address in peers.items():
            self.set_peer(node_id, address)

    # ------------------------------------------------------------------ this node's end

    def bind(self, node_id: str, endpoint: HandoffEndpoint) -> None:
        self.node_id = node_id
        self._endpoint = endpoint

    def unbind(self, node_id: str, endpoint: HandoffEndpoint) -> None:
        if self._endpoint is endpoint:
            self._endpoint = None

    def local_endpoint(self) -> HandoffEndpoint:
        """What the node's server answers peers with: the endpoint bound now (while none is, an
        endpoint that says UNAVAILABLE). Give this method to ``NodeServer(handoff_endpoint=...)``."""
        return self._endpoint if self._endpoint is not None else _CLOSED

    @property
    def peers(self) -> Mapping[str, str]:
        """Node id -> address of every peer this transport can reach."""
        return MappingProxyType(self._peers)

    def set_peer(self, node_id: str, address: str) -> None:
        """Reach ``node_id`` at ``address`` from now on (a new address gets a new channel)."""
        check_name("peers", node_id)
        if not isinstance(address, str) or not address.strip():
            raise ValidationError(f"peers.{node_id}", "needs an address (host:port)")
        address = address.strip()
        if self._credentials is None:
            check_plaintext(address, True)
        if self._peers.get(node_id) != address:
            self._peers[node_id] = address
            ch = self._channels.pop(node_id, None)
            if ch is not None:
                self._dropped.append(ch)  # closed by close() (calls still out on it finish first)

    def peer_loads(self) -> Mapping[str, float]:
        """The load ratio each peer reported in its last offer reply (younger than ``load_ttl_s``)."""
        if not self._loads:
            return _EMPTY
        fresh_after = time.monotonic() - self.load_ttl_s
        return {p: load for p, (load, at) in self._loads.items() if at >= fresh_after}

    # ------------------------------------------------------------------ calls

    async def offer(self, peer: str, offer: Offer) -> OfferReply:
        m = await self._call(peer, "Offer", cv.offer_to_pb(offer), self.offer_timeout_s)
        reply, load = cv.offer_reply_from_pb(m)
        if load is not None and math.isfinite(load) and load >= 0:
            self._loads[peer] = (load, time.monotonic())
        return reply

    async def transfer(self, peer: str, transfer: Transfer) -> TransferReply:
        replies = [
            cv.transfer_reply_from_pb(m)
            for m in await self._send(peer, "Transfer", cv.transfer_to_pb(transfer), "records", _byte_size)
        ]
        if len(replies) == 1:
            return replies[0]
        return TransferReply(
            tuple(t for r in replies for t in r.owned), {t: why for r in replies for t, why in r.refused.items()}
        )

    async def task_status(self, peer: str, query: StatusQuery) -> StatusReply:
        replies = [
            cv.status_reply_from_pb(m)
            for m in await self._send(peer, "TaskStatus", cv.status_query_to_pb(query), "task_ids", _utf8_size)
        ]
        return replies[0] if len(replies) == 1 else StatusReply({t: s for r in replies for t, s in r.statuses.items()})

    async def report_result(self, peer: str, report: Report) -> ReportReply:
        replies = [
            cv.report_reply_from_pb(m)
            for m in await self._send(peer, "ReportResult", cv.report_to_pb(report), "outcomes", _byte_size)
        ]
        if len(replies) == 1:
            return replies[0]
        return ReportReply(
            tuple(t for r in replies for t in r.recorded), {t: why for r in replies for t, why in r.rejected.items()}
        )

    async def close(self) -> None:
        """Close every channel (calls still out end with CANCELLED)."""
        channels, self._channels = list(self._channels.values()), {}
        for ch in list(self._dropped):
            if ch.closer is not None:
                ch.closer.cancel()
            channels.append(ch)
        await asyncio.gather(*(c.channel.close() for c in channels), return_exceptions=True)

    # ------------------------------------------------------------------ plumbing

    def _channel(self, peer: str) -> _Channel:
        loop = asyncio.get_running_loop()
        ch = self._channels.get(peer)
        if ch is not None and ch.loop is loop:
            return ch
        address = self._peers.get(peer)
        if address is None:
            raise PeerUnavailableError(f"no address is configured for peer {peer!r}")
        if self._credentials is None:
            channel = grpc.aio.insecure_channel(address, options=self._options)
        else:
            channel = grpc.aio.secure_channel(address, self._credentials, options=self._options)
        ch = _Channel(channel, hpb_grpc.HandoffServiceStub(channel), loop)
        self._channels[peer] = ch
        return ch

    def _drop(self, peer: str, ch: _Channel) -> None:
        """Forget a channel whose connection may be dead (a call on it timed out): the next call
        opens a new one. Calls still out on it keep their own deadlines; it is closed after."""
        if self._channels.get(peer) is ch:
            del self._channels[peer]
        if ch.closer is not None:
            return

        async def close_later() -> None:
            await asyncio.sleep(self.timeout_s)  # calls still out on it end by their deadline
            await ch.channel.close()

        ch.closer = asyncio.get_running_loop().create_task(close_later())
        self._dropped.append(ch)
        ch.closer.add_done_callback(lambda _t: self._dropped.remove(ch))

    async def _call(self, peer: str, method: str, request: Any, timeout: float) -> Any:
        self.calls[method] = self.calls.get(method, 0) + 1
        ch = self._channel(peer)
        rpc: Callable[..., Awaitable[Any]] = getattr(ch.stub, method)
        try:
            return await rpc(request, timeout=timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as e:
            self.failures[method] = self.failures.get(method, 0) + 1
            if e.code() is _C.DEADLINE_EXCEEDED:
                self._drop(peer, ch)
            raise self._error(peer, method, e.code(), e.details() or "") from None
        except grpc.aio.UsageError as e:  # the channel was closed under the call
            self.failures[method] = self.failures.get(method, 0) + 1
            raise PeerUnavailableError(f"{method} to {peer!r}: the channel was closed ({e})") from None

    def _error(self, peer: str, method: str, code: grpc.StatusCode, details: str) -> Exception:
        where = f"{method} to peer {peer!r} at {self._peers.get(peer)}"
        if code in _NO_ANSWER:
            log.info("%s: no answer (%s: %s)", where, code.name, details)
            if code in (_C.INTERNAL, _C.UNKNOWN, _C.DATA_LOSS):
                log.warning("%s failed on the peer's side (%s: %s)", where, code.name, details)
            return PeerUnavailableError(f"{where}: no answer ({code.name}: {details})")
        why = _MISCONFIGURED.get(code)
        if why is not None:
            if (peer, code) not in self._told:
                self._told.add((peer, code))
                log.error("%s: %s (%s: %s)", where, why, code.name, details)
            return PeerUnavailableError(f"{where}: {why} ({code.name}: {details})")
        if code is _C.INVALID_ARGUMENT:
            return ValidationError(f"peer {peer}", f"refused our {method}: {details}")
        return HandoffProtocolError(f"{where} refused the call ({code.name}): {details}")

    async def _send(self, peer: str, method: str, req: Any, field: str, size_of: Callable[[Any], int]) -> list[Any]:
        """Call ``method`` with ``req``, in parts when it is bigger than one message (split on the
        repeated ``field``); the replies. If the first part gets no answer, that is the call's
        error; if a later one does not, the replies so far are the answer (what was in the rest
        stays unanswered, and the agent settles it by asking)."""
        timeout = self.timeout_s
        parts = self._split(getattr(req, field), size_of)
        if len(parts) == 1:
            return [await self._call(peer, method, req, timeout)]
        head = type(req)()
        head.CopyFrom(req)
        head.ClearField(field)
        replies = []
        for i, items in enumerate(parts):
            part = type(req)()
            part.CopyFrom(head)
            getattr(part, field).extend(items)
            try:
                replies.append(await self._call(peer, method, part, timeout))
            except PeerUnavailableError as e:
                if i == 0:
                    raise
                log.warning("%s to %s: part %d of %d got no answer (%s)", method, peer, i + 1, len(parts), e)
                break
        return replies

    def _split(self, items: Sequence[M], size_of: Callable[[M], int]) -> list[list[M]]:
        """``items`` in runs that each fit in one message (``size_of``: an item's encoded size)."""
        limit = self._max_bytes - _HEADROOM
        parts: list[list[M]] = [[]]
        size = 0
        for item in items:
            n = size_of(item) + 6  # and the field's tag and length
            if parts[-1] and size + n > limit:
                parts.append([])
                size = 0
            parts[-1].append(item)
            size += n
        return parts
