"""The summary printed at the end of a sweep (and saved as out/summary.txt): short enough to read
(the default sweep's fits in 60 lines), with the full detail left to the tables.

Per problem (and problem config), at one n_samples: a header with the exact gradient's norm and the
estimators that do not apply; the TOP estimators without a detected bias, ranked by
``work_variance`` (variance × cost evaluations: the variance at a fixed budget of evaluations of f),
each with its 95% interval, its ratio to the reference estimator, its cost and a bias verdict; and
one line naming the rest in rank order, the estimators with a detected bias apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

TOP = 3  # ranked lines per problem; the rest are named in one line


def number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.2g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"


def verdict(row: pd.Series, alpha: float) -> str:
    """The bias verdict of one ok cell: a conformance failure, a bias beyond the test's resolution,
    no bias above the resolution, or unreliable (heavy tails)."""
    if row["conformance"] == "fail":
        return f"CONFORMANCE FAIL: bias {number(row['bias_norm'])} (p={row['bias_pvalue']:.1g})"
    if row["clt_ok"] is False or row["clt_ok"] == False:  # noqa: E712 (nullable boolean)
        return f"unreliable: heavy tails (kurtosis {row['kurtosis_max']:.3g})"
    if row["unbiased"] == False and row["bias_pvalue"] < alpha:  # noqa: E712
        return f"biased: bias {number(row['bias_norm'])}, resolution {number(row['bias_resolution'])}"
    return f"no bias above {number(row['bias_resolution'])}"


EPSILON = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23, "float64": 2.0**-52}
RESOLUTION_ULPS = 64  # bench.stats.RESOLUTION_ULPS (not imported: the summary stays free of torch)


def rounding_variance(exact_norm: pd.Series, dtype: pd.Series) -> np.ndarray:
    """The variance a deterministic estimator can show from rounding alone: (RESOLUTION_ULPS · eps ·
    ‖∇E[f]‖)², the scale below which bench.stats treats differences as rounding (``rounding_floor``).
    A measured variance at or below it is variance 0, in the summary as in the plots."""
    eps = dtype.astype(object).map(lambda d: EPSILON.get(str(d), EPSILON["float32"])).to_numpy(float)
    return (RESOLUTION_ULPS * eps * exact_norm.astype(float).fillna(0.0).to_numpy(float)) ** 2


def problem_blocks(ok: pd.DataFrame, problem_columns: Sequence[str]) -> list[tuple[str, pd.DataFrame]]:
    """(label, rows) per problem and the config values that vary within that problem."""
    blocks = []
    for problem, rows in ok.groupby("problem", sort=True):
        varying = [c for c in problem_columns if c in rows and rows[c].astype(str).nunique() > 1]
        if not varying:
            blocks.append((str(problem), rows))
            continue
        for values, sub in rows.groupby(varying, sort=True, dropna=False):
            values = values if isinstance(values, tuple) else (values,)
            label = " ".join(f"{c}={v}" for c, v in zip(varying, values, strict=True))
            blocks.append((f"{problem} {label}", sub))
    return blocks


def chosen_samples(rows: pd.DataFrame) -> int:
    """The n_samples a block is ranked at: the one nearest 4 on a log scale (ties: the larger)."""
    values = sorted(int(v) for v in rows["n_samples"].unique())
    return min(values, key=lambda v: (abs(math.log(v / 4)), -v))


def short_label(row: pd.Series) -> str:
    """The estimator, with its temperature where it has one (τ=0.5)."""
    if "temperature" in row and not pd.isna(row["temperature"]):
        return f"{row['estimator']}(τ={row['temperature']:g})"
    return str(row["estimator"])


def block_lines(
    label: str, rows: pd.DataFrame, skipped: pd.DataFrame, alpha: float, reference: str | None
) -> list[str]:
    n_samples = chosen_samples(rows)
    at = rows[rows["n_samples"] == n_samples]
    head = f"{label}  n_samples={n_samples}  ‖∇‖={number(rows['exact_norm'].iloc[0])}"
    if "exact_source" in rows and (rows["exact_source"] == "estimated").any():
        head += " (estimated reference)"  # no exact gradient: bias against an estimate (bench.reference)
    absent = sorted(set(skipped["estimator"]) - set(rows["estimator"]))
    if len(absent) > 6:
        head += f"  ({len(absent)} estimators do not apply)"
    elif absent:
        head += f"  (not applicable: {', '.join(absent)})"
    candidates = at[at["estimator"] != "exact"]
    zero = candidates["variance"].astype(float).to_numpy() <= rounding_variance(
        candidates["exact_norm"], candidates["dtype"]
    )
    exact_here = sorted({short_label(row) for _, row in candidates[zero].iterrows()})
    candidates = candidates[~zero]
    # One entry per estimator: among its settings (temperatures...), the one with the lowest MSE.
    best = candidates.assign(_mse=candidates["mse"].astype(float)).sort_values("_mse", kind="stable")
    best = best.groupby("estimator", sort=False).head(1)
    best = best.assign(_rank=best["work_variance"].astype(float)).sort_values("_rank", kind="stable")
    verdicts = best.apply(lambda r: verdict(r, alpha), axis=1)
    detected = verdicts.str.startswith(("biased", "CONFORMANCE"))
    lines = [head]
    if exact_here:
        lines.append(f"  exact at n_samples={n_samples} (variance 0 to rounding): {', '.join(exact_here)}")
    for rank, (index, row) in enumerate(best[~detected].head(TOP).iterrows(), start=1):
        ci = f"[{number(row['work_variance_ci_low'])}, {number(row['work_variance_ci_high'])}]"
        ratio = "" if pd.isna(row["work_ratio"]) else f"×{number(row['work_ratio'])}"
        lines.append(
            f"  {rank}. {short_label(row):<22} {number(row['work_variance']):>8} {ci:<19} {ratio:<9}"
            f"{int(row['cost_evals']):>5} evals  {verdicts[index]}"
        )
    rest = [short_label(row) for _, row in best[~detected].iloc[TOP:].iterrows()]
    flagged = [short_label(row) for _, row in best[detected].iterrows()]
    tail = [text for text in (", ".join(rest), "biased: " + ", ".join(flagged) if flagged else "") if text]
    if tail:
        lines.append("     then: " + "; ".join(tail))
    timed = best[~detected].assign(_time=best["time_variance"].astype(float)).dropna(subset=["_time"])
    if len(timed) > 1:
        fastest = timed.sort_values("_time", kind="stable").head(TOP)
        ranked = ", ".join(f"{short_label(row)} {number(row['_time'])}" for _, row in fastest.iterrows())
        lines.append(f"     at equal wall-clock (time_variance, variance·s): {ranked}")
    return lines


def summarize_sweep(table: pd.DataFrame, *, alpha: float = 1e-3, reference: str | None = "reinforce") -> str:
    """The end-of-sweep summary of a merged cells table."""
    from bench.output import group_columns, usable_cores

    problem_columns = group_columns("problem", table.columns)
    ok = table[table["status"] == "ok"]
    skipped = table[table["status"] == "skipped"]
    lines: list[str] = []
    failures = ok[ok["conformance"] == "fail"]
    if len(failures):
        lines.append(
            f"CONFORMANCE FAILURES (declared unbiased, bias test rejects; family-wise alpha={alpha:g}):"
        )
        for _, row in failures.iterrows():
            lines.append(
                f"  {row['problem']} × {short_label(row)} (n_samples={row['n_samples']}): "
                f"bias {number(row['bias_norm'])}, p={row['bias_pvalue']:.2g}, cell {row['cell']}"
            )
    ratio = f"; ×: work ratio to {reference}" if reference else ""
    lines.append(
        f"per problem, the {TOP} estimators without a detected bias with the lowest work_variance "
        f"(variance × cost evals){ratio}; [95% CI]; bias verdicts at alpha={alpha:g}"
    )
    for label, rows in problem_blocks(ok, problem_columns):
        problem_skips = skipped[skipped["problem"] == rows["problem"].iloc[0]]
        lines.extend(block_lines(label, rows, problem_skips, alpha, reference))
    heavy = ok[ok["clt_ok"] == False]  # noqa: E712 (nullable boolean)
    if len(heavy):
        lines.append(
            f"unreliable: {len(heavy)} cell(s) with heavy tails (clt_ok false: n_estimates < 25·skewness²; "
            "ringed in the plots): their p-values and intervals are not trustworthy; raise n_estimates"
        )
    busy = ok[ok["load_avg"].astype(float) > usable_cores() + 0.5]
    if len(busy):
        lines.append(
            f"note: {len(busy)} cell(s) were timed on a busy machine (1-minute load average above the "
            f"{usable_cores()} cores): their estimates_per_s is not comparable"
        )
    if len(skipped):
        lines.append(f"skipped: {len(skipped)} pairs that do not apply (the reason column says why)")
    failed = table[table["status"] == "failed"]
    if len(failed):
        lines.append(f"FAILED ({len(failed)} cells):")
        for (problem, estimator, reason), group in failed.groupby(["problem", "estimator", "reason"]):
            lines.append(f"  {problem} × {estimator} ({len(group)}): {reason}")
    return "\n".join(lines)
