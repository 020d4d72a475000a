"""The conformance suite: every registered estimator that declares itself unbiased is tested for
bias against the exact gradient on every problem it applies to (problems at their YAML defaults).
A newly registered estimator or problem joins without editing this file.

False-alarm rate: each bias test rejects at α = 1e-3 family-wise over the gradient's dimensions
(the harness's own ``bias_pvalue``: Bonferroni over per-dimension z-tests). Seeds are fixed; per
torch.distributions' rule, a failing seed may be bumped once, and a second failure is a bug.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import estimators
import problems
from bench.runner import run_cell
from bench.sweep import default_config, group_options
from estimators.base import Estimator, detached, score_function_surrogate
from problems.bernoulli import Bernoulli
from problems.categorical import Categorical
from tests.conftest import make, make_for_tests

ALPHA = 1e-3
N_ESTIMATES = 20_000
N_SAMPLES = 3


def budget(estimator: Estimator, problem) -> int:
    """N_ESTIMATES, fewer for estimators that spend many cost evaluations per estimate (indecater and
    mvd on the VAEs evaluate the whole minibatch once per latent coordinate): the same total number
    of evaluations as 8 per sample, at least 2 000 estimates. The false-alarm rate does not change;
    only the power does."""
    evals = estimator.cost_evals(N_SAMPLES, problem)
    return max(2_000, min(N_ESTIMATES, N_ESTIMATES * 8 * N_SAMPLES // max(evals, 1)))


def unbiased_cases() -> list[tuple[str, str]]:
    cases = []
    for problem_name in group_options("problem"):
        problem = make("problem", problem_name)
        for estimator_name in sorted(estimators.REGISTRY):
            estimator = make_for_tests("estimator", estimator_name)
            if estimator.unbiased and estimator.why_not(problem, N_SAMPLES) is None:
                cases.append((problem_name, estimator_name))
    return cases


@pytest.mark.statistical
@pytest.mark.parametrize("problem_name,estimator_name", unbiased_cases())
def test_declared_unbiased_estimator_is_unbiased(problem_name, estimator_name):
    # α = 1e-3 family-wise over dimensions (see module docstring).
    problem = make("problem", problem_name)
    estimator = make_for_tests("estimator", estimator_name)
    result = run_cell(
        problem, estimator, n_samples=N_SAMPLES, n_estimates=budget(estimator, problem), seed=11
    )
    assert result.row["status"] == "ok"
    assert result.row["bias_pvalue"] > ALPHA, result.row


class HalfBaseline(Estimator):
    """A deliberately biased score-function estimator (test only, unregistered: no ``name``):
    ĝ = mean_s [(f_s − f_s/2) ∇log p_s], a baseline that depends on its own sample, so
    E[ĝ] = ∇E[f] / 2."""

    unbiased = True  # the lie the conformance check must catch

    def surrogate(self, problem, params, noise):
        x = problem.sample(detached(params), noise)
        cost = problem.cost(params, x)
        return score_function_surrogate(cost, problem.log_prob(params, x), cost / 2)


@pytest.mark.statistical
@pytest.mark.parametrize(
    "problem,estimator",
    [
        (Categorical(), make("estimator", "gumbel_softmax", temperature=1.0)),
        (Categorical(cost="quadratic"), make("estimator", "st_gumbel_softmax", temperature=1.0)),
        (make("problem", "bernoulli"), make("estimator", "st_gumbel_softmax", temperature=0.5)),
        (make("problem", "bernoulli"), HalfBaseline()),
        (make("problem", "gaussian"), HalfBaseline()),
        (make("problem", "categorical"), HalfBaseline()),
    ],
    ids=["gumbel_softmax-categorical", "st-categorical-quadratic", "st-bernoulli", "half-baseline-bernoulli",
         "half-baseline-gaussian", "half-baseline-categorical"],
)  # fmt: skip
def test_the_same_check_rejects_biased_estimators(problem, estimator):
    # Test the test: the identical check (α = 1e-3, same n_estimates) must reject these.
    result = run_cell(problem, estimator, n_samples=N_SAMPLES, n_estimates=N_ESTIMATES, seed=11)
    assert result.row["bias_pvalue"] < ALPHA, result.row


# --- variance against enumeration ---------------------------------------------------------------
def noise_for_outcomes(problem, outcomes: torch.Tensor) -> torch.Tensor:
    """Noise that makes ``problem.sample`` return each given outcome (float64)."""
    if isinstance(problem, Bernoulli):
        p = torch.sigmoid(problem.theta)
        return torch.where(outcomes > 0.5, 1 - p / 2, (1 - p) / 2)
    # Categorical: the chosen category's Gumbel is ≈ 27.6, the others ≈ 0.37.
    return torch.where(outcomes > 0.5, torch.full_like(outcomes, 1 - 1e-12), torch.full_like(outcomes, 0.5))


def exact_moments(problem, estimator, n_samples: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, variance and fourth central moment per dimension of one estimate, by enumerating
    every n_samples-tuple of outcomes (valid for estimators that see only the outcomes)."""
    outcomes = problem.enumerate_outcomes()  # (M, event)
    params = problem.params()
    log_probs = problem.log_prob(params, outcomes)  # (M,)
    tuples = torch.tensor(list(itertools.product(range(len(outcomes)), repeat=n_samples)))  # (M^S, S)
    weights = log_probs[tuples].sum(1).exp()  # (M^S,)
    noise = noise_for_outcomes(problem, outcomes[tuples])  # (M^S, S, event)
    assert torch.equal(problem.sample(params, noise), outcomes[tuples])
    grads = estimator.estimate(problem, params, noise)["theta"]  # (M^S, D)
    mean = (weights[:, None] * grads).sum(0)
    centered = grads - mean
    var = (weights[:, None] * centered**2).sum(0)
    mu4 = (weights[:, None] * centered**4).sum(0)
    return mean, var, mu4


@pytest.mark.statistical
@pytest.mark.parametrize("problem_name", ["bernoulli", "categorical"])
@pytest.mark.parametrize(
    "estimator_name,n_samples", [("reinforce", 1), ("reinforce", 3), ("rloo", 2), ("rloo", 3)]
)
def test_empirical_variance_matches_enumeration(problem_name, estimator_name, n_samples):
    # α = 1e-3 family-wise (Bonferroni over dimensions) for the z-test of s² against σ², whose
    # standard error sqrt((μ4 − σ⁴)/n) also comes from enumeration.
    problem = make("problem", problem_name)
    estimator = make("estimator", estimator_name)
    mean, var, mu4 = exact_moments(problem, estimator, n_samples)
    torch.testing.assert_close(mean, problem.exact()["theta"], rtol=1e-10, atol=1e-12)  # unbiased, exactly
    n = 200_000
    result = run_cell(problem, estimator, n_samples=n_samples, n_estimates=n, seed=5, dtype="float64")
    empirical = torch.tensor([d["var"] for d in result.dims], dtype=torch.float64)
    z = (empirical - var) / torch.sqrt((mu4 - var**2) / n)
    critical = float(torch.special.ndtri(torch.tensor(1 - ALPHA / (2 * len(var)), dtype=torch.float64)))
    assert z.abs().max() < critical, (empirical, var, z)
    assert result.row["variance"] == pytest.approx(float(empirical.sum()))


@pytest.mark.statistical
def test_variance_check_rejects_a_wrong_variance():
    # Test the test: reinforce's empirical variance against rloo's exact variance must fail the
    # same α = 1e-3 check (their variances differ on bernoulli at n_samples=3).
    problem = make("problem", "bernoulli")
    _mean, var, mu4 = exact_moments(problem, make("estimator", "rloo"), 3)
    n = 200_000
    result = run_cell(
        problem, make("estimator", "reinforce"), n_samples=3, n_estimates=n, seed=5, dtype="float64"
    )
    empirical = torch.tensor([d["var"] for d in result.dims], dtype=torch.float64)
    z = (empirical - var) / torch.sqrt((mu4 - var**2) / n)
    critical = float(torch.special.ndtri(torch.tensor(1 - ALPHA / (2 * len(var)), dtype=torch.float64)))
    assert z.abs().max() > critical


def test_every_problem_builds_from_its_yaml():
    for name in group_options("problem"):
        problem = problems.REGISTRY[name](**default_config("problem", name))
        exact = problem.exact()
        assert all(torch.isfinite(v).all() and v.dtype == torch.float64 for v in exact.values())
