"""``bench compare``'s throughput test as a user runs it (design and false-alarm rate:
bench/compare/throughput.py, docs/compare.md).

Two kinds of evidence. Edited tables: a real tiny sweep whose cells.parquet copy is given
consistent timing columns (each cell timed ``seconds`` over ``batches`` batches, a batch-to-batch
spread, a full core held, load 0), so that what the test decides does not depend on how busy this
machine is; then one cell is slowed. Real sweeps: the plugin estimator ``plant`` (reinforce plus
extra work of its own kind, tests/perf/compare_false_alarms.py) swept with and without the extra
work on cells timed long enough to judge, matched by config (the code fingerprint changes the id).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from bench import compare
from tests.perf.compare_false_alarms import write_plant
from tests.test_compare import edited, row  # the same table surgery as the other compare tests

ROOT = Path(__file__).resolve().parent.parent
GRID = ["problem=bernoulli,categorical", "estimator=reinforce,rloo", "plots=false"]
# Cells timed ~0.7 s each on one idle core of the 2-core EPYC (32 batches of 9 510 estimates).
LONG_GRID = [
    "problem=multicategorical",
    "estimator=reinforce,rloo,plant",
    "n_samples=16",
    "n_estimates=300000",
    "threads=1",
    "plots=false",
]


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def sweep(out: Path, *args: str) -> Path:
    run = bench("sweep", *args, f"out={out}")
    assert run.returncode == 0, run.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 cells of a few milliseconds: bernoulli and categorical × reinforce and rloo × n_samples 2, 4."""
    return sweep(tmp_path_factory.mktemp("throughput") / "tiny", *GRID, "n_samples=2,4", "n_estimates=2000")


def set_timing(cells: pd.DataFrame, index, seconds: float, batches: int = 10, spread: float = 0.05) -> None:
    """Cells ``index`` as if timed ``seconds`` over ``batches`` batches with that spread of
    log(seconds per estimate), holding one full core on an idle machine."""
    cells.loc[index, "estimates_per_s"] = cells.loc[index, "n_estimates"] / seconds
    cells.loc[index, "cpu_seconds"] = seconds
    cells.loc[index, ["timed_batches", "batch_log_sd", "load_avg"]] = [batches, spread, 0.0]


def long_enough(cells: pd.DataFrame) -> None:
    """Every cell timed for 1 s over 10 batches (spread 0.05): long enough to judge."""
    set_timing(cells, cells.index, 1.0)


def slowed(
    problem: str,
    estimator: str,
    n_samples: int,
    factor: float,
    *,
    seconds: float = 1.0,
    batches: int = 10,
    spread: float = 0.05,
    load_avg: float = 0.0,
    held: float = 1.0,
) -> Callable[[pd.DataFrame], None]:
    """Every cell long enough to judge, and one of them ``factor`` times as fast (timed ``seconds``
    / factor), timed at that load, holding ``held`` of a core."""

    def edit(cells: pd.DataFrame) -> None:
        long_enough(cells)
        index = row(cells, problem, estimator, n_samples)
        set_timing(cells, [index], seconds / factor, batches, spread)
        cells.loc[index, "load_avg"] = load_avg
        cells.loc[index, "cpu_seconds"] *= held

    return edit


def report(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    path = tmp_path / "comparison.json"
    path.unlink(missing_ok=True)
    run = bench("compare", *args, "--json", path)
    return run, json.loads(path.read_text()) if path.exists() else {}


def by_setting(full: dict, problem: str, estimator: str, n_samples: int) -> dict:
    (cell,) = [
        c
        for c in full["cells"]
        if (c["problem"], c["estimator"], c["n_samples"]) == (problem, estimator, n_samples)
    ]
    return cell


def regressions(full: dict) -> dict[str, list[str]]:
    return {
        f"{c['problem']}:{c['estimator']}:{c['n_samples']}": c["regressions"]
        for c in full["cells"]
        if c["regressions"]
    }


def test_cells_timed_too_briefly_are_never_slower(tiny, tmp_path):
    """Half the throughput, on cells of a few milliseconds (or of one batch, or timed 0.1 s beside
    long ones): "too short to judge", exit 0, even with --count-busy."""

    def halved(cells: pd.DataFrame) -> None:
        cells.loc[row(cells, "categorical", "rloo", 2), "estimates_per_s"] /= 2

    new = edited(tiny, tmp_path / "b", halved)
    for extra in ([], ["--count-busy"]):
        run, full = report(tmp_path, tiny, new, "--all", *extra)
        assert run.returncode == 0, run.stdout + run.stderr
        cell = by_setting(full, "categorical", "rloo", 2)
        assert cell["throughput_ratio"] == pytest.approx(0.5) and not cell["throughput_judged"]
        assert cell["throughput_note"].startswith("too short to judge") and not cell["findings"]
        line = next(line for line in run.stdout.splitlines() if cell["cell_new"] in line)
        assert "0.5 short" in line and "SLOWER" not in run.stdout
        assert full["throughput_test"]["judged"] == 0 and full["throughput_test"]["too_short"] == 8

    # long, but one batch (no spread); or timed 0.05 s then 0.1 s beside cells timed 1 s
    cases = {
        "one_batch": (long_enough, slowed("categorical", "rloo", 2, 0.5, batches=1)),
        "brief": (
            slowed("categorical", "rloo", 2, 1.0, seconds=0.05),
            slowed("categorical", "rloo", 2, 0.5, seconds=0.05),
        ),
    }
    for name, (before, after) in cases.items():
        base, new = edited(tiny, tmp_path / f"{name}_a", before), edited(tiny, tmp_path / f"{name}_b", after)
        run, full = report(tmp_path, base, new)
        assert run.returncode == 0, (name, run.stdout)
        cell = by_setting(full, "categorical", "rloo", 2)
        assert cell["throughput_ratio"] == pytest.approx(0.5) and not cell["throughput_judged"], name
        assert full["throughput_test"]["judged"] == 7


def test_a_planted_slowdown_on_long_cells_is_a_regression(tiny, tmp_path):
    base = edited(tiny, tmp_path / "a", long_enough)
    run, full = report(tmp_path, base, edited(tiny, tmp_path / "half", slowed("categorical", "rloo", 2, 0.5)))
    assert run.returncode == 5, run.stdout + run.stderr
    assert regressions(full) == {"categorical:rloo:2": ["throughput"]}
    cell = by_setting(full, "categorical", "rloo", 2)
    assert cell["throughput_ratio"] == pytest.approx(0.5) and cell["throughput_z"] < -10
    assert "SLOWER" in next(line for line in run.stdout.splitlines() if cell["cell_new"] in line)
    info = full["throughput_test"]
    assert info["judged"] == 8 and info["machine_factor"] == pytest.approx(1) and info["control"] == "median"
    assert "1 regression(s): status 0, conformance 0, variance 0, throughput 1" in run.stdout
    # 25% slower: beyond the floor (0.85) and significant (z ≈ −4); 10% slower: within the floor
    for factor, status in ((0.75, 5), (0.9, 0)):
        new = edited(tiny, tmp_path / f"f{factor}", slowed("categorical", "rloo", 2, factor))
        assert bench("compare", base, new).returncode == status, factor
    # the same halving on a cell whose batches spread widely (sd 2 of log time): not significant
    noisy = edited(tiny, tmp_path / "noisy", slowed("categorical", "rloo", 2, 0.5, spread=2.0))
    run, full = report(tmp_path, base, noisy)
    assert run.returncode == 0, run.stdout
    assert -full["throughput_test"]["z"] < by_setting(full, "categorical", "rloo", 2)["throughput_z"] < -1


def test_a_uniformly_slower_machine_cancels_and_a_busy_one_is_not_counted(tiny, tmp_path):
    base = edited(tiny, tmp_path / "a", long_enough)

    def machine(cells: pd.DataFrame) -> None:
        long_enough(cells)
        set_timing(cells, cells.index, 1.6)  # every cell 1.6 times slower: another machine
        set_timing(cells, [row(cells, "bernoulli", "rloo", 4)], 1.6 * 2)  # and one cell twice that

    run, full = report(tmp_path, base, edited(tiny, tmp_path / "m", machine))
    assert run.returncode == 5 and regressions(full) == {"bernoulli:rloo:4": ["throughput"]}
    assert full["throughput_test"]["machine_factor"] == pytest.approx(1 / 1.6)
    # timed on a busy machine: reported, not counted, unless --count-busy
    busy = edited(tiny, tmp_path / "busy", slowed("categorical", "rloo", 2, 0.5, load_avg=99.0))
    run = bench("compare", base, busy)
    assert run.returncode == 0, run.stdout
    assert "not counted" in run.stdout and "load 99.0" in run.stdout
    assert bench("compare", base, busy, "--count-busy").returncode == 5
    # ... or holding half a core while timed (it waited for one: the load average missed it)
    waited = edited(tiny, tmp_path / "waited", slowed("categorical", "rloo", 2, 0.5, held=0.5))
    run = bench("compare", base, waited)
    assert run.returncode == 0 and "held 50% of a core" in run.stdout, run.stdout
    assert bench("compare", base, busy, "--no-throughput").returncode == 0


def test_control_cell_normalizes_instead_of_the_median(tiny, tmp_path):
    base = edited(tiny, tmp_path / "a", long_enough)
    control_slower = edited(tiny, tmp_path / "c", slowed("bernoulli", "reinforce", 4, 0.5))
    # the median: the slowed cell is the one regression
    run, full = report(tmp_path, base, control_slower)
    assert run.returncode == 5 and regressions(full) == {"bernoulli:reinforce:4": ["throughput"]}
    # normalized by that cell: every other cell is relatively faster, nothing regressed
    run, full = report(tmp_path, base, control_slower, "--control", "bernoulli:reinforce")
    assert run.returncode == 0, run.stdout
    assert full["throughput_test"]["control_n_samples"] == 4 and full["throughput_test"]["judged"] == 7
    assert "7 improvement(s)" in run.stdout
    assert compare.main([str(base), str(control_slower), "--control", "categorical:reinforce:2"]) == 5
    assert compare.main([str(base), str(control_slower), "--control", "median"]) == 5


@pytest.fixture(scope="module")
def plant_sweeps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real sweeps of cells timed ~0.7 s: twice with plant = reinforce (fast), once with plant doing
    twice reinforce's work (slow; the same name, another code fingerprint, so another cell id)."""
    home = tmp_path_factory.mktemp("plant")
    fast, slow = write_plant(home / "fast", 0.0), write_plant(home / "slow", 1.0)
    return {
        "a": sweep(home / "a", *LONG_GRID, f"plugins={fast}"),
        "b": sweep(home / "b", *LONG_GRID, f"plugins={fast}"),
        "slow": sweep(home / "slow_sweep", *LONG_GRID, f"plugins={slow}"),
    }


@pytest.mark.statistical
def test_real_sweeps_identical_code_passes_and_a_planted_slowdown_fails(plant_sweeps, tmp_path):
    """Identical code, swept twice: exit 0 (a false alarm has probability ≤ --alpha, here 1e-3, on
    a quiet machine by the test's design, docs/compare.md; drops timed on a busy machine are not
    counted). The plant twice as slow: SLOWER and exit 5, counted even on a busy machine
    (--count-busy; a halving is ~10 sd out with the noise measured beside two busy loops)."""
    run, full = report(tmp_path, plant_sweeps["a"], plant_sweeps["b"], "--alpha", "0.001")
    assert run.returncode == 0, run.stdout + run.stderr
    assert full["matched_by_id"] == 3 and full["throughput_test"]["judged"] == 3, run.stdout
    run, full = report(tmp_path, plant_sweeps["a"], plant_sweeps["slow"], "--count-busy")
    plant = by_setting(full, "multicategorical", "plant", 16)
    assert plant["match"] == "config" and plant["throughput_judged"], run.stdout
    assert plant["findings"].get("throughput") == "regression" and plant["regressions"] == ["throughput"]
    assert plant["throughput_ratio"] < 0.75 and run.returncode == 5, run.stdout
    assert plant["variance_ratio"] == 1  # the same estimates: the extra work is discarded
