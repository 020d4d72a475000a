"""Text sizes and extents: every layout is computed in inches from measured text extents.

Text uses DejaVu Sans (shipped with matplotlib), so the measured extents hold on every machine.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.font_manager import FontProperties

DPI = 110
TICK, LABEL, TITLE, ROW_TITLE, SUPTITLE, NOTE, DIRECT = 8.0, 9.0, 9.0, 10.5, 12.0, 8.0, 8.0
POINTS = 72.0  # points per inch


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


def text_width(texts: Sequence[str], size: float, weight: str = "normal") -> float:
    """The widest of ``texts`` in inches (0 for none)."""
    return inches(max((text_size(t, size, weight)[0] for t in texts), default=0.0))


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


def wrap_words(text: str, width_pt: float, size: float) -> str:
    """``text`` broken at spaces into lines no wider than ``width_pt``."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and text_size(f"{lines[-1]} {word}", size)[0] <= width_pt:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return "\n".join(lines)
