"""reinmax (Liu et al. 2023): the estimate against its formula by hand, its exact expectation by
enumeration (it sees only the hard sample), exactness for costs quadratic in the one-hots at τ = 1,
bias elsewhere (the harness's bias test rejects), and plain straight-through exact only for a
linear cost.

The multicategorical `coupled` cost (mean_d v·y_d − m)² is quadratic in the one-hots like
`separable`, so at τ = 1 ReinMax is exactly unbiased for both (any K); it is biased for a cost that
is not quadratic (a cubic variant below, a VAE) and at τ ≠ 1 (coupled, K = 3, τ = 2).

False-alarm rate of the statistical tests: α = 1e-3 family-wise (the harness's bias_pvalue,
Bonferroni over dimensions); seeded; a failing seed may be bumped once, twice means a bug.
"""

from __future__ import annotations

import pytest
import torch

from bench.estimators.base import Estimator, detached
from bench.estimators.reinmax import softmax_jacobian_term
from bench.problems.bernoulli import Bernoulli
from bench.problems.categorical import Categorical
from bench.problems.multicategorical import MultiCategorical
from bench.runner import run_cell
from tests.conftest import make
from tests.test_categorical_estimators import ALPHA, fixed_noise, gumbel, onehot_noise, softmax_jacobian

N_ESTIMATES = 20_000


class CubicCoupled(MultiCategorical):
    """Test only (unregistered): multicategorical with the coupled cost cubed, (mean_d s_d − m)³,
    not quadratic in the one-hots. Its exact gradient: the parent's enumeration (it calls
    ``cost_of_values``)."""

    name = ""

    def cost_of_values(self, values):
        return (values.mean(-1) - self.target.to(values.dtype).mean()) ** 3


class PlainStraightThrough(Estimator):
    """Test only (unregistered): straight-through with the softmax Jacobian at π₀ = softmax(θ),
    ĝ = J(π₀)ᵀ ∂f̃/∂D (Bengio et al. 2013): ReinMax's first-order counterpart."""

    unbiased = False

    def surrogate(self, problem, params, noise):
        hard = problem.sample(detached(params), noise)
        logits = problem.logits(params)
        shift = logits - logits.detach()
        return problem.relaxed_cost(
            params, hard + softmax_jacobian_term(torch.softmax(logits.detach(), -1), shift)
        ).mean()


def multicategorical(cost: str, n_classes: int, cls=MultiCategorical):
    theta = torch.randn(3, n_classes, generator=torch.Generator().manual_seed(n_classes), dtype=torch.float64)
    return cls(theta=theta.tolist(), target=[0.9, 0.2, 0.6], cost=cost)


def enumerated_mean(problem, estimator) -> torch.Tensor:
    """E[ĝ] exactly, for an estimator that sees only the hard sample: Σ_x p(x) ĝ(x)."""
    params = problem.params()
    outcomes = problem.enumerate_outcomes()  # (M, ..., K)
    weights = problem.log_prob(params, outcomes).exp()
    noise = onehot_noise(outcomes)[:, None]  # one sample per estimate
    assert torch.equal(problem.sample(params, noise), outcomes[:, None])
    grads = estimator.estimate(problem, params, noise)["theta"]
    return torch.einsum("m,m...->...", weights, grads)


def test_by_hand_on_categorical():
    problem = Categorical(
        theta=[0.1, 0.9, -0.3, 0.4], costs=[1.0, -2.0, 0.5, 0.3], cost="quadratic", target=0.2
    )
    noise = fixed_noise(problem, 6, 3)
    tau = 1.7
    grads = make("estimator", "reinmax", temperature=tau).estimate(problem, problem.params(), noise)["theta"]
    theta, costs = problem.theta, problem.costs
    pi0 = torch.softmax(theta, 0)
    hard = torch.nn.functional.one_hot((theta + gumbel(noise)).argmax(-1), 4).double()  # (6, 3, K)
    pi1 = (torch.softmax(theta / tau, 0) + hard) / 2
    grad_f = 2 * ((hard * costs).sum(-1, keepdim=True) - 0.2) * costs  # ∂f/∂D at D: (6, 3, K)
    # Algorithm 2: ∇θ = (2 J(π₁) − ½ J(π₀)) ∂f/∂D (J symmetric)
    matrix = 2 * softmax_jacobian(pi1) - 0.5 * softmax_jacobian(pi0)  # (6, 3, K, K)
    by_hand = (matrix @ grad_f[..., None])[..., 0].mean(1)
    torch.testing.assert_close(grads, by_hand, rtol=1e-12, atol=1e-14)


def test_by_hand_on_bernoulli():
    problem = Bernoulli(theta=[0.2, -0.4, 1.3], target=[0.3, 0.9, 0.5])
    noise = fixed_noise(problem, 5, 3)
    tau = 2.0
    grads = make("estimator", "reinmax", temperature=tau).estimate(problem, problem.params(), noise)["theta"]
    phi, target = problem.theta, problem.target
    b = (noise > 1 - torch.sigmoid(phi)).double()
    q0 = torch.sigmoid(phi)
    q1 = (torch.sigmoid(phi / tau) + b) / 2
    by_hand = (2 * q1 * (1 - q1) - 0.5 * q0 * (1 - q0)) * 2 * (b - target)  # two classes (0, φ)
    torch.testing.assert_close(grads, by_hand.mean(1), rtol=1e-12, atol=1e-14)


def test_bits_agree_with_the_two_class_categorical():
    # A bit with logit φ is the categorical with logits (0, φ), and the same noise decides both
    # (b = 1 iff φ + logistic(u) > 0). Same quadratic cost; the two estimates of ∂/∂φ must agree.
    phi, target = 0.7, 0.3
    bern = Bernoulli(theta=[phi], target=[target])
    cat = Categorical(theta=[0.0, phi], costs=[0.0, 1.0], cost="quadratic", target=target)
    estimator = make("estimator", "reinmax", temperature=1.5)
    for bit in (0.0, 1.0):
        bits = torch.full((1, 1, 1), bit, dtype=torch.float64)
        u = torch.where(
            bits > 0.5, 1 - torch.sigmoid(torch.tensor(phi)) / 2, (1 - torch.sigmoid(torch.tensor(phi))) / 2
        )
        g_bern = estimator.estimate(bern, bern.params(), u)["theta"][0, 0]
        g_cat = estimator.estimate(
            cat, cat.params(), onehot_noise(torch.tensor([[[1 - bit, bit]]], dtype=torch.float64))
        )
        assert float(g_bern) == pytest.approx(float(g_cat["theta"][0, 1]), rel=1e-12, abs=1e-14)


@pytest.mark.parametrize(
    "cost,n_classes", [("separable", 2), ("separable", 3), ("coupled", 2), ("coupled", 3), ("coupled", 4)]
)
def test_exact_at_temperature_one_for_quadratic_costs(cost, n_classes):
    # At τ = 1, E[ĝ] = Σ_x p(x) ĝ(x) equals the exact gradient for any f quadratic in each one-hot.
    problem = multicategorical(cost, n_classes)
    mean = enumerated_mean(problem, make("estimator", "reinmax", temperature=1.0))
    torch.testing.assert_close(mean, problem.exact()["theta"], rtol=1e-12, atol=1e-14)


def test_biased_for_a_cubic_cost_or_above_temperature_one():
    exact_error = {}
    cubic = multicategorical("coupled", 3, CubicCoupled)
    exact_error["cubic, τ = 1"] = (
        enumerated_mean(cubic, make("estimator", "reinmax")) - cubic.exact()["theta"]
    )
    coupled = multicategorical("coupled", 3)
    hot = make("estimator", "reinmax", temperature=2.0)
    exact_error["coupled, τ = 2"] = enumerated_mean(coupled, hot) - coupled.exact()["theta"]
    for case, error in exact_error.items():
        assert error.abs().max() > 1e-4, case


def test_plain_straight_through_is_exact_only_for_a_linear_cost():
    linear = Categorical(theta=[0.1, 0.9, -0.3, 0.4], costs=[1.0, -2.0, 0.5, 0.3], cost="linear")
    quadratic = Categorical(
        theta=[0.1, 0.9, -0.3, 0.4], costs=[1.0, -2.0, 0.5, 0.3], cost="quadratic", target=0.2
    )
    for problem in (linear, quadratic):
        plain = enumerated_mean(problem, PlainStraightThrough())
        reinmax = enumerated_mean(problem, make("estimator", "reinmax"))
        torch.testing.assert_close(reinmax, problem.exact()["theta"], rtol=1e-12, atol=1e-14)
        exact_for_plain = torch.allclose(plain, problem.exact()["theta"], rtol=1e-10, atol=1e-12)
        assert exact_for_plain == (problem.cost_name == "linear")


@pytest.mark.statistical
@pytest.mark.parametrize(
    "problem,temperature,biased",
    [
        (multicategorical("coupled", 3), 1.0, False),
        (multicategorical("separable", 2), 1.0, False),
        (multicategorical("coupled", 3), 2.0, True),
        (multicategorical("coupled", 3, CubicCoupled), 1.0, True),
    ],
    ids=["coupled-K3-tau1", "separable-K2-tau1", "coupled-K3-tau2", "cubic-K3-tau1"],
)
def test_the_harness_bias_test_agrees_with_enumeration(problem, temperature, biased):
    # α = 1e-3 family-wise (the harness's bias_pvalue): no rejection where the enumeration says
    # exact, rejection where it shows a bias (test the test).
    result = run_cell(problem, make("estimator", "reinmax", temperature=temperature), n_samples=4,
                      n_estimates=N_ESTIMATES, seed=2, dtype="float64")  # fmt: skip
    assert (result.row["bias_pvalue"] < ALPHA) == biased, result.row


@pytest.mark.statistical
def test_biased_on_the_vae():
    # α = 1e-3: the VAE's negative ELBO is not quadratic in the code; the bias test rejects
    # (max |z| ≈ 58 at 5000 estimates, so 2000 are plenty).
    problem = make("problem", "vae_bernoulli")
    result = run_cell(problem, make("estimator", "reinmax"), n_samples=4, n_estimates=2000, seed=2)
    assert result.row["bias_pvalue"] < ALPHA, result.row
