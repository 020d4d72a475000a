"""``bench sweep --help`` and ``bench train --help``: one page layout, the keys listed from the
command's conf/<config>.yaml with their defaults and comments."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from bench.registry import CONF_DIR, yaml_comments


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


def key_lines(config_name: str, hidden: Sequence[str] = ()) -> list[str]:
    """``KEY=default   comment`` per key of conf/<config_name>.yaml (a key of the default grid
    shows its grid), groups of keys (reference_gradient.*) expanded; ``hidden`` keys left out."""
    path = CONF_DIR / f"{config_name}.yaml"
    base = OmegaConf.load(path)
    comments = yaml_comments(path)
    grid = OmegaConf.to_container(base.hydra.sweeper.params)
    lines = []
    for key in base:
        if key in ("defaults", "hydra", *hidden):
            continue
        default = OmegaConf.to_container(base, resolve=False)[key]
        if isinstance(default, dict) and key not in grid:  # a group of keys (reference_gradient.*)
            lines.append(f"  {key}.*".ljust(34) + f" {comments.get(key, '')}")
            for sub, value in default.items():
                comment = nested_comments(path, key).get(sub, "")
                lines.append(f"    {key}.{sub}={value}".ljust(34) + f" {comment}")
            continue
        shown = grid.get(key, default)
        lines.append(f"  {key}={shown}".ljust(34) + f" {comments.get(key, '')}")
    return lines


def help_page(
    command: str,
    config_name: str,
    about: Sequence[str],
    heading: str,
    examples: Sequence[str],
    exit_status: str,
    hidden: Sequence[str] = (),
) -> str:
    """``bench <command> --help``: what it does, the keys of conf/<config_name>.yaml with their
    defaults and comments (``key_lines``), the default grid, examples and the exit statuses."""
    grid = OmegaConf.to_container(OmegaConf.load(CONF_DIR / f"{config_name}.yaml").hydra.sweeper.params)
    return "\n".join([
        f"usage: bench {command} [KEY=VALUE ...]", "", *about, "", heading, *key_lines(config_name, hidden),
        "", f"default grid (hydra.sweeper.params in conf/{config_name}.yaml):",
        *(f"  {key}={value}" for key, value in grid.items()),
        "", "examples:", *examples, "", exit_status,
    ])  # fmt: skip
