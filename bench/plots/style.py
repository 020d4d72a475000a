"""Colours, markers and the theme, the same in every figure.

An estimator has the same colour in every sweep (``estimator_colour``: a fixed table for the
registered estimators, grouped by family; later additions take fallback colours by name). Filled
markers: no bias declared or detected. Hollow: biased (declared, or ``conformance`` = fail; ✕ marks
the latter). A dashed ring: heavy tails (``clt_ok`` false). Marker shape: the temperature τ.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Iterable
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from .text import LABEL, NOTE, TICK, TITLE

TICK_PAD = 3.5  # points between an axes and its tick labels (matplotlib's default)
FAIL_RED = "#c00000"  # text and rules of the failed-conformance block
GREY_LINE = "0.78"  # estimators drawn for context only

# One colour per registered estimator, fixed for good, grouped by family: score function and its
# baselines in blues and teals, ARM in purples, Gumbel relaxations (biased) in warm colours, their
# unbiased control variates (REBAR, RELAX) in greens, enumeration and sampling without replacement
# in black, pink and violets, Gaussian-only estimators in gold and olive. Estimators that share a
# problem have clearly different colours; dark enough for lines and text on white.
ESTIMATOR_COLOURS: dict[str, str] = {
    "reinforce": "#1f77b4", "rloo": "#17becf", "double_cv": "#000075", "oracle_baseline": "#7f7f7f",
    "reinforce_rtg": "#469990",
    "arm": "#9467bd", "disarm": "#f032e6",
    "gumbel_softmax": "#ff7f0e", "st_gumbel_softmax": "#d62728", "rao_blackwell_st": "#8c564b",
    "gapped_st": "#bcbd22", "reinmax": "#800000",
    "rebar": "#2ca02c", "relax": "#005f2f",
    "exact": "#000000", "indecater": "#e377c2", "sum_and_sample": "#4363d8", "unordered_set": "#6a3d9a",
    "pathwise": "#d4a000", "mvd": "#808000",
}  # fmt: skip
# For estimators registered later (by sorted name) and names no longer registered (by hash).
FALLBACK_COLOURS = ["#3a6e00", "#b2186b", "#00688b", "#a65628", "#5b5b9e", "#8b7500", "#c0392b", "#1b7837"]
TAU_MARKERS = ["v", "s", "^", "D", "P", "h", "<", ">", "p", "*"]


@functools.cache
def estimator_colour(name: str) -> str:
    """An estimator's colour: the fixed table for the built-ins, else a fallback colour chosen by a
    hash of the name, so a plugin's colour never depends on which other plugins are installed."""
    if name in ESTIMATOR_COLOURS:
        return ESTIMATOR_COLOURS[name]
    return FALLBACK_COLOURS[zlib.crc32(name.encode()) % len(FALLBACK_COLOURS)]


def tau_markers(taus: Iterable[float]) -> dict[float, str]:
    """A marker per temperature of the sweep (sorted); 'o' for estimators without one."""
    values = sorted({float(t) for t in taus if pd.notna(t)})
    return {tau: TAU_MARKERS[index % len(TAU_MARKERS)] for index, tau in enumerate(values)}


def apply_theme() -> dict[str, Any]:
    rc = {**sns.axes_style("whitegrid"), **sns.plotting_context("paper")}
    rc.update(
        {
            "xtick.labelsize": TICK,
            "ytick.labelsize": TICK,
            "axes.labelsize": LABEL,
            "axes.titlesize": TITLE,
            "legend.fontsize": NOTE,
            # matplotlib's own font: the same text extents on every machine, so the measured layout holds
            "font.sans-serif": ["DejaVu Sans"],
            # FreeType's autohinter (matplotlib's default) costs ~40% of drawing a text; at 110 dpi
            # unhinted anti-aliased text reads as well
            "text.hinting": "no_hinting",
            "font.size": LABEL,
            "axes.edgecolor": "0.7",
            "grid.color": "0.9",
            "svg.hashsalt": "bench",
            "svg.fonttype": "none",
            "axes.unicode_minus": True,
            "xtick.major.size": 0,
            "ytick.major.size": 0,
            "xtick.minor.size": 0,
            "ytick.minor.size": 0,
            "xtick.major.pad": TICK_PAD,
            "ytick.major.pad": TICK_PAD,
        }
    )
    return rc


# --- legend entries -------------------------------------------------------------------------------
def marker_handle(
    label: str, marker: str = "o", hollow: bool = False, size: float = 6, **style: Any
) -> Line2D:
    grey = "0.3"
    face = "white" if hollow else grey
    return Line2D(
        [],
        [],
        ls="",
        marker=marker,
        markersize=size,
        markerfacecolor=face,
        markeredgecolor=grey,
        label=label,
        **style,
    )


def heavy_handle() -> Line2D:
    label = "ring, \u26a0, dashed interval: heavy tails (interval and bias test unreliable)"
    return Line2D(
        [],
        [],
        ls="",
        marker="o",
        markersize=10,
        markerfacecolor="none",
        markeredgecolor="black",
        markeredgewidth=0.9,
        label=label,
    )


def style_handles(data: pd.DataFrame, reference: str | None = None, zero_line: bool = False) -> list[Any]:
    """Legend entries for the marker conventions that occur in ``data``."""
    handles = [marker_handle("unbiased (declared)")]
    if (data["biased"] & ~data["failed_conformance"]).any():
        handles.append(marker_handle("biased (declared)", hollow=True))
    if data["failed_conformance"].any():
        handles.append(marker_handle("declared unbiased, bias detected (conformance fail)", "X", True, 7))
    drawn = data[data["tau"].notna() & ~data["failed_conformance"]]
    markers = dict(zip(drawn["tau"], drawn["marker"], strict=True))  # as prepare() assigned them
    handles += [marker_handle(f"\u03c4 = {tau:g}", markers[tau], size=5) for tau in sorted(markers)]
    if data["heavy_tails"].any():
        handles.append(heavy_handle())
    if reference:
        label = f"reference estimator ({reference})"
        handles.append(Line2D([], [], ls=(0, (4, 2)), color="0.35", lw=1, label=label))
    if zero_line:
        label = "exact, and any variance 0 or at rounding level: named above this line"
        handles.append(Line2D([], [], ls="-", color="black", lw=1, label=label))
    return handles


# --- markers --------------------------------------------------------------------------------------
def scatter(
    ax: Axes,
    frame: pd.DataFrame,
    x: str,
    y: str,
    size: float | np.ndarray = 30,
    alpha: np.ndarray | None = None,
    zorder: float = 3,
    label: str | None = None,
) -> None:
    """Markers coloured by estimator, hollow when biased, shaped by temperature (✕: conformance fail)."""
    if frame.empty:
        return
    markers = frame["marker"].to_numpy()
    sizes = np.broadcast_to(np.asarray(size, dtype=float), (len(frame),))
    alphas = np.ones(len(frame)) if alpha is None else np.asarray(alpha, dtype=float)
    colours = matplotlib.colors.to_rgba_array(frame["colour"].tolist())
    colours[:, 3] = alphas
    faces = colours.copy()
    faces[frame["biased"].to_numpy(bool)] = [1, 1, 1, 1]
    xs, ys = frame[x].to_numpy(float), frame[y].to_numpy(float)
    for marker in dict.fromkeys(markers):
        chosen = markers == marker
        ax.scatter(
            xs[chosen],
            ys[chosen],
            s=sizes[chosen],
            marker=marker,
            facecolors=faces[chosen],
            edgecolors=colours[chosen],
            linewidths=1.1,
            zorder=zorder,
            **({} if label is None else {"label": label}),
        )
    heavy = frame["heavy_tails"].to_numpy(bool)
    if heavy.any():  # a dashed ring: the normal approximation behind the interval and the bias test fails
        ax.scatter(
            xs[heavy],
            ys[heavy],
            s=sizes[heavy] * 4 + 40,
            marker="o",
            facecolors="none",
            edgecolors="black",
            linewidths=0.9,
            linestyles=(0, (2, 1.5)),
            zorder=zorder,
        )
