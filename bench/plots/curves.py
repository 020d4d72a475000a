"""Lines with 95% bands: one per estimator (and temperature), identical ones drawn with interleaved
dashes and one joint label, context lines in grey."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection, PolyCollection

from .layout import Label
from .style import GREY_LINE


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


def draw_grey(ax: Axes, frame: pd.DataFrame, x: str, y: str) -> None:
    """Context lines: thin, grey, unlabelled, below everything else (a single cell: a grey dot)."""
    lines, dots = [], []
    for _label, cells in frame.groupby("label", sort=True):
        cells = cells.sort_values(x)
        points = np.column_stack([cells[x].to_numpy(float), cells[y].to_numpy(float)])
        (lines if len(points) > 1 else dots).append(points)
    if lines:
        ax.add_collection(LineCollection(lines, colors=GREY_LINE, linewidths=0.8, zorder=0.5), autolim=False)
    if dots:
        points = np.concatenate(dots)
        ax.scatter(points[:, 0], points[:, 1], s=6, color=GREY_LINE, zorder=0.5, linewidths=0)


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
