"""A sweep's plots (matplotlib, PNG): privacy-utility, hand-off rate, imbalance, budget over time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from federation.sim.sweep import VIEW_POLICIES, Cell, SweepConfig

__all__ = ["write_plots"]

_STYLE = {
    "none": ("#7f7f7f", "--", "no sharing"),
    "random": ("#bcbd22", ":", "random"),
    "seed": ("#d62728", "-", "seed rule"),
    "adaptive": ("#1f77b4", "-", "adaptive (ours)"),
    "oracle": ("#2ca02c", "--", "oracle (exact, fresh)"),
}


def _x(cfg: SweepConfig) -> tuple[list[float], list[str]]:
    """Positions and labels on the epsilon axis (log scale): "no noise" at the right, past the
    largest epsilon (no noise is the limit of a growing epsilon)."""
    finite = sorted(float(e) for e in cfg.epsilons if e is not None)
    top = max(finite) if finite else 1.0
    xs, labels = [], []
    for e in cfg.epsilons:
        if e is None:
            xs.append(top * 4.0)
            labels.append("no\nnoise")
        else:
            xs.append(float(e))
            labels.append(f"{float(e):g}")
    return xs, labels


def _metric_plot(cfg: SweepConfig, rows: Sequence[dict[str, Any]], metric: str, *, ylabel: str, title: str,
                 path: Path, log_y: bool = False) -> None:  # fmt: skip
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    xs, labels = _x(cfg)
    order = sorted(range(len(xs)), key=lambda k: xs[k])
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for policy in cfg.policies:
        color, ls, name = _STYLE.get(policy, ("black", "-", policy))
        pts = []
        for k in order:
            e = cfg.epsilons[k]
            want = "none" if e is None else e
            vals = [r[metric] for r in rows if r["policy"] == policy and r["epsilon"] == want and r[metric] is not None]
            if vals:
                mean = sum(vals) / len(vals)
                pts.append((xs[k], mean, mean - min(vals), max(vals) - mean))
        if not pts:
            continue
        x, y, lo, hi = zip(*pts, strict=True)
        ax.errorbar(x, y, yerr=[lo, hi], color=color, linestyle=ls, marker="o", ms=4, capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xticks(xs, labels)
    ax.minorticks_off()
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(f"epsilon per task (delta {cfg.base.delta:g}); further right = less noise")
    ax.set_ylabel(ylabel)
    b = cfg.base
    ax.set_title(f"{title}\n{b.nodes} nodes, slots {','.join(map(str, b.slots))}, load {b.load}, spread {b.spread}, "
                 f"{len(cfg.seeds)} seeds (bars: min-max)", fontsize=10)  # fmt: skip
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _budget_plot(cfg: SweepConfig, records: Sequence[dict[str, Any]], path: Path) -> bool:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    policy = next((p for p in ("adaptive", "seed") if p in cfg.policies), None)
    if policy is None:
        return False
    by_key = {r["key"]: r for r in records}
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    drew = False
    for e in cfg.epsilons:
        if e is None:
            continue
        rec = by_key.get(Cell(policy, e, cfg.seeds[0]).key)
        series = (((rec or {}).get("result") or {}).get("sharing") or {}).get("privacy", {}).get("budget") or []
        if series:
            t, spent = zip(*series, strict=True)
            ax.step(t, [s / float(e) for s in spent], where="post", label=f"epsilon {float(e):g}")
            drew = True
    ax.set_ylim(0, 1.1)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("share of the budget spent (worst task, worst node)")
    ax.set_title(
        f"Privacy budget over time ({policy}, seed {cfg.seeds[0]}): a task counts in m = {cfg.base.m} "
        "releases,\nso the worst task reaches the budget after m rounds and stays there",
        fontsize=10,
    )
    ax.grid(True, alpha=0.3)
    if drew:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return drew


def write_plots(
    cfg: SweepConfig, rows: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]], out_dir: Path
) -> list[Path]:
    """The PNG files written into ``out_dir``."""
    out = []
    for metric, ylabel, title, name, log_y in (
        (
            "sojourn_p99_s",
            "p99 sojourn time (s)",
            "Privacy-utility: p99 sojourn against epsilon",
            "privacy_utility",
            True,
        ),
        ("handoff_rate", "tasks handed off / tasks", "Hand-off rate against epsilon", "handoff_rate", False),
        ("imbalance_cv", "load imbalance (sd / mean of node loads)", "Imbalance against epsilon", "imbalance", False),
    ):
        path = out_dir / f"{name}.png"
        _metric_plot(cfg, rows, metric, ylabel=ylabel, title=title, path=path, log_y=log_y)
        out.append(path)
    if any(p in VIEW_POLICIES for p in cfg.policies):
        path = out_dir / "budget.png"
        if _budget_plot(cfg, records, path):
            out.append(path)
    return out
