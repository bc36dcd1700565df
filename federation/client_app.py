"""The Flower ClientApp: the bridge between a SuperNode and its fedcoord node.

Each ``query.summary`` message carries the round number and, from the second round on, the
previous round's federation view. The ClientApp gives the view to its node over gRPC
(``ApplyFederation``: the node sets its threshold from it), then asks for the node's
privacy-filtered summary (``Summary``) and replies with exactly the release schema, the status
of the release and the node's privacy budget, as plain records (:mod:`federation.records`).
Nothing else about the node goes into the reply.

Where the node is comes from the SuperNode's node config (``flower-supernode --node-config``):

==================  ========================================================================
key                 meaning
==================  ========================================================================
``node-address``    the node's gRPC address, host:port (required)
``node-token``      a bearer token with the ``federation`` role (when the node wants tokens)
``node-insecure``   true for a plaintext node on loopback
``node-ca``         the CA certificate (PEM) that signed the node's certificate
``node-cert``,      a client certificate and key, for a node that requires them (mutual TLS)
``node-key``
==================  ========================================================================

A node that cannot be reached gives a reply with status ``unavailable`` and the reason: the
round counts it as missing, and the ServerApp never waits for it longer than the message's TTL.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from federation.privacy.schema import SchemaError
from federation.privacy.status import ReleaseOutcome, ReleaseStatus
from federation.records import outcome_to_records, view_from_records
from node.errors import FedcoordError

__all__ = ["NodeSettings", "answer", "app"]

log = logging.getLogger("fedcoord.clientapp")

app = ClientApp()


class NodeSettings:
    """The node a SuperNode serves, from its node config."""

    def __init__(self, node_config: Mapping[str, Any]):
        address = node_config.get("node-address")
        if not isinstance(address, str) or not address:
            raise ValueError("node config: node-address (the fedcoord node's gRPC host:port) is required")
        self.address = address
        self.token = str(node_config.get("node-token") or "") or None
        self.insecure = _true(node_config.get("node-insecure", False))
        self.ca_file = str(node_config.get("node-ca") or "") or None
        self.cert_file = str(node_config.get("node-cert") or "") or None
        self.key_file = str(node_config.get("node-key") or "") or None

    def client_options(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "insecure": self.insecure,
            "ca_file": self.ca_file,
            "cert_file": self.cert_file,
            "key_file": self.key_file,
            "timeout_s": 10.0,
        }


def _true(v: object) -> bool:
    return v is True or (isinstance(v, str) and v.strip().lower() in ("true", "1", "yes", "on")) or v == 1


def answer(content: RecordDict, settings: NodeSettings) -> RecordDict:
    """What a node answers to one query: apply the view it carries, then release a summary."""
    from node.rpc.client import NodeClient  # noqa: PLC0415 - gRPC only where a node is called

    applied: dict[str, Any] = {}
    try:
        with NodeClient(settings.address, **settings.client_options()) as client:
            if "view" in content:
                try:
                    view = view_from_records(content["view"], content["view.names"])
                except SchemaError as e:
                    log.warning("query carried a view that does not decode: %s", e.reason)
                else:
                    threshold, policy = client.apply_federation(view)
                    applied = {"threshold": float(threshold), "policy": policy}
            outcome = client.summary()
    except FedcoordError as e:  # the node is down, refuses the token, ...: an answer, not a crash
        outcome = ReleaseOutcome(ReleaseStatus.UNAVAILABLE, None, f"node at {settings.address}: {e}")
    reply = outcome_to_records(outcome)
    if applied:
        reply["applied"] = MetricRecord({"threshold": applied["threshold"]})
        reply["applied.names"] = ConfigRecord({"policy": applied["policy"]})
    return reply


@app.query("summary")
def query_summary(msg: Message, context: Context) -> Message:
    settings = NodeSettings(context.node_config)
    return Message(answer(msg.content, settings), reply_to=msg)
