"""The simulator's Flower engine path: the real ServerApp and ClientApp in Flower's simulation
engine against simulated nodes give the event path's result on the same config."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from federation.sim import SimConfig, simulate
from federation.sim.flower import check_config, simulate_flower
from node.errors import ValidationError

_CLI = [sys.executable, "-m", "fedcoord"]
_NOT_RESULT = ("flower", "wall_s", "events_per_s", "engine")  # the engine path's own, and wall times


def _comparable(result: dict[str, object]) -> str:
    return json.dumps({k: v for k, v in result.items() if k not in _NOT_RESULT}, sort_keys=True)


_WORKLOADS = {
    "adaptive": ["--nodes", "4", "--slots", "2,4", "--spread", "0.3", "--duration-s", "300", "--policy", "adaptive",
                 "--epsilon", "1", "--seed", "1"],
    # nodes down at rounds: missing from the view in both paths alike (no share: local threshold)
    "seed, nodes failing": ["--nodes", "6", "--slots", "2,8", "--spread", "0.5", "--duration-s", "600", "--mtbf-s",
                            "120", "--mttr-s", "30", "--policy", "seed", "--epsilon", "10", "--seed", "1"],
}  # fmt: skip


@pytest.mark.parametrize("name", list(_WORKLOADS))
def test_flower_rounds_give_the_event_paths_result(name: str) -> None:
    """``fedcoord simulate --engine flower`` (in a process of its own: Ray starts there, and is
    gone after) gives, byte for byte, the event path's result of the config it ran."""
    args = ["simulate", *_WORKLOADS[name], "--engine", "flower", "--json"]
    done = subprocess.run([*_CLI, *args], check=False, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    res = json.loads(done.stdout)
    fl = res["flower"]
    assert fl["errors"] == 0
    assert fl["rounds"] >= res["config"]["duration_s"] // 20  # every period of the run went through Flower
    sharing = res["sharing"]
    assert sharing["rounds"] == fl["rounds"]
    nodes = res["config"]["nodes"]
    assert sharing["privacy"]["releases"] == nodes * fl["rounds"] - fl["missing"]  # every node up released
    assert sharing["handed_off"] > 0
    if res["failures"] is None:
        assert fl["missing"] == 0
    else:
        assert res["failures"]["crashes"] > 0 and fl["missing"] > 0
    assert res["config"]["view_delay_s"] is None  # a period, as deployed: in the next round's query
    assert res["engine"]["engine"] == "flower" and res["engine"]["round_latency_s"]["max"] > 0
    event = simulate(SimConfig.from_record(res["config"]))
    assert _comparable(res) == _comparable(event.result)
    # and the rounds made a difference: without a view (local thresholds) the run is another
    local = simulate(SimConfig.from_record({**res["config"], "policy": "random"}))
    assert local.result["sojourn_s"] != res["sojourn_s"]


@pytest.mark.parametrize(
    ("change", "name"),
    [({"policy": "none"}, "sim.policy"), ({"policy": "oracle"}, "sim.policy"), ({"epsilon": None}, "sim.epsilon"),
     ({"nodes": 5000}, "sim.nodes")],
)  # fmt: skip
def test_flower_engine_refuses_what_it_cannot_run(change: dict[str, object], name: str) -> None:
    base: dict[str, object] = {"nodes": 4, "policy": "adaptive", "epsilon": 1.0}
    cfg = SimConfig(**{**base, **change})  # type: ignore[arg-type]
    with pytest.raises(ValidationError) as e:
        check_config(cfg)
    assert e.value.field == name
    with pytest.raises(ValidationError):
        simulate_flower(cfg)


_FORKS = """
import subprocess
from concurrent import futures
import node  # first, as every entry point of ours does
import grpc
server = grpc.server(futures.ThreadPoolExecutor(2))
server.add_insecure_port("127.0.0.1:0")
server.start()
for _ in range(10):  # as Ray starts its GCS and raylet: a real fork (preexec_fn), a gRPC server running
    assert subprocess.Popen(["true"], preexec_fn=lambda: None).wait() == 0
server.stop(None)
"""


def _python_without_grpc_env(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter whose environment has no GRPC_* variable but ``env``'s."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    argv = [sys.executable, "-c", code]
    done = subprocess.run(argv, check=False, env={**clean, **env}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def test_no_grpc_fork_handler_runs_in_the_children_ray_forks() -> None:
    """gRPC's fork handlers, which now and then killed Ray's GCS or raylet before it ran, are off
    once ``node`` is imported (when on, they log at INFO each fork they skip, most forks here)."""
    done = _python_without_grpc_env(_FORKS, GRPC_VERBOSITY="INFO")
    assert "fork_posix" not in done.stderr, done.stderr[-2000:]


_WHEN_GRPC_LOADS = """
import os, sys
seen = []
class Watch:  # what the environment says when grpc is first imported
    def find_spec(self, name, path=None, target=None):
        if name == "grpc" and not seen:
            seen.append(os.environ.get("GRPC_ENABLE_FORK_SUPPORT"))
sys.meta_path.insert(0, Watch())
import fedcoord.cli  # the console script's module
import federation.sim.flower  # the path that starts Ray beside a gRPC server
print(seen)
"""


@pytest.mark.parametrize(("preset", "seen"), [(None, "0"), ("1", "1")])
def test_grpc_loads_with_fork_support_off_unless_the_environment_says(preset: str | None, seen: str) -> None:
    env = {} if preset is None else {"GRPC_ENABLE_FORK_SUPPORT": preset}
    done = _python_without_grpc_env(_WHEN_GRPC_LOADS, **env)
    assert done.stdout.strip() == repr([seen])
