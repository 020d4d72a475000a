"""Streaming moments of per-estimate gradients and the cell's summary statistics.

Batches of estimates are folded into a running (count, mean, M2) per dimension with Chan et al.'s
pairwise update (1979), in float64, so memory does not grow with the number of estimates.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

# A deterministic estimator is judged up to floating-point rounding: the standard error used in a
# z-score is never below RESOLUTION_ULPS units of rounding of the estimate's dtype at the scale of
# the gradient. Stochastic estimators have stderr far above this floor.
RESOLUTION_ULPS = 64


class Moments(NamedTuple):
    count: int
    mean: Tensor  # (P,) float64
    m2: Tensor  # (P,) float64: sum of squared deviations from the mean


def empty_moments(n_params: int, device: torch.device | str = "cpu") -> Moments:
    zeros = torch.zeros(n_params, dtype=torch.float64, device=device)
    return Moments(0, zeros, zeros.clone())


def fold(moments: Moments, batch: Tensor) -> Moments:
    """Merge a batch of estimates (B, P) into the running moments (Chan, Golub & LeVeque 1979)."""
    batch = batch.to(torch.float64)
    n_batch = batch.shape[0]
    # Shifted by the first row: exact for constant columns (a deterministic estimator has M2 = 0,
    # not rounding noise) and accurate when the spread is small next to the mean.
    shift = batch[0]  # (P,)
    shifted = batch - shift  # (B, P)
    shifted_mean = shifted.mean(0)  # (P,)
    batch_mean = shift + shifted_mean
    batch_m2 = ((shifted - shifted_mean) ** 2).sum(0)  # (P,)
    count = moments.count + n_batch
    delta = batch_mean - moments.mean
    mean = moments.mean + delta * (n_batch / count)
    m2 = moments.m2 + batch_m2 + delta**2 * (moments.count * n_batch / count)
    return Moments(count, mean, m2)


class Summary(NamedTuple):
    """Per-dimension arrays (P,) and per-cell scalars, all float64."""

    mean: Tensor
    var: Tensor
    stderr: Tensor
    z: Tensor
    variance: float
    bias_norm: float
    mse: float
    exact_norm: float
    cosine: float
    bias_z_max: float
    bias_pvalue: float
    snr: float


def summarize(moments: Moments, exact: Tensor, estimate_dtype: torch.dtype) -> Summary:
    """Compare the running moments with the exact gradient (P,).

    var: unbiased sample variance of one estimate per dimension; stderr = sqrt(var / n).
    z_i = (mean_i − exact_i) / sqrt(stderr_i² + floor²), floor = RESOLUTION_ULPS·eps(dtype)·‖exact‖∞.
    bias_pvalue: Bonferroni-adjusted p-value of the P two-sided z-tests of mean_i = exact_i:
    min(1, P · min_i 2Φ(−|z_i|)). It controls the family-wise false-alarm rate whatever the
    correlation between dimensions (conservatively when they are correlated) and assumes only the
    central limit theorem for a mean of n i.i.d. estimates with finite variance.
    """
    if moments.count < 2:
        raise ValueError("need at least 2 estimates for a variance")
    exact = exact.to(torch.float64)
    n = moments.count
    var = moments.m2 / (n - 1)
    stderr = torch.sqrt(var / n)
    bias = moments.mean - exact
    scale = float(exact.abs().max()) if exact.numel() else 0.0
    floor = RESOLUTION_ULPS * torch.finfo(estimate_dtype).eps * scale
    denominator = torch.sqrt(stderr**2 + floor**2)
    z = torch.where(bias == 0, torch.zeros_like(bias), bias / denominator)
    z_max = float(z.abs().max())
    # P(|N(0,1)| > z) = erfc(z / sqrt 2)
    p_min = float(torch.special.erfc(z.abs().max() / math.sqrt(2.0)))
    bias_pvalue = min(1.0, exact.numel() * p_min)
    variance = float(var.sum())
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
    return Summary(
        mean=moments.mean,
        var=var,
        stderr=stderr,
        z=z,
        variance=variance,
        bias_norm=bias_norm,
        mse=bias_norm**2 + variance,
        exact_norm=exact_norm,
        cosine=cosine,
        bias_z_max=z_max,
        bias_pvalue=bias_pvalue,
        snr=snr,
    )
