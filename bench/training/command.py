"""``bench train [overrides]``: a Hydra multirun over training runs, planned and validated like
``bench sweep``'s cells (``bench.plan`` with the ``TRAIN`` kind) and run in this process.

Exit statuses: 0 done; 1 a run failed (the others ran); 2 bad input (nothing ran, nothing left
behind); 4 stopped before a run projected past ``time_limit``; 130/143 interrupted by SIGINT/SIGTERM.
After 4, 130 or 143 the finished runs are merged and the unfinished ones keep their checkpoint:
the same command resumes them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from bench.errors import ConfigError
from bench.output import scratch
from bench.plan import JobSpec, Kind
from bench.settings import TRAIN_INTEGER_KEYS, check_train_command, train_settings
from bench.stops import EXIT_OK
from bench.training.runs import run_id, run_status


def settings_of(container: dict[str, Any]) -> dict[str, Any]:
    """A run's validated settings, with its integer keys written back (1e3 → 1000, one id)."""
    settings = train_settings(container)
    if settings["eval_estimates"] == 1:
        raise ConfigError("eval_estimates", "expected 0 (no variance) or an integer >= 2, got 1")
    container.update({key: settings[key] for key in TRAIN_INTEGER_KEYS})
    return settings


def identify(spec: JobSpec) -> str:
    return run_id(spec.names, spec.configs, spec.settings)


TRAIN = Kind(settings=settings_of, check=check_train_command, identify=identify, reference=False)


def describe(grid: Any, out: Path) -> str:
    """What a dry run prints: runs per problem × estimator, and which would be skipped."""
    counts: dict[str, list[int]] = {}
    for label, reason in zip(grid.labels, grid.skipped, strict=True):
        counts.setdefault(label, [0, 0])[reason is not None] += 1
    done = sum(run_status(out, run) == "ok" for run in grid.cells)
    lines = [f"bench: dry run: {len(grid.cells)} training runs, {done} of them already finished in {out}"]
    for label, (run, skip) in counts.items():
        lines.append(
            f"  {label:<40} {run:>4} to run" + (f", {skip} skipped (does not apply)" if skip else "")
        )
    return "\n".join(lines)


def sweep_train(sweeper: Any, arguments: list[str]) -> Any:
    """What bench's Hydra sweeper does for ``bench train`` (``hydra_plugins.bench_sweeper``)."""
    from hydra._internal.core_plugins.basic_launcher import BasicLauncher
    from hydra.core.utils import configure_log

    from bench.training.execute import execute

    def check() -> None:
        check_train_command(sweeper.config)
        if type(sweeper.launcher) is not BasicLauncher:
            raise ConfigError(
                "hydra/launcher", "bench train runs its runs in one process; choose no launcher"
            )

    grid, out, _, _ = sweeper.checked_plan(arguments, "training runs", "run", "train", TRAIN, check)
    if sweeper.config.get("dry_run") is True:
        print(describe(grid, out))
        return []
    OmegaConf.save(sweeper.config, scratch(out) / "multirun.yaml")
    configure_log(sweeper.config.hydra.job_logging, sweeper.config.hydra.verbose)  # a line per run
    status = execute(grid, out, OmegaConf.to_container(sweeper.config, resolve=True))
    if status:
        sys.exit(status)
    return []


def help_text() -> str:
    """``bench train --help``: the keys with their defaults and comments, from conf/train.yaml."""
    from bench.usage import help_page

    about = (
        "Train with each estimator and record learning curves, variance along the trajectory and a",
        "summary. KEY=a,b,c sweeps a key; any key you type replaces its grid below. problem.KEY and",
        "estimator.KEY set the keys of problems and estimators (`bench list` shows them).",
    )
    examples = (
        "  bench train problem=bernoulli estimator=reinforce,rloo seed=0,1,2 steps=300",
        "  bench train problem=vae_bernoulli estimator=rloo,disarm basket=[reinforce,arm]",
    )
    exit_status = (
        "exit status: 0 done, 1 a run failed, 2 bad input, 4 stopped by time_limit, 130/143 interrupted"
    )
    return help_page("train", "train", about, "keys (default):", examples, exit_status, hidden=("command",))


def main(overrides: Sequence[str]) -> None:
    """``bench train`` → Hydra multirun with bench's sweeper on conf/train.yaml."""
    from bench.sweep import run_hydra

    if any(arg in ("-h", "--help") for arg in overrides):
        print(help_text())
        sys.exit(EXIT_OK)
    run_hydra(overrides, "train", "bench train")
