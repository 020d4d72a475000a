"""The plots: every file is written (PNG and SVG), colours are fixed per estimator across sweeps, no
text in any figure overlaps another text, leaves the figure or runs into a neighbouring panel, and the
scorecard cannot mislead: a biased or failed estimator never ranks above an unbiased one, one row order
in every n_samples panel, one tick notation per figure, a bounded height.

Sweeps: a tiny real one (run_cell + write_cell + merge, in-process), its one-problem slice, a synthetic
table with the default sweep's shape (10 problem configs, 20 estimators, temperatures, 711 cells), and a
synthetic sweep whose values span less than a decade (ticks must still be readable).
"""

from __future__ import annotations

import itertools
import math
import os
import re
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
REAL_SCORECARDS = {"scorecard_bernoulli", "scorecard_categorical"}  # one per problem of the real sweep
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
        f"{stem}.{suffix}" for stem in STEMS | REAL_SCORECARDS for suffix in ("png", "svg")
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
    assert [path.name for path in again] == [
        path.name for path in written if not path.stem.startswith("scorecard_categorical")
    ]
    narrow = plots.draw_all(narrow_sweep(), tmp_path / "narrow", METADATA)
    assert {path.name for path in narrow} == {path.name for path in again}


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
    assert {path.stem for path in written} == STEMS | REAL_SCORECARDS
    assert all(path.exists() for path in written)


def test_nothing_to_plot_writes_nothing(tmp_path: Path) -> None:
    table = synthetic_sweep({("bernoulli", None): ["reinforce"]}, target_rows=0)
    table["status"] = "skipped"
    assert plots.draw_all(table, tmp_path / "plots", METADATA) == []
    assert not (tmp_path / "plots").exists() or not list((tmp_path / "plots").iterdir())


def test_colours_are_fixed_per_estimator_across_sweeps(real: tuple, default_shape: pd.DataFrame) -> None:
    from bench import estimators

    builtin = [name for name in estimators.REGISTRY if name in plots.ESTIMATOR_COLOURS]
    assert builtin == list(estimators.REGISTRY), "every built-in estimator has a fixed colour"
    registered = [plots.estimator_colour(name) for name in builtin]
    assert len(set(registered)) == len(registered), "two registered estimators share a colour"
    # A plugin's colour depends on its name alone, not on the other plugins installed.
    assert plots.estimator_colour("indep_baseline") == plots.estimator_colour("indep_baseline")
    assert plots.estimator_colour("indep_baseline") in plots.FALLBACK_COLOURS
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
        assert labels and {matplotlib.colors.to_hex(t.get_color()) for t in labels} == {
            plots.estimator_colour("reinforce")
        }
    assert plots.estimator_colour("not_registered") == plots.estimator_colour("not_registered")


# One scorecard per problem config, named scorecard_<problem>[_<key>-<value>].
DEFAULT_SCORECARDS = [
    f"scorecard_{name}"
    for name in (
        "bernoulli", "cartpole", "categorical_cost-linear", "categorical_cost-quadratic",
        "gaussian_cost-linear", "gaussian_cost-quadratic", "multicategorical", "vae_bernoulli",
        "vae_categorical", "vae_gaussian",
    )
]  # fmt: skip


def test_the_default_shape_has_a_scorecard_per_problem_config(default_shape: pd.DataFrame) -> None:
    data = plots.prepare(default_shape, METADATA)
    others = ["bias_vs_variance", "variance_vs_budget", "variance_vs_samples", "temperature"]
    assert plots.stems(data) == ["scorecard", *DEFAULT_SCORECARDS, *others]


@pytest.mark.parametrize("stem", sorted(STEMS) + DEFAULT_SCORECARDS)
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


# --- the scorecard cannot mislead ------------------------------------------------------------------
def misleading_shape() -> pd.DataFrame:
    """The default shape with the traps a user met: in every problem config a declared-biased estimator
    (gapped_st τ=0.1, bias 0.1) with the lowest work variance of all, and a declared-unbiased one that
    failed conformance (oracle_baseline) with the second lowest."""
    table = synthetic_sweep(SHAPE)
    ok = table["status"] == "ok"
    keys = [table["problem"].astype(object), table["cost"].astype(object).fillna("")]
    lowest = table["work_variance"].where(ok).groupby(keys).transform("min")
    assert lowest[ok].notna().all()
    traps = (
        ok
        & (table["estimator"] == "gapped_st")
        & (table["temperature"].isna() | (table["temperature"] == 0.1)),
        ok & (table["estimator"] == "oracle_baseline"),
    )
    for chosen, factor in zip(traps, (1e-4, 1e-2), strict=True):
        work = lowest[chosen] * factor
        cost = table.loc[chosen, "cost_evals"].astype(float)
        for column, scale in (("", 1.0), ("_ci_low", 1 / 1.04), ("_ci_high", 1.04)):
            table.loc[chosen, f"work_variance{column}"] = work * scale
            table.loc[chosen, f"variance{column}"] = work * scale / cost
    table.loc[traps[0], "bias_norm"] = 0.1
    table.loc[traps[1], "conformance"] = "fail"
    table.loc[traps[1], "bias_norm"] = table.loc[traps[1], "bias_resolution"] * 5
    return table


@pytest.fixture(scope="module")
def default_figures(default_shape: pd.DataFrame) -> dict[str, matplotlib.figure.Figure]:
    return plots.figures(default_shape, METADATA)


def row_positions(ax: matplotlib.axes.Axes) -> dict[str, float]:
    """Each estimator row's y in a scorecard panel, from its points (labelled with the row's label)."""
    points = [c for c in ax.collections if isinstance(c, matplotlib.collections.PathCollection)]
    return {c.get_label(): float(c.get_offsets()[0][1]) for c in points if not c.get_label().startswith("_")}


def figure_texts(figure: matplotlib.figure.Figure) -> list[matplotlib.text.Text]:
    return [t for t in figure.findobj(matplotlib.text.Text) if t.get_text().strip()]


def test_a_biased_or_failed_estimator_never_ranks_above_an_unbiased_one_with_a_higher_mse() -> None:
    data = plots.prepare(misleading_shape(), METADATA)
    b = plots.budget(data)
    assert b == 100  # the smallest power of ten at least the largest cost_evals (indecater: 96)
    frame = plots.with_mse(data, b)
    flagged = frame.groupby(["problem_label", "label"])["biased"].transform("any")
    stems = plots.scorecard_stems(data)
    for stem in ["scorecard", *stems]:
        figure = plots.build(stem, data, "reinforce")
        assert any(f"B = {b:g} evaluations" in t.get_text() for t in figure_texts(figure)), stem  # stated
        for ax in figure.axes:
            rows = row_positions(ax)
            problem = ax.get_label()  # the problem a scorecard panel shows
            cells = frame[frame["problem_label"] == problem]
            mse = cells.groupby("label")["mse_at_budget"].min()
            biased = set(cells.loc[flagged[cells.index], "label"])
            order = sorted(rows, key=rows.get)
            assert order[0] not in biased, (stem, order)  # the trap: lowest work variance, but biased
            for position, upper in enumerate(order):
                for lower in order[position + 1 :]:
                    if upper in biased and lower not in biased:
                        assert mse[upper] < mse[lower], (stem, upper, lower)
        # the failed estimator cannot be missed: its name in bold red, in every figure that shows it
        problems = [stems[stem]] if stem in stems else list(frame["problem_label"])
        if "oracle_baseline" not in set(frame.loc[frame["problem_label"].isin(problems), "estimator"]):
            continue
        failed = [t for t in figure_texts(figure) if t.get_text().startswith("oracle_baseline")]
        assert failed and all(t.get_color() == "#c00000" and t.get_fontweight() == "bold" for t in failed), (
            stem
        )


def test_one_row_order_in_every_n_samples_panel_of_a_problem(default_figures: dict) -> None:
    for stem in DEFAULT_SCORECARDS:
        figure = default_figures[stem]
        panels = [row_positions(ax) for ax in figure.axes]
        assert len(panels) == 3, stem  # n_samples 1, 4, 16
        for label in set().union(*panels):
            assert len({panel[label] for panel in panels if label in panel}) == 1, (stem, label)
        # the rows are named once, left of the first panel, at the height of their points
        names = {
            t.get_text().removesuffix(" \u2715").removesuffix(" \u26a0"): t.get_position()[1]
            for ax in figure.axes
            for t in ax.texts
            if t.get_position()[0] < 0
        }
        assert all(t.get_position()[0] >= 0 for ax in figure.axes[1:] for t in ax.texts), stem
        for label, y in set().union(*(panel.items() for panel in panels)):
            assert names[label] == y, (stem, label)


SETTINGS = (
    "n_samples",
    "cost_evals",
    "temperature",
)  # axes of settings: plain numbers, as the sweep set them


def notation(label: str) -> str:
    return (
        "power"
        if "\u00d7" in label or re.search("10[\u2070\u00b9\u00b2\u00b3\u2074-\u2079\u207b]", label)
        else "plain"
    )


def notations(figure: matplotlib.figure.Figure) -> tuple[set[str], list[set[str]]]:
    """The notations of the figure's tick labels on axes of measured values, and per axis of settings."""
    figure.canvas.draw()
    values, settings = set(), []
    for ax in figure.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            labels = [t.label1.get_text() for t in axis._update_ticks() if low <= t.get_loc() <= high]
            kinds = {notation(label) for label in labels if label.strip() and label != "0"}
            if any(name in axis.get_label_text() for name in SETTINGS):
                settings.append(kinds)
            else:
                values |= kinds
    return values, settings


def test_one_tick_notation_per_figure(default_figures: dict, real: tuple) -> None:
    table, metadata, _ = real
    every = {**default_figures, **{f"real {k}": f for k, f in plots.figures(table, metadata).items()}}
    every.update({f"narrow {k}": f for k, f in plots.figures(narrow_sweep(), METADATA).items()})
    for stem, figure in every.items():
        values, settings = notations(figure)
        assert len(values) <= 1, (stem, values)
        assert all(len(kinds) <= 1 for kinds in settings), (stem, settings)
    assert notations(default_figures["scorecard"])[0] == {"power"}  # 10⁻⁵ … 10³ across problems


def test_figure_heights_are_bounded_for_the_default_shape(default_figures: dict) -> None:
    """The default sweep's scorecard was one figure 3803 px tall (at 110 dpi); now the overview stays
    under 1400 px and each problem's scorecard under 900 px; no figure is taller than 1600 px."""
    pixels = {stem: figure.get_size_inches() * figure.dpi for stem, figure in default_figures.items()}
    assert set(DEFAULT_SCORECARDS) | STEMS == set(pixels)
    assert pixels["scorecard"][1] <= 1400, pixels["scorecard"]
    assert all(pixels[stem][1] <= 900 for stem in DEFAULT_SCORECARDS), pixels
    assert all(height <= 1600 and width <= 1800 for width, height in pixels.values()), pixels


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
