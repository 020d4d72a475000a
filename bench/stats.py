"""Streaming moments of per-estimate gradients and the cell's summary statistics.

Batches of estimates g (B, P) are folded into running per-dimension central moments (count, mean,
M2, M3, M4) with the pairwise update of Chan, Golub & LeVeque (1979) extended to third and fourth
moments by Pébay (2008, "Formulas for robust, one-pass parallel computation of covariances and
arbitrary-order statistical moments", Sandia SAND2008-6212), in float64; a batch's own moments
come from its power sums about the running mean (one pass per sum, in a reused work space).
Beside them runs one scalar stream, s = ‖g − c‖² around a fixed centre c (the runner's pilot mean,
from its warm-up batch on a separate noise stream; else the first batch's mean), whose mean and M2
give the uncertainty of the variance's trace without a P×P covariance. Every statistic is
independent of how the estimates are cut into batches (to rounding), and memory is O(P) whatever
their number.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

# Rounding: no dimension's z-score uses a standard error below RESOLUTION_ULPS units of rounding of
# the estimate's dtype at the scale of its values (see ``rounding_floor``). Stochastic estimators
# sit far above this floor at any practical n_estimates.
RESOLUTION_ULPS = 64
CI_LEVEL = 0.95
POWER = 0.8
# The normal approximation behind the z-tests and intervals is trusted when n ≥ CLT_FACTOR·γ²
# for every dimension's skewness γ (see ``clt_ok``).
CLT_FACTOR = 25.0


class Moments(NamedTuple):
    """Running moments: per dimension (P,) float64, and the scalar stream of s = ‖g − c‖²."""

    count: int
    mean: Tensor  # (P,)
    m2: Tensor  # (P,): Σ (g − mean)²
    m3: Tensor  # (P,): Σ (g − mean)³
    m4: Tensor  # (P,): Σ (g − mean)⁴
    trace_mean: Tensor  # (): mean of s
    trace_m2: Tensor  # (): Σ (s − mean s)²
    centre: Tensor | None  # (P,): c in s = ‖g − c‖²; None until set


def empty_moments(n_params: int, device: torch.device | str = "cpu", centre: Tensor | None = None) -> Moments:
    """No estimates yet. ``centre``: the fixed c of the trace's stream (a pilot mean of estimates
    independent of the measured ones); None takes the first folded batch's mean."""
    zeros = torch.zeros(n_params, dtype=torch.float64, device=device)
    scalar = torch.zeros((), dtype=torch.float64, device=device)
    if centre is not None:
        centre = centre.to(device=device, dtype=torch.float64)
    return Moments(0, zeros, zeros.clone(), zeros.clone(), zeros.clone(), scalar, scalar.clone(), centre)


def column_sums(array: Tensor) -> Tensor:
    """Σ over the batch axis of a (B, P) array → (P,), as a matrix-vector product with ones: BLAS
    streams the row-major array at memory speed, ~2× faster than ``sum(0)`` on CPU (measured), at
    the price of plain rather than pairwise accumulation (relative error ~√B·eps: ~1e-14 in float64,
    negligible for M2..M4; the mean's sum S1 keeps ``sum(0)``, since the bias test reads it at
    the scale of its standard error)."""
    return torch.ones(array.shape[0], dtype=array.dtype, device=array.device) @ array


def fold_scratch(batch_size: int, n_params: int, device: torch.device | str = "cpu") -> Tensor:
    """Work space for ``fold`` (2, B, P) float64, to be reused for every batch of a cell: fresh
    arrays of this size cost a page fault per 4 KiB on first touch, which on the CPU took about half
    of the fold's time at a VAE's size (B ≈ 1 000, P ≈ 2 300: 27 → 12 ms per batch, measured)."""
    return torch.empty((2, batch_size, n_params), dtype=torch.float64, device=device)


def shifted_sums(
    batch: Tensor, shift: Tensor, centre: Tensor, scratch: Tensor | None = None
) -> tuple[Tensor, ...]:
    """Power sums S_k = Σ_b (g_b − shift)^k, k = 1..4, each (P,), and the trace's stream
    s_b = ‖g_b − centre‖² (B,), of a batch (B, P) of any float dtype; all float64.

    Written for memory traffic, which dominates at large P (a VAE's 2 300 parameters): a float64
    copy of the batch is shifted, then cubed in place, and its squares are raised to the fourth power
    in place, both in ``scratch`` (``fold_scratch``; allocated here if None); each sum is one
    streaming pass.
    """
    n_batch = batch.shape[0]
    if scratch is None:
        scratch = fold_scratch(n_batch, batch.shape[1], batch.device)
    diff = scratch[0, :n_batch].copy_(batch).sub_(shift)  # (B, P): g − shift
    offset = shift - centre  # (P,)
    s1 = diff.sum(0)
    cross = diff @ offset  # (B,)
    squared = torch.mul(diff, diff, out=scratch[1, :n_batch])  # (B, P)
    s2 = column_sums(squared)
    # ‖g − c‖² = ‖(g − shift) + (shift − c)‖², expanded, from the arrays at hand
    trace = squared.sum(1) + 2.0 * cross + offset.dot(offset)  # (B,)
    s3 = column_sums(diff.mul_(squared))
    s4 = column_sums(squared.square_())
    return s1, s2, s3, s4, trace


def central_from_shifted(n: int, shift: Tensor, sums: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """(mean, M2, M3, M4) of n values from their power sums about ``shift``, with δ = S1/n the mean's
    offset from the shift: M2 = S2 − nδ², M3 = S3 − 3δS2 + 2nδ³, M4 = S4 − 4δS3 + 6δ²S2 − 3nδ⁴
    (binomial expansion of Σ(d − δ)^k). Cancellation costs digits only in proportion to (δ/σ)^k,
    and the shift is the running mean (or a batch's first value), so δ stays of the order of σ."""
    s1, s2, s3, s4 = sums
    delta = s1 / n
    m2 = s2 - s1 * delta
    m3 = s3 - 3.0 * delta * s2 + 2.0 * n * delta**3
    m4 = s4 - 4.0 * delta * s3 + 6.0 * delta**2 * s2 - 3.0 * n * delta**4
    return shift + delta, m2, m3, m4


def combine(
    n_a: int, a: tuple[Tensor, ...], n_b: int, b: tuple[Tensor, ...]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pébay's pairwise combination of (mean, M2, M3, M4) of two disjoint sets of sizes n_a, n_b."""
    mean_a, m2_a, m3_a, m4_a = a
    mean_b, m2_b, m3_b, m4_b = b
    n = n_a + n_b
    delta = mean_b - mean_a
    delta_n = delta / n
    mean = mean_a + delta_n * n_b
    m2 = m2_a + m2_b + delta * delta_n * n_a * n_b
    m3 = (
        m3_a + m3_b + delta * delta_n**2 * n_a * n_b * (n_a - n_b) + 3.0 * delta_n * (n_a * m2_b - n_b * m2_a)
    )
    m4 = (
        m4_a
        + m4_b
        + delta * delta_n**3 * n_a * n_b * (n_a * n_a - n_a * n_b + n_b * n_b)
        + 6.0 * delta_n**2 * (n_a * n_a * m2_b + n_b * n_b * m2_a)
        + 4.0 * delta_n * (n_a * m3_b - n_b * m3_a)
    )
    return mean, m2, m3, m4


def fold(moments: Moments, batch: Tensor, scratch: Tensor | None = None) -> Moments:
    """Merge a batch of estimates (B, P) into the running moments. ``scratch``: work space from
    ``fold_scratch`` for at least B estimates, reused across batches (its contents are not kept).

    The batch is summed about a shift: the running mean, or for the first batch its first row. A
    constant column then gives exact zeros (a deterministic estimator has M2 = 0, not rounding
    noise), and the shift is within a few standard deviations of the batch's mean, so the power
    sums convert to central sums accurately. A non-finite estimate makes its column's mean
    non-finite, which the caller checks once at the end instead of scanning every batch.
    """
    n_batch = batch.shape[0]
    shift = moments.mean if moments.count else batch[0].to(torch.float64)
    # The trace's stream s = ‖g − c‖². A centre c off the mean μ by d adds 4dᵀΣd to Var(s) (and a
    # cross term of mean zero): with c a pilot mean of m independent estimates, E[4dᵀΣd] = 4tr(Σ²)/m,
    # at most 2/m of Var(‖g − μ‖²) ≥ 2tr(Σ²) for Gaussian-like estimates; it widens the interval.
    centre = moments.centre
    if centre is None:
        centre = batch.to(torch.float64).mean(0)
    *sums, s = shifted_sums(batch, shift, centre, scratch)
    own = central_from_shifted(n_batch, shift, tuple(sums))
    if moments.count == 0:
        mean, m2, m3, m4 = own
    else:
        previous = (moments.mean, moments.m2, moments.m3, moments.m4)
        mean, m2, m3, m4 = combine(moments.count, previous, n_batch, own)
    s_mean = s.mean()
    s_m2 = ((s - s_mean) ** 2).sum()
    count = moments.count + n_batch
    delta = s_mean - moments.trace_mean
    trace_mean = moments.trace_mean + delta * (n_batch / count)
    trace_m2 = moments.trace_m2 + s_m2 + delta**2 * (moments.count * n_batch / count)
    return Moments(count, mean, m2, m3, m4, trace_mean, trace_m2, centre)


class Summary(NamedTuple):
    """Per-dimension arrays (P,) and per-cell scalars, all float64."""

    mean: Tensor
    var: Tensor
    stderr: Tensor
    z: Tensor
    var_stderr: Tensor
    skewness: Tensor
    kurtosis: Tensor
    variance: float
    variance_stderr: float
    variance_ci_low: float
    variance_ci_high: float
    bias_norm: float
    mse: float
    exact_norm: float
    cosine: float
    bias_z_max: float
    bias_pvalue: float
    bias_resolution: float
    snr: float
    skewness_max: float
    kurtosis_max: float
    clt_ok: bool


def normal_quantile(p: float) -> float:
    return float(torch.special.ndtri(torch.tensor(p, dtype=torch.float64)))


def rounding_floor(
    mean: Tensor, var: Tensor, exact: Tensor, exact_in_dtype: Tensor | None, dtype: torch.dtype
) -> Tensor:
    """The smallest standard error a z-score may use, per dimension (P,).

    RESOLUTION_ULPS × (eps(dtype) × the scale of the values, max(‖exact‖∞, rms of the estimates),
    + |∇E[f] computed in ``dtype`` − ∇E[f] in float64|). The first term is the rounding of the
    estimates themselves; the second is the part of the gradient the dtype cannot represent at all
    (θ = 80: σ(θ) rounds to 1 in float32, so every float32 estimate is exactly 0 while the exact
    gradient is 1e-35). Neither depends on n_estimates, so neither can hide a bias that the
    estimates resolve.
    """
    eps = torch.finfo(dtype).eps
    rms = torch.sqrt(mean**2 + var)
    scale = torch.clamp(rms, min=float(exact.abs().max()) if exact.numel() else 0.0)
    floor = eps * scale
    if exact_in_dtype is not None:
        floor = floor + (exact_in_dtype.to(torch.float64) - exact).abs()
    return RESOLUTION_ULPS * floor


def clt_ok(count: int, skewness: Tensor) -> bool:
    """Whether n is large enough for the normal approximation of every dimension's mean:
    n ≥ CLT_FACTOR · γ_i² for every i (Cochran 1977, §2.15: n > 25 γ₁² for the mean of a skewed
    population; the Edgeworth term of the mean's distribution is γ/(6√n)). Dimensions with zero
    variance are exact and pass."""
    gamma = torch.nan_to_num(skewness, nan=0.0)
    return bool((count >= CLT_FACTOR * gamma**2).all())


def summarize(
    moments: Moments,
    exact: Tensor,
    estimate_dtype: torch.dtype,
    alpha: float = 1e-3,
    exact_in_dtype: Tensor | None = None,
    exact_stderr: Tensor | None = None,
) -> Summary:
    """Compare the running moments with the exact gradient (P,).

    Per dimension: var = M2/(n − 1) (one estimate's variance); stderr = sqrt(var/n);
    z_i = (mean_i − exact_i) / sqrt(stderr_i² + ref_i² + floor_i²) (``rounding_floor``), where
    ref_i = ``exact_stderr`` is the standard error of an *estimated* reference gradient (None, i.e.
    0, for an exact one): the reference's own noise is independent of the cell's, so the difference
    mean − exact has variance stderr² + ref², and the test keeps its level;
    var_stderr = sqrt((m4 − m2²)/n) with the central moments m_k = M_k/n (the delta method for s²);
    skewness m3/m2^1.5 and kurtosis m4/m2² (not excess; 3 for a normal).

    bias_pvalue: Bonferroni-adjusted p-value of the P two-sided z-tests of mean_i = exact_i,
    min(1, P · min_i 2Φ(−|z_i|)): the family-wise false-alarm rate is at most the level whatever the
    correlation between dimensions, under the central limit theorem for the mean of n i.i.d.
    estimates (``clt_ok`` says whether n is large enough for it).

    bias_resolution = (z_{1−α/(2P)} + z_{0.8}) · ‖se‖₂ with se_i the z-test's denominator: every
    bias vector at least this long has some coordinate i with |bias_i| ≥ (z_{1−α/(2P)} + z_{0.8}) se_i
    (otherwise its norm would be shorter), and that coordinate alone is detected at level α with
    probability ≥ 80%. So "no bias above bias_resolution" holds with 80% power in every direction.

    The variance's trace V = Σ_i var_i has standard error sqrt(Var(s)/n), s = ‖g − c‖² with c the
    moments' centre (the delta method: V̂ is the mean of ‖g − μ‖² up to O(1/n)); the 95% interval is
    V̂·exp(±1.96·se/V̂), the normal interval on log V (positive, and closer to nominal coverage for
    the right-skewed s). It assumes the CLT for the mean of s, i.e. finite fourth moments of g.
    """
    if moments.count < 2:
        raise ValueError("need at least 2 estimates for a variance")
    exact = exact.to(torch.float64)
    n = moments.count
    n_params = exact.numel()
    var = moments.m2 / (n - 1)
    stderr = torch.sqrt(var / n)
    central2, central3, central4 = moments.m2 / n, moments.m3 / n, moments.m4 / n
    var_stderr = torch.sqrt(torch.clamp(central4 - central2**2, min=0.0) / n)
    skewness = torch.where(central2 > 0, central3 / central2**1.5, torch.zeros_like(central2))
    kurtosis = torch.where(central2 > 0, central4 / central2**2, torch.full_like(central2, math.nan))
    bias = moments.mean - exact
    floor = rounding_floor(moments.mean, var, exact, exact_in_dtype, estimate_dtype)
    if exact_stderr is None:
        denominator = torch.sqrt(stderr**2 + floor**2)
    else:
        reference = exact_stderr.to(device=stderr.device, dtype=torch.float64)
        denominator = torch.sqrt(stderr**2 + reference**2 + floor**2)
    z = torch.where(bias == 0, torch.zeros_like(bias), bias / denominator)
    z_max = float(z.abs().max())
    # P(|N(0,1)| > z) = erfc(z / sqrt 2)
    p_min = float(torch.special.erfc(z.abs().max() / math.sqrt(2.0)))
    bias_pvalue = min(1.0, n_params * p_min)
    detect = normal_quantile(1.0 - alpha / (2 * n_params)) + normal_quantile(POWER)
    bias_resolution = detect * float(denominator.norm())

    variance = float(var.sum())
    trace_var = float(moments.trace_m2) / (n - 1)  # Var(s)
    variance_stderr = math.sqrt(max(trace_var, 0.0) / n)
    half_width = normal_quantile(0.5 + CI_LEVEL / 2)
    if variance > 0:
        spread = math.exp(half_width * variance_stderr / variance)
        ci_low, ci_high = variance / spread, variance * spread
    else:
        ci_low = ci_high = variance
    bias_norm = float(bias.norm())
    exact_norm = float(exact.norm())
    mean_norm = float(moments.mean.norm())
    cosine = (
        float(moments.mean @ exact) / (mean_norm * exact_norm) if mean_norm * exact_norm > 0 else math.nan
    )
    if variance > 0:
        snr = mean_norm / math.sqrt(variance)
    else:
        snr = math.inf if mean_norm > 0 else math.nan
    finite_kurtosis = kurtosis[torch.isfinite(kurtosis)]
    return Summary(
        mean=moments.mean,
        var=var,
        stderr=stderr,
        z=z,
        var_stderr=var_stderr,
        skewness=skewness,
        kurtosis=kurtosis,
        variance=variance,
        variance_stderr=variance_stderr,
        variance_ci_low=ci_low,
        variance_ci_high=ci_high,
        bias_norm=bias_norm,
        mse=bias_norm**2 + variance,
        exact_norm=exact_norm,
        cosine=cosine,
        bias_z_max=z_max,
        bias_pvalue=bias_pvalue,
        bias_resolution=bias_resolution,
        snr=snr,
        skewness_max=float(skewness.abs().max()),
        kurtosis_max=float(finite_kurtosis.max()) if finite_kurtosis.numel() else math.nan,
        clt_ok=clt_ok(n, skewness),
    )
