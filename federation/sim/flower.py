"""The simulator's Flower engine path: the federation's rounds through Flower's simulation engine.

``fedcoord simulate --engine flower`` runs the same simulated nodes as the event path (the real
scheduling core, hand-off and admission on the virtual clock, :mod:`federation.sim.run`) but
leaves the rounds to Flower: at each round's virtual time the simulator stops, and

* the ServerApp's round (:func:`federation.server_app.serve` and ``run_round``: one
  ``query.summary`` broadcast carrying the previous round's view, replies aggregated with
  :func:`federation.aggregate.aggregate`) runs in Flower's simulation engine;
* each simulated node is a SuperNode whose ClientApp is the deployed one's
  (:func:`federation.client_app.answer`): it calls its node over gRPC with the real
  :class:`~node.rpc.client.NodeClient`, ``ApplyFederation`` with the view, then ``Summary``;
* the nodes' gRPC service here answers for every simulated node (told apart by the bearer token
  the ClientApp sends: its node's name) from the paused simulator: the release is the node's
  window through the privacy pipeline with its accountant and ledger, the view goes into its
  admission, dated by the node's virtual clock.

When the round is over the simulator goes on. So what the event path does in-process, here
crosses Flower's messages, the records codec and gRPC; the decisions and the noise draws are
the same. As deployed, a node gets a round's view with the next round's query, a period later:
the event path with ``view_delay_s`` None (a period, its default) runs the same federation, and gives the same
result when every node that was up answered every round in time (``result["flower"]`` counts
the node-rounds without a summary: nodes down, as in the event path, and answers too late).

Flower's Python entry point for this, ``flwr.simulation.run_simulation``, is marked deprecated
in 1.41 in favour of ``flwr run``, which runs the ServerApp in a process of its own: the
simulator's clock could then not pause for a round. The ServerApp here runs in a thread of this
process, and the ClientApps in Ray actors (separate processes: they reach the nodes over gRPC,
nothing of ours is pickled but a reference to the module-level apps).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc

from federation.privacy.status import PrivacyStatus, ReleaseOutcome, ReleaseStatus
from federation.server_app import RoundResult, ServerSettings
from federation.sim.config import SimConfig
from federation.sim.run import SimResult, simulate
from federation.sim.share import Sharing
from node.errors import FedcoordError, ValidationError
from node.rpc import convert as cv
from protos.fedcoord.v1 import node_pb2 as npb

__all__ = ["ADDRESS_ENV", "EngineError", "simulate_flower"]

log = logging.getLogger("fedcoord.sim.flower")

ADDRESS_ENV = "FEDCOORD_SIM_NODES"  # where the ClientApps find the simulated nodes' gRPC service
NODE_SERVICE = npb.DESCRIPTOR.services_by_name["NodeService"].full_name
_FLWR_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    # Ray warns (FutureWarning) on every actor with num_gpus=0 that it will stop overriding
    # CUDA_VISIBLE_DEVICES: no GPUs here, the new behaviour is fine
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


class EngineError(FedcoordError):
    """The Flower engine path could not run (Flower, Ray or a round failed)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _NodeDown(Exception):
    """The simulated node asked for is down (its gRPC answer: UNAVAILABLE)."""


_STOPPED = object()  # the ServerApp's side has ended: a simulator waiting for a round must stop


class _Bridge:
    """Between the simulator's thread and the ServerApp's: the simulator hands over at each
    round's virtual time (``__call__``, as :class:`Sharing`'s external rounds) and waits; the
    ServerApp's :class:`~federation.server_app.RoundClock` side runs the round and hands back."""

    def __init__(self, cfg: SimConfig, settings: ServerSettings, nodes_wait_s: float):
        self.cfg = cfg
        self.settings = settings  # the ServerApp's
        self.nodes_wait_s = nodes_wait_s
        self.lock = threading.Lock()  # the paused simulator's state, for the gRPC handlers
        self.sharing: Sharing | None = None
        self.now = 0
        self.open = False  # a round is under way: the simulator waits (the nodes answer only then)
        self.error: BaseException | None = None  # why the ServerApp stopped, if it failed
        self.stopping = threading.Event()  # the engine ended (or failed): the ServerApp stops waiting
        self._due: queue.Queue[int | None] = queue.Queue()  # simulator -> ServerApp: a round's ns, None: the end
        self._over: queue.Queue[object] = queue.Queue()  # ServerApp -> simulator: the round is over
        self.rounds: list[RoundResult] = []
        self.latency_s: list[float] = []
        self.missing = 0  # node-rounds without a summary merged
        self.errors = 0

    # the simulator's side ---------------------------------------------------------------------

    def __call__(self, sharing: Sharing, now: int) -> None:
        with self.lock:
            self.sharing, self.now, self.open = sharing, now, True
        self._due.put(now)
        over = self._over.get()
        with self.lock:  # an answer later than the round's TTL must not touch the running simulator
            self.open = False
        if over is _STOPPED:
            why = f": {self.error!r}" if self.error is not None else ""
            raise EngineError(f"the Flower ServerApp stopped before the simulation ended{why}")

    def end(self) -> None:
        self._due.put(None)

    # the ServerApp's side (a RoundClock) ----------------------------------------------------

    def wait(self, round_no: int) -> bool:
        return self._due.get() is not None

    def done(self, result: RoundResult) -> None:
        self.rounds.append(result)
        self.latency_s.append(result.latency_s)
        self.missing += len(result.view.missing) + len(result.view.dropped)
        self.errors += len(result.errors)
        self._over.put(True)

    def stopped(self) -> None:
        self.stopping.set()
        self._over.put(_STOPPED)

    # the simulated nodes, for the gRPC service ---------------------------------------------

    def node(self, token: str) -> int | None:
        sharing = self.sharing
        return sharing.index.get(token) if sharing is not None else None

    def summary(self, i: int) -> ReleaseOutcome:
        with self.lock:
            sh = self.sharing
            assert sh is not None
            if not self.open:
                return ReleaseOutcome(ReleaseStatus.UNAVAILABLE, None, "no round under way", None, sh.ids[i])
            if sh.down[i]:
                return ReleaseOutcome(ReleaseStatus.UNAVAILABLE, None, "the node is down", None, sh.ids[i])
            w = self.now // sh.window_ns - 1
            summary = sh.release(i, w, self.now)
            status = _privacy_status(sh, i)
            nid = sh.ids[i]
        if summary is None:
            return ReleaseOutcome(ReleaseStatus.BUDGET_EXHAUSTED, None, f"window {w} refused", status, nid)
        return ReleaseOutcome(ReleaseStatus.RELEASED, summary, f"window {w} released", status, nid)

    def apply(self, i: int, request: npb.ApplyFederationRequest) -> tuple[float, str]:
        view = cv.view_from_pb(request.view)
        with self.lock:
            sh = self.sharing
            assert sh is not None
            if sh.down[i] or not self.open:
                raise _NodeDown(sh.ids[i])
            return sh.apply_view(i, view, self.now), sh.admissions[i].cfg.policy


def _privacy_status(sh: Sharing, i: int) -> PrivacyStatus:
    """Node ``i``'s budget as its ``Summary`` reply states it."""
    acc, pcfg = sh.accountant, sh.pcfg
    ledger = sh.ledgers[i]
    mech = acc.mechanism
    last = ledger[-1].window if ledger else None
    nxt = last + 1 if last is not None else 0
    lo = (nxt - pcfg.m + 1) * sh.window_ns // 1000
    d = acc.decide(ledger, nxt, lo)
    return PrivacyStatus(
        enabled=True,
        mechanism=mech.kind,
        scale=mech.scale,
        variance=mech.variance,
        m=pcfg.m,
        delta=float(pcfg.delta),
        epsilon_budget=float(pcfg.epsilon),
        rho_budget=acc.rho_budget,
        rho_per_release=mech.rho,
        releases=sh.node_releases[i],
        refused=0,
        last_window=last,
        epsilon_current=acc.epsilon(acc.trailing(ledger, lo + sh.window_ns // 1000)),
        epsilon_worst=sh.node_worst[i],
        epsilon_left=d.epsilon_left,
        next_allowed=d.allowed,
    )


def _token(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :]
    return ""


class _Service:
    """``Summary`` and ``ApplyFederation`` of fedcoord's NodeService for every simulated node
    (every other method: UNIMPLEMENTED, from gRPC)."""

    def __init__(self, bridge: _Bridge):
        self.bridge = bridge

    def _node(self, context: grpc.ServicerContext) -> int:
        i = self.bridge.node(_token(context))
        if i is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "no simulated node of that name")
        assert i is not None
        return i

    def Summary(self, request: npb.SummaryRequest, context: grpc.ServicerContext) -> npb.SummaryReply:
        return cv.release_to_pb(self.bridge.summary(self._node(context)))

    def ApplyFederation(
        self, request: npb.ApplyFederationRequest, context: grpc.ServicerContext
    ) -> npb.ApplyFederationReply:
        i = self._node(context)
        if not request.HasField("view"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "view: missing")
        try:
            threshold, policy = self.bridge.apply(i, request)
        except ValidationError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except _NodeDown as e:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"node {e} is down (or no round is under way)")
        return npb.ApplyFederationReply(threshold=threshold, policy=policy)


@contextlib.contextmanager
def _nodes_server(bridge: _Bridge) -> Iterator[str]:
    """The simulated nodes' gRPC service on a free loopback port; yields its address."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="sim-nodes"))
    svc = _Service(bridge)
    handlers = {
        "Summary": grpc.unary_unary_rpc_method_handler(
            svc.Summary,
            request_deserializer=npb.SummaryRequest.FromString,
            response_serializer=npb.SummaryReply.SerializeToString,
        ),
        "ApplyFederation": grpc.unary_unary_rpc_method_handler(
            svc.ApplyFederation,
            request_deserializer=npb.ApplyFederationRequest.FromString,
            response_serializer=npb.ApplyFederationReply.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(NODE_SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def check_config(cfg: SimConfig) -> SimConfig:
    """The config the engine path runs: ``cfg`` with ``view_delay_s`` None (a period, as deployed);
    a config with no rounds to run through Flower is refused, naming the setting."""
    if cfg.policy not in ("seed", "adaptive"):
        raise ValidationError(
            "sim.policy",
            f"{cfg.policy!r} reads no federation view: the Flower engine path runs the rounds, "
            "which only seed and adaptive use",
            limit="seed | adaptive",
        )
    if cfg.epsilon is None:
        raise ValidationError(
            "sim.epsilon",
            "None: the Flower engine path runs the deployed privacy pipeline, which always adds noise",
            limit="0 < value <= 1000",
        )
    if cfg.nodes > 2000:
        raise ValidationError(
            "sim.nodes", f"{cfg.nodes}", limit="1..2000 with the Flower engine (a round of 2,000 takes ~13 s)"
        )
    return dataclasses.replace(cfg, view_delay_s=None)


class _Active:
    """The run under way in this process (the module-level ServerApp reads it: Flower calls the
    app without arguments of ours). One at a time: Flower's engine and Ray are per process."""

    bridge: _Bridge | None = None
    lock = threading.Lock()


def simulate_flower(
    cfg: SimConfig,
    progress: Callable[[float], None] | None = None,
    *,
    ttl_s: float = 120.0,  # the first round waits for Ray's actors to start: 39 s beside 2 CPU hogs
    nodes_wait_s: float = 120.0,
    cpus_per_client: float = 1.0,
) -> SimResult:
    """Run ``cfg`` with its rounds through Flower's simulation engine (see the module's doc).

    ``result`` is the event path's with ``result["flower"]``: rounds, node-rounds without a
    merged summary (``missing``: a node that was down, a ClientApp that did not answer within
    ``ttl_s`` wall seconds) and ClientApp errors; the result equals the event path's of
    ``result["config"]`` when only down nodes were missing. Wall times are in ``engine``."""
    run_cfg = check_config(cfg)
    if not _Active.lock.acquire(blocking=False):
        raise EngineError("a Flower engine simulation is already running in this process")
    try:
        for k, v in _FLWR_ENV.items():
            os.environ.setdefault(k, v)
        settings = ServerSettings(period_s=cfg.period_s, ttl_s=ttl_s)
        t0 = time.perf_counter()
        for attempt in (1, 2):
            bridge = _Bridge(run_cfg, settings, nodes_wait_s)
            try:
                res = _run_engine(bridge, progress, cpus_per_client)
                break
            except _StartFailed as e:
                # Ray's head did not come up (seen once here: its GCS never wrote its port file):
                # nothing ran yet, and the run is reproducible, so it starts over once
                if attempt == 2:
                    raise EngineError(f"Flower's simulation engine failed to start, twice: {e.reason}") from e
                log.warning("Flower's simulation engine failed to start (%s): starting again", e.reason)
        result = dict(res.result)
        result["flower"] = {"rounds": len(bridge.rounds), "missing": bridge.missing, "errors": bridge.errors}
        wall = time.perf_counter() - t0
        lat = sorted(bridge.latency_s)
        engine = {
            "engine": "flower",
            "wall_s": wall,
            "starts": attempt,
            "round_latency_s": {"p50": lat[len(lat) // 2], "max": lat[-1]} if lat else None,
        }
        return SimResult(result, wall, res.result["events"] / wall if wall > 0 else 0.0, engine)
    finally:
        _Active.lock.release()


class _StartFailed(EngineError):
    """Flower's engine failed before its first round."""


def _run_engine(bridge: _Bridge, progress: Callable[[float], None] | None, cpus_per_client: float) -> SimResult:
    """One run of the simulator with its rounds through Flower's engine."""
    from flwr.simulation import run_simulation  # noqa: PLC0415 - Flower only on this path

    from federation.sim import flower_apps  # noqa: PLC0415

    outcome: dict[str, Any] = {}

    def run_sim() -> None:
        try:
            outcome["result"] = simulate(bridge.cfg, progress, rounds=bridge)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread, re-raised there
            outcome["error"] = e
        finally:
            bridge.end()

    with _nodes_server(bridge) as address, _flower_quiet():
        os.environ[ADDRESS_ENV] = address
        _Active.bridge = bridge
        sim = threading.Thread(target=run_sim, name="fedcoord-sim", daemon=True)
        sim.start()
        try:
            run_simulation(
                server_app=flower_apps.server,
                client_app=flower_apps.client,
                num_supernodes=bridge.cfg.nodes,
                backend_config={"client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0}},
            )
        except Exception as e:
            bridge.stopped()
            sim.join()
            cause = e.__cause__ or e
            if not bridge.rounds:
                raise _StartFailed(f"{type(cause).__name__}: {cause}") from e
            raise EngineError(f"Flower's simulation engine failed: {e}") from e
        finally:
            _Active.bridge = None
        bridge.stopped()  # (the ServerApp ended: a simulator still waiting for a round stops)
        sim.join()
    if "error" in outcome:
        err = outcome["error"]
        if isinstance(err, FedcoordError):
            raise err
        raise EngineError(f"the simulation failed: {err!r}") from err
    res: SimResult = outcome["result"]
    return res


def active() -> _Bridge:
    """The engine run under way (for the module-level ServerApp)."""
    if _Active.bridge is None:
        raise EngineError("no Flower engine simulation is running in this process")
    return _Active.bridge


@contextlib.contextmanager
def _flower_quiet() -> Iterator[None]:
    """Flower logs every round at INFO on its own logger: warnings only while the engine runs,
    less the one that ``run_simulation`` is deprecated (see the module's doc for why it is used)."""
    flwr_log = logging.getLogger("flwr")
    old = flwr_log.level
    flwr_log.setLevel(logging.WARNING)
    flwr_log.addFilter(_not_deprecation)
    try:
        yield
    finally:
        flwr_log.removeFilter(_not_deprecation)
        flwr_log.setLevel(old)


def _not_deprecation(record: logging.LogRecord) -> bool:
    return "run_simulation` function is deprecated" not in record.getMessage()
