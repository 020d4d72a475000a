"""``bench compare``'s command line: the options, the run of every check, and the exit status."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.compare.common import EXIT_BAD_INPUT, EXIT_OK, BadInput, Options
from bench.compare.labels import compare_labels, compare_variances
from bench.compare.matching import match_cells
from bench.compare.reading import OPTIONAL_COLUMNS, load_sweep
from bench.compare.report import Comparison, report
from bench.compare.strict import strict_checks
from bench.compare.throughput import compare_throughput

DESCRIPTION = (
    "Compare two sweeps cell by cell. Exit status: 0 no regression, 5 regression found, 6 (only with "
    "--strict, and no regression) a baseline cell missing from NEW, a cell no longer ok, or changed "
    "settings, 2 bad input."
)
DEFAULTS = Options()


def fraction(name: str, upper: float | None) -> Any:
    def parse(value: str) -> float:
        try:
            number_ = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {value!r}") from None
        if not (number_ >= 0 and (upper is None or number_ < upper)) or not math.isfinite(number_):
            bound = f"in [0, {upper:g})" if upper is not None else ">= 0"
            raise argparse.ArgumentTypeError(f"{name} must be {bound}, got {value}")
        return number_

    return parse


def probability(value: str) -> float:
    try:
        alpha = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--alpha must be a number, got {value!r}") from None
    if not 0 < alpha < 1:
        raise argparse.ArgumentTypeError(f"--alpha must be in (0, 1), got {value}")
    return alpha


def add_throughput_options(parse: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    parse.add_argument(
        "--throughput-tolerance",
        type=fraction("--throughput-tolerance", 1.0),
        default=d.throughput_tolerance,
        help=f"flag a throughput only if new/base, over the machine factor, is below 1 - this as well as "
        f"significantly low (default {d.throughput_tolerance:g})",
    )
    parse.add_argument(
        "--min-timed-seconds",
        type=fraction("--min-timed-seconds", None),
        default=d.min_timed_seconds,
        help=f"judge the throughput of cells timed at least this long in both sweeps "
        f"(n_estimates / estimates_per_s; default {d.min_timed_seconds:g}); shorter ones are "
        "'too short to judge'",
    )
    parse.add_argument(
        "--noise-floor",
        type=fraction("--noise-floor", None),
        default=d.noise_floor,
        metavar="TAU",
        help="run-to-run sd of log(new/base throughput) between identical sweeps, beyond the batches' "
        f"spread, for cells timed 1 s (it shrinks as 1/sqrt(timed seconds); default {d.noise_floor:g}, "
        "measured on a 2-core machine: docs/compare.md)",
    )
    parse.add_argument(
        "--control",
        metavar="PROBLEM:ESTIMATOR[:N_SAMPLES]",
        help="normalize throughput by this cell's new/base (without n_samples: its largest) instead of "
        "the median over the long quietly timed cells ('median', the default)",
    )
    parse.add_argument(
        "--count-busy",
        action="store_true",
        help="let throughput drops timed on a busy machine set the exit status too (default: reported only)",
    )
    parse.add_argument(
        "--no-throughput",
        dest="throughput",
        action="store_false",
        help="do not compare throughput (e.g. sweeps from different machines)",
    )


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(prog="bench compare", description=DESCRIPTION)
    parse.add_argument("baseline", metavar="BASELINE_DIR", help="the reference sweep's out directory")
    parse.add_argument("new", metavar="NEW_DIR", help="the sweep to check")
    parse.add_argument(
        "--variance-tolerance",
        type=fraction("--variance-tolerance", None),
        default=0.10,
        help="flag a variance only if new/base exceeds 1 + this beyond its bound (default 0.10)",
    )
    parse.add_argument(
        "--alpha",
        type=probability,
        default=DEFAULTS.alpha,
        help="family-wise false-alarm rate of the variance test, and of the throughput test (default 0.01)",
    )
    add_throughput_options(parse)
    parse.add_argument(
        "--strict",
        action="store_true",
        help="exit 6 (when nothing regressed) if a baseline cell is missing from NEW, a cell was ok and is "
        "skipped or failed, or a matched cell ran at other n_estimates, seed or device",
    )
    parse.add_argument("--all", dest="show_all", action="store_true", help="print every matched cell")
    parse.add_argument("--json", metavar="PATH", type=Path, help="write the full comparison as JSON")
    return parse


def compare(args: argparse.Namespace) -> tuple[str, dict[str, Any], int]:
    options = Options(
        variance_tolerance=args.variance_tolerance,
        throughput_tolerance=args.throughput_tolerance,
        alpha=args.alpha,
        control=args.control,
        count_busy=args.count_busy,
        throughput=args.throughput,
        strict=args.strict,
        min_timed_seconds=args.min_timed_seconds,
        noise_floor=args.noise_floor,
    )
    base, new = load_sweep(args.baseline, "BASELINE"), load_sweep(args.new, "NEW")
    pairs, unmatched_base, unmatched_new, notes = match_cells(base, new)
    if not pairs:
        raise BadInput(
            f"no cell of {new.path} matches one of {base.path} by id or by problem, estimator, dtype, "
            "n_samples and configs: nothing to compare"
        )
    lacking = {
        column: roles
        for column in OPTIONAL_COLUMNS
        if (roles := [sweep.role for sweep in (base, new) if column not in sweep.cells])
    }
    notes += [f"column {column} missing in {' and '.join(roles)}" for column, roles in lacking.items()]
    compare_labels(pairs, has_conformance="conformance" not in lacking)
    strict_counts = strict_checks(pairs, unmatched_base)
    variance_info = compare_variances(pairs, options)
    throughput_info = compare_throughput(pairs, base, new, options)
    return report(
        Comparison(
            base,
            new,
            pairs,
            unmatched_base,
            unmatched_new,
            notes,
            variance_info,
            throughput_info,
            strict_counts,
            options,
            args.show_all,
        )
    )


def main(argv: Iterable[str]) -> int:
    """``bench compare``; returns the exit status (0 no regression, 5 regression, 6 --strict found
    a missing, no longer ok or changed cell, 2 bad input)."""
    try:
        args = parser().parse_args(list(argv))
    except SystemExit as exit_:  # argparse has printed the usage and the error (or --help)
        return EXIT_OK if exit_.code in (0, None) else EXIT_BAD_INPUT
    try:
        text_report, full, status = compare(args)
    except BadInput as error:
        print(f"bench compare: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(text_report)
    if args.json is not None:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(full, indent=1) + "\n")
        except OSError as error:
            print(f"bench compare: --json {args.json}: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
    return status
