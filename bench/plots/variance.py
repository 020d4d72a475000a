"""Variance of one estimate against its cost evaluations of f (``variance_vs_budget``) or against
n_samples (``variance_vs_samples``), log-log, one panel per problem.

Readable with twenty estimators: per problem, the estimators the scorecard ranks best among those
without a bias (``HIGHLIGHT``) and the reference estimator are drawn in their colours, with 95% bands
and a direct label at their right end; every other estimator is a thin grey line for context,
unlabelled. Lines with identical points are drawn with interleaved dashes and one joint label.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .curves import Curve, curve_label, draw_curves, draw_grey, identical_groups
from .data import rankings
from .layout import (
    Layout,
    decorate,
    draw_header,
    label_column_width,
    label_right,
    labels_height,
    note_above,
    panel_grid,
    plan_header,
    x_label_space,
    y_label_space,
)
from .style import GREY_LINE, scatter, style_handles
from .text import NOTE, POINTS, TITLE, inches, wrap
from .ticks import AxisSpec, figure_notation, log_axes, log_limits

HIGHLIGHT = 4  # estimators without a bias drawn in colour per problem, besides the reference
WIDTH = 2.7


@dataclass
class VariancePanel:
    problem: str
    cells: pd.DataFrame  # positive variances of the problem
    groups: list[list[Curve]]  # the highlighted lines, identical ones grouped
    note: str  # variance 0 not drawn, and how many lines are grey
    x_limits: tuple[float, float]
    y_limits: tuple[float, float]

    @property
    def highlighted(self) -> set[str]:
        return {curve.label for group in self.groups for curve in group}


def variance_panel(data: pd.DataFrame, values: pd.DataFrame, problem: str, chosen: list[str], x: str):
    cells = values[values["problem_label"] == problem]
    curves = [
        Curve.of(label, cells[cells["label"] == label], x, "variance")
        for label in sorted(chosen)
        if (cells["label"] == label).any()
    ]
    zero = sorted(data.loc[(data["problem_label"] == problem) & data["zero"], "label"].unique())
    others = cells.loc[~cells["label"].isin(chosen), "label"].nunique()
    lines = wrap(["variance 0, not drawn:", *zero], WIDTH * POINTS, NOTE) if zero else []
    if others:
        lines.append(f"grey: {others} other estimator{'s' if others > 1 else ''}")
    y_columns = ["variance", "variance_ci_low", "variance_ci_high"]
    return VariancePanel(
        problem,
        cells,
        identical_groups(curves),
        "\n".join(lines).replace(":,", ":"),
        log_limits(cells[x], pad=0.08),
        log_limits(cells[y_columns].to_numpy().ravel()),
    )


def variance_handles(values: pd.DataFrame, highlighted: pd.DataFrame, reference: str | None) -> list:
    handles = [*style_handles(highlighted), Patch(color="0.6", alpha=0.35, label="95% interval")]
    if len(highlighted) < len(values):
        label = "grey: the other estimators (biased, or lower in the scorecard)"
        handles.append(Line2D([], [], color=GREY_LINE, lw=1.0, label=label))
    return handles


def variance_curves(
    data: pd.DataFrame, x: str, xlabel: str, title: str, reference: str | None
) -> Figure | None:
    """Variance of one estimate against ``x`` (cost_evals or n_samples), one panel per problem."""
    values = data[~data["zero"] & (data["variance"] > 0) & (data[x] > 0)]
    if values.empty or values[x].nunique() < 2:
        return None
    ranked = rankings(data)
    panels = [
        variance_panel(data, values, problem, ranked[problem].best(HIGHLIGHT, reference), x)
        for problem in sorted(values["problem_label"].unique())
    ]
    n_rows, n_columns = panel_grid(len(panels))
    heights = [2.2] * n_rows
    right, left, notes = [0.0] * n_columns, [0.0] * n_columns, [0] * n_rows
    for index, panel in enumerate(panels):
        row, column = divmod(index, n_columns)
        texts = [curve_label(group) for group in panel.groups]
        heights[row] = max(heights[row], labels_height(texts) * 1.05)
        right[column] = max(right[column], label_column_width(texts))
        notes[row] = max(notes[row], panel.note.count("\n") + 1 if panel.note else 0)
    # the variance axes share one notation; the x axes show settings (cost_evals, n_samples) in plain numbers
    plain = figure_notation(
        AxisSpec(*p.y_limits, heights[i // n_columns] * POINTS, False) for i, p in enumerate(panels)
    )
    for index, panel in enumerate(panels):
        row, column = divmod(index, n_columns)
        spec = AxisSpec(*panel.y_limits, heights[row] * POINTS, False)
        left[column] = max(left[column], y_label_space(spec.label_width(plain)))
    highlighted = values[values["label"].isin(set().union(*(p.highlighted for p in panels)))]
    subtitle = (
        f"coloured: per problem, the scorecard's {HIGHLIGHT} best estimators without a bias and the "
        f"reference ({reference}), labelled at their right end (identical lines: interleaved dashes); "
        "grey: all others"
    )
    head = plan_header(
        0.24 + sum(left) + n_columns * WIDTH + sum(right),
        title,
        subtitle,
        variance_handles(values, highlighted, reference),
    )
    top = [inches(TITLE * 1.5 + NOTE * 1.25 * lines) + 0.14 for lines in notes]
    layout = Layout([WIDTH] * n_columns, heights, left, right, top, [x_label_space()] * n_rows, header=head)
    draw_header(layout)
    for index, panel in enumerate(panels):
        row, column = divmod(index, n_columns)
        draw_variance_panel(layout, row, column, panel, (x, xlabel, plain, notes[row]))
    return layout.figure


def draw_variance_panel(layout: Layout, row: int, column: int, panel: VariancePanel, how: tuple) -> None:
    x, xlabel, plain, note_lines = how
    ax = layout.axes(row, column)
    height = layout.heights[row]
    setting = panel.cells[x] if x == "n_samples" else ()
    log_axes(ax, panel.x_limits, panel.y_limits, plain, setting=setting)
    draw_grey(ax, panel.cells[~panel.cells["label"].isin(panel.highlighted)], x, "variance")
    labels = draw_curves(ax, panel.groups)
    scatter(ax, panel.cells[panel.cells["label"].isin(panel.highlighted)], x, "variance", size=18)
    spec = AxisSpec(*panel.y_limits, height * POINTS, False)
    decorate(
        ax,
        width_in=WIDTH,
        height_in=height,
        title=panel.problem,
        bold=True,
        title_pad=6 + NOTE * 1.25 * note_lines,
        xlabel=xlabel,
        ylabel="variance of one estimate",
        y_tick_width=spec.label_width(plain),
    )
    if panel.note:
        note_above(ax, panel.note, height)
    label_right(ax, labels, height, WIDTH)
