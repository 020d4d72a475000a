"""The text summary of a training run set (``curves.parquet``): per problem setting, the final
objective per estimator and the differences at equal cost evaluations that a test detects.

A *setting* is the problem with its config columns, ``optimizer`` and ``lr``: every column that is
neither one of the table's fixed columns (``CURVE_COLUMNS``) nor starts with ``_`` is a config
column. A config column that some estimators of a problem have and others do not (``temperature``)
belongs to the estimator, and so does ``n_samples``: they join the estimator's label
(``gumbel_softmax temperature=0.5``, ``rloo n_samples=2``) where they vary, so a relaxed estimator
is still compared with ``reinforce``, and rloo at 2 samples with disarm at 1 pair (equal cost).

Final objective: each ok run's objective at its last evaluated step; per estimator the mean over
seeds with a 95% t-interval (mean ± t₀.₉₇₅,ₙ₋₁ · s / √n; none with one seed), best first.

At equal cost evaluations: for each pair of estimators with at least 2 common seeds, C is the
smallest final ``cost_evals`` of the two estimators' runs on those seeds; each run's objective is
linearly interpolated in ``cost_evals`` at C, and the differences, paired by seed (common random
numbers), go through a two-sided paired t-test (``scipy.stats.ttest_rel``). The p-values of a
setting's pairs are Holm-corrected together and a difference is reported when its adjusted p is
below α = 0.05: under normal paired differences and no true difference the chance of reporting any
difference in a setting (the family-wise false-alarm rate) is at most 5%. Estimators whose runs use
no evaluations of f (``exact``) have no equal-cost point and are left out of these tests.

Over the curve: the same pairs are also compared by each run's mean objective over its curve from 0
to C f evaluations (the area under the piecewise-linear learning curve ÷ C), which says which
estimator learned faster when both end at the same value. Both families of p-values of a setting
go through one Holm correction, so the 5% family-wise rate covers them together.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from scipy import stats

from bench.training.runs import CURVE_TYPES

ALPHA = 0.05
CURVE_COLUMNS = frozenset(CURVE_TYPES)  # curves.parquet's own columns: the rest are configs
RUN_SETTINGS = ("n_samples", "optimizer", "lr")


# --- settings and labels (shared with bench.plots.training) ----------------------------------------
def config_columns(curves: pd.DataFrame) -> list[str]:
    return [c for c in curves.columns if c not in CURVE_COLUMNS and not str(c).startswith("_")]


def estimator_keys(curves: pd.DataFrame, configs: list[str]) -> list[str]:
    """Config columns present for some estimators of a problem and absent for others."""
    keys = []
    for column in configs:
        present = curves[column].notna().groupby([curves["problem"], curves["estimator"]]).any()
        if present.groupby(level=0).agg(lambda s: s.any() and not s.all()).any():
            keys.append(column)
    return keys


def show(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def labelled(curves: pd.DataFrame) -> pd.DataFrame:
    """``curves`` with ``_setting`` (the problem and the setting values that vary in the table) and
    ``_label`` (the estimator and its own config keys)."""
    table = curves.copy()
    configs = config_columns(table)
    own = estimator_keys(table, configs)
    setting = [c for c in [*configs, *RUN_SETTINGS] if c not in own and c in table]
    varying = [c for c in setting if table[c].astype(object).fillna("\0").nunique() > 1]
    # Keys that tell runs of one estimator apart, and n_samples (runs at different n_samples meet at
    # equal cost evaluations): in the label, and only where they vary (a lone value says nothing).
    own = [c for c in own if table.groupby("estimator")[c].nunique().max() > 1]
    if "n_samples" in varying:
        varying.remove("n_samples")
        own.append("n_samples")

    def join(row: pd.Series, first: str, columns: list[str]) -> str:
        parts = [f"{c}={show(row[c])}" for c in columns if pd.notna(row[c])]
        return " ".join([str(row[first]), *parts])

    table["_setting"] = table.apply(join, axis=1, args=("problem", varying)) if len(table) else ""
    table["_label"] = table.apply(join, axis=1, args=("estimator", own)) if len(table) else ""
    return table


def objective_label(direction: str, source: str) -> str:
    """``E[f] (lower is better)``; a bound: ``test −ELBO (bound; lower is better)``."""
    better = "higher is better" if direction == "maximize" else "lower is better"
    if source == "bound":
        name = "test ELBO" if direction == "maximize" else "test \u2212ELBO"
        return f"{name} (bound; {better})"
    return f"E[f] ({better})"


def t_interval(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and its 95% t-interval (NaN ends with fewer than 2 values)."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def ok_points(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of finished (``ok``) runs with a finite objective."""
    objective = pd.to_numeric(table["objective"], errors="coerce").astype(float)
    return table[(table["status"] == "ok") & np.isfinite(objective)]


# --- the summary ------------------------------------------------------------------------------------
def num(value: float) -> str:
    return f"{value:.4g}".replace("-", "\u2212")


def cost_text(value: float) -> str:
    mantissa, _, exponent = f"{value:.2g}".partition("e")
    return mantissa if not exponent else f"{mantissa}e{int(exponent)}"


def final_objectives(points: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its label, seed, objective at its last step, and its cost_evals curve."""
    rows = []
    for run, frame in points.groupby("run", sort=True):
        frame = frame.sort_values("step")
        rows.append(
            {
                "run": run,
                "label": frame["_label"].iloc[0],
                "seed": frame["seed"].iloc[0],
                "step": int(frame["step"].iloc[-1]),
                "objective": float(frame["objective"].iloc[-1]),
                "cost": frame["cost_evals"].to_numpy(float),
                "path": frame["objective"].to_numpy(float),
            }
        )
    return pd.DataFrame(rows)


def ranking_lines(runs: pd.DataFrame, maximize: bool) -> list[str]:
    ranked = []
    for label, frame in runs.groupby("label", sort=True):
        mean, low, high = t_interval(frame["objective"].to_numpy())
        ranked.append((mean, label, low, high, len(frame), sorted(set(frame["step"]))))
    ranked.sort(key=lambda item: -item[0] if maximize else item[0])
    width = max(len(item[1]) for item in ranked)
    lines = []
    for place, (mean, label, low, high, n, steps) in enumerate(ranked, 1):
        interval = f"[{num(low)}, {num(high)}]" if n > 1 else "(no interval: 1 seed)"
        at = "/".join(str(s) for s in steps)
        lines.append(f"  {place}. {label:<{width}}  {num(mean)} {interval}  (n = {n} seeds, step {at})")
    return lines


def at_cost(runs: pd.DataFrame, cost: float) -> pd.Series:
    """Each run's objective interpolated in cost_evals at ``cost``, by seed."""
    values = [float(np.interp(cost, c, p)) for c, p in zip(runs["cost"], runs["path"], strict=True)]
    return pd.Series(values, index=runs["seed"].to_numpy()).groupby(level=0).mean()


def mean_to_cost(runs: pd.DataFrame, cost: float) -> pd.Series:
    """Each run's mean objective over the curve from 0 to ``cost`` f evaluations (the area under its
    piecewise-linear learning curve ÷ ``cost``: how fast it learned), by seed."""
    values = []
    for c, p in zip(runs["cost"], runs["path"], strict=True):
        grid = np.unique(np.concatenate([c[c < cost], [cost]]))
        curve = np.interp(grid, c, p)
        values.append(float(np.sum((curve[1:] + curve[:-1]) / 2 * np.diff(grid)) / cost))
    return pd.Series(values, index=runs["seed"].to_numpy()).groupby(level=0).mean()


MEASURES = {"at": at_cost, "over the curve to": mean_to_cost}


def paired_tests(runs: pd.DataFrame) -> tuple[list[dict], int]:
    """Every pair of labels with ≥ 2 common seeds: the paired t-tests of A − B at equal cost and of
    their mean objective over the curve up to it; and the number of pairs not tested (fewer than 2
    common seeds, or no f evaluations)."""
    tests, skipped = [], 0
    labels = sorted(runs["label"].unique())
    for a, b in itertools.combinations(labels, 2):
        run_a, run_b = runs[runs["label"] == a], runs[runs["label"] == b]
        seeds = sorted(set(run_a["seed"]) & set(run_b["seed"]))
        run_a, run_b = run_a[run_a["seed"].isin(seeds)], run_b[run_b["seed"].isin(seeds)]
        cost = min([c[-1] for c in [*run_a["cost"], *run_b["cost"]]], default=0.0)
        if len(seeds) < 2 or not cost > 0:
            skipped += 1
            continue
        for where, measure in MEASURES.items():
            value_a, value_b = measure(run_a, cost), measure(run_b, cost)
            difference = (value_a - value_b).to_numpy()
            mean, low, high = t_interval(difference)
            if difference.std(ddof=1) > 1e-12 * max(abs(mean), np.finfo(float).tiny):
                p = float(stats.ttest_rel(value_a, value_b).pvalue)
            else:  # identical differences (to rounding): no spread to test against
                p = 1.0 if abs(mean) <= 1e-12 else 0.0
            tests.append({"a": a, "b": b, "cost": cost, "delta": mean, "low": low, "high": high,
                          "p": p, "n": len(seeds), "where": where})  # fmt: skip
    return tests, skipped


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as the input)."""
    order = np.argsort(p_values, kind="stable")
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def difference_line(test: dict, p: float, maximize: bool) -> str:
    """``better < worse at C f-evals: Δ = … [low, high], p = …``, the better estimator first."""
    delta, low, high, first, second = test["delta"], test["low"], test["high"], test["a"], test["b"]
    if (delta > 0) != maximize:  # b is the better one: write b − a
        delta, low, high, first, second = -delta, -high, -low, second, first
    relation = ">" if maximize else "<"
    return (
        f"    {first} {relation} {second} {test['where']} {cost_text(test['cost'])} f-evals: "
        f"\u0394 = {num(delta)} [{num(low)}, {num(high)}], p = {p:.2g} "
        f"(paired t-test over {test['n']} seeds, Holm)"
    )


def comparison_lines(runs: pd.DataFrame, maximize: bool) -> list[str]:
    tests, skipped = paired_tests(runs)
    head = f"  at equal cost evaluations (paired t-test, Holm, \u03b1 = {ALPHA:g}): "
    pairs = len(tests) // len(MEASURES)
    head += f"{pairs} pair{'s' if pairs != 1 else ''} tested, at the cost and over the curve up to it"
    if skipped:
        head += f", {skipped} not (fewer than 2 common seeds: no test; or no f evaluations)"
    lines = [head]
    adjusted = holm([t["p"] for t in tests])
    found = [difference_line(t, p, maximize) for t, p in zip(tests, adjusted, strict=True) if p < ALPHA]
    if tests and not found:
        found = ["    no significant difference"]
    return lines + found


def first_value(column: pd.Series) -> str:
    present = column.dropna()
    return str(present.iloc[0]) if len(present) else ""


def problem_lines(runs: pd.DataFrame, table: pd.DataFrame, setting: str) -> list[str]:
    frame = table[table["_setting"] == setting]
    direction, source = (first_value(frame[column]) for column in ("direction", "objective_source"))
    lines = [setting]
    if runs.empty:
        return [*lines, "  no finished run"]
    maximize = direction == "maximize"
    lines.append(f"  final {objective_label(direction, source)}: mean over seeds, 95% t-interval")
    lines += ranking_lines(runs, maximize)
    if runs["label"].nunique() > 1:
        lines += comparison_lines(runs, maximize)
    return lines


def unfinished_lines(table: pd.DataFrame) -> list[str]:
    """A line per failed run with its reason, and one for runs stopped before their last step."""
    last = table.sort_values("step").groupby("run", sort=True).tail(1).sort_values("run")
    lines = []
    for _, row in last[last["status"] == "failed"].iterrows():
        reason = table.loc[(table["run"] == row["run"]) & table["reason"].notna(), "reason"]
        because = str(reason.iloc[0]) if len(reason) else "no reason recorded"
        lines.append(f"  FAILED run {row['run']} ({row['_label']}, seed {row['seed']}): {because}")
    partial = last[last["status"] == "partial"]
    if len(partial):
        names = ", ".join(f"{r['run']} ({r['_label']}, seed {r['seed']})" for _, r in partial.iterrows())
        lines.append(f"  not finished (partial, resumable): {names}")
    return lines


def summarize_training(curves: pd.DataFrame) -> str:
    """The text summary of a training run set (see the module docstring)."""
    if curves.empty:
        return "no training runs"
    table = labelled(curves)
    points = ok_points(table)
    blocks = []
    for setting in sorted(table["_setting"].unique()):
        runs = final_objectives(points[points["_setting"] == setting])
        lines = problem_lines(runs, table, setting)
        lines += unfinished_lines(table[table["_setting"] == setting])
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
