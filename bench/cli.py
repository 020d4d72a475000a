"""``python -m bench {sweep,list,plot}``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

USAGE = """python -m bench sweep [hydra overrides...]   run the grid (default: conf/config.yaml)
       python -m bench list                          problems, estimators, and which pairs apply
       python -m bench plot RESULTS_DIR              redraw the plots from saved tables"""


FLAGS = ["discrete", "has_rsample", "has_relaxed_cost", "has_enumerate_support", "sequential"]


def describe_group(group: str, details: Callable[[type], str]) -> tuple[list[str], dict[str, Any]]:
    """A listing of one registry (name, docstring's first sentence, ``details``) and its members
    built from their YAML defaults."""
    from bench.sweep import REGISTRIES, build, default_config, group_options

    lines, built = [f"{group}s:"], {}
    for name in group_options(group):
        cls = REGISTRIES[group].get(name)
        if cls is None:
            lines.append(f"  {name:<18} (conf/{group}/{name}.yaml has no registered class)")
            continue
        built[name] = build(group, name, default_config(group, name))
        lines.append(f"  {name:<18} {first_sentence(cls.__doc__)}")
        lines.append(f"  {'':<18} {details(cls)}")
    return lines, built


def list_registry() -> str:
    problem_lines, problems = describe_group(
        "problem", lambda cls: f"flags: {', '.join(f for f in FLAGS if getattr(cls, f)) or 'none'}"
    )
    estimator_lines, estimators = describe_group(
        "estimator",
        lambda cls: (
            f"{'unbiased' if cls.unbiased else 'biased'}; requires {', '.join(cls.requires) or 'nothing'}; "
            f"n_samples >= {cls.min_samples}"
        ),
    )
    lines = [*problem_lines, *estimator_lines, "applicability (problem × estimator):"]
    for problem_name, problem in problems.items():
        for estimator_name, estimator in estimators.items():
            reason = estimator.why_not(problem, estimator.min_samples)
            verdict = "yes" if reason is None else f"no: {reason}"
            lines.append(f"  {problem_name:<14} {estimator_name:<18} {verdict}")
    return "\n".join(lines)


def first_sentence(doc: str | None, width: int = 100) -> str:
    paragraph = " ".join((doc or "").strip().split("\n\n")[0].split())
    return paragraph if len(paragraph) <= width else paragraph[: width - 1] + "…"


def plot(directory: Path) -> int:
    from bench import plots
    from bench.output import merge, read_metadata, read_tables, run_metadata

    if not directory.is_dir():
        print(f"bench plot: {directory} is not a directory", file=sys.stderr)
        return 2
    if not (directory / "cells.parquet").exists() and (directory / "cells").is_dir():
        merge(directory, run_metadata(None))  # an interrupted sweep: merge the cells it finished
    try:
        cells, _dims, metadata = read_tables(directory)
    except FileNotFoundError as error:
        print(f"bench plot: {error}", file=sys.stderr)
        return 2
    written = plots.draw_all(
        cells, directory / "plots", metadata or read_metadata(directory / "cells.parquet")
    )
    for path in written:
        print(path)
    if not written:
        print("bench plot: no successful cells to plot", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench", usage=USAGE)
    parser.add_argument("command", choices=["sweep", "list", "plot"])
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command == "sweep":
        from bench.sweep import main as sweep_main

        sweep_main(rest)
        return
    if command == "list":
        print(list_registry())
        return
    if command == "plot":
        if len(rest) != 1:
            parser.error("plot takes one argument: the sweep directory")
        sys.exit(plot(Path(rest[0])))
    parser.parse_args([command])  # an unknown command: argparse lists the valid choices
