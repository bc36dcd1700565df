"""The node process's settings: defaults < TOML file < environment < overrides, unknown keys and
wrong types refused by name, the example file, and the mapping onto the node's own configs."""

from __future__ import annotations

import pickle
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from node.admission import AdmissionConfig
from node.analytics.histogram import FixedBins
from node.errors import ValidationError
from node.rpc.config import (
    ConfigError,
    ServerConfig,
    TlsSettings,
    TokenSettings,
    dump_toml,
    keys,
    load_config,
    parse_address,
)
from node.runtime.handoff import HandoffConfig

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "node.example.toml"


def write(tmp_path: Path, text: str, name: str = "node.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def flat_keys(table: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for k, v in table.items():
        if isinstance(v, dict) and k != "peers":
            yield from flat_keys(v, f"{prefix}{k}.")
        else:
            yield prefix + k


# ---------------------------------------------------------------------------------- precedence


def test_file_then_environment_then_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
node_id = "n1"
listen = "127.0.0.1:6000"
metrics_listen = "127.0.0.1:6001"
log_level = "debug"
[handoff]
batch = 100
concurrency = 3
[admission]
threshold = 0.6
""",
    )
    env = {"FEDCOORD_LISTEN": "127.0.0.1:7000", "FEDCOORD_HANDOFF__BATCH": "200", "FEDCOORD_ADMISSION__MARGIN": "0.2"}
    cfg = load_config(path, env=env, overrides={"handoff.batch": 300, "log_level": None, "admission": {"margin": 0.3}})
    assert cfg.node_id == "n1"
    assert cfg.listen == "127.0.0.1:7000"  # env over file
    assert cfg.metrics_listen == "127.0.0.1:6001"  # file over default
    assert cfg.log_level == "debug"  # an override of None is "not given"
    nc = cfg.node_config()
    assert nc.handoff.batch == 300  # overrides over env over file
    assert nc.handoff.concurrency == 3
    assert nc.admission.threshold == 0.6
    assert nc.admission.margin == 0.3
    assert nc.handoff.check_s == HandoffConfig().check_s  # untouched: the default
    assert cfg.redis_url is None
    assert cfg.data_dir == Path("data") / "n1"


def test_environment_values_are_read_by_the_fields_type() -> None:
    env = {
        "FEDCOORD_NODE_ID": "n7",
        "FEDCOORD_INSECURE": "true",
        "FEDCOORD_DRAIN_TIMEOUT_S": "2.5",
        "FEDCOORD_PEERS": "n2=127.0.0.1:50052, n3=127.0.0.1:50053",
        "FEDCOORD_TOKENS__CLIENT": "aaaaaaaaaaaaaaaa,bbbbbbbbbbbbbbbb",
        "FEDCOORD_NODE__TAKEOVER": "1",
        "FEDCOORD_NODE__SEED": "42",
        "FEDCOORD_NODE__GC_THRESHOLDS": "1000,10,10",
        "FEDCOORD_NODE__COMPLETION_BINS": "0.5,1,2",
        "FEDCOORD_CORE__STRICT_MATCHING": "off",
        "FEDCOORD_CORE__LIMITS__MAX_BATCH": "2000",
        "FEDCOORD_REDIS_URL": "redis://127.0.0.1:6379/0",
        "FEDCOORD_HOME": "/somewhere",  # not a setting of ours: left alone
        "FEDCOORD_SOMETHING_ELSE": "x",
    }
    cfg = load_config(None, env=env)
    assert cfg.insecure is True
    assert cfg.drain_timeout_s == 2.5
    assert dict(cfg.peers) == {"n2": "127.0.0.1:50052", "n3": "127.0.0.1:50053"}
    assert cfg.tokens.client == ("aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb")
    assert cfg.redis_url == "redis://127.0.0.1:6379/0"
    nc = cfg.node_config()
    assert nc.takeover is True
    assert nc.seed == 42
    assert nc.gc_thresholds == (1000, 10, 10)
    assert nc.completion_bins == FixedBins((0.5, 1.0, 2.0))
    assert nc.core.strict_matching is False
    assert nc.core.limits.max_batch == 2000
    assert nc.handoff.peers == ("n2", "n3")


def test_an_empty_string_unsets_an_optional_value(tmp_path: Path) -> None:
    path = write(tmp_path, 'node_id = "n1"\nredis_url = "redis://h:1/0"\n[node]\nseed = 5\n')
    cfg = load_config(path, env={"FEDCOORD_REDIS_URL": "", "FEDCOORD_NODE__SEED": ""})
    assert cfg.redis_url is None
    assert cfg.node.seed is None


def test_the_config_file_can_be_named_by_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, 'node_id = "from-file"\n')
    assert load_config(None, env={"FEDCOORD_CONFIG": str(path)}).node_id == "from-file"


def test_overrides_take_strings_for_typed_keys_and_nested_tables() -> None:
    cfg = load_config(
        None,
        env={},
        overrides={"node_id": "n1", "handoff.batch": "250", "insecure": True, "core": {"limits": {"max_batch": 50}}},
    )
    assert cfg.node.handoff.batch == 250
    assert cfg.insecure is True
    assert cfg.node.core.limits.max_batch == 50


def test_paths_in_the_file_are_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = write(
        tmp_path,
        'node_id = "n1"\ndata_dir = "state"\n[tls]\ncert_file = "certs/n1.pem"\nkey_file = "/abs/n1.key"\n',
        name="conf/node.toml",
    )
    cfg = load_config(path, env={"FEDCOORD_TOKENS_FILE": "tokens.toml"})
    assert cfg.data_dir == tmp_path / "conf" / "state"
    assert cfg.tls.cert_file == tmp_path / "conf" / "certs" / "n1.pem"
    assert cfg.tls.key_file == Path("/abs/n1.key")
    assert cfg.tokens_file == Path("tokens.toml")  # from the environment: relative to the working directory


# ---------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('node_id = "n1"\n[handoff]\nbatchh = 5\n', "handoff.batchh"),
        ('node_id = "n1"\nlisten_addr = "x"\n', "listen_addr"),
        ('node_id = "n1"\n[nodes]\nseed = 1\n', "nodes"),
        ('node_id = "n1"\n[core.limits]\nmax_batchh = 1\n', "core.limits.max_batchh"),
        ('node_id = "n1"\n[core]\nnode_id = "x"\n', "core.node_id"),
        ('node_id = "n1"\n[handoff]\npeers = ["n2"]\n', "handoff.peers"),
    ],
)
def test_unknown_keys_in_the_file_are_refused_by_name(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.field == key
    assert f"'{key}'" in str(info.value)
    assert str(path) in str(info.value)


def test_unknown_key_message_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'handoff\.batchh' \(known in \[handoff\]: auto, batch, "):
        load_config(write(tmp_path, 'node_id = "n1"\n[handoff]\nbatchh = 5\n'), env={})


def test_unknown_keys_in_the_environment_and_overrides_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"^FEDCOORD_HANDOFF__BATCHH: unknown key 'handoff\.batchh'"):
        load_config(None, env={"FEDCOORD_NODE_ID": "n1", "FEDCOORD_HANDOFF__BATCHH": "5"})
    with pytest.raises(ConfigError, match=r"FEDCOORD_TLS: 'tls' is a section"):
        load_config(None, env={"FEDCOORD_NODE_ID": "n1", "FEDCOORD_TLS": "x"})
    with pytest.raises(ConfigError, match=r"^overrides: unknown key 'handoff\.bach'"):
        load_config(None, env={}, overrides={"node_id": "n1", "handoff.bach": 5})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[handoff]\nbatch = "500"\n', "handoff.batch: expected an integer, got string '500'"),
        ("[handoff]\nbatch = 5.0\n", "handoff.batch: expected an integer, got float 5.0"),
        ("[handoff]\nauto = 1\n", "handoff.auto: expected true or false, got integer 1"),
        ("listen = 50051\n", "listen: expected a string, got integer 50051"),
        ('[admission]\nthreshold = "high"\n', "admission.threshold: expected a number, got string 'high'"),
        ("[node]\ngc_thresholds = [1, 2]\n", "node.gc_thresholds: expected a list of 3 integers"),
        ('[tokens]\nclient = "abc"\n', "tokens.client: expected a list of strings, got string 'abc'"),
        ('peers = ["n2"]\n', "peers: expected a table of node id = address, got array"),
        ("[peers]\nn2 = 50052\n", "peers: expected a table of node id = address, got table"),
        ("tls = 1\n", "tls: expected a table [tls], got integer"),
        ("[node]\ncompletion_bins = [2.0, 1.0]\n", "node.completion_bins: (2.0, 1.0) must be strictly increasing"),
    ],
)
def test_wrong_types_name_the_key_and_the_expected_type(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, 'node_id = "n1"\n' + text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert message in str(info.value)
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FEDCOORD_INSECURE": "maybe"}, "FEDCOORD_INSECURE: insecure: expected true or false, got 'maybe'"),
        ({"FEDCOORD_HANDOFF__BATCH": "5x"}, "FEDCOORD_HANDOFF__BATCH: handoff.batch: expected an integer, got '5x'"),
        ({"FEDCOORD_DRAIN_TIMEOUT_S": "nan"}, "drain_timeout_s: expected a number, got 'nan'"),
        ({"FEDCOORD_PEERS": "n2:127.0.0.1:1"}, "FEDCOORD_PEERS: peers: expected a table of node id = address"),
        ({"FEDCOORD_NODE__GC_THRESHOLDS": "1,2"}, "node.gc_thresholds: expected a list of 3 integers"),
    ],
)
def test_wrong_environment_values_name_the_variable_and_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"FEDCOORD_NODE_ID": "n1", **env})
    assert message in str(info.value)


def test_values_out_of_range_are_refused_with_where_they_came_from(tmp_path: Path) -> None:
    path = write(tmp_path, 'node_id = "n1"\n[node]\nretention_s = -1\n')
    with pytest.raises(ConfigError, match=r"node\.retention_s: -1\.0 must be a positive number") as info:
        load_config(path, env={})
    assert info.value.source == str(path)
    with pytest.raises(ConfigError, match=r"^FEDCOORD_ADMISSION__THRESHOLD: admission\.threshold: 1\.5 out of range"):
        load_config(None, env={"FEDCOORD_NODE_ID": "n1", "FEDCOORD_ADMISSION__THRESHOLD": "1.5"})
    with pytest.raises(ConfigError, match=r"^FEDCOORD_PEERS: peers\.n1: a node is not its own peer"):
        load_config(None, env={"FEDCOORD_NODE_ID": "n1", "FEDCOORD_PEERS": "n1=127.0.0.1:1"})
    with pytest.raises(ConfigError, match=r"^overrides: core\.aging_s: -1\.0"):
        load_config(None, env={}, overrides={"node_id": "n1", "core.aging_s": -1})
    with pytest.raises(ConfigError, match="node_id is required"):
        load_config(None, env={})
    with pytest.raises(ConfigError, match=r"node_id: 'n 1' has characters"):
        load_config(None, env={"FEDCOORD_NODE_ID": "n 1"})


def test_a_missing_or_broken_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "absent.toml", env={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "node_id = \n"), env={})


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"tls": TlsSettings(cert_file=Path("c.pem"))}, "tls.key_file"),
        ({"tls": TlsSettings(Path("c.pem"), Path("k.pem"), require_client_cert=True)}, "tls.require_client_cert"),
        ({"tls": TlsSettings(ca_file=Path("ca.pem"))}, "tls.ca_file"),
        ({"insecure": True, "tls": TlsSettings(Path("c.pem"), Path("k.pem"))}, "insecure"),
        ({"tokens": TokenSettings(client=("a" * 16,)), "tokens_file": Path("t.toml")}, "tokens_file"),
        ({"tokens": TokenSettings(worker=("has space",))}, "tokens.worker"),
        ({"peer_cert_file": Path("p.pem")}, "peer_cert_file"),
        ({"listen": "nohost"}, "listen"),
        ({"metrics_listen": "127.0.0.1:70000"}, "metrics_listen"),
        ({"redis_url": "localhost:6379"}, "redis_url"),
        ({"log_format": "xml"}, "log_format"),
        ({"log_level": "loud"}, "log_level"),
        ({"drain_timeout_s": -1.0}, "drain_timeout_s"),
        ({"peers": {"n2": "has space:1"}}, "peers.n2"),
    ],
)
def test_inconsistent_settings_are_refused(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ValidationError) as info:
        ServerConfig(node_id="n1", **kwargs)
    assert info.value.field == key


def test_config_errors_survive_pickling() -> None:
    err = ConfigError("handoff.batch", "handoff.batch: expected an integer", source="node.toml", limit="1..10000")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is ConfigError
    assert str(back) == str(err) == "node.toml: handoff.batch: expected an integer (limit: 1..10000)"
    assert vars(back) == vars(err)
    assert isinstance(back, ValidationError)


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_address("[::1]:9464") == ("::1", 9464)
    assert parse_address("localhost:50051") == ("localhost", 50051)
    for bad in ("", "127.0.0.1", ":80", "h:-1", "h:x", "h:65536"):
        with pytest.raises(ValidationError):
            parse_address(bad)


# ---------------------------------------------------------------------------------- the example, dumps


def test_the_example_file_loads_and_sets_every_key_to_its_default() -> None:
    cfg = load_config(EXAMPLE, env={})
    assert cfg == ServerConfig(node_id="n1")
    with open(EXAMPLE, "rb") as f:
        documented = list(flat_keys(tomllib.load(f)))
    assert sorted(documented) == sorted(keys())  # every key, and no other


def test_node_config_maps_the_sections_onto_the_node_configs(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
node_id = "n1"
[peers]
n2 = "127.0.0.1:50052"
"n3.eu" = "127.0.0.1:50053"
[node]
window_s = 5.0
retention_s = 3600
lock_ttl_s = 4.0
takeover = true
embedded_fsync = "always"
seed = 7
gc_thresholds = ""
[core]
aging_s = 30.0
heartbeat_timeout_s = 5
max_hops = 1
[core.limits]
max_payload_bytes = 4096
[admission]
policy = "seed"
seed_low = 0.4
[handoff]
auto = false
batch = 50
""",
    )
    nc = load_config(path, env={}).node_config()
    assert (nc.window_s, nc.retention_s, nc.lock_ttl_s, nc.takeover) == (5.0, 3600.0, 4.0, True)
    assert (nc.embedded_fsync, nc.seed, nc.gc_thresholds) == ("always", 7, None)
    assert isinstance(nc.retention_s, float)  # an integer in TOML, a float field
    assert nc.core.node_id == "n1"
    assert (nc.core.aging_s, nc.core.heartbeat_timeout_s, nc.core.max_hops) == (30.0, 5.0, 1)
    assert nc.core.limits.max_payload_bytes == 4096
    assert nc.core.limits.max_batch == 10_000
    assert nc.admission == AdmissionConfig(policy="seed", seed_low=0.4)
    assert (nc.handoff.auto, nc.handoff.batch, nc.handoff.peers) == (False, 50, ("n2", "n3.eu"))


def test_dump_redacts_secrets_and_round_trips_as_toml(tmp_path: Path) -> None:
    cfg = ServerConfig(
        node_id="n1",
        redis_url="redis://user:s3cret@db:6379/0",
        tokens=TokenSettings(client=("c" * 20,), admin=("a" * 20,)),
        peer_token="p" * 20,
        peers={"n2": "127.0.0.1:50052", "n3.eu": "[::1]:50053"},
        data_dir=tmp_path / "data",
    )
    shown = cfg.dump()
    assert shown["tokens"]["client"] == ["<redacted>"]
    assert shown["peer_token"] == "<redacted>"
    assert shown["redis_url"] == "redis://user:<redacted>@db:6379/0"
    assert shown["tls"]["cert_file"] is None
    assert shown["peers"] == {"n2": "127.0.0.1:50052", "n3.eu": "[::1]:50053"}
    assert shown["core"]["limits"]["max_batch"] == 10_000
    assert "s3cret" not in dump_toml(cfg) and "c" * 20 not in dump_toml(cfg)
    back = load_config(write(tmp_path, dump_toml(cfg, redact=False)), env={})
    assert back == cfg


# ---------------------------------------------------------------------------------- [privacy]


def test_the_privacy_section_maps_onto_the_node_privacy_config_and_bins_are_one_setting(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
node_id = "n1"
[privacy]
epsilon = 2.0
delta = 1e-7
m = 2
vocabulary = ["alpha", "beta"]
completion_edges_s = [0.5, 5.0]
mechanism = "laplace"
scale = 40.0
""",
    )
    node = load_config(path, env={}).node_config()
    p = node.privacy
    assert (p.epsilon, p.delta, p.m, p.vocabulary, p.mechanism, p.scale) == (
        2.0,
        1e-7,
        2,
        ("alpha", "beta"),
        "laplace",
        40.0,
    )
    assert node.completion_bins == FixedBins((0.5, 5.0))  # given once, as the releases' bins: the summaries' too
    node = load_config(write(tmp_path, 'node_id = "n1"\n[node]\ncompletion_bins = [1.0, 2.0]\n'), env={}).node_config()
    assert node.privacy.completion_edges_s == (1.0, 2.0)  # and the other way round
    env = {"FEDCOORD_NODE_ID": "n1", "FEDCOORD_PRIVACY__EPSILON": "0.5", "FEDCOORD_PRIVACY__VOCABULARY": "x, y"}
    p = load_config(env=env).node_config().privacy
    assert (p.epsilon, p.vocabulary) == (0.5, ("x", "y"))


@pytest.mark.parametrize(
    ("text", "key", "says"),
    [
        ("epsilon = 0.0", "privacy.epsilon", "must be positive"),
        ("epsilon = -1.0", "privacy.epsilon", "must be positive"),
        ("delta = 1.0", "privacy.delta", "outside (0, 1)"),
        ("delta = 0.0", "privacy.delta", "outside (0, 1)"),
        ("vocabulary = []", "privacy.vocabulary", "is empty"),
        ('vocabulary = ["a", "other"]', "privacy.vocabulary", "reserved"),
        ("completion_edges_s = [5.0, 1.0]", "privacy.completion_edges_s", "strictly increasing"),
        ("completion_edges_s = []", "privacy.completion_edges_s", "non-empty"),
        ("m = 0", "privacy.m", "at least 1"),
        ('mechanism = "uniform"', "privacy.mechanism", "uniform"),
        ("m = 1.5", "privacy.m", "expected an integer"),
        ("epsilon = 1e5", "privacy.epsilon", "too large"),
        ("scale = 1e300", "privacy.scale", "0 < scale <= 1e+09"),
        # a budget smaller than one release: refused before anything starts (OpenDP says what it costs)
        ("scale = 0.5", "privacy.scale", "more than the whole budget"),
        ('vocabulary = ["a", "b", "a"]', "privacy.vocabulary", "lists 'a' twice"),
    ],
)
def test_bad_privacy_settings_are_refused_naming_the_setting_and_the_file(
    tmp_path: Path, text: str, key: str, says: str
) -> None:
    path = write(tmp_path, f'node_id = "n1"\n[privacy]\n{text}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={}).node_config()
    assert info.value.field == key
    assert str(info.value).startswith(f"{path}: {key}: ") and says in str(info.value)
