"""How often ``bench compare`` cries wolf on throughput, and how often it catches a real slowdown,
measured as a user meets both: real sweeps in subprocesses, compared with ``bench compare`` at its
default settings. Not part of the test run (half an hour or more on 2 cores); run it by hand:

    python -m tests.perf.compare_false_alarms --pairs 20 --mode idle --out results/compare-fa
    python -m tests.perf.compare_false_alarms --pairs 20 --mode busy --out results/compare-fa
    python -m tests.perf.compare_false_alarms --mode idle --out results/compare-fa --recompare

Every sweep runs a copy of the source tree taken at the start (OUT/code), so the code stays the
same through the measurement even while the checkout is edited (``--no-snapshot``: the checkout).

Each *run* is one sweep directory holding two grids, merged into one cells.parquet:
- SHORT, the toy grid at the default n_estimates (24 cells timed a few milliseconds each: always
  "too short to judge");
- LONG, cells timed about 0.5–2 s each at ``threads=1``, the ones the test judges, among them the
  plugin estimator ``plant`` (reinforce, plus ``EXTRA`` of its own work per batch, estimated on
  noise from the auxiliary stream and discarded).

``--mode idle``: per pair, runs A and B with the fast plant (EXTRA = 0) and C with the slow one
(EXTRA = 0.3: 30% more work, the same ``name``, so C's plant cells are matched to A's by config:
the code fingerprint changes their ids); ``compare A B`` counts false alarms (exit 5), ``compare A
C`` counts detections (every judged plant cell SLOWER, exit 5). ``--mode busy``: A and B, each
swept beside two busy loops (``sh -c 'while :; do :; done'``, started here and ended by their
process group id). Every comparison's JSON is kept in OUT; the per-cell residuals log(r/m) and
their batch standard errors are printed, with the moment estimate of the run-to-run noise floor τ
(mean residual² minus the batch part), which is how bench.compare's default ``--noise-floor`` was
chosen (docs/compare.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SHORT = [
    "problem=bernoulli,categorical,multicategorical",
    "estimator=reinforce,rloo,disarm,gumbel_softmax",
    "n_samples=4,16",
]
LONG = [
    [
        "problem=multicategorical",
        "estimator=reinforce,rloo,gumbel_softmax,plant",
        "n_samples=16",
        "n_estimates=300000",
    ],
    ["problem=categorical", "estimator=reinforce,plant", "n_samples=16", "n_estimates=1000000"],
]
COMMON = ["threads=1", "plots=false", "seed=0"]
PLANT_NAME = "plant"
PLANT = '''"""reinforce, plus EXTRA of its own work per batch (estimated on auxiliary noise, discarded)."""

from bench.estimators.reinforce import Reinforce

EXTRA = {extra!r}


class Plant(Reinforce):
    name = "{name}"

    def make_noise(self, problem, generator, aux_generator, batch, dtype):
        noise = super().make_noise(problem, generator, aux_generator, batch, dtype)
        extra = round(EXTRA * batch[0])
        if not extra:
            return noise
        return noise, problem.noise(aux_generator, (extra, *batch[1:]), dtype)

    def estimate(self, problem, params, noise):
        if isinstance(noise, tuple):
            noise, extra = noise
            super().estimate(problem, params, extra)  # the planted work: estimated and discarded
        return super().estimate(problem, params, noise)
'''


def write_plant(directory: Path, extra: float, name: str = PLANT_NAME) -> Path:
    """A plugin file defining the estimator ``name``: reinforce plus ``extra`` of its own work."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"plant_{str(extra).replace('.', '_')}.py"
    path.write_text(PLANT.format(extra=float(extra), name=name))
    return path


# Where the sweeps run: a frozen copy of the source tree (``snapshot``), so that every sweep of a
# measurement runs the same code even while the checkout is being edited.
CODE = {"root": ROOT}


def snapshot(out: Path) -> Path:
    """Copies bench's source (bench/, estimators/, problems/, conf/, hydra_plugins/) to OUT/code
    and runs every later sweep there (``python -m bench`` from that directory imports that copy)."""
    code = out / "code"
    shutil.rmtree(code, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("bench", "estimators", "problems", "conf", "hydra_plugins"):
        shutil.copytree(ROOT / name, code / name, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", code / "pyproject.toml")
    CODE["root"] = code
    return code


def bench(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench", *map(str, args)],
        cwd=CODE["root"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def merge(out: Path, plugin: Path) -> None:
    """Merges every finished cell under ``out`` (both grids) into out/cells.parquet."""
    code = (
        "import sys; from pathlib import Path; from bench.plugins import load_one; "
        "from bench.output import merge, run_metadata; load_one(sys.argv[2], 'plugins key'); "
        "merge(Path(sys.argv[1]), run_metadata(None))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(out), str(plugin)], cwd=CODE["root"], capture_output=True, text=True
    )
    if run.returncode:
        raise RuntimeError(f"merging {out} failed:\n{run.stderr[-3000:]}")


def sweep(out: Path, plugin: Path) -> Path:
    for grid in (SHORT, *LONG):
        run = bench("sweep", *grid, *COMMON, f"plugins={plugin}", f"out={out}")
        if run.returncode:
            raise RuntimeError(f"bench sweep {' '.join(grid)} failed:\n{run.stderr[-3000:]}")
    merge(out, plugin)
    return out


def compare(base: Path, new: Path, report: Path) -> tuple[int, dict[str, Any]]:
    run = bench("compare", base, new, "--json", report)
    if run.returncode not in (0, 5):
        raise RuntimeError(f"bench compare failed ({run.returncode}):\n{run.stdout[-2000:]}{run.stderr}")
    return run.returncode, json.loads(report.read_text())


def judged_cells(full: dict[str, Any]) -> list[dict[str, Any]]:
    """Per judged pair: estimator, the residual log(r/m), its batch standard error, z, flags."""
    cells = []
    for cell in full["cells"]:
        if not cell.get("throughput_judged"):
            continue
        se2 = sum(
            cell[f"batch_log_sd_{side}"] ** 2 / cell[f"timed_batches_{side}"] for side in ("baseline", "new")
        )
        cells.append(
            {
                "estimator": cell["estimator"],
                "problem": cell["problem"],
                "residual": math.log(cell["throughput_ratio"]),
                "batch_se": math.sqrt(se2),
                "z": cell["throughput_z"],
                "finding": cell["findings"].get("throughput"),
                "counted": "throughput" in cell["regressions"],
                "busy": cell.get("busy"),
                "held_new": cell.get("core_share_new"),
            }
        )
    return cells


class BusyLoops:
    """Two busy loops beside the sweeps, each in its own process group, ended by that id."""

    def __init__(self, count: int) -> None:
        self.count, self.groups = count, []

    def __enter__(self) -> BusyLoops:
        for _ in range(self.count):
            loop = subprocess.Popen(
                ["timeout", "1200", "sh", "-c", "while :; do :; done"], start_new_session=True
            )
            self.groups.append(loop.pid)
        time.sleep(1.0)
        return self

    def __exit__(self, *exc: object) -> None:
        for group in self.groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
        self.groups = []


def load() -> float:
    return os.getloadavg()[0]


def wait_for_quiet(limit: float, most: float = 1800.0) -> float:
    """Waits (at most ``most`` seconds) until the 1-minute load average is below ``limit``; the
    seconds waited."""
    tic = time.perf_counter()
    while load() >= limit and time.perf_counter() - tic < most:
        time.sleep(15)
    return time.perf_counter() - tic


def one_pair(index: int, mode: str, out: Path, plugins: dict[str, Path], quiet: float) -> dict[str, Any]:
    folder = out / f"{mode}-{index:02d}"
    waited = wait_for_quiet(quiet) if quiet else 0.0
    record: dict[str, Any] = {"pair": index, "mode": mode, "waited": waited, "load_before": load()}
    with BusyLoops(2 if mode == "busy" else 0):
        a = sweep(folder / "a", plugins["fast"])
        b = sweep(folder / "b", plugins["fast"])
    status, full = compare(a, b, folder / "a-b.json")
    record.update(status=status, judged=judged_cells(full), machine=full["throughput_test"]["machine_factor"])
    if mode == "idle":
        c = sweep(folder / "c", plugins["slow"])
        status, full = compare(a, c, folder / "a-c.json")
        record.update(planted_status=status, planted=judged_cells(full))
    record["load_after"] = load()
    return record


def tau_estimate(records: list[dict[str, Any]], key: str = "judged", quiet: bool = True) -> dict[str, float]:
    """The moment estimate of τ over the judged cells without a planted slowdown (timed quietly in
    both sweeps if ``quiet``): sqrt(mean(residual²) − mean(batch se²))."""
    cells = [
        c
        for r in records
        for c in r.get(key, [])
        if (c["estimator"] != PLANT_NAME or key == "judged") and not (quiet and c["busy"])
    ]
    if not cells:
        return {"cells": 0}
    residual2 = statistics.fmean(c["residual"] ** 2 for c in cells)
    batch2 = statistics.fmean(c["batch_se"] ** 2 for c in cells)
    absolute = sorted(abs(c["residual"]) for c in cells)
    return {
        "cells": len(cells),
        "rms_residual": math.sqrt(residual2),
        "rms_batch_se": math.sqrt(batch2),
        "tau_moment": math.sqrt(max(residual2 - batch2, 0.0)),
        "max_abs_residual": absolute[-1],
        "p95_abs_residual": absolute[int(0.95 * (len(absolute) - 1))],
        "min_z": min(c["z"] for c in cells),
    }


def summary(records: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    result: dict[str, Any] = {
        "mode": mode,
        "pairs": len(records),
        "exit_5_pairs": sum(r["status"] == 5 for r in records),
        "pairs_with_any_slower_finding": sum(
            any(c["finding"] == "regression" for c in r["judged"]) for r in records
        ),
        "judged_per_pair": [len(r["judged"]) for r in records],
        "load_before": [round(r["load_before"], 2) for r in records],
        "noise_quiet": tau_estimate(records),
        "noise_all": tau_estimate(records, quiet=False),
        "quiet_judged_per_pair": [sum(not c["busy"] for c in r["judged"]) for r in records],
    }
    if mode == "idle":
        planted = [[c for c in r["planted"] if c["estimator"] == PLANT_NAME] for r in records]
        result.update(
            noise_quiet_planted_pairs=tau_estimate(records, "planted"),
            planted_exit_5=sum(r["planted_status"] == 5 for r in records),
            planted_all_slower=sum(bool(p) and all(c["finding"] == "regression" for c in p) for p in planted),
            planted_quiet=f"{sum(not c['busy'] for p in planted for c in p)}/{sum(map(len, planted))}",
            planted_all_flagged=sum(bool(p) and all(c["counted"] for c in p) for p in planted),
            planted_cells_flagged=f"{sum(c['counted'] for p in planted for c in p)}/{sum(map(len, planted))}",
            planted_residuals=[round(c["residual"], 3) for p in planted for c in p],
            planted_false_alarms_other_cells=sum(
                c["counted"] for r in records for c in r["planted"] if c["estimator"] != PLANT_NAME
            ),
        )
    return result


def recompare(out: Path, mode: str) -> list[dict[str, Any]]:
    """The kept sweeps of ``mode`` under OUT compared again with today's defaults (a new
    --noise-floor, say): the records, as the runs would have written them."""
    records = [json.loads(line) for line in (out / f"{mode}.jsonl").read_text().splitlines()]
    for record in records:
        folder = out / f"{mode}-{record['pair']:02d}"
        status, full = compare(folder / "a", folder / "b", folder / "a-b.json")
        record.update(status=status, judged=judged_cells(full))
        if mode == "idle":
            status, full = compare(folder / "a", folder / "c", folder / "a-c.json")
            record.update(planted_status=status, planted=judged_cells(full))
    return records


def main(argv: list[str] | None = None) -> int:
    parse = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parse.add_argument("--pairs", type=int, default=20)
    parse.add_argument("--mode", choices=["idle", "busy"], default="idle")
    parse.add_argument("--out", type=Path, default=ROOT / "results" / "compare-false-alarms")
    parse.add_argument(
        "--recompare", action="store_true", help="compare the sweeps kept in OUT again; run no sweep"
    )
    parse.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="LOAD",
        help="before each pair, wait (up to 30 min) until the 1-minute load average is below LOAD",
    )
    parse.add_argument(
        "--no-snapshot", dest="snapshot", action="store_false", help="run the checkout itself, not a copy"
    )
    args = parse.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.snapshot:
        snapshot(args.out)
    if args.recompare:
        result = summary(recompare(args.out, args.mode), args.mode)
        print(json.dumps(result, indent=1))
        return 0
    plugins = {"fast": write_plant(args.out, 0.0), "slow": write_plant(args.out, 0.3)}
    records = []
    log = args.out / f"{args.mode}.jsonl"
    for index in range(args.pairs):
        tic = time.perf_counter()
        record = one_pair(index, args.mode, args.out, plugins, args.wait_quiet)
        records.append(record)
        with log.open("a") as stream:
            stream.write(json.dumps(record) + "\n")
        planted = f", planted exit {record['planted_status']}" if "planted_status" in record else ""
        print(
            f"pair {index}: exit {record['status']}{planted}, {len(record['judged'])} judged, machine factor "
            f"{record['machine']:.3f}, load {record['load_before']:.2f}→{record['load_after']:.2f}, "
            f"{time.perf_counter() - tic:.0f} s",
            flush=True,
        )
    result = summary(records, args.mode)
    (args.out / f"{args.mode}-summary.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
