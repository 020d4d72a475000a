"""The command line as a user runs it: ``python -m bench ...`` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parent.parent
CUDA = __import__("torch").cuda.is_available()


def bench(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_tiny_sweep_writes_tables_plots_and_summary(tmp_out):
    run = bench(
        "sweep", "problem=bernoulli,gaussian", "estimator=reinforce,pathwise,gumbel_softmax",
        "estimator.temperature=0.5,1.0", "n_samples=1,2", "n_estimates=300", f"out={tmp_out}",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    cells = pd.read_parquet(tmp_out / "cells.parquet")
    dims = pd.read_parquet(tmp_out / "dims.parquet")
    # reinforce: 2 problems × 2 n_samples; pathwise: 2 × 2 (bernoulli skipped);
    # gumbel_softmax: 2 × 2 × 2 temperatures (gaussian skipped). The temperature grid does not
    # multiply the estimators that have no temperature.
    assert len(cells) == 4 + 4 + 8
    assert cells["cell"].is_unique
    counts = cells.groupby(["estimator", "status"]).size().to_dict()
    assert counts == {
        ("reinforce", "ok"): 4, ("pathwise", "ok"): 2, ("pathwise", "skipped"): 2,
        ("gumbel_softmax", "ok"): 4, ("gumbel_softmax", "skipped"): 4,
    }  # fmt: skip
    skipped = cells[cells["status"] == "skipped"]
    assert skipped["reason"].str.contains("has_rsample|has_relaxed_cost").all()
    for column in ["variance", "bias_norm", "mse", "exact_norm", "cosine", "bias_z_max", "bias_pvalue", "snr",
                   "estimates_per_s", "device", "n_samples", "n_estimates", "seed", "unbiased", "temperature",
                   "cost", "k"]:  # fmt: skip
        assert column in cells, column
    ok = cells[cells["status"] == "ok"]
    assert (ok["mse"] - (ok["bias_norm"] ** 2 + ok["variance"])).abs().max() < 1e-9
    assert set(ok[ok["estimator"] == "gumbel_softmax"]["temperature"]) == {0.5, 1.0}
    assert {"theta[0]", "theta[2]", "mu[1]", "sigma[0]"} <= set(dims["param"])
    assert set(dims["cell"]) == set(ok["cell"])
    for column in ["cell", "problem", "estimator", "param", "exact", "mean", "var", "stderr"]:
        assert column in dims
    metadata = json.loads(pq.read_schema(tmp_out / "cells.parquet").metadata[b"bench"])
    assert {"git_commit", "torch_version", "device_name", "date", "config"} <= set(metadata)
    assert metadata["config"]["hydra"]["sweeper"]["params"]["n_samples"] == "1,4,16"
    for plot in ["variance_vs_samples.png", "bias_vs_variance.png", "temperature.png"]:
        assert (tmp_out / "plots" / plot).stat().st_size > 10_000
    assert "bernoulli" in run.stdout and "pathwise × bernoulli" not in run.stdout
    assert "skipped: 6 pairs that do not apply" in run.stdout
    assert not list(tmp_out.rglob(".*.parquet*")), "temporary files left behind"


def test_plot_redraws_from_saved_tables(tmp_out):
    assert bench("sweep", "problem=categorical", "estimator=reinforce,rloo", "n_samples=2,4",
                 "n_estimates=200", f"out={tmp_out}", "plots=false").returncode == 0  # fmt: skip
    assert not (tmp_out / "plots").exists()
    run = bench("plot", str(tmp_out))
    assert run.returncode == 0, run.stderr
    assert (tmp_out / "plots" / "variance_vs_samples.png").exists()


def test_hydra_joblib_launcher_runs_cells_in_parallel(tmp_out):
    run = bench(
        "sweep", "problem=bernoulli", "estimator=reinforce,rloo", "n_samples=2,4", "n_estimates=200",
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"out={tmp_out}", "plots=false",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    cells = pd.read_parquet(tmp_out / "cells.parquet")
    assert len(cells) == 4 and (cells["status"] == "ok").all()


def test_failed_cell_is_recorded_and_sweep_exits_nonzero(tmp_out):
    # exp(0.05 x²) at x ≈ 100 overflows float32: that cell fails; the μ = 0 cell still runs.
    run = bench(
        "sweep", "problem=gaussian", "problem.cost=exp_quadratic", "problem.k=-0.05",
        "problem.mu=[0.0,0.0],[100.0,0.0]", "estimator=pathwise", "n_samples=2", "n_estimates=200",
        f"out={tmp_out}",
    )  # fmt: skip
    assert run.returncode == 1
    cells = pd.read_parquet(tmp_out / "cells.parquet")
    assert sorted(cells["status"]) == ["failed", "ok"]
    assert "non-finite gradient estimates" in cells.loc[cells["status"] == "failed", "reason"].item()
    assert "1 cell(s) failed" in run.stderr


def test_list_shows_applicability():
    run = bench("list")
    assert run.returncode == 0
    lines = run.stdout.splitlines()
    assert any(
        line.split()[:3] == ["bernoulli", "pathwise", "no:"] and "has_rsample" in line for line in lines
    )
    assert any(line.split() == ["gaussian", "pathwise", "yes"] for line in lines)


@pytest.mark.parametrize(
    "args,message",
    [
        (["problem=nope"], "unknown problem 'nope'; valid choices: bernoulli, "),
        (["estimator=reinforce,nope"], "valid choices: arm, disarm, double_cv, exact"),
        (["n_sampels=3"], "n_sampels: unknown key; valid keys: "),
        (["estimator=gumbel_softmax", "estimator.tempreature=1"], "estimator.tempreature: unknown key"),
        (["problem=gaussian", "problem.sigma=[1.0,-1.0]"], "problem.sigma: every value must be > 0"),
        (["estimator=gumbel_softmax", "estimator.temperature=0"], "estimator.temperature: must be"),
        (["problem=bernoulli", "estimator=rloo", "n_samples=1"], "rloo needs n_samples >= 2"),
        (
            ["problem=bernoulli", "problem.theta=[0.0,1.0]"],
            "problem.target: has 3 values but problem.theta has 2",
        ),
        (["--n_samples", "4"], "--n_samples: keys are given as key=value, e.g. n_samples=4"),
        (["n_estimates=1"], "n_estimates: expected an integer >= 2"),
        (["problem=bernoulli", "estimator=pathwise"], "pathwise requires has_rsample"),
        (["dtype=float16"], "dtype: expected one of float32, float64"),
        (["batch_size=0"], "batch_size: expected auto or an integer >= 1"),
    ]
    + ([(["device=cuda"], "device: cuda was asked for but torch sees no CUDA device")] if not CUDA else []),
)
def test_bad_input_is_rejected_before_any_work(args, message, tmp_out):
    run = bench("sweep", *args, f"out={tmp_out}")
    assert run.returncode == 2, (run.stdout[-2000:], run.stderr[-2000:])
    assert message in run.stderr, run.stderr
    assert not tmp_out.exists()  # a command that ran nothing leaves nothing behind


def test_unknown_command_lists_choices():
    run = bench("frobnicate")
    assert run.returncode == 2
    assert "sweep" in run.stderr and "plot" in run.stderr


def test_integer_keys_accept_integral_floats(tmp_out):
    # Hydra reads 1e3 as a float; an integral one is the integer it names, with the same cell id.
    first = bench("sweep", "problem=bernoulli", "estimator=relax", "n_samples=2.0", "n_estimates=1e3",
                  "estimator.train_steps=1e1", "plots=false", f"out={tmp_out}")  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    again = bench("sweep", "problem=bernoulli", "estimator=relax", "n_samples=2", "n_estimates=1000",
                  "estimator.train_steps=10", "plots=false", f"out={tmp_out}")  # fmt: skip
    assert "1 already finished in out are reused" in again.stdout
    fractional = bench("sweep", "problem=bernoulli", "estimator=rloo", "n_estimates=2.5", f"out={tmp_out}")
    assert fractional.returncode == 2 and "n_estimates: expected an integer >= 2" in fractional.stderr
