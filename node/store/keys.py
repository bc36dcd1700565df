"""Every Redis key and channel a node uses, in one place.

All keys of node ``N`` start with ``fc:N:``; read them with ``redis-cli``:

==========================  ======  ====================================================
key                         type    holds
==========================  ======  ====================================================
``fc:N:active``             hash    task id -> JSON record of every active task
``fc:N:done:<bucket>``      hash    task id -> JSON record of tasks finished in that
                                    time bucket (``<bucket>`` = bucket start, Unix s);
                                    the key expires ``retention`` after the bucket ends
``fc:N:workers``            hash    worker id -> JSON record
``fc:N:counters``           hash    cumulative counts (submitted, completed, ...)
``fc:N:idem:<key>``         string  task id that first used idempotency key ``<key>``
``fc:N:owner``              string  owner lock: ``epoch|host|pid|nonce`` with a TTL
``fc:N:epoch``              string  fencing counter, incremented by each new owner
``fc:N:history``            stream  one entry per minute of analytics, 24 h kept
``fc:N:handoffs``           hash    task id -> peer, for tasks being handed off (their
                                    record in ``active`` stays as it was: queued)
``fc:N:reports``            hash    task id -> final JSON record of an adopted task, kept
                                    until the node it came from acknowledges the result
``fc:N:refused``            zset    task ids declared unknown to a peer that asked
                                    (score: ns); their late transfers are refused (24 h)
``fc:N:dead``               zset    dead letters: ids of tasks failed for good here
                                    (score: finish time, Unix ms); a requeue takes
                                    its id out, entries past the retention are trimmed
``fc:N:privacy``            hash    privacy ledger totals: releases, refused, rho_total,
                                    worst_rho, last_window (never reset)
``fc:N:privacy:releases``   zset    one JSON entry per release (window, rho, mechanism,
                                    scale, at_ns), score: window index; the newest kept
``fc:N:events``             pubsub  channel: JSON arrays of new_task / task_updated
==========================  ======  ====================================================
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PREFIX", "NodeKeys"]

PREFIX = "fc"


@dataclass(frozen=True, slots=True)
class NodeKeys:
    node_id: str

    @property
    def base(self) -> str:
        return f"{PREFIX}:{self.node_id}:"

    @property
    def active(self) -> str:
        return self.base + "active"

    def done(self, bucket_start_s: int) -> str:
        return f"{self.base}done:{bucket_start_s}"

    @property
    def workers(self) -> str:
        return self.base + "workers"

    @property
    def counters(self) -> str:
        return self.base + "counters"

    def idem(self, key: str) -> str:
        return f"{self.base}idem:{key}"

    @property
    def owner(self) -> str:
        return self.base + "owner"

    @property
    def epoch(self) -> str:
        return self.base + "epoch"

    @property
    def history(self) -> str:
        return self.base + "history"

    @property
    def events(self) -> str:
        return self.base + "events"

    @property
    def handoffs(self) -> str:
        return self.base + "handoffs"

    @property
    def reports(self) -> str:
        return self.base + "reports"

    @property
    def refused(self) -> str:
        return self.base + "refused"

    @property
    def dead(self) -> str:
        return self.base + "dead"

    @property
    def privacy(self) -> str:
        return self.base + "privacy"

    @property
    def privacy_releases(self) -> str:
        return self.base + "privacy:releases"
