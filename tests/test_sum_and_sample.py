"""sum_and_sample (Liu et al. 2019): the estimate against its formula by hand, exact unbiasedness
and exact variance by enumerating the sampled category, the harness's empirical variance against
the exact one, and exact variance comparisons with reinforce and rloo.

False-alarm rate of the statistical tests: α = 1e-3 family-wise (Bonferroni over dimensions);
seeded; a failing seed may be bumped once, twice means a bug.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from bench.problems.categorical import Categorical
from bench.runner import run_cell
from tests.conftest import make
from tests.test_categorical_estimators import (
    ALPHA,
    critical_value,
    fixed_noise,
    gumbel,
    noise_with_order,
    variance_z,
    weighted_moments,
)

SMALL = dict(theta=[0.3, -1.0, 1.5, 0.0, -0.2], costs=[1.0, -2.0, 0.5, 3.0, 0.2])  # K = 5


def small_problem(cost: str = "quadratic", **overrides) -> Categorical:
    return Categorical(**{**SMALL, **overrides}, cost=cost, target=0.4)


def enumerate_sum_and_sample(problem, n_samples: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The estimate for every category x outside C (the n_samples − 1 most probable), with its
    probability p(x)/(1 − p(C)); and 1 − p(C)."""
    p = torch.softmax(problem.theta, 0)
    summed = torch.topk(problem.theta, n_samples - 1).indices.tolist()
    rest = [c for c in range(problem.num_categories) if c not in summed]
    noise = torch.stack([noise_with_order(problem.theta, [x], n_samples) for x in rest])
    grads = make("estimator", "sum_and_sample").estimate(problem, problem.params(), noise)["theta"]
    return grads, p[rest] / p[rest].sum(), float(p[rest].sum())


def enumerate_iid(problem, estimator_name: str, n_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A score-function estimator's estimate for every n_samples-tuple of i.i.d. outcomes."""
    p = torch.softmax(problem.theta, 0)
    tuples = list(itertools.product(range(problem.num_categories), repeat=n_samples))
    noise = torch.stack(
        [torch.stack([noise_with_order(problem.theta, [c], 1)[0] for c in t]) for t in tuples]
    )
    grads = make("estimator", estimator_name).estimate(problem, problem.params(), noise)["theta"]
    weights = torch.tensor([math.prod(float(p[c]) for c in t) for t in tuples], dtype=torch.float64)
    return grads, weights


def exact_variance(problem, name: str, n_samples: int) -> torch.Tensor:
    """Per-dimension variance of one estimate, by enumeration."""
    if name == "sum_and_sample":
        grads, weights, _ = enumerate_sum_and_sample(problem, n_samples)
    else:
        grads, weights = enumerate_iid(problem, name, n_samples)
    return weighted_moments(grads, weights)[1]


def by_hand(problem: Categorical, noise: torch.Tensor) -> torch.Tensor:
    theta = problem.theta
    p = torch.softmax(theta, 0)
    f = problem.cost(problem.params(), torch.eye(len(theta), dtype=torch.float64))  # (K,)
    eye = torch.eye(len(theta), dtype=torch.float64)
    estimates = []
    for u in noise:
        k = u.shape[0] - 1
        summed = torch.argsort(theta, descending=True)[:k].tolist()
        rest = [c for c in range(len(theta)) if c not in summed]
        z = theta + gumbel(u[0])
        x = max(rest, key=lambda c: float(z[c]))  # Gumbel-max over the rest
        estimate = sum((f[c] * p[c] * (eye[c] - p) for c in summed), torch.zeros_like(theta))  # Σ ∇p(c) f(c)
        estimate = estimate + float(p[rest].sum()) * f[x] * (eye[x] - p)  # (1 − p(C)) f(x) ∇log p(x)
        estimates.append(estimate)
    return torch.stack(estimates)


@pytest.mark.parametrize("n_samples", [1, 2, 3, 5])
def test_by_hand_on_fixed_noise(n_samples):
    problem = small_problem()
    noise = fixed_noise(problem, 8, n_samples, seed=n_samples)
    grads = make("estimator", "sum_and_sample").estimate(problem, problem.params(), noise)["theta"]
    torch.testing.assert_close(grads, by_hand(problem, noise), rtol=1e-12, atol=1e-14)


def test_one_sample_is_reinforce_and_all_categories_are_exact():
    problem = small_problem()
    noise = fixed_noise(problem, 50, 1)
    sum_and_sample = make("estimator", "sum_and_sample")
    torch.testing.assert_close(
        sum_and_sample.estimate(problem, problem.params(), noise)["theta"],
        make("estimator", "reinforce").estimate(problem, problem.params(), noise)["theta"],
        rtol=1e-12,
        atol=1e-14,
    )
    whole = sum_and_sample.estimate(problem, problem.params(), fixed_noise(problem, 5, 5))["theta"]
    torch.testing.assert_close(whole, problem.exact()["theta"].expand(5, 5), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cost", ["linear", "quadratic"])
@pytest.mark.parametrize("n_samples", [2, 3])
def test_exactly_unbiased_by_enumeration(cost, n_samples):
    problem = small_problem(cost)
    grads, weights, _ = enumerate_sum_and_sample(problem, n_samples)
    mean, _var, _mu4 = weighted_moments(grads, weights)
    torch.testing.assert_close(mean, problem.exact()["theta"], rtol=1e-12, atol=1e-14)


def test_enumeration_detects_a_missing_weight():
    # Test the test: without the factor 1 − p(C) on the sampled term the enumeration shows a bias.
    problem = small_problem()
    grads, weights, rest_mass = enumerate_sum_and_sample(problem, 3)
    p = torch.softmax(problem.theta, 0)
    summed = torch.topk(problem.theta, 2).indices.tolist()
    eye = torch.eye(5, dtype=torch.float64)
    f = problem.cost(problem.params(), eye)
    exact_part = sum(f[c] * p[c] * (eye[c] - p) for c in summed)
    unweighted = exact_part + (grads - exact_part) / rest_mass
    mean, _var, _mu4 = weighted_moments(unweighted, weights)
    assert (mean - problem.exact()["theta"]).abs().max() > 1e-2


@pytest.mark.statistical
@pytest.mark.parametrize("n_samples", [2, 3])
def test_harness_variance_matches_enumeration(n_samples):
    # α = 1e-3 family-wise (Bonferroni over the K dimensions) for the z-test of the harness's
    # sample variance against the exact σ², standard error sqrt((μ4 − σ⁴)/n) from enumeration.
    problem = small_problem()
    grads, weights, _ = enumerate_sum_and_sample(problem, n_samples)
    _mean, var, mu4 = weighted_moments(grads, weights)
    n = 200_000
    result = run_cell(
        problem,
        make("estimator", "sum_and_sample"),
        n_samples=n_samples,
        n_estimates=n,
        seed=4,
        dtype="float64",
    )
    empirical = torch.tensor([d["var"] for d in result.dims], dtype=torch.float64)
    assert variance_z(empirical, var, mu4, n).abs().max() < critical_value(ALPHA, len(var)), (empirical, var)


@pytest.mark.statistical
def test_variance_check_rejects_a_wrong_variance():
    # Test the test: reinforce's empirical variance (same n_samples, same noise) against
    # sum_and_sample's exact variance must fail the same α = 1e-3 check.
    problem = small_problem()
    grads, weights, _ = enumerate_sum_and_sample(problem, 3)
    _mean, var, mu4 = weighted_moments(grads, weights)
    n = 200_000
    result = run_cell(
        problem, make("estimator", "reinforce"), n_samples=3, n_estimates=n, seed=4, dtype="float64"
    )
    empirical = torch.tensor([d["var"] for d in result.dims], dtype=torch.float64)
    assert variance_z(empirical, var, mu4, n).abs().max() > critical_value(ALPHA, len(var))


@pytest.mark.parametrize("cost", ["linear", "quadratic"])
@pytest.mark.parametrize("n_samples", [2, 3, 4])
def test_rao_blackwell_bound(cost, n_samples):
    # The guarantee: Var ĝ_SS ≤ (1 − p(C)) Var ĝ_REINFORCE(1 sample), in every dimension
    # (Var_p g ≥ (1 − p(C)) E_{p(·|x∉C)}[(g − μ)²] ≥ (1 − p(C)) Var_{p(·|x∉C)} g).
    problem = small_problem(cost)
    _grads, _weights, rest_mass = enumerate_sum_and_sample(problem, n_samples)
    single = exact_variance(problem, "reinforce", 1)
    assert (exact_variance(problem, "sum_and_sample", n_samples) <= rest_mass * single + 1e-15).all()


@pytest.mark.parametrize("n_samples", [2, 3])
def test_below_reinforce_at_the_same_n_samples_here(n_samples):
    # On this problem sum_and_sample's exact total variance is below reinforce's with the same
    # n_samples (quadratic cost: 2.69 vs 3.68 at 2 samples, 1.30 vs 2.45 at 3). Not a theorem:
    # see test_not_always_below_reinforce.
    problem = small_problem()
    ours = exact_variance(problem, "sum_and_sample", n_samples).sum()
    reinforce = exact_variance(problem, "reinforce", 1).sum() / n_samples  # mean of i.i.d. terms
    torch.testing.assert_close(
        reinforce, exact_variance(problem, "reinforce", n_samples).sum(), rtol=1e-12, atol=0
    )
    assert ours < reinforce


def test_not_always_below_reinforce():
    # Near-uniform probabilities: 1 − p(C) ≈ (K − k)/K is not small, and the averaged i.i.d.
    # samples win. K = 6 uniform logits, n_samples = 3: sum_and_sample's variance exceeds reinforce's.
    problem = Categorical(theta=[0.0] * 6, costs=[-0.2, 0.1, -1.3, -1.0, 0.1, -0.1], cost="linear")
    ours = exact_variance(problem, "sum_and_sample", 3).sum()
    reinforce = exact_variance(problem, "reinforce", 1).sum() / 3
    assert ours > reinforce


def test_against_rloo_either_way():
    # rloo is not a Rao-Blackwellization of the same estimator: it can win or lose.
    # Here (K = 5): sum_and_sample 2.69 vs rloo 4.87 at 2 samples; on near-uniform logits with
    # K = 6 at 3 samples rloo wins (numbers in /work/notes/zoo2_estimators.md).
    problem = small_problem()
    assert exact_variance(problem, "sum_and_sample", 2).sum() < exact_variance(problem, "rloo", 2).sum()
    uniform = Categorical(theta=[0.0] * 6, costs=[-0.2, 0.1, -1.3, -1.0, 0.1, -0.1], cost="linear")
    assert exact_variance(uniform, "sum_and_sample", 3).sum() > exact_variance(uniform, "rloo", 3).sum()
