"""``bench compare BASELINE_DIR NEW_DIR``: two sweeps compared cell by cell, exit 5 on a regression.

Matching. A cell of NEW is paired with the BASELINE cell of the same ``cell`` id (the id hashes
problem, estimator, both configs, n_samples, n_estimates, seed and dtype). The cells left over are
paired by their *setting*: problem, estimator, dtype, n_samples and every config column the two
tables share (a column only one table has is ignored, so a key added to a YAML between the two runs
does not unpair everything). A setting may repeat within a sweep (several seeds or n_estimates);
the leftovers are paired in rounds, first on setting + seed, then setting + n_estimates, then the
setting alone, and a round pairs only groups holding exactly one cell on each side. What is still
left is reported as unmatched, with the nearest cell's differing config columns.

Findings per matched pair (a *regression* sets the exit status; a *change* is only reported):
- status: ``failed`` in NEW but not in BASELINE is a regression.
- conformance: ``fail`` in NEW but not in BASELINE (pass→fail, n/a→fail, ...) is a regression.
- variance (the trace of one estimate's covariance, which does not depend on n_estimates): the
  ratio r = V_new / V_base with a one-sided bound on the log scale. With relative standard errors
  s = variance_stderr / variance (the delta method), sd(log r) = s_base + s_new when the two cells
  share their noise (same or unknown seed: common random numbers across the sweeps, of unknown
  correlation, so the Cauchy–Schwarz bound of bench.output.variance_ratio), and sqrt(s_base² + s_new²)
  when the seeds differ (independent runs). A regression when r·exp(−z·sd) > 1 + tolerance, with
  z = Φ⁻¹(1 − α/m) over the m pairs tested (Bonferroni): if no cell's true variance grew by more
  than the tolerance, the chance that any is flagged is at most α (default 0.01) under the normal
  approximation of log V̂, whatever the dependence between cells.
- throughput: estimates_per_s new/base of the pair divided by its control's new/base (the control
  is a cell both sweeps hold, so a uniformly slower or faster machine cancels: by default reinforce
  on the alphabetically first problem both sweeps hold it on, at its largest n_samples; or
  ``--control PROBLEM:ESTIMATOR[:N_SAMPLES]``; or ``--control median``, the median new/base over
  the cells timed on a quiet machine in both sweeps, which no single noisy cell can move); a
  regression below 1 − tolerance (default 0.25). Throughput is noisy: a cell of a few
  milliseconds, or one that shared its cores with other processes, varies by tens of percent, more
  than the tolerance. Each
  row prints both sweeps' load average, threads and cores held while timed; a drop where the cell
  or the control was timed on a busy machine (1-minute load average above the sweep's usable cores
  + 0.5, bench.summary's rule, or, on the CPU, under 0.8 of a core held while timed:
  cpu_seconds / (n_estimates / estimates_per_s)) is reported as ``busy`` and does not set the exit
  status unless ``--count-busy``.

A check whose columns one table lacks (an older sweep) is skipped with a note.

Exit status: 0 no regression, 5 at least one regression, 2 bad input (a missing directory, no
cells.parquet, no matched cell, a bad option).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

EXIT_OK, EXIT_BAD_INPUT, EXIT_REGRESSION = 0, 2, 5
REQUIRED_COLUMNS = ["cell", "problem", "estimator", "status", "n_samples"]
# Columns the checks read; a table without one (an older sweep) skips or limits that check.
OPTIONAL_COLUMNS = [
    "conformance", "variance", "variance_stderr", "seed", "n_estimates", "dtype", "estimates_per_s",
    "load_avg", "threads", "cpu_seconds",
]  # fmt: skip
KINDS = ["status", "conformance", "variance", "throughput"]
DEFAULT_CONTROL = "reinforce"
BUSY_MARGIN = 0.5  # load above usable cores + this is a busy machine (bench.summary's rule)
MIN_CORE_SHARE = 0.8  # a CPU cell that held less of a core than this while timed waited for one
MAX_UNMATCHED_LISTED = 10


class BadInput(Exception):
    """Input the comparison cannot use; the message names the directory, column or option."""


@dataclass
class Sweep:
    role: str  # "BASELINE" | "NEW"
    path: Path
    cells: pd.DataFrame
    metadata: dict[str, Any]
    config_columns: list[str]
    cores: int  # usable cores of the machine that ran the sweep


@dataclass
class Pair:
    base: dict[str, Any]
    new: dict[str, Any]
    match: str  # "id" | "config"
    findings: dict[str, str] = field(default_factory=dict)  # kind → "regression" | "change" | "improvement"
    data: dict[str, Any] = field(default_factory=dict)


# --- reading --------------------------------------------------------------------------------------
def load_sweep(text: str, role: str) -> Sweep:
    """A sweep directory's cells.parquet and metadata, or BadInput naming what is wrong."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(text)
    if not path.exists():
        raise BadInput(f"{role} {path}: no such directory")
    if not path.is_dir():
        raise BadInput(
            f"{role} {path}: not a directory (give the sweep's out directory, which holds cells.parquet)"
        )
    cells_path = path / "cells.parquet"
    if not cells_path.is_file():
        if (path / ".bench" / "cells").is_dir():
            hint = (
                "it holds per-cell files but no merged table: the sweep is still running or was stopped "
                f"before merging (`bench plot {path}` merges the finished cells)"
            )
        else:
            hint = "is it the out directory of a `bench sweep`?"
        raise BadInput(f"{role} {path}: no cells.parquet; {hint}")
    try:
        table = pq.read_table(cells_path)
        cells = table.to_pandas()
        metadata = json.loads((table.schema.metadata or {}).get(b"bench", b"{}"))
    except (OSError, ValueError, pa.ArrowException) as error:
        raise BadInput(f"{role} {cells_path}: not a readable parquet table ({error})") from error
    missing = [column for column in REQUIRED_COLUMNS if column not in cells]
    if missing:
        raise BadInput(
            f"{role} {cells_path}: missing column(s) {', '.join(missing)}; not a bench cells table"
        )
    if cells.empty:
        raise BadInput(f"{role} {cells_path}: the table has no cells")
    repeated = cells["cell"][cells["cell"].duplicated()]
    if len(repeated):
        raise BadInput(
            f"{role} {cells_path}: cell id(s) repeat ({', '.join(map(str, repeated[:3]))}); "
            "bench writes each cell once, was the table concatenated by hand?"
        )
    metadata = metadata if isinstance(metadata, dict) else {}
    cores = metadata.get("usable_cores") or metadata.get("cpu_count")
    if not cores:  # a table without bench's metadata; bench.output imports torch, so only then
        from bench.output import usable_cores

        cores = usable_cores()
    return Sweep(
        role, path, cells.reset_index(drop=True), metadata, config_columns(cells, metadata), int(cores)
    )


def config_columns(cells: pd.DataFrame, metadata: dict[str, Any]) -> list[str]:
    """The config columns: from the table's metadata (the merge records them), else every column
    that is not one of bench's fixed columns."""
    listed = [*(metadata.get("problem_columns") or []), *(metadata.get("estimator_columns") or [])]
    if listed:
        return [column for column in listed if column in cells]
    from bench.output import CELL_COLUMNS  # imports torch: only for tables without that metadata

    return [column for column in cells.columns if column not in CELL_COLUMNS]


# --- values ---------------------------------------------------------------------------------------
def missing(value: Any) -> bool:
    try:
        return value is None or bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or array: present
        return False


def number(value: Any) -> float:
    """A float, NaN for a missing or non-numeric value."""
    if missing(value):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def text(value: Any) -> str | None:
    return None if missing(value) else str(value)


def canonical(value: Any) -> Any:
    """A config value in a form that compares equal across tables: numbers as floats (an Int64
    column in one table may be float64 in the other), JSON text re-serialized."""
    if missing(value):
        return None
    if isinstance(value, bool) or type(value).__name__ == "bool_":  # numpy's bool too
        return bool(value)
    if isinstance(value, (int, float)) or (hasattr(value, "__float__") and not isinstance(value, str)):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.dumps(json.loads(value), sort_keys=True)
        except ValueError:
            return value
    return str(value) if not isinstance(value, str) else value


def json_safe(value: Any) -> Any:
    """``value`` with NaN, pandas NA and numpy scalars made JSON-friendly."""
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if missing(value):
        return None
    if isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):  # numpy scalars
        return json_safe(value.item())
    return str(value)


# --- matching -------------------------------------------------------------------------------------
def key_number(value: Any) -> float | None:
    """A number for a dict key (None, not NaN, for a missing one: NaN never equals itself)."""
    result = number(value)
    return None if math.isnan(result) else result


def setting_key(row: dict[str, Any], columns: Sequence[str]) -> tuple:
    """problem, estimator, dtype, n_samples and the config values: what makes two cells one setting."""
    return (
        text(row.get("problem")),
        text(row.get("estimator")),
        text(row.get("dtype")),
        key_number(row.get("n_samples")),
        tuple(canonical(row.get(column)) for column in columns),
    )


def match_cells(base: Sweep, new: Sweep) -> tuple[list[Pair], list[dict], list[dict], list[str]]:
    """(pairs in the baseline's row order, unmatched baseline rows, unmatched new rows, notes)."""
    notes = []
    shared = [column for column in base.config_columns if column in new.config_columns]
    for sweep, other in ((base, new), (new, base)):
        only = [
            c for c in sweep.config_columns if c not in other.config_columns and sweep.cells[c].notna().any()
        ]
        if only:
            notes.append(f"config column(s) only in {sweep.role}, ignored for matching: {', '.join(only)}")
    base_rows = base.cells.to_dict("records")
    new_rows = new.cells.to_dict("records")
    new_index = {row["cell"]: position for position, row in enumerate(new_rows)}
    paired: dict[int, tuple[int, str]] = {}  # base position → (new position, how)
    for position, row in enumerate(base_rows):
        if row["cell"] in new_index:
            paired[position] = (new_index[row["cell"]], "id")
    taken = {new_position for new_position, _ in paired.values()}
    keys_base = [setting_key(row, shared) for row in base_rows]
    keys_new = [setting_key(row, shared) for row in new_rows]
    rounds = [("seed",), ("n_estimates",), ()]
    for extra in rounds:
        groups_base: dict[tuple, list[int]] = {}
        groups_new: dict[tuple, list[int]] = {}
        for position, row in enumerate(base_rows):
            if position not in paired:
                groups_base.setdefault(
                    (keys_base[position], *(key_number(row.get(c)) for c in extra)), []
                ).append(position)
        for position, row in enumerate(new_rows):
            if position not in taken:
                groups_new.setdefault(
                    (keys_new[position], *(key_number(row.get(c)) for c in extra)), []
                ).append(position)
        for key, members in groups_base.items():
            others = groups_new.get(key, [])
            if len(members) == 1 and len(others) == 1:
                paired[members[0]] = (others[0], "config")
                taken.add(others[0])
    pairs = [
        Pair(base_rows[position], new_rows[paired[position][0]], paired[position][1])
        for position in range(len(base_rows))
        if position in paired
    ]
    unmatched_base = [
        unmatched(row, keys_base[i], keys_new, shared, "NEW")
        for i, row in enumerate(base_rows)
        if i not in paired
    ]
    unmatched_new = [
        unmatched(row, keys_new[i], keys_base, shared, "BASELINE")
        for i, row in enumerate(new_rows)
        if i not in taken
    ]
    return pairs, unmatched_base, unmatched_new, notes


def unmatched(
    row: dict[str, Any],
    key: tuple,
    other_keys: list[tuple],
    columns: Sequence[str],
    where: str,
) -> dict[str, Any]:
    """An unmatched cell and why: ambiguous, or the config columns in which the nearest cell of the
    other sweep (same problem, estimator, dtype, n_samples) differs."""
    same_setting = sum(other_key == key for other_key in other_keys)
    if same_setting:
        reason = (
            f"{same_setting} cell(s) of {where} share its setting but were paired with others or "
            "could not be told apart by seed or n_estimates"
        )
    else:
        near = [i for i, other_key in enumerate(other_keys) if other_key[:4] == key[:4]]
        if near:
            differing = min(
                (
                    [c for c, a, b in zip(columns, key[4], other_keys[i][4], strict=True) if a != b]
                    for i in near
                ),
                key=len,
            )
            reason = f"nearest cell of {where} differs in {', '.join(differing)}"
        else:
            reason = f"no cell of {where} with this problem, estimator, dtype and n_samples"
    return {
        "cell": row["cell"],
        "problem": text(row.get("problem")),
        "estimator": text(row.get("estimator")),
        "n_samples": json_safe(row.get("n_samples")),
        "status": text(row.get("status")),
        "reason": reason,
    }


# --- findings -------------------------------------------------------------------------------------
@dataclass
class Options:
    variance_tolerance: float
    throughput_tolerance: float
    alpha: float
    control: str | None
    count_busy: bool
    throughput: bool


def compare_label(pair: Pair, column: str, bad: str) -> None:
    """A text column of the two cells (status, conformance): becoming ``bad`` is a regression,
    leaving it an improvement, any other change a change; the same value in both is no finding."""
    before, after = text(pair.base.get(column)), text(pair.new.get(column))
    pair.data.update({f"{column}_baseline": before, f"{column}_new": after})
    if before == after:
        return
    if after == bad:
        pair.findings[column] = "regression"
    elif before == bad:
        pair.findings[column] = "improvement"
    else:
        pair.findings[column] = "change"


def both_ok(pair: Pair) -> bool:
    return text(pair.base.get("status")) == "ok" and text(pair.new.get("status")) == "ok"


def log_ratio_sd(
    v_base: float, se_base: float, v_new: float, se_new: float, shared: bool
) -> tuple[float, float]:
    """log(V_new / V_base) and its standard deviation from the variances and their standard errors.

    On the log scale each variance has relative standard error s = se / V (the delta method). Two
    cells on independent noise: sd = sqrt(s_base² + s_new²). Two cells on shared noise (the same
    seed: common random numbers across the sweeps, correlated with an unknown sign): sd ≤ s_base +
    s_new for every correlation (Cauchy–Schwarz), the conservative bound bench.output.variance_ratio
    uses.
    """
    s_base, s_new = se_base / v_base, se_new / v_new
    return math.log(v_new / v_base), (s_base + s_new if shared else math.hypot(s_base, s_new))


def variance_verdict(log_ratio: float, sd: float, z: float, tolerance: float) -> str | None:
    """``regression`` when the one-sided lower bound log r − z·sd is above log(1 + tolerance),
    ``improvement`` when the upper bound is below −log(1 + tolerance), else None."""
    threshold = math.log1p(tolerance)
    if log_ratio - z * sd > threshold:
        return "regression"
    if log_ratio + z * sd < -threshold:
        return "improvement"
    return None


def variance_terms(pair: Pair) -> tuple[float, float] | None:
    """(log ratio, sd of the log ratio) of a testable pair, None otherwise."""
    if not both_ok(pair):
        return None
    v_base, v_new = number(pair.base.get("variance")), number(pair.new.get("variance"))
    se_base, se_new = number(pair.base.get("variance_stderr")), number(pair.new.get("variance_stderr"))
    if not all(math.isfinite(x) for x in (v_base, v_new, se_base, se_new)) or not (v_base > 0 and v_new > 0):
        return None
    seeds = number(pair.base.get("seed")), number(pair.new.get("seed"))
    independent = all(math.isfinite(seed) for seed in seeds) and seeds[0] != seeds[1]
    pair.data["variance_noise"] = "independent (different seeds)" if independent else "shared (same seed)"
    return log_ratio_sd(v_base, se_base, v_new, se_new, shared=not independent)


def compare_variances(pairs: Sequence[Pair], options: Options) -> dict[str, Any]:
    """The variance test over every testable pair, one-sided at α/m each (Bonferroni over their
    number m): the family-wise false-alarm rate is at most α."""
    testable = [(pair, terms) for pair in pairs if (terms := variance_terms(pair)) is not None]
    m = len(testable)
    z = statistics.NormalDist().inv_cdf(1 - options.alpha / m) if m else math.nan
    for pair, (log_ratio, sd) in testable:
        pair.data.update(
            variance_ratio=math.exp(log_ratio),
            variance_ratio_low=math.exp(log_ratio - z * sd),
            variance_ratio_high=math.exp(log_ratio + z * sd),
            variance_log_sd=sd,
        )
        verdict = variance_verdict(log_ratio, sd, z, options.variance_tolerance)
        if verdict:
            pair.findings["variance"] = verdict
    for pair in pairs:
        pair.data.update(
            variance_baseline=number(pair.base.get("variance")), variance_new=number(pair.new.get("variance"))
        )
        if both_ok(pair) and "variance_ratio" not in pair.data:
            zero = (pair.data["variance_baseline"] == 0) != (pair.data["variance_new"] == 0)
            if zero:  # a deterministic cell became random or the reverse: no ratio to test
                pair.findings["variance"] = "change"
    return {"tests": m, "alpha": options.alpha, "z": z, "tolerance": options.variance_tolerance}


def core_share(row: dict[str, Any]) -> float:
    """Cores the process held on average during the timed part: cpu_seconds / timed wall seconds
    (the timed wall time is n_estimates / estimates_per_s)."""
    wall = number(row.get("n_estimates")) / throughput(row)
    return number(row.get("cpu_seconds")) / wall if wall > 0 else math.nan


def timing_trouble(row: dict[str, Any], cores: int) -> str | None:
    """Why a cell's throughput was measured on a busy machine, or None.

    Busy: the 1-minute load average at the cell's start was above the sweep's usable cores + 0.5
    (bench.summary's rule), or, on the CPU, the process held less than 0.8 of a core on average
    while it was timed (it waited for a core: the load average is a lagging 1-minute mean and
    misses bursts, CPU time does not).
    """
    load = number(row.get("load_avg"))
    if load > cores + BUSY_MARGIN:
        return f"load {load:.1f} on {cores} cores"
    share = core_share(row)
    if text(row.get("device")) in (None, "cpu") and share < MIN_CORE_SHARE:
        return f"held {share:.0%} of a core"
    return None


def throughput(row: dict[str, Any]) -> float:
    value = number(row.get("estimates_per_s"))
    return value if math.isfinite(value) and value > 0 else math.nan


def timed(pair: Pair) -> bool:
    return both_ok(pair) and math.isfinite(throughput(pair.base)) and math.isfinite(throughput(pair.new))


def parse_control(spec: str) -> tuple[str, str, int | None]:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise BadInput(
            f"--control {spec!r}: expected PROBLEM:ESTIMATOR, PROBLEM:ESTIMATOR:N_SAMPLES or median"
        )
    try:
        n_samples = int(parts[2]) if len(parts) == 3 else None
    except ValueError as error:
        raise BadInput(f"--control {spec!r}: n_samples {parts[2]!r} is not an integer") from error
    return parts[0], parts[1], n_samples


def choose_control(pairs: Sequence[Pair], spec: str | None) -> tuple[Pair | None, str]:
    """The control pair and how it was chosen; BadInput for a --control that names no usable pair.

    A control named without n_samples, and the default, take the pair's largest n_samples (the
    longest timed part, least dominated by per-batch overhead); ties: the baseline table's order.
    """
    candidates = [pair for pair in pairs if timed(pair)]
    if spec is not None:
        problem, estimator, n_samples = parse_control(spec)
        chosen = [
            p
            for p in candidates
            if p.base["problem"] == problem
            and p.base["estimator"] == estimator
            and (n_samples is None or number(p.base["n_samples"]) == n_samples)
        ]
        if not chosen:
            names = sorted(
                {f"{p.base['problem']}:{p.base['estimator']}:{p.base['n_samples']}" for p in candidates}
            )
            listed = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise BadInput(
                f"--control {spec}: no matched cell with that problem, estimator"
                f"{' and n_samples' if n_samples is not None else ''} is ok with a throughput in both "
                f"sweeps; choices: {listed or 'none'}"
            )
        how = f"--control {spec}" + (", largest n_samples" if n_samples is None else "")
    else:
        problems = sorted({p.base["problem"] for p in candidates if p.base["estimator"] == DEFAULT_CONTROL})
        if problems:
            chosen = [
                p
                for p in candidates
                if p.base["problem"] == problems[0] and p.base["estimator"] == DEFAULT_CONTROL
            ]
            how = f"default: {DEFAULT_CONTROL} on the first problem both sweeps hold, largest n_samples"
        else:
            chosen = candidates
            how = f"default: no {DEFAULT_CONTROL} cell in both sweeps; the first of largest n_samples"
    if not chosen:
        return None, "no matched cell is ok with a throughput in both sweeps"
    control = max(chosen, key=lambda p: number(p.base["n_samples"]))  # first of the largest n_samples
    return control, how


def compare_throughput(pairs: Sequence[Pair], base: Sweep, new: Sweep, options: Options) -> dict[str, Any]:
    """Throughput new/base of every timed pair, divided by the control's new/base."""
    for pair in pairs:
        pair.data.update(
            estimates_per_s_baseline=number(pair.base.get("estimates_per_s")),
            estimates_per_s_new=number(pair.new.get("estimates_per_s")),
            load_avg_baseline=number(pair.base.get("load_avg")),
            load_avg_new=number(pair.new.get("load_avg")),
            threads_baseline=number(pair.base.get("threads")),
            threads_new=number(pair.new.get("threads")),
            core_share_baseline=core_share(pair.base) if timed(pair) else math.nan,
            core_share_new=core_share(pair.new) if timed(pair) else math.nan,
        )
    if not options.throughput:
        return {"checked": False, "reason": "--no-throughput"}
    info: dict[str, Any] = {"checked": True, "tolerance": options.throughput_tolerance}
    control_trouble: list[str] = []
    if options.control == "median":
        usable = [p for p in pairs if timed(p)]
        if not usable:
            return {"checked": False, "reason": "no matched cell is ok with a throughput in both sweeps"}
        # the cells timed on a quiet machine in both sweeps, when there are any
        quiet = [
            p
            for p in usable
            if not timing_trouble(p.base, base.cores) and not timing_trouble(p.new, new.cores)
        ]
        scale = statistics.median(throughput(p.new) / throughput(p.base) for p in quiet or usable)
        if not quiet:
            control_trouble.append("every cell was timed on a busy machine")
        info.update(control="median", chosen="--control median", median_of=len(quiet or usable))
    else:
        control, how = choose_control(pairs, options.control)
        if control is None:
            return {"checked": False, "reason": how}
        scale = throughput(control.new) / throughput(control.base)
        for label, row, sweep in (("baseline", control.base, base), ("new", control.new, new)):
            trouble = timing_trouble(row, sweep.cores)
            if trouble:
                control_trouble.append(f"control {label}: {trouble}")
        info.update(
            control=control.base["cell"], control_new=control.new["cell"], chosen=how,
            control_problem=control.base["problem"], control_estimator=control.base["estimator"],
            control_n_samples=control.base["n_samples"],
        )  # fmt: skip
    info.update(control_raw_ratio=scale, control_busy="; ".join(control_trouble) or None)
    floor = 1 - options.throughput_tolerance
    for pair in pairs:
        if not timed(pair):
            continue
        raw_ratio = throughput(pair.new) / throughput(pair.base)
        trouble = list(control_trouble)
        for label, row, sweep in (("baseline", pair.base, base), ("new", pair.new, new)):
            reason = timing_trouble(row, sweep.cores)
            if reason:
                trouble.append(f"{label}: {reason}")
        pair.data.update(
            throughput_raw_ratio=raw_ratio,
            throughput_ratio=raw_ratio / scale,
            busy="; ".join(trouble) or None,
        )
        if raw_ratio / scale < floor:
            pair.findings["throughput"] = "regression"
        elif raw_ratio / scale > 1 / floor:
            pair.findings["throughput"] = "improvement"
    return info


def counted(pair: Pair, kind: str, options: Options) -> bool:
    """Whether a finding sets the exit status: every regression, except a throughput drop timed on
    a busy machine (unless --count-busy)."""
    if pair.findings.get(kind) != "regression":
        return False
    return not (kind == "throughput" and pair.data.get("busy") and not options.count_busy)


# --- report ---------------------------------------------------------------------------------------
def varying_columns(
    frames: Sequence[pd.DataFrame], columns: Sequence[str]
) -> dict[tuple[str, str], list[str]]:
    """(problem, estimator) → the config columns whose value varies among its cells (both tables):
    the keys that tell its cells apart, shown in the table (the JSON has every config value)."""
    rows = pd.concat([frame[["problem", "estimator", *columns]] for frame in frames], ignore_index=True)
    varying = {}
    for (problem, estimator), group in rows.groupby(["problem", "estimator"], sort=False):
        varying[(problem, estimator)] = [
            column for column in columns if len({canonical(value) for value in group[column]}) > 1
        ]
    return varying


def config_text(row: dict[str, Any], columns: Sequence[str], width: int = 40) -> str:
    parts = [f"{column}={row[column]}" for column in columns if column in row and not missing(row[column])]
    joined = ",".join(parts).replace(" ", "") or "-"
    return joined if len(joined) <= width else joined[: width - 1] + "…"


def fmt(value: float, digits: int = 3) -> str:
    return "-" if not math.isfinite(value) else f"{value:.{digits}g}"


def load_text(pair: Pair) -> str:
    """load average, threads and cores held while timed, baseline→new: ``1.9/1t/98%→2.1/1t/51%``."""

    def one(side: str) -> str:
        load, threads, share = (pair.data[f"{name}_{side}"] for name in ("load_avg", "threads", "core_share"))
        if not any(math.isfinite(x) for x in (load, threads, share)):
            return "-"
        return f"{fmt(load, 2)}/{fmt(threads)}t/" + (f"{share:.0%}" if math.isfinite(share) else "-")

    return f"{one('baseline')}→{one('new')}"


VERDICT_WORDS = {
    ("status", "regression"): "FAILED",
    ("status", "improvement"): "fixed",
    ("status", "change"): "status changed",
    ("conformance", "regression"): "CONFORMANCE FAIL",
    ("conformance", "improvement"): "conformance fixed",
    ("conformance", "change"): "conformance changed",
    ("variance", "regression"): "VARIANCE UP",
    ("variance", "improvement"): "variance down",
    ("variance", "change"): "variance zero changed",
    ("throughput", "regression"): "SLOWER",
    ("throughput", "improvement"): "faster",
}


def verdict_text(pair: Pair, options: Options) -> str:
    words = []
    for kind in KINDS:
        finding = pair.findings.get(kind)
        if finding is None:
            continue
        word = VERDICT_WORDS[(kind, finding)]
        if kind == "throughput" and pair.data.get("busy"):
            uncounted = finding == "regression" and not counted(pair, kind, options)
            word += f" (busy: {pair.data['busy']}{'; not counted' if uncounted else ''})"
        words.append(word)
    return ", ".join(words) or "same"


def table_lines(
    pairs: Sequence[Pair], varying: dict[tuple[str, str], list[str]], options: Options
) -> list[str]:
    header = [
        "cell",
        "problem",
        "estimator",
        "config (keys that vary)",
        "n_s",
        "status",
        "variance new/base [bound]",
        "conformance",
        "speed",
        "load/threads/held",
        "verdict",
    ]
    rows = []
    for pair in pairs:
        d = pair.data
        cell = pair.base["cell"] if pair.match == "id" else f"{pair.base['cell']}~{pair.new['cell']}"
        status = (
            d["status_baseline"]
            if d["status_baseline"] == d["status_new"]
            else f"{d['status_baseline']}→{d['status_new']}"
        )
        if "variance_ratio" in d:
            bound = f"[{fmt(d['variance_ratio_low'])}, {fmt(d['variance_ratio_high'])}]"
            variance = f"{fmt(d['variance_ratio'])} {bound}"
        else:
            variance = f"{fmt(d['variance_baseline'])}→{fmt(d['variance_new'])}" if both_ok(pair) else "-"
        before, after = d["conformance_baseline"] or "-", d["conformance_new"] or "-"
        conformance = before if before == after else f"{before}→{after}"
        speed = fmt(d["throughput_ratio"], 3) if "throughput_ratio" in d else "-"
        rows.append(
            [
                cell,
                str(pair.base["problem"]),
                str(pair.base["estimator"]),
                config_text(pair.base, varying.get((pair.base["problem"], pair.base["estimator"]), [])),
                str(pair.base["n_samples"]),
                status,
                variance,
                conformance,
                speed,
                load_text(pair),
                verdict_text(pair, options),
            ]
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def sweep_line(sweep: Sweep) -> str:
    meta = sweep.metadata
    facts = [f"{len(sweep.cells)} cells"]
    if meta.get("git_commit"):
        facts.append(f"git {str(meta['git_commit'])[:9]}")
    if meta.get("date"):
        facts.append(str(meta["date"])[:10])
    if meta.get("device_name"):
        facts.append(f"{meta['device_name']}, {sweep.cores} cores")
    return f"{sweep.role:<8} {sweep.path}  ({'; '.join(facts)})"


def machine_notes(base: Sweep, new: Sweep, pairs: Sequence[Pair]) -> list[str]:
    notes = []
    devices_named = base.metadata.get("device_name"), new.metadata.get("device_name")
    if all(devices_named) and devices_named[0] != devices_named[1]:
        notes.append(
            f"the sweeps ran on different devices ({base.metadata.get('device_name')} vs "
            f"{new.metadata.get('device_name')}): throughput ratios compare machines as well as code"
        )
    devices = {(text(p.base.get("device")), text(p.new.get("device"))) for p in pairs}
    changed = sorted(f"{a}→{b}" for a, b in devices if a != b)
    if changed:
        notes.append(f"matched cells ran on different devices ({', '.join(changed)})")
    return notes


def summarize(pairs: Sequence[Pair], options: Options) -> dict[str, Any]:
    regressions = {kind: sum(counted(p, kind, options) for p in pairs) for kind in KINDS}
    improvements = {kind: sum(p.findings.get(kind) == "improvement" for p in pairs) for kind in KINDS}
    changes = {kind: sum(p.findings.get(kind) == "change" for p in pairs) for kind in KINDS}
    busy_uncounted = sum(
        p.findings.get("throughput") == "regression" and not counted(p, "throughput", options) for p in pairs
    )
    still_failing = sum(
        p.data.get("conformance_baseline") == "fail" == p.data.get("conformance_new") for p in pairs
    )
    return {
        "regressions": regressions,
        "improvements": improvements,
        "changes": changes,
        "busy_throughput_drops_not_counted": busy_uncounted,
        "conformance_still_failing": still_failing,
    }


def summary_line(
    summary: dict[str, Any], n_pairs: int, by_id: int, n_unmatched: tuple[int, int], status: int
) -> str:
    regressions = summary["regressions"]
    total = sum(regressions.values())
    kinds = ", ".join(f"{kind} {count}" for kind, count in regressions.items())
    better = sum(summary["improvements"].values())
    uncounted = summary["busy_throughput_drops_not_counted"]
    busy_note = f" (+{uncounted} slower on a busy machine, not counted)" if uncounted else ""
    return (
        f"bench compare: {n_pairs} matched ({by_id} by id, {n_pairs - by_id} by config), unmatched "
        f"{n_unmatched[0]} baseline / {n_unmatched[1]} new; {total} regression(s): {kinds}{busy_note}; "
        f"{better} improvement(s); exit {status}"
    )


def report(
    base: Sweep,
    new: Sweep,
    pairs: list[Pair],
    unmatched_base: list[dict],
    unmatched_new: list[dict],
    notes: list[str],
    variance_info: dict[str, Any],
    throughput_info: dict[str, Any],
    options: Options,
    show_all: bool,
) -> tuple[str, dict[str, Any], int]:
    summary = summarize(pairs, options)
    status = EXIT_REGRESSION if sum(summary["regressions"].values()) else EXIT_OK
    columns = [c for c in base.config_columns if c in new.config_columns]
    lines = [sweep_line(base), sweep_line(new)]
    if not variance_info["tests"]:
        lines.append(
            "variance: not compared (no matched cell has a positive variance and its stderr in both)"
        )
    else:
        lines.append(
            f"variance: regression when new/base > {1 + options.variance_tolerance:g} beyond its one-sided "
            f"bound at family-wise alpha={options.alpha:g} over {variance_info['tests']} cells "
            f"(z={variance_info['z']:.2f}; [bound] = ratio·exp(∓z·sd))"
        )
    if throughput_info["checked"]:
        info = throughput_info
        if info["control"] == "median":
            control = f"the median new/base of {info['median_of']} quietly timed cells (--control median)"
        else:
            name = f"{info['control_problem']} × {info['control_estimator']}"
            control = (
                f"{name} n_samples={info['control_n_samples']} ({info['chosen']}), its own new/base "
                f"{fmt(info['control_raw_ratio'])}"
            )
        busy_note = f" (busy: {info['control_busy']})" if info["control_busy"] else ""
        lines.append(
            f"speed: estimates_per_s new/base divided by the control's: {control}{busy_note}; "
            f"regression below {1 - options.throughput_tolerance:g}"
        )
        lines.append(
            "       throughput is noisy on a shared machine; load/threads/held: the 1-minute load average "
            "at the cell's start, torch threads, and cores held while timed, base→new; a drop timed on a "
            "busy machine (load above cores + 0.5, or under 80% of a core held) is reported, not counted"
            + (" (--count-busy: counted)" if options.count_busy else "")
        )
    else:
        lines.append(f"speed: not compared ({throughput_info['reason']})")
    shown = [p for p in pairs if show_all or p.findings]
    shown.sort(key=lambda p: (not any(counted(p, k, options) for k in KINDS), not p.findings))  # stable
    lines.append("")
    if shown:
        varying = varying_columns([base.cells, new.cells], columns)
        lines.extend(table_lines(shown, varying, options))
    else:
        lines.append("no matched cell changed beyond tolerance")
    for label, rows in (("BASELINE", unmatched_base), ("NEW", unmatched_new)):
        if rows:
            lines.append(f"unmatched in {label} ({len(rows)}):")
            for row in rows[:MAX_UNMATCHED_LISTED]:
                lines.append(
                    f"  {row['cell']} {row['problem']} × {row['estimator']} n_samples={row['n_samples']}: "
                    f"{row['reason']}"
                )
            if len(rows) > MAX_UNMATCHED_LISTED:
                lines.append(f"  ... and {len(rows) - MAX_UNMATCHED_LISTED} more (--json PATH lists all)")
    for note in [*notes, *machine_notes(base, new, pairs)]:
        lines.append(f"note: {note}")
    if summary["conformance_still_failing"]:
        lines.append(
            f"note: {summary['conformance_still_failing']} cell(s) fail conformance in both sweeps "
            "(not a new regression)"
        )
    by_id = sum(p.match == "id" for p in pairs)
    lines.append(summary_line(summary, len(pairs), by_id, (len(unmatched_base), len(unmatched_new)), status))
    full = {
        "baseline": str(base.path),
        "new": str(new.path),
        "exit_status": status,
        "options": vars(options) | {"all": show_all},
        "variance_test": variance_info,
        "throughput_test": throughput_info,
        "summary": summary,
        "matched": len(pairs),
        "matched_by_id": by_id,
        "notes": [*notes, *machine_notes(base, new, pairs)],
        "cells": [pair_record(p, columns, options) for p in pairs],
        "unmatched": {"baseline": unmatched_base, "new": unmatched_new},
    }
    return "\n".join(lines), json_safe(full), status


def pair_record(pair: Pair, columns: Sequence[str], options: Options) -> dict[str, Any]:
    return {
        "cell_baseline": pair.base["cell"],
        "cell_new": pair.new["cell"],
        "match": pair.match,
        "problem": pair.base["problem"],
        "estimator": pair.base["estimator"],
        "n_samples": pair.base["n_samples"],
        "dtype": pair.base.get("dtype"),
        "seed_baseline": pair.base.get("seed"),
        "seed_new": pair.new.get("seed"),
        "n_estimates_baseline": pair.base.get("n_estimates"),
        "n_estimates_new": pair.new.get("n_estimates"),
        "config": {c: pair.base[c] for c in columns if c in pair.base and not missing(pair.base[c])},
        **pair.data,
        "findings": dict(pair.findings),
        "regressions": [kind for kind in KINDS if counted(pair, kind, options)],
    }


# --- command line ---------------------------------------------------------------------------------
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


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(
        prog="bench compare",
        description="Compare two sweeps cell by cell. "
        "Exit status: 0 no regression, 5 regression found, 2 bad input.",
    )
    parse.add_argument("baseline", metavar="BASELINE_DIR", help="the reference sweep's out directory")
    parse.add_argument("new", metavar="NEW_DIR", help="the sweep to check")
    parse.add_argument(
        "--variance-tolerance",
        type=fraction("--variance-tolerance", None),
        default=0.10,
        help="flag a variance only if new/base exceeds 1 + this beyond its bound (default 0.10)",
    )
    parse.add_argument(
        "--throughput-tolerance",
        type=fraction("--throughput-tolerance", 1.0),
        default=0.25,
        help="flag a normalized throughput ratio below 1 - this (default 0.25)",
    )
    parse.add_argument(
        "--alpha",
        type=probability,
        default=0.01,
        help="family-wise false-alarm rate of the variance test (default 0.01)",
    )
    parse.add_argument(
        "--control",
        metavar="PROBLEM:ESTIMATOR[:N_SAMPLES]",
        help="the cell that normalizes throughput (default: reinforce on the first problem, "
        "alphabetically, that both sweeps hold; its largest n_samples), or 'median': the median "
        "new/base ratio of all matched cells",
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
    parse.add_argument("--all", dest="show_all", action="store_true", help="print every matched cell")
    parse.add_argument("--json", metavar="PATH", type=Path, help="write the full comparison as JSON")
    return parse


def compare(args: argparse.Namespace) -> tuple[str, dict[str, Any], int]:
    options = Options(
        args.variance_tolerance,
        args.throughput_tolerance,
        args.alpha,
        args.control,
        args.count_busy,
        args.throughput,
    )
    base, new = load_sweep(args.baseline, "BASELINE"), load_sweep(args.new, "NEW")
    pairs, unmatched_base, unmatched_new, notes = match_cells(base, new)
    if not pairs:
        raise BadInput(
            f"no cell of {new.path} matches one of {base.path} by id or by problem, estimator, dtype, "
            "n_samples and configs: nothing to compare"
        )
    lacking = {
        column: [sweep.role for sweep in (base, new) if column not in sweep.cells]
        for column in OPTIONAL_COLUMNS
    }
    lacking = {column: roles for column, roles in lacking.items() if roles}
    notes += [f"column {column} missing in {' and '.join(roles)}" for column, roles in lacking.items()]
    for pair in pairs:
        compare_label(pair, "status", "failed")
        if "conformance" not in lacking:
            compare_label(pair, "conformance", "fail")
        else:
            pair.data.update(conformance_baseline=None, conformance_new=None)
    variance_info = compare_variances(pairs, options)
    throughput_info = compare_throughput(pairs, base, new, options)
    return report(
        base,
        new,
        pairs,
        unmatched_base,
        unmatched_new,
        notes,
        variance_info,
        throughput_info,
        options,
        args.show_all,
    )


def main(argv: Iterable[str]) -> int:
    """``bench compare``; returns the exit status (0 no regression, 5 regression, 2 bad input)."""
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
