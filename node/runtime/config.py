"""Runtime settings of a node, its states, and where its data lives by default."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from pathlib import Path

from federation.privacy.config import PrivacyConfig
from node.admission import AdmissionConfig
from node.analytics.histogram import FixedBins
from node.core import CoreConfig
from node.errors import ValidationError
from node.runtime.handoff import HandoffConfig

__all__ = ["NodeConfig", "NodeState", "default_data_dir"]

FSYNC_POLICIES = ("everysec", "always")


class NodeState(enum.StrEnum):
    STARTING = "starting"
    SERVING = "serving"
    DEGRADED = "degraded"  # the store failed; reloading from it once it answers
    FENCED = "fenced"  # another process owns this node id now
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Runtime settings of a node (the scheduling settings are in ``core``)."""

    core: CoreConfig = field(default_factory=CoreConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    handoff: HandoffConfig = field(default_factory=HandoffConfig)  # used when a transport is given
    # Window summaries (the federation's input): window length, completion-time bins (the same
    # as the privacy settings' public bins), and what may be released of them and at what cost
    window_s: float = 20.0
    completion_bins: FixedBins = field(default_factory=FixedBins)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    retention_s: float = 86400.0  # finished tasks are kept this long (rounded up to an hour bucket)
    lock_ttl_s: float = 10.0  # owner lock lifetime; refreshed every third of it
    lock_wait_s: float = 0.0  # how long start() waits for another owner to let go
    # Take the owner lock even while another process holds it: for when that process is known
    # to be dead (its host is gone, say). The old owner is fenced off: its writes are refused.
    takeover: bool = False
    tick_max_s: float = 0.25  # timeouts and retries fire at most this late
    history: bool = True  # keep per-minute analytics in the store (24 h)
    listener_check_s: float = 1.0  # how often to look for subscribers of the event channel
    seed: int | None = None  # random seed (ids, backoff jitter); None: from the OS
    # The embedded Redis's appendfsync: "always" (every write is on disk before Redis replies:
    # an acknowledged change survives a node or Redis crash and a power loss) or "everysec"
    # (~10% faster; but while a slow fsync runs Redis holds its writes back up to 2 s and still
    # replies, so a Redis crash then loses acknowledged changes: docs/notes/node-decisions.md).
    embedded_fsync: str = "always"
    # After loading, move what was loaded out of the garbage collector's sight (gc.freeze):
    # long-lived task records then cost nothing in later collections. Process-wide.
    gc_freeze: bool = True
    # Collector thresholds set at start (process-wide), or None to leave them alone. Every task
    # allocates a few objects; with Python's default (700, 10, 10) the collector runs every few
    # hundred tasks and rescans young tasks again and again.
    gc_thresholds: tuple[int, int, int] | None = (50_000, 20, 100)

    def __post_init__(self) -> None:
        if self.embedded_fsync not in FSYNC_POLICIES:
            raise ValidationError("embedded_fsync", f"{self.embedded_fsync!r}", limit=" or ".join(FSYNC_POLICIES))
        for name in ("retention_s", "lock_ttl_s", "tick_max_s", "listener_check_s", "window_s"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and v > 0):
                raise ValidationError(name, f"{v!r} must be a positive number of seconds", limit="> 0")
        if not 0.001 <= self.window_s <= 86400:  # a release's window is whole microseconds, at most a day
            raise ValidationError("window_s", f"{self.window_s!r} seconds", limit="0.001 <= window_s <= 86400")
        if tuple(self.completion_bins.edges) != tuple(self.privacy.completion_edges_s):
            raise ValidationError(
                "privacy.completion_edges_s",
                f"{self.privacy.completion_edges_s!r} differ from completion_bins {self.completion_bins.edges!r}",
                limit="the same public bins for the summaries and their releases",
            )
        if not (isinstance(self.lock_wait_s, int | float) and self.lock_wait_s >= 0):
            raise ValidationError("lock_wait_s", f"{self.lock_wait_s!r}", limit=">= 0")


def default_data_dir(node_id: str) -> Path:
    base = os.environ.get("FEDCOORD_HOME") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "fedcoord"
    )
    return Path(base) / "nodes" / node_id
