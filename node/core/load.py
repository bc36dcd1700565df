"""A node's load as admission reads it: running counters, O(1) to read."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Load", "load_ratio"]


def load_ratio(demand: int, slots: int) -> float:
    """``demand / slots``; with no slot, ``demand`` itself (as if there were one): any work then
    reads as at least 1.0, overloaded, and an idle node without workers reads 0.0."""
    return demand / slots if slots else float(demand)


class Load(NamedTuple):
    """What a node holds now. ``ratio = (leased + ready) / slots`` (see :func:`load_ratio`):
    tasks waiting out a retry backoff or a ``delay_s`` (``delayed``), waiting on dependencies
    (``pending``) or being handed to a peer (``handing_off``) are not load."""

    leased: int  # assigned or in progress
    ready: int  # queued and claimable now
    delayed: int  # queued, not claimable before their not-before time
    pending: int  # waiting on dependencies
    handing_off: int  # being transferred to a peer
    slots: int  # concurrency summed over healthy workers
    ratio: float

    @property
    def demand(self) -> int:
        return self.leased + self.ready
