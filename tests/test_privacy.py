"""The privacy claims, pure: the noise has the variance a release states, the cost is OpenDP's
own composition over the last ``m`` windows, bad settings are refused naming the setting, the
release schema holds nothing but its fields, and the pipeline's post-processing keeps its
promises. The references are built here from ``opendp.prelude`` and the sensitivity claim
(one task changes at most ``CELLS_PER_TASK`` = 3 cells by 1: L2 ``sqrt(3)``, L1 3), not from
``federation.privacy.mechanism``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import opendp.prelude as dp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.privacy.accountant import Accountant, Decision
from federation.privacy.config import DEFAULT_VOCABULARY, OTHER, PrivacyConfig
from federation.privacy.mechanism import Mechanism, calibrate_scale, epsilon_of, rho_for_epsilon
from federation.privacy.pipeline import (
    CELLS_PER_TASK,
    WindowInput,
    build_release,
    cells_of,
    fold_types,
    scale_to_total,
)
from federation.privacy.schema import COUNT_FIELDS, MAX_COUNT, SCHEMA_VERSION, PrivacyCost, ReleasedSummary, SchemaError
from node.errors import ValidationError
from node.store.base import LedgerEntry

dp.enable_features("contrib")

NAN = float("nan")
INF = float("inf")


# ---------------------------------------------------------------------------- references (OpenDP)


def reference_measurement(kind: str, cells: int, scale: float) -> tuple[Any, float | int]:
    """OpenDP's measurement over ``cells`` integer cells and the release's sensitivity ``d_in``."""
    dom = dp.vector_domain(dp.atom_domain(T="i64"), size=cells)
    if kind == "gaussian":
        # L2 sensitivity sqrt(3), taken one float step up (sqrt(3) squared is just under 3)
        d_in = math.nextafter(math.sqrt(CELLS_PER_TASK), math.inf)
        assert d_in * d_in >= CELLS_PER_TASK
        return dp.m.make_gaussian(dom, dp.l2_distance(T=float), scale=scale), d_in
    return dp.c.make_pureDP_to_zCDP(dp.m.make_laplace(dom, dp.l1_distance(T=int), scale=scale)), CELLS_PER_TASK


@functools.lru_cache(maxsize=256)
def reference_epsilon(kind: str, cells: int, scale: float, j: int, delta: float) -> float:
    """epsilon at ``delta`` of ``j`` releases composed, by OpenDP's composition and conversion."""
    if j == 0:
        return 0.0
    meas, d_in = reference_measurement(kind, cells, scale)
    return float(dp.c.make_zCDP_to_approxDP(dp.c.make_composition([meas] * j)).map(d_in).epsilon(delta))


def accountant(cfg: PrivacyConfig) -> Accountant:
    return Accountant(cfg, cells_of(cfg), CELLS_PER_TASK)


WINDOW_US = 10_000_000  # 10 s windows, as the ledger keeps them (Unix microseconds)


def ledger_entry(acc: Accountant, window: int) -> LedgerEntry:
    """The ledger entry a node records for releasing ``window`` (windows of WINDOW_US)."""
    mech = acc.mechanism
    return LedgerEntry(window, mech.rho, 0, mech.kind, mech.scale, window * WINDOW_US, (window + 1) * WINDOW_US)


def decide(acc: Accountant, entries: Sequence[LedgerEntry], window: int) -> Decision:
    """The accountant's decision for releasing ``window`` after ``entries``, as the node asks it."""
    return acc.decide(entries, window, ledger_entry(acc, window).horizon_start_us(acc.cfg.m))


def empty_input(cfg: PrivacyConfig, window: int = 7) -> WindowInput:
    return WindowInput(window, 10.0, {}, [0] * (len(cfg.completion_edges_s) + 1), 0, 0)


def released_windows_in(released: Sequence[int], lo: int, hi: int) -> int:
    return sum(1 for w in released if lo <= w <= hi)


# ---------------------------------------------------------------------------- 1. the noise scale


def discrete_laplace_moments(scale: float) -> tuple[float, float]:
    """(variance, fourth moment) of the discrete Laplace ``P(k) ~ exp(-|k| / scale)``: with
    ``q = e^(-1/scale)``, ``P(k) = (1-q)/(1+q) q^|k|``, ``sum k^2 q^k = q(1+q)/(1-q)^3`` and
    ``sum k^4 q^k = q(1+11q+11q^2+q^3)/(1-q)^5`` over k >= 1."""
    q = math.exp(-1.0 / scale)
    c = 2.0 * (1.0 - q) / (1.0 + q)
    var = c * q * (1.0 + q) / (1.0 - q) ** 3
    m4 = c * q * (1.0 + 11.0 * q + 11.0 * q * q + q**3) / (1.0 - q) ** 5
    return var, m4


@pytest.mark.parametrize("kind", ["gaussian", "laplace"])
def test_noise_has_the_variance_the_release_states_and_mean_zero(kind: str) -> None:
    """Draws through the accountant's own mechanism (the object every release uses), many cells
    per call. With n draws, the sample mean has sd sigma/sqrt(n) and the sample variance a
    relative sd of sqrt((kurtosis - 1)/n): kurtosis 3 for the Gaussian (sqrt(2/n)), and for the
    discrete Laplace its exact mu4/sigma^4 (about 6: sqrt(5/n)). Both checks allow 6 sd: a
    false failure has probability P(|Z| > 6) = 2e-9 each, under 1e-8 for the four checks (n is
    large enough for the normal approximation of both statistics)."""
    cfg = PrivacyConfig(mechanism=kind)
    acc = accountant(cfg)
    mech = acc.mechanism
    cost = build_release("n", empty_input(cfg), cfg, acc, decide(acc, [], 7)).cost
    assert (cost.mechanism, cost.scale, cost.variance) == (kind, mech.scale, mech.variance)
    if kind == "gaussian":
        assert cost.variance == cost.scale**2  # the discrete Gaussian's variance is scale^2 (to 1e-300 here)
        kurtosis = 3.0
    else:
        var, m4 = discrete_laplace_moments(cost.scale)
        assert cost.variance == pytest.approx(var, rel=1e-12)  # the discrete formula, not 2 s^2
        kurtosis = m4 / var**2
        assert 5.5 < kurtosis < 6.5
    base = [1000 + 37 * (i % 11) for i in range(mech.cells)]  # noise is added to the counts, not drawn alone
    noise: list[int] = []
    while len(noise) < 70_000:  # ~1.4 s per mechanism
        noise.extend(x - b for x, b in zip(mech(base), base, strict=True))
    n = len(noise)
    mean = math.fsum(noise) / n
    var_hat = math.fsum((x - mean) ** 2 for x in noise) / (n - 1)
    sd = math.sqrt(cost.variance)
    assert abs(mean) <= 6 * sd / math.sqrt(n), (mean, sd)
    rel_sd = math.sqrt((kurtosis - 1) / n)
    assert abs(var_hat / cost.variance - 1) <= 6 * rel_sd, (var_hat, cost.variance, rel_sd)


# ---------------------------------------------------------------------------- 2. epsilon = OpenDP composition


def tight_scale(kind: str, releases: int) -> float:
    """A scale under which exactly ``releases`` releases fit in the default budget (each one
    costs budget / (releases + 1/2))."""
    cfg = PrivacyConfig(mechanism=kind)
    budget = rho_for_epsilon(cfg.epsilon, cfg.delta)
    return calibrate_scale(kind, cells_of(cfg), CELLS_PER_TASK, budget / (releases + 0.5))


CASES = [
    pytest.param("gaussian", None, id="gaussian-calibrated"),
    pytest.param("gaussian", 25.0, id="gaussian-scale-25"),
    pytest.param("gaussian", "tight2", id="gaussian-2-per-m"),
    pytest.param("laplace", None, id="laplace-calibrated"),
    pytest.param("laplace", 80.0, id="laplace-scale-80"),
    pytest.param("laplace", "tight1", id="laplace-1-per-m"),
]
WINDOWS = [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 14, 15, 16, 17, 18]


@pytest.mark.parametrize(("kind", "scale"), CASES)
def test_epsilon_of_a_release_is_opendp_s_composition_of_the_last_m_windows(kind: str, scale: Any) -> None:
    expected_fit = None
    if isinstance(scale, str):
        expected_fit = int(scale[-1])
        scale = tight_scale(kind, expected_fit)
    cfg = PrivacyConfig(mechanism=kind, scale=scale, m=3)
    cells = cells_of(cfg)
    acc = accountant(cfg)
    s = acc.mechanism.scale
    meas, d_in = reference_measurement(kind, cells, s)
    assert acc.rho == float(meas.map(d_in))  # the measurement's own privacy map, nothing else
    if scale is None:
        assert acc.releases_per_m == cfg.m  # calibrated: one release per window for ever
        assert reference_epsilon(kind, cells, s, cfg.m, cfg.delta) <= cfg.epsilon
        assert reference_epsilon(kind, cells, s, cfg.m, cfg.delta) == pytest.approx(cfg.epsilon, rel=1e-6)
    entries: list[LedgerEntry] = []
    released: list[int] = []
    for w in WINDOWS:
        j = 1 + released_windows_in(released, w - cfg.m + 1, w - 1)
        ref = reference_epsilon(kind, cells, s, j, cfg.delta)
        d = decide(acc, entries, w)
        assert d.epsilon == pytest.approx(ref, rel=1e-9), (w, j)
        assert d.allowed == (ref <= cfg.epsilon), (w, j, ref)
        assert d.epsilon_left == pytest.approx(cfg.epsilon - ref, abs=1e-9)
        if not d.allowed:
            continue
        cost = build_release("n", empty_input(cfg, w), cfg, acc, d).cost
        assert cost.epsilon == pytest.approx(ref, rel=1e-9)
        assert cost.rho == acc.rho and cost.epsilon_budget == cfg.epsilon
        assert cost.epsilon_left == pytest.approx(max(0.0, cfg.epsilon - ref), abs=1e-9)
        entries.append(ledger_entry(acc, w))
        released.append(w)
    # as many releases fit in m windows as OpenDP's composition allows, and no more were made
    fit = max(j for j in range(1, cfg.m + 1) if reference_epsilon(kind, cells, s, j, cfg.delta) <= cfg.epsilon)
    assert acc.releases_per_m == fit == (cfg.m if expected_fit is None else expected_fit)
    for lo in range(WINDOWS[-1]):
        assert released_windows_in(released, lo, lo + cfg.m - 1) <= fit
    assert (len(released) < len(WINDOWS)) == (fit < cfg.m)  # refused only when the budget binds


def test_epsilon_conversion_and_budget_are_opendp_s() -> None:
    for delta in (1e-6, 1e-9):
        for rho in (1e-4, 0.0081, 0.5):
            g = dp.m.make_gaussian(dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float), scale=1.0)
            d_in = math.sqrt(2 * rho)  # unit Gaussian: rho = d_in^2 / 2
            ref = dp.c.make_zCDP_to_approxDP(g).map(d_in).epsilon(delta)
            assert epsilon_of(rho, delta) == pytest.approx(ref, rel=1e-9)
    for eps, delta in ((1.0, 1e-6), (0.5, 1e-9), (4.0, 1e-6)):
        budget = rho_for_epsilon(eps, delta)
        assert epsilon_of(budget, delta) <= eps  # within budget...
        assert epsilon_of(budget * (1 + 1e-6), delta) > eps  # ...and the largest rho that is
    assert epsilon_of(0.0, 1e-6) == 0.0


# ---------------------------------------------------------------------------- 7. settings refused


BAD_SETTINGS = [
    ({"epsilon": 0}, "privacy.epsilon"),
    ({"epsilon": -1.0}, "privacy.epsilon"),
    ({"epsilon": NAN}, "privacy.epsilon"),
    ({"epsilon": INF}, "privacy.epsilon"),
    ({"epsilon": "1.0"}, "privacy.epsilon"),
    ({"epsilon": True}, "privacy.epsilon"),
    ({"delta": 0}, "privacy.delta"),
    ({"delta": 1}, "privacy.delta"),
    ({"delta": 1.0}, "privacy.delta"),
    ({"delta": -1e-6}, "privacy.delta"),
    ({"delta": NAN}, "privacy.delta"),
    ({"vocabulary": ()}, "privacy.vocabulary"),
    ({"vocabulary": (OTHER,)}, "privacy.vocabulary"),
    ({"vocabulary": ("coding", OTHER)}, "privacy.vocabulary"),
    ({"vocabulary": ("coding", "analysis", "coding")}, "privacy.vocabulary"),
    ({"vocabulary": ("coding", "")}, "privacy.vocabulary"),
    ({"vocabulary": ["coding"]}, "privacy.vocabulary"),
    ({"completion_edges_s": ()}, "privacy.completion_edges_s"),
    ({"completion_edges_s": (2.0, 1.0)}, "privacy.completion_edges_s"),
    ({"completion_edges_s": (1.0, 1.0)}, "privacy.completion_edges_s"),
    ({"completion_edges_s": (0.0, 1.0)}, "privacy.completion_edges_s"),
    ({"completion_edges_s": (-1.0, 1.0)}, "privacy.completion_edges_s"),
    ({"completion_edges_s": (1.0, NAN)}, "privacy.completion_edges_s"),
    ({"m": 0}, "privacy.m"),
    ({"m": -1}, "privacy.m"),
    ({"m": 1.5}, "privacy.m"),
    ({"m": True}, "privacy.m"),
    ({"m": "3"}, "privacy.m"),
    ({"mechanism": "cauchy"}, "privacy.mechanism"),
    ({"scale": 0.0}, "privacy.scale"),
    ({"scale": -2.0}, "privacy.scale"),
    ({"scale": NAN}, "privacy.scale"),
    ({"suppress_sd": -1.0}, "privacy.suppress_sd"),
    ({"capacity_buckets": (4, 2)}, "privacy.capacity_buckets"),
]


@pytest.mark.parametrize(("kwargs", "field"), BAD_SETTINGS, ids=[f"{k}" for k, _ in BAD_SETTINGS])
def test_bad_privacy_settings_are_refused_naming_the_setting(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as e:
        PrivacyConfig(**kwargs)
    assert e.value.field == field


@pytest.mark.parametrize("kind", ["gaussian", "laplace"])
def test_a_scale_whose_single_release_is_over_budget_is_refused(kind: str) -> None:
    cfg0 = PrivacyConfig(mechanism=kind)
    budget = rho_for_epsilon(cfg0.epsilon, cfg0.delta)
    least = calibrate_scale(kind, cells_of(cfg0), CELLS_PER_TASK, budget)  # one release = the whole budget
    accountant(dataclasses.replace(cfg0, scale=least * 1.001))  # just affordable: accepted
    for scale in (least * 0.99, 0.5, 0.01, 1e-3, 1e-6):  # the smallest overflow OpenDP's conversion
        with pytest.raises(ValidationError) as e:
            accountant(dataclasses.replace(cfg0, scale=scale))
        assert e.value.field == "privacy.scale"
        assert "budget" in str(e.value)


def test_good_settings_are_accepted() -> None:
    cfg = PrivacyConfig(epsilon=2, delta=1e-9, m=1, vocabulary=("a",), completion_edges_s=(1, 2.5))
    assert cfg.types == ("a", OTHER)
    assert accountant(cfg).releases_per_m == 1


# ---------------------------------------------------------------------------- 5. the schema


def a_summary(**changes: Any) -> ReleasedSummary:
    cfg = PrivacyConfig()
    acc = accountant(cfg)
    rows = {"coding": (900, 400, 30, 200, 100), "zebra_secret": (500, 0, 0, 0, 0)}
    hist = [0, 0, 0, 0, 0, 300, 100] + [0] * 10
    s = build_release("n1", WindowInput(7, 10.0, rows, hist, 250, 33), cfg, acc, decide(acc, [], 7))
    return dataclasses.replace(s, **changes) if changes else s


def test_a_summary_round_trips_through_its_record_and_bytes() -> None:
    s = a_summary()
    rec = s.to_record()
    assert list(rec) == list(ReleasedSummary.FIELDS) and list(rec["cost"]) == list(PrivacyCost.FIELDS)
    assert ReleasedSummary.from_record(rec) == s
    assert ReleasedSummary.from_bytes(s.to_bytes()) == s
    assert s.schema == SCHEMA_VERSION and s.types == (*DEFAULT_VOCABULARY, OTHER)


def test_a_summary_is_built_only_from_schema_fields() -> None:
    s = a_summary()
    rec = s.to_record()
    with pytest.raises(SchemaError, match="raw_counts"):
        ReleasedSummary.from_record({**rec, "raw_counts": {"coding": 900}})
    with pytest.raises(SchemaError, match="task_ids"):
        ReleasedSummary.from_record({**rec, "cost": {**rec["cost"], "task_ids": ["t1"]}})
    for key in ("occupied_slots", "cost"):
        with pytest.raises(SchemaError, match="missing"):
            ReleasedSummary.from_record({k: v for k, v in rec.items() if k != key})
    for not_a_record in ([], "summary", None, 7):
        with pytest.raises(SchemaError):
            ReleasedSummary.from_record(not_a_record)
    for raw in (b"", b"{", b"[1,2]", b'{"schema": 1}'):
        with pytest.raises(SchemaError):
            ReleasedSummary.from_bytes(raw)
    with pytest.raises(TypeError):
        ReleasedSummary(**{k: getattr(s, k) for k in ReleasedSummary.FIELDS}, raw_counts={})  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        PrivacyCost(**s.cost.to_record(), note="x")  # type: ignore[call-arg]


def test_a_summary_cannot_be_changed_or_extended() -> None:
    s = a_summary()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.submitted = (0,) * len(s.types)  # type: ignore[misc]
    with pytest.raises((AttributeError, TypeError)):  # frozen and slotted: no new attribute either
        s.raw_counts = {"coding": 900}  # type: ignore[attr-defined]
    assert not hasattr(s, "raw_counts")
    with pytest.raises(AttributeError):
        s.cost.epsilon = 0.0  # type: ignore[misc]
    assert not hasattr(s, "__dict__") and not hasattr(s.cost, "__dict__")
    assert isinstance(s.submitted, tuple)  # lists given are kept as tuples: no mutable field


def bad_summaries() -> list[tuple[str, Callable[[ReleasedSummary], dict[str, Any]]]]:
    n = len(PrivacyConfig().types)
    return [
        ("submitted: 5 counts", lambda s: {"submitted": s.submitted[:-1]}),
        ("failed: 7 counts", lambda s: {"failed": (*s.failed, 0)}),
        ("completion_counts short", lambda s: {"completion_counts": s.completion_counts[:-1]}),
        ("negative count", lambda s: {"handed_off_in": (-1,) + (0,) * (n - 1)}),
        ("bool count", lambda s: {"completed": (True,) + (0,) * (n - 1)}),
        ("float count", lambda s: {"submitted": (1.0,) + (0,) * (n - 1)}),
        ("count too large", lambda s: {"submitted": (MAX_COUNT + 1,) + (0,) * (n - 1)}),
        ("counts not a list", lambda s: {"submitted": {"coding": 1}}),
        ("bool occupied", lambda s: {"occupied_slots": True}),
        ("negative occupied", lambda s: {"occupied_slots": -1}),
        ("bool window", lambda s: {"window": True}),
        ("negative window", lambda s: {"window": -1}),
        ("bool schema", lambda s: {"schema": True}),
        ("schema 2", lambda s: {"schema": 2}),
        ("nan window_s", lambda s: {"window_s": NAN}),
        ("inf window_s", lambda s: {"window_s": INF}),
        ("zero window_s", lambda s: {"window_s": 0.0}),
        ("nan edge", lambda s: {"completion_edges_s": (*s.completion_edges_s[:-1], NAN)}),
        ("edges not increasing", lambda s: {"completion_edges_s": tuple(reversed(s.completion_edges_s))}),
        ("types without other", lambda s: {"types": (*s.types[:-1], "misc")}),
        ("other not last", lambda s: {"types": (OTHER, *s.types[:-1])}),
        ("duplicate type", lambda s: {"types": (s.types[0], *s.types[:-2], OTHER)}),
        ("one type", lambda s: {"types": (OTHER,)}),
        ("empty type name", lambda s: {"types": ("", *s.types[1:])}),
        ("type name not printable", lambda s: {"types": ("a\nb", *s.types[1:])}),
        ("empty node id", lambda s: {"node_id": ""}),
        ("cost as a dict", lambda s: {"cost": s.cost.to_record()}),
    ]


@pytest.mark.parametrize(("what", "change"), bad_summaries(), ids=[w for w, _ in bad_summaries()])
def test_a_summary_off_the_schema_is_refused(what: str, change: Callable[[ReleasedSummary], dict[str, Any]]) -> None:
    s = a_summary()
    with pytest.raises(SchemaError):
        dataclasses.replace(s, **change(s))
    rec = {**s.to_record(), **change(s)}  # the same through the wire form
    if isinstance(rec["cost"], PrivacyCost):
        rec["cost"] = rec["cost"].to_record()
    if what != "cost as a dict":
        with pytest.raises(SchemaError):
            ReleasedSummary.from_record({k: list(v) if isinstance(v, tuple) else v for k, v in rec.items()})


@pytest.mark.parametrize(
    "change",
    [
        {"mechanism": "cauchy"},
        {"scale": NAN},
        {"scale": 0.0},
        {"variance": INF},
        {"rho": -1.0},
        {"m": 0},
        {"m": True},
        {"delta": 1.5},
        {"epsilon": NAN},
        {"epsilon_left": -0.1},
        {"suppress_below": -1},
        {"suppress_below": 1.5},
    ],
    ids=str,
)
def test_a_cost_off_the_schema_is_refused(change: dict[str, Any]) -> None:
    s = a_summary()
    with pytest.raises(SchemaError):
        dataclasses.replace(s.cost, **change)
    with pytest.raises(SchemaError):
        ReleasedSummary.from_record({**s.to_record(), "cost": {**s.cost.to_record(), **change}})


# ---------------------------------------------------------------------------- 8. the pipeline


def test_unknown_types_fold_into_other() -> None:
    cfg = PrivacyConfig(vocabulary=("coding", "analysis"))
    rows = fold_types(
        {
            "coding": (1, 2, 3, 4, 5),
            "zebra_secret_xq": (10, 0, 1, 0, 0),
            "yak": (100, 0, 0, 2, 0),
            OTHER: (1000, 0, 0, 0, 7),  # a task type literally named "other" is other too
        },
        cfg,
    )
    assert rows == [[1, 2, 3, 4, 5], [0, 0, 0, 0, 0], [1110, 0, 1, 2, 7]]
    with pytest.raises(ValueError, match="5"):
        fold_types({"coding": (1, 2, 3)}, cfg)


class RecordingMechanism:
    """The accountant's real OpenDP mechanism, keeping what it returned (the noisy cells before
    suppression and post-processing, which never leave the pipeline otherwise)."""

    def __init__(self, mech: Mechanism):
        self.mech = mech
        self.noisy: list[list[int]] = []

    def __call__(self, cells: Sequence[int]) -> list[int]:
        out = self.mech(cells)
        self.noisy.append(out)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.mech, name)


PIPE_CFG = PrivacyConfig(vocabulary=("coding", "analysis", "reasoning"), completion_edges_s=(0.1, 1.0, 10.0))
PIPE_ACC = accountant(PIPE_CFG)
PIPE_NBINS = len(PIPE_CFG.completion_edges_s) + 1
raw_type = st.sampled_from(["coding", "analysis", "reasoning", "zebra_secret_xq", "yak", OTHER])
small = st.integers(0, 5) | st.integers(0, 60) | st.integers(0, 3000)


@settings(max_examples=150, deadline=None)
@given(
    counts=st.dictionaries(raw_type, st.tuples(small, small, small, small, small), max_size=6),
    hist=st.lists(small, min_size=PIPE_NBINS, max_size=PIPE_NBINS),
    occupied=small,
    slots=st.integers(0, 5000),
)
def test_a_release_is_suppressed_non_negative_and_consistent(
    counts: dict[str, tuple[int, ...]], hist: list[int], occupied: int, slots: int
) -> None:
    cfg = PIPE_CFG
    acc = PIPE_ACC  # one accountant for all examples (calibrating costs ~50 ms)
    spy = RecordingMechanism(acc.mechanism)
    d = decide(acc, [], 3)
    real = acc.mechanism
    acc.mechanism = spy  # type: ignore[assignment]
    try:
        s = build_release("n1", WindowInput(3, 10.0, counts, hist, occupied, slots), cfg, acc, d)
    finally:
        acc.mechanism = real
    (noisy,) = spy.noisy
    assert s.types == cfg.types
    nf = len(COUNT_FIELDS)
    cut = s.cost.suppress_below
    assert cut == max(1, math.ceil(cfg.suppress_sd * math.sqrt(real.variance)))
    # the noise went over exactly the folded cells, the histogram and the occupancy
    assert len(noisy) == cells_of(cfg) == nf * len(cfg.types) + PIPE_NBINS + 1
    # everything released is a non-negative int
    released = [getattr(s, f) for f in COUNT_FIELDS] + [s.completion_counts]
    for cells in released:
        assert all(type(v) is int and v >= 0 for v in cells)
    assert type(s.occupied_slots) is int and s.occupied_slots == max(0, noisy[-1])  # clamped, not suppressed
    assert s.capacity_bucket == cfg.capacity_bucket(slots)
    assert s.capacity_bucket in (0, *cfg.capacity_buckets) and s.capacity_bucket <= max(slots, 0)
    # counts other than completed: the noisy value if at least the cut, else 0
    for j, f in enumerate(COUNT_FIELDS):
        noisy_f = noisy[j : nf * len(cfg.types) : nf]
        out = getattr(s, f)
        if f == "completed":
            continue
        assert list(out) == [v if v >= cut else 0 for v in noisy_f], f
    # completed and histogram: suppressed first (a noisy value under the cut is released as 0),
    # then both scaled to one total (largest remainder): equal sums, zeros kept
    done = [v if v >= cut else 0 for v in noisy[1 : nf * len(cfg.types) : nf]]
    bins = [v if v >= cut else 0 for v in noisy[nf * len(cfg.types) : -1]]
    assert sum(s.completed) == sum(s.completion_counts)
    total = sum(s.completed)
    for before, after in ((done, s.completed), (bins, s.completion_counts)):
        assert all(a == 0 for b, a in zip(before, after, strict=True) if b == 0)
        if total:
            assert min(sum(done), sum(bins)) <= total <= max(sum(done), sum(bins))
            assert all(abs(a - b * total / sum(before)) < 1 for b, a in zip(before, after, strict=True))
    if not sum(done) or not sum(bins):
        assert total == 0  # one measure entirely suppressed: both are released as 0
    cost = s.cost
    assert (cost.scale, cost.variance, cost.rho, cost.m) == (real.scale, real.variance, real.rho, cfg.m)


@given(cells=st.lists(st.integers(0, 10**6) | st.integers(0, 3), max_size=30), total=st.integers(0, 10**7))
def test_scale_to_total_keeps_zeros_and_hits_the_total(cells: list[int], total: int) -> None:
    out = scale_to_total(list(cells), total)
    assert len(out) == len(cells) and all(type(v) is int and v >= 0 for v in out)
    assert all(o == 0 for c, o in zip(cells, out, strict=True) if c == 0)
    s = sum(cells)
    if s == 0 or total == 0:
        assert out == [0] * len(cells)
        return
    assert sum(out) == total
    assert all(abs(o - c * total / s) < 1 for c, o in zip(cells, out, strict=True))  # each within rounding
    if s == total:
        assert out == cells


def test_decision_type_is_what_the_pipeline_reports() -> None:
    # the cost's epsilon is the decision's, whatever the decision says (the pipeline adds nothing)
    cfg = PrivacyConfig()
    acc = accountant(cfg)
    d = Decision(window=7, allowed=True, rho_total=acc.rho, epsilon=0.25, epsilon_left=0.75)
    cost = build_release("n", empty_input(cfg), cfg, acc, d).cost
    assert (cost.epsilon, cost.epsilon_left) == (0.25, 0.75)


def test_a_cost_whose_numbers_disagree_is_refused() -> None:
    """The aggregation trusts a release's variance for every sd it reports: the cost's numbers
    must agree with each other (variance with mechanism and scale, epsilon within the budget,
    what is left with both, delta under 1)."""
    good = {
        "mechanism": "gaussian", "scale": 3.0, "variance": 9.0, "rho": 0.1, "m": 3, "delta": 1e-6, "epsilon": 0.4,
        "epsilon_budget": 1.0, "epsilon_left": 0.6, "suppress_below": 3,
    }  # fmt: skip
    PrivacyCost.from_record(good)
    q = math.exp(-1 / 3.0)
    PrivacyCost.from_record({**good, "mechanism": "laplace", "variance": 2 * q / (1 - q) ** 2})
    for bad, says in (
        ({"variance": 1e-6}, "variance"),
        ({"mechanism": "laplace"}, "variance"),
        ({"epsilon": 1.5, "epsilon_left": 0.0}, "over the budget"),
        ({"epsilon_left": 0.9}, "epsilon_left"),
        ({"delta": 1.0}, "delta"),
    ):
        with pytest.raises(SchemaError, match=says):
            PrivacyCost.from_record({**good, **bad})
