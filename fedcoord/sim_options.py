"""Options ``fedcoord simulate`` and ``fedcoord privacy sweep`` share: the workload's mix."""

from __future__ import annotations

from typing import Annotated, Any

import typer

__all__ = ["Difficulties", "FailRate", "MtbfS", "MttrS", "Skills", "TypeSkew", "Types", "ints", "workload"]

Types = Annotated[int, typer.Option("--types", help="Task types t0, t1, ... (Zipf weights, see --type-skew).")]
TypeSkew = Annotated[
    float,
    typer.Option("--type-skew", help="Zipf exponent of the type mix: type k arrives in proportion to 1/(k+1)^skew."),
]
Difficulties = Annotated[
    str,
    typer.Option(
        "--difficulties", help="Difficulty (1-10) of each type, cycled; service time scales with it, the load kept."
    ),
]
Skills = Annotated[
    str,
    typer.Option(
        "--skills", help="Skills (1-10) of each node's workers, its slots split over them; a task goes only to a "
        "worker of skill >= its difficulty.",
    ),
]  # fmt: skip
FailRate = Annotated[
    float, typer.Option("--fail-rate", help="Chance an attempt fails (the core retries it, 3 times, after a backoff).")
]

MtbfS = Annotated[
    float,
    typer.Option("--mtbf-s", help="Mean time between failures of a node (0: nodes never fail); it comes back "
                 "rebuilt from its store, and refuses arrivals while down."),
]  # fmt: skip
MttrS = Annotated[float, typer.Option("--mttr-s", help="Mean time a failed node stays down.")]


def ints(text: str, hint: str) -> tuple[int, ...]:
    """Comma-separated ints, or a usage error naming the option."""
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: comma-separated ints, e.g. 4,8,16", param_hint=hint) from None


def workload(
    *, types: int, type_skew: float, difficulties: str, skills: str, fail_rate: float, mtbf_s: float, mttr_s: float
) -> dict[str, Any]:
    """The :class:`~federation.sim.SimConfig` settings of these options."""
    return {
        "mtbf_s": mtbf_s or None,
        "mttr_s": mttr_s,
        "types": types,
        "type_skew": type_skew,
        "difficulties": ints(difficulties, "--difficulties"),
        "skills": ints(skills, "--skills"),
        "fail_rate": fail_rate,
    }
