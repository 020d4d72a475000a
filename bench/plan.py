"""Planning a sweep: the expanded grid normalized, validated and de-duplicated into cells before
any work (``plan``), with the default grid's own rules (``GridRules``) and resume (``reusable``)."""

from __future__ import annotations

import copy
import fnmatch
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bench.errors import ConfigError, unknown_name
from bench.estimators.base import Estimator
from bench.output import (
    cell_paths,
    finished_cells,
    read_cell_row,
)
from bench.reference import check_applies, reference_key
from bench.registry import (  # re-exported: tests and plugins import them from here
    GROUPS,
    REGISTRIES,
    build,
    default_config,
    group_options,
)
from bench.runner import cell_id_from, code_of
from bench.settings import (  # re-exported: the sweeper imports them from here
    check_sweep_settings,
    integral,
    normalize,
)


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


@dataclass(frozen=True)
class Kind:
    """What a plan's jobs are: sweep cells (the default) or ``bench train``'s runs. ``settings``
    validates a job's global keys and writes integers back into its config; ``check`` validates the
    command-wide keys; ``identify`` gives a job's id (cell or run); ``reference``: whether the job
    needs an estimated reference gradient where the problem has no exact one."""

    settings: Callable[[dict[str, Any]], dict[str, Any]]
    check: Callable[[Any], None]
    identify: Callable[[JobSpec], str]
    reference: bool = True


SWEEP = Kind(settings=normalize, check=check_sweep_settings, identify=JobSpec.cell)


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


def typed_exclusions(exclude: Any, config_name: str) -> list[str]:
    """["hydra.sweeper.exclude"] when ``exclude`` is not the config file's own list: the user typed
    it (Hydra does not pass its own keys to the sweeper's arguments), so it applies (``GridRules``)."""
    from bench.registry import CONF_DIR

    default = OmegaConf.load(CONF_DIR / f"{config_name}.yaml").hydra.sweeper.get("exclude", [])
    return ["hydra.sweeper.exclude"] if list(exclude or []) != list(default or []) else []


@dataclass
class GridRules:
    """How the default grid (``hydra.sweeper.params``) is trimmed; none of it touches what the user
    types. ``only``: a grid key applies just to the ``problem:estimator`` pairs matching one of its
    patterns (the temperature grid to the relaxed estimators on the toy problems, not to RELAX's
    initial λ or to the VAEs). ``exclude``: pairs the default grid leaves out (one cell of them takes
    minutes); choosing ``problem`` or ``estimator`` on the command line lifts the exclusions, unless
    ``hydra.sweeper.exclude`` is typed too (``'hydra.sweeper.exclude=[*:disarm:2]'``). Patterns
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
        if not user & set(GROUPS) or "hydra.sweeper.exclude" in user:  # an exclusion typed applies
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
    kind: Kind = SWEEP,
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
            names=names, configs={g: container[g] for g in GROUPS}, settings=kind.settings(container),
            container=container,
        )  # fmt: skip
        cell = kind.identify(spec)
        if cell not in specs:
            specs[cell] = (kept, spec)
        kind.check(container)
    unused = [key for key, count in used.items() if count == 0 and key in set(user_keys)]
    if unused:
        raise unknown_key_error(unused[0], [spec for _job, spec in specs.values()])
    result = Plan()
    built: dict[str, Any] = {}
    for cell, (job, spec) in specs.items():
        result.jobs.append(job)
        result.cells.append(cell)
        result.skipped.append(why_skip(spec, built, reference=kind.reference))
        result.labels.append(f"{spec.names['problem']} × {spec.names['estimator']}")
        result.specs.append(spec)
    if all(reason is not None for reason in result.skipped):
        reasons = "; ".join(sorted({reason for reason in result.skipped if reason}))
        raise ConfigError("estimator", "no cell of this sweep applies: " + reasons)
    return result


MISSING = object()


def get_dotted(container: dict[str, Any], key: str, default: Any = None) -> Any:
    """``container["a"]["b"]`` for the key ``a.b``, else ``default``."""
    node: Any = container
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def has_dotted(container: dict[str, Any], key: str) -> bool:
    return get_dotted(container, key, MISSING) is not MISSING


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


def why_skip(spec: JobSpec, built: dict[str, Any], reference: bool = True) -> str | None:
    """Validate a job's values (raising ConfigError) and say why its cell would be skipped."""
    objects = {}
    for group in GROUPS:
        key = json.dumps([group, spec.names[group], spec.configs[group]], sort_keys=True, default=str)
        if key not in built:
            built[key] = build(group, spec.names[group], spec.configs[group])
        objects[group] = built[key]
    estimator: Estimator = objects["estimator"]
    if reference:
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
