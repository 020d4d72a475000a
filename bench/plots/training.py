"""Figures of a training run set (``bench train``): ``training_curves`` and
``variance_along_training``, from ``curves.parquet`` and ``basket.parquet``.

training_curves: one row of panels per problem setting (the problem, its config, n_samples,
optimizer, lr; the row title names the ones that vary), the objective against the optimizer step,
against the cumulative evaluations of f (``cost_evals``) and against the training wall-clock
(``seconds``, evaluations excluded). Per estimator the mean over seeds with a 95% t-interval over
seeds (none with one seed). Runs of one estimator are aligned on ``step``; on the cost and seconds
axes a point sits at the estimator's mean ``cost_evals`` / ``seconds`` over seeds at that step.

variance_along_training: per setting, the variance (trace of the covariance) of one gradient
estimate against the step, log y. Left: each run's own estimator, the mean over seeds of the
variance; its band is the mean over seeds of each measurement's 95% interval ends (the uncertainty
of one run's measurement, not the spread between seeds). Right, when the table has basket rows: the
basket's estimators measured at the runs' points, the mean over all runs of the setting, banded the
same way. Both panels of a row share the y axis.

Only finished runs (``status`` ok) with a finite objective are drawn. Colours are the sweep's fixed
colours per estimator (``estimator_colour``); labels of one estimator at other config values (a
temperature) differ by dashes. One legend per figure, in the header, away from the data.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from scipy import stats

from bench.training.summary import labelled, objective_label, ok_points

from .curves import fill
from .drawing import save
from .layout import Layout, decorate, draw_header, plan_header, row_title_space, x_label_space
from .style import apply_theme, estimator_colour
from .text import LABEL, POINTS, ROW_TITLE, inches, text_size, wrap_words
from .ticks import AxisSpec, figure_notation, log_limits, readable_axis

WIDTH, HEIGHT = 2.55, 1.85  # inches per panel
X_AXES = (
    ("step", "optimizer step"),
    ("cost_evals", "evaluations of f (cost_evals)"),
    ("seconds", "training wall-clock (s)"),
)
DASHES = ["-", (0, (5, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2))]
KEYS = ["_setting", "_label", "step"]


# --- data -----------------------------------------------------------------------------------------
def seed_means(points: pd.DataFrame) -> pd.DataFrame:
    """Per setting, label and step: the mean objective over seeds with its 95% t-interval (NaN with
    one seed), and the mean cost_evals and seconds."""
    grouped = points.astype({"objective": float, "cost_evals": float, "seconds": float}).groupby(KEYS)
    table = grouped.agg(
        y=("objective", "mean"),
        sd=("objective", "std"),
        n=("objective", "count"),
        cost_evals=("cost_evals", "mean"),
        seconds=("seconds", "mean"),
    ).reset_index()
    n = table["n"].to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = stats.t.ppf(0.975, np.maximum(n - 1, 1)) * table["sd"].to_numpy(float) / np.sqrt(n)
    half = np.where(n >= 2, half, np.nan)
    table["low"], table["high"] = table["y"] - half, table["y"] + half
    return table


def variance_means(frame: pd.DataFrame) -> pd.DataFrame:
    """Per setting, label and step: the mean of the positive variances and of their interval ends."""
    columns = ["variance", "variance_ci_low", "variance_ci_high"]
    frame = frame.astype(dict.fromkeys(columns, float))
    frame = frame[np.isfinite(frame["variance"]) & (frame["variance"] > 0)]
    table = frame.groupby(KEYS)[columns].mean().reset_index()
    table.columns = [*KEYS, "y", "low", "high"]
    table["low"] = table["low"].where(table["low"] > 0)
    return table


def line_styles(labels: pd.DataFrame) -> dict[str, tuple[str, object]]:
    """(colour, dashes) per label: the estimator's colour, dashes by its config value."""
    styles = {}
    for estimator, group in labels.groupby("estimator", sort=True):
        for index, label in enumerate(sorted(group["_label"].unique())):
            styles[label] = (estimator_colour(str(estimator)), DASHES[index % len(DASHES)])
    return styles


def legend_handles(styles: dict[str, tuple[str, object]], band: str) -> list:
    handles: list = [Line2D([], [], color=c, ls=d, lw=1.6, label=label) for label, (c, d) in styles.items()]
    return [*handles, Patch(color="0.6", alpha=0.35, label=band)]


def y_limits(frame: pd.DataFrame) -> tuple[float, float]:
    values = frame[["y", "low", "high"]].to_numpy(float).ravel()
    values = values[np.isfinite(values)]
    low, high = float(values.min()), float(values.max())
    pad = 0.06 * (high - low) if high > low else max(abs(high) * 0.05, 1e-3)
    return low - pad, high + pad


# --- drawing --------------------------------------------------------------------------------------
def draw_lines(ax: Axes, frame: pd.DataFrame, x: str, styles: dict[str, tuple[str, object]]) -> None:
    for label, line in frame.groupby("_label", sort=True):
        line = line.sort_values("step")
        colour, dashes = styles[str(label)]
        xs = line[x].to_numpy(float)
        ax.plot(xs, line["y"].to_numpy(float), color=colour, ls=dashes, lw=1.4, marker="o", ms=2.2, zorder=2)
        fill(ax, xs, line["low"].to_numpy(float), line["high"].to_numpy(float), color=colour, alpha=0.18)


def setting_title(points: pd.DataFrame, setting: str, zero: list[str] | None = None) -> str:
    seeds = points.loc[points["_setting"] == setting, "seed"].nunique()
    title = f"{setting}   ({seeds} seed{'s' if seeds != 1 else ''})"
    return f"{title}   variance 0, not drawn: {', '.join(zero)}" if zero else title


def y_label_lines(label: str) -> str:
    """The objective's label, broken before its parenthesis (then at spaces) when too long."""
    length = HEIGHT * POINTS - 6
    if text_size(label, LABEL)[0] <= length:
        return label
    return "\n".join(wrap_words(line, length, LABEL) for line in label.replace(" (", "\n(", 1).split("\n"))


def curves_figure(points: pd.DataFrame) -> Figure | None:
    """Objective against step, cost_evals and seconds: a row per setting."""
    if points.empty:
        return None
    means = seed_means(points)
    settings = sorted(means["_setting"].unique())
    styles = line_styles(points)
    rows = {s: means[means["_setting"] == s] for s in settings}
    limits = {s: y_limits(frame) for s, frame in rows.items()}
    labels = {s: y_label_lines(row_objective(points, s)) for s in settings}
    tick = max(AxisSpec(*limits[s], HEIGHT * POINTS, False, log=False).label_width(None) for s in settings)
    lines = max(text.count("\n") + 1 for text in labels.values())
    left = [inches(tick + LABEL * 1.3 * lines) + 0.16] + [inches(tick) + 0.2] * 2
    head = plan_header(
        sum(left) + 3 * WIDTH + 0.3,
        "Training curves: the objective against optimizer steps, evaluations of f and wall-clock",
        "Per problem setting (rows) and estimator: the mean over seeds of the objective at each "
        "evaluation, with its 95% t-interval over seeds (no band with one seed). On the f-evaluation "
        "and wall-clock axes an estimator's points sit at its mean cost_evals / seconds over seeds at "
        "that step. Finished runs only.",
        legend_handles(styles, "95% t-interval over seeds"),
    )
    top = [inches(ROW_TITLE * 1.3) + 0.2] * len(settings)
    layout = Layout([WIDTH] * 3, [HEIGHT] * len(settings), left, [0.1] * 3, top,
                    [x_label_space()] * len(settings), header=head)  # fmt: skip
    draw_header(layout)
    for row, setting in enumerate(settings):
        layout.row_title(row, setting_title(points, setting))
        for column, (x, xlabel) in enumerate(X_AXES):
            ax = layout.axes(row, column)
            draw_lines(ax, rows[setting], x, styles)
            xs = rows[setting][x].to_numpy(float)
            ax.set_xlim(min(0.0, float(xs.min())), max(float(xs.max()), 1e-9) * 1.02)
            ax.set_ylim(*limits[setting])
            readable_axis(ax.xaxis)
            readable_axis(ax.yaxis)
            ylabel = labels[setting] if column == 0 else None
            decorate(ax, width_in=WIDTH, height_in=HEIGHT, xlabel=xlabel, ylabel=ylabel, y_tick_width=tick)
    return layout.figure


def row_objective(points: pd.DataFrame, setting: str) -> str:
    frame = points[points["_setting"] == setting]
    return objective_label(str(frame["direction"].iloc[0]), str(frame["objective_source"].iloc[0]))


def basket_means(points: pd.DataFrame, basket: pd.DataFrame | None) -> pd.DataFrame:
    """The basket's rows of finished runs, labelled by the run's setting and the member's name."""
    if basket is None or basket.empty:
        return pd.DataFrame(columns=[*KEYS, "y", "low", "high"])
    settings = points.drop_duplicates("run").set_index("run")["_setting"]
    frame = basket[basket["run"].isin(settings.index)].copy()
    frame["_setting"] = frame["run"].map(settings)
    frame["_label"] = frame["estimator"].astype(str)
    return variance_means(frame)


def variance_figure(points: pd.DataFrame, basket: pd.DataFrame | None) -> Figure | None:
    """The variance of the runs' own estimators, and of the basket's, against the step."""
    own = variance_means(points)
    members = basket_means(points, basket)
    panels = [own, members] if len(members) else [own]
    settings = sorted(set(own["_setting"]) | set(members["_setting"]))
    if not settings:
        return None
    styles = line_styles(points)
    for name in sorted(members["_label"].unique()):
        styles.setdefault(name, (estimator_colour(name), "-"))
    limits = {
        s: log_limits(np.concatenate([p.loc[p["_setting"] == s, ["y", "low", "high"]].to_numpy(float).ravel()
                                      for p in panels]))
        for s in settings
    }  # fmt: skip
    specs = {s: AxisSpec(*limits[s], HEIGHT * POINTS, False) for s in settings}
    plain = figure_notation(specs.values())
    tick = max(spec.label_width(plain) for spec in specs.values())
    left = [inches(tick + LABEL * 1.3) + 0.16] + [inches(tick) + 0.2] * (len(panels) - 1)
    used = [label for label in styles if any((p["_label"] == label).any() for p in panels)]
    head = plan_header(
        sum(left) + len(panels) * WIDTH + 0.3,
        "Variance of one gradient estimate along training",
        "Per problem setting (rows): the trace of the estimator's covariance at each evaluation, log "
        "scale. "
        + (
            "Left: each run's own estimator, the mean over seeds. Right: the basket's estimators "
            "measured at the same points, the mean over the setting's runs. "
            if len(panels) > 1
            else "Each run's own estimator, the mean over seeds. "
        )
        + "Bands: the mean over runs of each measurement's 95% interval.",
        legend_handles({label: styles[label] for label in used}, "mean 95% interval of the measurements"),
    )
    n = len(settings)
    layout = Layout([WIDTH] * len(panels), [HEIGHT] * n, left, [0.1] * len(panels), [row_title_space()] * n,
                    [x_label_space()] * n, header=head)  # fmt: skip
    draw_header(layout)
    titles = ["each run's own estimator", "basket, at the runs' points"]
    for row, setting in enumerate(settings):
        layout.row_title(row, setting_title(points, setting, zero_variance(points, setting)))
        for column, (frame, title) in enumerate(zip(panels, titles, strict=False)):
            frame = frame[frame["_setting"] == setting]
            if frame.empty:
                continue
            ax = layout.axes(row, column)
            draw_lines(ax, frame, "step", styles)
            ax.set_xlim(min(0.0, float(frame["step"].min())), max(float(frame["step"].max()), 1.0) * 1.02)
            ax.set_yscale("log")
            ax.set_ylim(*limits[setting])
            readable_axis(ax.xaxis)
            readable_axis(ax.yaxis, plain=plain)
            ylabel = "variance (trace)" if column == 0 else None
            decorate(ax, width_in=WIDTH, height_in=HEIGHT, title=title, xlabel="optimizer step",
                     ylabel=ylabel, y_tick_width=tick)  # fmt: skip
    return layout.figure


def zero_variance(points: pd.DataFrame, setting: str) -> list[str]:
    frame = points[(points["_setting"] == setting) & points["variance"].notna()]
    variance = frame["variance"].astype(float).groupby(frame["_label"]).max()
    return sorted(str(label) for label in variance.index[variance <= 0])


# --- entry points ---------------------------------------------------------------------------------
def training_plots(curves: pd.DataFrame, basket: pd.DataFrame | None = None) -> dict[str, Figure]:
    """Both figures by file stem (not yet saved); a figure with nothing to show is left out."""
    if curves is None or curves.empty:
        return {}
    with matplotlib.rc_context(apply_theme()):
        points = ok_points(labelled(curves))
        built = {
            "training_curves": curves_figure(points),
            "variance_along_training": variance_figure(points, basket) if len(points) else None,
        }
    return {stem: figure for stem, figure in built.items() if figure is not None}


def training_figures(curves: pd.DataFrame, basket: pd.DataFrame | None, directory: Path) -> list[Path]:
    """Write ``training_curves`` and ``variance_along_training`` (PNG and SVG) into ``directory``;
    the files written (none for an empty table)."""
    written: list[Path] = []
    for stem, figure in training_plots(curves, basket).items():
        written += save(figure, directory, stem)
    return written
