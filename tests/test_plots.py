"""The plots: every file is written (PNG and SVG), colours are fixed per estimator across sweeps, and no
text in any figure overlaps another text, leaves the figure or runs into a neighbouring panel.

Sweeps: a tiny real one (run_cell + write_cell + merge, in-process), its one-problem slice, a synthetic
table with the default sweep's shape (10 problem configs, 20 estimators, temperatures, 711 cells), and a
synthetic sweep whose values span less than a decade (ticks must still be readable).
"""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench import plots
from bench.output import COLUMN_TYPES, merge, run_metadata, typed, write_cell
from bench.runner import run_cell
from tests.conftest import make

STEMS = {"scorecard", "variance_vs_budget", "variance_vs_samples", "bias_vs_variance", "temperature"}
METADATA = {
    "problem_columns": ["cost"],
    "estimator_columns": ["temperature"],
    "alpha": 1e-3,
    "reference": "reinforce",
}


# --- sweeps ---------------------------------------------------------------------------------------
def real_sweep(out: Path) -> tuple[pd.DataFrame, dict]:
    """A tiny real sweep: two problems, six estimators, two temperatures, two n_samples."""
    problems = [make("problem", "bernoulli"), make("problem", "categorical", cost="quadratic")]
    estimators = [make("estimator", name) for name in ("reinforce", "rloo", "arm", "exact")]
    estimators += [
        make("estimator", name, temperature=tau)
        for name in ("gumbel_softmax", "st_gumbel_softmax")
        for tau in (0.5, 1.0)
    ]
    metadata = run_metadata(None)
    for problem, estimator, n_samples in itertools.product(problems, estimators, (2, 4)):
        result = run_cell(problem, estimator, n_samples=n_samples, n_estimates=400, seed=0)
        configs = {"problem": problem.config(), "estimator": estimator.config()}
        write_cell(out, result.row, result.dims, configs, metadata)
    table, _dims = merge(out, metadata)
    from bench.output import read_metadata

    return table, read_metadata(out / "cells.parquet")


# The default sweep's shape: problem config → the estimators that apply to it.
BINARY = [
    "arm",
    "disarm",
    "double_cv",
    "exact",
    "gapped_st",
    "gumbel_softmax",
    "indecater",
    "oracle_baseline",
    "rao_blackwell_st",
    "rebar",
    "reinforce",
    "reinmax",
    "relax",
    "rloo",
    "st_gumbel_softmax",
]
CATEGORICAL = [e for e in BINARY if e not in ("arm", "disarm")] + ["sum_and_sample", "unordered_set"]
SHAPE = {
    ("bernoulli", None): BINARY,
    ("cartpole", None): ["exact", "reinforce", "reinforce_rtg", "rloo"],
    ("categorical", "linear"): CATEGORICAL,
    ("categorical", "quadratic"): CATEGORICAL,
    ("gaussian", "linear"): ["exact", "mvd", "pathwise", "reinforce", "rloo"],
    ("gaussian", "quadratic"): ["exact", "mvd", "pathwise", "reinforce", "rloo"],
    ("multicategorical", "coupled"): [e for e in CATEGORICAL if e not in ("sum_and_sample", "unordered_set")],
    ("vae_bernoulli", None): BINARY,
    ("vae_categorical", None): CATEGORICAL[:-2],
    ("vae_gaussian", None): ["exact", "pathwise", "reinforce", "rloo"],
}
SWEPT_TAU = {"gumbel_softmax", "st_gumbel_softmax", "rao_blackwell_st", "gapped_st", "rebar"}
FIXED_TAU = {"reinmax": 1.0, "relax": 0.5}
BIASED = {"gumbel_softmax", "st_gumbel_softmax", "rao_blackwell_st", "gapped_st", "reinmax"}
EVALS_PER_SAMPLE = {"arm": 2, "disarm": 2, "rebar": 3, "relax": 3, "indecater": 6, "exact": 0}


def synthetic_sweep(
    shape: dict,
    n_samples: tuple[int, ...] = (1, 4, 16),
    taus: tuple[float, ...] = (0.1, 0.5, 1.0),
    spread: float = 4.0,
    seed: int = 0,
    target_rows: int = 711,
) -> pd.DataFrame:
    """A cells table with the columns and types of a real one and plausible values: work variances
    spread over ``spread`` decades per problem, zero-variance exact cells, a rounding-level indecater,
    biased relaxed estimators, one heavy-tailed cell and one conformance failure; skipped rows pad it
    to ``target_rows``."""
    rng = np.random.default_rng(seed)
    rows = []
    for (problem, cost), names in shape.items():
        scale = 10 ** rng.uniform(-2, 4)
        for name in names:
            tau_values = (
                taus
                if (name in SWEPT_TAU and not problem.startswith("vae"))
                else ((FIXED_TAU.get(name, 0.5),) if name in SWEPT_TAU | set(FIXED_TAU) else (None,))
            )
            for tau, n in itertools.product(tau_values, n_samples):
                work = scale * 10 ** rng.uniform(-spread / 2, spread / 2)
                cost_evals = EVALS_PER_SAMPLE.get(name, 1) * n
                variance = 0.0 if name == "exact" else work / max(cost_evals, 1)
                if name == "indecater" and problem == "bernoulli":
                    variance = 1e-16
                resolution = 4.9 * math.sqrt(variance / 20000) + 5e-6
                biased = name in BIASED
                bias = (
                    10 ** rng.uniform(-3, -1) * math.sqrt(scale)
                    if biased
                    else abs(rng.normal()) * resolution / 5
                )
                rows.append(
                    {
                        "cell": f"{problem}-{cost}-{name}-{tau}-{n}",
                        "problem": problem,
                        "estimator": name,
                        "status": "ok",
                        "unbiased": not biased,
                        "conformance": "n/a" if biased else "pass",
                        "n_samples": n,
                        "n_estimates": 20000,
                        "seed": 0,
                        "dtype": "float32",
                        "n_params": 3,
                        "cost_evals": cost_evals,
                        "variance": variance,
                        "variance_ci_low": variance / 1.04,
                        "variance_ci_high": variance * 1.04,
                        "work_variance": variance * cost_evals,
                        "work_variance_ci_low": variance * cost_evals / 1.04,
                        "work_variance_ci_high": variance * cost_evals * 1.04,
                        "bias_norm": 0.0 if name == "exact" else bias,
                        "bias_resolution": resolution,
                        "exact_norm": 0.05 * math.sqrt(scale),
                        "clt_ok": True,
                        "bias_pvalue": 0.5,
                        "temperature": tau,
                        "cost": cost,
                    }
                )
    table = pd.DataFrame(rows)
    unbiased_rows = table.index[table["unbiased"] & (table["estimator"] != "exact")]
    if len(unbiased_rows) > 5:
        table.loc[unbiased_rows[5], ["clt_ok", "conformance"]] = [False, "unreliable"]
        table.loc[unbiased_rows[3], "conformance"] = "fail"
    skipped = [
        {
            "cell": f"skipped-{i}",
            "problem": "bernoulli",
            "estimator": "pathwise",
            "status": "skipped",
            "reason": "needs has_rsample",
            "n_samples": 1,
        }
        for i in range(max(target_rows - len(table), 0))
    ]
    table = pd.concat([table, pd.DataFrame(skipped)], ignore_index=True)
    configs = typed(table[["temperature", "cost"]], {"temperature": "float64", "cost": "string"})
    return pd.concat([typed(table, COLUMN_TYPES)[list(COLUMN_TYPES)], configs], axis=1)


def narrow_sweep() -> pd.DataFrame:
    """One problem whose variances span 1.4e-3..1.6e-3 and n_samples 2..3: axes narrower than a decade."""
    shape = {("bernoulli", None): ["reinforce", "rloo", "gumbel_softmax", "st_gumbel_softmax"]}
    table = synthetic_sweep(shape, n_samples=(2, 3), taus=(0.5, 0.6), spread=0.0, target_rows=0)
    ok = table["status"] == "ok"
    rng = np.random.default_rng(1)
    variance = 1.5e-3 * (1 + 0.06 * rng.uniform(-1, 1, ok.sum()))
    for column, factor in (("variance", 1), ("variance_ci_low", 1 / 1.01), ("variance_ci_high", 1.01)):
        table.loc[ok, column] = variance * factor
        table.loc[ok, column.replace("variance", "work_variance")] = variance * factor * 2.5
    table.loc[ok, "bias_norm"] = 2e-3 * (1 + 0.1 * rng.uniform(-1, 1, ok.sum()))
    table.loc[ok, "bias_resolution"] = 1.2e-3
    return table


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, dict, Path]:
    out = tmp_path_factory.mktemp("sweep")
    table, metadata = real_sweep(out)
    return table, metadata, out


@pytest.fixture(scope="module")
def default_shape() -> pd.DataFrame:
    return synthetic_sweep(SHAPE)


# --- text extents ---------------------------------------------------------------------------------
def drawn_texts(figure: matplotlib.figure.Figure) -> list[tuple[matplotlib.text.Text, object]]:
    """Every visible, non-empty text the figure draws, with the axes it belongs to (None for the
    figure's own): tick labels of the ticks actually drawn, titles, axis labels, legends, texts."""
    figure.canvas.draw()
    tick_labels, drawn = set(), []
    for ax in figure.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
                tick_labels.update({id(tick.label1), id(tick.label2)})
            low, high = sorted(axis.get_view_interval())
            for tick in axis._update_ticks():  # the ticks matplotlib draws (within the view)
                if low - 1e-12 * abs(low) <= tick.get_loc() <= high + 1e-12 * abs(high):
                    drawn += [(label, ax) for label in (tick.label1, tick.label2) if label.get_visible()]
    for text in figure.findobj(matplotlib.text.Text):
        if id(text) not in tick_labels and text.get_visible():
            drawn.append((text, text.axes))
    return [(text, ax) for text, ax in drawn if text.get_text().strip()]


def overlaps(figure: matplotlib.figure.Figure) -> list[str]:
    """Problems with the figure's texts: pairs that overlap, texts outside the figure, and texts that
    run into an axes other than their own."""
    renderer = figure.canvas.get_renderer()
    texts = drawn_texts(figure)
    boxes = np.array([text.get_window_extent(renderer).extents for text, _ in texts])  # (n, 4)
    shrunk = boxes + np.array([0.5, 0.5, -0.5, -0.5])  # touching edges are not an overlap
    problems = []
    x0, y0, x1, y1 = (shrunk[:, i] for i in range(4))
    hit = (
        (x0[:, None] < x1[None, :])
        & (x0[None, :] < x1[:, None])
        & (y0[:, None] < y1[None, :])
        & (y0[None, :] < y1[:, None])
    )
    for i, j in zip(*np.nonzero(np.triu(hit, k=1)), strict=True):
        problems.append(f"{texts[i][0].get_text()!r} overlaps {texts[j][0].get_text()!r}")
    width, height = figure.bbox.width, figure.bbox.height
    for (text, _), (a, b, c, d) in zip(texts, boxes, strict=True):
        if a < -1 or b < -1 or c > width + 1 or d > height + 1:
            problems.append(f"{text.get_text()!r} leaves the figure")
    for ax in figure.axes:
        p0, q0, p1, q1 = ax.get_window_extent(renderer).extents + np.array([0.5, 0.5, -0.5, -0.5])
        for (text, owner), (a, b, c, d) in zip(texts, shrunk, strict=True):
            if owner is not ax and a < p1 and p0 < c and b < q1 and q0 < d:
                problems.append(
                    f"{text.get_text()!r} runs into the panel titled {ax.get_title(loc='left')!r}"
                )
    return problems


def thin_axes(figure: matplotlib.figure.Figure) -> list[str]:
    """Log axes at least an inch long that show fewer than two tick labels."""
    figure.canvas.draw()
    problems = []
    for ax in figure.axes:
        for axis, length in ((ax.xaxis, ax.bbox.width), (ax.yaxis, ax.bbox.height)):
            if axis.get_scale() != "log" or length < figure.dpi:
                continue
            low, high = sorted(axis.get_view_interval())
            shown = [t for t in axis._update_ticks() if low <= t.get_loc() <= high and t.label1.get_text()]
            if len(shown) < 2:
                problems.append(
                    f"{ax.get_title(loc='left')!r} {axis.axis_name} axis: {len(shown)} tick labels"
                )
    return problems


def check_figures(figures: dict[str, matplotlib.figure.Figure]) -> None:
    with matplotlib.rc_context(plots.apply_theme()):
        for stem, figure in figures.items():
            problems = overlaps(figure) + thin_axes(figure)
            assert not problems, f"{stem}: " + "; ".join(problems[:10])


# --- tests ----------------------------------------------------------------------------------------
def test_every_plot_is_written_as_png_and_svg(
    real: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table, metadata, out = real
    written = plots.draw_all(table, out / "plots")  # metadata read from out/cells.parquet, as the sweep does
    assert {path.name for path in written} == {
        f"{stem}.{suffix}" for stem in STEMS for suffix in ("png", "svg")
    }
    for path in written:
        assert path.stat().st_size > 10_000, path
    for path in (p for p in written if p.suffix == ".png"):
        with Image.open(path) as image:
            width, height = image.size
        assert 400 < width < 3000 and 300 < height < 5000, (path.name, image.size)  # readable, not absurd
    assert "<svg" in (out / "plots" / "scorecard.svg").read_text()[:500]
    # Explicit metadata, a single problem, one process: the same files.
    single = table[table["problem"] == "bernoulli"]
    monkeypatch.setattr(plots, "can_fork", lambda: False)
    again = plots.draw_all(single, tmp_path / "plots", metadata)
    assert [path.name for path in again] == [path.name for path in written]
    narrow = plots.draw_all(narrow_sweep(), tmp_path / "narrow", METADATA)
    assert {path.name for path in narrow} == {path.name for path in written}


def test_what_a_failed_child_should_have_drawn_is_drawn_here(
    real: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not plots.can_fork():
        pytest.skip("this platform draws in one process")
    table, metadata, _ = real
    parent, build = os.getpid(), plots.build

    def failing_in_the_child(stem: str, data: pd.DataFrame, reference: str | None) -> object:
        if os.getpid() != parent:
            raise RuntimeError("the child fails")
        return build(stem, data, reference)

    monkeypatch.setattr(plots, "build", failing_in_the_child)
    written = plots.draw_all(table, tmp_path / "plots", metadata)
    assert {path.stem for path in written} == STEMS
    assert all(path.exists() for path in written)


def test_nothing_to_plot_writes_nothing(tmp_path: Path) -> None:
    table = synthetic_sweep({("bernoulli", None): ["reinforce"]}, target_rows=0)
    table["status"] = "skipped"
    assert plots.draw_all(table, tmp_path / "plots", METADATA) == []
    assert not (tmp_path / "plots").exists() or not list((tmp_path / "plots").iterdir())


def test_colours_are_fixed_per_estimator_across_sweeps(real: tuple, default_shape: pd.DataFrame) -> None:
    import estimators

    colours = plots.registry_colours()
    assert set(estimators.REGISTRY) <= set(colours)
    registered = [colours[name] for name in estimators.REGISTRY]
    assert len(set(registered)) == len(registered), "two registered estimators share a colour"
    table, metadata, _ = real
    small = plots.prepare(table, metadata)
    large = plots.prepare(default_shape, METADATA)
    for frame in (small, large):
        assert (frame["colour"] == frame["estimator"].map(plots.estimator_colour)).all()
    shared = set(small["estimator"]) & set(large["estimator"])
    assert {"reinforce", "rloo", "gumbel_softmax"} <= shared
    # In the drawn figures: the direct label of reinforce has reinforce's colour in both sweeps.
    for frame in (table, default_shape):
        data = plots.prepare(frame, metadata if frame is table else METADATA)
        figure = plots.build("variance_vs_budget", data, "reinforce")
        labels = [t for t in figure.findobj(matplotlib.text.Text) if t.get_text() == "reinforce"]
        assert labels and {matplotlib.colors.to_hex(t.get_color()) for t in labels} == {colours["reinforce"]}
    assert plots.estimator_colour("not_registered") == plots.estimator_colour("not_registered")


@pytest.mark.parametrize("stem", sorted(STEMS))
def test_no_text_overlaps_in_the_default_shape(default_shape: pd.DataFrame, stem: str) -> None:
    data = plots.prepare(default_shape, METADATA)
    check_figures({stem: plots.build(stem, data, "reinforce")})


def test_no_text_overlaps_in_a_real_sweep_and_one_problem(real: tuple) -> None:
    table, metadata, _ = real
    check_figures(plots.figures(table, metadata))
    check_figures(plots.figures(table[table["problem"] == "categorical"], metadata))


def test_no_text_overlaps_when_an_axis_spans_less_than_a_decade() -> None:
    figures = plots.figures(narrow_sweep(), METADATA)
    assert {"scorecard", "variance_vs_samples", "bias_vs_variance", "temperature"} <= set(figures)
    check_figures(figures)


# --- ticks ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("low", "high"),
    [
        (1.4e-3, 1.6e-3),
        (0.9, 1.1),
        (2e-7, 3e-7),
        (1e-16, 1.0),
        (3.0, 2500.0),
        (0.05, 0.4),
        (1e-3, 1e5),
        (7e4, 9e4),
    ],
)
@pytest.mark.parametrize("horizontal", [True, False])
def test_ticks_are_readable_at_any_range(low: float, high: float, horizontal: bool) -> None:
    length = 160.0  # points: a panel about 2.2 inches long
    ticks = plots.choose_ticks(low, high, length, horizontal=horizontal)
    assert len(ticks) >= 2, ticks
    assert all(low * (1 - 1e-9) <= t <= high * (1 + 1e-9) for t in ticks)
    labels = plots.tick_labels(ticks)
    assert len(set(labels)) == len(labels), labels  # distinct values get distinct labels
    assert not any("$" in label for label in labels)
    assert plots.labels_fit(ticks, low, high, length, plots.TICK, horizontal, log=True), labels


def test_data_ticks_are_thinned_until_they_fit() -> None:
    values = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96]
    ticks = plots.choose_ticks(0.9, 110, 100.0, horizontal=True, data=values)
    assert ticks[0] == 1 and ticks[-1] == 96 and set(ticks) <= set(values)
    assert plots.labels_fit(ticks, 0.9, 110, 100.0, plots.TICK, True, log=True)
    assert plots.choose_ticks(0.08, 1.2, 200.0, data=[0.1, 0.5, 1.0]) == [0.1, 0.5, 1.0]


def test_tick_labels_use_one_notation_per_axis() -> None:
    assert plots.tick_labels([0.001, 0.01, 0.1]) == ["0.001", "0.01", "0.1"]
    assert plots.tick_labels([1e-5, 1e-3]) == ["10\u207b\u2075", "10\u207b\u00b3"]
    assert plots.tick_labels([2e-7, 2.5e-7]) == ["2\u00d710\u207b\u2077", "2.5\u00d710\u207b\u2077"]


def test_spread_keeps_labels_apart_and_in_order() -> None:
    centres = plots.spread([0.5, 0.5, 0.5, 0.9, 0.1], [0.1] * 5, 0.0, 1.0)
    order = np.argsort([0.5, 0.5, 0.5, 0.9, 0.1], kind="stable")
    placed = np.asarray(centres)[order]
    assert np.all(np.diff(placed) >= 0.1 - 1e-12)
    assert placed.min() >= 0.05 - 1e-12 and placed.max() <= 0.95 + 1e-12
