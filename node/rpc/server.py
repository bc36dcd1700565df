"""A node served over gRPC: the node and hand-off services, health checking and reflection on
one port, around a running :class:`~node.runtime.node.LocalNode`.

:class:`NodeServer` is the building block (tests and ``fedcoord node`` use it): give it a node
and where to listen; it owns neither the node's configuration nor its process. ``drain()`` stops
taking work (health says NOT_SERVING; submits, new worker streams and waits are refused with
UNAVAILABLE; waiting claims and watches end; worker streams get no new leases and end once their
workers have reported on what they hold), lets the calls in flight finish, then stops the server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from node.handoff import HandoffEndpoint
from node.rpc.servicers import HandoffServicer, NodeServicer, ServiceLimits, Undecodable
from node.runtime.node import LocalNode
from protos.fedcoord.v1 import handoff_pb2, node_pb2

__all__ = ["SERVICE_NAMES", "NodeServer", "ServerOptions"]

log = logging.getLogger("fedcoord.rpc.server")

NODE_SERVICE = node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name
HANDOFF_SERVICE = handoff_pb2.DESCRIPTOR.services_by_name["HandoffService"].full_name
SERVICE_NAMES = (NODE_SERVICE, HANDOFF_SERVICE)


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """How the server listens and what it takes. ``credentials`` None means plaintext (the caller
    decides whether that is allowed: see :func:`node.rpc.auth.check_plaintext`)."""

    listen: str = "127.0.0.1:0"
    credentials: grpc.ServerCredentials | None = None
    interceptors: Sequence[grpc.aio.ServerInterceptor] = ()
    max_message_bytes: int = 16 << 20
    max_concurrent_rpcs: int | None = 10_000  # beyond: RESOURCE_EXHAUSTED from gRPC itself
    limits: ServiceLimits = field(default_factory=ServiceLimits)
    keepalive_s: float = 20.0  # pings on idle connections, so dead peers and workers are noticed


class NodeServer:
    def __init__(
        self,
        node: LocalNode,
        options: ServerOptions | None = None,
        *,
        handoff_endpoint: Callable[[], HandoffEndpoint | None] | None = None,
    ):
        self.node = node
        self.options = options or ServerOptions()
        limits = self.options.limits
        reply_bytes = min(limits.max_reply_bytes, self.options.max_message_bytes // 2)
        self.servicer = NodeServicer(node, dataclasses.replace(limits, max_reply_bytes=reply_bytes))
        self._handoff_endpoint = handoff_endpoint or (lambda: node.handoff)
        self.health = health.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self.port = 0
        self._stopped = False

    @property
    def address(self) -> str:
        if self.options.listen.startswith("unix:"):
            return self.options.listen
        host = self.options.listen.rsplit(":", 1)[0]
        if host in ("0.0.0.0", "[::]", ""):
            host = "127.0.0.1"
        return f"{host}:{self.port}"

    async def start(self) -> None:
        o = self.options
        keepalive_ms = int(o.keepalive_s * 1000)
        server = grpc.aio.server(
            interceptors=list(o.interceptors),
            options=[
                ("grpc.max_receive_message_length", o.max_message_bytes),
                ("grpc.max_send_message_length", o.max_message_bytes),
                ("grpc.keepalive_time_ms", keepalive_ms),
                ("grpc.keepalive_timeout_ms", max(1000, keepalive_ms // 2)),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=o.max_concurrent_rpcs,
        )
        _add_service(server, node_pb2.DESCRIPTOR.services_by_name["NodeService"], self.servicer)
        handoff = HandoffServicer(
            self._handoff_endpoint, lambda: self.node.load().ratio, draining=lambda: self.servicer.draining
        )
        _add_service(server, handoff_pb2.DESCRIPTOR.services_by_name["HandoffService"], handoff)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        if o.credentials is None:
            port = server.add_insecure_port(o.listen)
        else:
            port = server.add_secure_port(o.listen, o.credentials)
        if port == 0:
            raise OSError(f"cannot listen on {o.listen}")
        self.port = port
        await server.start()
        self._server = server
        for name in (*SERVICE_NAMES, ""):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.debug("node %s: gRPC on %s", self.node.node_id, self.address)

    async def drain(self, grace_s: float = 30.0) -> None:
        """Stop taking work, let calls in flight finish (up to ``grace_s``), stop serving. The
        node itself stays open: close it after (that finishes the flush and lets go of the lock).
        Once drained, later calls (and :meth:`stop`) return at once."""
        if self._stopped:
            return
        self.servicer.start_draining()
        for name in (*SERVICE_NAMES, ""):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
        # gRPC's stop returns before the worker streams' handlers have run their ends: wait for
        # them, so that what their workers held is back in line before the node closes
        try:
            await asyncio.wait_for(self.servicer.sessions_closed.wait(), 10.0)
        except TimeoutError:
            log.warning("node %s: %d worker sessions still closing", self.node.node_id, len(self.servicer.sessions))
        self._stopped = True

    async def stop(self) -> None:
        """Stop at once (calls in flight are cancelled)."""
        await self.drain(0)

    async def __aenter__(self) -> NodeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.drain(1.0)


_KINDS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _decoder(cls: type[Any]) -> Callable[[bytes], Any]:
    """Parse a request; bytes that do not parse become an :class:`Undecodable` for the servicer
    to answer with INVALID_ARGUMENT (gRPC itself would answer UNKNOWN)."""
    parse = cls.FromString

    def decode(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as e:
            return Undecodable(cls.DESCRIPTOR.name, str(e))

    return decode


def _add_service(server: grpc.aio.Server, service: ServiceDescriptor, servicer: object) -> None:
    """What the generated ``add_*Servicer_to_server`` does, from the service's descriptor, with
    request decoding that reports bad bytes as bad input."""
    handlers = {}
    for m in service.methods:
        request = message_factory.GetMessageClass(m.input_type)
        reply = message_factory.GetMessageClass(m.output_type)
        handlers[m.name] = _KINDS[(m.client_streaming, m.server_streaming)](
            getattr(servicer, m.name),
            request_deserializer=_decoder(request),
            response_serializer=reply.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)
