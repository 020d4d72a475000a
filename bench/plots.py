"""Plots of a sweep's cells table: PNG under out/plots/, and an SVG copy of each for papers.

  scorecard.png            per problem (config) and n_samples, the estimators ranked by work variance
                           (variance × cost evaluations per estimate) with 95% intervals
  variance_vs_budget.png   variance of one estimate against its cost evaluations, one line per
                           estimator (and temperature), 95% band
  variance_vs_samples.png  the same against n_samples
  bias_vs_variance.png     every cell's bias norm against its variance, over the band where a bias is
                           below the cell's resolution (``bias_resolution``)
  temperature.png          relaxed estimators: bias and variance against the temperature, with the
                           resolution band and the unbiased estimators as horizontal references

Conventions shared by every plot:
- An estimator has the same colour in every sweep (``estimator_colour``: a fixed table for the
  registered estimators, grouped by family; later additions take fallback colours by name).
- Filled markers: declared unbiased and not failing conformance. Hollow: biased (declared, or
  ``conformance`` = fail; ✕ marks the latter). A dashed ring, ⚠ and dashed intervals: heavy tails
  (``clt_ok`` false), so the interval and the bias test are not to be trusted. Marker shape:
  temperature. Variances 0, or at the dtype's rounding level, are named, never drawn on a log axis.
- Ticks come from ``ReadableLocator``: decades, 1-2-5 or linear steps, whichever set is the
  densest whose labels fit the axis without touching, so no axis prints overlapping labels.
- Layout is computed in inches from measured text extents (no tight bounding box): labels are never
  clipped, panels keep a fixed size, and a figure is drawn once per file. Text uses DejaVu Sans
  (shipped with matplotlib), so the measured extents hold on every machine; SVG text stays text.

The styling is seaborn's (``whitegrid``); the drawing is plain matplotlib on a ``Figure`` (no pyplot
state), since the intervals are precomputed columns rather than data seaborn would aggregate.
"""

from __future__ import annotations

import functools
import gc
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import warnings
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

DPI = 110
TICK, LABEL, TITLE, ROW_TITLE, SUPTITLE, NOTE, DIRECT = 8.0, 9.0, 9.0, 10.5, 12.0, 8.0, 8.0
POINTS = 72.0  # points per inch
MAX_TICKS = 6
MIN_WIDTH = 7.0  # inches: a one-panel figure still has room for its title and a legend in columns

# --- colours and markers --------------------------------------------------------------------------
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
def registry_colours() -> dict[str, str]:
    """Every registered estimator's colour: the fixed table, then fallback colours in sorted order of
    the registered names the table lacks. Independent of which estimators a sweep holds."""
    import estimators

    colours = dict(ESTIMATOR_COLOURS)
    missing = sorted(name for name in estimators.REGISTRY if name not in colours)
    for index, name in enumerate(missing):
        colours[name] = FALLBACK_COLOURS[index % len(FALLBACK_COLOURS)]
    return colours


def estimator_colour(name: str) -> str:
    colours = registry_colours()
    if name in colours:
        return colours[name]
    return FALLBACK_COLOURS[zlib.crc32(name.encode()) % len(FALLBACK_COLOURS)]


def tau_markers(taus: Iterable[float]) -> dict[float, str]:
    """A marker per temperature of the sweep (sorted); 'o' for estimators without one."""
    values = sorted({float(t) for t in taus if pd.notna(t)})
    return {tau: TAU_MARKERS[index % len(TAU_MARKERS)] for index, tau in enumerate(values)}


# --- text extents ---------------------------------------------------------------------------------
@functools.cache
def _renderer() -> RendererAgg:
    return RendererAgg(8, 8, POINTS)  # at 72 dpi one pixel is one point


@functools.lru_cache(maxsize=16384)
def text_size(text: str, size: float, weight: str = "normal") -> tuple[float, float]:
    """(width, height) in points of ``text`` (several lines allowed) as Agg draws it."""
    lines = text.split("\n")
    prop = FontProperties(family="DejaVu Sans", size=size, weight=weight)
    widths = []
    for line in lines:
        ismath = line.count("$") >= 2
        width, _height, _descent = _renderer().get_text_width_height_descent(line or " ", prop, ismath)
        widths.append(width)
    return max(widths), size * (1.0 + 1.2 * (len(lines) - 1)) * 1.15


def inches(points: float) -> float:
    return points / POINTS


# --- ticks ----------------------------------------------------------------------------------------
SUPERSCRIPT = str.maketrans(
    "0123456789-", "\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079\u207b"
)


def format_tick(value: float, plain: bool) -> str:
    """``0.02`` (plain) or ``2×10⁻⁵``: Unicode superscripts rather than mathtext, which would be parsed
    at every draw and costs more than the rest of a tick."""
    if value == 0:
        return "0"
    if plain:
        text = f"{value:.6g}"
        if "e" not in text:
            return text.replace("-", "\u2212")
    exponent = math.floor(math.log10(abs(value)))
    mantissa = float(f"{value / 10**exponent:.3g}")
    if abs(mantissa) >= 10:
        mantissa, exponent = mantissa / 10, exponent + 1
    power = "10" + str(exponent).translate(SUPERSCRIPT)
    return power if mantissa == 1 else f"{mantissa:g}\u00d7{power}"


def tick_labels(values: Sequence[float]) -> list[str]:
    """Labels for a set of ticks, in one notation for the whole axis: plain decimals when every
    value lies in [0.001, 100000), powers of ten otherwise."""
    plain = all(v == 0 or 1e-3 <= abs(v) < 1e5 for v in values)
    return [format_tick(float(v), plain) for v in values]


def decimal(mantissa: float, exponent: int) -> float:
    return float(f"{mantissa:g}e{exponent}")


def within(values: Iterable[float], low: float, high: float) -> list[float]:
    slack = 1e-9 * max(abs(low), abs(high))
    return sorted({v for v in values if low - slack <= v <= high + slack})


def log_candidates(low: float, high: float) -> list[list[float]]:
    """Tick sets on a log axis, dense to sparse: 1..9, 1-2-5 and 1-3 per decade, then every 1, 2, 3...
    decades."""
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    decades = range(first, last + 1)
    sets = [
        within((decimal(m, k) for k in decades for m in mantissas), low, high)
        for mantissas in ((1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 5), (1, 3))
    ]
    for stride in (1, 2, 3, 4, 5, 10, 20, 50, 100):
        sets.append(within((decimal(1, k) for k in decades if k % stride == 0), low, high))
    return sets


def linear_candidates(low: float, high: float) -> list[list[float]]:
    """Evenly spaced round values within [low, high], dense to sparse."""
    sets = []
    for bins in range(MAX_TICKS + 2, 0, -1):
        locator = mticker.MaxNLocator(nbins=bins, steps=[1, 2, 2.5, 5, 10])
        ticks = within((float(f"{v:.12g}") for v in locator.tick_values(low, high)), low, high)
        sets.append([v for v in ticks if v > 0] if low > 0 else ticks)
    return sets


def positions(ticks: Sequence[float], low: float, high: float, length: float, log: bool) -> np.ndarray:
    values = np.asarray(ticks, dtype=float)
    if log:
        return (np.log10(values) - math.log10(low)) / (math.log10(high) - math.log10(low)) * length
    return (values - low) / (high - low) * length


def labels_fit(
    ticks: Sequence[float], low: float, high: float, length: float, size: float, horizontal: bool, log: bool
) -> bool:
    """Whether the labels of ``ticks`` fit along an axis of ``length`` points without touching."""
    if len(ticks) < 2:
        return True
    where = positions(ticks, low, high, length, log)
    gaps = np.diff(where)
    if horizontal:
        widths = np.array([text_size(label, size)[0] for label in tick_labels(ticks)])
        needed = (widths[:-1] + widths[1:]) / 2 + 0.8 * size
    else:
        needed = np.full(len(gaps), 1.7 * size)
    return bool((gaps >= needed).all())


def choose_ticks(
    low: float,
    high: float,
    length: float,
    size: float = TICK,
    horizontal: bool = True,
    log: bool = True,
    data: Sequence[float] | None = None,
) -> list[float]:
    """Readable ticks for the view [low, high] on an axis ``length`` points long.

    ``data``: preferred values (the n_samples or temperatures a sweep used), thinned until their
    labels fit. Otherwise the densest candidate set with at most MAX_TICKS ticks whose labels fit;
    an axis spanning less than a decade falls back to evenly spaced round values (1.4, 1.5, 1.6 ×
    10⁻³), and an axis too short for two labels gets one.
    """
    low, high = min(low, high), max(low, high)
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low or (log and low <= 0):
        return []
    cap = MAX_TICKS if horizontal else max(1, min(MAX_TICKS, int(length / (2.0 * size))))

    def fits(ticks: Sequence[float]) -> bool:
        return labels_fit(ticks, low, high, length, size, horizontal, log)

    if data is not None:
        values = within((float(v) for v in data if not log or v > 0), low, high)
        kept: list[float] = []
        for value in values:
            if not kept or fits([kept[-1], value]):
                kept.append(value)
            elif value == values[-1] and (len(kept) == 1 or fits([kept[-2], value])):
                kept[-1] = value  # keep the largest value rather than the one before it
        if len(kept) >= 2 or (len(kept) == 1 and len(values) == 1):
            return kept
    log_sets = log_candidates(low, high) if log else []
    for ticks in log_sets:
        if 2 <= len(ticks) <= cap and fits(ticks):
            if len(ticks) == 2 and high / low < 10:
                denser = [t for t in linear_candidates(low, high) if 3 <= len(t) <= min(cap, 5) and fits(t)]
                if denser:
                    return denser[0]
            return ticks
    for ticks in linear_candidates(low, high):
        if 2 <= len(ticks) <= cap and fits(ticks):
            return ticks
    for ticks in [*reversed(log_sets), *reversed(linear_candidates(low, high))]:
        if ticks:
            return [ticks[len(ticks) // 2]]
    return []


class ReadableLocator(mticker.Locator):
    """``choose_ticks`` for the axis it is attached to, at the axis's length in the figure."""

    def __init__(self, size: float = TICK, data: Sequence[float] | None = None) -> None:
        self.size = size
        self.data = None if data is None else sorted({float(v) for v in data if pd.notna(v)})

    def __call__(self) -> list[float]:
        low, high = self.axis.get_view_interval()
        return self.tick_values(low, high)

    def tick_values(self, vmin: float, vmax: float) -> list[float]:
        horizontal = self.axis.axis_name == "x"
        box = self.axis.axes.get_position()
        width, height = self.axis.axes.figure.get_size_inches()
        length = (box.width * width if horizontal else box.height * height) * POINTS
        log = self.axis.get_scale() == "log"
        return choose_ticks(vmin, vmax, length, self.size, horizontal, log, self.data)


class ReadableFormatter(mticker.Formatter):
    """``tick_labels``: one notation per axis."""

    def format_ticks(self, values: Sequence[float]) -> list[str]:
        return tick_labels(values)

    def __call__(self, x: float, pos: int | None = None) -> str:
        return tick_labels([x])[0]


def readable_axis(axis: Any, data: Sequence[float] | None = None) -> None:
    axis.set_major_locator(ReadableLocator(TICK, data))
    axis.set_major_formatter(ReadableFormatter())
    axis.set_minor_locator(mticker.NullLocator())


def tick_width(
    low: float, high: float, length: float, log: bool = True, data: Sequence[float] | None = None
) -> float:
    """The widest label (points) a vertical axis with this view and length will print."""
    ticks = choose_ticks(low, high, length, TICK, horizontal=False, log=log, data=data)
    return max((text_size(label, TICK)[0] for label in tick_labels(ticks)), default=0.0)


TICK_PAD = 3.5  # points between an axes and its tick labels (matplotlib's default)


def tick_height() -> float:
    return max(text_size("10\u207b\u00b3", TICK)[1], text_size("0.1", TICK)[1])


def decorate(
    ax: Axes,
    *,
    width_in: float,
    height_in: float,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    y_tick_width: float = 0.0,
    bold: bool = False,
    title_pad: float = 4.0,
) -> None:
    """Title and axis labels at fixed offsets from the axes. Matplotlib's automatic placement
    measures every tick label of every axes at each draw, most of a many-panel figure's drawing time;
    the layout already knows how much room the tick labels take."""
    if title is not None:
        ax.set_title(
            title, fontsize=TITLE, loc="left", y=1.0, pad=title_pad, fontweight="bold" if bold else "normal"
        )
    if xlabel is not None:
        ax.set_xlabel(xlabel, fontsize=LABEL)
        ax.xaxis.set_label_coords(0.5, -(TICK_PAD + tick_height() + 2.0) / (height_in * POINTS))
    if ylabel is not None:
        ax.set_ylabel(ylabel, fontsize=LABEL)
        ax.yaxis.set_label_coords(-(TICK_PAD + y_tick_width + 3.0) / (width_in * POINTS), 0.5)


def log_limits(values: Iterable[float], pad: float = 0.06) -> tuple[float, float]:
    """Limits around the positive finite ``values``, padded by ``pad`` of the span in log space."""
    array = np.asarray([v for v in values if v is not None and np.isfinite(v) and v > 0], dtype=float)
    if array.size == 0:
        return 0.1, 10.0
    low, high = math.log10(array.min()), math.log10(array.max())
    span = max(high - low, 0.3)
    middle = (low + high) / 2
    low, high = min(low, middle - span / 2), max(high, middle + span / 2)
    return 10 ** (low - pad * span), 10 ** (high + pad * span)


# --- direct labels --------------------------------------------------------------------------------
def spread(desired: Sequence[float], heights: Sequence[float], low: float, high: float) -> list[float]:
    """Centres as near ``desired`` as possible with neighbours at least their half-heights apart,
    kept within [low, high] when they fit (same order as the input)."""
    order = np.argsort(desired, kind="stable")
    centre = [float(desired[i]) for i in order]
    half = [heights[i] / 2 for i in order]
    for i in range(len(centre)):
        floor = low + half[i] if i == 0 else centre[i - 1] + half[i - 1] + half[i]
        centre[i] = max(centre[i], floor)
    if centre and centre[-1] + half[-1] > high:
        centre[-1] = high - half[-1]
        for i in range(len(centre) - 2, -1, -1):
            centre[i] = min(centre[i], centre[i + 1] - half[i + 1] - half[i])
    result = [0.0] * len(centre)
    for rank, index in enumerate(order):
        result[index] = centre[rank]
    return result


@dataclass
class Label:
    x: float  # data coordinates of the point the label belongs to
    y: float
    text: str
    colour: str


def axes_fraction(ax: Axes, x: float, y: float) -> tuple[float, float]:
    fx, fy = (ax.transScale + ax.transLimits).transform((x, y))
    return float(fx), float(fy)


def label_right(ax: Axes, labels: Sequence[Label], height_in: float, width_in: float) -> None:
    """Write ``labels`` in a column right of the axes, each at its point's height where the others
    allow, joined to its point by a thin leader; points outside the view get an arrow."""
    if not labels:
        return
    length = height_in * POINTS
    desired, heights, texts = [], [], []
    for label in labels:
        _fx, fy = axes_fraction(ax, label.x, label.y)
        text = label.text
        if fy > 1:
            text, fy = f"{text} \u2191", 1.0
        elif fy < 0:
            text, fy = f"{text} \u2193", 0.0
        desired.append(fy)
        heights.append((text_size(text, DIRECT)[1] + 1.0) / length)
        texts.append(text)
    # The column may reach a little above the axes (titles are left-aligned), never below: the last
    # x tick label reaches past the axes' right end.
    centres = spread(desired, heights, 0.0, 1.04)
    offset = 10.0 / (width_in * POINTS)  # 10 points right of the axes
    leaders, colours = [], []
    for label, text, fy, centre in zip(labels, texts, desired, centres, strict=True):
        fx, true_fy = axes_fraction(ax, label.x, label.y)
        ax.text(
            1 + offset,
            centre,
            text,
            transform=ax.transAxes,
            ha="left",
            va="center",
            fontsize=DIRECT,
            color=label.colour,
            clip_on=False,
        )
        if 0 <= true_fy <= 1:  # a leader from the point to its label
            leaders.append([(min(fx, 1.0), fy), (1 + 0.8 * offset, centre)])
            colours.append(label.colour)
    if leaders:  # one collection: a few hundred separate lines cost more than the rest of a panel
        ax.add_collection(
            LineCollection(
                leaders,
                colors=colours,
                linewidths=0.6,
                alpha=0.6,
                zorder=1,
                transform=ax.transAxes,
                clip_on=False,
            ),
            autolim=False,
        )


def label_column_width(texts: Iterable[str]) -> float:
    """Inches a right-hand label column needs (10 points of leader, the text, an arrow, a margin)."""
    widest = max((text_size(f"{t} \u2193", DIRECT)[0] for t in texts), default=0.0)
    return inches(10 + widest + 6)


# --- layout ---------------------------------------------------------------------------------------
@dataclass
class Layout:
    """A grid of panels with margins in inches: per column the space left and right of the plot, per
    row the space above and below it, and a header for the title and legend."""

    widths: list[float]
    heights: list[float]
    left: list[float]
    right: list[float]
    top: list[float]
    bottom: list[float]
    header: Header
    footer: float = 0.12
    side: float = 0.12
    figure: Figure = field(init=False)

    def __post_init__(self) -> None:
        content = sum(self.left) + sum(self.widths) + sum(self.right)
        self.side = max(self.side, (self.header.width - content) / 2)  # room for the title
        self.width = 2 * self.side + content
        self.height = self.header.height + self.footer + sum(self.top) + sum(self.heights) + sum(self.bottom)
        self.figure = Figure(figsize=(self.width, self.height), dpi=DPI)
        FigureCanvasAgg(self.figure)

    def column_x(self, column: int) -> float:
        return self.side + sum(self.left[: column + 1]) + sum(self.widths[:column]) + sum(self.right[:column])

    def row_top(self, row: int) -> float:
        """Inches from the figure's top to the top of the row's title space."""
        return self.header.height + sum(self.top[:row]) + sum(self.heights[:row]) + sum(self.bottom[:row])

    def axes(self, row: int, column: int) -> Axes:
        x0 = self.column_x(column)
        y0 = self.height - self.row_top(row) - self.top[row] - self.heights[row]
        rect = (
            x0 / self.width,
            y0 / self.height,
            self.widths[column] / self.width,
            self.heights[row] / self.height,
        )
        return self.figure.add_axes(rect)


def wrap_words(text: str, width_pt: float, size: float) -> str:
    """``text`` broken at spaces into lines no wider than ``width_pt``."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and text_size(f"{lines[-1]} {word}", size)[0] <= width_pt:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return "\n".join(lines)


@dataclass
class Header:
    """A figure's title, subtitle (wrapped to the figure) and legend of conventions."""

    title: str
    subtitle: str
    handles: list[Any]
    columns: int
    height: float  # inches
    width: float  # the narrowest figure that holds the title (inches)


def plan_header(width: float, title: str, subtitle: str, handles: Sequence[Any]) -> Header:
    """The header of a figure whose panels take ``width`` inches."""
    width = max(width, MIN_WIDTH, inches(text_size(title, SUPTITLE, "bold")[0]) + 0.4)
    subtitle = wrap_words(subtitle, (width - 0.4) * POINTS, NOTE) if subtitle else ""
    height = inches(text_size(title, SUPTITLE, "bold")[1]) + 0.16
    if subtitle:
        height += inches(text_size(subtitle, NOTE)[1]) + 0.05
    entries = [h.get_label() for h in handles]
    columns = legend_columns(width, entries)
    if entries:
        rows = math.ceil(len(entries) / columns)
        height += inches(rows * NOTE * 1.75) + 0.12
    return Header(title, subtitle, list(handles), columns, height, width)


def legend_columns(width: float, entries: Sequence[str]) -> int:
    """The most legend columns whose entries fit in ``width`` inches (split as matplotlib splits
    them: ``np.array_split``, the first columns one longer)."""
    widths = [text_size(entry, NOTE)[0] for entry in entries]
    for columns in range(max(len(entries), 1), 0, -1):
        split = [part for part in np.array_split(np.asarray(widths, dtype=float), columns) if len(part)]
        # per column: handle (2 em), pad (0.8 em), text, column spacing (1.5 em)
        if inches(sum(part.max() + 4.6 * NOTE for part in split)) <= width - 0.4:
            return columns
    return 1


def draw_header(layout: Layout) -> None:
    figure, height, header = layout.figure, layout.height, layout.header
    y = 1 - 0.1 / height
    figure.text(0.5, y, header.title, ha="center", va="top", fontsize=SUPTITLE, fontweight="bold")
    y -= (inches(text_size(header.title, SUPTITLE, "bold")[1]) + 0.06) / height
    if header.subtitle:
        figure.text(0.5, y, header.subtitle, ha="center", va="top", fontsize=NOTE, color="0.25")
        y -= (inches(text_size(header.subtitle, NOTE)[1]) + 0.04) / height
    if header.handles:
        figure.legend(
            handles=header.handles,
            loc="upper center",
            bbox_to_anchor=(0.5, y),
            ncol=header.columns,
            frameon=False,
            fontsize=NOTE,
            handlelength=2.0,
            columnspacing=1.5,
            borderaxespad=0.0,
            borderpad=0.3,
        )


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


def style_handles(data: pd.DataFrame, reference: str | None = None, zero_line: bool = False) -> list[Any]:
    """Legend entries for the marker conventions that occur in ``data``."""
    handles = [marker_handle("unbiased (declared)")]
    if (data["biased"] & ~data["failed_conformance"]).any():
        handles.append(marker_handle("biased (declared)", hollow=True))
    if data["failed_conformance"].any():
        handles.append(marker_handle("declared unbiased, bias detected (conformance fail)", "X", True, 7))
    handles += [
        marker_handle(f"\u03c4 = {tau:g}", marker, size=5) for tau, marker in tau_markers(data["tau"]).items()
    ]
    if data["heavy_tails"].any():
        label = "ring, \u26a0, dashed interval: heavy tails (interval and bias test unreliable)"
        handles.append(
            Line2D(
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
        )
    if reference:
        label = f"reference estimator ({reference})"
        handles.append(Line2D([], [], ls=(0, (4, 2)), color="0.35", lw=1, label=label))
    if zero_line:
        label = "exact, and any variance 0 or at rounding level: named above this line"
        handles.append(Line2D([], [], ls="-", color="black", lw=1, label=label))
    return handles


# --- the data -------------------------------------------------------------------------------------
def format_value(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    return text if len(text) <= 28 else text[:27] + "\u2026"


def varying(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    return [c for c in columns if c in frame and frame[c].astype(str).nunique() > 1]


def config_labels(frame: pd.DataFrame, name_column: str, columns: Sequence[str]) -> pd.Series:
    """``name`` plus ``key=value`` for the config columns that vary among that name's rows."""
    labels = frame[name_column].astype(str)
    for _name, group in frame.groupby(name_column, sort=False):
        for column in varying(group, columns):
            key = column.split(".", 1)[1] if column.startswith(("problem.", "estimator.")) else column
            values = group[column].map(lambda v, k=key: "" if pd.isna(v) else f" {k}={format_value(v)}")
            labels.loc[group.index] = labels.loc[group.index] + values
    return labels


# The numeric columns the plots read, as float64 (nullable integers and floats alike).
NUMERIC = [
    "n_samples", "n_estimates", "n_params", "cost_evals", "exact_norm", "variance", "variance_ci_low",
    "variance_ci_high", "work_variance", "work_variance_ci_low", "work_variance_ci_high", "bias_norm",
    "bias_resolution",
]  # fmt: skip
EPSILON = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23, "float64": 2.0**-52}


def rounding_variance(exact_norm: pd.Series, dtype: pd.Series) -> np.ndarray:
    """The variance a deterministic estimator can show from rounding alone: (RESOLUTION_ULPS · eps ·
    ‖∇E[f]‖)², the scale below which bench.stats treats differences as rounding (``rounding_floor``).
    A measured variance at or below it is drawn as variance 0."""
    from bench.stats import RESOLUTION_ULPS

    eps = dtype.astype(object).map(lambda d: EPSILON.get(str(d), EPSILON["float32"])).to_numpy(float)
    return (RESOLUTION_ULPS * eps * exact_norm.fillna(0.0).to_numpy(float)) ** 2


def detection_quantile(alpha: float, n_params: pd.Series) -> np.ndarray:
    """z_{1−α/(2P)} + z_{POWER}: bias_resolution in units of the mean's standard error (bench.stats)."""
    from bench.stats import POWER

    normal = statistics.NormalDist()
    power = normal.inv_cdf(POWER)
    return np.array(
        [normal.inv_cdf(1 - alpha / (2 * p)) + power if p >= 1 else np.nan for p in n_params.fillna(0)]
    )


def prepare(cells: pd.DataFrame, metadata: dict[str, Any]) -> pd.DataFrame:
    """The ok cells as a small frame of plain numpy columns: ``problem_label``, ``series`` (estimator
    and the config and settings that vary, temperature aside), ``tau``, ``label`` (series and τ where
    the estimator has several), ``colour``, ``marker``, the numbers, and the flags ``biased``,
    ``failed_conformance``, ``heavy_tails``, ``resolved`` (bias above its resolution) and ``zero``
    (variance 0, or at rounding level: ``rounding_variance``)."""
    ok = cells[cells["status"] == "ok"]
    if ok.empty:
        return pd.DataFrame()
    problem_columns = metadata.get("problem_columns")
    estimator_columns = metadata.get("estimator_columns")
    if problem_columns is None or estimator_columns is None:
        from bench.output import group_columns

        problem_columns = group_columns("problem", cells.columns)
        estimator_columns = group_columns("estimator", cells.columns)
    data = pd.DataFrame(index=ok.index)
    data["problem"] = ok["problem"].astype(object)
    data["estimator"] = ok["estimator"].astype(object)
    data["problem_label"] = config_labels(ok, "problem", problem_columns).astype(object)
    series = config_labels(ok, "estimator", [c for c in estimator_columns if c != "temperature"])
    for column in ("n_estimates", "seed", "dtype"):
        if column in ok and ok[column].astype(str).nunique() > 1:
            series = series + f" {column}=" + ok[column].astype(str)
    data["series"] = series.astype(object)
    for column in NUMERIC:
        data[column] = pd.to_numeric(ok[column], errors="coerce").astype(float) if column in ok else np.nan
    if "work_variance" not in ok:  # a table from before the column: it is variance × cost_evals
        for suffix in ("", "_ci_low", "_ci_high"):
            data[f"work_variance{suffix}"] = data[f"variance{suffix}"] * data["cost_evals"]
    tau = ok["temperature"] if "temperature" in ok else pd.Series(np.nan, index=ok.index)
    data["tau"] = pd.to_numeric(tau, errors="coerce").astype(float)
    several = data.groupby("series")["tau"].transform("nunique") > 1
    data["label"] = data["series"] + np.where(several, " \u03c4=" + data["tau"].map(lambda t: f"{t:g}"), "")
    data["colour"] = data["estimator"].map(estimator_colour)

    # Tables written before a column existed lack it: absent means "not flagged".
    def flags(column: str, value: Any) -> np.ndarray:
        return (
            (ok[column].astype(object) == value).to_numpy(bool) if column in ok else np.zeros(len(ok), bool)
        )

    data["failed_conformance"] = flags("conformance", "fail")
    data["biased"] = flags("unbiased", False) | data["failed_conformance"]
    data["heavy_tails"] = flags("clt_ok", False)
    data["resolved"] = (data["bias_norm"] > data["bias_resolution"]).to_numpy(bool)
    data["detect"] = detection_quantile(float(metadata.get("alpha", 1e-3)), data["n_params"])
    dtype = ok["dtype"] if "dtype" in ok else pd.Series("float32", index=ok.index)
    data["zero"] = (data["variance"] <= rounding_variance(data["exact_norm"], dtype)).to_numpy(bool)
    taus = tau_markers(data["tau"])
    markers = data["tau"].map(lambda t: taus.get(float(t), "o") if pd.notna(t) else "o")
    data["marker"] = np.where(data["failed_conformance"], "X", markers).astype(object)
    return data.reset_index(drop=True)


def scatter(
    ax: Axes,
    frame: pd.DataFrame,
    x: str,
    y: str,
    size: float | np.ndarray = 30,
    alpha: np.ndarray | None = None,
    zorder: float = 3,
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


# --- scorecard ------------------------------------------------------------------------------------
ROW = 0.16  # inches per estimator row in the scorecard


def wrap(items: Sequence[str], width_pt: float, size: float) -> list[str]:
    """``items`` joined by ", " into lines no wider than ``width_pt`` (an item never splits)."""
    lines: list[str] = []
    for item in items:
        if lines and text_size(f"{lines[-1]}, {item}", size)[0] <= width_pt:
            lines[-1] = f"{lines[-1]}, {item}"
        else:
            if lines:
                lines[-1] += ","
            lines.append(item)
    return lines


@dataclass
class ScorePanel:
    ranked: pd.DataFrame  # cells with a positive work variance, best first
    zero: list[str]  # labels with variance 0 (or at rounding level)
    zero_lines: list[str] = field(default_factory=list)  # ``zero`` wrapped to the panel's width


def scorecard(data: pd.DataFrame, reference: str | None) -> Figure | None:
    """Per problem (rows of panels) and n_samples (columns): the estimators ranked by work variance,
    best at the top, with 95% intervals.

    The exact estimator (and any other whose variance is 0, or at rounding level) has no place on
    a log axis and ranks above every sampled estimator: it is named above a black line across the
    top of the panel, a reference line rather than a point. The reference estimator's work variance
    is a dashed vertical line, so "better than the reference at the same budget" reads "left of the
    line". Every temperature of a relaxed estimator is its own row: the lowest-variance temperature
    is usually the most biased one, so a "best τ" row would hide the trade-off.
    """
    values = data[data["work_variance"].notna() | data["zero"]]
    if values.empty:
        return None
    width = 2.3
    problems = sorted(values["problem_label"].unique())
    n_values = sorted(values["n_samples"].unique())
    panels: dict[tuple[str, float], ScorePanel] = {}
    for (problem, n), group in values.groupby(["problem_label", "n_samples"], sort=False):
        ranked = group[~group["zero"] & (group["work_variance"] > 0)].sort_values(["work_variance", "label"])
        zero = sorted(group.loc[group["zero"], "label"].unique())
        panels[(problem, n)] = ScorePanel(ranked, zero, wrap(zero, width * POINTS - 8, TICK))

    def row_labels(ranked: pd.DataFrame) -> list[str]:
        return [
            label + (" \u26a0" if heavy else "")
            for label, heavy in zip(ranked["label"], ranked["heavy_tails"], strict=True)
        ]

    def rows_in(problem: str) -> int:
        return max(len(p.ranked) + len(p.zero_lines) for (q, _n), p in panels.items() if q == problem)

    left = []
    for n in n_values:
        texts = [t for (_p, m), panel in panels.items() if m == n for t in row_labels(panel.ranked)]
        texts += ["variance \u2248 0"]
        left.append(inches(max(text_size(t, TICK, "bold")[0] for t in texts)) + 0.12)
    tick_h = inches(text_size("10\u207b\u00b3", TICK)[1])
    title = (
        "Scorecard: estimators ranked by work variance (lower is better at a fixed budget of f evaluations)"
    )
    subtitle = (
        "work variance = variance of one estimate \u00d7 its cost evaluations of f; bars: 95% intervals "
        "(hidden by the marker when narrower); "
        "each temperature \u03c4 of a relaxed estimator is its own row"
    )
    has_reference = reference is not None and reference in set(values["estimator"])
    handles = style_handles(
        values, reference if has_reference else None, zero_line=bool(values["zero"].any())
    )
    total_width = 0.24 + sum(left) + len(n_values) * (width + 0.25)
    head = plan_header(total_width, title, subtitle, handles)
    layout = Layout(
        widths=[width] * len(n_values),
        heights=[ROW * rows_in(p) + 0.12 for p in problems],
        left=left,
        right=[0.25] * len(n_values),
        top=[inches(ROW_TITLE * 1.3 + TITLE * 1.4) + 0.1] * len(problems),
        bottom=[tick_h + inches(LABEL * 1.3) + 0.16] * len(problems),
        header=head,
    )
    draw_header(layout)
    for row_index, problem in enumerate(problems):
        in_row = [panels[(problem, n)] for n in n_values if (problem, n) in panels]
        limits = np.concatenate(
            [
                p.ranked[["work_variance", "work_variance_ci_low", "work_variance_ci_high"]]
                .to_numpy()
                .ravel()
                for p in in_row
            ]
        )
        low, high = log_limits(limits)
        layout.figure.text(
            layout.side / layout.width,
            1 - (layout.row_top(row_index) + 0.04) / layout.height,
            problem,
            ha="left",
            va="top",
            fontsize=ROW_TITLE,
            fontweight="bold",
        )
        for column, n in enumerate(n_values):
            if (problem, n) not in panels:
                continue
            ax = layout.axes(row_index, column)
            ax.set_xscale("log")
            ax.set_xlim(low, high)
            readable_axis(ax.xaxis)
            scorecard_panel(ax, panels[(problem, n)], reference, row_labels(panels[(problem, n)].ranked))
            decorate(
                ax,
                width_in=width,
                height_in=layout.heights[row_index],
                title=f"n_samples = {n:g}",
                xlabel="work variance",
            )
    return layout.figure


def scorecard_panel(ax: Axes, panel: ScorePanel, reference: str | None, labels: list[str]) -> None:
    ranked, shift = panel.ranked, len(panel.zero_lines)
    y = np.arange(1, len(ranked) + 1, dtype=float) + shift
    frame = ranked.assign(rank=y)
    for heavy, style in ((False, "-"), (True, (0, (2, 1.5)))):
        part = frame[frame["heavy_tails"] == heavy]
        if len(part):
            ax.hlines(
                part["rank"],
                part["work_variance_ci_low"],
                part["work_variance_ci_high"],
                colors=part["colour"].tolist(),
                linestyles=style,
                lw=1.6,
                zorder=2,
            )
    scatter(ax, frame, "work_variance", "rank", size=26)
    match = ranked[(ranked["estimator"] == reference) & (ranked["label"] == reference)]
    if len(match) == 1:
        ax.axvline(float(match["work_variance"].iloc[0]), color="0.35", ls=(0, (4, 2)), lw=0.9, zorder=1)
    rows = [
        (float(row), text, label == reference)
        for row, text, label in zip(y, labels, ranked["label"], strict=True)
    ]
    if shift:
        ax.axhline(shift + 0.5, color="black", lw=1.2, zorder=1)
        ax.text(
            0.02,
            (shift + 1) / 2,
            "\n".join(panel.zero_lines),
            transform=ax.get_yaxis_transform(),
            ha="left",
            va="center",
            fontsize=TICK,
            linespacing=1.15,
        )
        rows.insert(0, ((shift + 1) / 2, "variance 0", False))
    # Row names as plain texts, not tick labels: a tick is a dozen artists, and a scorecard has hundreds.
    offset = -TICK_PAD / (ax.get_position().width * ax.figure.get_figwidth() * POINTS)
    for row, text, bold in rows:
        ax.text(
            offset,
            row,
            text,
            transform=ax.get_yaxis_transform(),
            ha="right",
            va="center",
            fontsize=TICK,
            fontweight="bold" if bold else "normal",
            clip_on=False,
        )
    ax.set_yticks([])
    ax.hlines(y, 0, 1, transform=ax.get_yaxis_transform(), colors="0.93", lw=0.8, zorder=0)
    ax.set_ylim(shift + len(ranked) + 0.6, 0.4)


# --- variance curves ------------------------------------------------------------------------------
def panel_grid(count: int, max_columns: int = 3) -> tuple[int, int]:
    columns = min(max_columns, count)
    return math.ceil(count / columns), columns


@dataclass
class Curve:
    label: str
    colour: str
    x: np.ndarray  # its cells' x values, sorted
    y: np.ndarray
    low: np.ndarray  # the 95% interval of y
    high: np.ndarray

    @classmethod
    def of(cls, label: str, frame: pd.DataFrame, x: str, y: str, band: bool = True) -> Curve:
        frame = frame.sort_values(x)
        low = frame[f"{y}_ci_low"] if band else frame[y] * np.nan
        high = frame[f"{y}_ci_high"] if band else frame[y] * np.nan
        return cls(
            label,
            frame["colour"].iloc[0],
            frame[x].to_numpy(float),
            frame[y].to_numpy(float),
            low.to_numpy(float),
            high.to_numpy(float),
        )


def band_polygon(x: np.ndarray, low: np.ndarray | float, high: np.ndarray) -> np.ndarray | None:
    """The region between ``low`` and ``high`` over ``x`` as a polygon (k, 2), None if empty."""
    x = np.asarray(x, dtype=float)
    low = np.broadcast_to(np.asarray(low, dtype=float), x.shape)
    high = np.asarray(high, dtype=float)
    keep = np.isfinite(low) & np.isfinite(high)
    if keep.sum() < 2:
        return None
    x, low, high = x[keep], low[keep], high[keep]
    return np.column_stack([np.concatenate([x, x[::-1]]), np.concatenate([high, low[::-1]])])


def fill(ax: Axes, x: np.ndarray, low: np.ndarray | float, high: np.ndarray, **style: Any) -> None:
    polygon = band_polygon(x, low, high)
    if polygon is not None:
        ax.add_collection(PolyCollection([polygon], linewidths=0, **style), autolim=False)


def draw_curves(ax: Axes, groups: list[list[Curve]], lw: float = 1.3) -> list[Label]:
    """Each curve with its 95% band; identical curves with interleaved dashes, so every colour shows.
    Returns a label per group, at its last point. Solid curves and bands are drawn as one collection
    each (hundreds of separate artists would cost more than everything else in the figure)."""
    labels, solid, solid_colours, bands, band_colours = [], [], [], [], []
    for group in groups:
        for position, curve in enumerate(group):
            if len(group) == 1:
                solid.append(np.column_stack([curve.x, curve.y]))
                solid_colours.append(curve.colour)
            else:
                dashes = (4.0 * position, (4.0, 4.0 * (len(group) - 1)))
                ax.plot(curve.x, curve.y, color=curve.colour, lw=lw, ls=dashes, zorder=2)
        polygon = band_polygon(group[0].x, group[0].low, group[0].high)
        if polygon is not None:
            bands.append(polygon)
            band_colours.append(group[0].colour)
        first = group[0]
        labels.append(Label(float(first.x[-1]), float(first.y[-1]), curve_label(group), first.colour))
    if solid:
        ax.add_collection(LineCollection(solid, colors=solid_colours, linewidths=lw, zorder=2), autolim=False)
    if bands:
        ax.add_collection(
            PolyCollection(bands, facecolors=band_colours, alpha=0.18, linewidths=0, zorder=1), autolim=False
        )
    return labels


def identical_groups(curves: list[Curve]) -> list[list[Curve]]:
    """Curves with the same points (to 1e-9 relative) grouped, so none hides under another unseen."""
    groups: list[list[Curve]] = []
    for curve in curves:
        for group in groups:
            first = group[0]
            if (
                len(first.x) == len(curve.x)
                and np.allclose(first.x, curve.x, rtol=1e-9)
                and np.allclose(first.y, curve.y, rtol=1e-9, atol=0)
            ):
                group.append(curve)
                break
        else:
            groups.append([curve])
    return groups


def curve_label(group: list[Curve]) -> str:
    if len(group) == 1:
        return group[0].label
    return "\n= ".join(curve.label for curve in group) + " (identical)"


def variance_curves(data: pd.DataFrame, x: str, xlabel: str, title: str) -> Figure | None:
    """Variance of one estimate against ``x`` (cost_evals or n_samples), log-log, one line per
    estimator and temperature with its 95% band, labelled at its right end; lines with identical
    points are drawn with interleaved dashes and one joint label."""
    values = data[~data["zero"] & (data["variance"] > 0) & (data[x] > 0)]
    if values.empty or values[x].nunique() < 2:
        return None
    problems = sorted(values["problem_label"].unique())
    width = 2.7
    groups_of, notes = {}, {}
    for problem, subset in values.groupby("problem_label"):
        curves = [
            Curve.of(label, frame, x, "variance") for label, frame in subset.groupby("label", sort=True)
        ]
        groups_of[problem] = identical_groups(curves)
        zero = sorted(data.loc[(data["problem_label"] == problem) & data["zero"], "label"].unique())
        lines = wrap(["variance 0, not drawn:", *zero], width * POINTS, NOTE)
        notes[problem] = "\n".join(lines).replace(":,", ":") if zero else ""
    n_rows, n_columns = panel_grid(len(problems))
    heights, right = [], [0.0] * n_columns
    for row in range(n_rows):
        members = problems[row * n_columns : (row + 1) * n_columns]
        needed = [
            inches(sum(text_size(curve_label(g), DIRECT)[1] + 1 for g in groups_of[p])) for p in members
        ]
        heights.append(max(2.2, max(needed) * 1.05))
    for index, problem in enumerate(problems):
        column = index % n_columns
        right[column] = max(right[column], label_column_width(curve_label(g) for g in groups_of[problem]))
    columns_v = ["variance", "variance_ci_low", "variance_ci_high"]
    y_limits = {p: log_limits(s[columns_v].to_numpy().ravel()) for p, s in values.groupby("problem_label")}
    left = [0.0] * n_columns
    for index, problem in enumerate(problems):
        row, column = divmod(index, n_columns)
        label_w = inches(tick_width(*y_limits[problem], heights[row] * POINTS))
        left[column] = max(left[column], label_w + inches(LABEL * 1.4) + 0.12)
    tick_h = inches(text_size("10\u207b\u00b3", TICK)[1])
    note_lines = [
        max(
            (notes[p].count("\n") + 1 if notes[p] else 0)
            for p in problems[r * n_columns : (r + 1) * n_columns]
        )
        for r in range(n_rows)
    ]
    top = [inches(TITLE * 1.5 + NOTE * 1.25 * lines) + 0.14 for lines in note_lines]
    bottom = [tick_h + inches(LABEL * 1.3) + 0.18] * n_rows
    handles = [*style_handles(values), Patch(color="0.6", alpha=0.35, label="95% interval")]
    subtitle = (
        "one line per estimator (and temperature \u03c4), labelled at its right end; "
        "lines with identical values are drawn with interleaved dashes"
    )
    total = 0.24 + sum(left) + n_columns * width + sum(right)
    head = plan_header(total, title, subtitle, handles)
    layout = Layout([width] * n_columns, heights, left, right, top, bottom, header=head)
    draw_header(layout)
    for index, problem in enumerate(problems):
        row, column = divmod(index, n_columns)
        ax = layout.axes(row, column)
        ax.set_xscale("log")
        ax.set_yscale("log")
        x_values = values.loc[values["problem_label"] == problem, x]
        ax.set_xlim(*log_limits(x_values, pad=0.08))
        ax.set_ylim(*y_limits[problem])
        readable_axis(ax.xaxis, data=x_values if x == "n_samples" else None)
        readable_axis(ax.yaxis)
        labels = draw_curves(ax, groups_of[problem])
        scatter(ax, values[values["problem_label"] == problem], x, "variance", size=18)
        y_tick_width = tick_width(*y_limits[problem], layout.heights[row] * POINTS)
        decorate(
            ax,
            width_in=width,
            height_in=layout.heights[row],
            title=problem,
            bold=True,
            title_pad=6 + NOTE * 1.25 * note_lines[row],
            xlabel=xlabel,
            ylabel="variance of one estimate",
            y_tick_width=y_tick_width,
        )
        if notes[problem]:
            ax.text(
                0,
                1.0 + inches(4) / layout.heights[row],
                notes[problem],
                transform=ax.transAxes,
                fontsize=NOTE,
                color="0.35",
                ha="left",
                va="bottom",
                linespacing=1.1,
            )
        label_right(ax, labels, layout.heights[row], layout.widths[column])
    return layout.figure


# --- bias against variance ------------------------------------------------------------------------
def resolution_band(ax: Axes, x: np.ndarray, lowest: np.ndarray, highest: np.ndarray, bottom: float) -> None:
    """Grey below ``lowest`` (no cell resolves a bias there), lighter up to ``highest`` (some cells do
    not)."""
    fill(ax, x, bottom, lowest, color="0.78", alpha=0.55, zorder=0)
    if two_tone(lowest, highest):
        fill(ax, x, lowest, highest, color="0.88", alpha=0.55, zorder=0)


def band_handles(light: bool) -> list[Patch]:
    handles = [
        Patch(
            color="0.78",
            alpha=0.7,
            label="grey band: below every cell's bias_resolution (80% power at \u03b1)",
        )
    ]
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


def bias_vs_variance(data: pd.DataFrame) -> Figure | None:
    """Bias norm against variance per cell, log-log, one panel per problem. Grey band: below the
    cells' bias resolution (no test at this n_estimates could tell such a bias from noise); points
    whose bias is below their own resolution are faded. Marker size: n_samples; shape: τ; a thin line
    joins the cells of one estimator (and τ) across n_samples."""
    values = data[~data["zero"] & (data["variance"] > 0) & (data["bias_norm"] > 0)]
    if values.empty:
        return None
    problems = sorted(values["problem_label"].unique())
    sizes = sizes_for(values["n_samples"])
    n_rows, n_columns = panel_grid(len(problems), 3)
    width = 2.6
    labels_of = {p: sorted(s["label"].unique()) for p, s in values.groupby("problem_label")}
    right = [0.0] * n_columns
    heights = []
    for row in range(n_rows):
        members = problems[row * n_columns : (row + 1) * n_columns]
        heights.append(max(2.4, max(len(labels_of[p]) for p in members) * inches(NOTE * 1.45) + 0.1))
    for index, problem in enumerate(problems):
        column = index % n_columns
        widest = max(text_size(label, NOTE)[0] for label in labels_of[problem])
        right[column] = max(right[column], inches(widest + 3.2 * NOTE) + 0.1)
    limits = {}
    for problem, subset in values.groupby("problem_label"):
        x_limits = log_limits(subset["variance"], pad=0.08)
        y_limits = log_limits([*subset["bias_norm"], *subset["bias_resolution"]], pad=0.08)
        limits[problem] = (x_limits, y_limits)
    left = [0.0] * n_columns
    for index, problem in enumerate(problems):
        row, column = divmod(index, n_columns)
        label_w = inches(tick_width(*limits[problem][1], heights[row] * POINTS))
        left[column] = max(left[column], label_w + inches(LABEL * 1.4) + 0.12)
    tick_h = inches(text_size("10\u207b\u00b3", TICK)[1])
    handles = style_handles(values)
    handles += [
        Line2D([], [], ls="", marker="o", color="0.3", markersize=math.sqrt(s), label=f"n_samples = {n:g}")
        for n, s in sizes.items()
    ]
    handles += [
        Line2D(
            [],
            [],
            ls="",
            marker="o",
            color="0.3",
            alpha=0.3,
            markersize=6,
            label="faded: bias below the cell's resolution",
        ),
    ]
    light = False
    for _problem, subset in values.groupby("problem_label"):
        light |= two_tone(*resolution_by_variance(subset, np.ones(1)))
    handles += band_handles(light)
    title = "Bias against variance per cell"
    subtitle = (
        "bias norm \u2016mean \u2212 exact\u2016; an unbiased estimator lands in the grey band, "
        "where no bias could be told from noise at the cell's n_estimates"
    )
    total = 0.24 + sum(left) + n_columns * width + sum(right)
    head = plan_header(total, title, subtitle, handles)
    layout = Layout(
        [width] * n_columns,
        heights,
        left,
        right,
        [inches(TITLE * 1.5) + 0.12] * n_rows,
        [tick_h + inches(LABEL * 1.3) + 0.18] * n_rows,
        header=head,
    )
    draw_header(layout)
    for index, problem in enumerate(problems):
        row, column = divmod(index, n_columns)
        subset = values[values["problem_label"] == problem]
        ax = layout.axes(row, column)
        ax.set_xscale("log")
        ax.set_yscale("log")
        (x_low, x_high), (y_low, y_high) = limits[problem]
        ax.set_xlim(x_low, x_high)
        ax.set_ylim(y_low, y_high)
        readable_axis(ax.xaxis)
        readable_axis(ax.yaxis)
        grid = np.geomspace(x_low, x_high, 64)
        resolution_band(ax, grid, *resolution_by_variance(subset, grid), bottom=y_low)
        entries = []
        for label, frame in subset.groupby("label", sort=True):
            frame = frame.sort_values("n_samples")
            colour = frame["colour"].iloc[0]
            if len(frame) > 1:
                ax.plot(frame["variance"], frame["bias_norm"], color=colour, lw=0.7, alpha=0.5, zorder=2)
            entries.append(
                Line2D(
                    [],
                    [],
                    ls="",
                    marker=frame["marker"].iloc[0],
                    markersize=6,
                    color=colour,
                    markerfacecolor="white" if frame["biased"].iloc[0] else colour,
                    label=label,
                )
            )
        scatter(
            ax,
            subset,
            "variance",
            "bias_norm",
            size=subset["n_samples"].map(sizes).to_numpy(),
            alpha=np.where(subset["resolved"], 1.0, 0.3),
        )
        ax.legend(
            handles=entries,
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            frameon=False,
            fontsize=NOTE,
            handlelength=1.0,
            handletextpad=0.5,
            borderaxespad=0.0,
            labelspacing=0.35,
            borderpad=0.0,
        )
        decorate(
            ax,
            width_in=width,
            height_in=layout.heights[row],
            title=problem,
            bold=True,
            xlabel="variance of one estimate",
            ylabel="bias norm",
            y_tick_width=tick_width(y_low, y_high, layout.heights[row] * POINTS),
        )
    return layout.figure


# --- temperature ----------------------------------------------------------------------------------
@dataclass
class TemperatureRow:
    problem: str
    n_samples: float
    lines: pd.DataFrame  # cells of estimators with several temperatures
    single: pd.DataFrame  # cells of biased estimators at one temperature
    references: pd.DataFrame  # cells of unbiased estimators without a temperature sweep
    bias_groups: list[list[Curve]] = field(default_factory=list)  # the lines, identical ones grouped
    variance_groups: list[list[Curve]] = field(default_factory=list)

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

    def label_texts(self) -> tuple[list[str], list[str]]:
        """The direct labels of the bias panel and of the variance panel."""
        single = sorted(self.single["label"].unique())
        bias = [curve_label(group) for group in self.bias_groups] + single
        variance = [curve_label(group) for group in self.variance_groups] + single
        return bias, variance + sorted(self.references["label"].unique())


def temperature(data: pd.DataFrame) -> Figure | None:
    """Relaxed estimators: bias norm (left) and variance (right) against τ, one row per problem, at
    the largest n_samples with a temperature sweep (variance scales as 1/n_samples and the bias not
    at all, so the other n_samples show the same curves, shifted). Bias panel: the resolution band;
    variance panel: the unbiased estimators at the same n_samples as horizontal references."""
    swept = data[data["tau"].notna()]
    counts = swept.groupby(["problem_label", "n_samples", "series"])["tau"].nunique()
    counts = counts[counts >= 2]
    if counts.empty:
        return None
    chosen = counts.reset_index().groupby("problem_label")["n_samples"].max()
    rows = []
    for problem in sorted(chosen.index):
        n = chosen[problem]
        subset = data[(data["problem_label"] == problem) & (data["n_samples"] == n)]
        tau_count = subset.groupby("series")["tau"].transform("nunique")
        rows.append(
            TemperatureRow(
                problem,
                n,
                subset[tau_count >= 2],
                subset[(tau_count == 1) & subset["biased"]],
                subset[(tau_count <= 1) & ~subset["biased"] & ~subset["zero"] & (subset["variance"] > 0)],
            )
        )
    x_limits = log_limits(swept["tau"], pad=0.1)
    width = 2.6
    heights, bias_right, variance_right, bias_limits, variance_limits = [], 0.0, 0.0, [], []
    for row in rows:
        bias_texts, variance_texts = row.label_texts()
        bias_right = max(bias_right, label_column_width(bias_texts))
        variance_right = max(variance_right, label_column_width(variance_texts))
        needed = max(
            sum(text_size(t, DIRECT)[1] + 1 for t in texts) for texts in (bias_texts, variance_texts)
        )
        heights.append(max(2.0, inches(needed) * 1.05 + 0.1))
        bias_limits.append(
            log_limits(
                [*row.lines["bias_norm"], *row.single["bias_norm"], *row.lines["bias_resolution"]], pad=0.08
            )
        )
        core = [*row.lines["variance_ci_low"], *row.lines["variance_ci_high"], *row.single["variance"]]
        low, high = log_limits(core, pad=0.08)
        near = [v for v in row.references["variance"] if low / 30 <= v <= high * 30]
        variance_limits.append(log_limits([*core, *near], pad=0.08))
    left = [
        max(inches(tick_width(*lim, h * POINTS)) for lim, h in zip(limits, heights, strict=True))
        + inches(LABEL * 1.4)
        + 0.12
        for limits in (bias_limits, variance_limits)
    ]
    tick_h = inches(text_size("10\u207b\u00b3", TICK)[1])
    plotted = pd.concat([frame for row in rows for frame in (row.lines, row.single, row.references)])
    handles = [
        *style_handles(plotted),
        Line2D([], [], ls=(0, (5, 2)), color="0.3", lw=1, label="unbiased estimator at the same n_samples"),
    ]
    taus = np.unique(swept["tau"].to_numpy(float))
    handles += band_handles(
        any(two_tone(*resolution_by_tau(pd.concat([r.lines, r.single]), taus)) for r in rows)
    )
    title = "Relaxed estimators: bias and variance against the temperature \u03c4"
    subtitle = "faded markers: bias below the cell's resolution; \u2191 \u2193: a reference beyond the axis"
    right = [bias_right, variance_right]
    total = 0.24 + sum(left) + 2 * width + sum(right)
    head = plan_header(total, title, subtitle, handles)
    layout = Layout(
        [width, width],
        heights,
        left,
        right,
        [inches(ROW_TITLE * 1.3 + TITLE * 1.4) + 0.1] * len(rows),
        [tick_h + inches(LABEL * 1.3) + 0.18] * len(rows),
        header=head,
    )
    draw_header(layout)
    for index, row in enumerate(rows):
        layout.figure.text(
            layout.side / layout.width,
            1 - (layout.row_top(index) + 0.04) / layout.height,
            f"{row.problem}  (n_samples = {row.n_samples:g})",
            ha="left",
            va="top",
            fontsize=ROW_TITLE,
            fontweight="bold",
        )
        axes = layout.axes(index, 0), layout.axes(index, 1)
        tau_values = swept.loc[swept["problem_label"] == row.problem, "tau"]
        titles = ("bias norm \u2016mean \u2212 exact\u2016", "variance of one estimate")
        for ax, limits, heading, ylabel in zip(
            axes, (bias_limits[index], variance_limits[index]), titles, ("bias norm", "variance"), strict=True
        ):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(*x_limits)
            ax.set_ylim(*limits)
            readable_axis(ax.xaxis, data=tau_values)
            readable_axis(ax.yaxis)
            decorate(
                ax,
                width_in=width,
                height_in=layout.heights[index],
                title=heading,
                xlabel="temperature \u03c4",
                ylabel=ylabel,
                y_tick_width=tick_width(*limits, layout.heights[index] * POINTS),
            )
        temperature_row(axes, row, x_limits, layout.heights[index], width)
    return layout.figure


def temperature_row(
    axes: tuple[Axes, Axes], row: TemperatureRow, x_limits: tuple[float, float], height: float, width: float
) -> None:
    bias_ax, variance_ax = axes
    grid = np.geomspace(*x_limits, 64)
    cells = pd.concat([row.lines, row.single])
    resolution_band(bias_ax, grid, *resolution_by_tau(cells, grid), bottom=bias_ax.get_ylim()[0])
    bias_labels = draw_curves(bias_ax, row.bias_groups, lw=1.2)
    variance_labels = draw_curves(variance_ax, row.variance_groups, lw=1.2)
    shown = cells[cells["bias_norm"] > 0]
    scatter(bias_ax, shown, "tau", "bias_norm", size=22, alpha=np.where(shown["resolved"], 1.0, 0.3))
    scatter(variance_ax, cells[~cells["zero"]], "tau", "variance", size=22)
    single = row.single
    shown = single[single["bias_norm"] > 0]
    bias_labels += [
        Label(*values)
        for values in zip(shown["tau"], shown["bias_norm"], shown["label"], shown["colour"], strict=True)
    ]
    positive = single[~single["zero"]]
    variance_labels += [
        Label(*values)
        for values in zip(
            positive["tau"], positive["variance"], positive["label"], positive["colour"], strict=True
        )
    ]
    references = row.references
    if len(references):
        transform = variance_ax.get_yaxis_transform()  # x in axes fractions: the whole width
        colours = references["colour"].tolist()
        variance_ax.hlines(
            references["variance"],
            0,
            1,
            transform=transform,
            colors=colours,
            linewidths=1.0,
            linestyles=(0, (5, 2)),
            zorder=1,
        )
    for variance, label, colour in zip(
        references["variance"], references["label"], references["colour"], strict=True
    ):
        variance_labels.append(Label(x_limits[1], variance, label, colour))
    label_right(bias_ax, bias_labels, height, width)
    label_right(variance_ax, variance_labels, height, width)


# --- files ----------------------------------------------------------------------------------------
BUILDERS: dict[str, Callable[[pd.DataFrame, str | None], Figure | None]] = {
    "scorecard": scorecard,
    "bias_vs_variance": lambda data, _reference: bias_vs_variance(data),
    "variance_vs_budget": lambda data, _reference: variance_curves(
        data,
        "cost_evals",
        "f evaluations per estimate (cost_evals)",
        "Variance against the budget: cost evaluations of f per estimate",
    ),
    "variance_vs_samples": lambda data, _reference: variance_curves(
        data,
        "n_samples",
        "n_samples per estimate",
        "Variance against the samples per estimate",
    ),
    "temperature": lambda data, _reference: temperature(data),
}  # the most expensive first: the order in which parallel workers take them


def build(stem: str, data: pd.DataFrame, reference: str | None) -> Figure | None:
    with matplotlib.rc_context(apply_theme()):
        return BUILDERS[stem](data, reference)


def figures(cells: pd.DataFrame, metadata: dict[str, Any] | None = None) -> dict[str, Figure]:
    """Every figure the table has data for, by file stem (not yet saved)."""
    metadata = metadata or {}
    data = prepare(cells, metadata)
    if data.empty:
        return {}
    reference = metadata.get("reference", "reinforce")
    built = {stem: build(stem, data, reference) for stem in BUILDERS}
    return {stem: figure for stem, figure in built.items() if figure is not None}


def save(figure: Figure, directory: Path, stem: str) -> list[Path]:
    """Write ``stem``.png and ``stem``.svg atomically (a temporary file, then a rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    with matplotlib.rc_context(apply_theme()):
        for suffix in ("png", "svg"):
            path = directory / f"{stem}.{suffix}"
            handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".{suffix}", dir=directory)
            os.close(handle)
            try:
                options = (
                    {"metadata": {"Date": None}} if suffix == "svg" else {"pil_kwargs": {"compress_level": 1}}
                )
                figure.savefig(temporary, format=suffix, dpi=DPI, **options)
                os.chmod(temporary, 0o644)
                os.replace(temporary, path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            written.append(path)
    return written


def draw_figure(stem: str, data: pd.DataFrame, reference: str | None, directory: Path) -> list[Path]:
    figure = build(stem, data, reference)
    return [] if figure is None else save(figure, directory, stem)


# Drawn by a forked child while the parent draws the rest: about half the default sweep's drawing.
CHILD_SHARE = ("scorecard", "bias_vs_variance")


def can_fork() -> bool:
    """Fork where it is safe and cheap (Linux; macOS frameworks are not fork-safe) and a second core
    is ours."""
    if sys.platform != "linux" or not hasattr(os, "fork"):
        return False
    try:
        return len(os.sched_getaffinity(0)) >= 2
    except AttributeError:
        return (os.cpu_count() or 1) >= 2


def fork_drawing(stems: Sequence[str], data: pd.DataFrame, reference: str | None, directory: Path):
    """A forked child that draws ``stems`` and reports the files it wrote through a pipe:
    (pid, the pipe's reading end), or None if the fork fails. The child inherits the prepared table
    and the loaded fonts and runs only matplotlib."""
    reader, writer = os.pipe()
    gc.freeze()  # the child's collector leaves the parent's objects (and their pages) alone
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # Python >= 3.12 warns on fork
            pid = os.fork()
    except OSError:
        os.close(reader)
        os.close(writer)
        return None
    finally:
        gc.unfreeze()
    if pid == 0:  # the child: never returns, never runs the parent's exit handlers
        status = 1
        try:
            os.close(reader)
            written = [str(path) for stem in stems for path in draw_figure(stem, data, reference, directory)]
            with os.fdopen(writer, "w") as stream:
                json.dump(written, stream)
            status = 0
        finally:
            os._exit(status)
    os.close(writer)
    return pid, reader


def collect(child: tuple[int, int], abandon: bool) -> list[Path] | None:
    """The files the child wrote, or None if it failed (or was abandoned: killed)."""
    pid, reader = child
    if abandon:
        os.kill(pid, signal.SIGKILL)
    with os.fdopen(reader) as stream:
        text = stream.read()
    _, status = os.waitpid(pid, 0)
    if abandon or not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        return None
    return [Path(path) for path in json.loads(text)]


def draw_all(cells: pd.DataFrame, directory: Path, metadata: dict | None = None) -> list[Path]:
    """Draw every plot the table has data for; return the files written (PNG and SVG).

    The figures are independent: on Linux with two cores a forked child draws CHILD_SHARE while this
    process draws the rest (the default sweep's plots take ~7 s of CPU in all). Elsewhere, or if
    the child fails, this process draws everything in turn (a child's error is raised here then).
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
    child_stems = [stem for stem in BUILDERS if stem in CHILD_SHARE] if can_fork() else []
    child = fork_drawing(child_stems, data, reference, directory) if child_stems else None
    written: dict[str, list[Path]] = {}
    finished = False
    try:
        for stem in BUILDERS:
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
    return [path for stem in BUILDERS for path in written.get(stem, [])]
