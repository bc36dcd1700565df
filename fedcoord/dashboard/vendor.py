"""Fetch the dashboard's chart library from the npm registry into ``static/vendor/``.

    python -m fedcoord.dashboard.vendor 6.1.0

Downloads ``echarts-VERSION.tgz``, checks its SHA-1 against the registry's ``dist.shasum``, and
writes ``dist/echarts.min.js`` with the licence files to ``static/vendor/echarts-VERSION/``.
The pages name the version in their ``<script>`` tags: update those too.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import sys
import tarfile
import urllib.request

from fedcoord.dashboard.web import STATIC

__all__ = ["fetch"]

REGISTRY = "https://registry.npmjs.org/echarts"
FILES = {"package/dist/echarts.min.js": "echarts.min.js", "package/LICENSE": "LICENSE", "package/NOTICE": "NOTICE"}


def fetch(version: str) -> str:
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise ValueError(f"{version!r} is not a version (like 6.1.0)")
    with urllib.request.urlopen(f"{REGISTRY}/{version}", timeout=60) as r:
        meta = json.load(r)
    want = meta["dist"]["shasum"]
    with urllib.request.urlopen(meta["dist"]["tarball"], timeout=120) as r:
        blob = r.read()
    got = hashlib.sha1(blob, usedforsecurity=False).hexdigest()
    if got != want:
        raise RuntimeError(f"echarts {version}: shasum {got} is not the registry's {want}")
    out = STATIC / "vendor" / f"echarts-{version}"
    shutil.rmtree(out, ignore_errors=True)
    (out / "licenses").mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        for m in tar.getmembers():
            name = FILES.get(m.name) or (
                f"licenses/{m.name.rsplit('/', 1)[1]}" if m.name.startswith("package/licenses/") else None
            )
            if name is None or not m.isfile():
                continue
            f = tar.extractfile(m)
            assert f is not None
            (out / name).write_bytes(f.read())
    return f"{out} (sha1 {got})"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.stderr.write(__doc__ or "")
        raise SystemExit(2)
    print(fetch(sys.argv[1]))
