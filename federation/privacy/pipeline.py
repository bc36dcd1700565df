"""The privacy pipeline: one window's bounded counts in, one :class:`ReleasedSummary` out. Pure.

Steps, in order:

1. **Vocabulary.** Task types are folded onto the public vocabulary; every other type counts
   as ``other`` (the set of type names a node runs would leak by itself).
2. **Bounding** (done by the node as it counts, see :class:`WindowInput`): a task counts only in
   the windows ``[c, c + m - 1]`` where ``c`` is the window it was created in (on whichever node
   it is), at most once per cell per window, so one task changes at most ``CELLS_PER_TASK`` = 3
   cells of a release, each by 1: the cells of a window are *submitted* or *handed off in* (how
   it came), at most one of *completed*, *failed* or *handed off out* (how it left; a requeued
   task's second ending in the same window is not counted), the completion-time bin of a
   completion, and the *occupied slots* count if it is leased or ready when the occupancy is
   counted (at the first tick after the window closed) -- which excludes having left unless it
   was requeued. The worst cases are "came, completed, its bin", "came, failed, requeued and
   waiting" and "came and is still here": 3, 3 and 2 cells.
3. **Noise** from OpenDP over all cells at once (:class:`~federation.privacy.mechanism.Mechanism`).
4. **Suppression**: a count or histogram cell whose noisy value is under ``suppress_sd`` noise
   standard deviations is released as 0 (the occupied-slot count is not suppressed: it is the
   load signal, clamped at 0 only).
5. **Post-processing** (no privacy cost): non-negative integers, and consistent totals: the
   completed counts and the histogram are two noisy measures of the same total; both are scaled
   (largest remainder) to their inverse-variance weighted mean, or both zeroed when either is
   entirely under the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from federation.privacy.accountant import Accountant, Decision
from federation.privacy.config import PrivacyConfig
from federation.privacy.schema import COUNT_FIELDS, SCHEMA_VERSION, PrivacyCost, ReleasedSummary

__all__ = ["CELLS_PER_TASK", "WindowInput", "build_release", "cells_of", "fold_types", "scale_to_total"]

CELLS_PER_TASK = 3
_NFIELDS = len(COUNT_FIELDS)


@dataclass(frozen=True, slots=True)
class WindowInput:
    """One window's bounded raw counts: what the pipeline noises. Private: never leaves the node.

    ``counts`` maps each raw task type to (submitted, completed, failed, handed_off_in,
    handed_off_out); ``completion_counts`` is on the configured public bins; ``occupied`` is
    tasks leased or ready at release time that still count (created in the window's horizon);
    ``slots`` the node's healthy worker slots."""

    window: int
    window_s: float
    counts: Mapping[str, Sequence[int]]
    completion_counts: Sequence[int]
    occupied: int
    slots: int


def cells_of(cfg: PrivacyConfig) -> int:
    """The number of noised cells of a release: five counts per public type, the bins, the load."""
    return _NFIELDS * len(cfg.types) + len(cfg.completion_edges_s) + 1 + 1


def fold_types(counts: Mapping[str, Sequence[int]], cfg: PrivacyConfig) -> list[list[int]]:
    """Per public type (vocabulary then ``other``) the five counts, unknown types summed into ``other``."""
    index = {t: i for i, t in enumerate(cfg.vocabulary)}
    other = len(cfg.vocabulary)
    out = [[0] * _NFIELDS for _ in range(other + 1)]
    for ttype, row in counts.items():
        if len(row) != _NFIELDS:
            raise ValueError(f"type {ttype!r}: {len(row)} counts, expected {_NFIELDS}")
        acc = out[index.get(ttype, other)]
        for j, v in enumerate(row):
            acc[j] += v
    return out


def scale_to_total(cells: list[int], total: int) -> list[int]:
    """``cells`` scaled to sum to ``total``, rounded by largest remainder (zeros stay zero)."""
    s = sum(cells)
    if s == total:
        return cells
    if s <= 0 or total <= 0:
        return [0] * len(cells)
    exact = [c * total / s for c in cells]
    out = [math.floor(x) for x in exact]
    short = total - sum(out)
    by_remainder = sorted(range(len(cells)), key=lambda i: (out[i] - exact[i], i))
    for i in by_remainder[:short]:
        out[i] += 1
    return out


def build_release(
    node_id: str,
    inp: WindowInput,
    cfg: PrivacyConfig,
    accountant: Accountant,
    decision: Decision,
    *,
    noise: Callable[[list[int]], list[int]] | None = None,
) -> ReleasedSummary:
    """Fold, noise, suppress and post-process ``inp`` into the release of ``decision``'s window.

    ``noise`` replaces the draw of OpenDP's measurement with another of the same distribution:
    **simulation only** (the simulator's seeded generator, for runs that repeat byte for byte);
    a node never passes it."""
    mech = accountant.mechanism
    rows = fold_types(inp.counts, cfg)
    hist = list(inp.completion_counts)
    nbins = len(cfg.completion_edges_s) + 1
    if len(hist) != nbins:
        raise ValueError(f"{len(hist)} completion counts for {nbins} bins")
    flat = [v for row in rows for v in row]
    flat.extend(hist)
    flat.append(inp.occupied)
    noisy = mech(flat) if noise is None else noise(flat)

    sd = math.sqrt(mech.variance)
    cut = max(1, math.ceil(cfg.suppress_sd * sd))  # non-negative too: anything under 1 is 0

    ntypes = len(rows)
    ncount = ntypes * _NFIELDS
    counts = [v if v >= cut else 0 for v in noisy[:ncount]]
    hist_out = [v if v >= cut else 0 for v in noisy[ncount : ncount + nbins]]
    occupied = max(0, noisy[-1])

    # consistent totals: completed by type and the histogram measure the same tasks
    done_i = COUNT_FIELDS.index("completed")
    completed = counts[done_i::_NFIELDS]
    s_types, s_hist = sum(completed), sum(hist_out)
    # inverse-variance weights: each sum has (number of cells) x variance
    total = 0 if s_types == 0 or s_hist == 0 else round((s_types * nbins + s_hist * ntypes) / (nbins + ntypes))
    completed = scale_to_total(completed, total)
    hist_out = scale_to_total(hist_out, total)
    counts[done_i::_NFIELDS] = completed

    by_field = {f: tuple(counts[j::_NFIELDS]) for j, f in enumerate(COUNT_FIELDS)}
    cost = PrivacyCost(
        mechanism=mech.kind,
        scale=mech.scale,
        variance=mech.variance,
        rho=mech.rho,
        m=cfg.m,
        delta=float(cfg.delta),
        epsilon=decision.epsilon,
        epsilon_budget=float(cfg.epsilon),
        epsilon_left=max(0.0, decision.epsilon_left),
        suppress_below=cut,
    )
    return ReleasedSummary(
        schema=SCHEMA_VERSION,
        node_id=node_id,
        window=inp.window,
        window_s=float(inp.window_s),
        types=cfg.types,
        submitted=by_field["submitted"],
        completed=by_field["completed"],
        failed=by_field["failed"],
        handed_off_in=by_field["handed_off_in"],
        handed_off_out=by_field["handed_off_out"],
        completion_edges_s=cfg.completion_edges_s,
        completion_counts=tuple(hist_out),
        occupied_slots=occupied,
        capacity_bucket=cfg.capacity_bucket(inp.slots),
        cost=cost,
    )
