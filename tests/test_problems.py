"""Exact gradients of the toy problems against independent references, and their samplers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from bench.errors import ConfigError
from bench.problems.bernoulli import Bernoulli
from bench.problems.categorical import Categorical
from bench.problems.gaussian import COSTS, Gaussian


def enumerated_gradient(problem, outcomes: torch.Tensor) -> torch.Tensor:
    """∇θ Σ_x p(x; θ) f(x) by autograd over every outcome, float64."""
    theta = problem.params()["theta"].requires_grad_(True)
    params = {"theta": theta}
    expected = (problem.log_prob(params, outcomes).exp() * problem.cost(params, outcomes)).sum()
    (grad,) = torch.autograd.grad(expected, [theta])
    return grad


@pytest.mark.parametrize(
    "theta,target",
    [([0.0, 0.5, -1.0], [0.45, 0.5, 0.6]), ([2.0, -3.0, 0.1, 0.7, -0.2], [0.0, 1.0, 0.3, 2.0, -1.0])],
)
def test_bernoulli_closed_form_matches_enumeration(theta, target):
    problem = Bernoulli(theta=theta, target=target)
    outcomes = problem.enumerate_outcomes()
    assert outcomes.shape == (2 ** len(theta), len(theta))
    torch.testing.assert_close(
        problem.exact()["theta"], enumerated_gradient(problem, outcomes), rtol=1e-12, atol=1e-14
    )
    p = torch.sigmoid(torch.tensor(theta, dtype=torch.float64))
    by_hand = p * (1 - p) * (1 - 2 * torch.tensor(target, dtype=torch.float64))
    torch.testing.assert_close(problem.exact()["theta"], by_hand, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cost", ["linear", "quadratic"])
def test_categorical_exact_matches_enumeration_and_formula(cost):
    problem = Categorical(theta=[0.3, -1.0, 0.8], costs=[2.0, -1.0, 0.5], cost=cost, target=0.4)
    grad = problem.exact()["theta"]
    torch.testing.assert_close(
        grad, enumerated_gradient(problem, problem.enumerate_outcomes()), rtol=1e-12, atol=0
    )
    # ∂/∂θ_k Σ_j π_j f_j = π_k (f_k − Σ_j π_j f_j)
    probs = torch.softmax(torch.tensor([0.3, -1.0, 0.8], dtype=torch.float64), 0)
    values = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    f = values if cost == "linear" else (values - 0.4) ** 2
    torch.testing.assert_close(grad, probs * (f - (probs * f).sum()), rtol=1e-12, atol=1e-15)


def gaussian_gradient_by_quadrature(cost: str, mu: float, sigma: float, k: float) -> tuple[float, float]:
    """∇ of ∫ c(x) N(x; μ, σ²) dx by numerical integration of the score-weighted integrands:
    ∂/∂μ = E[c(x)(x − μ)/σ²], ∂/∂σ = E[c(x)((x − μ)² − σ²)/σ³]."""
    from bench.problems.gaussian import cost_value

    def c(x: float) -> float:
        return float(
            cost_value(cost, torch.tensor(x, dtype=torch.float64), torch.tensor(k, dtype=torch.float64))
        )

    def density(x: float) -> float:
        return math.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))

    def quad(f) -> float:
        return integrate.quad(f, mu - 14 * sigma, mu + 14 * sigma, limit=400, epsabs=1e-13, epsrel=1e-12)[0]

    d_mu = quad(lambda x: c(x) * (x - mu) / sigma**2 * density(x))
    d_sigma = quad(lambda x: c(x) * ((x - mu) ** 2 - sigma**2) / sigma**3 * density(x))
    return d_mu, d_sigma


@pytest.mark.parametrize("cost", COSTS)
def test_gaussian_closed_form_matches_numerical_integration(cost):
    mu, sigma, k = [0.7, -1.2], [0.8, 1.5], [1.3, 0.4]
    problem = Gaussian(mu=mu, sigma=sigma, cost=cost, k=k)
    exact = problem.exact()
    for i in range(2):
        d_mu, d_sigma = gaussian_gradient_by_quadrature(cost, mu[i], sigma[i], k[i])
        assert float(exact["mu"][i]) == pytest.approx(d_mu, rel=1e-8, abs=1e-10)
        assert float(exact["sigma"][i]) == pytest.approx(d_sigma, rel=1e-8, abs=1e-10)


def test_relaxed_cost_equals_cost_at_hard_samples():
    generator = torch.Generator().manual_seed(0)
    for problem in (Bernoulli(), Categorical(cost="quadratic")):
        params = problem.params()
        noise = problem.noise(generator, (100,), torch.float64)
        hard = problem.sample(params, noise)
        torch.testing.assert_close(problem.relaxed_cost(params, hard), problem.cost(params, hard))
        # At a tiny temperature the relaxed sample is the hard one: the noise is shared.
        torch.testing.assert_close(problem.relaxed_sample(params, noise, 1e-4), hard, atol=1e-6, rtol=0)


@pytest.mark.statistical
def test_samplers_match_their_distributions():
    # False-alarm rate: α = 1e-3 family-wise over all checked frequencies (Bonferroni); seeded.
    generator = torch.Generator().manual_seed(1)
    n = 200_000
    checks = []
    bernoulli = Bernoulli(theta=[0.0, 1.5, -2.0], target=[0, 0, 0])
    freq = bernoulli.sample(bernoulli.params(), bernoulli.noise(generator, (n,), torch.float64)).mean(0)
    checks += list(zip(freq.tolist(), torch.sigmoid(bernoulli.theta).tolist(), strict=True))
    categorical = Categorical(theta=[0.0, 1.0, -1.0, 0.5], costs=[0, 0, 0, 0])
    freq = categorical.sample(categorical.params(), categorical.noise(generator, (n,), torch.float64)).mean(0)
    checks += list(zip(freq.tolist(), torch.softmax(categorical.theta, 0).tolist(), strict=True))
    z_crit = -np.sqrt(2) * __import__("scipy").special.erfcinv(2 * (1 - 1e-3 / len(checks) / 2))
    z_crit = abs(z_crit)
    for observed, expected in checks:
        z = (observed - expected) / math.sqrt(expected * (1 - expected) / n)
        assert abs(z) < z_crit, (observed, expected, z)


def test_log_prob_normalizes():
    bernoulli = Bernoulli(theta=[0.3, -0.7], target=[0.0, 1.0])
    assert float(
        bernoulli.log_prob(bernoulli.params(), bernoulli.enumerate_outcomes()).exp().sum()
    ) == pytest.approx(1)
    categorical = Categorical()
    total = categorical.log_prob(categorical.params(), categorical.enumerate_outcomes()).exp().sum()
    assert float(total) == pytest.approx(1)


@pytest.mark.parametrize(
    "build,key",
    [
        (lambda: Gaussian(sigma=[1.0, -0.5]), "problem.sigma"),
        (lambda: Gaussian(sigma=[1.0, 0.0]), "problem.sigma"),
        (lambda: Gaussian(mu=[0.0, 1.0, 2.0]), "problem.sigma"),
        (lambda: Gaussian(cost="cubic"), "problem.cost"),
        (lambda: Gaussian(k=[1.0, 2.0, 3.0]), "problem.k"),
        (lambda: Gaussian(cost="exp_quadratic", k=-2.0), "problem.k"),
        (lambda: Bernoulli(theta=[0.0, 1.0], target=[0.5]), "problem.target"),
        (lambda: Bernoulli(theta=[]), "problem.theta"),
        (lambda: Bernoulli(theta=["a"]), "problem.theta"),
        (lambda: Categorical(theta=[0.0, 1.0], costs=[1.0, 2.0, 3.0]), "problem.costs"),
        (lambda: Categorical(theta=[0.0], costs=[1.0]), "problem.theta"),
        (lambda: Categorical(cost="cubic"), "problem.cost"),
    ],
)
def test_bad_values_name_the_key(build, key):
    with pytest.raises(ConfigError) as error:
        build()
    assert str(error.value).startswith(f"{key}:")
