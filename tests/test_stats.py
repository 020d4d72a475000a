"""Streaming moments and the bias test."""

from __future__ import annotations

import math

import pandas as pd
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


def test_power_sums_stay_accurate_when_the_first_row_is_a_far_outlier():
    # The first batch is summed about its first row; an outlier there must not cost the central
    # sums their accuracy (reference: two-pass in numpy's long double). Measured: ≤ 1.2e-11.
    np = pytest.importorskip("numpy")
    generator = torch.Generator().manual_seed(5)
    data = torch.exp(2.0 * torch.randn(20_000, 3, generator=generator, dtype=torch.float64))
    data[0] = 50 * 1e6 * data[:, 0].std() + 7.0  # a 5·10⁷σ outlier as the first shift
    data = data + 1e4
    moments = empty_moments(3, centre=data[:64].mean(0))
    for batch in torch.split(data, 1000):
        moments = fold(moments, batch)
    centred = data.numpy().astype(np.longdouble) - data.numpy().astype(np.longdouble).mean(0)
    for power, streamed in ((2, moments.m2), (3, moments.m3), (4, moments.m4)):
        exact = (centred**power).sum(0)
        assert float(np.abs((streamed.numpy() - exact) / exact).max()) < 1e-10, power


def test_a_non_finite_estimate_marks_exactly_its_column():
    # The runner checks finiteness once, on the final mean (no scan of every batch): a NaN or ±inf
    # anywhere, in any batch, must reach its column's mean, and nothing else may, not even float32's
    # largest values (their float64 sums, squares and fourth powers do not overflow).
    generator = torch.Generator().manual_seed(4)
    data = torch.randn(1000, 5, generator=generator)
    data[537, 1] = math.nan
    data[3, 2], data[900, 2] = math.inf, -math.inf  # together: NaN
    data[0, 3] = math.inf  # in the first row, which is the first batch's shift
    data[5, 4] = torch.finfo(torch.float32).max
    moments = empty_moments(5, centre=torch.zeros(5, dtype=torch.float64))
    for batch in torch.split(data, [100, 899, 1]):
        moments = fold(moments, batch)
    assert torch.isfinite(moments.mean).tolist() == [True, False, False, False, True]
    assert bool(torch.isfinite(moments.m4[4]))


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


# --- issue 8: streamed higher moments, intervals, resolution, heavy tails -----------------------
def direct_moments(data: torch.Tensor) -> tuple[torch.Tensor, ...]:
    centered = data - data.mean(0)
    return data.mean(0), (centered**2).sum(0), (centered**3).sum(0), (centered**4).sum(0)


@pytest.mark.parametrize("cuts", [[10_000], [1, 2, 997, 3000, 6000], [5000, 5000], [7, 9993]])
def test_streamed_moments_equal_one_pass_whatever_the_batches(cuts):
    generator = torch.Generator().manual_seed(3)
    data = torch.distributions.Gamma(2.0, 1.0).sample((10_000, 4)).double() * 3 + 50  # skewed, offset
    data = data + torch.randn(10_000, 4, generator=generator, dtype=torch.float64)
    centre = torch.tensor([55.0, 56.0, 57.0, 58.0], dtype=torch.float64)
    moments = empty_moments(4, centre=centre)
    for batch in torch.split(data, cuts):
        moments = fold(moments, batch)
    for streamed, direct in zip(moments[1:5], direct_moments(data), strict=True):
        torch.testing.assert_close(streamed, direct, rtol=1e-9, atol=1e-9)
    s = ((data - centre) ** 2).sum(1)
    torch.testing.assert_close(moments.trace_mean, s.mean(), rtol=1e-12, atol=0)
    torch.testing.assert_close(moments.trace_m2, ((s - s.mean()) ** 2).sum(), rtol=1e-9, atol=0)
    summary = summarize(moments, torch.zeros(4, dtype=torch.float64), torch.float64)
    m2, m4 = direct_moments(data)[1] / 10_000, direct_moments(data)[3] / 10_000
    torch.testing.assert_close(summary.var_stderr, torch.sqrt((m4 - m2**2) / 10_000), rtol=1e-9, atol=0)
    torch.testing.assert_close(summary.kurtosis, m4 / m2**2, rtol=1e-9, atol=0)


def exact_cells(n_cells: int, n: int, seed: int):
    """(summary, exact per-dimension variances) of seeded cells of reinforce and rloo on bernoulli and
    categorical at several n_samples, with the exact variance from enumerating every outcome tuple."""
    from bench.runner import flatten
    from tests.conftest import make
    from tests.test_conformance import exact_moments

    configs = [(p, e, s) for p in ("bernoulli", "categorical")
               for e, s in (("reinforce", 1), ("reinforce", 3), ("rloo", 2), ("rloo", 4))]  # fmt: skip
    for index, (problem_name, estimator_name, n_samples) in enumerate(configs):
        problem, estimator = make("problem", problem_name), make("estimator", estimator_name)
        _mean, var, _mu4 = exact_moments(problem, estimator, n_samples)
        generator = torch.Generator().manual_seed(seed + index)
        count = n_cells // len(configs)
        noise = problem.noise(generator, (count * (n + 64), n_samples), torch.float64)
        estimates = flatten(estimator.estimate(problem, problem.params(), noise), count * (n + 64))
        estimates = estimates.reshape(count, n + 64, -1)
        for cell in estimates:
            moments = fold(empty_moments(cell.shape[-1], centre=cell[:64].mean(0)), cell[64:])
            yield summarize(moments, problem.exact()["theta"], torch.float64), var


@pytest.mark.statistical
def test_variance_intervals_cover_the_exact_variance_at_their_nominal_rate():
    # 320 seeded cells (8 configurations × 40, 2 000 estimates each) whose exact variance is known by
    # enumeration. Two-sided binomial test of "coverage = 95%" for the trace's interval and, over all
    # 320·P dimensions, for var ± 1.96·var_stderr: each at false-alarm rate 1e-3 (5e-4 per tail).
    covered = total = dim_covered = dim_total = 0
    for summary, var in exact_cells(320, 2000, seed=20):
        exact_trace = float(var.sum())
        covered += summary.variance_ci_low <= exact_trace <= summary.variance_ci_high
        total += 1
        inside = (summary.var - var).abs() <= 1.959963984540054 * summary.var_stderr
        dim_covered += int(inside.sum())
        dim_total += inside.numel()
    for hits, n in ((covered, total), (dim_covered, dim_total)):
        low, high = scipy_stats.binom.ppf(5e-4, n, 0.95), scipy_stats.binom.ppf(1 - 5e-4, n, 0.95)
        assert low <= hits <= high, (hits, n, hits / n)
    assert total == 320


@pytest.mark.statistical
def test_the_coverage_check_rejects_an_interval_that_is_too_narrow():
    # Test the test: the same binomial check fails for intervals half as wide (nominal ~68%).
    covered = total = 0
    for summary, var in exact_cells(320, 2000, seed=20):
        half = (math.log(summary.variance_ci_high) - math.log(summary.variance)) / 2
        low, high = summary.variance * math.exp(-half), summary.variance * math.exp(half)
        covered += low <= float(var.sum()) <= high
        total += 1
    assert covered < scipy_stats.binom.ppf(5e-4, total, 0.95)


class PlantedBias:
    """Wraps an estimator and adds a fixed vector to every estimate (a planted bias of known size)."""

    def __init__(self, estimator, shift: torch.Tensor) -> None:
        self.inner, self.shift = estimator, shift

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def estimate(self, problem, params, noise):
        grads = self.inner.estimate(problem, params, noise)
        return {"theta": grads["theta"] + self.shift.to(grads["theta"].dtype)}


@pytest.mark.statistical
def test_bias_resolution_is_the_bias_the_test_detects_with_80_percent_power():
    # 100 seeded cells per planted bias, at α = 1e-3. The resolution is (z_{1−α/2P} + z_{0.8})‖se‖;
    # its worst direction is along se. A bias 1.5× the resolution must be found in ≥ 70% of cells (in
    # the worst and a random direction); one 0.3× it in ≤ 20% (worst direction). The binomial
    # false-alarm rates of these checks are below 1e-6 at the true detection rates (≈100% and ≈1%).
    from bench.runner import run_cell
    from tests.conftest import make

    problem, estimator = make("problem", "bernoulli"), make("estimator", "reinforce")
    pilot = run_cell(problem, estimator, n_samples=2, n_estimates=4000, seed=999, dtype="float64")
    resolution = pilot.row["bias_resolution"]
    se = torch.tensor([d["stderr"] for d in pilot.dims], dtype=torch.float64)
    worst = se / se.norm()
    random = torch.randn(3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    random = random / random.norm()

    def detection_rate(shift: torch.Tensor) -> float:
        found = 0
        for seed in range(100):
            row = run_cell(problem, PlantedBias(estimator, shift), n_samples=2, n_estimates=4000, seed=seed,
                           dtype="float64").row  # fmt: skip
            found += row["bias_pvalue"] < 1e-3
        return found / 100

    assert detection_rate(1.5 * resolution * worst) >= 0.7
    assert detection_rate(1.5 * resolution * random) >= 0.7
    assert detection_rate(0.3 * resolution * worst) <= 0.2


@pytest.mark.statistical
def test_heavy_tails_are_flagged_and_toy_cells_are_not():
    # The false alarm README documented: reinforce on a VAE trained for 1000 steps (codes with
    # probabilities ~1e-7) at the default 20 000 estimates. Seeded; the flag is deterministic given the
    # estimates (n < 25·skewness²).
    from bench.runner import run_cell
    from tests.conftest import make

    heavy = run_cell(make("problem", "vae_bernoulli", train_steps=1000), make("estimator", "reinforce"),
                     n_samples=4, n_estimates=20_000, seed=0).row  # fmt: skip
    assert heavy["clt_ok"] is False and heavy["kurtosis_max"] > 1000
    for problem_name in ("bernoulli", "categorical", "gaussian", "cartpole"):
        for estimator_name in ("reinforce", "rloo"):
            row = run_cell(make("problem", problem_name), make("estimator", estimator_name), n_samples=4,
                           n_estimates=20_000, seed=0).row  # fmt: skip
            assert row["clt_ok"] is True, (problem_name, estimator_name, row["skewness_max"])


def test_holm_rejects_step_down():
    from bench.output import holm_rejections

    pvalues = pd.Series([0.01, 0.0001, 0.04, 0.0004, 0.5], index=list("abcde"))
    # sorted: 0.0001 ≤ α/5, 0.0004 ≤ α/4, 0.01 > α/3 (α = 0.01): stop.
    assert list(holm_rejections(pvalues, 0.01)[lambda r: r].index) == ["b", "d"]
    assert not holm_rejections(pvalues, 1e-5).any()


def test_reference_ratios_and_their_intervals(tmp_out):
    from bench.output import merge, run_metadata, write_cell
    from bench.runner import run_cell
    from tests.conftest import make

    problem = make("problem", "categorical")
    configs = {"problem": problem.config()}
    cells = []
    for name in ("reinforce", "rloo", "gumbel_softmax"):
        estimator = make("estimator", name)
        result = run_cell(problem, estimator, n_samples=3, n_estimates=5000, seed=1)
        write_cell(
            tmp_out, result.row, result.dims, {**configs, "estimator": estimator.config()}, run_metadata(None)
        )
        cells.append(result.row["cell"])
    table, _ = merge(tmp_out, run_metadata(None), cells, reference="reinforce")
    rows = table.set_index("estimator")
    reference = rows.loc["reinforce"]
    assert reference["variance_ratio"] == 1.0 and reference["reference"] == reference["cell"]
    rloo = rows.loc["rloo"]
    assert rloo["variance_ratio"] == pytest.approx(rloo["variance"] / reference["variance"])
    assert rloo["variance_ratio_ci_low"] < rloo["variance_ratio"] < rloo["variance_ratio_ci_high"]
    spread = rloo["variance_stderr"] / rloo["variance"] + reference["variance_stderr"] / reference["variance"]
    assert math.log(rloo["variance_ratio_ci_high"] / rloo["variance_ratio"]) == pytest.approx(
        1.96 * spread, rel=1e-3
    )
    assert rloo["work_ratio"] == pytest.approx(rloo["variance_ratio"])  # same cost_evals
    assert rows.loc["gumbel_softmax", "work_variance"] == pytest.approx(
        rows.loc["gumbel_softmax", "variance"] * 3
    )
    none, _ = merge(tmp_out, run_metadata(None), cells[1:], reference="reinforce")
    assert none["variance_ratio"].isna().all() and none["reference"].isna().all()


# --- issue 6: the dtype never makes an honest estimator look biased ------------------------------
EXTREME_POINTS = [
    ([80.0, -80.0], [0.0, 1.0]),
    ([30.0, -20.0, 0.0], [0.0, 1.0, 0.3]),
    ([17.0, -16.0], [0.2, 0.9]),
]


@pytest.mark.statistical
@pytest.mark.parametrize("theta,target", EXTREME_POINTS)
@pytest.mark.parametrize("estimator_name", ["reinforce", "rloo", "arm", "disarm", "exact", "indecater"])
def test_declared_unbiased_estimators_pass_in_float32_at_saturated_logits(theta, target, estimator_name):
    # α = 1e-3 family-wise over dimensions. At these points float32 (and even float64) sampling
    # cannot produce the rarer outcomes, so every estimate misses their share of the gradient; the
    # rounding floor (bench.stats.rounding_floor) must absorb exactly that.
    from bench.problems.bernoulli import Bernoulli
    from bench.runner import run_cell
    from tests.conftest import make

    row = run_cell(Bernoulli(theta=theta, target=target), make("estimator", estimator_name), n_samples=2,
                   n_estimates=20_000, seed=0, dtype="float32").row  # fmt: skip
    assert row["bias_pvalue"] > 1e-3, row


@pytest.mark.statistical
def test_a_biased_estimator_is_still_caught_in_float32_near_saturation():
    # The same α = 1e-3 check rejects a half-gradient estimator where the gradient is small (θ = ±6)
    # but representable, and Gumbel-softmax at the saturated point.
    from bench.problems.bernoulli import Bernoulli
    from bench.runner import run_cell
    from tests.conftest import make
    from tests.test_conformance import HalfBaseline

    near = Bernoulli(theta=[6.0, -6.0], target=[0.0, 1.0])
    row = run_cell(near, HalfBaseline(), n_samples=2, n_estimates=200_000, seed=0, dtype="float32").row
    assert row["bias_pvalue"] < 1e-3, row
    relaxed = make("estimator", "gumbel_softmax", temperature=1.0)
    row = run_cell(Bernoulli(theta=[4.0, -3.0], target=[0.0, 1.0]), relaxed, n_samples=2, n_estimates=20_000,
                   seed=0, dtype="float32").row  # fmt: skip
    assert row["bias_pvalue"] < 1e-3, row
