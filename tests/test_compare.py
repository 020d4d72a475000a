"""``bench compare`` as a user runs it: two real tiny sweeps in a subprocess, then the comparison in a
subprocess, with regressions planted by editing a copy of a sweep's cells.parquet (one kind at a
time), and one genuinely different sweep (other n_estimates and seed, so every id differs). The
status, conformance, variance and ``--strict`` checks; the throughput test has its own file
(tests/test_compare_throughput.py)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench import compare

ROOT = Path(__file__).resolve().parent.parent
GRID = ["problem=bernoulli,categorical", "estimator=reinforce,rloo", "plots=false"]


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def sweep(out: Path, *args: str) -> Path:
    run = bench("sweep", *GRID, *args, f"out={out}")
    assert run.returncode == 0, run.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 cells: bernoulli and categorical × reinforce and rloo × n_samples 2, 4 (about 8 s)."""
    return sweep(tmp_path_factory.mktemp("compare") / "a", "n_samples=2,4", "n_estimates=2000")


@pytest.fixture(scope="module")
def other_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same grid with other n_estimates and seed (every cell id differs) and n_samples=8 added."""
    return sweep(tmp_path_factory.mktemp("compare") / "c", "n_samples=2,4,8", "n_estimates=3000", "seed=1")


def edited(source: Path, target: Path, edit: Callable[[pd.DataFrame], None]) -> Path:
    """A copy of the sweep ``source`` whose cells.parquet was changed by ``edit`` (in place), with
    the table's metadata kept."""
    shutil.copytree(source, target)
    path = target / "cells.parquet"
    table = pq.read_table(path)
    cells = table.to_pandas()
    edit(cells)
    rebuilt = pa.Table.from_pandas(cells, preserve_index=False)
    pq.write_table(rebuilt.replace_schema_metadata(table.schema.metadata), path)
    return target


def row(cells: pd.DataFrame, problem: str, estimator: str, n_samples: int) -> int:
    found = cells.index[
        (cells["problem"] == problem) & (cells["estimator"] == estimator) & (cells["n_samples"] == n_samples)
    ]
    assert len(found) == 1
    return found[0]


def report(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    path = tmp_path / "comparison.json"
    run = bench("compare", *args, "--json", path)
    return run, json.loads(path.read_text()) if path.exists() else {}


def regressions(full: dict) -> dict[str, list[str]]:
    """cell id → the kinds of regression that set the exit status."""
    return {cell["cell_new"]: cell["regressions"] for cell in full["cells"] if cell["regressions"]}


def test_a_sweep_against_its_copy_exits_0(baseline, tmp_path):
    copy = edited(baseline, tmp_path / "b", lambda cells: None)
    run, full = report(tmp_path, baseline, copy, "--all")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "8 matched (8 by id, 0 by config)" in run.stdout
    assert full["exit_status"] == 0 and full["matched_by_id"] == 8 and not regressions(full)
    assert all(cell["variance_ratio"] == 1 and cell["throughput_ratio"] == 1 for cell in full["cells"])
    cells = pd.read_parquet(baseline / "cells.parquet")
    assert all(cell in run.stdout for cell in cells["cell"])  # --all prints every matched cell
    quiet_run = bench("compare", baseline, copy)
    assert quiet_run.returncode == 0 and "no matched cell changed beyond tolerance" in quiet_run.stdout


def planted_variance(factor: float, problem: str = "categorical") -> Callable[[pd.DataFrame], None]:
    def edit(cells: pd.DataFrame) -> None:
        index = row(cells, problem, "rloo", 4)
        for column in ["variance", "variance_stderr", "variance_ci_low", "variance_ci_high"]:
            cells.loc[index, column] *= factor  # the same relative interval, `factor` times higher

    return edit


def test_planted_variance_increase_is_a_regression(baseline, tmp_path):
    new = edited(baseline, tmp_path / "b", planted_variance(3.0))
    run, full = report(tmp_path, baseline, new)
    cell = pd.read_parquet(baseline / "cells.parquet").set_index(["problem", "estimator", "n_samples"])
    offending = cell.loc[("categorical", "rloo", 4), "cell"]
    assert run.returncode == 5, run.stdout + run.stderr
    assert regressions(full) == {offending: ["variance"]}
    line = next(line for line in run.stdout.splitlines() if offending in line)
    assert "VARIANCE UP" in line and " 3 [" in line  # the ratio and its bounds
    assert next(c for c in full["cells"] if c["cell_new"] == offending)["variance_ratio"] == pytest.approx(3)
    assert "1 regression(s): status 0, conformance 0, variance 1, throughput 0" in run.stdout
    # the same check lets a 5% increase pass: within the 10% tolerance
    within = edited(baseline, tmp_path / "c", planted_variance(1.05))
    assert bench("compare", baseline, within).returncode == 0


def test_planted_conformance_flip_is_a_regression(baseline, tmp_path):
    def flip(cells: pd.DataFrame) -> None:
        assert (cells["conformance"] == "pass").all()
        cells.loc[row(cells, "bernoulli", "reinforce", 2), "conformance"] = "fail"
        cells.loc[row(cells, "bernoulli", "rloo", 2), "conformance"] = (
            "unreliable"  # a change, not a regression
        )

    new = edited(baseline, tmp_path / "b", flip)
    run, full = report(tmp_path, baseline, new)
    cells = pd.read_parquet(new / "cells.parquet")
    failed, unreliable = (cells.loc[row(cells, "bernoulli", e, 2), "cell"] for e in ("reinforce", "rloo"))
    assert run.returncode == 5, run.stdout + run.stderr
    assert regressions(full) == {failed: ["conformance"]}
    assert "pass→fail" in run.stdout and "CONFORMANCE FAIL" in run.stdout
    changed = next(line for line in run.stdout.splitlines() if unreliable in line)
    assert "pass→unreliable" in changed and "conformance changed" in changed


def test_a_conformance_regression_is_never_counted_as_an_improvement(baseline, tmp_path):
    """A biased estimator often has a lower variance: pass→fail with the variance down a third is a
    regression, and its "variance down" is shown but not counted among the improvements."""

    def biased(cells: pd.DataFrame) -> None:
        index = row(cells, "categorical", "rloo", 4)
        cells.loc[index, "conformance"] = "fail"
        for column in ["variance", "variance_stderr", "variance_ci_low", "variance_ci_high"]:
            cells.loc[index, column] /= 3

    new = edited(baseline, tmp_path / "b", biased)
    run, full = report(tmp_path, baseline, new)
    assert run.returncode == 5, run.stdout + run.stderr
    (cell,) = [cell for cell in full["cells"] if cell["findings"]]
    assert cell["findings"] == {"conformance": "regression", "variance": "improvement"}
    assert cell["regressions"] == ["conformance"]
    assert sum(full["summary"]["improvements"].values()) == 0 and "; 0 improvement(s); exit 5" in run.stdout
    line = next(line for line in run.stdout.splitlines() if cell["cell_new"] in line)
    assert "CONFORMANCE FAIL" in line and "variance down" in line
    # the same variance drop on a cell that still passes is an improvement
    better = edited(baseline, tmp_path / "c", planted_variance(1 / 3))
    run = bench("compare", baseline, better)
    assert run.returncode == 0 and "; 1 improvement(s); exit 0" in run.stdout


def test_planted_failed_cell_is_a_regression(baseline, tmp_path):
    def fail(cells: pd.DataFrame) -> None:
        index = row(cells, "categorical", "reinforce", 2)
        cells.loc[index, ["status", "reason"]] = ["failed", "non-finite gradient estimates"]
        cells.loc[index, ["variance", "estimates_per_s"]] = np.nan

    new = edited(baseline, tmp_path / "b", fail)
    run, full = report(tmp_path, baseline, new)
    assert run.returncode == 5
    assert list(regressions(full).values()) == [["status"]]
    assert "ok→failed" in run.stdout and "FAILED" in run.stdout


def test_strict_fails_on_missing_cells_skipped_cells_and_changed_settings(baseline, tmp_path):
    """Without --strict these are reported and exit 0; with it, exit 6 (a regression still wins: 5)."""
    cells = pd.read_parquet(baseline / "cells.parquet")
    half = write_cells(tmp_path / "half", cells[cells["problem"] == "bernoulli"], baseline)  # 4 of 8

    def skipped(cells: pd.DataFrame) -> None:
        index = row(cells, "categorical", "rloo", 2)
        cells.loc[index, ["status", "reason"]] = ["skipped", "not applicable"]
        cells.loc[index, ["variance", "variance_stderr", "estimates_per_s", "conformance"]] = None

    def fewer_estimates(cells: pd.DataFrame) -> None:
        index = row(cells, "bernoulli", "rloo", 4)
        cells.loc[index, "n_estimates"] = 1000  # another n_estimates: another id, matched by setting
        cells.loc[index, "cell"] = "x" + cells.loc[index, "cell"]

    cases = {
        "missing": (
            half,
            "4 missing in NEW, 0 no longer ok, 0 with changed settings",
            "unmatched 4 baseline",
        ),
        "skipped": (
            edited(baseline, tmp_path / "s", skipped),
            "0 missing in NEW, 1 no longer ok",
            "ok→skipped",
        ),
        "fewer": (
            edited(baseline, tmp_path / "f", fewer_estimates),
            "1 with changed settings",
            "settings changed (n_estimates 2000→1000)",
        ),
    }
    for name, (new, counts, shown) in cases.items():
        run = bench("compare", baseline, new)
        assert run.returncode == 0, (name, run.stdout + run.stderr)
        assert (
            counts in run.stdout
            and shown in run.stdout
            and "(reported; --strict fails on them)" in run.stdout
        )
        run, full = report(tmp_path, baseline, new, "--strict")
        assert run.returncode == 6, (name, run.stdout + run.stderr)
        assert full["exit_status"] == 6 and full["summary"]["strict"]["total"] >= 1
        assert counts in run.stdout and run.stdout.rstrip().endswith("exit 6")
    # an identical sweep passes --strict
    assert (
        bench(
            "compare", baseline, edited(baseline, tmp_path / "same", lambda cells: None), "--strict"
        ).returncode
        == 0
    )
    # a regression as well: exit 5, whatever --strict says
    worse = edited(half, tmp_path / "worse", planted_variance(3.0, "bernoulli"))
    assert bench("compare", baseline, worse, "--strict").returncode == 5


def test_a_different_sweep_is_matched_by_config(baseline, other_sweep, tmp_path):
    run, full = report(tmp_path, baseline, other_sweep)
    assert run.returncode in (0, 5), run.stderr
    assert full["matched"] == 8 and full["matched_by_id"] == 0
    assert all(cell["seed_baseline"] == 0 and cell["seed_new"] == 1 for cell in full["cells"])
    assert all(cell["variance_noise"].startswith("independent") for cell in full["cells"])
    assert [cell["n_samples"] for cell in full["unmatched"]["new"]] == [8, 8, 8, 8]
    assert full["unmatched"]["baseline"] == []
    assert "unmatched in NEW (4)" in run.stdout and "8 matched (0 by id, 8 by config)" in run.stdout
    # same estimators, same configs: no regression. These millisecond cells are too short to judge
    # their throughput, so no throughput noise can set the exit status either.
    assert run.returncode == 0 and not regressions(full), run.stdout
    assert full["throughput_test"]["judged"] == 0 and full["throughput_test"]["too_short"] == 8
    # every pair ran at other n_estimates and seed: reported, and --strict fails on it (exit 6)
    assert full["summary"]["strict"] == {
        "missing_in_new": 0, "no_longer_ok": 0, "settings_changed": 8, "total": 8
    }  # fmt: skip
    assert "settings changed (n_estimates 2000→3000, seed 0→1)" in run.stdout
    assert "(reported; --strict fails on them)" in run.stdout
    strict = bench("compare", baseline, other_sweep, "--strict")
    assert strict.returncode == 6, strict.stdout + strict.stderr
    assert "8 with changed settings; 0 improvement(s); exit 6" in strict.stdout
    reverse = bench("compare", other_sweep, baseline, "--no-throughput")
    assert reverse.returncode == 0 and "unmatched in BASELINE (4)" in reverse.stdout
    # the 4 cells at n_samples=8 are missing from the baseline's point of view: --strict fails
    assert bench("compare", other_sweep, baseline, "--strict").returncode == 6


def test_bad_input_exits_2_naming_the_problem(baseline, tmp_path):
    run = bench("compare", tmp_path / "nowhere", baseline)
    assert run.returncode == 2 and "BASELINE" in run.stderr and "nowhere: no such directory" in run.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    run = bench("compare", baseline, empty)
    assert run.returncode == 2 and "NEW" in run.stderr and "no cells.parquet" in run.stderr


def call(argv: list, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    status = compare.main([str(arg) for arg in argv])
    return status, capsys.readouterr().err


def test_bad_options_and_tables_exit_2(baseline, tmp_path, capsys):
    unmerged = tmp_path / "unmerged"
    (unmerged / ".bench" / "cells").mkdir(parents=True)
    status, err = call([baseline, unmerged], capsys)
    assert status == 2 and "no merged table" in err and "bench plot" in err
    status, err = call([baseline, baseline / "cells.parquet"], capsys)
    assert status == 2 and "not a directory" in err
    status, err = call([baseline], capsys)
    assert status == 2 and "NEW_DIR" in err
    status, err = call([baseline, baseline, "--throughput-tolerance", "1.5"], capsys)
    assert status == 2 and "--throughput-tolerance must be in [0, 1)" in err
    status, err = call([baseline, baseline, "--alpha", "0"], capsys)
    assert status == 2 and "--alpha" in err
    status, err = call([baseline, baseline, "--control", "bernoulli"], capsys)
    assert status == 2 and "PROBLEM:ESTIMATOR" in err
    status, err = call([baseline, baseline, "--control", "gaussian:pathwise"], capsys)
    assert status == 2 and "no matched cell" in err and "bernoulli:reinforce:4" in err
    status, err = call([baseline, baseline, "--control", "bernoulli:reinforce"], capsys)
    assert status == 2 and "too short to judge" in err and "timed" in err  # a control must be judged
    status, err = call([baseline, baseline, "--min-timed-seconds", "-1"], capsys)
    assert status == 2 and "--min-timed-seconds must be >= 0" in err

    garbled = tmp_path / "garbled"
    garbled.mkdir()
    (garbled / "cells.parquet").write_text("not parquet")
    status, err = call([baseline, garbled], capsys)
    assert status == 2 and "not a readable parquet table" in err
    no_status = edited(baseline, tmp_path / "no_status", lambda cells: cells.pop("status"))
    status, err = call([baseline, no_status], capsys)
    assert status == 2 and "missing column(s) status" in err

    def elsewhere(cells: pd.DataFrame) -> None:
        cells["problem"] = "elsewhere"
        cells["cell"] = "x" + cells["cell"]

    renamed = edited(baseline, tmp_path / "renamed", elsewhere)
    status, err = call([baseline, renamed], capsys)
    assert status == 2 and "nothing to compare" in err
    assert call([baseline, baseline, "--json", baseline / "cells.parquet" / "x.json"], capsys)[0] == 2


def test_an_older_table_without_some_columns_or_metadata(baseline, tmp_path, capsys):
    """A table from an older bench (no conformance, no CPU time, no metadata) still compares; the
    checks that need the missing columns are skipped with a note."""
    old = tmp_path / "old"
    old.mkdir()
    dropped = ["conformance", "cpu_seconds", "timed_batches", "batch_log_sd"]
    cells = pd.read_parquet(baseline / "cells.parquet").drop(columns=dropped)
    cells.to_parquet(old / "cells.parquet")  # pandas' own writer: no bench metadata
    for first, second in ((old, baseline), (baseline, old)):
        status = compare.main([str(first), str(second), "--all", "--json", str(tmp_path / "r.json")])
        out = capsys.readouterr().out
        assert status == 0, out
        assert "column conformance missing in" in out and "8 matched (8 by id" in out
        assert "column timed_batches missing in" in out
        full = json.loads((tmp_path / "r.json").read_text())
        assert all(cell["variance_ratio"] == 1 for cell in full["cells"])
        assert all("no per-batch timings" in cell["throughput_note"] for cell in full["cells"])


def write_cells(directory: Path, cells: pd.DataFrame, like: Path) -> Path:
    """A sweep directory holding only ``cells`` as its cells.parquet, with the metadata of ``like``."""
    directory.mkdir()
    metadata = pq.read_schema(like / "cells.parquet").metadata
    table = pa.Table.from_pandas(cells, preserve_index=False)
    pq.write_table(table.replace_schema_metadata(metadata), directory / "cells.parquet")
    return directory


def test_repeated_settings_pair_on_seed_or_stay_unmatched(baseline, tmp_path, capsys):
    cells = pd.read_parquet(baseline / "cells.parquet")
    copies = []
    for seed in (1, 2):  # every setting twice in NEW, at seeds 1 and 2, under new ids
        copy = cells.copy()
        copy["seed"] = seed
        copy["cell"] = f"s{seed}-" + copy["cell"]
        copies.append(copy)
    new = write_cells(tmp_path / "two_seeds", pd.concat(copies, ignore_index=True), baseline)
    # seed 0 against seeds 1 and 2: no way to tell which is the counterpart, nothing is compared
    status, err = call([baseline, new], capsys)
    assert status == 2 and "nothing to compare" in err
    # seed 1 against seeds 1 and 2: paired on setting + seed; the seed-2 cells are left over
    seed1 = cells.assign(seed=1, cell="b-" + cells["cell"])
    base = write_cells(tmp_path / "seed1", seed1, baseline)
    status = compare.main([str(base), str(new), "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    full = json.loads((tmp_path / "r.json").read_text())
    assert status == 0, out
    assert full["matched"] == 8 and {cell["cell_new"][:3] for cell in full["cells"]} == {"s1-"}
    assert {cell["cell"][:3] for cell in full["unmatched"]["new"]} == {"s2-"}
    assert "unmatched in NEW (8)" in out and "share its setting" in out


@pytest.mark.statistical
def test_variance_test_false_alarm_rate_at_the_tolerance_boundary():
    """The variance test's per-cell false-alarm rate, simulated: two independent sweeps of one cell
    whose true variance ratio is exactly 1 + tolerance (the worst case of the null hypothesis), each
    variance and its standard error computed as bench.stats does. At the one-sided level 5% (z =
    1.645) the rejection rate must be about 5%; a broken test that ignores the new sweep's error
    must reject far more. False-alarm rate of this check: the count bound is the binomial's upper
    1e-3 quantile at 5% (normal approximation), so an honest test fails it with probability ≤ 1e-3."""
    rng = np.random.default_rng(20261123)
    replications, n, tolerance = 4000, 2000, 0.10
    z = 1.6448536269514722

    def variance_and_stderr(scale: float) -> tuple[np.ndarray, np.ndarray]:
        draws = rng.normal(0.0, scale, size=(replications, n))  # (R, n)
        squares = (draws - draws.mean(axis=1, keepdims=True)) ** 2  # s = (g − mean)²
        return draws.var(axis=1, ddof=1), squares.std(axis=1, ddof=1) / math.sqrt(n)

    v_base, se_base = variance_and_stderr(1.0)
    v_new, se_new = variance_and_stderr(math.sqrt(1 + tolerance))
    rejected = broken = 0
    for a, sa, b, sb in zip(v_base, se_base, v_new, se_new, strict=True):
        log_ratio, sd = compare.log_ratio_sd(a, sa, b, sb, shared=False)
        rejected += compare.variance_verdict(log_ratio, sd, z, tolerance) == "regression"
        broken += (
            compare.variance_verdict(log_ratio, sa / a, z, tolerance) == "regression"
        )  # new side ignored
    bound = replications * 0.05 + 3.09 * math.sqrt(replications * 0.05 * 0.95)
    assert rejected <= bound, rejected
    assert broken > bound, broken  # test the test: the check catches an overconfident variant
    # and power: a 50% increase is found almost always
    log_ratio, sd = compare.log_ratio_sd(1.0, float(se_base[0]), 1.5, 1.5 * float(se_base[0]), shared=False)
    assert compare.variance_verdict(log_ratio, sd, z, tolerance) == "regression"
