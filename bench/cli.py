"""``bench {sweep,list,plot,compare}`` (also ``python -m bench ...``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

USAGE = """bench sweep [KEY=VALUE ...]              run a grid (bench sweep --help lists the keys)
       bench train [KEY=VALUE ...]             learning curves per estimator (bench train --help)
       bench list [plugins=A,B]                problems and estimators: keys, defaults, which pairs apply
       bench plot RESULTS_DIR                  redraw the plots from a sweep's tables
       bench compare BASELINE_DIR NEW_DIR      compare two sweeps cell by cell (exit 5 on a regression)"""


FLAGS = [
    "discrete", "has_rsample", "has_relaxed_cost", "has_enumerate_support", "sequential", "binary_latent",
    "categorical_latent", "gaussian_latent",
]  # fmt: skip


def format_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe_group(group: str) -> tuple[list[str], dict[str, Any]]:
    """A listing of one registry: name, the docstring's first sentence, flags or declarations, and
    every key with its default and comment; where a plugin defines it, the module it came from;
    plus the members built from their defaults. A member that cannot be built is listed with why."""
    from bench.errors import ConfigError
    from bench.plugins import module_of
    from bench.registry import REGISTRIES, build, default_config, group_options, yaml_comments, yaml_path

    lines, built = [f"{group}s:"], {}
    for name in group_options(group):
        cls = REGISTRIES[group].get(name)
        if cls is None:
            lines.append(f"  {name:<18} (conf/{group}/{name}.yaml has no registered class)")
            continue
        try:
            defaults = default_config(group, name)
            built[name] = build(group, name, defaults)
        except (ConfigError, Exception) as error:  # a plugin's bug must not hide the others
            lines.append(f"  {name:<18} BROKEN ({module_of(cls)}): {error}")
            continue
        lines.append(f"  {name:<18} {first_sentence(cls.__doc__)}")
        if not cls.__module__.startswith("bench."):
            lines.append(f"  {'':<18} from {module_of(cls)}")
        lines.append(f"  {'':<18} {declarations(group, cls, built[name])}")
        path = yaml_path(group, name)
        comments = yaml_comments(path) if path is not None else {}
        for key, value in defaults.items():
            comment = f"  # {comments[key]}" if key in comments else ""
            lines.append(f"  {'':<18}   {group}.{key}={format_value(value)}{comment}")
    return lines, built


def declarations(group: str, cls: type, instance: Any) -> str:
    """A problem's flags, or what an estimator declares."""
    if group == "problem":
        return f"flags: {', '.join(f for f in FLAGS if getattr(cls, f, False)) or 'none'}"
    return (
        f"{'unbiased' if cls.unbiased else 'biased'}; requires "
        f"{', '.join(cls.requires) or 'nothing'}; n_samples >= {cls.min_samples}; "
        f"cost evals at n_samples=4: {instance.cost_evals(4)}"
        + ("; fitted before measuring" if cls.has_fit else "")
    )


def list_registry() -> str:
    from bench.plugins import broken

    problem_lines, problems = describe_group("problem")
    estimator_lines, estimators = describe_group("estimator")
    lines = [*problem_lines, "", *estimator_lines]
    failed = broken()
    if failed:
        lines += ["", "broken plugins (not imported):"]
        lines += [f"  {plugin.describe()}: {plugin.error}" for plugin in failed]
    lines += ["", "applicability (problem × estimator):"]
    for problem_name, problem in problems.items():
        for estimator_name, estimator in estimators.items():
            try:
                reason = estimator.why_not(problem, max(estimator.min_samples, 2))
            except Exception as error:  # a plugin's why_not that raises
                reason = f"why_not raised {type(error).__name__}: {error}"
            verdict = "yes" if reason is None else f"no: {reason}"
            lines.append(f"  {problem_name:<16} {estimator_name:<18} {verdict}")
    return "\n".join(lines)


def list_plugins(specs: list[str]) -> None:
    """``bench list plugins=...``: import them first; a broken one is listed, not fatal."""
    from bench.plugins import load_one

    for spec in specs:
        load_one(spec, "plugins key")


def first_sentence(doc: str | None, width: int = 100) -> str:
    paragraph = " ".join((doc or "").strip().split("\n\n")[0].split())
    return paragraph if len(paragraph) <= width else paragraph[: width - 1] + "…"


def plot(directory: Path) -> int:
    from bench import plots
    from bench.output import finished_cells, merge, read_metadata, read_tables, run_metadata

    if not directory.is_dir():
        print(f"bench plot: {directory} is not a directory", file=sys.stderr)
        return 2
    if not (directory / "cells.parquet").exists() and finished_cells(directory):
        merge(directory, run_metadata(None))  # a sweep killed before its merge: merge what finished
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
    parser = argparse.ArgumentParser(prog="bench", usage=USAGE)
    parser.add_argument("command", choices=["sweep", "train", "list", "plot", "compare"])
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command == "sweep":
        from bench.sweep import main as sweep_main

        sweep_main(rest)
        return
    if command == "train":
        from bench.training.command import main as train_main

        train_main(rest)
        return
    if command == "list":
        from bench.plugins import split_specs

        specs = [arg.split("=", 1)[1] for arg in rest if arg.startswith("plugins=")]
        if len(specs) != len(rest):
            parser.error("list takes only plugins=MODULE_OR_FILE[,...] (or set BENCH_PLUGINS)")
        list_plugins(split_specs(",".join(specs).strip("[]")))
        print(list_registry())
        return
    if command == "plot":
        if len(rest) != 1:
            parser.error("plot takes one argument: the sweep directory")
        sys.exit(plot(Path(rest[0])))
    if command == "compare":
        from bench.compare import main as compare_main

        sys.exit(compare_main(rest))
    parser.parse_args([command])  # an unknown command: argparse lists the valid choices
