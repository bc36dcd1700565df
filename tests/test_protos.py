"""The committed generated code matches the .proto sources (regenerated with the pinned tools)."""

from __future__ import annotations

from pathlib import Path

from protos.generate import ROOT, generate


def test_generated_code_matches_the_proto_sources(tmp_path: Path) -> None:
    written = generate(tmp_path)
    names = {p.name for p in written}
    assert {"node_pb2.py", "node_pb2_grpc.py", "handoff_pb2.py", "common_pb2.pyi"} <= names
    committed_dir = ROOT / "protos" / "fedcoord" / "v1"
    committed = {p.name for p in committed_dir.iterdir() if p.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"))}
    assert committed == names, "generated files and committed files differ: run `python -m protos.generate`"
    stale = [p.name for p in written if p.read_bytes() != (committed_dir / p.name).read_bytes()]
    assert not stale, f"committed generated code is stale for {stale}: run `python -m protos.generate`"


def test_services_are_in_package_fedcoord_v1() -> None:
    from protos.fedcoord.v1 import handoff_pb2, node_pb2  # noqa: PLC0415

    assert node_pb2.DESCRIPTOR.package == "fedcoord.v1"
    assert set(node_pb2.DESCRIPTOR.services_by_name) == {"NodeService"}
    assert set(handoff_pb2.DESCRIPTOR.services_by_name) == {"HandoffService"}
    methods = {m.name for m in node_pb2.DESCRIPTOR.services_by_name["NodeService"].methods}
    assert {"Submit", "Work", "Heartbeat", "Complete", "Fail", "Cancel", "GetTask", "Watch", "Stats"} <= methods
