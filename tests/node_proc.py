"""One node in a process of its own, for the fault tests and the gRPC hand-off benchmark: a
LocalNode on the Redis given, a GrpcTransport to its peers, a NodeServer answering them (and,
with ``--client-listen``, a second one on a Unix socket for the test's client calls: reachable
from outside a network namespace). Optional in-process workers claim and complete tasks.

    python -m tests.node_proc --node-id n1 --redis-url unix:///tmp/r1.sock --listen 127.0.0.1:PORT \\
        --peer n2=127.0.0.1:PORT2 --control-dir DIR [--workers N] [--crash-at STEP | --pause-at STEP]

Files in ``--control-dir`` (the test's side of the conversation):

* ``<node>.ready``: written (JSON: pid, addresses) once everything serves;
* ``<node>.completions``: one task id a line for every completion acknowledged to a worker here;
* ``<node>.paused-<step>``: written when ``--pause-at`` holds the node at that step (the first
  time it gets there); the node goes on once something is written to the FIFO
  ``<node>.release-<step>`` (made before the paused file).

``--crash-at STEP`` kills the process (SIGKILL: no last write, no lock release) the first time
the hand-off reaches that named step here. SIGTERM closes the node cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

from node import AdmissionConfig, LocalNode, NodeConfig, WorkerSpec
from node.errors import FedcoordError, NodeClosedError, StaleLeaseError, StoreUnavailableError
from node.model import Lease
from node.rpc.auth import AuthInterceptor, TlsConfig, Tokens, server_credentials
from node.rpc.server import NodeServer, ServerOptions
from node.rpc.transport import GrpcTransport, parse_peers
from node.runtime.handoff import HandoffConfig

STEPS = (
    "intent_recorded",
    "transfer_received",
    "peer_acked",
    "ack_received",
    "handed_off_recorded",
    "result_sent",
    "result_recorded",
)
STORE_BACKOFF_S = 0.05  # how long a worker waits before it asks a node that lost its store again
log = logging.getLogger("fedcoord.test.node_proc")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.node_proc", description=__doc__)
    p.add_argument("--node-id", required=True)
    p.add_argument("--redis-url", required=True)
    p.add_argument("--listen", required=True, help="HOST:PORT for peers")
    p.add_argument("--client-listen", help="unix:PATH for the test's client calls (plaintext)")
    p.add_argument("--peer", action="append", default=[], help="NODE_ID=HOST:PORT (repeatable)")
    p.add_argument("--control-dir", type=Path, required=True)
    p.add_argument("--threshold", type=float, default=1.0)
    p.add_argument("--auto", action="store_true", help="offload on its own when over the threshold")
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=2, help="offloads in flight at once")
    p.add_argument("--retry-max-s", type=float, default=0.5)
    p.add_argument("--tick-s", type=float, default=0.02, help="timeouts and retries fire at most this late")
    p.add_argument("--timeout-s", type=float, default=5.0)
    p.add_argument("--offer-timeout-s", type=float, default=2.0)
    p.add_argument("--workers", type=int, default=0, help="slots of an in-process worker that runs tasks")
    p.add_argument("--work-ms", type=float, default=0.0, help="how long a task takes the worker")
    p.add_argument("--slots", type=int, default=0, help="slots of idle workers (room to accept, nobody runs)")
    p.add_argument("--crash-at", choices=STEPS)
    p.add_argument("--pause-at", choices=STEPS)
    p.add_argument("--insecure", action="store_true", help="plaintext between nodes (loopback only)")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--tls-ca", help="with --tls-cert/--tls-key: mutual TLS, peers' certificates signed by it")
    p.add_argument("--token", help="bearer token sent to peers and required from every caller")
    args = p.parse_args(argv)
    if not args.insecure and not (args.tls_cert and args.tls_key and args.tls_ca):
        p.error("give --insecure, or --tls-cert, --tls-key and --tls-ca")
    return args


def config(args: argparse.Namespace, peers: tuple[str, ...]) -> NodeConfig:
    return NodeConfig(
        tick_max_s=args.tick_s,
        listener_check_s=max(0.05, args.tick_s),
        admission=AdmissionConfig(threshold=args.threshold, margin=0.0),
        handoff=HandoffConfig(
            peers=peers,
            auto=args.auto,
            check_s=0.05,
            batch=args.batch,
            concurrency=args.concurrency,
            retry_s=0.02,
            retry_max_s=args.retry_max_s,
        ),
        history=False,
    )


class Steps:
    """The step hook: crash or pause the first time the hand-off gets to a step here."""

    def __init__(self, args: argparse.Namespace):
        self.crash_at = args.crash_at
        self.pause_at = args.pause_at
        self.dir: Path = args.control_dir
        self.paused = False

    async def __call__(self, node_id: str, step: str) -> None:
        if step == self.crash_at:
            log.warning("node %s: killing itself at %s", node_id, step)
            os.kill(os.getpid(), signal.SIGKILL)
        if step == self.pause_at and not self.paused:
            self.paused = True
            release = self.dir / f"{node_id}.release-{step}"
            os.mkfifo(release)
            (self.dir / f"{node_id}.paused-{step}").write_text(str(os.getpid()))
            log.warning("node %s: held at %s until something is written to %s", node_id, step, release)
            await asyncio.to_thread(release.read_bytes)  # returns once the test wrote and closed it


async def work(node: LocalNode, slots: int, work_s: float, completions: Path) -> None:
    """A worker of ``slots`` that runs every task it gets (``work_s`` each) and notes each
    acknowledged completion in ``completions``."""
    worker = f"w-{node.node_id}"
    result = f"by {node.node_id}".encode()
    fd = os.open(completions, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    async def run_one(lease: Lease) -> None:
        if work_s:
            await asyncio.sleep(work_s)  # the task's work
        try:
            await node.complete(lease, result=result)
        except StaleLeaseError:
            return
        os.write(fd, f"{lease.task_id}\n".encode())

    try:
        await node.register_worker(WorkerSpec(worker, concurrency=slots))
        while True:
            try:
                leases = await node.claim(worker, slots, wait_s=0.2)
                await asyncio.gather(*(run_one(x) for x in leases))
            except NodeClosedError:
                return
            except StoreUnavailableError:
                await asyncio.sleep(STORE_BACKOFF_S)  # the node reloads on its own; ask again a bit later
    finally:
        os.close(fd)


async def serve(args: argparse.Namespace) -> None:
    peers = parse_peers(args.peer)
    tls = {} if args.insecure else {"ca_file": args.tls_ca, "cert_file": args.tls_cert, "key_file": args.tls_key}
    transport = GrpcTransport(
        peers,
        token=args.token,
        insecure=args.insecure,
        timeout_s=args.timeout_s,
        offer_timeout_s=args.offer_timeout_s,
        **tls,
    )
    interceptors = [AuthInterceptor(Tokens(admin=(args.token,)))] if args.token else []
    creds = None
    if not args.insecure:
        creds = server_credentials(TlsConfig(args.tls_cert, args.tls_key, args.tls_ca, require_client_cert=True))
    node = await LocalNode.start(
        args.node_id, args.redis_url, config=config(args, tuple(peers)), transport=transport, step_hook=Steps(args)
    )
    servers = [
        NodeServer(
            node,
            ServerOptions(listen=args.listen, credentials=creds, interceptors=interceptors),
            handoff_endpoint=transport.local_endpoint,
        )
    ]
    if args.client_listen:
        opts = ServerOptions(listen=args.client_listen, interceptors=interceptors)
        servers.append(NodeServer(node, opts, handoff_endpoint=transport.local_endpoint))
    loops: list[asyncio.Task[None]] = []
    try:
        for s in servers:
            await s.start()
        for i in range(0, args.slots, 10_000):
            await node.register_worker(WorkerSpec(f"idle-{args.node_id}-{i}", concurrency=min(10_000, args.slots - i)))
        if args.workers:
            completions = args.control_dir / f"{args.node_id}.completions"
            loops.append(asyncio.create_task(work(node, args.workers, args.work_ms / 1000, completions)))
        ready = args.control_dir / f"{args.node_id}.ready"
        tmp = ready.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "listen": servers[0].address, "client": args.client_listen}))
        tmp.rename(ready)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        for s in servers:
            await s.drain(1.0)
        for t in loops:
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError, FedcoordError):
            await asyncio.gather(*loops)
        await node.close()
        await transport.close()


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format=f"%(asctime)s {args.node_id} %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
