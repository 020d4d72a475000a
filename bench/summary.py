"""The summary printed at the end of a sweep (and saved as out/summary.txt): short enough to read,
with the full detail left to the tables.

Per problem (and problem config): the estimators ranked by ``work_variance`` (variance × cost
evaluations: the variance at a fixed budget of evaluations of f) at one n_samples, each with its
95% interval, its ratio to the reference estimator, its cost and a bias verdict; ``exact`` once, as
the gradient's norm; the pairs that do not apply as one line per estimator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

TOP = 5  # ranked lines per problem; the rest are named in one line


def number(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.2g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"


def verdict(row: pd.Series) -> str:
    """The bias verdict of one ok cell."""
    resolution = number(row["bias_resolution"])
    if row["conformance"] == "fail":
        return f"CONFORMANCE FAIL: bias {number(row['bias_norm'])} (p={row['bias_pvalue']:.1g})"
    if row["clt_ok"] is False or row["clt_ok"] == False:  # noqa: E712 (nullable boolean)
        return f"unreliable: heavy tails (kurtosis {row['kurtosis_max']:.3g})"
    alpha = row.get("_alpha", 1e-3)
    if row["unbiased"] == False and row["bias_pvalue"] < alpha:  # noqa: E712
        return f"biased: bias {number(row['bias_norm'])}, resolution {resolution}"
    return f"no bias above {resolution}"


def problem_blocks(ok: pd.DataFrame, problem_columns: Sequence[str]) -> list[tuple[str, pd.DataFrame]]:
    """(label, rows) per problem and config values that vary within that problem."""
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


def entry_label(row: pd.Series, estimator_columns: Sequence[str]) -> str:
    label = str(row["estimator"])
    extras = [f"{c}={row[c]:g}" if isinstance(row[c], float) else f"{c}={row[c]}" for c in estimator_columns
              if c in row and not pd.isna(row[c])]  # fmt: skip
    return f"{label}({', '.join(extras)})" if extras else label


def block_lines(
    label: str, rows: pd.DataFrame, estimator_columns: Sequence[str], reference: str | None
) -> list[str]:
    n_samples = chosen_samples(rows)
    at = rows[rows["n_samples"] == n_samples]
    exact = at[at["estimator"] == "exact"]
    norm = rows["exact_norm"].iloc[0]
    head = f"{label}  (n_samples={n_samples}; ‖∇‖={number(norm)}"
    head += f"; ×{reference} = work ratio" if reference else ""
    head += ")" if exact.empty else "; exact row ok)"
    candidates = at[at["estimator"] != "exact"].copy()
    # One entry per estimator: among its settings (temperatures...), the one with the lowest MSE.
    candidates["_mse"] = candidates["mse"].astype(float)
    best = candidates.sort_values("_mse").groupby("estimator", sort=False).head(1)
    varying = [c for c in estimator_columns if c in best and best[c].notna().any()]
    best = best.assign(_rank=best["work_variance"].astype(float)).sort_values("_rank", kind="stable")
    lines = [head]
    for rank, (_, row) in enumerate(best.head(TOP).iterrows(), start=1):
        ci = f"[{number(row['work_variance_ci_low'])}, {number(row['work_variance_ci_high'])}]"
        ratio = f"×{number(row['work_ratio'])}" if not pd.isna(row["work_ratio"]) else ""
        name = entry_label(
            row,
            [c for c in varying if c != "temperature"]
            + (["temperature"] if "temperature" in varying else []),
        )
        lines.append(
            f"  {rank}. {name:<28} {number(row['work_variance']):>8} {ci:<20} {ratio:<8} "
            f"{int(row['cost_evals']):>4} evals  {verdict(row)}"
        )
    rest = best.iloc[TOP:]
    if len(rest):
        flagged = [
            f"{r['estimator']} ({verdict(r)})"
            for _, r in rest.iterrows()
            if verdict(r).startswith(("CONF", "unrel"))
        ]
        names = ", ".join(str(e) for e in rest["estimator"])
        lines.append(f"     then: {names}" + (f"; note {', '.join(flagged)}" if flagged else ""))
    return lines


def skipped_lines(table: pd.DataFrame) -> list[str]:
    skipped = table[table["status"] == "skipped"]
    lines = []
    for estimator, rows in skipped.groupby("estimator", sort=True):
        problems = ", ".join(sorted(rows["problem"].unique()))
        reason = str(rows["reason"].iloc[0])
        reason = reason.split(", which ")[0] if ", which " in reason else reason
        lines.append(f"  {estimator}: not on {problems} ({reason})")
    return lines


def summarize_sweep(table: pd.DataFrame, *, alpha: float = 1e-3, reference: str | None = "reinforce") -> str:
    """The end-of-sweep summary of a merged cells table."""
    from bench.output import group_columns, usable_cores

    problem_columns = group_columns("problem", table.columns)
    estimator_columns = group_columns("estimator", table.columns)
    ok = table[table["status"] == "ok"].assign(_alpha=alpha)
    lines: list[str] = []
    failures = ok[ok["conformance"] == "fail"]
    if len(failures):
        lines.append(
            f"CONFORMANCE FAILURES (declared unbiased, bias test rejects; family-wise alpha={alpha:g}):"
        )
        for _, row in failures.iterrows():
            lines.append(f"  {row['problem']} × {row['estimator']} (n_samples={row['n_samples']}): "
                         f"bias {number(row['bias_norm'])}, p={row['bias_pvalue']:.2g}, cell {row['cell']}")  # fmt: skip
        lines.append("")
    lines.append("ranked by work_variance = variance × cost evals (lower is better at equal budget); "
                 "[95% CI]; bias verdict at alpha")  # fmt: skip
    for label, rows in problem_blocks(ok, problem_columns):
        lines.extend(block_lines(label, rows, estimator_columns, reference))
    unreliable = ok[ok["conformance"] == "unreliable"]
    if len(unreliable):
        lines.append(f"unreliable: {len(unreliable)} cells have heavy tails (n_estimates < 25·skewness²): their "
                     "p-values and intervals are not trustworthy; raise n_estimates")  # fmt: skip
    busy = ok[ok["load_avg"].astype(float) > usable_cores() + 0.5]
    if len(busy):
        lines.append(f"note: {len(busy)} cells were timed on a busy machine (1-minute load average above the "
                     f"{usable_cores()} cores); their estimates_per_s is not comparable")  # fmt: skip
    skipped = skipped_lines(table)
    if skipped:
        lines.append(f"skipped ({int((table['status'] == 'skipped').sum())} pairs that do not apply):")
        lines.extend(skipped)
    failed = table[table["status"] == "failed"]
    if len(failed):
        lines.append(f"FAILED ({len(failed)} cells):")
        for (problem, estimator, reason), group in failed.groupby(["problem", "estimator", "reason"]):
            lines.append(f"  {problem} × {estimator} ({len(group)}): {reason}")
    return "\n".join(lines)
