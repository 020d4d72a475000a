"""Seaborn plots of a sweep's cells table (PNG under out/plots/)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns

from bench.output import read_metadata


def varying(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    return [c for c in columns if c in frame and frame[c].astype(str).nunique() > 1]


def labelled(
    cells: pd.DataFrame, problem_columns: Sequence[str], estimator_columns: Sequence[str]
) -> pd.DataFrame:
    """Add ``problem_label`` (problem + its config values that vary within the sweep, e.g.
    ``categorical cost=quadratic``) and relabel ``estimator`` likewise (temperature aside: the plots
    show it on an axis or as line style)."""
    cells = cells.copy()

    def label(frame: pd.DataFrame, name_column: str, columns: Sequence[str]) -> pd.Series:
        labels = frame[name_column].astype(str)
        for _name, group in frame.groupby(name_column):
            for column in varying(group, columns):
                values = group[column].map(lambda v, c=column: "" if pd.isna(v) else f" {c}={v}")
                labels.loc[group.index] = labels.loc[group.index] + values
        return labels

    cells["problem_label"] = label(cells, "problem", problem_columns)
    # The legend's title is the column's name: the label replaces the plain estimator name.
    cells["estimator"] = label(cells, "estimator", [c for c in estimator_columns if c != "temperature"])
    return cells


def variance_vs_samples(cells: pd.DataFrame, path: Path) -> Path | None:
    data = cells[(cells["variance"] > 0)].copy()
    if data.empty or data["n_samples"].nunique() < 2:
        return None
    style = None
    if "temperature" in data and data["temperature"].notna().any():
        data["τ"] = data["temperature"].map(lambda t: "–" if pd.isna(t) else f"{t:g}")
        style = "τ"
        extra = {"style_order": ["–", *(f"{t:g}" for t in sorted(data["temperature"].dropna().unique()))]}
    else:
        extra = {}
    grid = sns.relplot(
        data=data, x="n_samples", y="variance", hue="estimator", style=style, col="problem_label",
        kind="line", marker="o", col_wrap=min(3, data["problem_label"].nunique()),
        facet_kws={"sharey": False},
        height=3.2, aspect=1.2, **palette(data), **extra, col_order=sorted(data["problem_label"].unique()),
    )  # fmt: skip
    grid.set(xscale="log", yscale="log")
    data_ticks(grid, data["n_samples"])
    grid.set_titles("{col_name}")
    grid.set_axis_labels("n_samples (per estimate)", "variance of one estimate (trace)")
    grid.figure.suptitle("Variance vs samples per estimate", y=1.02)
    return save(grid.figure, path)


def bias_vs_variance(cells: pd.DataFrame, path: Path) -> Path | None:
    data = cells[(cells["variance"] > 0) & (cells["bias_norm"] > 0)].copy()
    if data.empty:
        return None
    data["declared"] = data["unbiased"].map({True: "unbiased", False: "biased"})
    grid = sns.relplot(
        data=data, x="variance", y="bias_norm", hue="estimator", style="declared", col="problem_label",
        col_wrap=min(3, data["problem_label"].nunique()), facet_kws={"sharex": False, "sharey": False},
        height=3.2, aspect=1.2, s=50, **palette(data), col_order=sorted(data["problem_label"].unique()),
    )  # fmt: skip
    grid.set(xscale="log", yscale="log")
    for problem_label, ax in grid.axes_dict.items():
        subset = data[data["problem_label"] == problem_label]
        xs = np.geomspace(subset["variance"].min(), subset["variance"].max(), 50)
        # An unbiased estimator's measured bias is pure noise: ‖mean − exact‖ ≈ sqrt(variance / n).
        ax.plot(xs, np.sqrt(xs / subset["n_estimates"].median()), "k:", lw=1, label="noise floor")
    grid.set_titles("{col_name}")
    grid.set_axis_labels("variance of one estimate", "‖mean − exact‖")
    grid.figure.suptitle("Bias vs variance per cell (dotted: where an unbiased estimator lands)", y=1.02)
    return save(grid.figure, path)


def temperature_sweep(cells: pd.DataFrame, path: Path) -> Path | None:
    if "temperature" not in cells:
        return None
    data = cells[cells["temperature"].notna() & (cells["variance"] > 0)].copy()
    if data.empty or data["temperature"].nunique() < 2:
        return None
    long = data.melt(
        id_vars=["problem_label", "estimator", "temperature", "n_samples"],
        value_vars=["bias_norm", "variance"], var_name="measure", value_name="value",
    )  # fmt: skip
    grid = sns.relplot(
        data=long, x="temperature", y="value", hue="estimator", style="n_samples", row="measure",
        col="problem_label", kind="line", marker="o", facet_kws={"sharey": False}, height=2.8, aspect=1.2,
        **palette(long), col_order=sorted(long["problem_label"].unique()),
    )  # fmt: skip
    grid.set(xscale="log", yscale="log")
    data_ticks(grid, long["temperature"])
    grid.set_titles("{row_name} | {col_name}")
    grid.set_axis_labels("temperature τ", "")
    grid.figure.suptitle("Relaxed estimators: bias and variance vs temperature", y=1.02)
    return save(grid.figure, path)


def palette(data: pd.DataFrame) -> dict:
    """The same colour for an estimator in every plot of a sweep."""
    order = sorted(data["estimator"].unique())
    colours = sns.color_palette("tab10" if len(order) <= 10 else "husl", len(order))
    return {"hue_order": order, "palette": dict(zip(order, colours, strict=True))}


def data_ticks(grid: sns.FacetGrid, values: pd.Series) -> None:
    """Label a log x axis at the values the sweep used, as plain numbers."""
    ticks = sorted(float(v) for v in values.dropna().unique())
    for ax in grid.axes.flat:
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def save(figure: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary, dpi=110, bbox_inches="tight")
    plt.close(figure)
    temporary.replace(path)
    return path


def draw_all(cells: pd.DataFrame, directory: Path, metadata: dict | None = None) -> list[Path]:
    """Draw every plot the table has data for; return the files written."""
    if metadata is None:
        cells_file = directory.parent / "cells.parquet"
        metadata = read_metadata(cells_file) if cells_file.exists() else {}
    ok = cells[cells["status"] == "ok"]
    if ok.empty:
        return []
    data = labelled(ok, metadata.get("problem_columns", []), metadata.get("estimator_columns", []))
    sns.set_theme(style="whitegrid", context="notebook")
    drawn = [
        variance_vs_samples(data, directory / "variance_vs_samples.png"),
        bias_vs_variance(data, directory / "bias_vs_variance.png"),
        temperature_sweep(data, directory / "temperature.png"),
    ]
    return [path for path in drawn if path is not None]
