"""The sweep: Hydra composes one config per cell, a launcher runs ``task`` for each, then the
per-cell files are merged into tables and plots.

``python -m bench sweep [overrides]`` runs Hydra in multirun mode with bench's sweeper
(``hydra_plugins/bench_sweeper``), which expands the grid like Hydra's basic sweeper and then
``plan``s it: a ``problem.*``/``estimator.*`` override applies only to the problems/estimators that
have that key (``estimator.temperature=0.1,1`` varies the Gumbel-softmax estimators and leaves
reinforce with one cell), duplicate cells are dropped, and every cell's config is validated before
any work. Any Hydra launcher runs the cells (``hydra/launcher=joblib`` for parallel processes).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

import estimators
import problems
from bench.errors import ConfigError, NotApplicable, unknown_name
from bench.output import CELL_COLUMNS, config_columns, merge, run_metadata, write_cell
from bench.runner import cell_id_from, check_settings, resolve_device, resolve_dtype, run_cell
from estimators.base import Estimator
from problems.base import Problem

log = logging.getLogger("bench")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("problem", "estimator")
REGISTRIES: dict[str, dict[str, type]] = {"problem": problems.REGISTRY, "estimator": estimators.REGISTRY}


def group_options(group: str) -> list[str]:
    """Names with a YAML under conf/<group>/."""
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def default_config(group: str, name: str) -> dict[str, Any]:
    """The defaults in conf/<group>/<name>.yaml."""
    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{name}.yaml"), resolve=True) or {}


def build(group: str, name: str, config: dict[str, Any], device: Any = "cpu") -> Any:
    """Instantiate a registered problem or estimator from its config, with errors naming keys."""
    registry = REGISTRIES[group]
    if name not in registry:
        raise unknown_name(group, name, list(registry))
    kwargs = dict(config)
    try:
        return registry[name](**kwargs, device=device) if group == "problem" else registry[name](**kwargs)
    except TypeError as error:
        raise ConfigError(group, f"{name}: {error}") from error


def cell_settings(cfg: DictConfig) -> dict[str, Any]:
    batch_size = cfg.batch_size
    if batch_size != "auto" and not (isinstance(batch_size, int) and batch_size >= 1):
        raise ConfigError("batch_size", f"expected auto or an integer >= 1, got {batch_size!r}")
    check_settings(cfg.n_samples, cfg.n_estimates, cfg.seed)
    resolve_dtype(cfg.dtype)
    resolve_device(str(cfg.device))
    return {
        "n_samples": cfg.n_samples,
        "n_estimates": cfg.n_estimates,
        "seed": cfg.seed,
        "dtype": cfg.dtype,
        "batch_size": None if batch_size == "auto" else batch_size,
    }


# --- planning the grid -------------------------------------------------------------------------
def override_key(override: str) -> str:
    """``++estimator.temperature=0.5`` → ``estimator.temperature``."""
    return override.split("=", 1)[0].lstrip("+~")


def member_group(key: str) -> str | None:
    """The group a dotted key belongs to (``problem.sigma`` → ``problem``), else None."""
    head = key.split(".", 1)[0]
    return head if head in GROUPS and "." in key else None


@dataclass
class Plan:
    jobs: list[list[str]] = field(default_factory=list)  # normalized override lists, one per cell
    skipped: list[str | None] = field(default_factory=list)  # why a cell will be skipped, or None


_ABSENT = object()


def plan(
    jobs: Sequence[Sequence[str]],
    compose: Callable[[list[str]], DictConfig],
    base: DictConfig,
    user_keys: Iterable[str] = (),
) -> Plan:
    """Normalize, validate and de-duplicate the expanded grid; raise ConfigError before any work.

    ``compose`` turns an override list into a job config; ``base`` is the config without overrides.
    A key in ``user_keys`` (typed on the command line) that applies to no job is an error; a key
    of the default grid that applies to no job (a temperature grid in a sweep without
    Gumbel-softmax) is dropped quietly.
    """
    check_top_level_keys(jobs, base)
    group_cache: dict[tuple[str, ...], DictConfig] = {}
    normalized: dict[tuple[str, ...], None] = {}
    used: dict[str, int] = {}
    for job in jobs:
        for group in GROUPS:
            for override in job:
                if override_key(override) == group:
                    name = override.split("=", 1)[1]
                    if name not in group_options(group):
                        raise unknown_name(group, name, group_options(group))
        outer = tuple(o for o in job if member_group(override_key(o)) is None)
        if outer not in group_cache:
            group_cache[outer] = compose(list(outer))
        outer_cfg = group_cache[outer]
        kept = []
        for override in job:
            key = override_key(override)
            if member_group(key) is None:
                continue
            applies = (
                override.startswith("+") or OmegaConf.select(outer_cfg, key, default=_ABSENT) is not _ABSENT
            )
            used[key] = used.get(key, 0) + applies
            if applies:
                kept.append(override)
        normalized[(*outer, *kept)] = None
    unused = [key for key, count in used.items() if count == 0 and key in set(user_keys)]
    if unused:
        raise unknown_key_error(unused[0], group_cache.values())
    result = Plan()
    built: dict[str, Any] = {}
    for job in normalized:
        result.jobs.append(list(job))
        result.skipped.append(why_skip(compose(list(job)), built))
    if all(reason is not None for reason in result.skipped):
        raise ConfigError(
            "estimator", "no cell of this sweep applies: " + "; ".join(sorted(set(result.skipped)))
        )
    return result


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


def unknown_key_error(key: str, configs: Iterable[DictConfig]) -> ConfigError:
    group = key.split(".", 1)[0]
    choices: dict[str, list[str]] = {}
    for cfg in configs:
        name = cfg.hydra.runtime.choices[group]
        choices[name] = [f"{group}.{k}" for k in cfg[group]]
    listing = "; ".join(f"{name}: {', '.join(keys) or '(no keys)'}" for name, keys in sorted(choices.items()))
    return ConfigError(key, f"unknown key: no {group} in this sweep has it. Valid keys: {listing}")


def why_skip(cfg: DictConfig, built: dict[str, Any]) -> str | None:
    """Validate a job's values (raising ConfigError) and say why its cell would be skipped."""
    settings = cell_settings(cfg)
    objects = {}
    for group in GROUPS:
        name = cfg.hydra.runtime.choices[group]
        config = OmegaConf.to_container(cfg[group], resolve=True)
        key = json.dumps([group, name, config], sort_keys=True, default=str)
        if key not in built:
            built[key] = build(group, name, config)
        objects[group] = built[key]
    estimator: Estimator = objects["estimator"]
    return estimator.why_not(objects["problem"], settings["n_samples"])


# --- one cell ----------------------------------------------------------------------------------
def run_job(cfg: DictConfig, choices: dict[str, str]) -> dict[str, Any]:
    """Run the cell ``cfg`` and write its files; a failure becomes a ``failed`` row, not a crash."""
    out = Path(cfg.out)
    names = {group: choices[group] for group in GROUPS}
    configs = {group: OmegaConf.to_container(cfg[group], resolve=True) for group in GROUPS}
    metadata = run_metadata(OmegaConf.to_container(cfg, resolve=True))
    row: dict[str, Any] = {
        "problem": names["problem"], "estimator": names["estimator"], "n_samples": cfg.n_samples,
        "n_estimates": cfg.n_estimates, "seed": cfg.seed, "dtype": cfg.dtype, "device": str(cfg.device),
    }  # fmt: skip
    row["cell"] = cell_id_from(
        names["problem"], configs["problem"], names["estimator"], configs["estimator"],
        cfg.n_samples, cfg.n_estimates, cfg.seed, cfg.dtype,
    )  # fmt: skip
    dims: list[dict[str, Any]] = []
    try:
        settings = cell_settings(cfg)
        device = resolve_device(cfg.device)
        problem: Problem = build("problem", names["problem"], configs["problem"], device)
        estimator: Estimator = build("estimator", names["estimator"], configs["estimator"])
        row["unbiased"] = estimator.unbiased
        label = f"{names['problem']} × {names['estimator']}"
        # A progress bar on a terminal only (disable=None); logs get one line per cell.
        with tqdm(total=cfg.n_estimates, desc=label, unit="est", leave=False, disable=None) as bar:
            result = run_cell(problem, estimator, **settings, cell=row["cell"], progress=bar.update)
        row.update(result.row)
        dims = result.dims
    except NotApplicable as reason:
        row.update(status="skipped", reason=str(reason))
    except Exception as error:
        log.exception("cell %s failed", row["cell"])
        row.update(status="failed", reason=f"{type(error).__name__}: {error}")
    write_cell(out, row, dims, config_columns(configs["problem"], configs["estimator"]), metadata)
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

    return run_job(cfg, dict(HydraConfig.get().runtime.choices))


# --- after the sweep ---------------------------------------------------------------------------
SUMMARY_COLUMNS = [
    "problem",
    "estimator",
    "n_samples",
    "variance",
    "bias_norm",
    "bias_pvalue",
    "estimates_per_s",
]


def summary_table(cells: Any, config_names: Sequence[str]) -> str:
    """The ok cells, one block per problem with the config columns that vary in it; then the
    skipped and failed counts with their reasons."""
    lines = []
    ok = cells[cells["status"] == "ok"]
    for _problem, block in ok.groupby("problem", sort=True):
        varying = [c for c in config_names if block[c].astype(str).nunique() > 1]
        columns = SUMMARY_COLUMNS[:3] + varying + SUMMARY_COLUMNS[3:]
        block = block[columns].sort_values(columns[: 3 + len(varying)])
        lines.append(block.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        lines.append("")
    for status in ("skipped", "failed"):
        rows = cells[cells["status"] == status]
        if len(rows):
            lines.append(f"{len(rows)} {status}:")
            for (problem, estimator, reason), group in rows.groupby(["problem", "estimator", "reason"]):
                lines.append(f"  {problem} × {estimator} ({len(group)}): {reason}")
    return "\n".join(lines)


def finish(out: Path, config: Any, draw_plots: bool = True) -> int:
    """Merge, plot and summarize a finished sweep; return the number of failed cells."""
    from bench import plots

    cells, _dims = merge(out, run_metadata(config))
    config_names = [column for column in cells.columns if column not in CELL_COLUMNS]
    print(summary_table(cells, config_names))
    if draw_plots:
        written = plots.draw_all(cells, out / "plots")
        print(f"plots: {', '.join(str(p) for p in written) or 'none (nothing to plot)'}")
    n_failed = int((cells["status"] == "failed").sum())
    print(f"tables: {out / 'cells.parquet'}, {out / 'dims.parquet'}  ({len(cells)} cells, {n_failed} failed)")
    return n_failed


def hydra_arguments(overrides: Sequence[str]) -> list[str]:
    """The command line for Hydra. A single-valued ``problem``/``estimator`` choice or member key
    is written as a one-value sweep (``choice(v)``), so that Hydra leaves it to bench's sweeper,
    which applies it only where it exists and reports unknown names with the valid choices;
    Hydra would otherwise apply it to the default problem/estimator and fail."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

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


def main(overrides: Sequence[str]) -> None:
    """``python -m bench sweep`` → Hydra multirun with bench's sweeper."""
    from hydra.errors import HydraException

    try:
        arguments = hydra_arguments(overrides)
    except (ConfigError, HydraException) as error:
        print(f"bench: error: {error}", file=sys.stderr)
        sys.exit(2)
    saved = sys.argv
    sys.argv = ["bench sweep", "--multirun", *arguments]
    try:
        task()
    finally:
        sys.argv = saved
