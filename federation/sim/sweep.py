"""A privacy sweep: the same workload over a grid of epsilon x policy x seed, in parallel, resumable.

Every cell is one :func:`~federation.sim.run.simulate` run of the base config with the cell's
policy, epsilon (None: no noise) and seed. Policies that read no federation view (``none``,
``random``, ``oracle``) do not depend on epsilon (their runs are the same byte for byte at every
epsilon), so they run once per seed and stand for every epsilon of the grid.

Cells run in worker processes (``python -m federation.sim.worker``, JSON lines both ways). Each
finished cell is appended to ``cells.jsonl`` in the output directory and flushed at once, so an
interrupted sweep keeps what it finished; run it again with the same settings and only the
missing cells run. ``sweep.json`` holds the settings: a directory of another sweep is refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from federation.sim.config import SIM_POLICIES, SimConfig
from node.errors import FedcoordError, ValidationError

__all__ = ["VIEW_POLICIES", "Cell", "SweepConfig", "SweepError", "rows_of", "run_sweep", "summarize"]

VIEW_POLICIES = ("seed", "adaptive")  # the policies that read the federation's (noisy) view
DEFAULT_EPSILONS: tuple[float | None, ...] = (None, 10.0, 3.0, 1.0, 0.3, 0.1)


class SweepError(FedcoordError):
    """A sweep could not run (its directory holds another sweep, a worker died, a cell failed)."""


def _default_base() -> SimConfig:
    return SimConfig(nodes=100, slots=(4, 8, 16), load=0.9, spread=0.3, duration_s=1800.0, warmup_s=300.0)


@dataclass(frozen=True, slots=True)
class SweepConfig:
    base: SimConfig = field(default_factory=_default_base)
    epsilons: tuple[float | None, ...] = DEFAULT_EPSILONS
    policies: tuple[str, ...] = ("none", "seed", "adaptive", "oracle")
    seeds: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        if not self.epsilons:
            raise ValidationError("sweep.epsilons", "is empty", limit="at least one value (or none: no noise)")
        for e in self.epsilons:
            if e is not None and (isinstance(e, bool) or not isinstance(e, int | float) or not 0 < e <= 1000):
                raise ValidationError("sweep.epsilons", f"{e!r}", limit="0 < epsilon <= 1000, or none (no noise)")
        if len(set(self.epsilons)) != len(self.epsilons):
            raise ValidationError("sweep.epsilons", f"{list(self.epsilons)!r} lists a value twice")
        if not self.policies:
            raise ValidationError("sweep.policies", "is empty", limit=" | ".join(SIM_POLICIES))
        for p in self.policies:
            if p not in SIM_POLICIES:
                raise ValidationError("sweep.policies", f"{p!r} is not a policy", limit=" | ".join(SIM_POLICIES))
        if len(set(self.policies)) != len(self.policies):
            raise ValidationError("sweep.policies", f"{list(self.policies)!r} lists a policy twice")
        if not self.seeds or any(type(s) is not int for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise ValidationError("sweep.seeds", f"{list(self.seeds)!r}", limit="distinct ints, at least one")

    def to_record(self) -> dict[str, Any]:
        return {
            "base": self.base.to_record(),
            "epsilons": list(self.epsilons),
            "policies": list(self.policies),
            "seeds": list(self.seeds),
        }

    def cells(self) -> list[Cell]:
        out: list[Cell] = []
        for policy in self.policies:
            eps = self.epsilons if policy in VIEW_POLICIES else (None,)
            for e in eps:
                out.extend(Cell(policy, e, seed) for seed in self.seeds)
        return out


@dataclass(frozen=True, slots=True)
class Cell:
    policy: str
    epsilon: float | None
    seed: int

    @property
    def key(self) -> str:
        return f"{self.policy}|{'none' if self.epsilon is None else repr(float(self.epsilon))}|{self.seed}"

    def config(self, base: SimConfig) -> SimConfig:
        rec = {**base.to_record(), "policy": self.policy, "epsilon": self.epsilon, "seed": self.seed}
        return SimConfig.from_record(rec)


def _read_done(path: Path) -> dict[str, dict[str, Any]]:
    """The cells finished before (a torn last line, from a kill mid-write, is dropped)."""
    done: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "key" in rec and "result" in rec:
            done[rec["key"]] = rec
    return done


def _ran(rec: dict[str, Any], want: SimConfig) -> bool:
    """Whether a recorded cell ran ``want`` (its result's config, read back as a config)."""
    try:
        return SimConfig.from_record(rec["result"]["config"]) == want
    except (KeyError, TypeError, ValidationError):
        return False


def _prepare(cfg: SweepConfig, out_dir: Path) -> dict[str, dict[str, Any]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = out_dir / "sweep.json"
    want = cfg.to_record()
    if meta.exists():
        try:
            have = json.loads(meta.read_text())
        except json.JSONDecodeError:
            have = None
        if have != want:
            raise SweepError(
                f"{out_dir} holds another sweep (its sweep.json has other settings): choose another "
                "directory, or delete that one to start over"
            )
    else:
        tmp = meta.with_suffix(".tmp")
        tmp.write_text(json.dumps(want, indent=1) + "\n")
        tmp.replace(meta)  # whole or not at all
    log = out_dir / "cells.jsonl"
    if log.exists() and log.stat().st_size:
        with log.open("rb+") as f:  # a torn last line (killed mid-write): cut it, or the next record joins it
            data = f.read()
            if not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
    return _read_done(log)


class _Worker:
    def __init__(self) -> None:
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "federation.sim.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the sweep, which stops its workers
        )
        self.cell: Cell | None = None

    def send(self, cell: Cell, base: SimConfig) -> None:
        assert self.proc.stdin is not None
        self.cell = cell
        self.proc.stdin.write(json.dumps({"key": cell.key, "config": cell.config(base).to_record()}) + "\n")
        self.proc.stdin.flush()

    @property
    def stdout(self) -> IO[str]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


def run_sweep(
    cfg: SweepConfig,
    out_dir: Path,
    *,
    workers: int = 2,
    ray_address: str | None = None,
    on_cell: Callable[[Cell, dict[str, Any], bool], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every cell not finished in ``out_dir`` before; the records of all cells, in grid
    order. ``on_cell(cell, record, resumed)`` after each (``resumed``: finished in an earlier run).

    With ``ray_address`` the cells run as Ray tasks on that cluster (``"local"``: a Ray started
    for this sweep on this machine) instead of ``workers`` local processes."""
    import selectors  # noqa: PLC0415

    if type(workers) is not int or not 1 <= workers <= 256:
        raise ValidationError("sweep.workers", f"{workers!r}", limit="1..256")
    done = _prepare(cfg, out_dir)
    cells = cfg.cells()
    for c in cells:  # a cell whose recorded config is not this sweep's runs again (its new line wins)
        if c.key in done and not _ran(done[c.key], c.config(cfg.base)):
            del done[c.key]
    todo = [c for c in cells if c.key not in done]
    for c in cells:
        if c.key in done and on_cell is not None:
            on_cell(c, done[c.key], True)
    if todo and ray_address is not None:
        with (out_dir / "cells.jsonl").open("a") as log:
            _run_on_ray(cfg, todo, address=ray_address, log=log, done=done, on_cell=on_cell)
    elif todo:
        pending: Iterator[Cell] = iter(todo)
        pool: list[_Worker] = []
        sel = selectors.DefaultSelector()
        try:
            pool.extend(_Worker() for _ in range(min(workers, len(todo))))
            with (out_dir / "cells.jsonl").open("a") as log:
                for w in pool:
                    first = next(pending, None)
                    if first is not None:
                        w.send(first, cfg.base)
                        sel.register(w.stdout, selectors.EVENT_READ, w)
                busy = len(sel.get_map())
                while busy:
                    for key, _ in sel.select():
                        w = key.data
                        line = w.stdout.readline()
                        if not line:
                            raise SweepError(f"a worker process died (exit {w.proc.wait()}) running cell {w.cell}")
                        try:
                            rec = json.loads(line)
                        except json.JSONDecodeError:
                            raise SweepError(f"a worker answered cell {w.cell} with no JSON: {line[:200]!r}") from None
                        _keep(log, done, rec)
                        if on_cell is not None:
                            on_cell(w.cell, rec, False)
                        following = next(pending, None)
                        if following is None:
                            sel.unregister(w.stdout)
                            busy -= 1
                        else:
                            w.send(following, cfg.base)
        finally:
            sel.close()
            for w in pool:
                w.close()
    return [done[c.key] for c in cells]


def _keep(log: IO[str], done: dict[str, dict[str, Any]], rec: dict[str, Any]) -> None:
    if "error" in rec:
        raise SweepError(f"cell {rec['key']} failed: {rec['error']}")
    log.write(json.dumps(rec) + "\n")
    log.flush()
    os.fsync(log.fileno())
    done[rec["key"]] = rec


def _reachable(address: str, timeout_s: float = 5.0) -> None:
    """Refuse an address nothing answers at (``ray.init`` would retry for minutes)."""
    import socket  # noqa: PLC0415

    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(f"--ray-address {address!r}: expected host:port, ray://host:port or local")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise SweepError(f"no Ray cluster answers at {address!r}: {e}") from None


def _run_on_ray(
    cfg: SweepConfig,
    todo: list[Cell],
    *,
    address: str,
    log: IO[str],
    done: dict[str, dict[str, Any]],
    on_cell: Callable[[Cell, dict[str, Any], bool], None] | None,
) -> None:
    """The cells as Ray tasks: each gets its request line (JSON text) and answers one (Ray moves
    them as strings; the records themselves are never pickled objects)."""
    try:
        import ray  # noqa: PLC0415
    except ImportError:
        raise SweepError(
            "--ray-address needs Ray: pip install 'fedcoord[simulation]' (Flower's simulation extra)"
        ) from None
    from federation.sim.worker import run_cell  # noqa: PLC0415

    if address not in ("local", "auto"):
        _reachable(address)
    started = not ray.is_initialized()
    if started:
        try:
            if address == "local":
                ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
            elif address == "auto":  # the cluster this machine belongs to (RAY_ADDRESS or a running head)
                ray.init(address="auto", log_to_driver=False, configure_logging=False)
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise SweepError(f"could not join the Ray cluster at {address!r}: {e}") from None
    waiting: list[Any] = []
    try:
        remote = ray.remote(run_cell)
        by_ref = {}
        for c in todo:
            line = json.dumps({"key": c.key, "config": c.config(cfg.base).to_record()})
            by_ref[remote.remote(line)] = c
        waiting = list(by_ref)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            for ref in ready:
                try:
                    rec = json.loads(ray.get(ref))
                except ray.exceptions.RayError as e:
                    raise SweepError(f"cell {by_ref[ref].key} failed on Ray: {e}") from None
                _keep(log, done, rec)
                if on_cell is not None:
                    on_cell(by_ref[ref], rec, False)
    finally:
        for ref in waiting:
            ray.cancel(ref, force=True)  # (stopped early: nothing left running on the cluster)
        if started:
            ray.shutdown()


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def rows_of(cfg: SweepConfig, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per (policy, epsilon, seed) of the grid: a policy that reads no view gets its
    one run per seed in every epsilon's row (the same run: it does not depend on epsilon)."""
    by_key = {r["key"]: r for r in records}
    rows = []
    for policy in cfg.policies:
        for e in cfg.epsilons:
            for seed in cfg.seeds:
                cell = Cell(policy, e if policy in VIEW_POLICIES else None, seed)
                rec = by_key.get(cell.key)
                if rec is None:
                    continue
                r = rec["result"]
                sh = r.get("sharing") or {}
                rows.append({
                    "policy": policy,
                    "epsilon": "none" if e is None else e,
                    "seed": seed,
                    "tasks": r["tasks"],
                    "sojourn_mean_s": _get(r, "sojourn_s", "mean"),
                    "sojourn_p50_s": _get(r, "sojourn_s", "p50"),
                    "sojourn_p99_s": _get(r, "sojourn_s", "p99"),
                    "timeout_rate": r.get("timeout_rate"),
                    "reject_rate": sh.get("reject_rate", 0.0),
                    "handoff_rate": sh.get("handoff_rate", 0.0),
                    "bounce_rate": sh.get("bounce_rate", 0.0),
                    "herding_mean": _get(sh, "herding", "mean"),
                    "imbalance_cv": _get(r, "imbalance", "cv_mean"),
                    "utilization": _get(r, "utilization", "mean"),
                    "epsilon_spent": _get(sh, "privacy", "epsilon_spent_max") or 0.0,
                    "wall_s": rec.get("wall_s"),
                })  # fmt: skip
    return rows


def _mean(xs: Sequence[Any]) -> float | None:
    vals = [float(x) for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def summarize(cfg: SweepConfig, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means over seeds per (policy, epsilon), and the headline numbers of our policy: its p99
    cut against no sharing, how far it is from the oracle, and how much of its noiseless
    improvement it keeps at each epsilon."""
    table: dict[str, dict[str, dict[str, float | None]]] = {}
    metrics = [k for k in rows[0] if k not in ("policy", "epsilon", "seed")] if rows else []
    for policy in cfg.policies:
        table[policy] = {}
        for e in cfg.epsilons:
            label = "none" if e is None else repr(float(e))
            sel = [r for r in rows if r["policy"] == policy and r["epsilon"] == ("none" if e is None else e)]
            if sel:
                table[policy][label] = {m: _mean([r[m] for r in sel]) for m in metrics}

    def p99(policy: str, label: str) -> float | None:
        return (table.get(policy, {}).get(label) or {}).get("sojourn_p99_s")

    head: dict[str, Any] = {}
    for policy in (p for p in cfg.policies if p != "none"):
        per_eps = {}
        for e in cfg.epsilons:
            label = "none" if e is None else repr(float(e))
            ours, base, best = p99(policy, label), p99("none", label), p99("oracle", label)
            noiseless = p99(policy, "none")
            entry: dict[str, float | None] = {"p99_s": ours}
            if ours is not None and base:
                entry["cut_vs_none"] = 1.0 - ours / base
            if ours is not None and best:
                entry["over_oracle"] = ours / best - 1.0
            if ours is not None and base and noiseless is not None and base != noiseless:
                entry["kept_of_noiseless_gain"] = (base - ours) / (base - noiseless)
            per_eps[label] = entry
        head[policy] = per_eps
    return {"by_policy": table, "headline": head}
