"""``bench.run``: a sweep in this process, for notebooks and scripts, returning the tables.

The keys and their validation are the sweep's (conf/config.yaml); components may be registry
names or instances (your own classes, registered or not), and any key may be a list to sweep it.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import OmegaConf

from bench.errors import ConfigError, unknown_name

NOT_SWEPT = ("plugins",)  # list-valued keys that are one value, not a sweep


@dataclass
class Component:
    """A problem or estimator of the grid: a registry name or an instance, with its config."""

    group: str
    name: str
    cls: type
    config: dict[str, Any]
    instance: Any = None  # given by the user: used as it is unless a member key rebuilds it

    def with_keys(self, keys: dict[str, Any]) -> Component:
        mine = {key: value for key, value in keys.items() if key in self.config}
        if not mine:
            return self
        return Component(self.group, self.name, self.cls, {**self.config, **mine})

    def build(self, device: torch.device) -> Any:
        from bench.registry import build

        if self.instance is not None:
            return self.instance
        if self.name in build_registry(self.group) and build_registry(self.group)[self.name] is self.cls:
            return build(self.group, self.name, self.config, device)
        extra = {"device": device} if self.group == "problem" else {}
        try:
            return self.cls(**self.config, **extra)
        except TypeError as error:
            raise ConfigError(self.group, f"{self.name}: {error}") from error


def build_registry(group: str) -> dict[str, type]:
    from bench.registry import REGISTRIES

    return REGISTRIES[group]


def components(group: str, given: Any) -> list[Component]:
    """Names or instances (one or a list) → components, unknown names listing the valid ones."""
    from bench.registry import default_config, group_options

    items = given if isinstance(given, (list, tuple)) else [given]
    if not items:
        raise ConfigError(group, "expected at least one name or instance")
    found = []
    for item in items:
        if isinstance(item, str):
            if item not in group_options(group):
                raise unknown_name(group, item, group_options(group))
            cls = build_registry(group)[item]
            found.append(Component(group, item, cls, default_config(group, item)))
        elif hasattr(item, "config") and callable(item.config):
            cls = type(item)
            found.append(Component(group, cls.name or cls.__name__, cls, item.config(), item))
        else:
            raise ConfigError(group, f"expected a registry name or a {group} instance, got {item!r}")
    return found


def defaults(config_name: str = "config") -> dict[str, Any]:
    """The global keys of conf/<config_name>.yaml (``bench sweep``'s, or ``bench train``'s with
    "train") with the Python API's own defaults: write nothing, no plots, no time limit."""
    from bench.registry import CONF_DIR

    base = OmegaConf.load(CONF_DIR / f"{config_name}.yaml")
    values = {key: OmegaConf.to_container(base, resolve=False)[key] for key in base}
    for key in ("defaults", "hydra", "command"):
        values.pop(key, None)
    values.update(out=None, plots=False, resume=True, time_limit="none")
    return values


def split_settings(
    settings: dict[str, Any], config_name: str = "config"
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(global keys, {"problem": {key: value}, "estimator": {...}}); unknown keys name the valid."""
    known = defaults(config_name)
    members: dict[str, dict[str, Any]] = {"problem": {}, "estimator": {}}
    globals_: dict[str, Any] = {}
    for key, value in settings.items():
        head, _, rest = key.partition(".")
        if head in members and rest:
            members[head][rest] = value
        elif key in known and key not in ("problem", "estimator", "dry_run"):
            globals_[key] = value
        else:
            valid = [k for k in known if k not in ("dry_run",)] + ["problem.<key>", "estimator.<key>"]
            raise ConfigError(key, f"unknown key; valid keys: {', '.join(valid)}")
    return {**known, **globals_}, members


def grid(values: dict[str, Any], not_swept: tuple[str, ...] = NOT_SWEPT) -> Iterator[dict[str, Any]]:
    """Every combination of the list-valued keys (a list is a sweep over its items)."""
    swept = [k for k, v in values.items() if isinstance(v, (list, tuple)) and k not in not_swept]
    for combination in itertools.product(*(values[key] for key in swept)):
        yield {**values, **dict(zip(swept, combination, strict=True))}


def check_members(members: dict[str, dict[str, Any]], chosen: dict[str, list[Component]]) -> None:
    """A member key no chosen component has is an error listing the keys they do have."""
    for group, keys in members.items():
        for key in keys:
            if not any(key in component.config for component in chosen[group]):
                listing = "; ".join(
                    f"{c.name}: {', '.join(f'{group}.{k}' for k in c.config) or '(no keys)'}"
                    for c in chosen[group]
                )
                raise ConfigError(
                    f"{group}.{key}", f"unknown key: no {group} here has it. Valid keys: {listing}"
                )


def plan_cells(
    chosen: dict[str, list[Component]], members: dict[str, dict[str, Any]], settings: dict[str, Any]
) -> list[tuple[dict[str, Component], dict[str, Any]]]:
    """(components, settings) per cell, validated before any work, duplicates dropped."""
    from bench.settings import check_sweep_settings, normalize

    cells, seen = [], set()
    for parts in component_grid(chosen, members):
        for values in grid(settings):
            normalize(values)
            check_sweep_settings(values)
            instances = [id(part.instance) for part in parts.values()]
            configs = [(part.name, part.config) for part in parts.values()]
            key = repr((instances, configs, sorted(values.items())))
            if key not in seen:
                seen.add(key)
                cells.append((parts, values))
    return cells


def component_grid(
    chosen: dict[str, list[Component]], members: dict[str, dict[str, Any]]
) -> Iterator[dict[str, Component]]:
    """{"problem": ..., "estimator": ...} for every combination of the member keys' values and of
    the chosen components, each validated (built once per config) before it is yielded."""
    built: dict[str, Any] = {}
    for member_values in grid({f"{g}.{k}": v for g, keys in members.items() for k, v in keys.items()}):
        keyed = {g: {k.split(".", 1)[1]: v for k, v in member_values.items() if k.startswith(g + ".")}
                 for g in members}  # fmt: skip
        for problem, estimator in itertools.product(chosen["problem"], chosen["estimator"]):
            parts = {"problem": problem.with_keys(keyed["problem"]),
                     "estimator": estimator.with_keys(keyed["estimator"])}  # fmt: skip
            validate(parts, built)
            yield parts


def cell_of(parts: dict[str, Component], values: dict[str, Any]) -> str:
    from bench.runner import cell_id_from, code_of

    return cell_id_from(
        parts["problem"].name, parts["problem"].config, parts["estimator"].name, parts["estimator"].config,
        values["n_samples"], values["n_estimates"], values["seed"], values["dtype"],
        code=code_of(parts["problem"].cls, parts["estimator"].cls),
    )  # fmt: skip


def validate(parts: dict[str, Component], built: dict[str, Any]) -> None:
    """Build each new config once, before any work, so a bad value stops the run (ConfigError)."""
    for part in parts.values():
        key = repr((part.group, part.name, part.config, id(part.instance)))
        if part.instance is None and key not in built:
            built[key] = part.build(torch.device("cpu"))


def run_one(
    out: Path, parts: dict[str, Component], values: dict[str, Any], cell: str, built: dict
) -> dict[str, Any]:
    from bench.cell import measure

    names = {group: part.name for group, part in parts.items()}
    configs = {group: part.config for group, part in parts.items()}

    def make(device: torch.device) -> tuple[Any, Any]:
        key = repr((names["problem"], configs["problem"], id(parts["problem"].instance), str(device)))
        if key not in built:
            built[key] = parts["problem"].build(device)
        return built[key], parts["estimator"].build(device)

    cfg = OmegaConf.create({**{k: v for k, v in values.items() if k != "plugins"}, "out": str(out)})
    return measure(cfg, names, configs, cell, make)


def run(
    problem: Any = "bernoulli", estimator: Any = "reinforce", **settings: Any
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Measure problems × estimators in this process; return (cells, dims) as DataFrames.

    ``problem``/``estimator``: a registry name, an instance (your own class, registered or not),
    or a list of them. ``settings``: the global keys of ``bench sweep`` (``n_samples``,
    ``n_estimates``, ``seed``, ``dtype``, ``device``, ``batch_size``, ``threads``, ``alpha``,
    ``reference``, ``resume``, ``plugins``, ``out``, ...) with the same validation; a list sweeps
    a key. Member keys go through a dict: ``bench.run(..., **{"estimator.temperature": [0.5, 1]})``
    (they apply to the components that have them, rebuilding an instance from its config).
    ``out``: a directory to write the tables (and ``summary.txt``, plots with ``plots=True``) and to
    resume from; None (default) writes nothing. A failing cell is a ``failed`` row, as in a sweep.
    """
    from bench import plugins

    values, members = split_settings(settings)
    plugins.load(values.get("plugins"))
    chosen = {"problem": components("problem", problem), "estimator": components("estimator", estimator)}
    check_members(members, chosen)
    cells = plan_cells(chosen, members, values)
    target = Path(values["out"]) if values.get("out") is not None else None
    workdir = target or Path(tempfile.mkdtemp(prefix="bench-run-"))
    try:
        return run_cells(workdir, cells, values, target is not None)
    finally:
        if target is None:
            shutil.rmtree(workdir, ignore_errors=True)


def run_cells(
    out: Path,
    cells: Iterable[tuple[dict[str, Component], dict[str, Any]]],
    values: dict[str, Any],
    keep: bool,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    from bench.output import merge, run_metadata, write_text_atomic
    from bench.plan import reusable
    from bench.settings import parse_alpha, parse_reference
    from bench.summary import summarize_sweep
    from bench.sweep import check_writable

    check_writable(out)
    built: dict[str, Any] = {}
    ids = []
    for parts, cell_values in cells:
        cell = cell_of(parts, cell_values)
        if not (keep and values["resume"] and reusable(out, [cell])):
            run_one(out, parts, cell_values, cell, built)
        ids.append(cell)
    alpha, reference = parse_alpha(values["alpha"]), parse_reference(values["reference"])
    cells_table, dims = merge(out, run_metadata(values), ids, alpha=alpha, reference=reference)
    if keep:
        write_text_atomic(summarize_sweep(cells_table, alpha=alpha, reference=reference) + "\n",
                          out / "summary.txt")  # fmt: skip
        if values.get("plots"):
            from bench import plots

            plots.draw_all(cells_table, out / "plots")
    return cells_table, dims
