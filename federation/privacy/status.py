"""What a node answers about its releases: the outcome of one ``Summary`` call, and the budget."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any

from federation.privacy.schema import ReleasedSummary

__all__ = ["PrivacyStatus", "ReleaseOutcome", "ReleaseStatus"]


class ReleaseStatus(enum.StrEnum):
    RELEASED = "released"  # a new release: the ledger recorded its cost before it was returned
    REPEATED = "repeated"  # the same release as before (same window: no new cost)
    NO_WINDOW = "no_window"  # no complete window since the node started (or since the last release)
    BUDGET_EXHAUSTED = "budget_exhausted"  # the next release would take a task over budget: refused
    DISABLED = "disabled"  # privacy.enabled is false: this node releases nothing
    UNAVAILABLE = "unavailable"  # the ledger could not be written (store down): nothing released


@dataclass(frozen=True, slots=True)
class ReleaseOutcome:
    status: ReleaseStatus
    summary: ReleasedSummary | None  # set for RELEASED and REPEATED only
    reason: str  # one line for logs and for the caller
    privacy: PrivacyStatus | None = None  # the budget after this call (what the federation may know of it)
    node_id: str = ""  # the node that answered (public: the federation names its members)

    @property
    def released(self) -> bool:
        return self.summary is not None


@dataclass(frozen=True, slots=True)
class PrivacyStatus:
    """A node's privacy budget, what was spent and what is left (``fedcoord privacy status``).

    Per task: ``epsilon_current`` is what the tasks still counting (those of the last ``m - 1``
    released windows) have spent; ``epsilon_worst`` the most any task has spent so far;
    ``epsilon_left`` what the next release would leave (budget minus the epsilon of the last
    ``m - 1`` releases plus the next one): negative means the next release is refused."""

    enabled: bool
    mechanism: str
    scale: float
    variance: float  # noise variance per released cell
    m: int
    delta: float
    epsilon_budget: float
    rho_budget: float  # zCDP budget per task equivalent to (epsilon_budget, delta), from OpenDP
    rho_per_release: float  # from the measurement's privacy map
    releases: int  # recorded in the ledger since it was created
    refused: int  # releases refused for budget since the ledger was created
    last_window: int | None
    epsilon_current: float
    epsilon_worst: float
    epsilon_left: float
    next_allowed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
