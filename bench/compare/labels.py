"""The label checks (status, conformance) and the variance test.

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
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from bench.compare.common import Options, Pair, both_ok, number, text


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


def compare_labels(pairs: Sequence[Pair], has_conformance: bool) -> None:
    for pair in pairs:
        compare_label(pair, "status", "failed")
        if has_conformance:
            compare_label(pair, "conformance", "fail")
        else:
            pair.data.update(conformance_baseline=None, conformance_new=None)
