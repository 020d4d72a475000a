"""Bias against variance per cell (``bias_vs_variance``), log-log, one panel per problem, and the
resolution band shared with the temperature figure.

The grey band is the noise floor: below (z₁₋α/₂P + z₀.₈)·√(variance / n_estimates), the formula of
``bias_resolution``, no bias could be told from noise at the cell's n_estimates. Estimators with a
declared or detected bias are drawn in their colours (one legend for the figure: colours are fixed per
estimator), their points faded where the bias is below the cell's resolution and joined across
n_samples; cells with no bias declared or detected are small grey dots, for context.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .curves import fill
from .layout import Layout, decorate, draw_header, panel_grid, plan_header, x_label_space, y_label_space
from .style import GREY_LINE, scatter, style_handles
from .text import POINTS, TITLE, inches
from .ticks import AxisSpec, figure_notation, log_axes, log_limits

WIDTH, HEIGHT = 2.6, 2.3


def resolution_band(ax: Axes, x: np.ndarray, lowest: np.ndarray, highest: np.ndarray, bottom: float) -> None:
    """Grey below ``lowest`` (no cell resolves a bias there), lighter up to ``highest`` (some cells do
    not)."""
    fill(ax, x, bottom, lowest, color="0.78", alpha=0.55, zorder=0)
    if two_tone(lowest, highest):
        fill(ax, x, lowest, highest, color="0.88", alpha=0.55, zorder=0)


def band_handles(light: bool) -> list[Patch]:
    label = "grey band: below every cell's bias_resolution (80% power at \u03b1)"
    handles = [Patch(color="0.78", alpha=0.7, label=label)]
    if light:
        handles.append(Patch(color="0.88", alpha=0.7, label="light band: below some cells' resolution"))
    return handles


def two_tone(lowest: np.ndarray, highest: np.ndarray) -> bool:
    return bool(np.nanmax(np.abs(np.log10(highest / lowest)), initial=0.0) > 0.01)


def resolution_by_variance(frame: pd.DataFrame, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The smallest and largest bias resolution at each variance of ``grid``, from the formula of
    bench.stats.summarize: (z_{1−α/2P} + z_{0.8})·sqrt(variance / n_estimates) (column ``detect`` is
    the bracket). One curve when the cells share P and n_estimates, else a band between the extremes.
    The rounding floor that summarize adds matters only at variances near rounding level: those
    cells' own resolution is higher, and their markers are faded by it."""
    factor = (frame["detect"] / np.sqrt(frame["n_estimates"])).to_numpy(float)
    factor = factor[np.isfinite(factor)]
    if factor.size == 0:
        return np.full(len(grid), np.nan), np.full(len(grid), np.nan)
    return factor.min() * np.sqrt(grid), factor.max() * np.sqrt(grid)


def resolution_by_tau(frame: pd.DataFrame, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The smallest and largest bias resolution among the cells at each temperature, interpolated in
    log-log between temperatures and constant past the ends."""
    cells = frame[(frame["tau"] > 0) & (frame["bias_resolution"] > 0)]
    if cells.empty:
        return np.full(len(grid), np.nan), np.full(len(grid), np.nan)
    by_tau = cells.groupby("tau")["bias_resolution"].agg(["min", "max"])
    log_tau, log_grid = np.log10(by_tau.index.to_numpy(float)), np.log10(grid)
    lowest = 10 ** np.interp(log_grid, log_tau, np.log10(by_tau["min"].to_numpy(float)))
    highest = 10 ** np.interp(log_grid, log_tau, np.log10(by_tau["max"].to_numpy(float)))
    return lowest, highest


def sizes_for(n_values: Iterable[float]) -> dict[float, float]:
    values = sorted(set(n_values))
    return {n: 14 + 46 * (i / max(len(values) - 1, 1)) for i, n in enumerate(values)}


def flagged(values: pd.DataFrame) -> np.ndarray:
    """Cells of series with a declared or detected bias in any cell of their problem: drawn in colour."""
    return values.groupby(["problem_label", "label"])["biased"].transform("any").to_numpy(bool)


def bias_handles(values: pd.DataFrame, coloured: pd.DataFrame, sizes: dict[float, float]) -> list:
    """Legend: the conventions, then one entry per estimator drawn in colour."""
    handles = style_handles(coloured if len(coloured) else values)
    handles += [
        Line2D([], [], ls="", marker="o", color="0.3", markersize=math.sqrt(s), label=f"n_samples = {n:g}")
        for n, s in sizes.items()
    ]
    handles.append(
        Line2D(
            [],
            [],
            ls="",
            marker="o",
            color="0.3",
            alpha=0.3,
            markersize=6,
            label="faded: bias below the cell's resolution",
        )
    )
    if (~flagged(values)).any():
        label = "grey dot: no bias declared or detected"
        handles.append(Line2D([], [], ls="", marker="o", color=GREY_LINE, markersize=3.5, label=label))
    light = any(two_tone(*resolution_by_variance(s, np.ones(1))) for _, s in values.groupby("problem_label"))
    handles += band_handles(light)
    for name, colour in coloured.groupby("estimator", sort=True)["colour"].first().items():
        failed = coloured.loc[coloured["estimator"] == name, "failed_conformance"].any()
        text = f"{name} (conformance fail)" if failed else str(name)
        handles.append(Line2D([], [], ls="-", lw=1.0, marker="o", markersize=5, color=colour, label=text))
    return handles


def bias_limits(values: pd.DataFrame) -> dict[str, tuple[tuple[float, float], tuple[float, float]]]:
    """Per problem the (variance, bias) limits of its panel."""
    limits = {}
    for problem, subset in values.groupby("problem_label"):
        x_limits = log_limits(subset["variance"], pad=0.08)
        y_limits = log_limits([*subset["bias_norm"], *subset["bias_resolution"]], pad=0.08)
        limits[str(problem)] = (x_limits, y_limits)
    return limits


def bias_vs_variance(data: pd.DataFrame) -> Figure | None:
    """Bias norm against variance per cell, one panel per problem."""
    values = data[~data["zero"] & (data["variance"] > 0) & (data["bias_norm"] > 0)]
    if values.empty:
        return None
    problems = sorted(values["problem_label"].unique())
    n_rows, n_columns = panel_grid(len(problems), 4)
    limits = bias_limits(values)
    specs = [AxisSpec(*x, WIDTH * POINTS, True) for x, _ in limits.values()]
    plain = figure_notation([*specs, *(AxisSpec(*y, HEIGHT * POINTS, False) for _, y in limits.values())])
    left = [0.0] * n_columns
    for index, problem in enumerate(problems):
        spec = AxisSpec(*limits[problem][1], HEIGHT * POINTS, False)
        left[index % n_columns] = max(left[index % n_columns], y_label_space(spec.label_width(plain)))
    sizes = sizes_for(values["n_samples"])
    coloured = values[flagged(values)]
    title = "Bias against variance per cell"
    subtitle = (
        "bias norm \u2016mean \u2212 exact\u2016; an unbiased estimator lands in the grey band, where no "
        "bias could be told from noise at the cell's n_estimates; in colour: the estimators with a declared "
        "or detected bias, a thin line joining the cells of one estimator and \u03c4 across n_samples"
    )
    right = [0.25] * n_columns
    head = plan_header(
        0.24 + sum(left) + n_columns * WIDTH + sum(right),
        title,
        subtitle,
        bias_handles(values, coloured, sizes),
    )
    layout = Layout(
        [WIDTH] * n_columns,
        [HEIGHT] * n_rows,
        left,
        right,
        [inches(TITLE * 1.5) + 0.12] * n_rows,
        [x_label_space()] * n_rows,
        header=head,
    )
    draw_header(layout)
    for index, problem in enumerate(problems):
        row, column = divmod(index, n_columns)
        ax = layout.axes(row, column)
        log_axes(ax, *limits[problem], plain)
        bias_panel(ax, values[values["problem_label"] == problem], sizes)
        spec = AxisSpec(*limits[problem][1], HEIGHT * POINTS, False)
        decorate(
            ax,
            width_in=WIDTH,
            height_in=HEIGHT,
            title=problem,
            bold=True,
            xlabel="variance of one estimate",
            ylabel="bias norm",
            y_tick_width=spec.label_width(plain),
        )
    return layout.figure


def bias_panel(ax: Axes, subset: pd.DataFrame, sizes: dict[float, float]) -> None:
    """The band, the grey context dots, and the flagged series: joined across n_samples, faded where
    the bias is below the cell's resolution."""
    (x_low, x_high), (y_low, _y_high) = ax.get_xlim(), ax.get_ylim()
    grid = np.geomspace(x_low, x_high, 64)
    resolution_band(ax, grid, *resolution_by_variance(subset, grid), bottom=y_low)
    flags = flagged(subset)
    context = subset[~flags]
    ax.scatter(context["variance"], context["bias_norm"], s=7, color=GREY_LINE, linewidths=0, zorder=1.5)
    shown = subset[flags]
    for _label, frame in shown.groupby("label", sort=True):
        if len(frame) > 1:
            frame = frame.sort_values("n_samples")
            ax.plot(
                frame["variance"],
                frame["bias_norm"],
                color=frame["colour"].iloc[0],
                lw=0.7,
                alpha=0.6,
                zorder=2,
            )
    scatter(
        ax,
        shown,
        "variance",
        "bias_norm",
        size=shown["n_samples"].map(sizes).to_numpy(),
        alpha=np.where(shown["resolved"], 1.0, 0.3),
    )
