"""Readable axes: ticks chosen at draw time from the axis's length, labels in one notation per figure.

``choose_ticks`` takes the densest set of decades, 1-2-5 or 1-3 steps (or, on an axis spanning less
than a decade, evenly spaced round values) whose labels fit without touching. ``figure_notation``
picks one notation for every axis of a figure: plain decimals (``0.02``) when every tick of every
axis can be written so, powers of ten (``2×10⁻⁵``) otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib.ticker as mticker
import numpy as np
import pandas as pd

from .text import POINTS, TICK, text_size

MAX_TICKS = 6
PLAIN_RANGE = (1e-3, 1e5)  # |values| written as plain decimals
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


def plain_values(values: Iterable[float]) -> bool:
    """Whether every value can be written as a plain decimal."""
    low, high = PLAIN_RANGE
    return all(v == 0 or low <= abs(v) < high for v in values)


def tick_labels(values: Sequence[float], plain: bool | None = None) -> list[str]:
    """Labels for a set of ticks in one notation: ``plain`` decimals, powers of ten, or (None) plain
    when every value lies in [0.001, 100000)."""
    if plain is None:
        plain = plain_values(values)
    return [format_tick(float(v), plain) for v in values]


def decimal(mantissa: float, exponent: int) -> float:
    return float(f"{mantissa:g}e{exponent}")


def within(values: Iterable[float], low: float, high: float) -> list[float]:
    slack = 1e-9 * max(abs(low), abs(high))
    return sorted({v for v in values if low - slack <= v <= high + slack})


def log_candidates(low: float, high: float, decades_first: bool = False) -> list[list[float]]:
    """Tick sets on a log axis, dense to sparse: 1..9, 1-2-5 and 1-3 per decade, then every 1, 2, 3...
    decades. ``decades_first`` (labels in powers of ten, where ``2×10⁰`` reads worse than a sparser
    ``10⁰``): the sets of whole decades come first."""
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    decades = range(first, last + 1)
    steps = [
        within((decimal(m, k) for k in decades for m in mantissas), low, high)
        for mantissas in ((1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 5), (1, 3))
    ]
    strides = [
        within((decimal(1, k) for k in decades if k % stride == 0), low, high)
        for stride in (1, 2, 3, 4, 5, 10, 20, 50, 100)
    ]
    return strides + steps if decades_first else steps + strides


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
    ticks: Sequence[float],
    low: float,
    high: float,
    length: float,
    size: float,
    horizontal: bool,
    log: bool,
    plain: bool | None = None,
) -> bool:
    """Whether the labels of ``ticks`` fit along an axis of ``length`` points without touching."""
    if len(ticks) < 2:
        return True
    where = positions(ticks, low, high, length, log)
    gaps = np.diff(where)
    if horizontal:
        widths = np.array([text_size(label, size)[0] for label in tick_labels(ticks, plain)])
        needed = (widths[:-1] + widths[1:]) / 2 + 0.8 * size
    else:
        needed = np.full(len(gaps), 1.7 * size)
    return bool((gaps >= needed).all())


def thinned(values: Sequence[float], fits: Any) -> list[float]:
    """Preferred tick values thinned, left to right, until neighbouring labels fit; the largest value
    is kept rather than the one before it."""
    kept: list[float] = []
    for value in values:
        if not kept or fits([kept[-1], value]):
            kept.append(value)
        elif value == values[-1] and (len(kept) == 1 or fits([kept[-2], value])):
            kept[-1] = value
    return kept


def choose_ticks(
    low: float,
    high: float,
    length: float,
    size: float = TICK,
    horizontal: bool = True,
    log: bool = True,
    data: Sequence[float] | None = None,
    plain: bool | None = None,
) -> list[float]:
    """Readable ticks for the view [low, high] on an axis ``length`` points long.

    ``data``: preferred values (the n_samples or temperatures a sweep used), thinned until their
    labels fit. Otherwise the densest candidate set with at most MAX_TICKS ticks whose labels fit;
    an axis spanning less than a decade falls back to evenly spaced round values (1.4, 1.5, 1.6 ×
    10⁻³), and an axis too short for two labels gets one. ``plain``: the figure's notation.
    """
    low, high = min(low, high), max(low, high)
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low or (log and low <= 0):
        return []
    cap = MAX_TICKS if horizontal else max(1, min(MAX_TICKS, int(length / (2.0 * size))))

    def fits(ticks: Sequence[float]) -> bool:
        return labels_fit(ticks, low, high, length, size, horizontal, log, plain)

    if data is not None:
        values = within((float(v) for v in data if not log or v > 0), low, high)
        kept = thinned(values, fits)
        if len(kept) >= 2 or (len(kept) == 1 and len(values) == 1):
            return kept
    log_sets = log_candidates(low, high, decades_first=plain is False) if log else []
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


@dataclass(frozen=True)
class AxisSpec:
    """An axis as the layout plans it, before the figure exists: view, length (points), direction."""

    low: float
    high: float
    length: float
    horizontal: bool
    data: tuple[float, ...] | None = None
    log: bool = True

    def ticks(self, plain: bool | None) -> list[float]:
        return choose_ticks(
            self.low, self.high, self.length, TICK, self.horizontal, self.log, self.data, plain
        )

    def label_width(self, plain: bool | None) -> float:
        """The widest tick label (points) this axis prints."""
        return max(
            (text_size(label, TICK)[0] for label in tick_labels(self.ticks(plain), plain)), default=0.0
        )


def preferred(data: Iterable[float] | None) -> tuple[float, ...] | None:
    return None if data is None else tuple(sorted({float(v) for v in data if pd.notna(v)}))


def figure_notation(specs: Iterable[AxisSpec]) -> bool:
    """One notation for all axes of a figure: True (plain decimals) when every tick of every axis,
    chosen with plain labels, lies in [0.001, 100000); False (powers of ten) otherwise."""
    return all(plain_values(spec.ticks(True)) for spec in specs)


class ReadableLocator(mticker.Locator):
    """``choose_ticks`` for the axis it is attached to, at the axis's length in the figure."""

    def __init__(self, size: float = TICK, data: Sequence[float] | None = None, plain: bool | None = None):
        self.size = size
        self.data = preferred(data)
        self.plain = plain

    def __call__(self) -> list[float]:
        low, high = self.axis.get_view_interval()
        return self.tick_values(low, high)

    def tick_values(self, vmin: float, vmax: float) -> list[float]:
        horizontal = self.axis.axis_name == "x"
        box = self.axis.axes.get_position()
        width, height = self.axis.axes.figure.get_size_inches()
        length = (box.width * width if horizontal else box.height * height) * POINTS
        log = self.axis.get_scale() == "log"
        return choose_ticks(vmin, vmax, length, self.size, horizontal, log, self.data, self.plain)


class ReadableFormatter(mticker.Formatter):
    """``tick_labels`` in the figure's notation (None: one notation per axis)."""

    def __init__(self, plain: bool | None = None) -> None:
        self.plain = plain

    def format_ticks(self, values: Sequence[float]) -> list[str]:
        return tick_labels(values, self.plain)

    def __call__(self, x: float, pos: int | None = None) -> str:
        return tick_labels([x], self.plain)[0]


def readable_axis(axis: Any, data: Sequence[float] | None = None, plain: bool | None = None) -> None:
    axis.set_major_locator(ReadableLocator(TICK, data, plain))
    axis.set_major_formatter(ReadableFormatter(plain))
    axis.set_minor_locator(mticker.NullLocator())


def tick_width(
    low: float,
    high: float,
    length: float,
    log: bool = True,
    data: Sequence[float] | None = None,
    plain: bool | None = None,
) -> float:
    """The widest label (points) a vertical axis with this view and length will print."""
    return AxisSpec(low, high, length, False, preferred(data), log).label_width(plain)


def tick_height() -> float:
    return max(text_size("10\u207b\u00b3", TICK)[1], text_size("0.1", TICK)[1])


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


def log_axes(
    ax: Any,
    x: tuple[float, float],
    y: tuple[float, float] | None,
    plain: bool,
    setting: Sequence[float] | None = None,
) -> None:
    """Log scales, limits and readable ticks in the figure's notation (``y`` None: no y axis set).
    ``setting``: the x axis shows a setting (n_samples, τ) rather than a measured value: ticks at
    these values where they fit, labelled in their own notation (plain numbers)."""
    ax.set_xscale("log")
    ax.set_xlim(*x)
    readable_axis(ax.xaxis, data=setting, plain=plain if setting is None else None)
    if y is not None:
        ax.set_yscale("log")
        ax.set_ylim(*y)
        readable_axis(ax.yaxis, plain=plain)
