"""bench's Hydra sweeper: a thin class over Hydra's basic sweeper; the logic is in ``bench.sweep``.

Hydra accepts plugin classes only from the ``hydra_plugins`` namespace, so the class lives here.
Hydra also discovers plugins by scanning that namespace, which fails for editable installs
(setuptools' import hook hides the package from pkgutil); ``register`` hands the class to Hydra
directly (``bench.sweep.register_sweeper``), so discovery does not matter.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import configure_log
from omegaconf import DictConfig, OmegaConf

from bench.cluster import Cluster, describe_tasks, parse_cells_per_job, plan_tasks, run_planned, submitit_kind
from bench.errors import ConfigError
from bench.output import scratch, usable_cores
from bench.plan import SWEEP, Kind, Plan
from bench.sweep import (
    GridRules,
    check_sweep_settings,
    check_writable,
    chunk_overrides,
    chunks,
    default_grid,
    describe_plan,
    execute,
    exit_usage,
    first_missing,
    plan,
    run_in_process,
    typed_exclusions,
    write_plan,
)

T = TypeVar("T")


class Planned(NamedTuple, Generic[T]):
    """``BenchSweeper.checked_plan``'s result."""

    grid: Plan
    out: Path
    created: Path | None  # the first folder this command creates (removed on bad input)
    checked: T  # what the command's own check returned


class BenchSweeper(BasicSweeper):
    """Hydra's basic grid sweeper, plus: keys apply only where they exist, duplicate cells are
    dropped, every cell is validated before any work, finished cells are reused, and the results
    are merged at the end."""

    def __init__(
        self,
        max_batch_size: int | None = None,
        params: dict[str, str] | None = None,
        only: dict[str, Any] | None = None,
        exclude: list[str] | None = None,
        cells_per_job: Any = "auto",
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.only = only or {}
        self.exclude = exclude or []
        self.cells_per_job = cells_per_job

    def _compose(self, overrides: list[str]) -> DictConfig:
        assert self.hydra_context is not None and self.config is not None
        return self.hydra_context.config_loader.load_sweep_config(self.config, overrides)

    def expand(self, arguments: list[str]) -> tuple[list[list[str]], list[str]]:
        """(the grid's jobs, the keys typed): the config's grid less what the user replaces,
        crossed with what they typed (Hydra's basic sweeper's expansion)."""
        assert self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        user_keys = [o.get_key_element().lstrip("+~") for o in parser.parse_overrides(arguments)]
        overrides = parser.parse_overrides([*default_grid(dict(self.params), user_keys), *arguments])
        (jobs,) = self.split_arguments(overrides, None)
        return jobs, user_keys

    def plan_jobs(self, jobs: list[list[str]], user_keys: list[str], config_name: str, kind: Kind) -> Plan:
        """``bench.plan.plan`` of the expanded grid under this config's own rules (``only``,
        ``exclude``; an exclusion the user typed applies, ``typed_exclusions``), raising ConfigError."""
        typed = typed_exclusions(self.exclude, config_name)
        rules = GridRules.from_config(self.only, self.exclude, [*user_keys, *typed])
        return plan(jobs, self._compose, self._compose([]), user_keys, rules, kind=kind)

    def checked_plan(
        self, arguments: list[str], noun: str, item: str, config_name: str, kind: Kind, check: Callable[[], T]
    ) -> Planned[T]:
        """The plan, ``out``, the first folder this command creates and what ``check()`` returned:
        the grid expanded, the command's own
        ``check`` and a writable ``out`` (unless a dry run) before every ``item``'s config is
        validated (``plan_jobs``). Bad input exits 2 and removes what this created (``exit_usage``)."""
        assert self.config is not None
        tic = time.perf_counter()
        jobs, user_keys = self.expand(arguments)
        out = Path(self.config.hydra.sweep.dir)
        created = first_missing(scratch(out))
        try:
            checked = check()
            if self.config.get("dry_run") is not True:
                check_writable(out)
            print(f"bench: planning {len(jobs)} {noun} (validating every {item}'s config)...", flush=True)
            grid = self.plan_jobs(jobs, user_keys, config_name, kind)
        except ConfigError as error:
            exit_usage(error, created)
        print(f"bench: planned in {time.perf_counter() - tic:.1f} s", flush=True)
        return Planned(grid, out, created, checked)

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        if self.config.get("command") == "train":  # bench train: runs, not cells (bench.training)
            from bench.training.command import sweep_train

            return sweep_train(self, arguments)
        kind = submitit_kind(self.launcher)

        def check() -> int | None:
            check_sweep_settings(self.config)
            return parse_cells_per_job(self.cells_per_job)

        grid, out, created, cells_per_job = self.checked_plan(
            arguments, "jobs", "cell", "config", SWEEP, check
        )
        dry_run = self.config.get("dry_run") is True
        if dry_run:
            print(describe_plan(grid, out))
            if kind is not None:  # how the cells would be cut into cluster tasks
                to_run = [i for i, reason in enumerate(grid.skipped) if reason is None]
                parts, seconds = plan_tasks(grid, to_run, cells_per_job)
                print(describe_tasks(kind, parts, len(to_run), cells_per_job, seconds))
            return []
        cluster = None
        if kind is not None:
            try:  # the executor before any work: a launcher that cannot submit is bad input
                cluster = Cluster(self.launcher, out)
            except ConfigError as error:
                exit_usage(error, created)
        OmegaConf.save(self.config, scratch(out) / "multirun.yaml")

        if type(self.launcher) is BasicLauncher:
            # Hydra's serial launcher composes every job's config again (~0.2 s a job) before
            # running it in this process; the plan already holds the configs, so run them directly.
            configure_log(self.config.hydra.job_logging, self.config.hydra.verbose)

            def launch(indices: list[int]) -> Any:
                return run_in_process([grid.specs[i] for i in indices])

        elif cluster is not None:
            # A cluster (submitit's Slurm or local launcher): tasks of several cells, sized so that
            # a task's start-up (~6 s) is a small share of it; bench submits, records, watches and
            # cancels them itself (bench.cluster).
            config = OmegaConf.to_container(self.config, resolve=False)

            def launch(indices: list[int]) -> Any:
                assert cluster is not None
                return run_planned(cluster, grid, out, indices, cells_per_job, config)

        else:
            # Parallel launchers: one launcher job per chunk of planned cells. A job costs ~0.3 s of
            # Hydra's composing and pickling; with joblib, chunks that shrink as the plan runs out
            # keep the workers busy to the end (``chunks``); elsewhere, one cell per job.
            n_jobs = self.config.hydra.launcher.get("n_jobs")

            def launch(indices: list[int]) -> Any:
                assert self.launcher is not None
                if isinstance(n_jobs, int) and n_jobs != 0:
                    parts = chunks(indices, usable_cores() if n_jobs < 0 else n_jobs)
                else:
                    parts = [[index] for index in indices]
                plan_path = write_plan(grid, out, parts)
                jobs = [chunk_overrides(plan_path, i, out) for i in range(len(parts))]
                return self.launcher.launch(jobs, initial_job_idx=0)

        status = execute(grid, out, self.config, launch, self.max_batch_size)
        for line in cluster.report if cluster is not None else []:
            print(line, file=sys.stderr)
        if status:
            sys.exit(status)
        return []
