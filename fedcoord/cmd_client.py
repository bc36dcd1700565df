"""``fedcoord submit`` and ``fedcoord status``: a node's client on the command line, over gRPC
(:class:`~node.rpc.client.NodeClient`).

Both take the connection options ``--node`` (``FEDCOORD_NODE``, default ``127.0.0.1:50051``),
``--token`` (``FEDCOORD_TOKEN``), ``--ca``/``--cert``/``--key`` (TLS, mutual with a client
certificate) or ``--insecure`` (plaintext, loopback only). Failures are one line on stderr and
exit status 1 (no traceback); Ctrl-C exits 130.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import inspect
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.columns import Columns
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from fedcoord.demo_view import fmt_s, scaling_text
from node.core import ScalingAdvice
from node.errors import FedcoordError, NodeUnavailableError, NotAuthorizedError, ValidationError
from node.model import Priority, Task, TaskSpec, TaskStatus

if TYPE_CHECKING:
    from node.rpc.client import NodeClient, RemoteStats

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_TASKS_FAILED", "status", "submit"]

EXIT_OK = 0
EXIT_FAILED = 1  # the node could not be reached, refused the call, or the input was bad
EXIT_TASKS_FAILED = 3  # --wait: a task failed or was cancelled
EXIT_INTERRUPTED = 130
DEFAULT_ADDRESS = "127.0.0.1:50051"  # as node.rpc.client (not imported here: gRPC loads when a command runs)
CHUNK = 1000  # specs per Submit from --file (one progress step)
_CONN = "Connection"

# ------------------------------------------------------------------------------------ connection

NodeOption = Annotated[
    str,
    typer.Option("--node", envvar="FEDCOORD_NODE", help="The node's gRPC address, host:port.", rich_help_panel=_CONN),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token", envvar="FEDCOORD_TOKEN", show_default=False, rich_help_panel=_CONN,
        help="Bearer token sent with every call (see `fedcoord certs`: tokens.toml).",
    ),
]  # fmt: skip


def _pem_option(flag: str, envvar: str, text: str) -> Any:
    return typer.Option(flag, envvar=envvar, dir_okay=False, show_default=False, rich_help_panel=_CONN, help=text)


CaOption = Annotated[
    Path | None,
    _pem_option("--ca", "FEDCOORD_CA", "CA certificate (PEM) of the node's: TLS (default: the system's roots)."),
]
CertOption = Annotated[
    Path | None,
    _pem_option("--cert", "FEDCOORD_CERT", "Client certificate (PEM) for a node that requires one (mutual TLS)."),
]
KeyOption = Annotated[Path | None, _pem_option("--key", "FEDCOORD_KEY", "The key (PEM) of --cert.")]
InsecureOption = Annotated[
    bool,
    typer.Option("--insecure", rich_help_panel=_CONN, help="Plaintext, no TLS: only to a loopback address."),
]
ConnectTimeoutOption = Annotated[
    float,
    typer.Option(
        "--connect-timeout",
        envvar="FEDCOORD_CONNECT_TIMEOUT",
        min=0.0,
        rich_help_panel=_CONN,
        help="Seconds to wait for the node to answer (one that is starting up may not listen yet).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of text.")]


@dataclass(frozen=True, slots=True)
class Connection:
    node: str
    token: str | None
    ca: Path | None
    cert: Path | None
    key: Path | None
    insecure: bool
    connect_timeout_s: float = 10.0

    def client(self) -> NodeClient:
        from node.rpc.client import NodeClient  # noqa: PLC0415 - gRPC loads when a command runs

        client = NodeClient(
            self.node,
            token=self.token,
            ca_file=self.ca,
            cert_file=self.cert,
            key_file=self.key,
            insecure=self.insecure,
        )
        if self.connect_timeout_s > 0:
            try:
                client.wait_ready(self.connect_timeout_s)
            except BaseException:
                client.close()
                raise
        return client

    def hint(self) -> str:
        if not self.insecure and self.ca is None:
            return " (TLS with the system's roots: give --ca, or --insecure for a plaintext node on loopback)"
        return ""


_CONNECTION = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
    for name, annotation, default in (
        ("node", NodeOption, DEFAULT_ADDRESS),
        ("token", TokenOption, None),
        ("ca", CaOption, None),
        ("cert", CertOption, None),
        ("key", KeyOption, None),
        ("insecure", InsecureOption, False),
        ("connect_timeout_s", ConnectTimeoutOption, 10.0),
    )
]


def with_connection(command: Callable[..., None]) -> Callable[..., None]:
    """``command(..., conn=Connection)`` as a typer command that takes the connection options."""
    signature = inspect.signature(command, eval_str=True)
    names = [p.name for p in _CONNECTION]

    @functools.wraps(command)
    def run(**options: Any) -> None:
        conn = Connection(*(options.pop(name) for name in names))
        command(**options, conn=conn)

    own = [p for p in signature.parameters.values() if p.name != "conn"]
    run.__signature__ = signature.replace(parameters=[*own, *_CONNECTION])  # type: ignore[attr-defined]
    return run


def _fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {' '.join(message.split())}")
    return typer.Exit(code)


@contextlib.contextmanager
def _errors(conn: Connection) -> Iterator[None]:
    """Domain errors (the node's too) as one line on stderr and exit status 1; Ctrl-C as 130."""
    try:
        yield
    except KeyboardInterrupt:
        Console(stderr=True).print("[yellow]interrupted[/]")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except NodeUnavailableError as e:
        raise _fail(f"cannot reach the node at {conn.node}: {e}{conn.hint()}") from None
    except NotAuthorizedError as e:
        raise _fail(f"{e} (check --token or FEDCOORD_TOKEN)") from None
    except (FedcoordError, OSError) as e:
        raise _fail(str(e)) from None


def _print_json(doc: object, *, indent: bool = True) -> None:
    option = orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if indent else 0)
    sys.stdout.write(orjson.dumps(doc, option=option).decode() + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------------------------ submit

_SPEC_FIELDS = frozenset(TaskSpec._fields) | {"payload_base64"}


def _bytes_field(line: dict[str, Any], where: str) -> bytes | None:
    """``payload`` (UTF-8 text) or ``payload_base64`` of a line, if it has one."""
    if "payload" in line and "payload_base64" in line:
        raise ValidationError(f"{where}: payload", "give payload (text) or payload_base64, not both")
    if "payload_base64" in line:
        try:
            return base64.b64decode(line.pop("payload_base64"), validate=True)
        except (ValueError, TypeError) as e:
            raise ValidationError(f"{where}: payload_base64", f"not base64: {e}") from None
    if "payload" in line:
        text = line.pop("payload")
        if not isinstance(text, str):
            raise ValidationError(f"{where}: payload", f"must be text, got {type(text).__name__}")
        return text.encode()
    return None


def _spec_of(raw: bytes, base: TaskSpec, where: str) -> TaskSpec:
    """One line of a JSON-lines file as a spec; what the line leaves out comes from ``base``."""
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ValidationError(where, f"not JSON: {e}") from None
    if not isinstance(line, dict):
        raise ValidationError(where, f"expected a JSON object, got {type(line).__name__}")
    unknown = sorted(set(line) - _SPEC_FIELDS)
    if unknown:
        raise ValidationError(f"{where}: {unknown[0]}", f"unknown field; known: {', '.join(sorted(_SPEC_FIELDS))}")
    payload = _bytes_field(line, where)
    if payload is not None:
        line["payload"] = payload
    for name in ("required_capabilities", "dependencies"):
        if isinstance(line.get(name), list):
            line[name] = tuple(line[name])
    spec = base._replace(**line)
    if not spec.type:
        raise ValidationError(f"{where}: type", "missing: give it in the line or as TYPE")
    return spec


def _read_specs(path: Path, base: TaskSpec) -> tuple[list[TaskSpec], list[int]]:
    """The specs of a JSON-lines file and the line number of each (blank lines and # comments skipped)."""
    specs: list[TaskSpec] = []
    lines: list[int] = []
    stream = sys.stdin.buffer if str(path) == "-" else path.open("rb")
    with stream:
        for n, raw in enumerate(stream, 1):
            text = raw.strip()
            if not text or text.startswith(b"#"):
                continue
            specs.append(_spec_of(text, base, f"{path} line {n}"))
            lines.append(n)
    if not specs:
        raise ValidationError(str(path), "holds no task (one JSON object a line)")
    return specs, lines


def _submit_all(
    client: NodeClient,
    specs: Sequence[TaskSpec],
    lines: list[int] | None,
    where: str,
    on_ids: Callable[[list[str]], None] | None = None,
) -> list[str]:
    """Submit in batches of :data:`CHUNK` (a progress bar on a terminal for more than one), giving
    ``on_ids`` the ids of each batch as soon as the node acknowledges it; an error names the line
    of the spec it is about and says how many tasks went in before it."""
    ids: list[str] = []
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("[bold]submitting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console,
        disable=not console.is_terminal or len(specs) <= CHUNK, transient=True,
    )  # fmt: skip

    def took(batch: list[str]) -> None:
        ids.extend(batch)
        if on_ids is not None and batch:
            on_ids(batch)

    with progress:
        bar = progress.add_task("submit", total=len(specs))
        for start in range(0, len(specs), CHUNK):
            try:
                batch = client.submit(specs[start : start + CHUNK])
            except ValidationError as e:
                took(_submitted(e))
                if e.index is None:
                    _say_submitted(ids, on_ids is not None)
                    e.submitted_ids = list(ids)  # type: ignore[attr-defined]  # all of them, not this batch's
                    raise
                at = start + e.index
                line = f"{where} line {lines[at]}" if lines is not None else f"task {at + 1}"
                done = f" ({len(ids)} tasks before it were submitted)" if ids else ""
                err = ValidationError(f"{line}: {e.field}", e.detail + done, limit=e.limit)
                err.submitted_ids = list(ids)  # type: ignore[attr-defined]  # all of them, not this batch's
                raise err from None
            except Exception as e:
                took(_submitted(e))
                _say_submitted(ids, on_ids is not None)
                setattr(e, "submitted_ids", list(ids))  # noqa: B010 - all of them, not this batch's
                raise
            took(batch)
            progress.advance(bar, min(CHUNK, len(specs) - start))
    return ids


def _submitted(e: BaseException) -> list[str]:
    """The ids a failed ``NodeClient.submit`` added before it failed (see node.rpc.client.submitted_ids)."""
    ids = getattr(e, "submitted_ids", None)
    return list(ids) if isinstance(ids, list) else []


def _print_ids(lines: Sequence[str]) -> None:
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    sys.stdout.flush()


def _say_submitted(ids: list[str], printed: bool) -> None:
    """Before the error of a submit that failed part way: how many went in (rerunning the same
    file would submit those again)."""
    if ids:
        where = "printed above" if printed else "not printed"
        Console(stderr=True).print(
            f"[yellow]{len(ids)} tasks were submitted before the error[/] (their ids are {where}): "
            "submitting the same tasks again would duplicate them",
            highlight=False,
        )


def _bytes_json(name: str, value: bytes | None) -> dict[str, Any]:
    if value is None:
        return {name: None}
    try:
        return {name: value.decode()}
    except UnicodeDecodeError:
        return {f"{name}_base64": base64.b64encode(value).decode()}


def task_json(t: Task) -> dict[str, Any]:
    """What ``fedcoord submit --wait --json`` prints of a task."""
    return {
        "id": t.id,
        "type": t.type,
        "status": t.status.value,
        "priority": Priority(t.priority).value,
        "difficulty": t.difficulty,
        "attempt": t.attempt,
        "failures": t.failures,
        "owner_node": t.owner_node,
        "assigned_worker": t.assigned_worker,
        "created_ns": t.created_ns,
        "finished_ns": t.finished_ns,
        **_bytes_json("result", t.result),
        "error": t.error,
    }


def _task_line(t: Task) -> str:
    line = f"{t.id}  {t.status.value}"
    if t.result:
        doc = _bytes_json("result", t.result)
        line += f"  result: {doc.get('result') or 'base64:' + doc['result_base64']}"
    if t.error:
        line += f"  error: {t.error}"
    return line


@with_connection
def submit(
    task_type: Annotated[
        str | None,
        typer.Argument(metavar="TYPE", show_default=False, help="The task type (with --file: for lines without one)."),
    ] = None,
    *,
    payload: Annotated[str | None, typer.Option("--payload", "-p", help="The payload, as UTF-8 text.")] = None,
    payload_file: Annotated[
        Path | None, typer.Option("--payload-file", dir_okay=False, help="Read the payload (bytes) from a file.")
    ] = None,
    priority: Annotated[Priority, typer.Option(case_sensitive=False, help="critical, high, medium or low.")] = (
        Priority.MEDIUM
    ),
    difficulty: Annotated[
        int, typer.Option(min=1, max=10, help="1-10: only workers of this skill or more take it.")
    ] = 1,
    count: Annotated[int, typer.Option("--count", "-n", min=1, max=1_000_000, help="Submit N such tasks.")] = 1,
    capability: Annotated[
        list[str] | None,
        typer.Option("--capability", "-c", show_default=False, help="A capability the worker needs; repeat for more."),
    ] = None,
    timeout_s: Annotated[
        float | None,
        typer.Option(
            "--timeout-s", min=0.001, show_default=False, help="Seconds a lease lasts (default 2 x difficulty)."
        ),
    ] = None,
    max_retries: Annotated[
        int, typer.Option("--max-retries", min=0, help="Failed attempts retried before it fails.")
    ] = 3,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            dir_okay=False,
            show_default=False,
            help="Submit the tasks of a JSON-lines file (- for stdin), one spec a line: "
            '{"type": "resize", "payload": "text" or "payload_base64": "...", "priority": "high", "difficulty": 3, '
            '"required_capabilities": [], "dependencies": [ids], "id": "...", "context": {}, "timeout_s": 30, '
            '"max_retries": 3, "delay_s": 0, "idempotency_key": "..."}. The options above are the defaults of '
            "the lines.",
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until every task is finished; print each outcome.")
    ] = False,
    json_out: JsonOption = False,
    conn: Connection,
) -> None:
    """Submit tasks to a node; print their ids, one a line (with --json: {"ids": [...]}).

    With --wait, wait until each task is finished and print `id status [result] [error]` (with
    --json the task records too). Exit status: 0 done, 1 the node could not be reached or
    refused the tasks (nothing of a refused batch is added; the ids of the batches submitted before
    it are printed all the same, as each is acknowledged), 3 with --wait when a task failed or was
    cancelled, 130 interrupted.
    """
    if payload is not None and payload_file is not None:
        raise typer.BadParameter("give --payload or --payload-file, not both")
    if file is not None and count != 1:
        raise typer.BadParameter("--count repeats the task of the command line: leave it out with --file")
    if file is None and task_type is None:
        raise typer.BadParameter("give the task TYPE (or --file with the tasks)")
    with _errors(conn):
        data = payload_file.read_bytes() if payload_file is not None else (payload or "").encode()
        base = TaskSpec(
            task_type or "",
            payload=data,
            priority=priority,
            difficulty=difficulty,
            required_capabilities=tuple(capability or ()),
            max_retries=max_retries,
            timeout_s=timeout_s,
        )
        specs, lines = _read_specs(file, base) if file is not None else ([base] * count, None)
        stream = not json_out and not wait  # the ids one a line, as each batch is acknowledged
        with conn.client() as client:
            try:
                ids = _submit_all(client, specs, lines, str(file), _print_ids if stream else None)
            except Exception as e:
                if not stream and (partial := _submitted(e)):  # ids that went in: on stdout all the same
                    _print_json({"ids": partial}) if json_out else _print_ids(partial)
                raise
            tasks = [client.wait(tid) for tid in ids] if wait else []
    if json_out:
        _print_json({"ids": ids, **({"tasks": [task_json(t) for t in tasks]} if wait else {})})
    elif wait:
        _print_ids([_task_line(t) for t in tasks])
    if any(t.status is not TaskStatus.COMPLETED for t in tasks):
        raise typer.Exit(EXIT_TASKS_FAILED)


# ------------------------------------------------------------------------------------ status


def _kv_table(title: str, rows: Sequence[tuple[str, str]]) -> Table:
    table = Table(title=title, title_style="bold", show_header=False, title_justify="left", min_width=len(title) + 2)
    table.add_column(style="dim")
    table.add_column(justify="right")
    for k, v in rows:
        table.add_row(k, v)
    return table


def _counts(title: str, counts: dict[str, int]) -> Table:
    return _kv_table(title, [(k, f"{v:,}") for k, v in sorted(counts.items())] or [("-", "0")])


def _quantiles(q: dict[str, Any]) -> str:
    if not q or not q.get("count"):
        return "-"
    return " / ".join(fmt_s(q.get(k)) for k in ("mean", "p50", "p95", "p99", "max")) + f"  ({q['count']:,})"


def _ratio(v: float) -> str:
    return "inf" if not math.isfinite(v) else f"{v:.2f}"


def _overview(s: RemoteStats, address: str) -> Table:
    d = s.stats
    rows = [
        ("state", s.state),
        ("store", str(d.get("store", "-"))),
        ("threshold (acceptance)", _ratio(s.threshold)),
        (
            "throughput",
            f"{d.get('throughput_per_s_1m', 0.0):.1f} tasks/s (1 min), {d.get('throughput_per_hour', 0):,}/h",
        ),
        ("utilization", f"{d.get('utilization', 0.0):.0%}"),
        ("error rate 1 h / all", f"{d.get('error_rate', 0.0):.1%} / {d.get('error_rate_total', 0.0):.1%}"),
        ("completion mean / p50 / p95 / p99 / max", _quantiles(d.get("completion_s") or {})),
        ("queue wait mean / p50 / p95 / p99 / max", _quantiles(d.get("queue_wait_s") or {})),
    ]
    scaling = d.get("scaling")
    if isinstance(scaling, dict):
        with contextlib.suppress(TypeError):
            rows.append(("scaling advice", scaling_text(ScalingAdvice(**scaling))))
    return _kv_table(f"node {s.node_id} at {address}", rows)


def _load(s: RemoteStats) -> Table:
    table = Table(title="load", title_style="bold", title_justify="left", header_style="bold")
    names = ("leased", "ready", "delayed", "pending", "handing_off", "slots", "ratio")
    for name in names:
        table.add_column(name, justify="right")
    x = s.load
    table.add_row(
        *(f"{v:,}" for v in (x.leased, x.ready, x.delayed, x.pending, x.handing_off, x.slots)), _ratio(x.ratio)
    )
    return table


def _workers(s: RemoteStats) -> Table:
    table = Table(title=f"workers ({len(s.workers)})", title_style="bold", title_justify="left", header_style="bold")
    for col in ("worker", "health", "skill", "slots", "active", "done", "failed", "timeouts", "success (ema)",
                "avg time (ema)", "capabilities"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("worker", "health", "capabilities") else "right")
    for w in s.workers:
        health = w.health if w.healthy else f"[red]{w.health}[/]"
        table.add_row(
            w.id, health, str(w.skill), str(w.concurrency), str(w.active), f"{w.completed:,}", f"{w.failed:,}",
            f"{w.timed_out:,}", f"{w.success_rate:.0%}", fmt_s(w.avg_completion_s), ", ".join(w.capabilities) or "-",
        )  # fmt: skip
    return table


def _report(r: dict[str, Any]) -> list[RenderableType]:
    """The performance report (:class:`~node.analytics.PerformanceReport` as the node sent it)."""
    completion = " / ".join(fmt_s(r.get(k)) for k in ("p50_completion_s", "p95_completion_s", "p99_completion_s"))
    out: list[RenderableType] = [
        _kv_table(
            f"performance report - node {r.get('node_id')}",
            [
                ("tasks finished", f"{r.get('tasks_finished', 0):,}"),
                ("completed / failed / cancelled", f"{r.get('completed')} / {r.get('failed')} / {r.get('cancelled')}"),
                ("completion time avg", fmt_s(r.get("avg_completion_s"))),
                ("completion time p50 / p95 / p99", completion),
                ("queue wait avg / p99", f"{fmt_s(r.get('avg_queue_wait_s'))} / {fmt_s(r.get('p99_queue_wait_s'))}"),
                ("error rate", f"{r.get('error_rate', 0.0):.1%}"),
                ("throughput", f"{r.get('throughput_per_s', 0.0):.1f} tasks/s over {r.get('wall_s', 0.0):.1f} s"),
            ],
        )
    ]
    per_worker: dict[str, dict[str, Any]] = r.get("worker_stats") or {}
    if per_worker:
        table = Table(title="per-worker statistics", title_style="bold", title_justify="left", header_style="bold")
        for col in ("worker", "skill", "healthy", "done", "failed", "timeouts", "success", "avg time", "busy"):
            table.add_column(col, justify="left" if col == "worker" else "right")
        for wid, ws in per_worker.items():
            rate = ws.get("success_rate")
            table.add_row(
                wid, str(ws.get("skill")), "yes" if ws.get("healthy") else "[red]no[/]", str(ws.get("completed_tasks")),
                str(ws.get("failed_tasks")), str(ws.get("timed_out")), "-" if rate is None else f"{rate:.0%}",
                fmt_s(ws.get("avg_completion_s_ema")), fmt_s(ws.get("total_time_s")),
            )  # fmt: skip
        out.append(table)
    errors: dict[str, int] = r.get("errors_by_kind") or {}
    if errors:
        out.append(_counts("failed tasks by kind", errors))
    return out


def render_status(s: RemoteStats, address: str) -> RenderableType:
    """What ``fedcoord status`` shows of one answer of the node."""
    parts: list[RenderableType] = [
        _overview(s, address),
        _load(s),
        Columns([_counts("active tasks by status", s.active_by_status), _counts("totals", s.totals)], padding=(0, 4)),
        _workers(s),
    ]
    failures = s.stats.get("failures_by_kind") or {}
    handoffs = _counts("hand-offs", s.handoffs) if s.handoffs else _kv_table("hand-offs", [("not enabled", "-")])
    parts.append(Columns([handoffs, *([_counts("failures by kind", failures)] if failures else [])], padding=(0, 4)))
    if s.report is not None:
        parts += _report(s.report)
    return Group(*parts)


@with_connection
def status(
    *,
    json_out: JsonOption = False,
    report: Annotated[bool, typer.Option("--report", help="Include the performance report.")] = False,
    watch: Annotated[
        float | None,
        typer.Option(
            "--watch",
            "-w",
            min=0.2,
            metavar="SECONDS",
            show_default=False,
            help="Show it again every SECONDS until Ctrl-C (with --json: one JSON document a line).",
        ),
    ] = None,
    conn: Connection,
) -> None:
    """Show a node's state: load, threshold, tasks by status, totals, workers, hand-offs, throughput,
    error rates and completion-time quantiles (with --report the performance report too).

    Exit status: 0 shown, 1 the node could not be reached or refused the call, 130 interrupted
    (Ctrl-C ends --watch with 0).
    """
    console = Console()
    with _errors(conn), conn.client() as client:
        if watch is None:
            _show(console, client.stats(report=report), conn.node, json_out, watch=False)
            return
        with contextlib.suppress(KeyboardInterrupt), _live(console, json_out) as live:
            while True:
                view = _show(console, client.stats(report=report), conn.node, json_out, watch=True)
                if live is not None and view is not None:
                    live.update(view, refresh=True)
                time.sleep(watch)


@contextlib.contextmanager
def _live(console: Console, json_out: bool) -> Iterator[Live | None]:
    if json_out or not console.is_terminal:
        yield None
        return
    with Live(console=console, auto_refresh=False, screen=False) as live:
        yield live


def _show(console: Console, s: RemoteStats, address: str, json_out: bool, *, watch: bool) -> RenderableType | None:
    """Print ``s`` (JSON, or the view off a terminal) or return the view for a live display."""
    if json_out:
        _print_json(s.to_dict(), indent=not watch)
        return None
    view = render_status(s, address)
    if watch and console.is_terminal:
        return view
    console.print(view)
    return None
