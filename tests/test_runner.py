"""The cell runner and the output files, in-process (and in fresh interpreters for first-use costs)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from bench.estimators.base import Estimator
from bench.output import merge, run_metadata, write_cell
from bench.problems.bernoulli import Bernoulli
from bench.runner import auto_batch_size, param_names, run_cell
from tests.conftest import make

ROOT = Path(__file__).resolve().parent.parent


def test_results_do_not_depend_on_batch_size():
    problem, estimator = make("problem", "categorical"), make("estimator", "rloo")
    rows = [
        run_cell(problem, estimator, n_samples=3, n_estimates=5000, seed=4, batch_size=size).row
        for size in (97, 1000, 5000)
    ]
    for row in rows[1:]:
        for column in ("variance", "bias_norm", "bias_pvalue"):
            assert row[column] == pytest.approx(rows[0][column], rel=1e-12, abs=1e-15)


def test_seed_changes_noise_and_estimators_share_it():
    problem = make("problem", "bernoulli")
    a = run_cell(problem, make("estimator", "reinforce"), n_samples=2, n_estimates=1000, seed=1).row
    b = run_cell(problem, make("estimator", "reinforce"), n_samples=2, n_estimates=1000, seed=2).row
    assert a["variance"] != b["variance"]
    assert a["cell"] != b["cell"]


def test_param_names():
    params = {"theta": torch.zeros(3), "weight": torch.zeros(2, 2), "scale": torch.tensor(1.0)}
    assert param_names(params) == [
        "theta[0]", "theta[1]", "theta[2]",
        "weight[0,0]", "weight[0,1]", "weight[1,0]", "weight[1,1]",
        "scale",
    ]  # fmt: skip


def test_auto_batch_size_is_bounded():
    cpu = torch.device("cpu")
    size = auto_batch_size(Bernoulli(), n_params=3, n_samples=4, dtype=torch.float32, device=cpu)
    assert 1 <= size <= 1 << 16


class ExplodingEstimator(Estimator):
    """ĝ = ∇ log(0) — produces -inf, to test failure handling (unregistered)."""

    def surrogate(self, problem, params, noise):
        return (params["theta"] * 0).sum().log() + params["theta"].sum()


def test_non_finite_estimates_raise_with_the_dimension():
    with pytest.raises(FloatingPointError, match=r"theta\["):
        run_cell(Bernoulli(), ExplodingEstimator(), n_samples=1, n_estimates=10, seed=0)


def test_skipped_cell_row():
    row = run_cell(Bernoulli(), make("estimator", "pathwise"), n_samples=2, n_estimates=10, seed=0).row
    assert row["status"] == "skipped" and "has_rsample" in row["reason"]


def test_write_and_merge_cells(tmp_out):
    problems_ = [make("problem", "bernoulli"), make("problem", "categorical")]
    cells = []
    for problem in problems_:
        for temperature in (0.5, 1.0):
            estimator = make("estimator", "gumbel_softmax", temperature=temperature)
            result = run_cell(problem, estimator, n_samples=2, n_estimates=100, seed=0)
            configs = {"problem": problem.config(), "estimator": estimator.config()}
            write_cell(tmp_out, result.row, result.dims, configs, run_metadata({"x": 1}))
            cells.append(result.row["cell"])
    table, dims = merge(tmp_out, run_metadata({"sweep": True}), cells)
    assert len(table) == 4 and len(dims) == 2 * 3 + 2 * 4
    # bernoulli's target is a list, categorical's a number: the column is text in every sweep,
    # because the registry (not the sweep's cells) decides its type.
    assert set(table["target"]) == {json.dumps([0.45, 0.5, 0.6]), "0.7"}
    assert str(table["target"].dtype) == "string" and table["temperature"].dtype == float
    assert table["reason"].isna().all() and str(table["n_samples"].dtype) == "Int64"
    assert {"n_samples", "n_estimates", "seed", "dtype"} <= set(dims.columns)
    on_disk = pd.read_parquet(tmp_out / "cells.parquet")
    pd.testing.assert_frame_equal(on_disk, table)
    metadata = json.loads(pq.read_schema(tmp_out / "dims.parquet").metadata[b"bench"])
    assert metadata["config"] == {"sweep": True} and "temperature" in metadata["estimator_columns"]
    assert not [p for p in tmp_out.rglob("*") if p.name.startswith(".") and p.name != ".bench"]


def test_merge_takes_only_the_cells_it_is_given(tmp_out):
    problem, estimator = make("problem", "bernoulli"), make("estimator", "reinforce")
    configs = {"problem": problem.config(), "estimator": estimator.config()}
    ids = []
    for seed in (0, 1, 2):
        result = run_cell(problem, estimator, n_samples=2, n_estimates=100, seed=seed)
        write_cell(tmp_out, result.row, result.dims, configs, run_metadata(None))
        ids.append(result.row["cell"])
    table, dims = merge(tmp_out, run_metadata(None), ids[:2])
    assert sorted(table["cell"]) == sorted(ids[:2]) and set(dims["cell"]) == set(ids[:2])


@pytest.mark.slow
def test_a_million_reinforce_estimates_take_seconds():
    # The speed contract: vectorized, no Python loop over estimates (a loop would take minutes).
    problem, estimator = make("problem", "bernoulli"), make("estimator", "reinforce")
    tic = time.perf_counter()
    row = run_cell(problem, estimator, n_samples=4, n_estimates=1_000_000, seed=0).row
    assert time.perf_counter() - tic < 30
    assert row["estimates_per_s"] > 100_000


def test_throughput_benchmark(benchmark):
    # pytest-benchmark: `pytest tests/test_runner.py --benchmark-autosave` then
    # `--benchmark-compare --benchmark-compare-fail=mean:25%` flags a regression in CI.
    problem, estimator = make("problem", "categorical"), make("estimator", "rloo")
    row = benchmark.pedantic(
        run_cell, args=(problem, estimator), kwargs={"n_samples": 4, "n_estimates": 100_000, "seed": 0},
        rounds=3, iterations=1,
    )  # fmt: skip
    assert row.row["status"] == "ok"


def fresh_python(code: str) -> str:
    """Run ``code`` in a new interpreter at the repository root; its stdout, stripped."""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_first_use_imports_are_paid_before_the_fit_timer():
    """torch.func's first grad imports torch._dynamo (over a second); charged to the timed fit of a
    fresh process's first cell, it made one fit_seconds 400x its true value. The runner pays it
    before any timer: the fit must find the module already imported."""
    code = """
import sys
from bench.runner import run_cell
from tests.conftest import make

problem, estimator = make("problem", "bernoulli"), make("estimator", "oracle_baseline")
assert "torch._dynamo" not in sys.modules  # the fresh process has not paid the import yet
seen = []
fit = estimator.fit

def watched_fit(*args, **kwargs):
    seen.append("torch._dynamo" in sys.modules)
    return fit(*args, **kwargs)

estimator.fit = watched_fit
run_cell(problem, estimator, n_samples=1, n_estimates=100, seed=0)
print(seen)
"""
    assert fresh_python(code) == "[True]"


def test_the_warm_up_leaves_no_lazy_import_for_torch_func():
    """After ``load_lazy_modules``, the transforms the estimators use import nothing more."""
    code = (
        "import sys, torch\n"
        "from bench.runner import load_lazy_modules\n"
        "load_lazy_modules()\n"
        "before = set(sys.modules)\n"
        "f = lambda x: (x.sin() * x).sum()\n"
        "x = torch.randn(3, 2)\n"
        "torch.func.vmap(torch.func.grad(f))(x)\n"
        "torch.func.vmap(torch.func.grad_and_value(f))(x)\n"
        "torch.func.vjp(f, x)[1](torch.tensor(1.0))\n"
        "torch.autograd.grad(f(x.requires_grad_()), x)\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    assert fresh_python(code) == "[]"
