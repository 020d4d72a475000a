"""Streaming moments and the bias test."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats as scipy_stats

from bench.stats import empty_moments, fold, summarize


def test_streaming_moments_equal_two_pass():
    generator = torch.Generator().manual_seed(0)
    data = (
        torch.randn(10_000, 7, generator=generator, dtype=torch.float64) * 3 + 100
    )  # offset tests stability
    moments = empty_moments(7)
    for batch in torch.split(data, [1, 2, 997, 3000, 6000]):
        moments = fold(moments, batch)
    assert moments.count == 10_000
    torch.testing.assert_close(moments.mean, data.mean(0), rtol=1e-13, atol=0)
    torch.testing.assert_close(moments.m2 / (moments.count - 1), data.var(0), rtol=1e-10, atol=0)


def test_summary_columns_by_hand():
    data = torch.tensor([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0], [2.0, 3.0]], dtype=torch.float64)
    exact = torch.tensor([1.0, 3.0], dtype=torch.float64)
    summary = summarize(fold(empty_moments(2), data), exact, torch.float64)
    mean, var = data.mean(0), data.var(0)
    assert summary.variance == pytest.approx(float(var.sum()))
    assert summary.bias_norm == pytest.approx(float((mean - exact).norm()))
    assert summary.mse == pytest.approx(summary.bias_norm**2 + summary.variance)
    assert summary.cosine == pytest.approx(float(mean @ exact / (mean.norm() * exact.norm())))
    assert summary.snr == pytest.approx(float(mean.norm() / var.sum().sqrt()))
    z = (mean - exact) / (var / 4).sqrt()
    assert summary.bias_z_max == pytest.approx(float(z.abs().max()))
    assert summary.bias_pvalue == pytest.approx(min(1.0, 2 * 2 * scipy_stats.norm.sf(float(z.abs().max()))))


def test_zero_variance_is_judged_up_to_rounding():
    exact = torch.tensor([0.1, -2.5, 0.0], dtype=torch.float64)
    # The exact values rounded to float32: a deterministic float32 estimator is not "biased".
    rounded = exact.float().double().expand(1000, 3)
    summary = summarize(fold(empty_moments(3), rounded), exact, torch.float32)
    assert summary.bias_pvalue == 1.0 and summary.variance == 0
    # A real offset with zero variance is rejected.
    shifted = (exact + torch.tensor([0.0, 1e-3, 0.0], dtype=torch.float64)).expand(1000, 3)
    assert summarize(fold(empty_moments(3), shifted), exact, torch.float32).bias_pvalue < 1e-100


@pytest.mark.statistical
def test_bias_pvalue_controls_false_alarms_and_has_power():
    # The p-value is tested at level 0.05 on 2000 seeded null cells (5 dims, 400 estimates each).
    # False-alarm rate of this test: α = 1e-3 for each of its two binomial checks.
    generator = torch.Generator().manual_seed(2)
    n_cells, n, dims, level = 2000, 400, 5, 0.05
    data = torch.randn(n_cells, n, dims, generator=generator, dtype=torch.float64)
    exact = torch.zeros(dims, dtype=torch.float64)
    pvalues = torch.tensor(
        [summarize(fold(empty_moments(dims), d), exact, torch.float64).bias_pvalue for d in data]
    )
    rejections = int((pvalues < level).sum())
    # Bonferroni keeps the family-wise rate ≤ level: reject "rate ≤ 0.05" only beyond the 1e-3 tail.
    assert rejections <= scipy_stats.binom.ppf(1 - 1e-3, n_cells, level), rejections
    # ...and not absurdly conservative for independent dims (rate ≥ 1 − (1 − level/dims)^dims ≈ 0.049).
    assert rejections >= scipy_stats.binom.ppf(1e-3, n_cells, 1 - (1 - level / dims) ** dims), rejections
    # Power: a bias of 5 standard errors in one dimension is found at α = 1e-3 nearly always.
    shifted = data.clone()
    shifted[:, :, 2] += 5 / math.sqrt(n)
    powered = torch.tensor(
        [summarize(fold(empty_moments(dims), d), exact, torch.float64).bias_pvalue for d in shifted[:200]]
    )
    assert float((powered < 1e-3).float().mean()) > 0.6
