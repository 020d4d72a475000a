"""Each estimator against its formula written out by hand on fixed noise (catches sign errors),
and the registry's contract: every estimator has a YAML, a docstring and declared flags."""

from __future__ import annotations

import pytest
import torch

from bench import estimators, problems
from bench.problems.bernoulli import Bernoulli
from bench.problems.categorical import Categorical
from bench.problems.gaussian import Gaussian
from bench.registry import group_options, yaml_options
from tests.conftest import make


def fixed_noise(problem, n_estimates: int, n_samples: int, seed: int = 0) -> torch.Tensor:
    return problem.noise(torch.Generator().manual_seed(seed), (n_estimates, n_samples), torch.float64)


def builtin(registry: dict) -> list[str]:
    return sorted(name for name, cls in registry.items() if cls.__module__.startswith("bench."))


def test_registry_matches_conf():
    # Every built-in has its YAML and every YAML its class (plugins may come without YAML).
    assert builtin(estimators.REGISTRY) == sorted(yaml_options("estimator"))
    assert builtin(problems.REGISTRY) == sorted(yaml_options("problem"))
    assert set(group_options("estimator")) == set(estimators.REGISTRY) | yaml_options("estimator")


@pytest.mark.parametrize("name", builtin(estimators.REGISTRY))
def test_estimator_declares_itself(name):
    # README's convention for built-in estimators: the docstring gives the formula as "ĝ = ..."
    cls = estimators.REGISTRY[name]
    assert isinstance(cls.unbiased, bool)
    assert cls.min_samples >= 1
    assert cls.__doc__ and "ĝ" in cls.__doc__, "docstring must give the estimator's formula"
    for flag in cls.requires:
        assert hasattr(problems.base.Problem, flag), f"{name} requires unknown flag {flag}"
    evals = make("estimator", name).cost_evals(4)
    assert isinstance(evals, int) and evals >= 0


def bernoulli_score(theta: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """∇θ log p(b; θ) = b − σ(θ)."""
    return b - torch.sigmoid(theta)


def test_reinforce_by_hand_on_bernoulli():
    problem = Bernoulli(theta=[0.2, -0.4], target=[0.3, 0.9])
    noise = fixed_noise(problem, 5, 3)
    grads = make("estimator", "reinforce").estimate(problem, problem.params(), noise)["theta"]  # (5, 2)
    theta = problem.theta
    b = (noise > 1 - torch.sigmoid(theta)).double()  # (5, 3, 2)
    f = ((b - problem.target) ** 2).sum(-1, keepdim=True)  # (5, 3, 1)
    by_hand = (f * bernoulli_score(theta, b)).mean(1)
    torch.testing.assert_close(grads, by_hand, rtol=1e-12, atol=1e-14)


def test_rloo_by_hand_on_categorical():
    problem = Categorical(theta=[0.1, 0.9, -0.3], costs=[1.0, -2.0, 0.5])
    noise = fixed_noise(problem, 4, 3)
    grads = make("estimator", "rloo").estimate(problem, problem.params(), noise)["theta"]
    gumbel = -torch.log(-torch.log(noise))
    z = (problem.theta + gumbel).argmax(-1)  # (4, 3)
    y = torch.nn.functional.one_hot(z, 3).double()
    f = problem.costs[z]  # (4, 3)
    baseline = (f.sum(1, keepdim=True) - f) / 2
    score = y - torch.softmax(problem.theta, 0)  # ∇θ log softmax(θ)_z
    by_hand = ((f - baseline).unsqueeze(-1) * score).mean(1)
    torch.testing.assert_close(grads, by_hand, rtol=1e-12, atol=1e-14)


def test_pathwise_by_hand_on_gaussian():
    problem = Gaussian(mu=[0.4, -1.0], sigma=[0.7, 2.0], cost="quadratic", k=[0.5, 1.0])
    eps = fixed_noise(problem, 6, 2)
    grads = make("estimator", "pathwise").estimate(problem, problem.params(), eps)
    x = problem.mu + problem.sigma * eps
    torch.testing.assert_close(grads["mu"], (2 * (x - problem.k)).mean(1), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grads["sigma"], (2 * (x - problem.k) * eps).mean(1), rtol=1e-12, atol=1e-14)


def test_reinforce_by_hand_on_gaussian():
    problem = Gaussian(mu=[0.4], sigma=[0.7], cost="cos", k=2.0)
    eps = fixed_noise(problem, 6, 2)
    grads = make("estimator", "reinforce").estimate(problem, problem.params(), eps)
    x = problem.mu + problem.sigma * eps
    f = torch.cos(2.0 * x)
    torch.testing.assert_close(grads["mu"], (f * eps / problem.sigma).mean(1), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(
        grads["sigma"], (f * (eps**2 - 1) / problem.sigma).mean(1), rtol=1e-12, atol=1e-14
    )


def concrete_jacobian_by_hand(theta, noise, tau):
    """y = σ((θ + L)/τ): ∂y/∂θ = y(1 − y)/τ."""
    logistic = torch.log(noise) - torch.log1p(-noise)
    y = torch.sigmoid((theta + logistic) / tau)
    return y, y * (1 - y) / tau


def test_gumbel_softmax_by_hand_on_bernoulli():
    problem = Bernoulli(theta=[0.2, -0.4], target=[0.3, 0.9])
    noise = fixed_noise(problem, 5, 3)
    grads = make("estimator", "gumbel_softmax", temperature=0.7).estimate(problem, problem.params(), noise)
    y, dy = concrete_jacobian_by_hand(problem.theta, noise, 0.7)
    torch.testing.assert_close(
        grads["theta"], (2 * (y - problem.target) * dy).mean(1), rtol=1e-12, atol=1e-14
    )


def test_straight_through_by_hand_on_bernoulli():
    problem = Bernoulli(theta=[0.2, -0.4], target=[0.3, 0.9])
    noise = fixed_noise(problem, 5, 3)
    grads = make("estimator", "st_gumbel_softmax", temperature=0.7).estimate(problem, problem.params(), noise)
    _y, dy = concrete_jacobian_by_hand(problem.theta, noise, 0.7)
    b = (noise > 1 - torch.sigmoid(problem.theta)).double()
    # ∂f/∂y evaluated at the hard sample, times the relaxed Jacobian
    torch.testing.assert_close(
        grads["theta"], (2 * (b - problem.target) * dy).mean(1), rtol=1e-12, atol=1e-14
    )


def test_straight_through_and_relaxed_coincide_only_for_linear_cost():
    for cost, coincide in (("linear", True), ("quadratic", False)):
        problem = Categorical(cost=cost)
        noise = fixed_noise(problem, 50, 2)
        relaxed = make("estimator", "gumbel_softmax").estimate(problem, problem.params(), noise)["theta"]
        straight = make("estimator", "st_gumbel_softmax").estimate(problem, problem.params(), noise)["theta"]
        assert torch.allclose(relaxed, straight, rtol=1e-10, atol=1e-12) == coincide, cost


def test_exact_estimator_repeats_the_exact_gradient():
    problem = Gaussian()
    grads = make("estimator", "exact").estimate(problem, problem.params(), fixed_noise(problem, 3, 2))
    for name, value in problem.exact().items():
        torch.testing.assert_close(grads[name], value.expand(3, *value.shape))


def test_applicability_comes_from_flags():
    assert make("estimator", "pathwise").why_not(Bernoulli(), 4) is not None
    assert make("estimator", "pathwise").why_not(Gaussian(), 4) is None
    assert make("estimator", "gumbel_softmax").why_not(Gaussian(), 4) is not None
    assert "n_samples >= 2" in make("estimator", "rloo").why_not(Bernoulli(), 1)


@pytest.mark.parametrize("name", ["gumbel_softmax", "st_gumbel_softmax"])
@pytest.mark.parametrize("bad", [0, -1.0, "hot", float("inf")])
def test_bad_temperature_names_the_key(name, bad):
    from bench.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^estimator\.temperature:"):
        make("estimator", name, temperature=bad)
