"""Prometheus metrics of a node process: what autoscalers and alerts read.

Everything lives on the :class:`NodeMetrics`' own ``CollectorRegistry`` (never the global one:
several nodes in one test process must not collide). The node's core is not thread-safe and the
HTTP endpoint answers from a thread of its own, so nothing reads the node at scrape time:

* **Gauges and cumulative counts** (tasks by status, queue depth by priority, age of the oldest
  ready task, workers by health, load ratio, threshold, totals, hand-offs) come from a snapshot
  that :meth:`NodeMetrics.refresh` takes on the event loop from cheap reads (running counters,
  O(task classes) for the queues, O(workers) for their health); :meth:`NodeMetrics.run` takes
  one every second. A scrape renders the latest snapshot (and how old it is).
* **Histograms and RPC counts** are updated as things happen: each group-commit write through
  the committer's ``on_write`` observer (:meth:`NodeMetrics.attach`), each RPC through
  :meth:`NodeMetrics.observe_rpc`, which :class:`MetricsInterceptor` calls for every call.

Server wiring::

    metrics = NodeMetrics(node.node_id)
    server = grpc.aio.server(interceptors=[metrics.interceptor(), *others])  # first: sees denials too
    refresher = asyncio.create_task(metrics.run(node))  # attaches the commit observer
    endpoint = start_metrics_server(cfg.metrics_listen, metrics.registry) if cfg.metrics_listen else None
    ...
    refresher.cancel(); endpoint.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from node.rpc.config import parse_address
from node.runtime.config import NodeState

if TYPE_CHECKING:
    from node.runtime.node import LocalNode

__all__ = [
    "COMMIT_BUCKETS_S",
    "RPC_BUCKETS_S",
    "TOTALS",
    "MetricsInterceptor",
    "MetricsServer",
    "NodeMetrics",
    "Snapshot",
    "start_metrics_server",
]

log = logging.getLogger("fedcoord.metrics")

COMMIT_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000)
RPC_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Cumulative counts the node keeps in Redis (they survive restarts), as fedcoord_tasks_total{status}
TOTALS = ("submitted", "completed", "failed", "cancelled", "retried", "timed_out", "handed_off", "adopted", "requeued")
HANDOFF_EVENTS = ("offers", "handed_off", "adopted", "refused", "reported")
_HEALTH = ("healthy", "unknown", "unhealthy")
_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the node looked like at ``taken_s`` (Unix seconds), as the gauges show it."""

    taken_s: float
    state: str
    active: Mapping[str, int]  # active tasks by status
    queue_depth: Mapping[str, int]  # ready tasks in line by priority
    delayed: int  # queued, waiting out a retry backoff or a delay
    oldest_queued_age_s: float  # 0 when nothing is ready
    workers: Mapping[str, int]  # by health
    slots: int  # concurrency of the healthy workers
    load_ratio: float
    threshold: float
    recommended_workers: int
    totals: Mapping[str, int]
    workers_lost: int
    handoffs: Mapping[str, int] | None  # the hand-off agent's counts (this process); None: no hand-off


def _read(node: LocalNode) -> Snapshot:
    """Cheap synchronous reads, on the loop. They reach into the core rather than through
    LocalNode's accessors (``status_counts``, ``queue_depths``, ...), which refuse while the node
    is not serving: the gauges go on showing a degraded or fenced node's last state."""
    core = node._core
    now_ns = node._now()
    load = core.load()
    oldest = core.oldest_queued_ns()
    health = dict.fromkeys(_HEALTH, 0)
    for w in core.workers.values():
        health[w.health.value] += 1
    totals = node._analytics.totals
    agent = node.handoff
    return Snapshot(
        taken_s=time.time(),
        state=node.state.value,
        active={s.value: n for s, n in core.status_counts().items()},
        queue_depth={p.value: n for p, n in core.queue_depths().items()},
        delayed=load.delayed,
        oldest_queued_age_s=0.0 if oldest is None else max(0.0, (now_ns - oldest) / _NS),
        workers=health,
        slots=load.slots,
        load_ratio=load.ratio,
        threshold=node.admission.threshold(load, now_ns),
        recommended_workers=core.advice().recommended_workers,
        totals={k: totals.get(k, 0) for k in TOTALS},
        workers_lost=totals.get("workers_lost", 0),
        handoffs=None if agent is None else {k: agent.stats.get(k, 0) for k in HANDOFF_EVENTS},
    )


class _SnapshotCollector:
    """Renders the latest snapshot at scrape time (from the HTTP thread: it only reads the
    snapshot reference, which the loop replaces whole)."""

    def __init__(self, metrics: NodeMetrics):
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return list(self._families(None))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self._metrics.snapshot))

    def _families(self, s: Snapshot | None) -> Iterator[Metric]:
        """The snapshot's metric families (with no samples when ``s`` is None: for describe)."""

        def gauge(name: str, doc: str, value: float) -> Metric:
            g = GaugeMetricFamily(name, doc)
            if s is not None:
                g.add_metric([], value)
            return g

        def gauges(name: str, doc: str, label: str, values: Mapping[str, float]) -> Metric:
            g = GaugeMetricFamily(name, doc, labels=[label])
            for k, v in values.items():
                g.add_metric([k], v)
            return g

        def counters(name: str, doc: str, label: str, values: Mapping[str, float]) -> Metric:
            c = CounterMetricFamily(name, doc, labels=[label])
            for k, v in values.items():
                c.add_metric([k], v)
            return c

        info = GaugeMetricFamily("fedcoord_node_info", "The node this process serves (always 1).", labels=["node_id"])
        info.add_metric([self._metrics.node_id], 1)
        yield info
        state = "" if s is None else s.state
        yield gauges(
            "fedcoord_node_state",
            "1 for the node's state now (serving, degraded, fenced, ...), 0 for the others.",
            "state",
            {st.value: float(st.value == state) for st in NodeState} if s is not None else {},
        )
        age = 0.0 if s is None else max(0.0, time.time() - s.taken_s)
        yield gauge(
            "fedcoord_metrics_age_seconds", "Age of the snapshot the gauges show (large: the loop is stuck).", age
        )
        e: Snapshot = s if s is not None else _EMPTY
        yield gauges("fedcoord_active_tasks", "Active tasks by status.", "status", e.active)
        yield gauges("fedcoord_queue_depth", "Ready tasks in line, by priority.", "priority", e.queue_depth)
        yield gauge("fedcoord_delayed_tasks", "Queued tasks waiting out a retry backoff or a delay.", e.delayed)
        yield gauge(
            "fedcoord_oldest_queued_age_seconds",
            "How long the ready task that has waited longest has been in line (0: none is ready).",
            e.oldest_queued_age_s,
        )
        yield gauges("fedcoord_workers", "Registered workers by health.", "health", e.workers)
        yield gauge("fedcoord_worker_slots", "Concurrency summed over the healthy workers.", e.slots)
        yield gauge("fedcoord_load_ratio", "(leased + ready) / healthy worker slots.", e.load_ratio)
        yield gauge("fedcoord_admission_threshold", "The load ratio up to which the node accepts work.", e.threshold)
        yield gauge(
            "fedcoord_scaling_recommended_workers",
            "Healthy workers that would bring the load ratio to the target load.",
            e.recommended_workers,
        )
        yield counters(
            "fedcoord_tasks", "Tasks by what happened to them, since the node's data began.", "status", e.totals
        )
        lost = CounterMetricFamily("fedcoord_workers_lost", "Workers lost to missed heartbeats.")
        if s is not None:
            lost.add_metric([], s.workers_lost)
        yield lost
        yield counters(
            "fedcoord_handoffs",
            "Hand-off events of this process: offers made, tasks handed off, adopted, refused, results reported.",
            "event",
            e.handoffs or {},
        )


_EMPTY = Snapshot(0.0, "", {}, {}, 0, 0.0, {}, 0, 0.0, 0.0, 0, {}, 0, None)


class NodeMetrics:
    """The metrics of one node process, on their own registry (:attr:`registry`)."""

    def __init__(self, node_id: str, *, registry: CollectorRegistry | None = None):
        self.node_id = node_id
        self.registry = registry if registry is not None else CollectorRegistry()
        self.snapshot: Snapshot | None = None
        self._commit_s = Histogram(
            "fedcoord_commit_duration_seconds",
            "Time to encode and write one group commit.",
            buckets=COMMIT_BUCKETS_S,
            registry=self.registry,
        )
        self._commit_n = Histogram(
            "fedcoord_commit_batch_records",
            "Records written by one group commit (tasks and workers).",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self._rpc_s = Histogram(
            "fedcoord_rpc_duration_seconds",
            "Duration of RPCs (whole streams for streaming methods), by full method name.",
            ["method"],
            buckets=RPC_BUCKETS_S,
            registry=self.registry,
        )
        self._rpcs = Counter(
            "fedcoord_rpcs",
            "RPCs handled, by full method name and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self._rpc_s_by: dict[str, Any] = {}  # method -> its histogram child (labels() costs a lock)
        self._rpcs_by: dict[tuple[str, str], Any] = {}
        self.registry.register(_SnapshotCollector(self))

    # ------------------------------------------------------------------ inline

    def observe_commit(self, seconds: float, n_changes: int) -> None:
        """One group-commit write: its duration and the records it wrote (the committer's ``on_write``)."""
        self._commit_s.observe(seconds)
        self._commit_n.observe(n_changes)

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        """One RPC: its full method name (``/fedcoord.v1.NodeService/Submit``), status code name
        (``OK``, ``INVALID_ARGUMENT``...) and duration. Thread-safe."""
        h = self._rpc_s_by.get(method)
        if h is None:
            h = self._rpc_s_by[method] = self._rpc_s.labels(method)
        h.observe(seconds)
        c = self._rpcs_by.get((method, code))
        if c is None:
            c = self._rpcs_by[(method, code)] = self._rpcs.labels(method, code)
        c.inc()

    def interceptor(self) -> MetricsInterceptor:
        return MetricsInterceptor(self.observe_rpc)

    # ------------------------------------------------------------------ from the node

    def attach(self, node: LocalNode) -> None:
        """Observe the node's group-commit writes (commit latency and batch size)."""
        node._committer.on_write = self.observe_commit

    def detach(self, node: LocalNode) -> None:
        if node._committer.on_write == self.observe_commit:
            node._committer.on_write = None

    def refresh(self, node: LocalNode) -> Snapshot:
        """Take a new snapshot of ``node`` for the gauges. Call it on the node's event loop."""
        self.snapshot = snap = _read(node)
        return snap

    async def run(self, node: LocalNode, every_s: float = 1.0) -> None:
        """Attach to ``node`` and refresh the snapshot every ``every_s`` until cancelled."""
        self.attach(node)
        try:
            while True:
                try:
                    self.refresh(node)
                except Exception:  # metrics must never take the server down
                    log.exception("node %s: metrics refresh failed", self.node_id)
                await asyncio.sleep(every_s)
        finally:
            self.detach(node)


# ---------------------------------------------------------------------------------- interceptor

Observe = Callable[[str, str, float], None]
_OK: str = grpc.StatusCode.OK.name
_CANCELLED: str = grpc.StatusCode.CANCELLED.name
_UNKNOWN: str = grpc.StatusCode.UNKNOWN.name


def _code(context: Any, exc: BaseException | None) -> str:
    """The status code the call ended with: what the servicer set (``abort``, ``set_code``),
    else OK on return, CANCELLED when the caller went away, UNKNOWN for an unexpected error."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return _CANCELLED
    try:
        code = context.code()
    except (AttributeError, NotImplementedError):  # an experimental API: absent means "not set"
        code = None
    if isinstance(code, grpc.StatusCode):
        name: str = code.name
        return name
    return _OK if exc is None else _UNKNOWN


def _timed(behavior: Callable[..., Any], method: str, observe: Observe) -> Callable[..., Any]:
    """``behavior`` timed, of the same kind (coroutine, async generator, plain function or
    generator): gRPC picks how to run a handler by its kind."""
    clock = time.perf_counter
    if inspect.isasyncgenfunction(behavior):

        async def agen(request: Any, context: Any) -> AsyncIterator[Any]:
            t0, exc = clock(), None
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as e:
                exc = e
                raise
            finally:
                observe(method, _code(context, exc), clock() - t0)

        return agen
    if inspect.iscoroutinefunction(behavior):

        async def coro(request: Any, context: Any) -> Any:
            t0, exc = clock(), None
            try:
                return await behavior(request, context)
            except BaseException as e:
                exc = e
                raise
            finally:
                observe(method, _code(context, exc), clock() - t0)

        return coro
    if inspect.isgeneratorfunction(behavior):

        def gen(request: Any, context: Any) -> Iterator[Any]:
            t0, exc = clock(), None
            try:
                yield from behavior(request, context)
            except BaseException as e:
                exc = e
                raise
            finally:
                observe(method, _code(context, exc), clock() - t0)

        return gen

    def plain(request: Any, context: Any) -> Any:
        t0, exc = clock(), None
        try:
            return behavior(request, context)
        except BaseException as e:
            exc = e
            raise
        finally:
            observe(method, _code(context, exc), clock() - t0)

    return plain


_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc has no type hints
    """Times every call (unary and streaming) by full method name and status code, and reports
    it to ``observe(method, code, seconds)``. Put it first, so calls other interceptors refuse
    (``UNAUTHENTICATED``...) are counted too. Methods the server does not serve are not wrapped
    (gRPC answers ``UNIMPLEMENTED``): the method label stays bounded. The wrapped handler of
    each method is built once and reused."""

    def __init__(self, observe: Observe):
        self._observe = observe
        self._wrapped: dict[tuple[str, int], tuple[Any, Any]] = {}  # (method, id(handler)) -> (handler, wrapped)

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        key = (method, id(handler))
        hit = self._wrapped.get(key)
        if hit is not None and hit[0] is handler:
            return hit[1]
        wrapped = self._wrap(handler, method)
        if len(self._wrapped) > 4096:  # handlers built per call by someone: do not grow without bound
            self._wrapped.clear()
        self._wrapped[key] = (handler, wrapped)  # the handler is kept: its id stays its own
        return wrapped

    def _wrap(self, handler: Any, method: str) -> Any:
        for attr, make in _KINDS:
            behavior = getattr(handler, attr, None)
            if behavior is not None:
                return make(
                    _timed(behavior, method, self._observe),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler


# ---------------------------------------------------------------------------------- HTTP endpoint


class MetricsServer:
    """The ``/metrics`` HTTP endpoint, served by a daemon thread; :meth:`close` stops it."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread):
        self._httpd = httpd
        self._thread = thread
        self.host: str = str(httpd.server_address[0])
        self.port: int = int(httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._thread.is_alive():
            self._httpd.shutdown()
        with contextlib.suppress(OSError):
            self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_metrics_server(address: str, registry: CollectorRegistry) -> MetricsServer:
    """Serve ``registry`` at ``http://<address>/metrics`` (``host:port``; port 0: a free port,
    see :attr:`MetricsServer.port`)."""
    host, port = parse_address(address, "metrics_listen")
    httpd, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(httpd, thread)
