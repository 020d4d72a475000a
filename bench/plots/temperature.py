"""Relaxed estimators (Gumbel-softmax family, REBAR): bias norm (left) and variance (right) against the
temperature τ, one row per problem, at the largest n_samples with a temperature sweep (variance
scales as 1/n_samples and the bias not at all, so the other n_samples show the same curves, shifted).

The bias panel shades the resolution band; the variance panel draws, as dashed horizontal references,
the estimators without a bias at the same n_samples that the scorecard ranks best (``REFERENCES``) and
the reference estimator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .bias import band_handles, resolution_band, resolution_by_tau, two_tone
from .curves import Curve, curve_label, draw_curves, identical_groups
from .data import rankings
from .layout import (
    Label,
    Layout,
    decorate,
    draw_header,
    label_column_width,
    label_right,
    labels_height,
    plan_header,
    row_title_space,
    x_label_space,
    y_label_space,
)
from .style import scatter, style_handles
from .text import POINTS
from .ticks import AxisSpec, figure_notation, log_axes, log_limits

REFERENCES = 3  # estimators without a bias drawn as references, besides the reference estimator
WIDTH = 2.6


@dataclass
class TemperatureRow:
    problem: str
    n_samples: float
    lines: pd.DataFrame  # cells of estimators with several temperatures
    single: pd.DataFrame  # cells of biased estimators at one temperature
    references: pd.DataFrame  # cells of unbiased estimators without a temperature sweep
    bias_groups: list[list[Curve]] = field(default_factory=list)  # the lines, identical ones grouped
    variance_groups: list[list[Curve]] = field(default_factory=list)
    height: float = 2.0
    limits: tuple[tuple[float, float], tuple[float, float]] = ((0.1, 10.0), (0.1, 10.0))  # bias, variance

    def __post_init__(self) -> None:
        by_series = list(self.lines.groupby("series", sort=True))
        bias = [
            Curve.of(series, frame[frame["bias_norm"] > 0], "tau", "bias_norm", band=False)
            for series, frame in by_series
            if (frame["bias_norm"] > 0).any()
        ]
        variance = [
            Curve.of(series, frame[~frame["zero"]], "tau", "variance")
            for series, frame in by_series
            if (~frame["zero"]).any()
        ]
        self.bias_groups, self.variance_groups = identical_groups(bias), identical_groups(variance)
        bias_texts, variance_texts = self.label_texts()
        self.height = max(2.0, max(labels_height(bias_texts), labels_height(variance_texts)) * 1.05 + 0.1)
        bias_values = [*self.lines["bias_norm"], *self.single["bias_norm"], *self.lines["bias_resolution"]]
        core = [*self.lines["variance_ci_low"], *self.lines["variance_ci_high"], *self.single["variance"]]
        low, high = log_limits(core, pad=0.08)
        near = [v for v in self.references["variance"] if low / 30 <= v <= high * 30]
        self.limits = (log_limits(bias_values, pad=0.08), log_limits([*core, *near], pad=0.08))

    def label_texts(self) -> tuple[list[str], list[str]]:
        """The direct labels of the bias panel and of the variance panel."""
        single = sorted(self.single["label"].unique())
        bias = [curve_label(group) for group in self.bias_groups] + single
        variance = [curve_label(group) for group in self.variance_groups] + single
        return bias, variance + sorted(self.references["label"].unique())

    def specs(self) -> list[AxisSpec]:
        """The y axes: bias norm, variance (the τ axes show a setting, in plain numbers)."""
        return [AxisSpec(*limits, self.height * POINTS, False) for limits in self.limits]


def temperature_rows(data: pd.DataFrame, reference: str | None) -> list[TemperatureRow]:
    """Per problem with a temperature sweep, its cells at the largest n_samples with one."""
    swept = data[data["tau"].notna()]
    counts = swept.groupby(["problem_label", "n_samples", "series"])["tau"].nunique()
    counts = counts[counts >= 2]
    if counts.empty:
        return []
    chosen = counts.reset_index().groupby("problem_label")["n_samples"].max()
    ranked = rankings(data)
    rows = []
    for problem in sorted(chosen.index):
        n = chosen[problem]
        subset = data[(data["problem_label"] == problem) & (data["n_samples"] == n)]
        tau_count = subset.groupby("series")["tau"].transform("nunique")
        candidates = (tau_count <= 1) & ~subset["biased"] & ~subset["zero"] & (subset["variance"] > 0)
        best = ranked[problem].best(REFERENCES, reference)
        rows.append(
            TemperatureRow(
                problem,
                n,
                subset[tau_count >= 2],
                subset[(tau_count == 1) & subset["biased"]],
                subset[candidates & subset["label"].isin(best)],
            )
        )
    return rows


def temperature_handles(rows: list[TemperatureRow], taus: np.ndarray) -> list:
    plotted = pd.concat([frame for row in rows for frame in (row.lines, row.single, row.references)])
    label = "at the same n_samples: the scorecard's best estimators without a bias, and the reference"
    handles = [*style_handles(plotted), Line2D([], [], ls=(0, (5, 2)), color="0.3", lw=1, label=label)]
    return handles + band_handles(
        any(two_tone(*resolution_by_tau(pd.concat([r.lines, r.single]), taus)) for r in rows)
    )


def temperature(data: pd.DataFrame, reference: str | None = None) -> Figure | None:
    """Relaxed estimators: bias norm (left) and variance (right) against τ, one row per problem."""
    rows = temperature_rows(data, reference)
    if not rows:
        return None
    swept = data[data["tau"].notna()]
    x_limits = log_limits(swept["tau"], pad=0.1)
    taus = np.unique(swept["tau"].to_numpy(float))
    plain = figure_notation(spec for row in rows for spec in row.specs())
    left = [max(y_label_space(row.specs()[panel].label_width(plain)) for row in rows) for panel in (0, 1)]
    right = [max(label_column_width(row.label_texts()[panel]) for row in rows) for panel in (0, 1)]
    title = "Relaxed estimators: bias and variance against the temperature \u03c4"
    subtitle = "faded markers: bias below the cell's resolution; \u2191 \u2193: a reference beyond the axis"
    head = plan_header(
        0.24 + sum(left) + 2 * WIDTH + sum(right), title, subtitle, temperature_handles(rows, taus)
    )
    layout = Layout(
        [WIDTH, WIDTH],
        [row.height for row in rows],
        left,
        right,
        [row_title_space()] * len(rows),
        [x_label_space()] * len(rows),
        header=head,
    )
    draw_header(layout)
    for index, row in enumerate(rows):
        layout.row_title(index, f"{row.problem}  (n_samples = {row.n_samples:g})")
        axes = layout.axes(index, 0), layout.axes(index, 1)
        tau_values = swept.loc[swept["problem_label"] == row.problem, "tau"]
        titles = ("bias norm \u2016mean \u2212 exact\u2016", "variance of one estimate")
        for ax, limits, heading, ylabel in zip(
            axes, row.limits, titles, ("bias norm", "variance"), strict=True
        ):
            log_axes(ax, x_limits, limits, plain, setting=tau_values)
            spec = AxisSpec(*limits, row.height * POINTS, False)
            decorate(
                ax,
                width_in=WIDTH,
                height_in=row.height,
                title=heading,
                xlabel="temperature \u03c4",
                ylabel=ylabel,
                y_tick_width=spec.label_width(plain),
            )
        temperature_row(axes, row, x_limits)
    return layout.figure


def single_labels(single: pd.DataFrame, column: str) -> list[Label]:
    shown = single[single[column] > 0] if column == "bias_norm" else single[~single["zero"]]
    return [
        Label(*values)
        for values in zip(shown["tau"], shown[column], shown["label"], shown["colour"], strict=True)
    ]


def temperature_row(axes: tuple[Axes, Axes], row: TemperatureRow, x_limits: tuple[float, float]) -> None:
    bias_ax, variance_ax = axes
    grid = np.geomspace(*x_limits, 64)
    cells = pd.concat([row.lines, row.single])
    resolution_band(bias_ax, grid, *resolution_by_tau(cells, grid), bottom=bias_ax.get_ylim()[0])
    bias_labels = draw_curves(bias_ax, row.bias_groups, lw=1.2) + single_labels(row.single, "bias_norm")
    variance_labels = draw_curves(variance_ax, row.variance_groups, lw=1.2) + single_labels(
        row.single, "variance"
    )
    shown = cells[cells["bias_norm"] > 0]
    scatter(bias_ax, shown, "tau", "bias_norm", size=22, alpha=np.where(shown["resolved"], 1.0, 0.3))
    scatter(variance_ax, cells[~cells["zero"]], "tau", "variance", size=22)
    references = row.references
    if len(references):
        variance_ax.hlines(
            references["variance"],
            0,
            1,
            transform=variance_ax.get_yaxis_transform(),  # x in axes fractions: the whole width
            colors=references["colour"].tolist(),
            linewidths=1.0,
            linestyles=(0, (5, 2)),
            zorder=1,
        )
    for variance, label, colour in zip(
        references["variance"], references["label"], references["colour"], strict=True
    ):
        variance_labels.append(Label(x_limits[1], variance, label, colour))
    label_right(bias_ax, bias_labels, row.height, WIDTH)
    label_right(variance_ax, variance_labels, row.height, WIDTH)
