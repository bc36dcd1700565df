"""Regenerate the Python code of the ``.proto`` files under ``protos/fedcoord/v1/``.

Run from anywhere: ``python -m protos.generate`` (or ``python protos/generate.py``); with
``--out DIR`` it writes there instead of beside the sources (the drift test compares the two).
Uses the pinned ``grpcio-tools`` (see pyproject.toml: a newer one needs protobuf 7, which breaks
Flower). The repository root is the include path, so generated imports read
``protos.fedcoord.v1...``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "protos" / "fedcoord" / "v1").glob("*.proto"))


def generate(out: Path) -> list[Path]:
    """Write ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` for every source under ``out``
    (mirroring ``protos/fedcoord/v1``); returns the files written."""
    from grpc_tools import protoc  # noqa: PLC0415 (a dev dependency: only needed to regenerate)

    out.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(p.relative_to(ROOT)) for p in SOURCES),
    ]
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        rc = protoc.main(args)
    finally:
        os.chdir(cwd)
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}")
    gen = out / "protos" / "fedcoord" / "v1"
    return sorted(p for p in gen.iterdir() if p.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT, help="root to write under (default: the repository)")
    ns = ap.parse_args(argv)
    for p in generate(ns.out):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
