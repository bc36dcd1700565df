"""Privacy settings of a node: the per-task budget, the public vocabulary and bins, the mechanism.

Refused at start (:class:`~node.errors.ValidationError` naming the setting, ``privacy.<name>``)
when out of range: epsilon <= 0, delta outside (0, 1), an empty vocabulary, bins that are empty
or not increasing, ``m`` < 1, an explicit noise scale under which one release costs more than
the whole budget (checked by :class:`~federation.privacy.accountant.Accountant`, which needs
OpenDP to say what a release costs).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from node.analytics.histogram import DEFAULT_COMPLETION_EDGES_S, FixedBins
from node.errors import ValidationError
from node.model import check_name

__all__ = [
    "DEFAULT_CAPACITY_BUCKETS",
    "DEFAULT_VOCABULARY",
    "MECHANISMS",
    "OTHER",
    "PrivacyConfig",
]

OTHER = "other"  # every task type outside the vocabulary is counted under this name
# The demo's task types (seed 000's agent tasks); a deployment lists its own.
DEFAULT_VOCABULARY: tuple[str, ...] = ("simple_qa", "quick_analysis", "analysis", "coding", "reasoning")
# Healthy worker slots are released as the lower edge of one of these buckets (0 below the first).
DEFAULT_CAPACITY_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
MECHANISMS = ("gaussian", "laplace")
MAX_EPSILON = 100.0
MAX_SCALE = 1e9  # OpenDP's discrete Gaussian (zCDP) or discrete Laplace (pure DP)


def _finite(name: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValidationError(f"privacy.{name}", f"{v!r} is not a finite number")
    return float(v)


@dataclass(frozen=True, slots=True)
class PrivacyConfig:
    """What a node may release about its tasks, and at what cost.

    The privacy unit is one task. ``epsilon`` and ``delta`` bound what the releases of one node
    reveal about any single task; a task counts in at most ``m`` consecutive releases (windows),
    so with the default calibration each release spends a third of the budget (``m`` = 3) and
    the budget never runs out while the configuration stays the same. ``scale`` overrides the
    calibrated noise scale (then a release may cost more or less than ``budget / m``; the ledger
    refuses any release that would take a task over budget).
    """

    epsilon: float = 1.0  # per task, at `delta`
    delta: float = 1e-6
    m: int = 3  # a task counts in at most this many consecutive releases
    vocabulary: tuple[str, ...] = DEFAULT_VOCABULARY
    completion_edges_s: tuple[float, ...] = DEFAULT_COMPLETION_EDGES_S
    mechanism: str = "gaussian"
    scale: float | None = None  # noise scale per cell; None: calibrated from the budget
    # Cells whose noisy value is below this many noise standard deviations are released as 0.
    suppress_sd: float = 1.0
    capacity_buckets: tuple[int, ...] = DEFAULT_CAPACITY_BUCKETS
    enabled: bool = True  # False: the node releases nothing (Summary answers "disabled")

    def __post_init__(self) -> None:
        eps = _finite("epsilon", self.epsilon)
        if eps <= 0:
            raise ValidationError("privacy.epsilon", f"{self.epsilon!r} must be positive", limit="> 0")
        if eps > MAX_EPSILON:  # beyond it the guarantee means nothing (and OpenDP's conversions overflow)
            raise ValidationError("privacy.epsilon", f"{self.epsilon!r} is too large to protect anything",
                                  limit=f"<= {MAX_EPSILON:g}")  # fmt: skip
        d = _finite("delta", self.delta)
        if not 0 < d < 1:
            raise ValidationError("privacy.delta", f"{self.delta!r} is outside (0, 1)", limit="0 < delta < 1")
        if isinstance(self.m, bool) or not isinstance(self.m, int) or self.m < 1:
            raise ValidationError("privacy.m", f"{self.m!r} must be an integer of at least 1", limit=">= 1")
        if self.m > 1000:
            raise ValidationError("privacy.m", f"{self.m!r} releases per task is more than supported", limit="<= 1000")
        self._check_vocabulary()
        edges = self.completion_edges_s
        if not isinstance(edges, tuple) or not edges:
            raise ValidationError("privacy.completion_edges_s", "the histogram needs at least one bin edge")
        try:
            FixedBins(edges)
        except ValidationError as e:
            limit = "positive, strictly increasing"
            raise ValidationError("privacy.completion_edges_s", e.detail, limit=limit) from None
        if self.mechanism not in MECHANISMS:
            raise ValidationError("privacy.mechanism", f"{self.mechanism!r}", limit=" or ".join(MECHANISMS))
        if self.scale is not None:
            s = _finite("scale", self.scale)
            if not 0 < s <= MAX_SCALE:  # noise beyond it would not fit the released integers
                raise ValidationError("privacy.scale", f"{self.scale!r}", limit=f"0 < scale <= {MAX_SCALE:g}")
        sd = _finite("suppress_sd", self.suppress_sd)
        if sd < 0 or sd > 100:
            raise ValidationError("privacy.suppress_sd", f"{self.suppress_sd!r}", limit="0 <= suppress_sd <= 100")
        b = self.capacity_buckets
        if (
            not isinstance(b, tuple)
            or not b
            or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in b)
            or any(y <= x for x, y in itertools.pairwise(b))
        ):
            raise ValidationError(
                "privacy.capacity_buckets", f"{b!r}", limit="a non-empty tuple of increasing positive integers"
            )
        if not isinstance(self.enabled, bool):
            raise ValidationError("privacy.enabled", f"{self.enabled!r}", limit="true or false")

    def _check_vocabulary(self) -> None:
        v = self.vocabulary
        if not isinstance(v, tuple) or not v:
            raise ValidationError("privacy.vocabulary", "is empty: list the task types that may be named in releases")
        names = []
        for i, name in enumerate(v):
            try:
                names.append(check_name("privacy.vocabulary", name))
            except ValidationError as e:
                raise ValidationError("privacy.vocabulary", f"entry {i}: {e.detail}") from None
        if OTHER in names:
            raise ValidationError("privacy.vocabulary", f"{OTHER!r} is reserved (every type outside the list)")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValidationError("privacy.vocabulary", f"lists {', '.join(map(repr, twice))} twice")
        if len(names) > 256:
            raise ValidationError("privacy.vocabulary", f"{len(names)} types", limit="<= 256")

    @property
    def types(self) -> tuple[str, ...]:
        """The public type names a release carries: the vocabulary, then ``other``."""
        return (*self.vocabulary, OTHER)

    @property
    def bins(self) -> FixedBins:
        return FixedBins(self.completion_edges_s)

    def capacity_bucket(self, slots: int) -> int:
        """The lower edge of the bucket ``slots`` falls in (0 below the first bucket)."""
        out = 0
        for edge in self.capacity_buckets:
            if slots >= edge:
                out = edge
            else:
                break
        return out
