"""The data the figures read: ``prepare`` turns a cells table into a small frame of plain numpy
columns, ``with_mse`` adds the mean squared error at a stated budget of f evaluations, and
``rank`` orders one problem's estimators as the scorecard shows them.

Ranking: an estimator's MSE at a budget of B evaluations of f, spent on B / cost_evals independent
estimates and averaged, is work_variance / B + bias². The bias term counts only for estimators
with a declared or detected bias; a declared-unbiased estimator that passes conformance has no bias
above its resolution, and its measured bias (noise) is not counted. Estimators fall into three
blocks, in this order: no bias declared or detected, declared unbiased but failing conformance,
declared biased. Within a block they are ordered by their lowest MSE at B over the n_samples of the
sweep, so a biased estimator never ranks above an unbiased one, and the order is the same in every
n_samples panel.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bench.summary import rounding_variance  # the summary's own scale of 'variance 0'

from .style import estimator_colour, tau_markers

BLOCKS = ("unbiased", "failed", "biased")
# The numeric columns the plots read, as float64 (nullable integers and floats alike).
NUMERIC = [
    "n_samples", "n_estimates", "n_params", "cost_evals", "exact_norm", "variance", "variance_ci_low",
    "variance_ci_high", "work_variance", "work_variance_ci_low", "work_variance_ci_high", "bias_norm",
    "bias_resolution",
]  # fmt: skip


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


def detection_quantile(alpha: float, n_params: pd.Series) -> np.ndarray:
    """z_{1−α/(2P)} + z_{POWER}: bias_resolution in units of the mean's standard error (bench.stats)."""
    from bench.stats import POWER

    normal = statistics.NormalDist()
    power = normal.inv_cdf(POWER)
    return np.array(
        [normal.inv_cdf(1 - alpha / (2 * p)) + power if p >= 1 else np.nan for p in n_params.fillna(0)]
    )


def labels_and_numbers(ok: pd.DataFrame, metadata: dict[str, Any]) -> pd.DataFrame:
    """``problem``, ``estimator``, ``problem_label``, ``series`` (estimator and the config and
    settings that vary, temperature aside), the numeric columns, ``tau`` and ``label``."""
    problem_columns = metadata.get("problem_columns")
    estimator_columns = metadata.get("estimator_columns")
    if problem_columns is None or estimator_columns is None:
        from bench.output import group_columns

        problem_columns = group_columns("problem", ok.columns)
        estimator_columns = group_columns("estimator", ok.columns)
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
    return data


def prepare(cells: pd.DataFrame, metadata: dict[str, Any]) -> pd.DataFrame:
    """The ok cells as a small frame of plain numpy columns: ``problem_label``, ``series``, ``tau``,
    ``label`` (series and τ where the estimator has several), ``colour``, ``marker``, the numbers,
    and the flags ``biased``, ``failed_conformance``, ``heavy_tails``, ``resolved`` (bias above its
    resolution) and ``zero`` (variance 0, or at rounding level: ``rounding_variance``)."""
    ok = cells[cells["status"] == "ok"]
    if ok.empty:
        return pd.DataFrame()
    data = labels_and_numbers(ok, metadata)

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


# --- mean squared error at a budget ---------------------------------------------------------------
def budget(data: pd.DataFrame) -> float:
    """The stated budget B of f evaluations: the smallest power of ten at least the largest
    cost_evals of the sweep, so that every cell's estimator fits into B at least once."""
    largest = data["cost_evals"].max() if len(data) else np.nan
    if not (np.isfinite(largest) and largest > 1):
        return 1.0
    return float(10 ** math.ceil(math.log10(largest) - 1e-9))


def with_mse(data: pd.DataFrame, b: float) -> pd.DataFrame:
    """``data`` with ``variance_term`` (work_variance / B, 0 for variance 0, with its 95% interval),
    ``bias_term`` (bias_norm² for estimators with a declared or detected bias, else 0) and their sum
    ``mse_at_budget`` (with ``mse_at_budget_ci_low``/``_high``: the variance term's interval)."""
    frame = data.copy()
    zero = frame["zero"].to_numpy(bool)
    for suffix in ("", "_ci_low", "_ci_high"):
        term = (frame[f"work_variance{suffix}"] / b).to_numpy(float)
        frame[f"variance_term{suffix}"] = np.where(zero, 0.0, term)
    frame["bias_term"] = np.where(frame["biased"], frame["bias_norm"].fillna(0.0) ** 2, 0.0)
    for suffix in ("", "_ci_low", "_ci_high"):
        frame[f"mse_at_budget{suffix}"] = frame[f"variance_term{suffix}"] + frame["bias_term"]
    return frame


@dataclass
class Ranking:
    """One problem's estimators (labels) as the scorecard orders them."""

    problem: str
    blocks: dict[str, list[str]]  # block → labels, best (lowest MSE at B) first
    zero: list[str]  # no bias, and variance 0 (or at rounding level) in every cell: no place on a log axis
    key: dict[str, float]  # label → its lowest MSE at B over the n_samples

    @property
    def order(self) -> list[str]:
        return [label for block in BLOCKS for label in self.blocks[block]]

    def best(self, count: int, reference: str | None = None) -> list[str]:
        """The first ``count`` estimators without a bias, and the reference estimator if it is drawn."""
        chosen = self.blocks["unbiased"][:count]
        if reference is not None and reference in self.order and reference not in chosen:
            chosen.append(reference)
        return chosen


def rank(frame: pd.DataFrame, problem: str) -> Ranking:
    """The ranking of one problem's cells (``with_mse`` columns): blocks by bias, within a block by
    the lowest MSE at B over the n_samples."""
    cells = frame[frame["work_variance"].notna() | frame["zero"]]
    blocks: dict[str, list[str]] = {block: [] for block in BLOCKS}
    zero, key = [], {}
    for label, group in cells.groupby("label", sort=True):
        if group["failed_conformance"].any():
            block = "failed"
        elif group["biased"].any():
            block = "biased"
        elif group["zero"].all():
            zero.append(str(label))
            continue
        else:
            block = "unbiased"
        key[str(label)] = float(group["mse_at_budget"].min())
        blocks[block].append(str(label))
    for labels in blocks.values():
        labels.sort(key=lambda label: (key[label], label))
    return Ranking(problem, blocks, zero, key)


def rankings(data: pd.DataFrame, b: float | None = None) -> dict[str, Ranking]:
    """Every problem's ranking at the budget ``b`` (default: ``budget(data)``)."""
    frame = with_mse(data, budget(data) if b is None else b)
    return {problem: rank(group, problem) for problem, group in frame.groupby("problem_label", sort=True)}
