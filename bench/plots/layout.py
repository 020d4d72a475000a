"""Figure layout in inches from measured text extents (no tight bounding box): a grid of panels with
per-column and per-row margins, a header (title, reading guide, legend of conventions), titles and
axis labels at fixed offsets, and direct labels in a column right of a panel.

Labels are never clipped, panels keep a fixed size, and a figure is drawn once per file.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from .style import TICK_PAD
from .text import DIRECT, DPI, LABEL, NOTE, POINTS, ROW_TITLE, SUPTITLE, TITLE, inches, text_size, wrap_words
from .ticks import tick_height

MIN_WIDTH = 7.0  # inches: a one-panel figure still has room for its title and a legend in columns


# --- the header -----------------------------------------------------------------------------------
@dataclass
class Header:
    """A figure's title, subtitle (wrapped to the figure) and legend of conventions."""

    title: str
    subtitle: str
    handles: list[Any]
    columns: int
    height: float  # inches
    width: float  # the narrowest figure that holds the title (inches)


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


def plan_header(width: float, title: str, subtitle: str, handles: Sequence[Any]) -> Header:
    """The header of a figure whose panels take ``width`` inches."""
    width = max(width, MIN_WIDTH, inches(text_size(title, SUPTITLE, "bold")[0]) + 0.4)
    subtitle = "\n".join(wrap_words(line, (width - 0.4) * POINTS, NOTE) for line in subtitle.split("\n"))
    height = inches(text_size(title, SUPTITLE, "bold")[1]) + 0.16
    if subtitle:
        height += inches(text_size(subtitle, NOTE)[1]) + 0.05
    entries = [h.get_label() for h in handles]
    columns = legend_columns(width, entries)
    if entries:
        rows = math.ceil(len(entries) / columns)
        height += inches(rows * NOTE * 1.75) + 0.12
    return Header(title, subtitle, list(handles), columns, height, width)


# --- the grid -------------------------------------------------------------------------------------
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

    def axes(self, row: int, column: int, height: float | None = None) -> Axes:
        """The panel at (row, column); ``height``: shorter than the row, aligned to its top."""
        height = self.heights[row] if height is None else height
        x0 = self.column_x(column)
        y0 = self.height - self.row_top(row) - self.top[row] - height
        rect = (
            x0 / self.width,
            y0 / self.height,
            self.widths[column] / self.width,
            height / self.height,
        )
        return self.figure.add_axes(rect)

    def text(self, x_in: float, top_in: float, text: str, **style: Any) -> None:
        """A figure text whose top-left corner lies ``x_in`` from the left, ``top_in`` from the top."""
        style = {"ha": "left", "va": "top", **style}
        self.figure.text(x_in / self.width, 1 - top_in / self.height, text, **style)

    def row_title(self, row: int, text: str, x_in: float | None = None) -> None:
        """A bold title above a row of panels."""
        x_in = self.side if x_in is None else x_in
        self.text(x_in, self.row_top(row) + 0.04, text, fontsize=ROW_TITLE, fontweight="bold")


def panel_grid(count: int, max_columns: int = 3) -> tuple[int, int]:
    columns = min(max_columns, count)
    return math.ceil(count / columns), columns


def row_title_space() -> float:
    """Inches above a row of panels for a row title and the panels' titles."""
    return inches(ROW_TITLE * 1.3 + TITLE * 1.4) + 0.1


def x_label_space() -> float:
    """Inches below a panel for its x tick labels and x label."""
    return inches(tick_height() + LABEL * 1.3) + 0.18


def y_label_space(tick_label_width: float) -> float:
    """Inches left of a panel for its y tick labels (``tick_label_width`` points) and y label."""
    return inches(tick_label_width + LABEL * 1.4) + 0.12


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


def placed_labels(
    ax: Axes, labels: Sequence[Label], height_in: float
) -> list[tuple[Label, str, float, float]]:
    """Each label with its text (an arrow when its point is outside the view), the height of its
    point and the centre it gets in a column that keeps the texts apart (axes fractions)."""
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
    return list(zip(labels, texts, desired, centres, strict=True))


def label_right(ax: Axes, labels: Sequence[Label], height_in: float, width_in: float) -> None:
    """Write ``labels`` in a column right of the axes, each at its point's height where the others
    allow, joined to its point by a thin leader; points outside the view get an arrow."""
    if not labels:
        return
    offset = 10.0 / (width_in * POINTS)  # 10 points right of the axes
    leaders, colours = [], []
    for label, text, fy, centre in placed_labels(ax, labels, height_in):
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
        fx, true_fy = axes_fraction(ax, label.x, label.y)
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


def labels_height(texts: Iterable[str]) -> float:
    """Inches a column of direct labels takes."""
    return inches(sum(text_size(t, DIRECT)[1] + 1 for t in texts))


def note_above(ax: Axes, text: str, height_in: float) -> None:
    """A grey note just above a panel, under its title."""
    ax.text(
        0,
        1.0 + inches(4) / height_in,
        text,
        transform=ax.transAxes,
        fontsize=NOTE,
        color="0.35",
        ha="left",
        va="bottom",
        linespacing=1.1,
    )
