"""The privacy pipeline: what a node may release about its tasks, and at what cost.

* :mod:`~federation.privacy.config` -- :class:`PrivacyConfig` (budget per task, vocabulary, bins, mechanism).
* :mod:`~federation.privacy.schema` -- :class:`ReleasedSummary`, the fixed release schema (version 1).
* :mod:`~federation.privacy.mechanism` -- OpenDP's mechanisms and conversions (imports OpenDP).
* :mod:`~federation.privacy.accountant` -- the budget over ``m`` consecutive releases.
* :mod:`~federation.privacy.pipeline` -- bounded counts in, a released summary out (pure).
* :mod:`~federation.privacy.status` -- what the node answers: :class:`ReleaseOutcome`, :class:`PrivacyStatus`.

The node's side (counting, the ledger in the store, one release per window) is
:mod:`node.runtime.privacy`; the reasons are in ``docs/notes/privacy.md``.
"""

from federation.privacy.config import PrivacyConfig
from federation.privacy.schema import SCHEMA_VERSION, PrivacyCost, ReleasedSummary, SchemaError
from federation.privacy.status import PrivacyStatus, ReleaseOutcome, ReleaseStatus

__all__ = [
    "SCHEMA_VERSION",
    "PrivacyConfig",
    "PrivacyCost",
    "PrivacyStatus",
    "ReleaseOutcome",
    "ReleaseStatus",
    "ReleasedSummary",
    "SchemaError",
]
