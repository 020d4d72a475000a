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
import copy
import fnmatch
import gc
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from bench.errors import ConfigError, NotApplicable, unknown_name
from bench.estimators.base import Estimator
from bench.output import (
    cell_paths,
    finished_cells,
    merge,
    read_cell_row,
    run_metadata,
    scratch,
    usable_cores,
    write_cell,
    write_text_atomic,
)
from bench.plugins import load as load_plugins
from bench.problems.base import Problem
from bench.reference import check_applies, reference_key
from bench.registry import (  # re-exported: tests and plugins import them from here
    CONF_DIR,
    GROUPS,
    REGISTRIES,
    build,
    default_config,
    group_options,
    yaml_comments,
)
from bench.runner import cell_id_from, code_of, run_cell
from bench.settings import (  # re-exported: the sweeper imports them from here
    cell_settings,
    check_sweep_settings,
    format_duration,
    integral,
    normalize,
    parse_alpha,
    parse_duration,
    parse_reference,
    parse_threads,
    resolve_device,
)

__all__ = ["CONF_DIR", "GROUPS", "REGISTRIES", "build", "default_config", "group_options"]

log = logging.getLogger("bench")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CONFORMANCE, EXIT_TIME_LIMIT = 0, 1, 2, 3, 4
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
PROGRESS_EVERY = 10.0  # seconds between progress lines of a long cell when output is not a terminal


class SweepStopped(BaseException):
    """Stops the whole sweep (not one cell). A BaseException, like KeyboardInterrupt, so that it
    passes through Hydra's job runner and the launcher's loop instead of failing one cell."""

    exit_status = EXIT_FAILED


class Interrupted(SweepStopped):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_status = EXIT_SIGNAL.get(signum, 128 + signum)


class TimeLimitExceeded(SweepStopped):
    exit_status = EXIT_TIME_LIMIT


# --- settings -----------------------------------------------------------------------------------
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


# --- threads ------------------------------------------------------------------------------------
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


# --- planning the grid -------------------------------------------------------------------------
def override_key(override: str) -> str:
    """``++estimator.temperature=0.5`` → ``estimator.temperature``."""
    return override.split("=", 1)[0].lstrip("+~")


def member_group(key: str) -> str | None:
    """The group a dotted key belongs to (``problem.sigma`` → ``problem``), else None."""
    head = key.split(".", 1)[0]
    return head if head in GROUPS and "." in key else None


@dataclass
class JobSpec:
    """One cell as planned: names, configs and settings (a light stand-in for Hydra's job config)."""

    names: dict[str, str]
    configs: dict[str, dict[str, Any]]
    settings: dict[str, Any]
    container: dict[str, Any] = field(default_factory=dict)  # the whole job config, Hydra's node aside

    def cell(self) -> str:
        names, configs, settings = self.names, self.configs, self.settings
        return cell_id_from(
            names["problem"], configs["problem"], names["estimator"], configs["estimator"],
            settings["n_samples"], settings["n_estimates"], settings["seed"], settings["dtype"],
            code=code_of(*(REGISTRIES[group][names[group]] for group in ("problem", "estimator"))),
            reference=reference_key(names["problem"], configs["problem"], settings.get("reference_gradient")),
        )  # fmt: skip


@dataclass
class Plan:
    jobs: list[list[str]] = field(default_factory=list)  # normalized override lists, one per cell
    cells: list[str] = field(default_factory=list)  # their cell ids
    skipped: list[str | None] = field(default_factory=list)  # why a cell will be skipped, or None
    labels: list[str] = field(default_factory=list)
    specs: list[JobSpec] = field(default_factory=list)


def parse_value(override: str) -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_override(override).value()


def set_dotted(container: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        container = container.setdefault(part, {})
    container[parts[-1]] = value


def pair_matches(pattern: str, problem: str, estimator: str, n_samples: int | None = None) -> bool:
    """``problem:estimator[:n_samples]`` patterns: each part a shell wildcard (``vae_*``) or
    alternatives joined by ``|`` (``bernoulli|categorical``, ``4|16``); a missing part matches all."""
    parts = [*pattern.split(":"), "*", "*"][:3]
    values = [problem, estimator, "*" if n_samples is None else str(n_samples)]
    return all(
        any(fnmatch.fnmatchcase(value, alternative.strip()) for alternative in part.split("|"))
        for value, part in zip(values, parts, strict=True)
    )


@dataclass
class GridRules:
    """How the default grid (``hydra.sweeper.params``) is trimmed; none of it touches what the user
    types. ``only``: a grid key applies just to the ``problem:estimator`` pairs matching one of its
    patterns (the temperature grid to the relaxed estimators on the toy problems, not to RELAX's
    initial λ or to the VAEs). ``exclude``: pairs the default grid leaves out (one cell of them takes
    minutes); choosing ``problem`` or ``estimator`` on the command line lifts the exclusions. Patterns
    are ``problem:estimator[:n_samples]`` (see ``pair_matches``)."""

    only: dict[str, list[str]] = field(default_factory=dict)
    exclude: list[str] = field(default_factory=list)

    @classmethod
    def from_config(cls, only: Any, exclude: Any, user_keys: Iterable[str]) -> GridRules:
        user = set(user_keys)
        rules = cls()
        for key, patterns in dict(only or {}).items():
            if key not in user:
                rules.only[key] = [str(p) for p in ([patterns] if isinstance(patterns, str) else patterns)]
        if not user & set(GROUPS):
            rules.exclude = [str(p) for p in exclude or []]
        return rules

    def excludes(self, names: dict[str, str], n_samples: int) -> bool:
        return any(pair_matches(p, names["problem"], names["estimator"], n_samples) for p in self.exclude)

    def skips(self, key: str, names: dict[str, str]) -> bool:
        """Whether the default grid's ``key`` does not apply to this pair."""
        patterns = self.only.get(key)
        return patterns is not None and not any(
            pair_matches(p, names["problem"], names["estimator"]) for p in patterns
        )


def plan(
    jobs: Sequence[Sequence[str]],
    compose: Callable[[list[str]], DictConfig],
    base: DictConfig,
    user_keys: Iterable[str] = (),
    rules: GridRules | None = None,
) -> Plan:
    """Normalize, validate and de-duplicate the expanded grid; raise ConfigError before any work.

    Planning does not compose a Hydra config per job (a composition takes ~0.1–0.5 s): a job's
    config is the base config with the chosen problem's and estimator's YAML (plain mappings) in
    place and the job's other overrides set on it. ``compose`` is called only for jobs with
    Hydra's own keys or ``+``/``~`` overrides. A key in ``user_keys`` (typed on the command line)
    that applies to no job is an error; a key of the default grid that applies to no job (a
    temperature grid in a sweep without Gumbel-softmax) is dropped quietly.
    """
    check_top_level_keys(jobs, base)
    rules = rules or GridRules()
    base_container = job_container(base)
    base_choices = dict(base.hydra.runtime.choices)
    parsed: dict[str, Any] = {}
    used: dict[str, int] = {}
    specs: dict[str, tuple[list[str], JobSpec]] = {}
    composed_cache: dict[tuple[str, ...], dict[str, Any]] = {}
    options = {group: group_options(group) for group in GROUPS}  # one listing, not one per job
    for job in jobs:
        names = {group: base_choices[group] for group in GROUPS}
        for override in job:
            key = override_key(override)
            if key in GROUPS:
                name = override.split("=", 1)[1]
                if name not in options[key]:
                    raise unknown_name(key, name, options[key])
                names[key] = name
        special = tuple(o for o in job if o.startswith(("+", "~")) or override_key(o).startswith("hydra"))
        if special:
            outer = tuple(o for o in job if override_key(o) in GROUPS) + special
            if outer not in composed_cache:
                composed_cache[outer] = job_container(compose(list(outer)))
            container = copy.deepcopy(composed_cache[outer])
        else:
            container = copy.deepcopy(base_container)
            for group in GROUPS:
                container[group] = default_config(group, names[group])
        kept = []
        for override in job:
            key = override_key(override)
            if member_group(key) is not None:
                applies = override.startswith("+") or has_dotted(container, key)
                if rules.skips(key, names):
                    continue
                used[key] = used.get(key, 0) + applies
                if not applies:
                    continue
            kept.append(override)
            if key in GROUPS or override in special:
                continue
            if override not in parsed:
                parsed[override] = parse_value(override)
            value = parsed[override]
            if member_group(key) is not None:  # 1e3 for an integer key is the integer 1000
                value = integral(get_dotted(container, key), value)
            set_dotted(container, key, value)
        if rules.excludes(names, container["n_samples"]):
            continue
        spec = JobSpec(
            names=names, configs={g: container[g] for g in GROUPS}, settings=normalize(container),
            container=container,
        )  # fmt: skip
        cell = spec.cell()
        if cell not in specs:
            specs[cell] = (kept, spec)
        check_sweep_settings(container)
    unused = [key for key, count in used.items() if count == 0 and key in set(user_keys)]
    if unused:
        raise unknown_key_error(unused[0], [spec for _job, spec in specs.values()])
    result = Plan()
    built: dict[str, Any] = {}
    for cell, (job, spec) in specs.items():
        result.jobs.append(job)
        result.cells.append(cell)
        result.skipped.append(why_skip(spec, built))
        result.labels.append(f"{spec.names['problem']} × {spec.names['estimator']}")
        result.specs.append(spec)
    if all(reason is not None for reason in result.skipped):
        reasons = "; ".join(sorted({reason for reason in result.skipped if reason}))
        raise ConfigError("estimator", "no cell of this sweep applies: " + reasons)
    return result


def get_dotted(container: dict[str, Any], key: str) -> Any:
    node: Any = container
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def has_dotted(container: dict[str, Any], key: str) -> bool:
    node: Any = container
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def job_container(cfg: DictConfig) -> dict[str, Any]:
    """The job's config as plain containers, without Hydra's node."""
    keys = [key for key in cfg if key != "hydra"]
    return {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
            for key in keys}  # fmt: skip


def default_grid(params: dict[str, str], user_keys: Iterable[str]) -> list[str]:
    """The config's grid (``hydra.sweeper.params``) as overrides, less what the user replaces:
    a key typed on the command line replaces its grid, and choosing ``problem`` (``estimator``)
    also drops the grid's ``problem.*`` (``estimator.*``) keys, so chosen problems run at their
    YAML defaults unless their keys are swept explicitly."""
    user = set(user_keys)
    return [
        f"{key}={value}" for key, value in params.items() if key not in user and member_group(key) not in user
    ]


def check_top_level_keys(jobs: Iterable[Sequence[str]], base: DictConfig) -> None:
    valid = [key for key in base if key not in ("hydra", "defaults")] + list(GROUPS)
    valid = list(dict.fromkeys(valid))
    for job in jobs:
        for override in job:
            key = override_key(override)
            head = key.split(".", 1)[0].split("/", 1)[0]
            if head == "hydra" or override.startswith("+") or member_group(key) is not None:
                continue
            if head not in valid:
                raise ConfigError(key, f"unknown key; valid keys: {', '.join(valid)}")


def unknown_key_error(key: str, specs: Iterable[JobSpec]) -> ConfigError:
    group = key.split(".", 1)[0]
    choices: dict[str, list[str]] = {}
    for spec in specs:
        choices[spec.names[group]] = [f"{group}.{k}" for k in spec.configs[group]]
    listing = "; ".join(f"{name}: {', '.join(keys) or '(no keys)'}" for name, keys in sorted(choices.items()))
    return ConfigError(key, f"unknown key: no {group} in this sweep has it. Valid keys: {listing}")


def why_skip(spec: JobSpec, built: dict[str, Any]) -> str | None:
    """Validate a job's values (raising ConfigError) and say why its cell would be skipped."""
    objects = {}
    for group in GROUPS:
        key = json.dumps([group, spec.names[group], spec.configs[group]], sort_keys=True, default=str)
        if key not in built:
            built[key] = build(group, spec.names[group], spec.configs[group])
        objects[group] = built[key]
    estimator: Estimator = objects["estimator"]
    check_applies(objects["problem"], spec.settings.get("reference_gradient"))  # its reference can run
    return estimator.why_not(objects["problem"], spec.settings["n_samples"])


def describe_plan(grid: Plan, out: Path) -> str:
    """What a dry run prints: cells per problem × estimator, and which pairs will be skipped."""
    counts: dict[str, list[int]] = {}
    for label, reason in zip(grid.labels, grid.skipped, strict=True):
        entry = counts.setdefault(label, [0, 0])
        entry[reason is not None] += 1
    reused = reusable(out, grid.cells)
    lines = [f"bench: dry run: {len(grid.cells)} cells, {len(reused)} of them already finished in {out}"]
    for label, (run, skip) in counts.items():
        lines.append(
            f"  {label:<40} {run:>4} to run" + (f", {skip} skipped (does not apply)" if skip else "")
        )
    return "\n".join(lines)


def reusable(out: Path, cells: Sequence[str]) -> set[str]:
    """The cells finished in ``out`` that need not run again: ok or skipped (a failed cell reruns)."""
    done = finished_cells(out)
    keep = set()
    for cell in cells:
        if cell in done:
            row = read_cell_row(out, cell)
            if (
                row is not None
                and row.get("status") in ("ok", "skipped")
                and cell_paths(out, cell)[1].exists()
            ):
                keep.add(cell)
    return keep


# --- one cell ----------------------------------------------------------------------------------
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


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def task(cfg: DictConfig) -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig

    if cfg.get("bench_plan"):  # a chunk of planned cells (parallel and cluster launchers)
        return run_chunk(cfg.bench_plan, cfg.bench_chunk)
    return run_job(cfg, dict(HydraConfig.get().runtime.choices))


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


def raise_interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted(signum)


def is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def unwrap_stop(error: BaseException) -> SweepStopped | None:
    """A SweepStopped (or KeyboardInterrupt) raised in a parallel worker, however it was wrapped."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, SweepStopped):
            return seen
        if isinstance(seen, KeyboardInterrupt):
            return Interrupted(signal.SIGINT)
        seen = seen.__cause__ or seen.__context__
    return None


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
def hydra_arguments(overrides: Sequence[str]) -> list[str]:
    """The command line for Hydra. A single-valued ``problem``/``estimator`` choice or member key
    is written as a one-value sweep (``choice(v)``), so that Hydra leaves it to bench's sweeper,
    which applies it only where it exists and reports unknown names with the valid choices;
    Hydra would otherwise apply it to the default problem/estimator and fail."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [plugins_as_list(text) for text in overrides]
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    base = OmegaConf.load(CONF_DIR / "config.yaml")
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


def nested_comments(path: Path, parent: str) -> dict[str, str]:
    """``  key: value  # comment`` lines indented under the top-level ``parent:``: {key: comment}."""
    comments, inside = {}, False
    for line in path.read_text().splitlines():
        if line and line[0] not in " \t#":
            inside = line.split(":", 1)[0].strip() == parent
        elif inside and line.startswith("  ") and ":" in line and "#" in line.split(":", 1)[1]:
            key, rest = line.split(":", 1)
            comments[key.strip()] = rest.split("#", 1)[1].strip()
    return comments


def help_text() -> str:
    """``bench sweep --help``: the global keys with their defaults, from conf/config.yaml."""
    base = OmegaConf.load(CONF_DIR / "config.yaml")
    comments = yaml_comments(CONF_DIR / "config.yaml")
    grid = OmegaConf.to_container(base.hydra.sweeper.params)
    lines = [
        "usage: bench sweep [KEY=VALUE ...]",
        "",
        "Run a grid of problems × estimators. KEY=a,b,c sweeps a key; any key you type replaces",
        "its grid below. problem.KEY / estimator.KEY set the keys of problems and estimators",
        "(`bench list` shows them with their defaults) and apply only where the key exists.",
        "",
        "global keys (default):",
    ]
    for key in base:
        if key in ("defaults", "hydra"):
            continue
        default = OmegaConf.to_container(base, resolve=False)[key]
        if isinstance(default, dict) and key not in grid:  # a group of keys (reference_gradient.*)
            lines.append(f"  {key}.*".ljust(34) + f" {comments.get(key, '')}")
            for sub, value in default.items():
                comment = nested_comments(CONF_DIR / "config.yaml", key).get(sub, "")
                lines.append(f"    {key}.{sub}={value}".ljust(34) + f" {comment}")
            continue
        shown = grid.get(key, default)
        lines.append(f"  {key}={shown}".ljust(34) + f" {comments.get(key, '')}")
    lines += [
        "",
        "default grid (hydra.sweeper.params in conf/config.yaml):",
        *(f"  {key}={value}" for key, value in grid.items()),
        "",
        "examples:",
        "  bench sweep problem=bernoulli,categorical estimator=reinforce,rloo n_samples=2,8,32",
        "  bench sweep estimator=gumbel_softmax estimator.temperature=0.1,0.3,1,3",
        "  bench sweep hydra/launcher=joblib hydra.launcher.n_jobs=2     # parallel processes",
        "  bench sweep --dry-run                                         # plan only: list the cells",
        "",
        "exit status: 0 done, 1 a cell failed, 2 bad input, 3 conformance failure, "
        "4 stopped by time_limit, 130/143 interrupted",
    ]
    return "\n".join(lines)


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
    from hydra.errors import HydraException

    if any(arg in ("-h", "--help") for arg in overrides):
        print(help_text())
        sys.exit(EXIT_OK)
    overrides = ["dry_run=true" if arg == "--dry-run" else arg for arg in overrides]
    dashed = next((i for i, arg in enumerate(overrides) if arg.startswith("--")), None)
    if dashed is not None:
        key = overrides[dashed].lstrip("-").split("=", 1)[0]
        value = overrides[dashed + 1] if dashed + 1 < len(overrides) else "VALUE"
        print(f"bench: error: {overrides[dashed]}: keys are given as key=value, e.g. {key}={value}",
              file=sys.stderr)  # fmt: skip
        sys.exit(EXIT_USAGE)
    try:
        arguments = hydra_arguments(overrides)
        # Plugins join the registries before planning, so their names are valid choices; one that
        # fails to import (or an installed one that did) stops the sweep before any work.
        load_plugins(requested_plugins(arguments))
    except (ConfigError, HydraException) as error:
        print(f"bench: error: {error}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    register_sweeper()
    saved = sys.argv
    sys.argv = ["bench sweep", "--multirun", *arguments]
    try:
        task()
    finally:
        sys.argv = saved
