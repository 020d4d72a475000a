"""The throughput test: is a cell slower in NEW than the machine as a whole, beyond its noise?

Per matched pair, r = estimates_per_s new/base. The *machine factor* m is the median r over the
cells timed long enough to judge and quietly in both sweeps (at least MIN_REFERENCE of them; else
over every quietly timed cell), so a uniformly faster or slower machine cancels and a minority of
slowed cells cannot move it; ``--control PROBLEM:ESTIMATOR[:N_SAMPLES]`` uses one cell's r instead.
A pair is *judged* only when both cells were timed for at least ``--min-timed-seconds`` (default
0.5 s: n_estimates / estimates_per_s) over at least MIN_BATCHES batches; the others are "too short
to judge" and are never a regression (a cell of a few milliseconds varies by tens of percent
between identical runs).

For a judged pair, z = (log r − log m) / sqrt(se_base² + se_new² + τ²·(1/T_base + 1/T_new)/2),
with se = batch_log_sd / sqrt(timed_batches) (the standard error of the cell's log throughput from
its batch-to-batch spread), T the timed seconds and τ = ``--noise-floor``: the run-to-run spread of
log r between identical sweeps that the batches do not show, for cells timed 1 s (it shrinks as
1/sqrt(T): measured, docs/compare.md); with a control cell the control's own variance is added.
A *regression* when z < −Φ⁻¹(1 − α/m) over the m judged pairs (one-sided, Bonferroni) and r/m <
1 − ``--throughput-tolerance`` (default 0.15: a practical floor). If log r − log m of
unchanged code is normal with that variance, the chance that any throughput regression is reported
for a sweep pair is at most α, whatever the dependence between cells. Noisier batches widen se and
make a flag harder: noise makes the test lenient, not flaky.

A pair timed on a busy machine (1-minute load average above the sweep's usable cores + 0.5,
bench.summary's rule, or, on the CPU, under 0.9 of a core held while timed) is still judged, but
its drop is reported as ``busy`` and does not set the exit status unless ``--count-busy``. A cell
that waited for a core a tenth of its timed part is about a tenth slower for that alone: with more
waiting allowed (0.8 before), time-slicing by one neighbour process could fake a drop near the 15%
floor (measured: 0.84 of a core held, 17% slower, identical code).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.compare.common import BadInput, Options, Pair, both_ok, number, text
from bench.compare.reading import Sweep

MIN_BATCHES = 3  # a batch-to-batch spread needs a few batches
MIN_REFERENCE = 3  # long quiet cells needed for the machine factor; else every quiet cell
BUSY_MARGIN = 0.5  # load above usable cores + this is a busy machine (bench.summary's rule)
MIN_CORE_SHARE = 0.9  # a CPU cell that held less of a core than this while timed waited for one


def throughput(row: dict[str, Any]) -> float:
    value = number(row.get("estimates_per_s"))
    return value if math.isfinite(value) and value > 0 else math.nan


def timed_seconds(row: dict[str, Any]) -> float:
    """The wall time of the timed part: n_estimates / estimates_per_s."""
    return number(row.get("n_estimates")) / throughput(row)


def core_share(row: dict[str, Any]) -> float:
    """Cores the process held on average during the timed part: cpu_seconds / timed wall seconds."""
    wall = timed_seconds(row)
    return number(row.get("cpu_seconds")) / wall if wall > 0 else math.nan


def timing_trouble(row: dict[str, Any], cores: int) -> str | None:
    """Why a cell's throughput was measured on a busy machine, or None.

    Busy: the 1-minute load average at the cell's start was above the sweep's usable cores + 0.5,
    or, on the CPU, the process held less than 0.9 of a core on average while it was timed (it
    waited for a core: the load average is a lagging 1-minute mean and misses bursts, CPU time
    does not).
    """
    load = number(row.get("load_avg"))
    if load > cores + BUSY_MARGIN:
        return f"load {load:.1f} on {cores} cores"
    share = core_share(row)
    if text(row.get("device")) in (None, "cpu") and share < MIN_CORE_SHARE:
        return f"held {share:.0%} of a core"
    return None


def timed(pair: Pair) -> bool:
    return both_ok(pair) and math.isfinite(throughput(pair.base)) and math.isfinite(throughput(pair.new))


def too_short(row: dict[str, Any], min_seconds: float) -> str | None:
    """Why a cell's timing is too short to judge, or None."""
    batches, spread = number(row.get("timed_batches")), number(row.get("batch_log_sd"))
    if not math.isfinite(batches):
        return "no per-batch timings (an older sweep)"
    seconds = timed_seconds(row)
    if not seconds >= min_seconds:
        return f"timed {seconds:.2g} s"
    if batches < MIN_BATCHES or not math.isfinite(spread):
        return f"{int(batches)} batch(es)"
    return None


def log_se(row: dict[str, Any]) -> float:
    """The standard error of a cell's log throughput from its batch-to-batch spread."""
    return number(row.get("batch_log_sd")) / math.sqrt(number(row.get("timed_batches")))


def noise_variance(pair: Pair, noise_floor: float) -> float:
    """The variance of log(new/base throughput) of unchanged code: both cells' batch variances
    plus the run-to-run part, τ² for cells timed 1 s, shrinking as 1/(timed seconds):
    se_base² + se_new² + τ²·(1/T_base + 1/T_new)/2."""
    run_to_run = noise_floor**2 * (1 / timed_seconds(pair.base) + 1 / timed_seconds(pair.new)) / 2
    return log_se(pair.base) ** 2 + log_se(pair.new) ** 2 + run_to_run


@dataclass
class Reference:
    """The machine factor: log m, the variance it adds to each z, and how it was chosen."""

    log_factor: float
    variance: float
    info: dict[str, Any]
    trouble: list[str] = field(default_factory=list)
    pair: Pair | None = None  # the control pair, if any


def log_ratio(pair: Pair) -> float:
    return math.log(throughput(pair.new) / throughput(pair.base))


def quiet(pair: Pair, base: Sweep, new: Sweep) -> bool:
    return not timing_trouble(pair.base, base.cores) and not timing_trouble(pair.new, new.cores)


def median_reference(usable: Sequence[Pair], judged: Sequence[Pair], base: Sweep, new: Sweep) -> Reference:
    """The median log r over the long quietly timed pairs (MIN_REFERENCE or more), else over every
    quietly timed pair, else over every timed pair (then every pair is busy)."""
    long_quiet = [p for p in judged if quiet(p, base, new)]
    every_quiet = [p for p in usable if quiet(p, base, new)]
    if len(long_quiet) >= MIN_REFERENCE:
        chosen, how = long_quiet, "long enough to judge and timed quietly in both sweeps"
    elif every_quiet:
        chosen, how = every_quiet, f"timed quietly in both sweeps; fewer than {MIN_REFERENCE} long enough"
    else:
        chosen, how = list(usable), "every timed cell; none was timed quietly in both sweeps"
    trouble = [] if every_quiet else ["every cell was timed on a busy machine"]
    log_factor = statistics.median(log_ratio(p) for p in chosen)
    info = {"control": "median", "reference": how, "median_of": len(chosen)}
    return Reference(log_factor, 0.0, info, trouble)


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


def find_control(usable: Sequence[Pair], spec: str) -> Pair:
    """The named control pair (without n_samples: its largest), or BadInput listing the choices."""
    problem, estimator, n_samples = parse_control(spec)
    chosen = [
        p
        for p in usable
        if p.base["problem"] == problem
        and p.base["estimator"] == estimator
        and (n_samples is None or number(p.base["n_samples"]) == n_samples)
    ]
    if not chosen:
        names = sorted({f"{p.base['problem']}:{p.base['estimator']}:{p.base['n_samples']}" for p in usable})
        listed = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise BadInput(
            f"--control {spec}: no matched cell with that problem, estimator"
            f"{' and n_samples' if n_samples is not None else ''} is ok with a throughput in both "
            f"sweeps; choices: {listed or 'none'}"
        )
    return max(chosen, key=lambda p: number(p.base["n_samples"]))  # first of the largest n_samples


def control_reference(usable: Sequence[Pair], base: Sweep, new: Sweep, options: Options) -> Reference:
    """One named cell's log r as the machine factor; its noise enters every z."""
    spec = str(options.control)
    control = find_control(usable, spec)
    short = [
        f"{label} {why}"
        for label, row in (("baseline", control.base), ("new", control.new))
        if (why := too_short(row, options.min_timed_seconds))
    ]
    if short:
        raise BadInput(
            f"--control {spec}: too short to judge ({'; '.join(short)}); a control needs "
            f"{options.min_timed_seconds:g} s and {MIN_BATCHES} batches timed in both sweeps "
            "(or --control median, the default)"
        )
    variance = noise_variance(control, options.noise_floor)
    trouble = [
        f"control {label}: {why}"
        for label, row, sweep in (("baseline", control.base, base), ("new", control.new, new))
        if (why := timing_trouble(row, sweep.cores))
    ]
    info = {
        "control": control.base["cell"],
        "control_new": control.new["cell"],
        "reference": f"--control {spec}",
        "control_problem": control.base["problem"],
        "control_estimator": control.base["estimator"],
        "control_n_samples": control.base["n_samples"],
    }
    return Reference(log_ratio(control), variance, info, trouble, control)


def record_timing(pair: Pair) -> None:
    """The timing columns of both cells, into the pair's data (for the table and the JSON)."""
    ok = timed(pair)
    for side, row in (("baseline", pair.base), ("new", pair.new)):
        pair.data.update(
            {
                f"estimates_per_s_{side}": number(row.get("estimates_per_s")),
                f"load_avg_{side}": number(row.get("load_avg")),
                f"threads_{side}": number(row.get("threads")),
                f"core_share_{side}": core_share(row) if ok else math.nan,
                f"timed_seconds_{side}": timed_seconds(row) if ok else math.nan,
                f"timed_batches_{side}": number(row.get("timed_batches")),
                f"batch_log_sd_{side}": number(row.get("batch_log_sd")),
            }
        )


def busy_reasons(pair: Pair, reference: Reference, base: Sweep, new: Sweep) -> str | None:
    trouble = list(reference.trouble)
    for label, row, sweep in (("baseline", pair.base, base), ("new", pair.new, new)):
        reason = timing_trouble(row, sweep.cores)
        if reason:
            trouble.append(f"{label}: {reason}")
    return "; ".join(trouble) or None


def judge(pair: Pair, reference: Reference, z_crit: float, options: Options) -> None:
    """The z of a judged pair and its finding: a regression needs both the z beyond −z_crit and
    the normalized ratio below the practical floor; an improvement the mirror image."""
    sd = math.sqrt(noise_variance(pair, options.noise_floor) + reference.variance)
    z = (log_ratio(pair) - reference.log_factor) / sd if sd > 0 else math.nan
    pair.data.update(throughput_judged=True, throughput_z=z, throughput_log_sd=sd)
    normalized, floor = pair.data["throughput_ratio"], 1 - options.throughput_tolerance
    if z < -z_crit and normalized < floor:
        pair.findings["throughput"] = "regression"
    elif z > z_crit and normalized > 1 / floor:
        pair.findings["throughput"] = "improvement"


def shortness(pair: Pair, options: Options) -> str | None:
    """Why a pair is too short to judge ("baseline timed 0.004 s; new 1 batch(es)"), or None."""
    reasons = [
        f"{label} {why}"
        for label, row in (("baseline", pair.base), ("new", pair.new))
        if (why := too_short(row, options.min_timed_seconds))
    ]
    return "; ".join(reasons) or None


def compare_throughput(pairs: Sequence[Pair], base: Sweep, new: Sweep, options: Options) -> dict[str, Any]:
    """The throughput test over the matched pairs (module docstring); its parameters for the report."""
    for pair in pairs:
        record_timing(pair)
    if not options.throughput:
        return {"checked": False, "reason": "--no-throughput"}
    usable = [pair for pair in pairs if timed(pair)]
    if not usable:
        return {"checked": False, "reason": "no matched cell is ok with a throughput in both sweeps"}
    short = {id(pair): shortness(pair, options) for pair in usable}
    judged = [pair for pair in usable if short[id(pair)] is None]
    if options.control in (None, "median"):
        reference = median_reference(usable, judged, base, new)
    else:
        reference = control_reference(usable, base, new, options)
    tested = [pair for pair in judged if pair is not reference.pair]
    tested_ids = {id(pair) for pair in tested}
    z_crit = statistics.NormalDist().inv_cdf(1 - options.alpha / len(tested)) if tested else math.nan
    for pair in usable:
        pair.data.update(
            throughput_raw_ratio=math.exp(log_ratio(pair)),
            throughput_ratio=math.exp(log_ratio(pair) - reference.log_factor),
            throughput_judged=False,
            throughput_note=None if short[id(pair)] is None else f"too short to judge: {short[id(pair)]}",
            busy=busy_reasons(pair, reference, base, new),
        )
        if id(pair) in tested_ids:
            judge(pair, reference, z_crit, options)
    return {
        "checked": True,
        **reference.info,
        "machine_factor": math.exp(reference.log_factor),
        "control_raw_ratio": math.exp(reference.log_factor),
        "control_busy": "; ".join(reference.trouble) or None,
        "judged": len(tested),
        "too_short": len(usable) - len(judged),
        "timed": len(usable),
        "z": z_crit,
        "alpha": options.alpha,
        "noise_floor": options.noise_floor,
        "tolerance": options.throughput_tolerance,
        "min_timed_seconds": options.min_timed_seconds,
        "min_batches": MIN_BATCHES,
    }
