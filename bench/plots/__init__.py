"""Plots of a sweep's cells table: PNG under out/plots/, and an SVG copy of each for papers.

  scorecard.png            overview and index: per problem (config), what to pick at a stated budget
                           of B evaluations of f (mean squared error, biased estimators ranked apart)
  scorecard_<problem>.png  one problem: every estimator, one panel per n_samples, one row order
  variance_vs_budget.png   variance of one estimate against its cost evaluations, the scorecard's best
                           estimators in colour with 95% bands, the others in grey
  variance_vs_samples.png  the same against n_samples
  bias_vs_variance.png     every cell's bias norm against its variance, over the band where a bias is
                           below the cell's resolution (``bias_resolution``); biased estimators in colour
  temperature.png          relaxed estimators: bias and variance against the temperature, with the
                           resolution band and the best unbiased estimators as horizontal references
  training_curves.png, variance_along_training.png   a training run set (``training_figures``)

Modules: ``style`` (colours, markers, theme), ``text`` (text extents), ``ticks`` (readable axes, one
notation per figure), ``layout`` (grid, header, direct labels), ``data`` (prepare, MSE at a budget,
ranking), ``curves`` (lines with bands), one module per figure (``scorecard``, ``variance``,
``bias``, ``temperature``) and ``drawing`` (files, the forked child).

The styling is seaborn's (``whitegrid``); the drawing is plain matplotlib on a ``Figure`` (no pyplot
state), since the intervals are precomputed columns rather than data seaborn would aggregate.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import pandas as pd
from matplotlib.figure import Figure

from .bias import bias_vs_variance
from .data import budget, prepare, rankings, with_mse
from .drawing import can_fork, collect, fork_drawing, save
from .layout import spread
from .scorecard import problem_scorecard, scorecard, scorecard_stems
from .style import (
    ESTIMATOR_COLOURS,
    FALLBACK_COLOURS,
    TAU_MARKERS,
    apply_theme,
    estimator_colour,
    tau_markers,
)
from .temperature import temperature
from .text import DPI, TICK, text_size
from .ticks import choose_ticks, figure_notation, format_tick, labels_fit, tick_labels
from .training import training_figures
from .variance import variance_curves

__all__ = [
    "DPI", "ESTIMATOR_COLOURS", "FALLBACK_COLOURS", "TAU_MARKERS", "TICK", "apply_theme", "budget", "build",
    "can_fork", "choose_ticks", "draw_all", "estimator_colour", "figure_notation", "figures", "format_tick",
    "labels_fit", "prepare", "rankings", "scorecard_stems", "spread", "stems", "tau_markers", "tick_labels",
    "training_figures", "with_mse",
]  # fmt: skip

BUILDERS: dict[str, Callable[[pd.DataFrame, str | None], Figure | None]] = {
    "scorecard": scorecard,
    "bias_vs_variance": lambda data, _reference: bias_vs_variance(data),
    "variance_vs_budget": lambda data, reference: variance_curves(
        data,
        "cost_evals",
        "f evaluations per estimate (cost_evals)",
        "Variance against the budget: cost evaluations of f per estimate",
        reference,
    ),
    "variance_vs_samples": lambda data, reference: variance_curves(
        data, "n_samples", "n_samples per estimate", "Variance against the samples per estimate", reference
    ),
    "temperature": temperature,
}
# Drawn by a forked child while the parent draws the rest: about half of the drawing.
CHILD_SHARE = ("scorecard", "bias_vs_variance")


def stems(data: pd.DataFrame) -> list[str]:
    """Every figure's file stem for this table: the five figures and a scorecard per problem, the
    most expensive first (the order in which they are drawn)."""
    return ["scorecard", *scorecard_stems(data), *(stem for stem in BUILDERS if stem != "scorecard")]


def build(stem: str, data: pd.DataFrame, reference: str | None) -> Figure | None:
    """The figure ``stem`` (one of ``stems(data)``), not yet saved; None when it has nothing to show."""
    with matplotlib.rc_context(apply_theme()):
        if stem in BUILDERS:
            return BUILDERS[stem](data, reference)
        problem = scorecard_stems(data).get(stem)
        if problem is None:
            raise KeyError(f"no figure {stem!r}; the figures are {', '.join(stems(data))}")
        return problem_scorecard(data, reference, problem)


def figures(cells: pd.DataFrame, metadata: dict[str, Any] | None = None) -> dict[str, Figure]:
    """Every figure the table has data for, by file stem (not yet saved)."""
    metadata = metadata or {}
    data = prepare(cells, metadata)
    if data.empty:
        return {}
    reference = metadata.get("reference", "reinforce")
    built = {stem: build(stem, data, reference) for stem in stems(data)}
    return {stem: figure for stem, figure in built.items() if figure is not None}


def draw_figure(stem: str, data: pd.DataFrame, reference: str | None, directory: Path) -> list[Path]:
    figure = build(stem, data, reference)
    return [] if figure is None else save(figure, directory, stem)


def in_child(stem: str) -> bool:
    return stem.startswith("scorecard") or stem in CHILD_SHARE


def draw_all(cells: pd.DataFrame, directory: Path, metadata: dict | None = None) -> list[Path]:
    """Draw every plot the table has data for; return the files written (PNG and SVG).

    On Linux with two cores a forked child draws the scorecards and the bias figure while this
    process draws the rest. Elsewhere, or if the child fails, this process draws everything in turn
    (a child's error is raised here then).
    """
    if metadata is None:
        from bench.output import read_metadata

        cells_file = directory.parent / "cells.parquet"
        metadata = read_metadata(cells_file) if cells_file.exists() else {}
    data = prepare(cells, metadata)
    if data.empty:
        return []
    reference = metadata.get("reference", "reinforce")
    directory.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context(apply_theme()):
        text_size("0", TICK)  # load the fonts once, before forking
    every = stems(data)
    child_stems = [stem for stem in every if in_child(stem)] if can_fork() else []
    child = (
        fork_drawing(child_stems, lambda stem: draw_figure(stem, data, reference, directory))
        if child_stems
        else None
    )
    written: dict[str, list[Path]] = {}
    finished = False
    try:
        for stem in every:
            if child is None or stem not in child_stems:
                written[stem] = draw_figure(stem, data, reference, directory)
        finished = True
    finally:
        from_child = collect(child, abandon=not finished) if child is not None else None
    if child is not None:
        if from_child is None:  # draw them here: a failure raises with its traceback
            from_child = [
                path for stem in child_stems for path in draw_figure(stem, data, reference, directory)
            ]
        for stem in child_stems:
            written[stem] = [path for path in from_child if path.stem == stem]
    return [path for stem in every for path in written.get(stem, [])]
