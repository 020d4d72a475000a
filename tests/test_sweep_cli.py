"""Sweeps as a user runs them: ``bench``/``python -m bench`` in a subprocess, real files, real signals.

Covers: help, listing, running from any directory and from an installed wheel, resume (also after
SIGKILL), SIGINT/SIGTERM, sweeps that share an ``out``, unwritable ``out``, the conformance exit
status, the time-limit guard, typed tables and run metadata.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import venv
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from bench.output import finished_cells

ROOT = Path(__file__).resolve().parent.parent
TINY = ["problem=bernoulli", "estimator=reinforce,rloo", "n_samples=2,3", "n_estimates=500", "plots=false"]


def bench(*args: str, cwd: Path = ROOT, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def finished(out: Path) -> int:
    """Cells whose row file is on disk (the row, written after the dims file, marks a cell finished)."""
    return len(finished_cells(out))


def start_long_sweep(out: Path) -> subprocess.Popen:
    """16 cells of ~0.5–2 s each: there is always a cell in flight when the test signals."""
    args = ["problem=bernoulli,categorical", "estimator=reinforce,rloo", "n_samples=2,3,4,5",
            "n_estimates=2000000", "batch_size=20000", f"out={out}", "plots=false"]  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "bench", "sweep", *args], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for_cells(process: subprocess.Popen, out: Path, count: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while finished(out) < count:
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "the sweep finished no cells in time"
        time.sleep(0.1)


# --- help and listing -----------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_sweep_help_lists_global_keys_with_defaults(flag):
    run = bench("sweep", flag)
    assert run.returncode == 0, run.stderr
    for text in ("n_estimates=20000", "time_limit=1h", "alpha=0.001", "resume=True", "threads=auto",
                 "reference=reinforce", "KEY=a,b,c", "exit status", "--dry-run"):  # fmt: skip
        assert text in run.stdout, text
    assert "Traceback" not in run.stderr and "LexerNoViableAltException" not in run.stderr


def test_list_shows_every_member_with_its_keys_and_defaults():
    run = bench("list")
    assert run.returncode == 0, run.stderr
    assert "problem.theta=[0.0, 0.5, -1.0]" in run.stdout
    assert "estimator.temperature=0.5" in run.stdout
    assert "# relaxation temperature" in run.stdout  # the YAML's comment comes along
    assert "pathwise requires has_rsample, which bernoulli lacks" in run.stdout


def test_dry_run_plans_the_default_grid_quickly_and_runs_nothing(tmp_out):
    run = bench("sweep", "--dry-run", f"out={tmp_out}")
    assert run.returncode == 0, run.stderr
    seconds = float(run.stdout.split("planned in ")[1].split(" s")[0])
    assert seconds < 5, run.stdout  # the bound for planning the default grid on 2 cores
    assert "dry run:" in run.stdout and "vae_bernoulli × reinforce" in run.stdout
    assert not tmp_out.exists()


# --- installs and runs from anywhere --------------------------------------------------------------
def test_console_script_runs_outside_the_source_tree(tmp_path):
    script = shutil.which("bench")
    assert script is not None, "pip install -e . provides the bench console script"
    run = subprocess.run([script, "sweep", *TINY], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (sweep,) = (tmp_path / "results").iterdir()  # default out= is results/<timestamp> where the user stands
    assert len(pd.read_parquet(sweep / "cells.parquet")) == 4


@pytest.mark.slow
def test_installed_wheel_runs_from_a_temporary_directory(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
         "-w", str(wheels)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("bench-*.whl")
    # A venv that sees the installed dependencies (torch, hydra, ...) but gets bench only from the wheel.
    environment = tmp_path / "venv"
    venv.create(environment, system_site_packages=True, with_pip=True)
    python = environment / "bin" / "python"
    install = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--quiet", str(wheel)],
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    locate = "import bench, hydra_plugins.bench_sweeper as s; print(bench.__file__, s.__file__)"
    where = subprocess.run([python, "-c", locate], cwd=elsewhere, capture_output=True, text=True)
    assert str(environment) in where.stdout and str(ROOT) not in where.stdout, where.stdout + where.stderr
    env = {**os.environ, "PYTHONPATH": ""}
    run = subprocess.run([environment / "bin" / "bench", "sweep", *TINY, "out=here"], cwd=elsewhere,
                         capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(pd.read_parquet(elsewhere / "here" / "cells.parquet")) == 4
    listing = subprocess.run(
        [python, "-m", "bench", "list"], cwd=elsewhere, capture_output=True, text=True, env=env
    )
    assert listing.returncode == 0 and "vae_categorical" in listing.stdout, listing.stderr
    redraw = subprocess.run([python, "-m", "bench", "plot", "here"], cwd=elsewhere, capture_output=True,
                            text=True, env=env)  # fmt: skip
    assert redraw.returncode == 0, redraw.stderr[-3000:]


# --- resume, and never mixing sweeps --------------------------------------------------------------
def test_rerun_reuses_finished_cells_and_resume_false_recomputes(tmp_out):
    first = bench("sweep", *TINY, f"out={tmp_out}")
    assert first.returncode == 0, first.stderr[-3000:]
    before = pd.read_parquet(tmp_out / "cells.parquet").set_index("cell")
    again = bench("sweep", *TINY, f"out={tmp_out}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 already finished in out are reused; 0 to run" in again.stdout
    after = pd.read_parquet(tmp_out / "cells.parquet").set_index("cell")
    pd.testing.assert_series_equal(before["seconds"], after["seconds"])  # not recomputed
    fresh = bench("sweep", *TINY, f"out={tmp_out}", "resume=false")
    assert fresh.returncode == 0 and "reused" not in fresh.stdout
    assert (
        not pd.read_parquet(tmp_out / "cells.parquet").set_index("cell")["seconds"].equals(before["seconds"])
    )


def test_a_cell_killed_between_its_two_writes_reruns(tmp_out):
    # SIGKILL after a cell's dims file and before its row file: the row is what marks it finished.
    assert bench("sweep", *TINY, f"out={tmp_out}").returncode == 0
    cell = sorted(pd.read_parquet(tmp_out / "cells.parquet")["cell"])[0]
    (tmp_out / ".bench" / "cells" / f"{cell}.parquet").unlink()
    assert (tmp_out / ".bench" / "cells" / f"{cell}.dims.parquet").exists()
    again = bench("sweep", *TINY, f"out={tmp_out}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "3 already finished in out are reused; 1 to run" in again.stdout
    assert len(pd.read_parquet(tmp_out / "cells.parquet")) == 4
    assert set(pd.read_parquet(tmp_out / "dims.parquet")["cell"]) >= {cell}


def test_a_sweep_into_a_used_out_holds_only_its_own_cells(tmp_out):
    assert bench("sweep", *TINY, f"out={tmp_out}").returncode == 0
    other = bench("sweep", "problem=categorical", "estimator=reinforce", "n_samples=2", "n_estimates=500",
                  "plots=false", f"out={tmp_out}")  # fmt: skip
    assert other.returncode == 0, other.stderr[-3000:]
    assert "out already holds 4 cells of other sweeps" in other.stdout
    cells = pd.read_parquet(tmp_out / "cells.parquet")
    dims = pd.read_parquet(tmp_out / "dims.parquet")
    assert list(cells["problem"]) == ["categorical"] and set(dims["cell"]) == set(cells["cell"])


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_promptly_and_merges_the_finished_cells(tmp_out, signum, status):
    process = start_long_sweep(tmp_out)
    wait_for_cells(process, tmp_out, 2)
    sent = time.time()
    process.send_signal(signum)
    _stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == status, stderr[-3000:]
    assert time.time() - sent < 60
    done = len(pd.read_parquet(tmp_out / "cells.parquet"))
    assert done >= 2
    assert f"bench: interrupted after {done} of 16 cells; run the same command again to resume" in stderr
    assert "Traceback" not in stderr, stderr[-3000:]


@pytest.mark.slow
def test_sigkill_loses_at_most_the_cell_in_flight_and_the_next_run_resumes(tmp_out):
    process = start_long_sweep(tmp_out)
    wait_for_cells(process, tmp_out, 3)
    process.kill()
    process.communicate(timeout=60)
    saved = finished(tmp_out)
    assert saved >= 3 and not (tmp_out / "cells.parquet").exists()
    # A kill during a write can leave that one temporary file (never a half-written cell file).
    leftovers = list((tmp_out / ".bench" / "cells").glob(".*"))
    assert len(leftovers) <= 1, leftovers
    args = ["problem=bernoulli,categorical", "estimator=reinforce,rloo", "n_samples=2,3,4,5",
            "n_estimates=2000000", "batch_size=20000", f"out={tmp_out}", "plots=false"]  # fmt: skip
    resumed = bench("sweep", *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{saved} already finished in out are reused" in resumed.stdout
    assert len(pd.read_parquet(tmp_out / "cells.parquet")) == 16
    for path in (tmp_out / ".bench" / "cells").glob("*.parquet"):  # every cell file is whole
        pd.read_parquet(path)


@pytest.mark.parametrize("where", ["/proc/bench-cannot-write-here", "FILE/sub"])
def test_an_unwritable_out_is_a_clear_error_before_any_work(tmp_path, where):
    blocker = tmp_path / "FILE"
    blocker.write_text("a regular file")
    out = where.replace("FILE", str(blocker))
    run = bench("sweep", *TINY, f"out={out}")
    assert run.returncode == 2, run.stderr[-3000:]
    assert "bench: error: out: cannot write the sweep's files to" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: permissions cannot be tested")
def test_an_out_without_permission_is_a_clear_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    run = bench("sweep", *TINY, f"out={locked / 'sweep'}")
    assert run.returncode == 2 and "out: cannot write" in run.stderr


# --- what the numbers mean ------------------------------------------------------------------------
OWN_COST_BASELINE = '''"""REINFORCE whose baseline includes the sample's own cost: biased on purpose."""

from bench.estimators.base import Estimator, detached, score_function_surrogate


class OwnCostBaseline(Estimator):
    """ĝ = mean_s [(f_s − mean_j f_j) ∇log p_s]: the baseline contains f_s, so E ĝ = (S − 1)/S ∇E[f]."""

    name = "own_cost_baseline"
    unbiased = True  # the claim the conformance check must catch

    def surrogate(self, problem, params, noise):
        x = problem.sample(detached(params), noise)
        cost = problem.cost(params, x)
        return score_function_surrogate(cost, problem.log_prob(params, x), cost - cost.mean())
'''


@pytest.mark.slow
def test_conformance_failure_of_a_biased_estimator_exits_3(tmp_path):
    # A copy of the project with a user's estimator that claims to be unbiased and is not.
    project = tmp_path / "project"
    shutil.copytree(
        ROOT, project, ignore=shutil.ignore_patterns(".git", "results", "__pycache__", "*.egg-info")
    )
    (project / "estimators" / "own_cost_baseline.py").write_text(OWN_COST_BASELINE)
    (project / "conf" / "estimator" / "own_cost_baseline.yaml").write_text("{}\n")
    out = tmp_path / "out"
    run = bench("sweep", "problem=categorical", "estimator=own_cost_baseline,reinforce,rloo", "n_samples=2",
                "n_estimates=20000", "plots=false", f"out={out}", cwd=project)  # fmt: skip
    assert run.returncode == 3, run.stdout[-2000:] + run.stderr[-3000:]
    cells = pd.read_parquet(out / "cells.parquet").set_index("estimator")
    assert cells.loc["own_cost_baseline", "conformance"] == "fail"
    assert cells.loc["reinforce", "conformance"] == "pass" and cells.loc["rloo", "conformance"] == "pass"
    assert "CONFORMANCE FAILURES" in run.stdout and "failed conformance" in run.stderr
    honest = bench("sweep", "problem=categorical", "estimator=reinforce,rloo", "n_samples=2",
                   "n_estimates=20000", "plots=false", f"out={tmp_path / 'honest'}", cwd=project)  # fmt: skip
    assert honest.returncode == 0, honest.stderr[-3000:]


def test_a_huge_sweep_stops_before_the_long_work_and_says_how_to_allow_it(tmp_out):
    tic = time.time()
    run = bench("sweep", "problem=bernoulli", "estimator=reinforce", "n_samples=2",
                "n_estimates=1000000000000", f"out={tmp_out}")  # fmt: skip
    assert run.returncode == 4, run.stderr[-3000:]
    assert time.time() - tic < 120
    assert (
        "would take about" in run.stderr
        and "time_limit=" in run.stderr
        and "or time_limit=none" in run.stderr
    )
    assert "Traceback" not in run.stderr
    assert finished(tmp_out) == 0


@pytest.mark.parametrize(
    "args,message",
    [
        (["time_limit=-3"], "time_limit: must be positive"),
        (["time_limit=soon"], "time_limit: expected a duration"),
        (["threads=0"], "threads: expected auto or an integer >= 1"),
        (["alpha=2"], "alpha: expected a number in (0, 1)"),
        (["reference=nope"], "unknown reference 'nope'; valid choices:"),
        (["resume=maybe"], "resume: expected true or false"),
    ],
)
def test_bad_sweep_settings_name_their_key(tmp_out, args, message):
    run = bench("sweep", *TINY, *args, f"out={tmp_out}")
    assert run.returncode == 2, run.stderr[-3000:]
    assert message in run.stderr


def test_tables_are_typed_and_nullable_whatever_the_sweep_holds(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert bench("sweep", "problem=bernoulli,categorical", "estimator=reinforce,gumbel_softmax",
                 "n_samples=2", "n_estimates=300", "plots=false", f"out={a}").returncode == 0  # fmt: skip
    assert bench("sweep", "problem=gaussian", "problem.k=1.0,[1.0,2.0]", "estimator=pathwise", "n_samples=2",
                 "n_estimates=300", "plots=false", f"out={b}").returncode == 0  # fmt: skip
    first, second = pd.read_parquet(a / "cells.parquet"), pd.read_parquet(b / "cells.parquet")
    shared = sorted(set(first.columns) & set(second.columns))
    assert {c: str(first[c].dtype) for c in shared} == {c: str(second[c].dtype) for c in shared}
    assert str(first["target"].dtype) == "string"  # a list for bernoulli, a number for categorical
    assert first.loc[first["problem"] == "bernoulli", "cost"].isna().all()  # null, not the string 'NaN'
    assert first.loc[first["status"] == "ok", "reason"].isna().all()
    assert str(first["n_samples"].dtype) == "Int64" and str(first["temperature"].dtype) == "float64"
    # A list where the registry's default is a number goes to its own JSON column; `k` stays numeric.
    assert str(second["k"].dtype) == "float64" and set(second["k_json"].dropna()) == {"[1.0, 2.0]"}
    dims = pd.read_parquet(a / "dims.parquet")
    assert {"n_samples", "n_estimates", "seed", "dtype"} <= set(dims.columns)
    metadata = json.loads(pq.read_schema(a / "cells.parquet").metadata[b"bench"])
    assert metadata["cpu"] and metadata["cpu"] not in ("x86_64", "aarch64")
    assert metadata["cpu_count"] >= 1 and metadata["torch_threads"] >= 1
    assert (first.loc[first["status"] == "ok", "threads"] >= 1).all()
