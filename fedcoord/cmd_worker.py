"""``fedcoord worker``: a worker process attached to one node (:class:`node.rpc.worker.Worker`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import orjson
import typer

from node.errors import FedcoordError, ValidationError
from node.model import Limits, WorkerSpec, normalize_worker_spec
from node.rpc.handlers import DEFAULT_CHOICES, BuiltinOptions, build_handlers
from node.rpc.worker import Worker, WorkerRefusedError

__all__ = ["DEFAULT_NODE", "main", "worker"]

log = logging.getLogger("fedcoord.worker")

DEFAULT_NODE = "127.0.0.1:50051"
EXIT_OK = 0
EXIT_FAILED = 1  # the node refused the worker for good (token, role)
EXIT_USAGE = 2  # bad options
_FLAGS = {  # a ValidationError's field -> the option it came from
    "worker_id": "--id",
    "capabilities": "--capability",
    "skill": "--skill",
    "concurrency": "--concurrency",
    "time_scale": "--time-scale",
    "flaky_rate": "--flaky-rate",
    "heartbeat_s": "--heartbeat-s",
    "grace_s": "--grace-s",
    "node": "--node",
    "handlers": "--handlers",
    "handler": "--handler",
    "default": "--default",
}


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"fedcoord worker: error: {message}", err=True)
    return typer.Exit(code)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def _setup_logging(verbose: int, log_format: str) -> None:
    """fedcoord logs to stderr: INFO by default (connects, reconnects, the final counts), -v DEBUG."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        fmt = logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        fmt.converter = time.localtime
        handler.setFormatter(fmt)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("fedcoord").setLevel(logging.DEBUG if verbose > 0 else logging.INFO)


def _file(path: Path | None, what: str) -> str | None:
    if path is None:
        return None
    if not path.is_file():
        raise _fail(f"{what} {path}: no such file", EXIT_USAGE)
    return str(path)


async def _serve(w: Worker) -> tuple[int, str | None]:
    """Run the worker until it stops; the exit status and what to say. The signal handlers stay
    until the end: a second signal stops at once, whatever the worker is doing then."""
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            w.stop()  # drain: finish what runs, report it, close
        elif main_task is not None:
            main_task.cancel()  # a second signal: stop now (the node gives the running tasks to others)

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
    code, message = EXIT_OK, None
    try:
        try:
            await w.run()
        except asyncio.CancelledError:
            if signals < 2:
                raise
            message = "stopped at once (second signal)"
        except WorkerRefusedError as e:
            code, message = EXIT_FAILED, f"error: {e}"
        stuck = w.running_threads
        if stuck:
            # Threads cannot be stopped and the interpreter waits for them at exit: go now.
            log.warning(
                "worker %s: %d handler thread%s still running (not heeding ctx.cancelled): exiting without %s",
                w.id,
                stuck,
                "" if stuck == 1 else "s",
                "it" if stuck == 1 else "them",
            )
            _exit_now(code, message)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    return code, message


def _exit_now(code: int, message: str | None) -> NoReturn:
    if message:
        typer.echo(f"fedcoord worker: {message}", err=True)
    logging.shutdown()  # flushes the log handlers
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def worker(
    *,
    node: Annotated[
        str,
        typer.Option("--node", envvar="FEDCOORD_NODE", help="The node's gRPC address, host:port."),
    ] = DEFAULT_NODE,
    worker_id: Annotated[
        str | None, typer.Option("--id", help="The worker's id (default: HOSTNAME-PID). Unique per node.")
    ] = None,
    capability: Annotated[
        list[str] | None,
        typer.Option("--capability", "-c", help="A capability the worker has (tasks may require it); repeatable."),
    ] = None,
    skill: Annotated[int, typer.Option(help="1..10: the worker takes tasks of difficulty <= skill.")] = 10,
    concurrency: Annotated[int, typer.Option("--concurrency", "-j", help="Tasks run at once (1..10000).")] = 4,
    handlers: Annotated[
        list[str] | None,
        typer.Option(
            "--handlers",
            metavar="MODULE",
            help="Import MODULE (on PYTHONPATH) and use its handlers: a HANDLERS dict (type -> function) "
            "and the functions marked @node.rpc.handlers.handler(TYPE). Repeatable.",
        ),
    ] = None,
    handler: Annotated[
        list[str] | None,
        typer.Option(
            "--handler",
            metavar="TYPE=MODULE:FUNCTION",
            help="The handler of one task type, e.g. resize=mypkg.images:resize. Repeatable; wins over --handlers.",
        ),
    ] = None,
    default: Annotated[
        str,
        typer.Option(
            "--default",
            help=f"What runs a task type without a handler: {'|'.join(DEFAULT_CHOICES)}. "
            "reject fails it without retry, fail with retry; flaky behaves like the demo's workers.",
        ),
    ] = "reject",
    time_scale: Annotated[
        float,
        typer.Option(help="Built-in sleep, cpu and flaky handlers: seconds of work per difficulty unit."),
    ] = 0.01,
    flaky_rate: Annotated[
        float, typer.Option(help="Built-in flaky handler: the chance of a transient error (0..1).")
    ] = 0.1,
    seed: Annotated[int | None, typer.Option(help="Seed of the flaky handler and of the reconnect jitter.")] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="FEDCOORD_TOKEN",
            help="Bearer token with the worker role (prefer the FEDCOORD_TOKEN variable: arguments show in ps).",
            show_default=False,
        ),
    ] = None,
    ca: Annotated[
        Path | None, typer.Option("--ca", "--tls-ca", help="CA certificate (PEM) to trust (default: system roots).")
    ] = None,
    cert: Annotated[
        Path | None, typer.Option("--cert", "--tls-cert", help="Client certificate (PEM), for mutual TLS.")
    ] = None,
    key: Annotated[Path | None, typer.Option("--key", "--tls-key", help="The client certificate's key (PEM).")] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Plaintext, no TLS: only to a loopback address (127.0.0.1, localhost).")
    ] = False,
    heartbeat_s: Annotated[float, typer.Option("--heartbeat-s", help="Seconds between heartbeats.")] = 1.0,
    grace_s: Annotated[
        float,
        typer.Option("--grace-s", help="On SIGTERM/SIGINT: how long running tasks may take to finish."),
    ] = 30.0,
    log_format: Annotated[str, typer.Option("--log-format", help="Log lines as text or json (stderr).")] = "text",
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="Log more (DEBUG).")] = 0,
) -> None:
    """Run a worker: take tasks from a node and run them with the handlers of their types.

    The worker registers with the node (its id, capabilities, skill and concurrency), receives
    up to --concurrency tasks at once over one gRPC stream, runs each with the handler of its
    task type and reports the result (the return value) or the error (an exception: the node
    retries the task; `node.rpc.handlers.Reject`: it fails for good). A task the node cancels or
    gives to another worker is dropped. When the node goes away, the worker reconnects with
    backoff and registers again.

    Built-in handlers, used by task type: `noop` (returns at once), `sleep` and `cpu` (sleep or
    burn CPU for difficulty x --time-scale seconds; succeed iff skill >= difficulty, as in seed
    001), `flaky` (like sleep, plus transient errors at --flaky-rate).

    A handler is `def f(lease, ctx)` or `async def f(lease, ctx)` returning bytes, str or None;
    plain functions run in a thread pool. Example:

        # mypkg/tasks.py
        from node.rpc.handlers import handler

        @handler("upper")
        async def upper(lease, ctx):
            return lease.payload.upper()

        $ FEDCOORD_TOKEN=... fedcoord worker --node node1:50051 --ca certs/ca.pem \\
              --handlers mypkg.tasks --capability gpu --skill 7 --concurrency 8

    SIGTERM or Ctrl-C stops gracefully: no new tasks, running ones finish (up to --grace-s) and are
    reported, exit status 0; a second signal stops at once (exit status 0 too). Thread handlers that
    still run after the grace period (not heeding ctx.cancelled) are not waited for: the process
    exits without them. Exit status 1 when the node refuses the
    worker for good (bad token, missing role), 2 for bad options.
    """
    _setup_logging(verbose, log_format)
    try:
        w = _build(
            node=node,
            worker_id=worker_id,
            capabilities=capability or [],
            skill=skill,
            concurrency=concurrency,
            modules=handlers or [],
            specs=handler or [],
            default=default,
            time_scale=time_scale,
            flaky_rate=flaky_rate,
            seed=seed,
            token=token,
            ca=_file(ca, "--ca"),
            cert=_file(cert, "--cert"),
            key=_file(key, "--key"),
            insecure=insecure,
            heartbeat_s=heartbeat_s,
            grace_s=grace_s,
            log_format=log_format,
        )
    except ValidationError as e:
        flag = _FLAGS.get(e.field, e.field)
        raise _fail(str(ValidationError(flag, e.detail, limit=e.limit)), EXIT_USAGE) from None
    except (FedcoordError, OSError) as e:
        raise _fail(str(e), EXIT_USAGE) from None
    try:
        code, message = asyncio.run(_serve(w))
    except (KeyboardInterrupt, asyncio.CancelledError):
        code, message = EXIT_OK, "stopped at once (second signal)"
    if message:
        typer.echo(f"fedcoord worker: {message}", err=True)
    raise typer.Exit(code)


def _build(
    *,
    node: str,
    worker_id: str | None,
    capabilities: list[str],
    skill: int,
    concurrency: int,
    modules: list[str],
    specs: list[str],
    default: str,
    time_scale: float,
    flaky_rate: float,
    seed: int | None,
    token: str | None,
    ca: str | None,
    cert: str | None,
    key: str | None,
    insecure: bool,
    heartbeat_s: float,
    grace_s: float,
    log_format: str,
) -> Worker:
    """Check the options and build the worker (a FedcoordError names what is wrong)."""
    if log_format not in ("text", "json"):
        raise ValidationError("--log-format", f"{log_format!r}", limit="text|json")
    wid = worker_id or f"{socket.gethostname().split('.')[0] or 'worker'}-{os.getpid()}"
    spec = normalize_worker_spec(WorkerSpec(wid, tuple(capabilities), skill, concurrency), Limits())
    if "." not in sys.path and "" not in sys.path:
        sys.path.insert(0, "")  # --handlers mypkg.mod finds modules in the current directory, as python -m does
    hs = build_handlers(
        modules, specs, default, BuiltinOptions(time_scale=time_scale, flaky_rate=flaky_rate, seed=seed)
    )
    if token is not None and not token.strip():
        token = None
    return Worker(
        node,
        spec,
        hs,
        token=token,
        ca_file=ca,
        cert_file=cert,
        key_file=key,
        insecure=insecure,
        heartbeat_s=heartbeat_s,
        grace_s=grace_s,
        seed=seed,
    )


def main() -> None:
    """``python -m fedcoord.cmd_worker`` / ``python -m node.rpc.worker``: this command alone."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="markdown")
    app.command("worker")(worker)
    app(prog_name="fedcoord worker")


if __name__ == "__main__":
    main()
