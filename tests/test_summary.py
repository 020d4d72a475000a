"""The end-of-sweep summary says what matters: estimators exact at this n_samples named once (not
ranked), variance at rounding level called 0 as in the plots, counts equal to the table's, and a
ranking at equal wall-clock."""

from __future__ import annotations

import re

import pandas as pd
import pytest

import bench
from bench import stats, summary


@pytest.fixture(scope="module")
def categorical() -> pd.DataFrame:
    # At n_samples = K = 4 unordered_set and sum_and_sample return the exact gradient, and indecater
    # is exact for the linear cost: their variance is rounding only.
    cells, _ = bench.run(
        problem="categorical", n_samples=4, n_estimates=2000,
        estimator=["reinforce", "rloo", "unordered_set", "sum_and_sample", "indecater", "gumbel_softmax"],
    )  # fmt: skip
    return cells


def test_exact_estimators_are_named_once_not_ranked(categorical: pd.DataFrame):
    text = summary.summarize_sweep(categorical)
    line = next(line for line in text.splitlines() if "exact at n_samples=4" in line)
    assert line.endswith("indecater, sum_and_sample, unordered_set")
    ranked = [line for line in text.splitlines() if re.match(r"\s+\d\. ", line)]
    assert ranked and not any(
        name in " ".join(ranked) for name in ("indecater", "sum_and_sample", "unordered")
    )
    assert "then:" not in text or "unordered_set" not in text.split("then:", 1)[1].split("\n", 1)[0]


def test_a_ranking_at_equal_wall_clock(categorical: pd.DataFrame):
    text = summary.summarize_sweep(categorical)
    line = next(line for line in text.splitlines() if "at equal wall-clock" in line)
    ok = categorical[categorical["estimator"].isin(["reinforce", "rloo"])].sort_values("time_variance")
    assert line.index(ok["estimator"].iloc[0]) < line.index(ok["estimator"].iloc[1])


def test_heavy_tail_count_is_every_cell_with_clt_false(categorical: pd.DataFrame):
    table = categorical.copy()
    # Two declared-unbiased cells and one biased one lose the normal approximation: all three count.
    for name in ("reinforce", "rloo", "gumbel_softmax"):
        table.loc[table["estimator"] == name, "clt_ok"] = False
    text = summary.summarize_sweep(table)
    assert "unreliable: 3 cell(s) with heavy tails" in text


def test_the_rounding_scale_is_bench_stats_own():
    assert summary.RESOLUTION_ULPS == stats.RESOLUTION_ULPS
