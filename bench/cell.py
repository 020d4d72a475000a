"""One cell of a sweep: its threads, its progress and time guard, and measuring it into its files
(``run_job`` for a planned job, ``measure`` for built objects, which ``bench.run`` shares)."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from bench.errors import NotApplicable
from bench.estimators.base import Estimator
from bench.output import (
    run_metadata,
    scratch,
    usable_cores,
    write_cell,
)
from bench.plan import JobSpec
from bench.problems.base import Problem
from bench.registry import (  # re-exported: tests and plugins import them from here
    GROUPS,
    build,
)
from bench.runner import run_cell
from bench.settings import (  # re-exported: the sweeper imports them from here
    cell_settings,
    format_duration,
    parse_duration,
    parse_threads,
    resolve_device,
)
from bench.stops import TimeLimitExceeded

log = logging.getLogger("bench")
PROGRESS_EVERY = 10.0  # seconds between progress lines of a long cell when output is not a terminal


def runnable_elsewhere() -> int | None:
    """How many tasks other than this process's threads are runnable right now (Linux: the
    instantaneous run-queue count of /proc/loadavg minus our own runnable threads; median of three
    samples 2 ms apart). None where the OS does not say."""
    counts = []
    for attempt in range(3):
        try:
            total = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
            own = 0
            for task in Path("/proc/self/task").iterdir():
                stat = (task / "stat").read_text()
                own += stat[stat.rindex(")") + 2] == "R"
        except (OSError, ValueError, IndexError):
            return None
        counts.append(max(0, total - own))
        if attempt < 2:
            time.sleep(0.002)
    return sorted(counts)[1]


def auto_threads(workers: int) -> int:
    """The ``threads=auto`` policy: the usable cores split between the launcher's parallel workers,
    and no more than the cores other processes leave free when the cell starts (at least 1).

    Why: torch's intra-op threads synchronize at every operation; when a thread has no core of its
    own it waits a scheduler slice, and a cell of many small operations slows down by ~100×.
    """
    from bench.cluster import allotted_cores

    cores = usable_cores()
    allotted = allotted_cores()  # a cluster task: the cores Slurm (or bench, for local jobs) gave it
    if allotted is not None:
        return max(1, min(cores, allotted) // max(1, workers))
    share = max(1, cores // max(1, workers))
    others = runnable_elsewhere()
    if others is None:
        return share
    return max(1, min(share, cores - others))


def launcher_workers() -> int:
    """Parallel workers of the running launcher (joblib's n_jobs; 1 for the serial launcher)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        n_jobs = HydraConfig.get().launcher.get("n_jobs")
    except (ValueError, AttributeError):
        return 1
    if not isinstance(n_jobs, int) or n_jobs == 0:
        return 1
    return usable_cores() if n_jobs < 0 else n_jobs


class Progress:
    """A progress bar on a terminal; elsewhere (a log file, CI) one line every PROGRESS_EVERY
    seconds for a cell that runs longer than that, with an ETA."""

    def __init__(self, label: str, total: int) -> None:
        from tqdm import tqdm

        self.label, self.total, self.done = label, total, 0
        self.started = self.last = time.perf_counter()
        self.bar = tqdm(total=total, desc=label, unit="est", leave=False, disable=None)

    def __call__(self, size: int) -> None:
        self.done += size
        self.bar.update(size)
        now = time.perf_counter()
        if self.bar.disable and now - self.last >= PROGRESS_EVERY and self.done < self.total:
            self.last = now
            rate = self.done / (now - self.started)
            eta = format_duration((self.total - self.done) / rate)
            share = self.done / self.total
            log.info(f"  {self.label}: {self.done:,} of {self.total:,} estimates ({share:.0%}), "
                     f"{rate:.3g}/s, about {eta} left")  # fmt: skip

    def close(self) -> None:
        self.bar.close()


def sweep_state(out: Path) -> dict[str, Any]:
    try:
        return json.loads((scratch(out) / "sweep.json").read_text())
    except (OSError, ValueError):
        return {}


def time_guard(
    out: Path, label: str, n_estimates: int, limit: float | None
) -> Callable[[float, float], None]:
    """Stop the sweep before a cell whose projected time would carry it past ``time_limit``."""
    started = sweep_state(out).get("started", time.time())

    def guard(projected: float, rate: float) -> None:
        if limit is None:
            return
        spent = max(0.0, time.time() - started)
        if spent + projected > limit:
            allow = format_duration(math.ceil((spent + projected) * 1.2 / 3600) * 3600)
            raise TimeLimitExceeded(
                f"{label} would take about {format_duration(projected)} ({n_estimates:,} estimates at "
                f"{rate:.3g}/s), which with the {format_duration(spent)} already spent passes "
                f"time_limit={format_duration(limit)}. To allow it, add time_limit={allow.replace(' ', '')} "
                f"(or time_limit=none); or lower n_estimates."
            )

    return guard


def run_job(
    cfg: DictConfig, choices: dict[str, str], problems: dict[str, Problem] | None = None
) -> dict[str, Any]:
    """Run the cell ``cfg`` and write its files; a failure becomes a ``failed`` row, not a crash.

    ``problems``: built problems to reuse across the cells of one process, by config (a problem is
    functional, and keeps its exact gradient and dtype casts between cells); estimators are built
    fresh for every cell, since a fit stage changes them."""
    names = {group: choices[group] for group in GROUPS}
    configs = {group: OmegaConf.to_container(cfg[group], resolve=True) for group in GROUPS}

    def make(device: torch.device) -> tuple[Problem, Estimator]:
        key = json.dumps([names["problem"], configs["problem"], str(device)], sort_keys=True, default=str)
        if problems is not None and key in problems:
            problem: Problem = problems[key]
        else:
            problem = build("problem", names["problem"], configs["problem"], device)
            if problems is not None:
                problems[key] = problem
        return problem, build("estimator", names["estimator"], configs["estimator"])

    settings = {k: cfg[k] for k in ("n_samples", "n_estimates", "seed", "dtype")}
    settings["reference_gradient"] = cfg.get("reference_gradient")  # in the id of estimated-reference cells
    cell = JobSpec(names, configs, settings).cell()
    return measure(cfg, names, configs, cell, make)


def measure(
    cfg: DictConfig,
    names: dict[str, str],
    configs: dict[str, dict[str, Any]],
    cell: str,
    make: Callable[[torch.device], tuple[Problem, Estimator]],
) -> dict[str, Any]:
    """Measure one cell whose problem and estimator ``make(device)`` builds, and write its files
    under ``cfg.out``; what the sweep and ``bench.run`` share."""
    out = Path(cfg.out)
    row: dict[str, Any] = {
        "problem": names["problem"], "estimator": names["estimator"], "n_samples": cfg.n_samples,
        "n_estimates": cfg.n_estimates, "seed": cfg.seed, "dtype": cfg.dtype, "device": str(cfg.device),
        "cell": cell,
    }  # fmt: skip
    dims: list[dict[str, Any]] = []
    threads_before = torch.get_num_threads()
    try:
        settings = cell_settings(cfg)
        threads = parse_threads(cfg.threads) or auto_threads(launcher_workers())
        torch.set_num_threads(threads)
        problem, estimator = make(resolve_device(cfg.device))
        row["unbiased"] = estimator.unbiased
        label = f"{names['problem']} × {names['estimator']} (n_samples={cfg.n_samples})"
        progress = Progress(label, cfg.n_estimates)
        guard = time_guard(out, label, cfg.n_estimates, parse_duration(cfg.time_limit))
        try:
            result = run_cell(
                problem, estimator, **settings, cell=row["cell"], progress=progress, projection=guard
            )
        finally:
            progress.close()
        row.update(result.row)
        dims = result.dims
    except NotApplicable as reason:
        row.update(status="skipped", reason=str(reason))
    except Exception as error:
        # One line on stdout (describe, below) says why; the traceback only at debug level.
        log.debug("cell %s failed", row["cell"], exc_info=True)
        row.update(status="failed", reason=" ".join(f"{type(error).__name__}: {error}".split()))
    finally:
        torch.set_num_threads(threads_before)
    write_cell(out, row, dims, configs, run_metadata(OmegaConf.to_container(cfg, resolve=True)))
    log.info(describe(row))
    return row


def describe(row: dict[str, Any]) -> str:
    head = f"{row['problem']} × {row['estimator']} (n_samples={row['n_samples']}): {row.get('status')}"
    if row.get("status") == "ok":
        return (
            f"{head}  variance={row['variance']:.4g} bias={row['bias_norm']:.3g} "
            f"p={row['bias_pvalue']:.3g} {row['estimates_per_s']:.3g} estimates/s"
        )
    return f"{head}: {row.get('reason')}"
