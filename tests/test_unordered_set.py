"""unordered_set (Kool et al. 2020): the set probabilities against sums over orderings, the estimate
against its formula by hand, exact unbiasedness and exact variance by enumerating every ordered
draw without replacement, and the harness's empirical variance against the exact one.

False-alarm rate of the statistical tests: α = 1e-3 family-wise (Bonferroni over dimensions);
seeded; a failing seed may be bumped once, twice means a bug.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from bench.estimators.unordered_set import UnorderedSet, log_set_probabilities
from bench.problems.categorical import Categorical
from bench.runner import run_cell
from tests.conftest import make
from tests.test_categorical_estimators import (
    ALPHA,
    critical_value,
    drawn_first,
    fixed_noise,
    gumbel,
    noise_with_order,
    ordered_draws,
    variance_z,
    weighted_moments,
)

SMALL = dict(theta=[0.3, -1.0, 1.5, 0.0, -0.2], costs=[1.0, -2.0, 0.5, 3.0, 0.2])  # K = 5


def small_problem(cost: str = "quadratic") -> Categorical:
    return Categorical(**SMALL, cost=cost, target=0.4)


def enumerate_estimates(problem, estimator, n_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The estimate for every ordered draw of n_samples categories, and the draws' probabilities."""
    draws = ordered_draws(torch.softmax(problem.theta, 0), n_samples)
    noise = torch.stack([noise_with_order(problem.theta, order, n_samples) for order, _ in draws])
    grads = estimator.estimate(problem, problem.params(), noise)["theta"]  # (M, K)
    weights = torch.tensor([probability for _, probability in draws], dtype=torch.float64)
    return grads, weights


def test_set_probabilities_match_sums_over_orderings():
    # The quadrature (the only approximation in the estimator) against exact sums over orderings,
    # from near-uniform to near-certain sets, sizes 1..5: |error in log p| < 1e-12.
    generator = torch.Generator().manual_seed(0)
    for trial in range(60):
        scale = (0.3, 2.0, 6.0, 15.0)[trial % 4]
        log_p = torch.log_softmax(torch.randn(8, generator=generator, dtype=torch.float64) * scale, 0)
        k = 1 + trial % 5
        order = torch.argsort(log_p, descending=True) if trial % 2 else torch.randperm(8, generator=generator)
        chosen, others = order[:k], order[k:]
        log_set, without_one, without_two = log_set_probabilities(
            log_p[chosen], torch.logsumexp(log_p[others], 0)
        )
        p, rest = log_p.exp(), float(log_p[others].exp().sum())
        masses = [float(p[c]) for c in chosen]
        assert float(log_set) == pytest.approx(math.log(drawn_first(masses, rest)), abs=1e-12)
        for s in range(k):
            keep = masses[:s] + masses[s + 1 :]
            assert float(without_one[s]) == pytest.approx(math.log(drawn_first(keep, rest)), abs=1e-12)
            for t in range(k):
                pair = [m for i, m in enumerate(masses) if i not in (s, t)] if s != t else keep
                assert float(without_two[s, t]) == pytest.approx(math.log(drawn_first(pair, rest)), abs=1e-12)


def test_whole_domain_has_probability_one():
    log_p = torch.log_softmax(torch.tensor([0.2, -1.0, 3.0], dtype=torch.float64), 0)
    log_set, without_one, without_two = log_set_probabilities(
        log_p, torch.tensor(-math.inf, dtype=torch.float64)
    )
    for value in (log_set, without_one, without_two):
        torch.testing.assert_close(value, torch.zeros_like(value), rtol=0, atol=1e-14)


def by_hand(problem: Categorical, noise: torch.Tensor) -> torch.Tensor:
    """Kool et al. (2020), eq. (14)-(16), with p(S) and its leave-outs summed over orderings."""
    theta = problem.theta
    p = torch.softmax(theta, 0)
    f = problem.cost(problem.params(), torch.eye(len(theta), dtype=torch.float64))  # (K,)
    estimates = []
    for u in noise:  # one estimate
        k = u.shape[0]
        chosen = torch.argsort(theta + gumbel(u[0]), descending=True)[:k].tolist()  # Gumbel-top-k
        rest = float(sum(p[c] for c in range(len(theta)) if c not in chosen))
        mass = {c: float(p[c]) for c in chosen}

        def prob(items, mass=mass, rest=rest):
            return drawn_first([mass[c] for c in items], rest)

        full = prob(chosen)
        estimate = torch.zeros_like(theta)
        for s in chosen:
            others = [c for c in chosen if c != s]
            ratio = prob(others) / full  # R(S, s)
            baseline = mass[s] * float(f[s]) + sum(
                mass[t] * prob([c for c in others if c != t]) / prob(others) * float(f[t]) for t in others
            )
            score = torch.nn.functional.one_hot(torch.tensor(s), len(theta)).double() - p  # ∇log p(s)
            estimate += mass[s] * ratio * (float(f[s]) - baseline) * score
        estimates.append(estimate)
    return torch.stack(estimates)


@pytest.mark.parametrize("n_samples", [2, 3, 4])
def test_by_hand_on_fixed_noise(n_samples):
    problem = small_problem()
    noise = fixed_noise(problem, 6, n_samples, seed=n_samples)
    grads = make("estimator", "unordered_set").estimate(problem, problem.params(), noise)["theta"]
    torch.testing.assert_close(grads, by_hand(problem, noise), rtol=1e-12, atol=1e-13)


def test_uses_only_the_first_row_of_noise():
    problem = small_problem()
    noise = fixed_noise(problem, 20, 3)
    other = noise.clone()
    other[:, 1:] = torch.rand(
        other[:, 1:].shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64
    )
    estimator = make("estimator", "unordered_set")
    first = estimator.estimate(problem, problem.params(), noise)["theta"]
    torch.testing.assert_close(
        estimator.estimate(problem, problem.params(), other)["theta"], first, rtol=0, atol=0
    )


@pytest.mark.parametrize("cost", ["linear", "quadratic"])
@pytest.mark.parametrize("n_samples", [2, 3])
def test_exactly_unbiased_by_enumerating_every_draw(cost, n_samples):
    problem = small_problem(cost)
    grads, weights = enumerate_estimates(problem, make("estimator", "unordered_set"), n_samples)
    mean, _var, _mu4 = weighted_moments(grads, weights)
    torch.testing.assert_close(mean, problem.exact()["theta"], rtol=1e-12, atol=1e-13)


class OwnSampleBaseline(UnorderedSet):
    """Test only (unregistered): the same estimator with b(S, s) = the unordered set estimate of
    E[f] from the whole S, s included (the same for every s) — the baseline then depends on its
    own sample and biases the estimate."""

    name = ""

    def surrogate(self, problem, params, noise):
        log_p = torch.log_softmax(params["theta"], -1)
        chosen = torch.topk(
            problem.preimage({"theta": params["theta"].detach()}, noise[0]), noise.shape[0]
        ).indices
        in_set = torch.zeros_like(log_p, dtype=torch.bool).scatter(0, chosen, True)
        constant = log_p.detach()
        log_set, without_one, _ = log_set_probabilities(
            constant[chosen], torch.logsumexp(torch.where(in_set, -math.inf, constant), 0)
        )
        cost = problem.cost(params, torch.eye(log_p.shape[0], dtype=log_p.dtype)[chosen])
        weight = torch.exp(constant[chosen] + without_one - log_set)
        baseline = (weight * cost).sum()
        return (weight * (cost - baseline).detach() * log_p[chosen]).sum()


def test_enumeration_detects_a_biased_baseline():
    # Test the test: the same enumeration must show the bias of a baseline that includes s.
    problem = small_problem()
    grads, weights = enumerate_estimates(problem, OwnSampleBaseline(), 3)
    mean, _var, _mu4 = weighted_moments(grads, weights)
    assert (mean - problem.exact()["theta"]).abs().max() > 1e-3


def test_whole_domain_gives_the_exact_gradient():
    problem = make("problem", "categorical")  # K = 4 = n_samples: S is every category
    noise = fixed_noise(problem, 10, 4)
    grads = make("estimator", "unordered_set").estimate(problem, problem.params(), noise)["theta"]
    torch.testing.assert_close(grads, problem.exact()["theta"].expand(10, 4), rtol=1e-12, atol=1e-14)


def test_finite_with_extreme_logits_in_float32():
    problem = Categorical(
        theta=[30.0, 0.0, -30.0, 5.0, -60.0], costs=[1.0, 2.0, -1.0, 0.5, 3.0], cost="quadratic"
    )
    params = {"theta": problem.theta.float()}
    for n_samples in (2, 3, 5):
        noise = problem.noise(torch.Generator().manual_seed(1), (2000, n_samples), torch.float32)
        grads = make("estimator", "unordered_set").estimate(problem, params, noise)["theta"]
        assert torch.isfinite(grads).all()


@pytest.mark.statistical
@pytest.mark.parametrize("n_samples", [2, 3])
def test_harness_variance_matches_enumeration(n_samples):
    # α = 1e-3 family-wise (Bonferroni over the K dimensions) for the z-test of the harness's
    # sample variance against the exact σ², standard error sqrt((μ4 − σ⁴)/n) from enumeration.
    problem = small_problem()
    estimator = make("estimator", "unordered_set")
    _mean, var, mu4 = weighted_moments(*enumerate_estimates(problem, estimator, n_samples))
    n = 50_000
    result = run_cell(problem, estimator, n_samples=n_samples, n_estimates=n, seed=3, dtype="float64")
    empirical = torch.tensor([d["var"] for d in result.dims], dtype=torch.float64)
    z = variance_z(empirical, var, mu4, n)
    assert z.abs().max() < critical_value(ALPHA, len(var)), (empirical, var, z)


@pytest.mark.statistical
def test_variance_check_rejects_a_wrong_variance():
    # Test the test: the same α = 1e-3 check against sum_and_sample's exact variance (a different
    # estimator on the same problem; exact totals 0.81 vs 1.30 at n_samples 3) must reject.
    problem = small_problem()
    p = torch.softmax(problem.theta, 0)
    summed = torch.topk(problem.theta, 2).indices.tolist()
    rest = [c for c in range(5) if c not in summed]
    noise = torch.stack([noise_with_order(problem.theta, [x], 3) for x in rest])
    grads = make("estimator", "sum_and_sample").estimate(problem, problem.params(), noise)["theta"]
    _mean, var, mu4 = weighted_moments(grads, p[rest] / p[rest].sum())
    n = 50_000
    result = run_cell(
        problem, make("estimator", "unordered_set"), n_samples=3, n_estimates=n, seed=3, dtype="float64"
    )
    empirical = torch.tensor([d["var"] for d in result.dims], dtype=torch.float64)
    assert variance_z(empirical, var, mu4, n).abs().max() > critical_value(ALPHA, len(var))


def test_enumeration_counts_each_unordered_set_once_per_ordering():
    # Sanity of the enumeration itself: K!/(K−k)! ordered draws; the estimate depends on the set only.
    problem = small_problem()
    grads, _weights = enumerate_estimates(problem, make("estimator", "unordered_set"), 3)
    draws = list(itertools.permutations(range(5), 3))
    assert grads.shape[0] == len(draws) == 60
    by_set: dict[frozenset, torch.Tensor] = {}
    for order, grad in zip(draws, grads, strict=True):
        key = frozenset(order)
        if key in by_set:
            torch.testing.assert_close(grad, by_set[key], rtol=1e-13, atol=1e-15)
        by_set[key] = grad
