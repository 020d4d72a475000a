"""Sizing cluster tasks to the work: which launcher, the sweeper's ``cells_per_job``, the cores a
task was given, and the cells each task holds (see the package docstring)."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from typing import Any

from bench.cluster.constants import (
    DEFAULT_SECONDS_PER_SAMPLE,
    SECONDS_PER_CELL,
    SECONDS_PER_SAMPLE,
    STARTUP_SECONDS,
    STARTUP_SHARE,
)
from bench.errors import ConfigError


# --- which launchers, and the sweeper's key ----------------------------------------------------------
def submitit_kind(launcher: Any) -> str | None:
    """``slurm`` or ``local`` for hydra-submitit-launcher's launchers, else None."""
    try:
        from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
    except ImportError:
        return None
    return launcher._EXECUTOR if isinstance(launcher, BaseSubmititLauncher) else None


def parse_cells_per_job(value: Any) -> int | None:
    """``hydra.sweeper.cells_per_job``: auto (None) or an integer >= 1."""
    if value is None or value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError("hydra.sweeper.cells_per_job", f"expected auto or an integer >= 1, got {value!r}")
    return value


def allotted_cores() -> int | None:
    """Cores a cluster task was given, for ``threads=auto``: Slurm's ``SLURM_CPUS_PER_TASK`` (or,
    inside a Slurm job that asked for no per-task count, ``SLURM_CPUS_ON_NODE``), or
    ``BENCH_TASK_CPUS``, which bench sets for ``submitit_local`` jobs (the cores split between the
    jobs that run at once). None outside a cluster task: then the node's usable cores count."""
    names = ["BENCH_TASK_CPUS", "SLURM_CPUS_PER_TASK"]
    if os.environ.get("SLURM_JOB_ID"):
        names.append("SLURM_CPUS_ON_NODE")
    for name in names:
        match = re.match(r"\s*(\d+)", os.environ.get(name, ""))
        if match and int(match[1]) >= 1:
            return int(match[1])
    return None


# --- sizing tasks -----------------------------------------------------------------------------------
def projected_seconds(problem: str, n_samples: int, n_estimates: int) -> float:
    """A cheap projection of one cell's seconds on one thread (``SECONDS_PER_SAMPLE``)."""
    rate = SECONDS_PER_SAMPLE.get(problem, DEFAULT_SECONDS_PER_SAMPLE)
    return SECONDS_PER_CELL + rate * max(1, int(n_samples)) * max(1, int(n_estimates))


def task_count(costs: Sequence[float], startup: float = STARTUP_SECONDS, share: float = STARTUP_SHARE) -> int:
    """cells_per_job=auto: as many tasks as keep start-up at most ``share`` of each (every task
    holds at least ``startup·(1 − share)/share`` projected seconds, 54 s by default), at least one
    and at most one per cell."""
    if not costs:
        return 0
    least = startup * (1 - share) / share
    return max(1, min(len(costs), math.floor(sum(costs) / least)))


def group_cells(
    indices: Sequence[int],
    costs: Sequence[float],
    cells_per_job: int | None,
    startup: float = STARTUP_SECONDS,
    share: float = STARTUP_SHARE,
) -> list[list[int]]:
    """The planned cells ``indices`` (with projected ``costs``) cut into tasks. ``cells_per_job``:
    that many cells a task; None (auto): ``task_count`` tasks of about equal projected seconds, each
    at least ``startup·(1 − share)/share``.

    The cells are first shuffled (a fixed seed, so a plan always cuts the same way), so that each
    task is a fair sample of the grid and the projection's errors, which are shared by the cells of
    a problem, average out. The default grid's two tasks, measured once each way on the 2-core
    test machine: cut in plan order (toy problems in one, VAEs in the other), 100 s and 66 s, the
    sweep 105 s; shuffled, 74 s and 62 s, the sweep 80 s. Within a task the cells run in plan order
    (a problem's cells together, built once)."""
    import random

    order = list(range(len(indices)))
    random.Random(0).shuffle(order)
    if cells_per_job is not None:
        parts = [order[i : i + cells_per_job] for i in range(0, len(order), cells_per_job)]
    else:
        n, least = task_count(costs, startup, share), startup * (1 - share) / share
        parts, sums, left = [[]], [0.0], float(sum(costs))
        for position in order:
            cost = costs[position]
            # a new task once this one holds its share of what is left (the cell's midpoint past it)
            target = (left + sums[-1]) / (n - len(parts) + 1)
            if len(parts) < n and sums[-1] >= least and sums[-1] + cost / 2 >= target:
                parts.append([])
                sums.append(0.0)
            parts[-1].append(position)
            sums[-1] += cost
            left -= cost
        if len(parts) > 1 and sums[-1] < least:  # too short a last task joins the one before
            parts[-2] += parts.pop()
    return [[indices[position] for position in sorted(part)] for part in parts if part]


# --- the sweep's use -------------------------------------------------------------------------------------
def describe_tasks(kind: str, parts: Sequence[Sequence[int]], n_cells: int, cells_per_job: int | None,
                   seconds: float) -> str:  # fmt: skip
    how = (f"cells_per_job={cells_per_job}" if cells_per_job is not None else
           f"cells_per_job=auto: ~{seconds:.0f} s of projected work, each task at least "
           f"{STARTUP_SECONDS * (1 - STARTUP_SHARE) / STARTUP_SHARE:.0f} s against {STARTUP_SECONDS:.0f} s "
           "of start-up")  # fmt: skip
    name = "Slurm" if kind == "slurm" else "local"
    return f"bench: {n_cells} cells in {len(parts)} {name} task{'s' if len(parts) != 1 else ''} ({how})"


def plan_tasks(grid: Any, indices: Sequence[int], cells_per_job: int | None) -> tuple[list[list[int]], float]:
    costs = [
        projected_seconds(
            grid.specs[i].names["problem"], grid.specs[i].settings["n_samples"],
            grid.specs[i].settings["n_estimates"],
        )
        for i in indices
    ]  # fmt: skip
    return group_cells(indices, costs, cells_per_job), sum(costs)
