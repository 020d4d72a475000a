"""The scorecard: which estimator to pick, per problem, at a stated budget of f evaluations.

``scorecard.png`` is the overview and index: one panel per problem (and problem config) with the
five best estimators without a bias, every estimator that failed conformance and the best biased
one, each at its best n_samples. ``scorecard_<problem>.png`` (``scorecard_stems``) has every
estimator of one problem, one panel per n_samples, one row order in all panels.

Rows: the mean squared error of a gradient at a budget of B evaluations of f (``data.with_mse``),
ranked in blocks (``data.rank``): no bias declared or detected first, then declared-unbiased
estimators that failed conformance (red), then declared-biased ones; a biased estimator never
ranks above an unbiased one. Estimators whose variance is 0 (or at rounding level) in every cell
are named above a black line at the top; a cell with variance 0 in a row is a ◂ at the left edge.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .data import BLOCKS, budget, rank, with_mse
from .layout import Layout, decorate, draw_header, plan_header, x_label_space
from .style import FAIL_RED, TICK_PAD, marker_handle, scatter, style_handles
from .text import NOTE, POINTS, ROW_TITLE, TICK, TITLE, inches, text_width, wrap
from .ticks import AxisSpec, figure_notation, format_tick, log_axes, log_limits

ROW = 0.16  # inches per row
WIDTH = 2.3  # inches per panel
OVERVIEW_BEST = 5  # estimators without a bias per problem in the overview
HEADERS = {
    "unbiased": ("no bias declared or detected", "0.15"),
    "failed": ("FAILED conformance: bias detected", FAIL_RED),
    "biased": ("biased (declared)", "0.35"),
}
FAIL_NOTE = " \u2715"


@dataclass
class Row:
    kind: str  # "zero" (names of zero-variance estimators), "header" (of a block) or "estimator"
    text: str  # the row's name, left of the panel
    label: str = ""  # the estimator's label (estimator rows)
    block: str = "unbiased"
    bold: bool = False


def slug(problem_label: str) -> str:
    """A file-name part for a problem label: ``categorical cost=linear`` → ``categorical_cost-linear``."""
    text = re.sub(r"\s+", "_", problem_label.strip()).replace("=", "-")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-_.") or "problem"


def scorecard_stems(data: pd.DataFrame) -> dict[str, str]:
    """The per-problem scorecards' file stems (``scorecard_<problem>``), by problem label."""
    stems: dict[str, str] = {}
    for problem in sorted(data["problem_label"].unique()) if len(data) else []:
        stem = f"scorecard_{slug(str(problem))}"
        while stem in stems:
            stem += "_"
        stems[stem] = str(problem)
    return stems


def scored(data: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """The cells a scorecard can place (a work variance, or variance 0) with their MSE at B, and B."""
    values = data[data["work_variance"].notna() | data["zero"]]
    b = budget(data)
    return with_mse(values, b), b


def estimator_rows(
    labels_by_block: dict[str, list[str]], cells: pd.DataFrame, reference: str | None
) -> list[Row]:
    """Header and estimator rows of the blocks that have estimators (no header when there is only
    the unbiased block). ``cells``: the cells drawn, for the ⚠ of heavy tails."""
    heavy = set(cells.loc[cells["heavy_tails"], "label"])
    shown = [block for block in BLOCKS if labels_by_block.get(block)]
    rows: list[Row] = []
    for block in shown:
        if shown != ["unbiased"]:
            rows.append(Row("header", HEADERS[block][0], block=block))
        for label in labels_by_block[block]:
            text = label + (" \u26a0" if label in heavy else "") + (FAIL_NOTE if block == "failed" else "")
            rows.append(Row("estimator", text, label, block, bold=label == reference))
    return rows


def zero_rows(names: Sequence[str], width_pt: float) -> list[Row]:
    """The rows naming the zero-variance estimators inside a panel ``width_pt`` wide."""
    return [Row("zero", line) for line in wrap(list(names), width_pt - 8, TICK)] if names else []


def row_label_width(rows: Sequence[Row]) -> float:
    """Inches the row names take left of a panel."""
    texts = [r.text for r in rows if r.kind == "estimator"]
    heads = [r.text for r in rows if r.kind == "header"]
    return (
        max(
            text_width(texts, TICK, "bold"), text_width(heads, TICK, "bold"), text_width(["variance 0"], TICK)
        )
        + 0.12
    )


def scorecard_handles(values: pd.DataFrame, reference: str | None) -> list:
    handles = style_handles(values, reference, zero_line=bool(values["zero"].any()))
    failed = [h for h in handles if "conformance fail" in h.get_label()]
    for handle in failed:
        handle.set_label("declared unbiased, bias detected: \u2715, name in red (conformance fail)")
    zero = values["zero"] & (values["mse_at_budget"] == 0)
    if (zero & ~zero.groupby([values["problem_label"], values["label"]]).transform("all")).any():
        handles.append(marker_handle("at the left edge: variance 0 in that cell", "<", size=5))
    return handles


# --- one panel ------------------------------------------------------------------------------------
def draw_rows(ax: Axes, rows: Sequence[Row], cells: dict[str, pd.Series], reference: str | None) -> None:
    """The points and intervals of ``cells`` (label → cell) at their rows, the block rules, the row
    stripes and the reference line. Each row's points carry its estimator's label (``get_label``)."""
    transform = ax.get_yaxis_transform()
    ys = [y for y, row in enumerate(rows, 1) if row.kind == "estimator"]
    ax.hlines(ys, 0, 1, transform=transform, colors="0.93", lw=0.8, zorder=0)
    for y, row in enumerate(rows, 1):
        if row.kind == "header" and y > 1:
            colour = FAIL_RED if row.block == "failed" else "0.35"
            ax.axhline(y - 0.5, color=colour, lw=1.1, zorder=1)
        if row.kind == "zero" and (y == len(rows) or rows[y].kind != "zero"):
            ax.axhline(y + 0.5, color="black", lw=1.2, zorder=1)
        cell = cells.get(row.label) if row.kind == "estimator" else None
        if cell is not None:
            draw_cell(ax, cell, y, transform)
    if reference is not None and reference in cells and cells[reference]["estimator"] == reference:
        value = float(cells[reference]["mse_at_budget"])
        if value > 0:
            top = sum(row.kind == "zero" for row in rows) + 0.5 if rows[0].kind == "zero" else 0.4
            ax.vlines(value, top, len(rows) + 0.6, color="0.35", ls=(0, (4, 2)), lw=0.9, zorder=1)
    ax.set_yticks([])
    ax.set_ylim(len(rows) + 0.6, 0.4)


def draw_cell(ax: Axes, cell: pd.Series, y: float, transform) -> None:
    """One cell at row ``y``: its MSE at B with the interval (dashed for heavy tails), or a ◂ at the
    left edge when it is 0."""
    frame = cell.to_frame().T.assign(row=y)
    if cell["mse_at_budget"] <= 0:
        ax.scatter(
            [0.02],
            [y],
            marker="<",
            s=22,
            color=cell["colour"],
            transform=transform,
            zorder=3,
            label=str(cell["label"]),
        )
        return
    style = (0, (2, 1.5)) if cell["heavy_tails"] else "-"
    ax.hlines(
        [y],
        [cell["mse_at_budget_ci_low"]],
        [cell["mse_at_budget_ci_high"]],
        colors=[cell["colour"]],
        linestyles=style,
        lw=1.6,
        zorder=2,
    )
    scatter(ax, frame.astype({"row": float}), "mse_at_budget", "row", size=26, label=str(cell["label"]))


def name_rows(ax: Axes, rows: Sequence[Row]) -> None:
    """Row names left of the panel (as plain texts: a tick is a dozen artists), block headers and
    failed estimators in their colour, the reference estimator in bold."""
    width_pt = ax.get_position().width * ax.figure.get_figwidth() * POINTS
    transform = ax.get_yaxis_transform()

    def name(y: float, text: str, colour: str = "0.15", bold: bool = False) -> None:
        ax.text(
            -TICK_PAD / width_pt,
            y,
            text,
            transform=transform,
            ha="right",
            va="center",
            fontsize=TICK,
            color=colour,
            fontweight="bold" if bold else "normal",
            clip_on=False,
        )

    zero = [y for y, row in enumerate(rows, 1) if row.kind == "zero"]
    if zero:
        name((zero[0] + zero[-1]) / 2, "variance 0")
    for y, row in enumerate(rows, 1):
        if row.kind != "zero":
            special = row.kind == "header" or row.block == "failed"
            name(y, row.text, HEADERS[row.block][1] if special else "0.15", special or row.bold)


def zero_names(ax: Axes, rows: Sequence[Row]) -> None:
    """The zero-variance estimators' names inside the panel, above the black line."""
    zero = [y for y, row in enumerate(rows, 1) if row.kind == "zero"]
    if zero:
        text = "\n".join(rows[y - 1].text for y in zero)
        ax.text(
            0.02,
            (zero[0] + zero[-1]) / 2,
            text,
            transform=ax.get_yaxis_transform(),
            ha="left",
            va="center",
            fontsize=TICK,
            linespacing=1.15,
        )


def x_limits(frame: pd.DataFrame) -> tuple[float, float]:
    positive = frame[frame["mse_at_budget"] > 0]
    columns = ["mse_at_budget", "mse_at_budget_ci_low", "mse_at_budget_ci_high"]
    return log_limits(positive[columns].to_numpy().ravel())


def budget_label(b: float) -> str:
    return f"MSE at B = {format_tick(b, True)} evaluations"


# --- one problem, every n_samples -----------------------------------------------------------------
def problem_scorecard(data: pd.DataFrame, reference: str | None, problem: str) -> Figure | None:
    """Every estimator of one problem: a panel per n_samples, one row order in all of them."""
    values, b = scored(data)
    frame = values[values["problem_label"] == problem]
    if frame.empty:
        return None
    ranking = rank(frame, problem)
    n_values = sorted(frame["n_samples"].unique())
    rows = zero_rows(ranking.zero, WIDTH * POINTS) + estimator_rows(ranking.blocks, frame, reference)
    limits = x_limits(frame)
    plain = figure_notation([AxisSpec(*limits, WIDTH * POINTS, True)])
    left = [row_label_width(rows)] + [0.2] * (len(n_values) - 1)
    title = f"Scorecard: {problem}, every estimator at every n_samples (lower is better)"
    subtitle = (
        f"mean squared error of the gradient at a budget of B = {format_tick(b, True)} evaluations of f (the "
        "mean of B / cost_evals estimates) = work_variance / B + bias\u00b2; bias counted where declared or "
        "detected; bars: 95% intervals; one row order in every panel, by each estimator's lowest MSE over "
        "the n_samples; estimators with a bias are ranked apart, below those without: a biased estimator "
        "never ranks above an unbiased one"
    )
    has_reference = reference is not None and reference in set(frame["estimator"])
    handles = scorecard_handles(frame, reference if has_reference else None)
    head = plan_header(sum(left) + len(n_values) * (WIDTH + 0.2) + 0.24, title, subtitle, handles)
    layout = Layout(
        [WIDTH] * len(n_values),
        [ROW * len(rows) + 0.12],
        left,
        [0.2] * len(n_values),
        [inches(TITLE * 1.4) + 0.12],
        [x_label_space()],
        header=head,
    )
    draw_header(layout)
    for column, n in enumerate(n_values):
        ax = layout.axes(0, column)
        ax.set_label(problem)
        log_axes(ax, limits, None, plain)
        panel = frame[frame["n_samples"] == n]
        draw_rows(ax, rows, {str(cell["label"]): cell for _, cell in panel.iterrows()}, reference)
        zero_names(ax, rows)
        if column == 0:
            name_rows(ax, rows)
        decorate(
            ax,
            width_in=WIDTH,
            height_in=layout.heights[0],
            title=f"n_samples = {n:g}",
            xlabel=budget_label(b),
        )
    return layout.figure


# --- the overview ---------------------------------------------------------------------------------
@dataclass
class Overview:
    """One problem's panel in the overview: its rows, every estimator's best cell, its file."""

    problem: str
    rows: list[Row]
    best: dict[str, pd.Series]
    stem: str
    count: int  # estimators in the problem's own scorecard


def overview_panel(frame: pd.DataFrame, problem: str, stem: str, reference: str | None) -> Overview:
    """The five best estimators without a bias, every failed one and the best biased one, each at
    the n_samples where its MSE at B is lowest."""
    ranking = rank(frame, problem)
    # each estimator at its best n_samples; one that failed conformance at a cell where it failed
    failed = frame.groupby("label")["failed_conformance"].transform("any")
    candidates = frame[~failed | frame["failed_conformance"]]
    best_index = candidates.groupby("label")["mse_at_budget"].idxmin()
    best = {str(label): frame.loc[index] for label, index in best_index.items()}
    chosen = {
        "unbiased": ranking.blocks["unbiased"][:OVERVIEW_BEST],
        "failed": ranking.blocks["failed"],
        "biased": ranking.blocks["biased"][:1],
    }
    rows = zero_rows(ranking.zero, WIDTH * POINTS) + estimator_rows(chosen, frame, reference)
    for row in rows:
        if row.kind == "estimator":
            row.text = row.text.replace(row.label, f"{row.label} (n={best[row.label]['n_samples']:g})", 1)
        elif row.kind == "header" and row.block == "biased":
            row.text = "best biased (declared)"
    return Overview(problem, rows, best, stem, len(ranking.order) + len(ranking.zero))


def shown_cells(panel: Overview, reference: str | None) -> pd.DataFrame:
    """The cells an overview panel draws: its rows' best cells, and the reference's."""
    labels = [row.label for row in panel.rows if row.kind == "estimator"]
    if reference in panel.best:
        labels.append(reference)
    return pd.DataFrame([panel.best[label] for label in labels])


def overview_note(panel: Overview) -> str:
    return f"all {panel.count} estimators, every n_samples: {panel.stem}.png"


def overview_plan(panels: list[Overview], columns: int) -> tuple[list[float], list[float]]:
    """Per grid column the space for the row names; per grid row the panels' height (inches)."""
    left, heights = [0.0] * columns, []
    for index, panel in enumerate(panels):
        row, column = divmod(index, columns)
        titles = max(text_width([panel.problem], ROW_TITLE, "bold"), text_width([overview_note(panel)], NOTE))
        left[column] = max(left[column], row_label_width(panel.rows), titles - WIDTH + 0.05)
        if row == len(heights):
            heights.append(0.0)
        heights[row] = max(heights[row], ROW * len(panel.rows) + 0.12)
    return left, heights


def scorecard(data: pd.DataFrame, reference: str | None) -> Figure | None:
    """The overview and index: per problem, what to pick at a budget of B evaluations of f."""
    values, b = scored(data)
    if values.empty:
        return None
    stems = {problem: stem for stem, problem in scorecard_stems(values).items()}
    panels = [
        overview_panel(frame, str(problem), stems[str(problem)], reference)
        for problem, frame in values.groupby("problem_label", sort=True)
    ]
    columns = min(3, len(panels))
    left, heights = overview_plan(panels, columns)
    limits = {p.problem: x_limits(shown_cells(p, reference)) for p in panels}
    plain = figure_notation(AxisSpec(*lim, WIDTH * POINTS, True) for lim in limits.values())
    title = f"Scorecard: what to pick per problem at a budget of B = {format_tick(b, True)} evaluations of f"
    subtitle = (
        "mean squared error of the gradient (the mean of B / cost_evals estimates): work_variance / B + "
        "bias\u00b2, bias counted where declared or detected; lower is better; bars: 95% intervals; "
        f"per problem: the {OVERVIEW_BEST} best estimators without a bias, every one that failed conformance "
        "and the best biased one, each at its best n_samples; a biased estimator never ranks above an "
        "unbiased one"
    )
    has_reference = reference is not None and reference in set(values["estimator"])
    handles = scorecard_handles(values, reference if has_reference else None)
    head = plan_header(sum(left) + columns * (WIDTH + 0.3) + 0.24, title, subtitle, handles)
    top = [inches(ROW_TITLE * 1.3 + NOTE * 1.3) + 0.16] * len(heights)
    layout = Layout(
        [WIDTH] * columns, heights, left, [0.3] * columns, top, [x_label_space()] * len(heights), header=head
    )
    draw_header(layout)
    for index, panel in enumerate(panels):
        row, column = divmod(index, columns)
        height = ROW * len(panel.rows) + 0.12
        ax = layout.axes(row, column, height)
        ax.set_label(panel.problem)
        log_axes(ax, limits[panel.problem], None, plain)
        draw_rows(ax, panel.rows, panel.best, reference)
        zero_names(ax, panel.rows)
        name_rows(ax, panel.rows)
        x_in = layout.column_x(column) - left[column] + 0.05
        layout.row_title(row, panel.problem, x_in)
        top_in = layout.row_top(row) + inches(ROW_TITLE * 1.3) + 0.06
        layout.text(x_in, top_in, overview_note(panel), fontsize=NOTE, color="0.35")
        decorate(ax, width_in=WIDTH, height_in=height, xlabel=budget_label(b))
    return layout.figure
