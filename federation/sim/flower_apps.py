"""The ServerApp and ClientApp of the simulator's Flower engine path (:mod:`federation.sim.flower`).

Module-level objects, so that Flower's engine hands the Ray actors a reference to this module
and not a pickled app. Both are thin: the ServerApp runs the deployed rounds
(:func:`federation.server_app.serve`) on the simulator's clock; the ClientApp is the deployed
:func:`federation.client_app.answer`, pointed at its simulated node: the node whose name is
``n<partition-id>``, at the address the engine path put in ``FEDCOORD_SIM_NODES``.
"""

from __future__ import annotations

import os
import time

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from federation.client_app import NodeSettings, answer
from federation.server_app import serve

__all__ = ["client", "server"]

server = ServerApp()
client = ClientApp()


@server.main()
def _server_main(grid: Grid, context: Context) -> None:
    from federation.sim.flower import EngineError, active  # noqa: PLC0415 - (imports this module)

    bridge = active()
    try:
        # every SuperNode registered before the first round (the engine starts them with Ray)
        deadline = time.monotonic() + bridge.nodes_wait_s
        while len(list(grid.get_node_ids())) < bridge.cfg.nodes:
            if bridge.stopping.is_set():  # the engine failed to start: nobody is coming
                return
            if time.monotonic() > deadline:
                raise EngineError(
                    f"{len(list(grid.get_node_ids()))} of {bridge.cfg.nodes} SuperNodes after {bridge.nodes_wait_s:g} s"
                )
            time.sleep(0.05)
        serve(grid, bridge.settings, bridge)
    except BaseException as e:
        bridge.error = e  # (the simulator's thread says why it stopped)
        raise
    finally:
        bridge.stopped()


@client.query("summary")
def _client_summary(msg: Message, context: Context) -> Message:
    from federation.sim.flower import ADDRESS_ENV  # noqa: PLC0415

    node = f"n{int(context.node_config['partition-id'])}"
    settings = NodeSettings({"node-address": os.environ[ADDRESS_ENV], "node-insecure": True, "node-token": node})
    return Message(answer(msg.content, settings), reply_to=msg)
