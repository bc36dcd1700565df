"""deploy/ without a Docker engine: the compose file parses, every service of ours runs a fedcoord
command that exists with flags the real CLI accepts, the Dockerfiles copy what exists and start
the command the compose file gives arguments to, and TLS is used everywhere."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
import pytest
import typer
import yaml

from fedcoord.cli import app

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def entrypoint(dockerfile: str) -> list[str]:
    text = (ROOT / dockerfile).read_text()
    m = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M)
    assert m is not None, f"{dockerfile}: no ENTRYPOINT"
    return list(yaml.safe_load(m[1]))


def parse(argv: list[str]) -> click.Context:
    """Parse ``argv`` (after ``fedcoord``) with the real CLI, without running anything."""
    group = typer.main.get_command(app)
    assert isinstance(group, click.Group)
    sub = group.get_command(click.Context(group), argv[0])
    assert sub is not None, f"fedcoord has no command {argv[0]!r}"
    return sub.make_context(argv[0], list(argv[1:]))


def ours() -> dict[str, tuple[list[str], list[str]]]:
    """Service -> (entrypoint, command) for every service built from our Dockerfiles."""
    out = {}
    for name, svc in compose()["services"].items():
        build = svc.get("build")
        if build is not None:
            assert (ROOT / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} missing"
            out[name] = (entrypoint(build["dockerfile"]), [str(a) for a in svc.get("command", [])])
    return out


def test_the_compose_file_has_three_nodes_their_redis_workers_and_the_aggregator() -> None:
    services = compose()["services"]
    assert {"aggregator", "n1", "n2", "n3", "redis1", "redis2", "redis3", "w1", "w2", "w3"} <= set(services)
    for i in (1, 2, 3):
        assert services[f"redis{i}"]["image"].startswith("redis:7")
        assert "--appendonly" in services[f"redis{i}"]["command"]


@pytest.mark.parametrize("service", sorted(ours()))
def test_every_service_command_exists_and_its_flags_are_accepted(service: str) -> None:
    entry, command = ours()[service]
    assert entry[0] == "fedcoord", entry
    ctx = parse([*entry[1:], *command])  # raises on an unknown command, flag or bad value
    assert ctx.command.name == entry[1]


def test_a_wrong_flag_would_be_caught() -> None:
    with pytest.raises(click.UsageError):
        parse(["node", "--no-such-flag", "x"])
    with pytest.raises(AssertionError, match="no command"):
        parse(["nodee"])


def test_tls_everywhere_no_plaintext_and_each_node_joins_the_federation() -> None:
    for service, (entry, command) in ours().items():
        assert "--insecure" not in command, service
        if entry[1] in ("node", "aggregator"):
            assert "--tls-cert" in command and "--tls-key" in command and "--tls-ca" in command, service
        if entry[1] == "node":
            assert "--tokens" in command and "--federation" in command and "--federation-ca" in command, service
            assert command[command.index("--federation") + 1] == "aggregator:9092"
        if entry[1] == "worker":
            assert "--ca" in command, service


def test_dockerfiles_copy_only_what_exists() -> None:
    for dockerfile in DEPLOY.glob("Dockerfile.*"):
        for src in re.findall(r"^COPY\s+(.+?)\s+\S+\s*$", dockerfile.read_text(), re.M):
            for part in src.split():
                assert (ROOT / part).exists(), f"{dockerfile.name}: COPY {part}: not in the repository"


# ---------------------------------------------------------------------------- metrics: Prometheus, Grafana


def exported_metrics() -> set[str]:
    """Every series name a node's /metrics can have: the families in node/rpc/metrics.py, with
    the suffixes Prometheus gives counters and histograms."""
    src = (ROOT / "node" / "rpc" / "metrics.py").read_text()
    families = set(re.findall(r'"(fedcoord_[a-z_]+)"', src))
    assert {"fedcoord_load_ratio", "fedcoord_tasks", "fedcoord_commit_duration_seconds"} <= families
    return families | {f + s for f in families for s in ("_total", "_bucket", "_sum", "_count")}


def grafana_dashboard() -> dict[str, Any]:
    import json  # noqa: PLC0415

    data: dict[str, Any] = json.loads((DEPLOY / "grafana" / "dashboards" / "fedcoord.json").read_text())
    return data


def test_the_grafana_dashboard_queries_only_metrics_a_node_exports() -> None:
    dash = grafana_dashboard()
    known = exported_metrics()
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 12
    used = {m for e in exprs for m in re.findall(r"\b(fedcoord_[a-z_]+)", e)}
    assert used <= known, f"not exported: {sorted(used - known)}"
    assert {"fedcoord_load_ratio", "fedcoord_admission_threshold", "fedcoord_queue_depth"} <= used
    for e in exprs:  # brackets balance, and every selector is filtered to the chosen nodes
        assert e.count("(") == e.count(")") and e.count("{") == e.count("}"), e
        assert all(sel.startswith('node=~"$node"') for sel in re.findall(r"fedcoord_[a-z_]+\{([^}]*)\}", e)), e
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:  # no two panels overlap on the 24-column grid
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24
    cells = [(p["gridPos"]["y"] + dy, p["gridPos"]["x"] + dx) for p in dash["panels"]
             for dy in range(p["gridPos"]["h"]) for dx in range(p["gridPos"]["w"])]  # fmt: skip
    assert len(cells) == len(set(cells))


def test_grafana_and_prometheus_are_wired_to_the_nodes() -> None:
    services = compose()["services"]
    prom, graf = services["prometheus"], services["grafana"]
    prom_cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t: c["labels"]["node"]
        for job in prom_cfg["scrape_configs"]
        for c in job["static_configs"]
        for t in c["targets"]
    }
    for node in ("n1", "n2", "n3"):
        cmd = [str(a) for a in services[node]["command"]]
        port = cmd[cmd.index("--metrics-listen") + 1].rsplit(":", 1)[1]
        assert targets[f"{node}:{port}"] == node
    for svc in (prom, graf):
        for vol in svc["volumes"]:
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (DEPLOY / src).exists(), vol
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    (source,) = ds["datasources"]
    assert source["url"] == "http://prometheus:9090"
    uids = {p["datasource"]["uid"] for p in grafana_dashboard()["panels"]}
    assert uids == {source["uid"]}
    assert all(port.startswith("127.0.0.1:") for svc in (prom, graf) for port in svc["ports"])
