"""The registries of problems and estimators, their default configs, and building them from a config.

Configs live in ``conf/`` of a source checkout (also under an editable install) and in
``bench/conf`` of an installed wheel (pyproject maps one to the other), so ``CONF_DIR`` works from
any working directory. A component's defaults come from, in order: ``conf/<group>/<name>.yaml``
(built-ins); a ``<name>.yaml`` beside the module that defines a plugin's class; the keyword
defaults of the class's constructor (a plugin without YAML).
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from bench import estimators, plugins, problems
from bench.component import constructor_parameters
from bench.errors import ConfigError, unknown_name

GROUPS = ("problem", "estimator")
REGISTRIES: dict[str, dict[str, type]] = {"problem": problems.REGISTRY, "estimator": estimators.REGISTRY}


def find_conf_dir() -> Path:
    packaged = Path(__file__).resolve().parent / "conf"  # installed from a wheel
    if (packaged / "config.yaml").is_file():
        return packaged
    return Path(__file__).resolve().parent.parent / "conf"  # a source checkout


CONF_DIR = find_conf_dir()


@functools.cache
def yaml_options(group: str) -> frozenset[str]:
    return frozenset(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def group_options(group: str) -> list[str]:
    """Every name of a group: the built-ins' YAMLs and every registered class (plugins too)."""
    return sorted(yaml_options(group) | set(REGISTRIES[group]))


def yaml_path(group: str, name: str) -> Path | None:
    """The YAML holding a component's defaults: conf/<group>/<name>.yaml, else <name>.yaml beside
    the module that defines its class (a plugin that ships YAML); None for signature defaults."""
    if name in yaml_options(group):
        return CONF_DIR / group / f"{name}.yaml"
    cls = REGISTRIES[group].get(name)
    try:
        source = inspect.getsourcefile(cls) if cls is not None else None
    except TypeError:
        source = None
    if source is not None and (beside := Path(source).with_name(f"{name}.yaml")).is_file():
        return beside
    return None


def signature_defaults(group: str, name: str, cls: type) -> dict[str, Any]:
    """A plugin's keys and defaults: its constructor's keyword arguments."""
    defaults = {}
    for parameter in constructor_parameters(cls):
        if parameter.default is inspect.Parameter.empty:
            raise ConfigError(
                f"{group}.{parameter.name}",
                f"{name} ({cls.__module__}): the constructor keyword {parameter.name!r} has no default; "
                f"give it one, or ship {name}.yaml beside the module with every key's default",
            )
        value = parameter.default
        defaults[parameter.name] = list(value) if isinstance(value, tuple) else value
    return defaults


@functools.cache
def _default_config(group: str, name: str) -> dict[str, Any]:
    path = yaml_path(group, name)
    if path is not None:
        config = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        return dict(config or {})
    cls = REGISTRIES[group].get(name)
    if cls is None:
        raise unknown_name(group, name, group_options(group))
    return signature_defaults(group, name, cls)


def default_config(group: str, name: str) -> dict[str, Any]:
    """The defaults of a problem or estimator (a fresh copy); see the module docstring."""
    return dict(_default_config(group, name))


def clear_caches() -> None:
    """Forget cached defaults (plugins loaded later may add or replace names)."""
    _default_config.cache_clear()


def yaml_comments(path: Path) -> dict[str, str]:
    """``key: value  # comment`` lines of a YAML file: {key: comment} (top level only)."""
    comments = {}
    for line in path.read_text().splitlines():
        if not line or line[0] in " #\t-" or ":" not in line:
            continue
        key, rest = line.split(":", 1)
        if "#" in rest:
            comments[key.strip()] = rest.split("#", 1)[1].strip()
    return comments


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


plugins.load_installed()  # entry points and BENCH_PLUGINS join the registries with the built-ins
