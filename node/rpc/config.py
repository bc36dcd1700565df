"""The settings of a node process (``fedcoord node``): a TOML file, environment, explicit overrides.

Precedence, lowest first: the defaults here, the TOML file, the environment, the ``overrides``
of :func:`load_config` (what the command line says). Every key is named as in the file, dotted
for sections: ``listen``, ``tls.cert_file``, ``handoff.batch``, ``core.limits.max_payload_bytes``.

* **Environment**: ``FEDCOORD_<KEY>`` for a top-level key (``FEDCOORD_NODE_ID``,
  ``FEDCOORD_LISTEN``, ``FEDCOORD_REDIS_URL``), ``FEDCOORD_<SECTION>__<KEY>`` in a section
  (``FEDCOORD_HANDOFF__BATCH=500``, ``FEDCOORD_CORE__LIMITS__MAX_BATCH=2000``). Values are read
  by the key's type: ``true``/``false``/``1``/``0`` (also ``yes``/``no``/``on``/``off``),
  numbers, comma lists (``FEDCOORD_TOKENS__CLIENT=a,b``), peers as
  ``FEDCOORD_PEERS=n2=127.0.0.1:50052,n3=127.0.0.1:50053``. An unknown key in a known section
  is refused; other ``FEDCOORD_*`` variables (``FEDCOORD_HOME``, a client's settings) are not
  ours and are left alone. ``FEDCOORD_CONFIG`` names the file when no path is given.
* **Unset**: an optional key (``redis_url``, ``tls.cert_file``, ``node.seed`` ...) given as the
  empty string is unset (None); TOML has no null.
* **Paths** in the file are relative to the file's directory; from the environment or the
  command line, to the working directory. ``~`` is expanded.

Unknown keys and values of the wrong type are refused with a :class:`ConfigError` that names the
key and where it came from (``node.toml: unknown key 'handoff.batchh'``). The sections ``[node]``,
``[core]`` (with ``[core.limits]``), ``[admission]``, ``[handoff]`` and ``[privacy]`` map field by
field onto :class:`~node.runtime.config.NodeConfig`, :class:`~node.core.CoreConfig`,
:class:`~node.model.Limits`, :class:`~node.admission.AdmissionConfig`,
:class:`~node.runtime.handoff.HandoffConfig` (whose ``peers`` are the keys of ``[peers]``, and
``core.node_id`` is ``node_id``) and :class:`~federation.privacy.config.PrivacyConfig` (whose
``completion_edges_s`` and ``node.completion_bins`` are one setting: give either):
:meth:`ServerConfig.node_config` builds the node's config.
``deploy/node.example.toml`` lists every key with its default.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, NoneType, UnionType
from typing import Any, get_args, get_origin, get_type_hints

from federation.privacy.config import PrivacyConfig
from node.admission import AdmissionConfig
from node.analytics.histogram import FixedBins
from node.core import CoreConfig
from node.errors import ValidationError
from node.model import Limits, check_name
from node.runtime.config import NodeConfig
from node.runtime.handoff import HandoffConfig

__all__ = [
    "DEFAULT_DASHBOARD_LISTEN",
    "DEFAULT_LISTEN",
    "DEFAULT_METRICS_LISTEN",
    "ENV_PREFIX",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "ConfigError",
    "ServerConfig",
    "ServerLimits",
    "TlsSettings",
    "TokenSettings",
    "dump_toml",
    "keys",
    "load_config",
    "parse_address",
]

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_METRICS_LISTEN = "127.0.0.1:9464"
DEFAULT_DASHBOARD_LISTEN = "127.0.0.1:9465"
ENV_PREFIX = "FEDCOORD_"
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
REDACTED = "<redacted>"
_MiB = 1 << 20


def _rebuild_config_error(key: str, message: str, source: str | None, limit: str | None) -> ConfigError:
    return ConfigError(key, message, source=source, limit=limit)


class ConfigError(ValidationError):
    """A setting that cannot be used. ``field`` is its dotted key, ``source`` where the value came
    from (the file, an environment variable, ``overrides``), None for a default."""

    def __init__(self, key: str, message: str, *, source: str | None = None, limit: str | None = None):
        super().__init__(key, message, limit=limit)
        self.source = source
        text = message if limit is None else f"{message} (limit: {limit})"
        self.args = (f"{source}: {text}" if source else text,)

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_config_error, (self.field, self.detail, self.source, self.limit)


# ------------------------------------------------------------------------------------ the settings


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """``[tls]``: the node's certificate and key (PEM); with ``require_client_cert`` callers must
    present a certificate signed by ``ca_file`` (mutual TLS). No certificate: plaintext, which
    needs ``insecure = true`` and a loopback address (checked by :mod:`node.rpc.auth`)."""

    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    require_client_cert: bool = False


@dataclass(frozen=True, slots=True)
class TokenSettings:
    """``[tokens]``: the bearer tokens accepted per role (the layout of a ``tokens.toml``)."""

    client: tuple[str, ...] = field(default=(), repr=False)
    worker: tuple[str, ...] = field(default=(), repr=False)
    peer: tuple[str, ...] = field(default=(), repr=False)
    federation: tuple[str, ...] = field(default=(), repr=False)
    admin: tuple[str, ...] = field(default=(), repr=False)

    def as_mapping(self) -> dict[str, tuple[str, ...]]:
        """Role -> tokens, the roles that have any (what ``auth.Tokens.from_mapping`` takes)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name)}


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """``[limits]`` of the gRPC server (the task limits are ``[core.limits]``)."""

    max_message_bytes: int = 16 * _MiB  # largest gRPC message received or sent
    max_active_tasks: int = 1_000_000  # submits beyond this many active tasks get RESOURCE_EXHAUSTED
    max_inflight_submits: int = 1024  # Submit calls being served at once; more get RESOURCE_EXHAUSTED


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything ``fedcoord node`` needs. Build it with :func:`load_config`; constructed directly
    it is checked the same way (``ValidationError`` naming the key)."""

    node_id: str
    listen: str = DEFAULT_LISTEN  # gRPC address: host:port (port 0: any free port) or unix:path
    metrics_listen: str = DEFAULT_METRICS_LISTEN  # Prometheus /metrics, host:port; "" disables it
    dashboard_listen: str = DEFAULT_DASHBOARD_LISTEN  # the web node view, host:port; "" disables it
    # Actions on the node view need this token (None: a random one, written to
    # <data_dir>/dashboard-token); with a viewer token set, reads need one of the two.
    dashboard_operator_token: str | None = field(default=None, repr=False)
    dashboard_viewer_token: str | None = field(default=None, repr=False)
    redis_url: str | None = None  # None: an embedded redis-server in data_dir
    data_dir: Path | None = None  # None: ./data/<node_id> (set at construction, never None after)
    insecure: bool = False  # plaintext when there is no TLS certificate (loopback only)
    tls: TlsSettings = field(default_factory=TlsSettings)
    tokens: TokenSettings = field(default_factory=TokenSettings)
    tokens_file: Path | None = None  # a TOML file with a [tokens] table, instead of [tokens]
    peers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # node id -> address
    peer_token: str | None = field(default=None, repr=False)  # bearer token sent to peers
    peer_ca_file: Path | None = None  # CA that the peers' certificates chain to
    peer_cert_file: Path | None = None  # client certificate for peers that require one
    peer_key_file: Path | None = None
    limits: ServerLimits = field(default_factory=ServerLimits)
    log_format: str = "text"  # "text" or "json" (one JSON object a line)
    log_level: str = "info"
    drain_timeout_s: float = 30.0  # on SIGTERM: finish calls under way for this long, then stop
    node: NodeConfig = field(default_factory=NodeConfig)  # [node], [core], [admission], [handoff]

    def __post_init__(self) -> None:
        check_name("node_id", self.node_id)
        if self.data_dir is None:
            object.__setattr__(self, "data_dir", Path("data") / self.node_id)
        object.__setattr__(self, "peers", MappingProxyType(dict(self.peers)))
        object.__setattr__(self, "log_level", str(self.log_level).lower())
        _check_server(self)

    @property
    def data_path(self) -> Path:
        """``data_dir``, typed as never None."""
        assert self.data_dir is not None  # __post_init__ sets it
        return self.data_dir

    def node_config(self) -> NodeConfig:
        """The node's runtime config: ``[node]``, ``[core]``, ``[admission]``, ``[handoff]``, with
        ``core.node_id`` from ``node_id`` and ``handoff.peers`` from the ``[peers]`` table."""
        n = self.node
        return dataclasses.replace(
            n,
            core=dataclasses.replace(n.core, node_id=self.node_id),
            handoff=dataclasses.replace(n.handoff, peers=tuple(self.peers)),
        )

    def dump(self, *, redact: bool = True) -> dict[str, Any]:
        """Every setting as nested dicts in the file's layout (for ``--print-config``): paths
        absolute, unset values None, tokens and passwords ``<redacted>`` unless ``redact=False``."""
        out: dict[str, Any] = {}
        for key in _KEYS:
            value = _get(self, key)
            if redact and value is not None and key in _SECRET_KEYS:
                value = REDACTED if isinstance(value, str) else [REDACTED for _ in value]
            elif redact and key == "redis_url" and isinstance(value, str):
                value = re.sub(r"(//[^/@]*?:)[^/@]*@", rf"\g<1>{REDACTED}@", value)
            *sections, name = key.split(".")
            table = out
            for s in sections:
                table = table.setdefault(s, {})
            table[name] = _plain(value)
        return out


# ------------------------------------------------------------------------------------ the schema

# Section prefix -> (dataclass, fields that are not keys of that section)
_SECTIONS: dict[str, tuple[type[Any], tuple[str, ...]]] = {
    "": (ServerConfig, ("tls", "tokens", "limits", "node")),
    "tls.": (TlsSettings, ()),
    "tokens.": (TokenSettings, ()),
    "limits.": (ServerLimits, ()),
    "node.": (NodeConfig, ("core", "admission", "handoff", "privacy")),
    "core.": (CoreConfig, ("node_id", "limits")),
    "core.limits.": (Limits, ()),
    "admission.": (AdmissionConfig, ()),
    "handoff.": (HandoffConfig, ("peers",)),
    "privacy.": (PrivacyConfig, ()),
}
_NOT_KEYS = {"core.node_id": "it is the top-level node_id", "handoff.peers": "they are the keys of [peers]"}
_SECRET_KEYS = frozenset(
    {
        "tokens.client",
        "tokens.worker",
        "tokens.peer",
        "tokens.federation",
        "tokens.admin",
        "peer_token",
        "dashboard_operator_token",
        "dashboard_viewer_token",
    }
)


def _schema() -> dict[str, Any]:
    """Dotted key -> its type, in the order of the dataclasses' fields."""
    out: dict[str, Any] = {}
    for prefix, (cls, skip) in _SECTIONS.items():
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in skip:
                out[prefix + f.name] = hints[f.name]
    return out


_KEYS = _schema()


def keys() -> list[str]:
    """Every key of the configuration, dotted (``handoff.batch``), in the file's order."""
    return list(_KEYS)


def _get(cfg: ServerConfig, key: str) -> Any:
    path = {
        "node.": "node.",
        "core.": "node.core.",
        "admission.": "node.admission.",
        "handoff.": "node.handoff.",
        "privacy.": "node.privacy.",
    }
    for prefix, real in path.items():
        if key.startswith(prefix):
            key = real + key[len(prefix) :]
            break
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value.absolute())
    if isinstance(value, FixedBins):
        return list(value.edges)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


# ------------------------------------------------------------------------------------ reading values

_TOML_TYPES = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _expected(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin is UnionType:
        return _expected(next(a for a in args if a is not NoneType)) + ' (or "" for unset)'
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_expected(args[0]).removeprefix('a ').removeprefix('an ')}s"
        return f"a list of {len(args)} {_expected(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is Mapping:
        return "a table of node id = address"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}
    return names.get(hint, "a list of numbers")  # FixedBins


def _convert(value: Any, hint: Any, key: str, text: bool, base: Path | None) -> Any:
    """``value`` (from TOML, or an environment string when ``text``) as a value of type ``hint``;
    raises ``ValueError`` (the caller names the key and the expected type)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is UnionType:  # X | None: "" is None
        if value == "":
            return None
        return _convert(value, next(a for a in args if a is not NoneType), key, text, base)
    if text and not isinstance(value, str):
        raise ValueError
    if hint is bool:
        if text and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, bool):
            return value
    elif hint is int:
        if text:
            return int(value.strip())
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        v = float(value.strip()) if text else value
        if isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v):
            return float(v)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Path:
        if isinstance(value, str | os.PathLike) and os.fspath(value):
            p = Path(value).expanduser()
            return base / p if base is not None and not p.is_absolute() else p
    elif origin is tuple or hint is FixedBins:
        items = [s.strip() for s in value.split(",") if s.strip()] if text else value
        if isinstance(items, list | tuple):
            elems = (float,) * len(items) if hint is FixedBins else args
            if len(elems) == 2 and elems[1] is Ellipsis:
                elems = (elems[0],) * len(items)
            if len(elems) != len(items):
                raise ValueError
            out = tuple(_convert(v, t, key, text, base) for v, t in zip(items, elems, strict=True))
            return FixedBins(out) if hint is FixedBins else out
    elif origin is Mapping:
        if text:
            pairs = [p.strip().partition("=") for p in value.split(",") if p.strip()]
            if any(not sep or not k.strip() for k, sep, _ in pairs):
                raise ValueError
            value = {k.strip(): v.strip() for k, _, v in pairs}
        if isinstance(value, Mapping) and all(isinstance(v, str) for v in value.values()):
            return MappingProxyType(dict(value))
    else:  # pragma: no cover - a field type this module does not know
        raise TypeError(f"{key}: unsupported setting type {hint!r}")
    raise ValueError


def _read(value: Any, key: str, source: str, *, text: bool, base: Path | None = None) -> Any:
    hint = _KEYS[key]
    try:
        return _convert(value, hint, key, text, base)
    except ValidationError as e:  # FixedBins checks its edges
        raise ConfigError(key, f"{key}: {e.detail}", source=source) from None
    except ValueError:
        got = repr(value) if text else f"{_TOML_TYPES.get(type(value), type(value).__name__)} {value!r}"
        raise ConfigError(key, f"{key}: expected {_expected(hint)}, got {got}", source=source) from None


def _unknown(key: str, source: str) -> ConfigError:
    if key in _NOT_KEYS:
        return ConfigError(key, f"key '{key}' cannot be set: {_NOT_KEYS[key]}", source=source)
    prefix = key.rpartition(".")[0]
    known = sorted(k[len(prefix) + 1 if prefix else 0 :] for k in _KEYS if k.rpartition(".")[0] == prefix)
    sections = sorted(p.rstrip(".").rpartition(".")[2] for p in _SECTIONS if p and p[:-1].rpartition(".")[0] == prefix)
    where = f"[{prefix}]" if prefix else "the top level"
    hint = f" (known in {where}: {', '.join(known + [f'[{s}]' for s in sections])})"
    return ConfigError(key, f"unknown key '{key}'{hint}", source=source)


Layer = dict[str, tuple[Any, str]]  # dotted key -> (value, where it came from)


def _from_toml(table: Mapping[str, Any], prefix: str, source: str, base: Path, out: Layer) -> None:
    for name, value in table.items():
        key = prefix + name
        if key + "." in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(
                    key, f"{key}: expected a table [{key}], got {_TOML_TYPES.get(type(value))}", source=source
                )
            _from_toml(value, key + ".", source, base, out)
        elif key in _KEYS:
            out[key] = (_read(value, key, source, text=False, base=base), source)
        else:
            raise _unknown(key, source)


def _read_file(path: Path) -> Layer:
    source = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError("config", f"cannot read the config file: {e.strerror or e}", source=source) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("config", f"not valid TOML: {e}", source=source) from None
    out: Layer = {}
    _from_toml(data, "", source, path.parent, out)
    return out


def _from_env(env: Mapping[str, str]) -> Layer:
    out: Layer = {}
    sections = {p.split(".")[0] for p in _SECTIONS if p} | {"peers"}
    for name, text in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        key = ".".join(parts)
        if key in _KEYS:
            out[key] = (_read(text, key, name, text=True), name)
        elif key + "." in _SECTIONS:
            hint = f"'{key}' is a section: set its keys ({ENV_PREFIX}{key.upper()}__<KEY>)"
            raise ConfigError(key, hint, source=name)
        elif len(parts) > 1 and parts[0] in sections:
            raise _unknown(key, name)
        # else: another FEDCOORD_* variable (FEDCOORD_HOME, a client's settings): not ours
    return out


def _from_overrides(overrides: Mapping[str, object], prefix: str = "", out: Layer | None = None) -> Layer:
    out = {} if out is None else out
    for name, value in overrides.items():
        key = prefix + name
        if value is None:
            continue  # not given
        if key + "." in _SECTIONS and isinstance(value, Mapping):
            _from_overrides(value, key + ".", out)
        elif key in _KEYS:
            out[key] = (_read(value, key, "overrides", text=isinstance(value, str)), "overrides")
        else:
            raise _unknown(key, "overrides")
    return out


# ------------------------------------------------------------------------------------ building


def _build(values: Mapping[str, Any], origin: Mapping[str, str]) -> ServerConfig:
    def make(prefix: str, **nested: Any) -> Any:
        cls, _ = _SECTIONS[prefix]
        kwargs = {
            k[len(prefix) :]: v for k, v in values.items() if k.startswith(prefix) and "." not in k[len(prefix) :]
        }
        try:
            return cls(**kwargs, **nested)
        except ValidationError as e:
            if isinstance(e, ConfigError):
                raise
            if e.field in _KEYS or e.field.partition(".")[0] in _KEYS:  # "handoff.batch", "peers.n2"
                key = e.field
            else:  # NodeConfig names its own fields bare: "retention_s" is node.retention_s
                key = prefix + e.field.rpartition(".")[2]
            src = origin.get(key) or origin.get(key.partition(".")[0])
            raise ConfigError(key, f"{key}: {e.detail}", source=src, limit=e.limit) from None

    # The summaries' bins and their releases' public bins are one setting given either way.
    bins, edges = values.get("node.completion_bins"), values.get("privacy.completion_edges_s")
    if bins is not None and edges is None:
        values = {**values, "privacy.completion_edges_s": bins.edges}
    elif edges is not None and bins is None:
        try:
            values = {**values, "node.completion_bins": FixedBins(edges)}
        except ValidationError as e:
            key = "privacy.completion_edges_s"
            raise ConfigError(key, f"{key}: {e.detail}", source=origin.get(key), limit=e.limit) from None
    core = make("core.", limits=make("core.limits."))
    privacy = make("privacy.")
    _check_affordable(privacy, origin)
    node = make("node.", core=core, admission=make("admission."), handoff=make("handoff."), privacy=privacy)
    tls, tokens, limits = make("tls."), make("tokens."), make("limits.")
    return make("", tls=tls, tokens=tokens, limits=limits, node=node)  # type: ignore[no-any-return]


def _check_affordable(privacy: PrivacyConfig, origin: Mapping[str, str]) -> None:
    """Refuse, before anything starts, a budget smaller than one release (OpenDP says what a
    release costs: the same check the node makes when it starts)."""
    if not privacy.enabled or privacy.scale is None:
        return  # the calibrated default spends budget / m per release
    from federation.privacy.accountant import Accountant  # noqa: PLC0415 - OpenDP, only when it is needed
    from federation.privacy.pipeline import CELLS_PER_TASK, cells_of  # noqa: PLC0415

    try:
        Accountant(privacy, cells_of(privacy), CELLS_PER_TASK)
    except ValidationError as e:
        src = origin.get(e.field) or origin.get("privacy.epsilon")
        raise ConfigError(e.field, f"{e.field}: {e.detail}", source=src, limit=e.limit) from None


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] = os.environ,
    overrides: Mapping[str, object] = MappingProxyType({}),
) -> ServerConfig:
    """The node's settings: defaults < the TOML file at ``path`` (or ``$FEDCOORD_CONFIG``) <
    ``env`` (``FEDCOORD_*``) < ``overrides`` (dotted keys or nested tables; a None value is
    "not given", a string for a non-string key is read like an environment value).
    Raises :class:`ConfigError` naming the key and where its value came from."""
    if path is None and env.get(ENV_PREFIX + "CONFIG"):
        path = env[ENV_PREFIX + "CONFIG"]
    layers: list[Layer] = []
    if path is not None:
        layers.append(_read_file(Path(path).expanduser()))
    layers += [_from_env(env), _from_overrides(overrides)]
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for layer in layers:
        for key, (value, source) in layer.items():
            values[key], origin[key] = value, source
    if "node_id" not in values:
        raise ConfigError("node_id", "node_id is required: set it in the file, FEDCOORD_NODE_ID or --node-id")
    return _build(values, origin)


# ------------------------------------------------------------------------------------ checks


def parse_address(address: str, key: str = "address") -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6; port 0: any free port) -> ``(host, port)``."""
    if not isinstance(address, str):
        raise ValidationError(key, f"expected host:port, got {type(address).__name__}")
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535 or " " in host:
        raise ValidationError(key, f"{address!r} is not host:port", limit="host:port, port 0..65535")
    return host, int(port)


def _check_server(c: ServerConfig) -> None:
    if not c.listen.startswith("unix:"):
        parse_address(c.listen, "listen")
    if c.metrics_listen:
        parse_address(c.metrics_listen, "metrics_listen")
    if c.dashboard_listen:
        parse_address(c.dashboard_listen, "dashboard_listen")
        from node.rpc.auth import is_loopback  # noqa: PLC0415 - (auth needs grpc; config alone does not)

        if not is_loopback(c.dashboard_listen) and c.tls.cert_file is None:
            raise ValidationError(
                "dashboard_listen",
                f"{c.dashboard_listen} is not a loopback address: the node view is served there only over "
                "TLS, with the node's certificate (tls.cert_file, tls.key_file); or give a loopback address",
            )
    for key in ("dashboard_operator_token", "dashboard_viewer_token"):
        tok = getattr(c, key)
        if tok is not None and (len(tok) < 8 or any(ch.isspace() for ch in tok)):
            raise ValidationError(key, "shorter than 8 characters or has white space")
    if c.redis_url is not None and "://" not in c.redis_url:
        raise ValidationError("redis_url", f"{c.redis_url!r} is not a URL (redis://host:port/0, unix:///path)")
    for peer, addr in c.peers.items():
        check_name("peers", peer)
        if peer == c.node_id:
            raise ValidationError(f"peers.{peer}", "a node is not its own peer")
        if not isinstance(addr, str) or not addr or any(ch.isspace() for ch in addr):
            raise ValidationError(f"peers.{peer}", f"{addr!r} is not an address (host:port)")
    for role, toks in c.tokens.as_mapping().items():
        for i, tok in enumerate(toks):
            if not tok or any(ch.isspace() for ch in tok):
                raise ValidationError(f"tokens.{role}", f"token {i} is empty or has white space")
    if c.tokens_file is not None and c.tokens.as_mapping():
        raise ValidationError("tokens_file", "give the tokens in [tokens] or in tokens_file, not both")
    if c.peer_token is not None and (not c.peer_token or any(ch.isspace() for ch in c.peer_token)):
        raise ValidationError("peer_token", "empty or has white space")
    t = c.tls
    if (t.cert_file is None) != (t.key_file is None):
        raise ValidationError(
            "tls.key_file" if t.key_file is None else "tls.cert_file", "TLS needs both cert_file and key_file"
        )
    if t.ca_file is not None and t.cert_file is None:
        raise ValidationError("tls.ca_file", "a CA for client certificates needs TLS (cert_file, key_file)")
    if t.require_client_cert and t.ca_file is None:
        raise ValidationError(
            "tls.require_client_cert", "mutual TLS needs ca_file, the CA that signs client certificates"
        )
    if c.insecure and t.cert_file is not None:
        raise ValidationError("insecure", "insecure (plaintext) and tls.cert_file are both set: choose one")
    if (c.peer_cert_file is None) != (c.peer_key_file is None):
        raise ValidationError("peer_cert_file", "a client certificate for peers needs peer_cert_file and peer_key_file")
    lim, task_limits = c.limits, c.node.core.limits
    largest = max(task_limits.max_payload_bytes, task_limits.max_result_bytes)
    if not largest < lim.max_message_bytes <= 2**31 - 1:
        raise ValidationError(
            "limits.max_message_bytes", f"{lim.max_message_bytes}", limit=f"> {largest} (the largest payload or result)"
        )
    for name in ("max_active_tasks", "max_inflight_submits"):
        if getattr(lim, name) < 1:
            raise ValidationError(f"limits.{name}", f"{getattr(lim, name)}", limit=">= 1")
    if c.log_format not in LOG_FORMATS:
        raise ValidationError("log_format", f"{c.log_format!r}", limit=" or ".join(LOG_FORMATS))
    if c.log_level not in LOG_LEVELS:
        raise ValidationError("log_level", f"{c.log_level!r}", limit=", ".join(LOG_LEVELS))
    if not (math.isfinite(c.drain_timeout_s) and c.drain_timeout_s >= 0):
        raise ValidationError("drain_timeout_s", f"{c.drain_timeout_s!r}", limit=">= 0 seconds")
    _check_core(c.node.core)


def _check_core(core: CoreConfig) -> None:
    """What CoreConfig and Limits do not check themselves (they trust their callers)."""
    for f in dataclasses.fields(core):
        v = getattr(core, f.name)
        if f.name.endswith("_s") and not (math.isfinite(v) and v > 0):
            raise ValidationError(f"core.{f.name}", f"{v!r}", limit="> 0 seconds")
    if not 0 < core.ema_alpha <= 1:
        raise ValidationError("core.ema_alpha", f"{core.ema_alpha!r}", limit="0 < value <= 1")
    if not core.target_load > 0:
        raise ValidationError("core.target_load", f"{core.target_load!r}", limit="> 0")
    for name in ("fast_difficulty", "recent_keys", "story_tasks", "max_hops"):
        if getattr(core, name) < 0:
            raise ValidationError(f"core.{name}", f"{getattr(core, name)!r}", limit=">= 0")
    for f in dataclasses.fields(core.limits):
        v = getattr(core.limits, f.name)
        if not (math.isfinite(v) and v > 0):
            raise ValidationError(f"core.limits.{f.name}", f"{v!r}", limit="> 0")


# ------------------------------------------------------------------------------------ writing


def _toml_value(v: Any) -> str:
    if v is None:
        return '""'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v) if not isinstance(v, float) or math.isfinite(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _toml_value(k)


def dump_toml(cfg: ServerConfig, *, redact: bool = True) -> str:
    """:meth:`ServerConfig.dump` as TOML text that :func:`load_config` reads back (with
    ``redact=False``; unset values are written as ``""``)."""
    lines: list[str] = []

    def table(d: Mapping[str, Any], name: str) -> None:
        if name:
            lines.extend(["", f"[{name}]"])
        for k, v in d.items():
            if not isinstance(v, dict):
                lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        for k, v in d.items():
            if isinstance(v, dict):  # the sections, and [peers]
                table(v, f"{name}.{k}" if name else k)

    table(cfg.dump(redact=redact), "")
    return "\n".join(lines) + "\n"
