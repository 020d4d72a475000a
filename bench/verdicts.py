"""The columns decided over a whole sweep when its tables are merged: the conformance verdicts
(Holm's procedure over the sweep's bias p-values), work and time variance, and the ratios to the
reference estimator with their conservative intervals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def holm_rejections(pvalues: pd.Series, alpha: float) -> pd.Series:
    """Holm's step-down procedure (Holm 1979): rejects H_(i) while p_(i) ≤ α/(m − i + 1), i = 1..m in
    increasing order of p. Controls the family-wise error rate at α for any dependence between the
    tests, and rejects everything Bonferroni (p ≤ α/m) rejects."""
    ordered = pvalues.sort_values(kind="stable")
    m = len(ordered)
    rejected = pd.Series(False, index=pvalues.index)
    for rank, (index, pvalue) in enumerate(ordered.items()):
        if not pvalue <= alpha / (m - rank):
            break
        rejected[index] = True
    return rejected


def conformance(table: pd.DataFrame, alpha: float) -> pd.Series:
    """``pass`` | ``fail`` | ``unreliable`` for ok cells of declared-unbiased estimators, ``n/a`` for
    declared-biased ones, null for skipped and failed cells.

    Holm's procedure at family-wise level ``alpha`` over the bias p-values of every ok,
    declared-unbiased cell of the sweep whose normal approximation holds (``clt_ok``): the chance
    that a sweep of honest estimators shows any ``fail`` is at most ``alpha``. A cell with heavy tails
    (clt_ok false) is ``unreliable``: its p-value can neither clear nor convict the estimator.
    """
    verdict = pd.Series(pd.NA, index=table.index, dtype="string")
    ok = table["status"] == "ok"
    verdict[ok & (table["unbiased"] == False)] = "n/a"  # noqa: E712 (a nullable boolean)
    declared = ok & (table["unbiased"] == True)  # noqa: E712
    reliable = declared & (table["clt_ok"] == True)  # noqa: E712
    verdict[declared & ~reliable] = "unreliable"
    rejected = holm_rejections(table.loc[reliable, "bias_pvalue"].astype(float), alpha)
    verdict[rejected.index] = np.where(rejected, "fail", "pass")
    return verdict


def derive(
    table: pd.DataFrame, configs: pd.DataFrame, *, alpha: float, reference: str | None
) -> pd.DataFrame:
    """Fill the sweep-level columns: conformance, work and time variance, ratios to the reference."""
    table = table.copy()
    table["conformance"] = conformance(table, alpha)
    cost = table["cost_evals"].astype("float64")
    for suffix in ("", "_ci_low", "_ci_high"):
        table[f"work_variance{suffix}"] = table[f"variance{suffix}"] * cost
    table["time_variance"] = table["variance"] / table["estimates_per_s"]
    if reference is None:
        return table
    from bench.output import group_columns  # the registry's schema: imported when first needed

    problem_columns = group_columns("problem", configs.columns)
    key_columns = ["problem", "n_samples", "n_estimates", "seed", "dtype"]
    frame = pd.concat([table[key_columns], configs[problem_columns]], axis=1)
    keys = pd.Series(
        ["\x1f".join(map(str, values)) for values in frame.itertuples(index=False)], index=table.index
    )
    ok = (table["status"] == "ok").to_numpy(dtype=bool)
    is_reference = ok & (table["estimator"] == reference).to_numpy(dtype=bool)
    first = pd.Series(np.flatnonzero(is_reference), index=keys[is_reference]).groupby(level=0).first()
    match = keys.map(first).to_numpy(dtype=float)  # position of the row's reference cell, NaN if none
    rows = np.flatnonzero(ok & ~np.isnan(match))
    refs = match[rows].astype(int)
    table.loc[table.index[rows], "reference"] = table["cell"].to_numpy()[refs]
    variance = table["variance"].to_numpy(dtype=float)
    stderr = table["variance_stderr"].to_numpy(dtype=float)
    ratio, low, high = ratio_interval(variance[rows], stderr[rows], variance[refs], stderr[refs])
    same = rows == refs
    ratio, low, high = (np.where(same, 1.0, values) for values in (ratio, low, high))
    cost_values = cost.to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        work = np.where(cost_values[refs] > 0, cost_values[rows] / cost_values[refs], np.nan)
    index = table.index[rows]
    for prefix, scale in (("variance_ratio", 1.0), ("work_ratio", work)):
        for suffix, values in (("", ratio), ("_ci_low", low), ("_ci_high", high)):
            table.loc[index, prefix + suffix] = values * scale
    return table


def ratio_interval(
    variance: np.ndarray, stderr: np.ndarray, reference: np.ndarray, reference_stderr: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """variance / reference with a conservative 95% interval, elementwise (NaN where either is 0).

    On the log scale the two variances have standard errors s_a = se_a/V_a and s_b = se_b/V_b. The
    two cells share their noise (common random numbers), so their estimates are correlated with an
    unknown sign; sd(log V_a − log V_b) ≤ s_a + s_b for every correlation (Cauchy–Schwarz), and the
    interval exp(log ratio ± 1.96 (s_a + s_b)) is therefore conservative whatever it is.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        valid = (variance > 0) & (reference > 0)
        ratio = np.where(valid, variance / reference, np.nan)
        spread = stderr / variance + reference_stderr / reference
        factor = np.exp(1.959963984540054 * spread)
        return ratio, np.where(valid, ratio / factor, np.nan), np.where(valid, ratio * factor, np.nan)


def variance_ratio(row: pd.Series, ref: pd.Series, same: bool = False) -> tuple[float | None, float, float]:
    """``ratio_interval`` for one pair of cells rows; (None, nan, nan) when it is undefined."""
    if same:
        return 1.0, 1.0, 1.0
    values = [np.array([float(x)]) for x in (row["variance"], row["variance_stderr"], ref["variance"],
                                             ref["variance_stderr"])]  # fmt: skip
    ratio, low, high = (float(v[0]) for v in ratio_interval(*values))
    return (None if math.isnan(ratio) else ratio), low, high
