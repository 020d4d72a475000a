"""rao_blackwell_st (Paulus et al. 2021): the estimate against its formula by hand (conditional
pre-images z̃ written out, the noise z̃ − θ held fixed as ST-GS holds its Gumbels), common random
numbers with st_gumbel_softmax, and the paired checks: the same mean as st_gumbel_softmax at the
same τ, and a variance that is not larger (with wrong variants rejected by the same checks).

False-alarm rate of the statistical tests: α = 1e-3 family-wise (Bonferroni over dimensions) per
check; seeded; a failing seed may be bumped once, twice means a bug.
"""

from __future__ import annotations

import pytest
import torch

from bench.estimators.rao_blackwell_st import RaoBlackwellStraightThrough
from bench.problems.bernoulli import Bernoulli
from bench.problems.categorical import Categorical
from tests.conftest import make
from tests.test_categorical_estimators import ALPHA, critical_value, fixed_noise, gumbel, softmax_jacobian


def rb_noise(problem, n_estimates: int, n_samples: int, n_conditional: int, seed: int = 0):
    generator, aux = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    estimator = make("estimator", "rao_blackwell_st", n_conditional=n_conditional)
    return estimator.make_noise(problem, generator, aux, (n_estimates, n_samples), torch.float64)


def test_make_noise_shares_the_problems_noise():
    problem = make("problem", "multicategorical")
    own, conditional = rb_noise(problem, 7, 3, 5, seed=4)
    torch.testing.assert_close(own, fixed_noise(problem, 7, 3, seed=4), rtol=0, atol=0)
    assert conditional.shape == (7, 3, 5, 3, 3) and (conditional > 0).all() and (conditional < 1).all()


def test_by_hand_on_categorical():
    problem = Categorical(
        theta=[0.1, 0.9, -0.3, 0.4], costs=[1.0, -2.0, 0.5, 0.3], cost="quadratic", target=0.2
    )
    tau, n_conditional = 0.6, 4
    u, v = rb_noise(problem, 5, 2, n_conditional)  # (5, 2, K), (5, 2, M, K)
    estimator = make("estimator", "rao_blackwell_st", temperature=tau, n_conditional=n_conditional)
    grads = estimator.estimate(problem, problem.params(), (u, v))["theta"]
    theta, costs = problem.theta, problem.costs
    hard = torch.nn.functional.one_hot((theta + gumbel(u)).argmax(-1), 4).double()[
        :, :, None, :
    ]  # (5, 2, 1, K)
    # z̃ given the sample i: z̃_i = G(v_i) + logsumexp θ; z̃_k = −log(e^{−θ_k}(−log v_k) + e^{−z̃_i})
    top = ((gumbel(v) + torch.logsumexp(theta, 0)) * hard).sum(-1, keepdim=True)  # (5, 2, M, 1)
    z_tilde = torch.where(hard > 0.5, top, -torch.log(torch.exp(-theta) * -torch.log(v) + torch.exp(-top)))
    y = torch.softmax(z_tilde / tau, -1)  # (5, 2, M, K)
    dy = softmax_jacobian(y) / tau  # ∂y/∂θ with ∂z/∂θ = I (the conditional Gumbels z̃ − θ held fixed)
    grad_f = 2 * ((hard * costs).sum(-1, keepdim=True) - 0.2) * costs  # (5, 2, 1, K): ∂f/∂y at the sample
    by_hand = (dy.transpose(-1, -2) @ grad_f[..., None])[..., 0].mean(2).mean(1)
    torch.testing.assert_close(grads, by_hand, rtol=1e-12, atol=1e-14)


def test_by_hand_on_bernoulli():
    problem = Bernoulli(theta=[0.2, -0.4, 1.3], target=[0.3, 0.9, 0.5])
    tau, n_conditional = 0.5, 3
    u, v = rb_noise(problem, 4, 2, n_conditional)  # (4, 2, D), (4, 2, M, D)
    estimator = make("estimator", "rao_blackwell_st", temperature=tau, n_conditional=n_conditional)
    grads = estimator.estimate(problem, problem.params(), (u, v))["theta"]
    phi, p = problem.theta, torch.sigmoid(problem.theta)
    bits = (u > 1 - p).double()[:, :, None, :]  # (4, 2, 1, D)
    # b = 1: u' = 1 − p(1 − v); b = 0: u' = v(1 − p); z̃ = φ + log u' − log(1 − u')
    one = phi + torch.log(1 - p * (1 - v)) - torch.log(p * (1 - v))
    zero = phi + torch.log(v * (1 - p)) - torch.log(1 - v * (1 - p))
    z_tilde = torch.where(bits > 0.5, one, zero)
    y = torch.sigmoid(z_tilde / tau)
    by_hand = (y * (1 - y) / tau * 2 * (bits - problem.target)).mean(2).mean(1)
    torch.testing.assert_close(grads, by_hand, rtol=1e-12, atol=1e-14)


class ThroughTheSampler(RaoBlackwellStraightThrough):
    """Test only (unregistered): θ differentiated through the conditional sampler z̃(θ, v) (as REBAR
    needs) instead of holding the noise z̃ − θ fixed — not ST-GS's Jacobian, so the mean moves."""

    name = ""

    def surrogate(self, problem, params, noise):
        own, conditional = noise
        hard = problem.sample({k: v.detach() for k, v in params.items()}, own)
        z_tilde = problem.conditional_preimage(params, hard.unsqueeze(1), conditional)
        relaxed = problem.relax(z_tilde, self.temperature).mean(1)
        return problem.relaxed_cost(params, hard + relaxed - relaxed.detach()).mean()


class Unconditional(RaoBlackwellStraightThrough):
    """Test only (unregistered): fresh pre-images z̃ ∼ p(z), independent of the sample — the
    Jacobian no longer belongs to the sample, so the mean moves away from ST-GS's."""

    name = ""

    def surrogate(self, problem, params, noise):
        own, conditional = noise
        hard = problem.sample({k: v.detach() for k, v in params.items()}, own)
        relaxed = problem.relax(problem.preimage(params, conditional), self.temperature).mean(1)
        return problem.relaxed_cost(params, hard + relaxed - relaxed.detach()).mean()


def paired_estimates(problem, candidate, temperature: float, n: int, seed: int):
    """(candidate, st_gumbel_softmax) estimates on the same problem noise: each (n, P)."""
    u, v = rb_noise(problem, n, 1, candidate.n_conditional, seed=seed)
    params = problem.params()
    ours = torch.cat([g.reshape(n, -1) for g in candidate.estimate(problem, params, (u, v)).values()], 1)
    st = make("estimator", "st_gumbel_softmax", temperature=temperature).estimate(problem, params, u)
    return ours, torch.cat([g.reshape(n, -1) for g in st.values()], 1)


def mean_difference_z(ours: torch.Tensor, st: torch.Tensor) -> torch.Tensor:
    difference = ours - st
    return difference.mean(0) / (difference.std(0) / difference.shape[0] ** 0.5)


def second_moment_z(ours: torch.Tensor, st: torch.Tensor) -> torch.Tensor:
    """z of mean(st² − ours²): with equal means, Var st − Var ours = E[st²] − E[ours²]."""
    difference = st**2 - ours**2
    return difference.mean(0) / (difference.std(0) / difference.shape[0] ** 0.5)


PROBLEMS = {
    "categorical-quadratic": lambda: make("problem", "categorical", cost="quadratic"),
    "bernoulli": lambda: make("problem", "bernoulli"),
    "multicategorical": lambda: make("problem", "multicategorical"),
}


@pytest.mark.statistical
@pytest.mark.parametrize("temperature", [0.5, 1.0])
@pytest.mark.parametrize("problem_name", list(PROBLEMS))
def test_same_mean_as_st_gumbel_softmax_and_no_more_variance(problem_name, temperature):
    # Paired on common random numbers (the same sample for both). Mean: two-sided z-tests of the
    # mean difference, α = 1e-3 Bonferroni over dimensions. Variance: one-sided z-tests that
    # E[st²] − E[ours²] (= Var st − Var ours, the means being equal) is not negative, same α.
    problem = PROBLEMS[problem_name]()
    candidate = make("estimator", "rao_blackwell_st", temperature=temperature)
    ours, st = paired_estimates(problem, candidate, temperature, 20_000, seed=6)
    n_dims = ours.shape[1]
    assert mean_difference_z(ours, st).abs().max() < critical_value(ALPHA, n_dims)
    assert second_moment_z(ours, st).min() > -critical_value(ALPHA, n_dims, sides=1)
    assert ours.var(0).sum() < st.var(0).sum()


@pytest.mark.statistical
def test_the_paired_checks_reject_wrong_candidates():
    # Test the tests, same α and sizes: unconditional pre-images, or the Jacobian taken through
    # the conditional sampler, change the mean (rejected); ST-GS in the candidate's place has more
    # variance than rao_blackwell_st (rejected).
    problem = PROBLEMS["categorical-quadratic"]()
    for wrong in (Unconditional(temperature=0.5), ThroughTheSampler(temperature=0.5)):
        ours, st = paired_estimates(problem, wrong, 0.5, 20_000, seed=6)
        assert mean_difference_z(ours, st).abs().max() > critical_value(ALPHA, ours.shape[1]), type(wrong)
    rb, st = paired_estimates(problem, make("estimator", "rao_blackwell_st"), 0.5, 20_000, seed=6)
    assert second_moment_z(st, rb).min() < -critical_value(ALPHA, rb.shape[1], sides=1)
