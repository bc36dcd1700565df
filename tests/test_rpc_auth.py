"""Bearer tokens, roles and TLS on real gRPC servers (127.0.0.1, free ports).

The servers register the standard health and reflection services and generic handlers under the
real method names of fedcoord.v1.NodeService and HandoffService (built from the generated
descriptors, so every method of the protocol is exercised), behind :class:`AuthInterceptor`."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from node.errors import ValidationError
from node.rpc.auth import (
    METHOD_ROLES,
    AuthInterceptor,
    Role,
    TlsConfig,
    Tokens,
    bearer_metadata,
    caller_roles,
    channel_credentials,
    check_plaintext,
    described_methods,
    is_loopback,
    server_credentials,
)
from node.rpc.certs import make_cluster
from protos.fedcoord.v1 import handoff_pb2, node_pb2

T = TypeVar("T")
SUBMIT = "/fedcoord.v1.NodeService/Submit"
WORK = "/fedcoord.v1.NodeService/Work"
WATCH = "/fedcoord.v1.NodeService/Watch"
STATS = "/fedcoord.v1.NodeService/Stats"
TRANSFER = "/fedcoord.v1.HandoffService/Transfer"
SUMMARY = "/fedcoord.v1.NodeService/Summary"
APPLY_FEDERATION = "/fedcoord.v1.NodeService/ApplyFederation"
EXTRA = "/test.Extra/Ping"  # served, but not in METHOD_ROLES: admin only
OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def _methods() -> dict[str, MethodDescriptor]:
    return {
        f"/{service.full_name}/{m.name}": m
        for module in (node_pb2, handoff_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for m in service.methods
    }


def _classes(m: MethodDescriptor) -> tuple[Any, Any]:
    return message_factory.GetMessageClass(m.input_type), message_factory.GetMessageClass(m.output_type)


def _handler(m: MethodDescriptor) -> grpc.RpcMethodHandler:
    """A handler of the method's kind; every reply carries the caller's roles where it can (Submit)."""
    req_cls, rep_cls = _classes(m)

    def reply() -> Any:
        if rep_cls is node_pb2.SubmitReply:
            return node_pb2.SubmitReply(task_ids=[r.value for r in Role if r in caller_roles()])
        return rep_cls()

    async def unary(_request: Any, _context: Any) -> Any:
        return reply()

    async def unary_stream(_request: Any, _context: Any) -> AsyncIterator[Any]:
        yield reply()

    async def stream_unary(requests: AsyncIterator[Any], _context: Any) -> Any:
        async for _ in requests:
            pass
        return reply()

    async def stream_stream(requests: AsyncIterator[Any], _context: Any) -> AsyncIterator[Any]:
        async for _ in requests:
            yield reply()

    kinds = {
        (False, False): (grpc.unary_unary_rpc_method_handler, unary),
        (False, True): (grpc.unary_stream_rpc_method_handler, unary_stream),
        (True, False): (grpc.stream_unary_rpc_method_handler, stream_unary),
        (True, True): (grpc.stream_stream_rpc_method_handler, stream_stream),
    }
    make, fn = kinds[(m.client_streaming, m.server_streaming)]
    return make(fn, request_deserializer=req_cls.FromString, response_serializer=rep_cls.SerializeToString)


def _generic_handlers() -> list[grpc.GenericRpcHandler]:
    by_service: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
    for m in _methods().values():
        by_service.setdefault(m.containing_service.full_name, {})[m.name] = _handler(m)
    handlers = [grpc.method_handlers_generic_handler(s, h) for s, h in by_service.items()]

    async def ping(request: bytes, _context: Any) -> bytes:
        return request

    handlers.append(
        grpc.method_handlers_generic_handler("test.Extra", {"Ping": grpc.unary_unary_rpc_method_handler(ping)})
    )
    return handlers


@contextlib.asynccontextmanager
async def serving(tokens: Tokens | None, credentials: grpc.ServerCredentials | None = None) -> AsyncIterator[int]:
    """A real server on 127.0.0.1 (a free port, returned) with the auth interceptor when ``tokens``."""
    server = grpc.aio.server(interceptors=[AuthInterceptor(tokens)] if tokens is not None else None)
    server.add_generic_rpc_handlers(_generic_handlers())
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
    names = [*(s.full_name for m in (node_pb2, handoff_pb2) for s in m.DESCRIPTOR.services_by_name.values())]
    reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    assert port > 0
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


async def call(channel: grpc.aio.Channel, method: str, token: str | None) -> grpc.StatusCode:
    """Call ``method`` (any kind) with one default request; the status code it ends with."""
    md = bearer_metadata(token)
    try:
        if method == EXTRA:
            await channel.unary_unary(method)(b"ping", metadata=md, timeout=10)
            return OK
        m = _methods()[method]
        req_cls, rep_cls = _classes(m)
        ser, de = req_cls.SerializeToString, rep_cls.FromString
        req = req_cls()
        if not m.client_streaming and not m.server_streaming:
            await channel.unary_unary(method, ser, de)(req, metadata=md, timeout=10)
        elif not m.client_streaming:
            async for _ in channel.unary_stream(method, ser, de)(req, metadata=md, timeout=10):
                pass
        elif not m.server_streaming:
            await channel.stream_unary(method, ser, de)(iter([req]), metadata=md, timeout=10)
        else:
            async for _ in channel.stream_stream(method, ser, de)(iter([req]), metadata=md, timeout=10):
                pass
    except grpc.aio.AioRpcError as e:
        return e.code()
    return OK


async def rpc_error(coro: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    return info.value


def with_channel(tokens: Tokens | None, body: Callable[[grpc.aio.Channel], Awaitable[T]], credentials: Any = None) -> T:
    async def main() -> T:
        async with serving(tokens, credentials) as port, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            return await body(ch)

    return run(main())


# ------------------------------------------------------------------------------------- the roles table


def test_every_method_of_the_protocol_has_roles_and_admin_may_call_it() -> None:
    methods = described_methods()
    assert set(methods) == set(_methods())
    missing = [m for m in methods if m not in METHOD_ROLES]
    assert not missing, f"RPCs without an entry in node.rpc.auth METHOD_ROLES: {missing}"
    stale = sorted(set(METHOD_ROLES) - set(methods))
    assert not stale, f"METHOD_ROLES entries for methods the protocol no longer has: {stale}"
    for method, roles in METHOD_ROLES.items():
        assert Role.ADMIN in roles, method
        assert roles - {Role.ADMIN}, f"{method}: only admin"


def test_roles_keep_workers_from_submitting_and_clients_from_transferring() -> None:
    assert Role.WORKER not in METHOD_ROLES[SUBMIT]
    assert Role.CLIENT not in METHOD_ROLES[TRANSFER]
    assert Role.CLIENT in METHOD_ROLES[SUBMIT]
    assert METHOD_ROLES[WORK] == {Role.WORKER, Role.ADMIN}
    # raw stats stay with the node's own callers: not to peers, not to the federation
    assert METHOD_ROLES[STATS] == {Role.CLIENT, Role.WORKER, Role.ADMIN}
    for name in ("Offer", "Transfer", "TaskStatus", "ReportResult"):
        assert METHOD_ROLES[f"/fedcoord.v1.HandoffService/{name}"] == {Role.PEER, Role.ADMIN}


def test_the_federation_role_takes_summaries_and_applies_views_only() -> None:
    assert METHOD_ROLES[SUMMARY] == METHOD_ROLES[APPLY_FEDERATION] == {Role.FEDERATION, Role.ADMIN}
    assert Role.FEDERATION not in METHOD_ROLES[STATS]  # raw stats would bypass the privacy filter
    federation = {m for m, roles in METHOD_ROLES.items() if Role.FEDERATION in roles}
    assert federation == {SUMMARY, APPLY_FEDERATION}


# -------------------------------------------------------------------------------------------- tokens


def test_tokens_from_mapping_accepts_a_token_or_a_list_and_grants_roles() -> None:
    shared = "s" * 20
    tokens = Tokens.from_mapping({"client": ["c" * 16, shared], "worker": "w" * 16, "peer": [shared]})
    assert tokens.client == ("c" * 16, shared)
    assert tokens.worker == ("w" * 16,)
    assert tokens.admin == ()
    assert tokens.roles_of("c" * 16) == {Role.CLIENT}
    assert tokens.roles_of(shared) == {Role.CLIENT, Role.PEER}
    assert tokens.roles_of("nope" * 8) == frozenset()
    assert tokens.roles_of("") == frozenset()
    assert tokens.roles_of("c" * 15) == frozenset()
    assert tokens.roles_of("ç" * 20) == frozenset()  # not ASCII: no match, no error


@pytest.mark.parametrize(
    ("mapping", "field", "words"),
    [
        ({"client": "short"}, "tokens.client[0]", "too short"),
        ({"boss": "x" * 16}, "tokens.boss", "unknown role"),
        ({"client": [123]}, "tokens.client[0]", "string"),
        ({"client": ["has a space 1234"]}, "tokens.client[0]", "printable ASCII"),
        ({"client": 5}, "tokens.client", "list of tokens"),
        ({"client": {"x" * 16: "y" * 16}}, "tokens.client", "list of tokens"),
        ({"client": []}, "tokens", "no tokens"),
        ({}, "tokens", "no tokens"),
    ],
)
def test_tokens_from_mapping_rejects_bad_input_naming_the_field(mapping: Any, field: str, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        Tokens.from_mapping(mapping)
    assert info.value.field == field
    assert words in str(info.value)


def test_generated_tokens_are_distinct_and_survive_toml(tmp_path: Path) -> None:
    a, b = Tokens.generate(), Tokens.generate()
    every = [t for toks in (*a.by_role.values(), *b.by_role.values()) for t in toks]
    assert len(every) == 2 * len(Role) == len(set(every))
    assert all(len(t) >= 32 for t in every)
    path = a.save(tmp_path / "tokens.toml")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert Tokens.load(path) == a
    odd = Tokens.from_mapping({"worker": 'a"b\\c' + "x" * 16})  # quotes and backslashes are escaped
    odd.save(tmp_path / "odd.toml")
    assert Tokens.load(tmp_path / "odd.toml") == odd
    only_peer = Tokens.generate([Role.PEER])
    assert [role for role, toks in only_peer.by_role.items() if toks] == [Role.PEER]
    assert set(a.by_role) == set(Role)  # every role has its line in tokens.toml


def test_a_federation_token_is_read_from_tokens_toml(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text('[tokens]\nfederation = ["' + "f" * 24 + '"]\nclient = "' + "c" * 24 + '"\n')
    tokens = Tokens.load(path)
    assert tokens.federation == ("f" * 24,)
    assert tokens.roles_of("f" * 24) == {Role.FEDERATION}
    assert "federation = " in tokens.to_toml()
    with pytest.raises(ValidationError, match="known roles: client, worker, peer, federation, admin"):
        Tokens.from_mapping({"flower": "x" * 16})


def test_tokens_never_show_in_repr() -> None:
    tokens = Tokens.generate()
    text = repr(tokens)
    assert all(t not in text for toks in tokens.by_role.values() for t in toks)


def test_loading_tokens_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="cannot read"):
        Tokens.load(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[tokens\n")
    with pytest.raises(ValidationError, match="not valid TOML"):
        Tokens.load(bad)
    bad.write_text('client = ["xxxxxxxxxxxxxxxxxxxx"]\n')
    with pytest.raises(ValidationError, match=r"no \[tokens\] table"):
        Tokens.load(bad)
    bad.write_text('[tokens]\nclient = ["short"]\n')
    with pytest.raises(ValidationError, match="too short") as info:
        Tokens.load(bad)
    assert str(bad) in str(info.value)


def test_bearer_metadata() -> None:
    assert bearer_metadata(None) == ()
    assert bearer_metadata("abc") == (("authorization", "Bearer abc"),)


# ------------------------------------------------------------------------------- the interceptor, live


def test_every_method_answers_each_role_as_the_table_says() -> None:
    tokens = Tokens.generate()

    async def body(ch: grpc.aio.Channel) -> dict[tuple[str, str], grpc.StatusCode]:
        got = {}
        for method in described_methods():
            got[(method, "none")] = await call(ch, method, None)
            got[(method, "unknown")] = await call(ch, method, "u" * 32)
            for role, toks in tokens.by_role.items():
                got[(method, role.value)] = await call(ch, method, toks[0])
        return got

    got = with_channel(tokens, body)
    expected = {}
    for method in described_methods():
        expected[(method, "none")] = expected[(method, "unknown")] = UNAUTHENTICATED
        for role in Role:
            expected[(method, role.value)] = OK if role in METHOD_ROLES[method] else DENIED
    assert got == expected


def test_denials_say_why() -> None:
    tokens = Tokens.generate()

    async def body(ch: grpc.aio.Channel) -> None:
        submit = ch.unary_unary(SUBMIT, node_pb2.SubmitRequest.SerializeToString, node_pb2.SubmitReply.FromString)
        e = await rpc_error(submit(node_pb2.SubmitRequest(), timeout=10))
        assert (e.code(), e.details()) == (UNAUTHENTICATED, "missing bearer token")
        e = await rpc_error(submit(node_pb2.SubmitRequest(), metadata=bearer_metadata("x" * 40), timeout=10))
        assert (e.code(), e.details()) == (UNAUTHENTICATED, "unknown token")
        e = await rpc_error(submit(node_pb2.SubmitRequest(), metadata=(("authorization", "Basic abc"),), timeout=10))
        assert (e.code(), e.details()) == (UNAUTHENTICATED, "missing bearer token")
        e = await rpc_error(submit(node_pb2.SubmitRequest(), metadata=bearer_metadata(tokens.worker[0]), timeout=10))
        assert e.code() == DENIED
        assert e.details() == f"{SUBMIT} needs the client or admin role; this token has worker"
        transfer = ch.unary_unary(
            TRANSFER, handoff_pb2.TransferRequest.SerializeToString, handoff_pb2.TransferReply.FromString
        )
        e = await rpc_error(transfer(handoff_pb2.TransferRequest(), metadata=bearer_metadata(tokens.client[0])))
        assert e.code() == DENIED
        assert "needs the peer or admin role" in (e.details() or "")

    with_channel(tokens, body)


def test_the_handler_sees_the_callers_roles_and_lowercase_bearer_is_accepted() -> None:
    shared = "s" * 32
    tokens = Tokens.from_mapping({"client": [shared], "peer": [shared], "admin": ["a" * 32]})

    async def body(ch: grpc.aio.Channel) -> list[list[str]]:
        submit = ch.unary_unary(SUBMIT, node_pb2.SubmitRequest.SerializeToString, node_pb2.SubmitReply.FromString)
        out = []
        for md in (bearer_metadata(shared), (("authorization", "bearer " + "a" * 32),)):
            reply = await submit(node_pb2.SubmitRequest(), metadata=md, timeout=10)
            out.append(list(reply.task_ids))
        return out

    assert with_channel(tokens, body) == [["client", "peer"], ["admin"]]


def test_streams_are_denied_with_the_right_status() -> None:
    tokens = Tokens.generate()

    async def body(ch: grpc.aio.Channel) -> None:
        work = ch.stream_stream(WORK, node_pb2.WorkerMessage.SerializeToString, node_pb2.NodeMessage.FromString)
        for md, code in [((), UNAUTHENTICATED), (bearer_metadata(tokens.client[0]), DENIED)]:
            stream = work(metadata=md, timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in stream:
                    pass
            assert info.value.code() == code
        stream = work(metadata=bearer_metadata(tokens.worker[0]), timeout=10)
        await stream.write(node_pb2.WorkerMessage())
        assert isinstance(await stream.read(), node_pb2.NodeMessage)
        await stream.done_writing()
        assert await stream.code() == OK
        watch = ch.unary_stream(WATCH, node_pb2.WatchRequest.SerializeToString, node_pb2.EventBatch.FromString)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in watch(node_pb2.WatchRequest(), metadata=bearer_metadata(tokens.worker[0]), timeout=10):
                pass
        assert info.value.code() == DENIED
        got = [b async for b in watch(node_pb2.WatchRequest(), metadata=bearer_metadata(tokens.client[0]))]
        assert len(got) == 1

    with_channel(tokens, body)


def test_health_is_open_reflection_needs_a_token_other_methods_need_admin() -> None:
    tokens = Tokens.generate()

    async def reflect(ch: grpc.aio.Channel, token: str | None) -> list[str]:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = [r async for r in stub.ServerReflectionInfo(iter([req]), metadata=bearer_metadata(token), timeout=10)]
        return [s.name for s in replies[0].list_services_response.service]

    async def body(ch: grpc.aio.Channel) -> None:
        health = health_pb2_grpc.HealthStub(ch)
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert (await rpc_error(reflect(ch, None))).code() == UNAUTHENTICATED
        assert "fedcoord.v1.NodeService" in await reflect(ch, tokens.worker[0])
        assert await call(ch, EXTRA, None) == UNAUTHENTICATED
        assert await call(ch, EXTRA, tokens.client[0]) == DENIED
        assert await call(ch, EXTRA, tokens.admin[0]) == OK
        unknown = ch.unary_unary("/fedcoord.v1.NodeService/NoSuchMethod")
        assert (await rpc_error(unknown(b"", timeout=10))).code() == grpc.StatusCode.UNIMPLEMENTED
        with_token = unknown(b"", metadata=bearer_metadata(tokens.admin[0]), timeout=10)
        assert (await rpc_error(with_token)).code() == grpc.StatusCode.UNIMPLEMENTED

    with_channel(tokens, body)


def test_without_tokens_no_interceptor_checks_anything() -> None:
    async def body(ch: grpc.aio.Channel) -> list[grpc.StatusCode]:
        return [await call(ch, SUBMIT, None), await call(ch, TRANSFER, None), await call(ch, WORK, None)]

    assert with_channel(None, body) == [OK, OK, OK]


# ------------------------------------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cluster")
    make_cluster(out, ["node", "client"], ["127.0.0.1", "localhost"])
    return out


@pytest.fixture(scope="module")
def other_cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("other")
    make_cluster(out, ["node", "client"])
    return out


async def tls_status(
    port: int, creds: grpc.ChannelCredentials, *, host: str = "localhost", token: str | None = None, **options: str
) -> grpc.StatusCode:
    opts = [(f"grpc.{k}", v) for k, v in options.items()]
    async with grpc.aio.secure_channel(f"{host}:{port}", creds, options=opts) as ch:
        return await call(ch, SUBMIT, token)


def test_tls_server_and_client_with_a_token(cluster: Path) -> None:
    tokens = Tokens.load(cluster / "tokens.toml")
    creds = server_credentials(TlsConfig(cluster / "node.pem", cluster / "node.key"))

    async def main() -> list[grpc.StatusCode]:
        async with serving(tokens, creds) as port:
            trusting = channel_credentials(cluster / "ca.pem")
            return [
                await tls_status(port, trusting, host="localhost", token=tokens.client[0]),
                await tls_status(port, trusting, host="127.0.0.1", token=tokens.client[0]),
                await tls_status(port, trusting, token=tokens.worker[0]),
                await tls_status(port, trusting, token=None),
            ]

    assert run(main()) == [OK, OK, DENIED, UNAUTHENTICATED]


def test_tls_client_refuses_a_server_of_another_ca_or_another_name(cluster: Path, other_cluster: Path) -> None:
    creds = server_credentials(TlsConfig(cluster / "node.pem", cluster / "node.key"))

    async def main() -> list[grpc.StatusCode]:
        async with serving(None, creds) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
                plaintext = await call(plain, SUBMIT, None)
            return [
                await tls_status(port, channel_credentials(other_cluster / "ca.pem")),
                await tls_status(port, channel_credentials(cluster / "ca.pem"), ssl_target_name_override="elsewhere"),
                plaintext,
                await tls_status(port, channel_credentials(cluster / "ca.pem"), ssl_target_name_override="localhost"),
            ]

    assert run(main()) == [grpc.StatusCode.UNAVAILABLE] * 3 + [OK]


def test_mutual_tls_needs_a_client_certificate_of_the_ca(cluster: Path, other_cluster: Path) -> None:
    tls = TlsConfig(cluster / "node.pem", cluster / "node.key", cluster / "ca.pem", require_client_cert=True)
    creds = server_credentials(tls)

    async def main() -> list[grpc.StatusCode]:
        async with serving(None, creds) as port:
            ca = cluster / "ca.pem"
            return [
                await tls_status(port, channel_credentials(ca)),
                await tls_status(
                    port, channel_credentials(ca, other_cluster / "client.pem", other_cluster / "client.key")
                ),
                await tls_status(port, channel_credentials(ca, cluster / "client.pem", cluster / "client.key")),
                await tls_status(port, channel_credentials(ca, cluster / "node.pem", cluster / "node.key")),
            ]

    assert run(main()) == [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE, OK, OK]


def test_tls_files_that_cannot_work_fail_clearly(cluster: Path, other_cluster: Path, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="cannot read") as info:
        server_credentials(TlsConfig(tmp_path / "absent.pem", cluster / "node.key"))
    assert info.value.field == "tls cert"
    assert "absent.pem" in str(info.value)
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    with pytest.raises(ValidationError, match="not a PEM file"):
        server_credentials(TlsConfig(tmp_path / "junk.pem", cluster / "node.key"))
    with pytest.raises(ValidationError, match="does not belong to"):
        server_credentials(TlsConfig(cluster / "node.pem", other_cluster / "node.key"))
    with pytest.raises(ValidationError, match="does not belong to"):
        channel_credentials(cluster / "ca.pem", cluster / "client.pem", cluster / "node.key")
    with pytest.raises(ValidationError, match="needs the CA"):
        TlsConfig(cluster / "node.pem", cluster / "node.key", require_client_cert=True)
    with pytest.raises(ValidationError, match="both its certificate and its key"):
        channel_credentials(cluster / "ca.pem", cluster / "client.pem")
    with pytest.raises(ValidationError, match="cannot read") as info:
        channel_credentials(tmp_path / "no-ca.pem")
    assert info.value.field == "tls ca"


# ------------------------------------------------------------------------------------------ plaintext


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.8.9.10:1", True),
        ("[::1]:50051", True),
        ("::1", True),
        ("localhost:50051", True),
        ("LOCALHOST", True),
        ("dns:///localhost:50051", True),
        ("ipv4:127.0.0.1:1,127.0.0.2:2", True),
        ("unix:/tmp/node.sock", True),
        ("[::ffff:127.0.0.1]:1", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        (":50051", False),
        ("10.0.0.5:50051", False),
        ("node1.example:50051", False),
        ("localhost.example.com:1", False),
        ("ipv4:127.0.0.1:1,10.0.0.1:2", False),
        ("dns:///node1:50051", False),
    ],
)
def test_is_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_check_plaintext_allows_only_loopback_and_only_when_asked() -> None:
    check_plaintext("127.0.0.1:50051", allow_insecure=True)
    check_plaintext("[::1]:50051", allow_insecure=True)
    check_plaintext("localhost:50051", allow_insecure=True)
    with pytest.raises(ValidationError, match="TLS is required") as info:
        check_plaintext("127.0.0.1:50051", allow_insecure=False)
    assert "--insecure" in str(info.value)
    with pytest.raises(ValidationError, match="only on a loopback address") as info:
        check_plaintext("0.0.0.0:50051", allow_insecure=True)
    assert "0.0.0.0:50051" in str(info.value)
