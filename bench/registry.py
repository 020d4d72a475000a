"""The registries of problems and estimators, their YAML defaults, and building them from a config.

Configs live in ``conf/`` of a source checkout (also under an editable install) and in
``bench/conf`` of an installed wheel (pyproject maps one to the other), so ``CONF_DIR`` works from
any working directory.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

import estimators
import problems
from bench.errors import ConfigError, unknown_name

GROUPS = ("problem", "estimator")
REGISTRIES: dict[str, dict[str, type]] = {"problem": problems.REGISTRY, "estimator": estimators.REGISTRY}


def find_conf_dir() -> Path:
    packaged = Path(__file__).resolve().parent / "conf"  # installed from a wheel
    if (packaged / "config.yaml").is_file():
        return packaged
    return Path(__file__).resolve().parent.parent / "conf"  # a source checkout


CONF_DIR = find_conf_dir()


def group_options(group: str) -> list[str]:
    """Names with a YAML under conf/<group>/."""
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


@functools.cache
def _default_config(group: str, name: str) -> dict[str, Any]:
    config = OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{name}.yaml"), resolve=True)
    return dict(config or {})


def default_config(group: str, name: str) -> dict[str, Any]:
    """The defaults in conf/<group>/<name>.yaml (a fresh copy)."""
    return dict(_default_config(group, name))


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
