"""Who may call what on a node's gRPC services, and over which kind of channel.

* **Roles and tokens.** Every call carries ``authorization: Bearer <token>``. A token grants one
  or more roles (:class:`Role`: clients submit and watch, workers claim and report, peers hand
  work over, the federation (the Flower ClientApp) reads summaries and applies views, admins may
  call everything); :data:`METHOD_ROLES` says which roles each method
  accepts. :class:`Tokens` holds the accepted tokens (``tokens.toml``), :class:`AuthInterceptor`
  checks them on every call (``UNAUTHENTICATED`` without a known token, ``PERMISSION_DENIED``
  naming the role needed). Health checks are open (probes carry no token); reflection takes any
  valid token; a method this module has no entry for takes the admin role only (deny by default).
* **TLS.** :func:`server_credentials` and :func:`channel_credentials` build gRPC credentials from
  PEM files (:class:`TlsConfig`; mutual TLS with ``require_client_cert``), failing with a
  :class:`~node.errors.ValidationError` that names the file when one is missing or unusable.
* **Plaintext** only on a loopback address and only when asked: :func:`check_plaintext`.

Typical server wiring (auth disabled means no interceptor at all)::

    interceptors = [AuthInterceptor(tokens)] if tokens is not None else []
    server = grpc.aio.server(interceptors=interceptors)
    ...
    if tls is None:
        check_plaintext(address, allow_insecure)
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, server_credentials(tls))
"""

from __future__ import annotations

import contextvars
import hmac
import ipaddress
import json
import os
import secrets
import tomllib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

import grpc

from node.errors import ValidationError

__all__ = [
    "HEALTH_PREFIX",
    "METHOD_ROLES",
    "MIN_TOKEN_LENGTH",
    "REFLECTION_PREFIX",
    "AuthInterceptor",
    "Role",
    "TlsConfig",
    "Tokens",
    "bearer_metadata",
    "caller_roles",
    "channel_credentials",
    "check_plaintext",
    "described_methods",
    "is_loopback",
    "is_loopback_host",
    "server_credentials",
]

MIN_TOKEN_LENGTH = 16
HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIX = "/grpc.reflection."


class Role(StrEnum):
    """What a caller is: a role is granted by the token it presents."""

    CLIENT = "client"
    WORKER = "worker"
    PEER = "peer"
    FEDERATION = "federation"  # the Flower ClientApp: summaries out, views in (and stats)
    ADMIN = "admin"


_C, _W, _P, _F = Role.CLIENT, Role.WORKER, Role.PEER, Role.FEDERATION

# Service -> method -> the roles that may call it (admin is added to every entry below).
_ROLES: dict[str, dict[str, tuple[Role, ...]]] = {
    "fedcoord.v1.NodeService": {
        "Submit": (_C,),
        "Cancel": (_C,),
        "Requeue": (_C,),
        "GetTask": (_C,),
        "WaitTask": (_C,),
        "Watch": (_C,),
        # Raw stats (exact counts by type, quantiles, history) stay with the node's own callers:
        # a peer sees offers and hand-offs only, the federation only the released summary.
        "Stats": (_C, _W),
        "Work": (_W,),
        "RegisterWorker": (_W,),
        "DeregisterWorker": (_W,),
        "Claim": (_W,),
        "Heartbeat": (_W,),
        "StartTask": (_W,),
        "Complete": (_W,),
        "Fail": (_W,),
        "Summary": (_F,),
        "ApplyFederation": (_F,),
    },
    "fedcoord.v1.HandoffService": {
        "Offer": (_P,),
        "Transfer": (_P,),
        "TaskStatus": (_P,),
        "ReportResult": (_P,),
    },
}

METHOD_ROLES: Mapping[str, frozenset[Role]] = MappingProxyType(
    {
        f"/{service}/{method}": frozenset((*roles, Role.ADMIN))
        for service, methods in _ROLES.items()
        for method, roles in methods.items()
    }
)
"""Full method name (``/fedcoord.v1.NodeService/Submit``) -> the roles allowed to call it."""


def described_methods() -> list[str]:
    """Every method of the fedcoord services, as the generated descriptors list them."""
    from protos.fedcoord.v1 import handoff_pb2, node_pb2  # noqa: PLC0415 - only tests and tools need it

    return [
        f"/{service.full_name}/{method.name}"
        for module in (node_pb2, handoff_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


# --------------------------------------------------------------------------------------------- tokens


def _check_token(token: object, where: str) -> str:
    if not isinstance(token, str):
        raise ValidationError(where, f"a token must be a string, not {type(token).__name__}")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValidationError(where, "token too short", limit=f">= {MIN_TOKEN_LENGTH} characters")
    if not all("!" <= ch <= "~" for ch in token):
        raise ValidationError(where, "a token may hold printable ASCII only, without spaces")
    return token


@dataclass(frozen=True)
class Tokens:
    """The bearer tokens a node accepts, per role. A token listed under several roles has them all.

    The tokens never appear in ``repr``. Build with :meth:`from_mapping`, :meth:`load` or
    :meth:`generate` (which validate); the plain constructor trusts its arguments.
    """

    client: tuple[str, ...] = field(default=(), repr=False)
    worker: tuple[str, ...] = field(default=(), repr=False)
    peer: tuple[str, ...] = field(default=(), repr=False)
    federation: tuple[str, ...] = field(default=(), repr=False)
    admin: tuple[str, ...] = field(default=(), repr=False)
    _table: tuple[tuple[bytes, Role], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        table = tuple((tok.encode(), role) for role, toks in self.by_role.items() for tok in toks)
        object.__setattr__(self, "_table", table)

    @property
    def by_role(self) -> Mapping[Role, tuple[str, ...]]:
        """Role -> the tokens accepted for it."""
        return {
            Role.CLIENT: self.client,
            Role.WORKER: self.worker,
            Role.PEER: self.peer,
            Role.FEDERATION: self.federation,
            Role.ADMIN: self.admin,
        }

    def roles_of(self, token: str) -> frozenset[Role]:
        """The roles ``token`` grants (empty when it is unknown). Every configured token is compared
        in constant time, whichever matches, so timing tells little about the tokens."""
        presented = token.encode("utf-8", "replace")
        found = [role for tok, role in self._table if hmac.compare_digest(tok, presented)]
        return frozenset(found)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, str | Sequence[str]], *, where: str = "tokens") -> Tokens:
        """From ``{"client": ["..."], "worker": "...", ...}``: known roles, tokens of printable ASCII
        and at least :data:`MIN_TOKEN_LENGTH` characters, at least one token in all."""
        if not isinstance(mapping, Mapping):
            raise ValidationError(where, "expected a table of role = [tokens]")
        known = ", ".join(r.value for r in Role)
        per: dict[Role, tuple[str, ...]] = {}
        for key, value in mapping.items():
            try:
                role = Role(key)
            except ValueError:
                raise ValidationError(f"{where}.{key}", f"unknown role; known roles: {known}") from None
            values: Sequence[object]
            if isinstance(value, str):
                values = (value,)
            elif isinstance(value, list | tuple):
                values = value
            else:
                raise ValidationError(f"{where}.{key}", "expected a token or a list of tokens")
            per[role] = tuple(_check_token(tok, f"{where}.{key}[{i}]") for i, tok in enumerate(values))
        if not any(per.values()):
            raise ValidationError(where, f"no tokens: give at least one for a role ({known})")
        return cls(**{role.value: toks for role, toks in per.items()})

    @classmethod
    def generate(cls, roles: Iterable[Role] = tuple(Role)) -> Tokens:
        """One fresh random token (``secrets.token_urlsafe(32)``) for each of ``roles``."""
        return cls(**{Role(r).value: (secrets.token_urlsafe(32),) for r in roles})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Tokens:
        """From a TOML file with a ``[tokens]`` table: ``client = ["..."]``, ``worker = [...]``, ..."""
        where = str(path)
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise ValidationError("tokens file", f"cannot read {where}: {e.strerror or e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ValidationError("tokens file", f"{where} is not valid TOML: {e}") from None
        table = data.get("tokens")
        if not isinstance(table, dict):
            raise ValidationError("tokens file", f"{where} has no [tokens] table (client = [...], worker = [...], ...)")
        return cls.from_mapping(table, where=f"{where}: tokens")

    def to_toml(self) -> str:
        """The ``tokens.toml`` text that :meth:`load` reads back."""
        lines = [
            "# Bearer tokens accepted by fedcoord nodes, per role (keep this file secret).",
            "# Callers send them as gRPC metadata: authorization: Bearer <token>.",
            "[tokens]",
        ]
        for role, toks in self.by_role.items():
            if toks:
                lines.append(f"{role.value} = [{', '.join(json.dumps(t) for t in toks)}]")
        return "\n".join(lines) + "\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_toml` to ``path``, readable by its owner only (mode 0600)."""
        p = Path(path)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(self.to_toml())
        return p


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``token`` (nothing when there is none)."""
    return () if token is None else (("authorization", f"Bearer {token}"),)


# ---------------------------------------------------------------------------------------- interceptor

_CALLER_ROLES: contextvars.ContextVar[frozenset[Role]] = contextvars.ContextVar("fedcoord_caller_roles")
_NO_ROLES: frozenset[Role] = frozenset()
_ANY_ROLE: frozenset[Role] = frozenset(Role)
_ADMIN_ONLY: frozenset[Role] = frozenset((Role.ADMIN,))

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


def caller_roles() -> frozenset[Role]:
    """The roles of the current call's token, for a servicer that wants them (empty when auth is off)."""
    return _CALLER_ROLES.get(_NO_ROLES)


def _bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


def _denial(kind: tuple[bool, bool], code: grpc.StatusCode, details: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind (unary/stream in, unary/stream out) that only aborts."""

    async def deny(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, details)

    request_streaming, response_streaming = kind
    if request_streaming:
        make = grpc.stream_stream_rpc_method_handler if response_streaming else grpc.stream_unary_rpc_method_handler
    else:
        make = grpc.unary_stream_rpc_method_handler if response_streaming else grpc.unary_unary_rpc_method_handler
    return make(deny)


def _names(roles: frozenset[Role]) -> str:
    return " or ".join(r.value for r in Role if r in roles)  # in declaration order: admin last


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc has no type hints
    """Checks the bearer token of every call against ``tokens`` and the method's roles.

    Health checks pass without a token; reflection needs any valid token; the fedcoord methods
    need a role of :data:`METHOD_ROLES`; any other method that exists needs the admin role.
    A method the server does not serve is left to gRPC (``UNIMPLEMENTED``). The caller's roles
    are available to the handler through :func:`caller_roles`.
    """

    def __init__(self, tokens: Tokens, method_roles: Mapping[str, frozenset[Role]] = METHOD_ROLES):
        self._tokens = tokens
        self._method_roles = method_roles
        self._allowed: dict[str, frozenset[Role] | None] = {}  # per method; None: open
        self._denials: dict[tuple[Any, ...], grpc.RpcMethodHandler] = {}

    def _allowed_for(self, method: str) -> frozenset[Role] | None:
        allowed: frozenset[Role] | None
        if method.startswith(HEALTH_PREFIX):
            allowed = None
        elif method.startswith(REFLECTION_PREFIX):
            allowed = _ANY_ROLE
        else:
            allowed = self._method_roles.get(method, _ADMIN_ONLY)
        self._allowed[method] = allowed
        return allowed

    def _deny(
        self, handler: grpc.RpcMethodHandler, code: grpc.StatusCode, details: str, *key: Any
    ) -> grpc.RpcMethodHandler:
        kind = (bool(handler.request_streaming), bool(handler.response_streaming))
        cache_key = (kind, code, *key) if key else (kind, code, details)
        denial = self._denials.get(cache_key)
        if denial is None:
            denial = self._denials[cache_key] = _denial(kind, code, details)
        return denial

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        try:
            allowed = self._allowed[method]
        except KeyError:
            allowed = self._allowed_for(method)
        handler = await continuation(handler_call_details)
        if allowed is None or handler is None:  # open, or unknown to the server: gRPC answers UNIMPLEMENTED
            return handler
        token = _bearer_token(handler_call_details.invocation_metadata)
        if token is None:
            return self._deny(handler, grpc.StatusCode.UNAUTHENTICATED, "missing bearer token")
        roles = self._tokens.roles_of(token)
        if not roles:
            return self._deny(handler, grpc.StatusCode.UNAUTHENTICATED, "unknown token")
        if roles.isdisjoint(allowed):
            details = f"{method} needs the {_names(allowed)} role; this token has {_names(roles)}"
            return self._deny(handler, grpc.StatusCode.PERMISSION_DENIED, details, method, roles)
        _CALLER_ROLES.set(roles)
        return handler


# ------------------------------------------------------------------------------------------------ TLS


def _read_pem(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValidationError(what, f"cannot read {os.fspath(path)}: {e.strerror or e}") from None
    if b"-----BEGIN " not in data:
        raise ValidationError(what, f"{os.fspath(path)} is not a PEM file (no -----BEGIN line)")
    return data


def _check_pair(cert: bytes, key: bytes, cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str]) -> None:
    """Fail clearly when the key cannot be used or does not belong to the certificate (gRPC would
    only report a handshake failure later)."""
    from cryptography import x509  # noqa: PLC0415 - loaded only when TLS is configured
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    try:
        certificate = x509.load_pem_x509_certificate(cert)
    except ValueError as e:
        raise ValidationError("tls cert", f"{os.fspath(cert_file)}: not a PEM certificate ({e})") from None
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as e:  # TypeError: the key is encrypted
        raise ValidationError("tls key", f"{os.fspath(key_file)}: not a usable unencrypted PEM key ({e})") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if certificate.public_key().public_bytes(der, spki) != private.public_key().public_bytes(der, spki):
        raise ValidationError("tls key", f"{os.fspath(key_file)} does not belong to {os.fspath(cert_file)}")


@dataclass(frozen=True)
class TlsConfig:
    """A node's TLS files (PEM): its certificate and key, and the cluster's CA. With
    ``require_client_cert`` (mutual TLS) callers must present a certificate signed by ``ca_file``;
    without it the server does not ask for one (the node may still trust ``ca_file`` as a client
    of its peers, with :func:`channel_credentials`)."""

    cert_file: str | os.PathLike[str]
    key_file: str | os.PathLike[str]
    ca_file: str | os.PathLike[str] | None = None
    require_client_cert: bool = False

    def __post_init__(self) -> None:
        if self.require_client_cert and self.ca_file is None:
            raise ValidationError("tls ca", "mutual TLS (client certificates) needs the CA file that signs them")


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """Server credentials from ``tls``: the node's certificate and key, and with
    ``require_client_cert`` the CA that client certificates must chain to."""
    cert = _read_pem(tls.cert_file, "tls cert")
    key = _read_pem(tls.key_file, "tls key")
    _check_pair(cert, key, tls.cert_file, tls.key_file)
    if tls.require_client_cert:
        assert tls.ca_file is not None  # TlsConfig checks it
        ca = _read_pem(tls.ca_file, "tls ca")
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
    return grpc.ssl_server_credentials([(key, cert)])


def channel_credentials(
    ca_file: str | os.PathLike[str] | None,
    cert_file: str | os.PathLike[str] | None = None,
    key_file: str | os.PathLike[str] | None = None,
) -> grpc.ChannelCredentials:
    """Channel credentials trusting ``ca_file`` (None: the system's roots), presenting
    ``cert_file``/``key_file`` to a server that asks for a client certificate (mutual TLS)."""
    if (cert_file is None) != (key_file is None):
        raise ValidationError("tls cert", "a client certificate needs both its certificate and its key file")
    ca = None if ca_file is None else _read_pem(ca_file, "tls ca")
    cert = key = None
    if cert_file is not None and key_file is not None:
        cert = _read_pem(cert_file, "tls cert")
        key = _read_pem(key_file, "tls key")
        _check_pair(cert, key, cert_file, key_file)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


# ---------------------------------------------------------------------------------------- plaintext


def _hosts_of(address: str) -> list[str]:
    """The host part(s) of a gRPC address: ``host:port``, ``[v6]:port``, a bare host, or a target
    with a scheme (``dns:///host:port``, ``ipv4:a:port,b:port``, ``ipv6:[a]:port``)."""
    addr = address.strip()
    scheme, sep, rest = addr.partition(":")
    if sep and scheme in ("dns", "ipv4", "ipv6"):
        if scheme == "dns" and rest.startswith("//"):
            rest = rest[2:].partition("/")[2]  # drop the authority
        parts = rest.split(",") if scheme != "dns" else [rest]
    else:
        parts = [addr]
    hosts = []
    for part in parts:
        if part.startswith("["):
            host = part[1:].partition("]")[0]
        elif part.count(":") == 1:
            host = part.partition(":")[0]
        else:  # a bare host, or a bare IPv6 address
            host = part
        hosts.append(host)
    return hosts


def is_loopback_host(host: str) -> bool:
    """Whether a host name or IP (no port: ``127.0.0.2``, ``::1``, ``localhost``) is this machine's loopback."""
    name = host.lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(name.partition("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def is_loopback(address: str) -> bool:
    """Whether ``address`` (``127.0.0.1:50051``, ``[::1]:50051``, ``localhost:50051``...) stays on
    this machine: loopback IPs (127.0.0.0/8, ::1), ``localhost``, or a Unix socket
    (``unix:...``). ``0.0.0.0`` and ``[::]`` listen on every interface: not loopback."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    hosts = _hosts_of(address)
    return bool(hosts) and all(is_loopback_host(h) for h in hosts)


def check_plaintext(address: str, allow_insecure: bool) -> None:
    """Allow a plaintext (no TLS) channel or port at ``address`` only when asked and only on loopback.

    Raises :class:`~node.errors.ValidationError` saying what to do otherwise.
    """
    if not allow_insecure:
        raise ValidationError(
            "tls",
            f"TLS is required for {address}: pass --tls-cert and --tls-key (`fedcoord certs` makes them), "
            "or --insecure for plaintext on a loopback address (127.0.0.1, ::1, localhost)",
        )
    if not is_loopback(address):
        raise ValidationError(
            "tls",
            f"plaintext (--insecure) is allowed only on a loopback address (127.0.0.0/8, ::1, localhost); "
            f"{address} is not one: use TLS (--tls-cert, --tls-key; `fedcoord certs` makes them)",
        )
