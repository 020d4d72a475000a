"""The sweep: Hydra composes one config per cell, a launcher runs ``task`` for each, then the
per-cell files are merged into tables, a summary and plots.

``bench sweep [overrides]`` runs Hydra in multirun mode with bench's sweeper
(``hydra_plugins/bench_sweeper``), which expands the grid like Hydra's basic sweeper and then
``plan``s it: a ``problem.*``/``estimator.*`` override applies only to the problems/estimators that
have that key (``estimator.temperature=0.1,1`` varies the Gumbel-softmax estimators and leaves
reinforce with one cell), duplicate cells are dropped, and every cell's config is validated before
any work. Cells already finished in ``out`` are reused (``resume``). Any Hydra launcher runs the
rest (``hydra/launcher=joblib`` for parallel processes).

Exit statuses: 0 done; 1 a cell failed; 2 bad input (nothing ran); 3 a declared-unbiased estimator
failed conformance; 4 stopped before work projected past ``time_limit``; 130/143 interrupted by
SIGINT/SIGTERM (the finished cells are merged; rerun the same command to resume).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from bench.cell import (  # re-exported: tests import them from here
    auto_threads,
    run_job,
    runnable_elsewhere,
)
from bench.errors import ConfigError
from bench.output import (
    finished_cells,
    merge,
    run_metadata,
    scratch,
    write_cell,
    write_text_atomic,
)
from bench.plan import (  # re-exported: the sweeper and tests import them from here
    GridRules,
    JobSpec,
    Plan,
    check_top_level_keys,
    default_grid,
    describe_plan,
    member_group,
    override_key,
    pair_matches,
    plan,
    reusable,
    typed_exclusions,
)
from bench.plugins import load as load_plugins
from bench.problems.base import Problem
from bench.registry import (  # re-exported: tests and plugins import them from here
    CONF_DIR,
    GROUPS,
    REGISTRIES,
    build,
    default_config,
    group_options,
)
from bench.settings import (  # re-exported: the sweeper imports them from here
    cell_settings,
    check_sweep_settings,
    parse_alpha,
    parse_duration,
    parse_reference,
)
from bench.stops import (
    EXIT_CONFORMANCE,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Interrupted,
    SweepStopped,
    is_main_thread,
    raise_interrupted,
    unwrap_stop,
)

__all__ = [  # what other modules import from here, besides what it defines
    "CONF_DIR",
    "GROUPS",
    "REGISTRIES",
    "GridRules",
    "JobSpec",
    "auto_threads",
    "build",
    "cell_settings",
    "check_sweep_settings",
    "chunk_overrides",
    "default_config",
    "default_grid",
    "describe_plan",
    "group_options",
    "member_group",
    "override_key",
    "pair_matches",
    "plan",
    "runnable_elsewhere",
    "typed_exclusions",
]  # fmt: skip

log = logging.getLogger("bench")


def check_writable(out: Path) -> None:
    """Fail before any work when ``out`` cannot hold the sweep's files."""
    try:
        scratch(out).mkdir(parents=True, exist_ok=True)
        probe = scratch(out) / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ConfigError(
            "out", f"cannot write the sweep's files to {str(out)!r}: {error.strerror or error}"
        ) from None


def first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what writing there creates)."""
    path = path.absolute()
    missing = None
    while not path.exists():
        missing, path = path, path.parent
    return missing


def remove_empty(top: Path | None) -> None:
    """Remove ``top`` and the folders under it if they hold no file (only what bench created)."""
    if top is None or not top.is_dir():
        return
    folders = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
    for folder in [*folders, top]:
        with contextlib.suppress(OSError):  # not empty: something was written there, keep it
            folder.rmdir()


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def task(cfg: DictConfig) -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig

    if cfg.get("bench_plan"):  # a chunk of planned cells (parallel and cluster launchers)
        return run_chunk(cfg.bench_plan, cfg.bench_chunk)
    return run_job(cfg, dict(HydraConfig.get().runtime.choices))


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def train_task(cfg: DictConfig) -> None:
    """``bench train``'s Hydra entry: bench's sweeper runs the runs itself (``bench.training``)."""


# --- running the plan --------------------------------------------------------------------------
def run_in_process(specs: Sequence[JobSpec], problems: dict[str, Problem] | None = None) -> list[Any]:
    """Run planned cells one after another in this process: what Hydra's basic launcher does,
    without composing each job's config again (~0.2 s a job; the plan already holds it).
    ``problems``: built problems to reuse (a fresh cache when None)."""
    problems = {} if problems is None else problems
    # What lives now (torch, Hydra, configs, built problems: ~3e5 objects) lives to the end, but a
    # full garbage collection walks it every time: ~0.2 s each, run by Python a dozen times a
    # sweep and by joblib's loky after every chunk (its memory-leak check), 1.6-2 s per worker.
    # Frozen objects are skipped by collections (they are still freed when unreferenced).
    gc.collect()
    gc.freeze()
    for spec in specs:
        run_job(OmegaConf.create(spec.container), spec.names, problems)
    return []


# Problems built by this worker process, kept across the chunks it runs: a chunk holds cells of
# every problem (chunks are interleaved), and building one (data, exact gradient by enumeration)
# can take seconds; rebuilding per chunk made two joblib workers slower than one process.
WORKER_PROBLEMS: dict[str, Problem] = {}


def chunks(indices: Sequence[int], workers: int, smallest: int = 2) -> list[list[int]]:
    """Chunks of planned cells for ``workers`` parallel workers that take the next chunk when free.

    Guided self-scheduling (Polychronopoulos & Kuck 1987): each chunk holds ⌈remaining / 2W⌉ cells
    (at least ``smallest``), so chunks shrink as the plan runs out and the workers finish within
    about one small chunk of each other; equal chunks left one worker alone for the last ~7 s of
    the default sweep's 73 (measured, two workers). The cells are first shuffled (a fixed seed, so
    a plan always cuts the same way), so that every chunk is a fair sample of the grid's long and
    short cells and a chunk's time follows its size; within a chunk they run in plan order.
    """
    order = torch.randperm(len(indices), generator=torch.Generator().manual_seed(0)).tolist()
    shuffled = [indices[i] for i in order]
    parts, start = [], 0
    while start < len(shuffled):
        size = max(smallest, math.ceil((len(shuffled) - start) / (2 * max(1, workers))))
        parts.append(sorted(shuffled[start : start + size]))  # in plan order: a problem's cells together
        start += size
    return parts


def write_plan(grid: Plan, out: Path, parts: Sequence[Sequence[int]], name: str = "plan.json") -> Path:
    """The planned cells of each chunk, for launcher jobs to read (out/.bench/plan.json; cluster
    tasks, which may start after a later run wrote its own plan: out/.bench/plan-<run>.json)."""
    payload = [[{"names": grid.specs[i].names, "container": grid.specs[i].container, "cell": grid.cells[i]}
                for i in part] for part in parts]  # fmt: skip
    path = (scratch(out) / name).resolve()
    write_text_atomic(json.dumps(payload, default=str), path)
    return path


def chunk_overrides(plan_path: Path, chunk: int, out: Path) -> list[str]:
    """A launcher job's overrides: the chunk of the plan it runs, and ``out``, so that Hydra's own job
    directory in the worker is the sweep's (without it a worker composes the default ``out`` and
    leaves an empty results/<timestamp>/.bench/jobs behind)."""
    return [f"+bench_plan='{plan_path}'", f"+bench_chunk={chunk}", f"out='{out.absolute()}'"]


def run_chunk(plan_path: str, chunk: int) -> list[Any]:
    """A launcher job: run chunk ``chunk`` of the plan the sweeper wrote."""
    payload = json.loads(Path(plan_path).read_text())[chunk]
    # A requeued cluster task (preemption, timeout) runs its chunk again: skip the cells it (or a
    # task of a later run) already wrote since the plan was written; each is written atomically.
    since = os.stat(plan_path).st_mtime - 1.0
    done = finished_cells(Path(payload[0]["container"]["out"])) if payload else {}
    payload = [entry for entry in payload if not written_since(done.get(entry.get("cell", "")), since)]
    specs = [JobSpec(entry["names"], {}, {}, entry["container"]) for entry in payload]
    for spec in specs[:1]:  # the sweep's plugins, which a fresh worker process has not imported yet
        load_plugins(spec.container.get("plugins"))
    return run_in_process(specs, WORKER_PROBLEMS)


def written_since(path: Path | None, since: float) -> bool:
    try:
        return path is not None and os.stat(path).st_mtime >= since
    except OSError:
        return False


def execute(
    grid: Plan,
    out: Path,
    sweep_config: DictConfig,
    launch: Callable[[list[int]], Any],
    batch_size: int | None = None,
) -> int:
    """Run the planned grid (reusing finished cells), then merge, summarize and plot; return the
    exit status. ``launch(indices)`` runs the planned cells with those indices."""
    config = OmegaConf.to_container(sweep_config, resolve=False)
    settings = {key: sweep_config[key] for key in ("resume", "time_limit", "alpha", "reference", "plots")}
    total = len(grid.jobs)
    reused = reusable(out, grid.cells) if settings["resume"] else set()
    others = set(finished_cells(out)) - set(grid.cells)
    # Pairs that do not apply are recorded here, without launching a job for each.
    metadata = run_metadata(config)
    for cell, spec, reason in zip(grid.cells, grid.specs, grid.skipped, strict=True):
        if reason is not None and cell not in reused:
            write_cell(out, skipped_row(cell, spec, reason), [], spec.configs, metadata)
    to_run = [
        index
        for index, (cell, reason) in enumerate(zip(grid.cells, grid.skipped, strict=True))
        if cell not in reused and reason is None
    ]
    n_skip = sum(reason is not None for reason in grid.skipped)
    print(
        f"bench: {total} cells ({n_skip} pairs that do not apply, recorded as skipped)"
        + (f"; {len(reused)} already finished in out are reused" if reused else "")
        + f"; {len(to_run)} to run -> {out}",
        flush=True,
    )
    if others:
        print(f"bench: out already holds {len(others)} cells of other sweeps; they stay under "
              f"{scratch(out) / 'cells'} and are not in this sweep's tables", flush=True)  # fmt: skip
    state = {
        "started": time.time(),
        "cells": grid.cells,
        "time_limit": parse_duration(settings["time_limit"]),
    }
    write_text_atomic(json.dumps(state), scratch(out) / "sweep.json")
    stopped: SweepStopped | None = None
    previous = signal.signal(signal.SIGTERM, raise_interrupted) if is_main_thread() else None
    try:
        size = batch_size or len(to_run) or 1
        for start in range(0, len(to_run), size):
            for result in launch(to_run[start : start + size]) or []:
                _ = result.return_value  # re-raises a job that crashed outside its own handler
    except KeyboardInterrupt:
        stopped = Interrupted(signal.SIGINT)
    except SweepStopped as stop:
        stopped = stop
    except Exception as error:  # joblib wraps what a worker raised
        stopped = unwrap_stop(error)
        if stopped is None:
            raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    done = finished_cells(out)  # one listing of the folder, not one per cell
    finished = [cell for cell in grid.cells if cell in done]
    status = EXIT_OK
    if finished:
        status = finish(out, config, finished, settings, draw_plots=bool(settings["plots"]))
    if stopped is not None:
        if isinstance(stopped, Interrupted):
            print(f"bench: interrupted after {len(finished)} of {total} cells; run the same command again "
                  "to resume", file=sys.stderr)  # fmt: skip
        else:
            print(f"bench: stopped after {len(finished)} of {total} cells: {stopped}", file=sys.stderr)
        return stopped.exit_status
    return status


def skipped_row(cell: str, spec: JobSpec, reason: str) -> dict[str, Any]:
    """The row of a planned cell whose estimator does not apply to its problem."""
    estimator = REGISTRIES["estimator"][spec.names["estimator"]]
    return {
        "cell": cell, "problem": spec.names["problem"], "estimator": spec.names["estimator"],
        "status": "skipped", "reason": reason, "unbiased": estimator.unbiased,
        **{key: spec.settings[key] for key in ("n_samples", "n_estimates", "seed", "dtype")},
    }  # fmt: skip


def finish(
    out: Path, config: Any, cells: Sequence[str], settings: dict[str, Any], draw_plots: bool = True
) -> int:
    """Merge, summarize and plot the finished ``cells``; return the exit status."""
    from bench.summary import summarize_sweep

    alpha = parse_alpha(settings.get("alpha", 1e-3))
    reference = parse_reference(settings.get("reference", "reinforce"))
    table, _dims = merge(out, run_metadata(config), cells, alpha=alpha, reference=reference)
    text = summarize_sweep(table, alpha=alpha, reference=reference)
    print(text)
    write_text_atomic(text + "\n", out / "summary.txt")
    if draw_plots:
        from bench import plots  # matplotlib and seaborn take ~2 s to import: only when drawing

        written = plots.draw_all(table, out / "plots")
        print(
            f"plots: {', '.join(str(p) for p in written if p.suffix == '.png') or 'none (nothing to plot)'}"
        )
    n_failed = int((table["status"] == "failed").sum())
    n_nonconforming = int((table["conformance"] == "fail").sum())
    print(f"tables: {out / 'cells.parquet'}, {out / 'dims.parquet'}  ({len(table)} cells, {n_failed} failed)")
    if n_failed:
        print(f"bench: {n_failed} cell(s) failed; see the reason column", file=sys.stderr)
        return EXIT_FAILED
    if n_nonconforming:
        print(f"bench: {n_nonconforming} cell(s) of declared-unbiased estimators failed conformance "
              f"(family-wise alpha={alpha:g})", file=sys.stderr)  # fmt: skip
        return EXIT_CONFORMANCE
    return EXIT_OK


# --- the command line --------------------------------------------------------------------------
def hydra_arguments(overrides: Sequence[str], config_name: str = "config") -> list[str]:
    """The command line for Hydra. A single-valued ``problem``/``estimator`` choice or member key
    is written as a one-value sweep (``choice(v)``), so that Hydra leaves it to bench's sweeper,
    which applies it only where it exists and reports unknown names with the valid choices;
    Hydra would otherwise apply it to the default problem/estimator and fail."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [plugins_as_list(text) for text in overrides]
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    base = OmegaConf.load(CONF_DIR / f"{config_name}.yaml")
    check_top_level_keys([list(overrides)], base)
    arguments = []
    for text, override in zip(overrides, parsed, strict=True):
        key = override_key(text)
        if "=" in text and (key in GROUPS or member_group(key)) and not override.is_sweep_override():
            name, value = text.split("=", 1)
            text = f"{name}=choice({value})"
        arguments.append(text)
    return arguments


def plugins_as_list(text: str) -> str:
    """``plugins=a.py,b`` means a list of two plugins (as BENCH_PLUGINS does), not a sweep over them."""
    name, _, value = text.partition("=")
    if override_key(name) != "plugins" or not value or value.lstrip().startswith("["):
        return text
    return f"{name}=[{value}]"


def requested_plugins(overrides: Sequence[str]) -> list[str]:
    """The modules and files the ``plugins`` key names on the command line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    specs: list[str] = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if override.get_key_element().lstrip("+~") == "plugins":
            value = override.value()
            specs += [str(item) for item in (value if isinstance(value, list) else [value]) if item]
    return specs


def help_text() -> str:
    """``bench sweep --help``: the global keys with their defaults, from conf/config.yaml."""
    about = (
        "Run a grid of problems × estimators. KEY=a,b,c sweeps a key; any key you type replaces",
        "its grid below. problem.KEY / estimator.KEY set the keys of problems and estimators",
        "(`bench list` shows them with their defaults) and apply only where the key exists.",
    )
    examples = (
        "  bench sweep problem=bernoulli,categorical estimator=reinforce,rloo n_samples=2,8,32",
        "  bench sweep estimator=gumbel_softmax estimator.temperature=0.1,0.3,1,3",
        "  bench sweep hydra/launcher=joblib hydra.launcher.n_jobs=2     # parallel processes",
        "  bench sweep --dry-run                                         # plan only: list the cells",
    )
    exit_status = (
        "exit status: 0 done, 1 a cell failed, 2 bad input, 3 conformance failure, "
        "4 stopped by time_limit, 130/143 interrupted"
    )
    from bench.usage import help_page

    return help_page("sweep", "config", about, "global keys (default):", examples, exit_status)


def exit_usage(error: Exception, created: Path | None) -> NoReturn:
    """Bad input found before any work: say it, remove what the command created, exit 2."""
    print(f"bench: error: {error}", file=sys.stderr)
    remove_empty(created)  # a command that ran nothing leaves nothing behind
    sys.exit(EXIT_USAGE)


def register_sweeper() -> None:
    """Hand bench's sweeper to Hydra directly: Hydra's plugin scan cannot see it in an editable
    install. The registry is created first because creating it re-executes Hydra's core plugin
    modules, and a sweeper class made before that would subclass a stale BasicSweeper."""
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()
    from hydra_plugins.bench_sweeper.bench_sweeper import BenchSweeper

    plugins.register(BenchSweeper)


def main(overrides: Sequence[str]) -> None:
    """``bench sweep`` → Hydra multirun with bench's sweeper."""

    if any(arg in ("-h", "--help") for arg in overrides):
        print(help_text())
        sys.exit(EXIT_OK)
    run_hydra(overrides, "config", "bench sweep")


def run_hydra(overrides: Sequence[str], config_name: str, prog: str) -> None:
    """Hydra multirun of ``conf/<config_name>.yaml`` with bench's sweeper (``bench sweep`` and
    ``bench train``), after the checks that need no Hydra: ``--key value`` style, plugins."""
    from hydra.errors import HydraException

    overrides = ["dry_run=true" if arg == "--dry-run" else arg for arg in overrides]
    dashed = next((i for i, arg in enumerate(overrides) if arg.startswith("--")), None)
    if dashed is not None:
        key = overrides[dashed].lstrip("-").split("=", 1)[0]
        value = overrides[dashed + 1] if dashed + 1 < len(overrides) else "VALUE"
        print(f"bench: error: {overrides[dashed]}: keys are given as key=value, e.g. {key}={value}",
              file=sys.stderr)  # fmt: skip
        sys.exit(EXIT_USAGE)
    try:
        arguments = hydra_arguments(overrides, config_name)
        # Plugins join the registries before planning, so their names are valid choices; one that
        # fails to import (or an installed one that did) stops the sweep before any work.
        load_plugins(requested_plugins(arguments))
    except (ConfigError, HydraException) as error:
        print(f"bench: error: {error}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    register_sweeper()
    saved = sys.argv
    sys.argv = [prog, "--multirun", *arguments]
    try:
        (task if config_name == "config" else train_task)()
    finally:
        sys.argv = saved
