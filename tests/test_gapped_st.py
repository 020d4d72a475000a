"""gapped_st (Fan et al. 2022): the gapped logits' properties (consistency, gap, minimal move),
the estimate against its formula by hand, and its bias (by enumeration: it sees only the hard
sample; and the harness's bias test rejects).

False-alarm rate of the statistical test: α = 1e-3 family-wise (the harness's bias_pvalue); seeded.
"""

from __future__ import annotations

import pytest
import torch

from bench.estimators.gapped_st import gapped_bit_logits, gapped_logits
from bench.problems.bernoulli import Bernoulli
from bench.problems.categorical import Categorical
from bench.runner import run_cell
from tests.conftest import make
from tests.test_categorical_estimators import ALPHA, fixed_noise, gumbel, onehot_noise, softmax_jacobian


def test_gapped_logits_are_consistent_gapped_and_minimal():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 5, generator=generator, dtype=torch.float64) * 2
    hard = torch.nn.functional.one_hot(torch.randint(5, (200,), generator=generator), 5).double()
    for gap in (0.3, 1.0, 4.0):
        z = gapped_logits(logits, hard, gap)
        sampled = hard.argmax(-1)
        assert torch.equal(z.argmax(-1), sampled)  # consistency: the relaxation's argmax is the sample
        lead = (z * hard).sum(-1, keepdim=True) - z  # the sampled class's lead over each class
        assert (lead[hard < 0.5] >= gap - 1e-12).all()  # the gap
        # minimal move: the sampled logit rises to the max; the others move only if within κ of it
        top = logits.max(-1, keepdim=True).values
        torch.testing.assert_close((z * hard).sum(-1), top[:, 0], rtol=0, atol=0)
        untouched = (hard < 0.5) & (logits <= top - gap)
        assert torch.equal(z[untouched], logits[untouched])


def test_gapped_bits_are_the_two_class_case():
    phi = torch.linspace(-3, 3, 13, dtype=torch.float64)
    for bit in (0.0, 1.0):
        bits = torch.full_like(phi, bit)
        two_class = torch.stack([torch.zeros_like(phi), phi], -1)  # logits (0, φ)
        hard = torch.stack([1 - bits, bits], -1)
        z = gapped_logits(two_class, hard, 1.0)
        torch.testing.assert_close(gapped_bit_logits(phi, bits, 1.0), z[:, 1] - z[:, 0], rtol=0, atol=1e-15)


def test_by_hand_on_categorical():
    problem = Categorical(
        theta=[0.1, 0.9, -0.3, 0.4], costs=[1.0, -2.0, 0.5, 0.3], cost="quadratic", target=0.2
    )
    noise = fixed_noise(problem, 6, 3)
    tau, gap = 0.7, 0.8
    grads = make("estimator", "gapped_st", temperature=tau, gap=gap).estimate(
        problem, problem.params(), noise
    )
    theta, costs = problem.theta, problem.costs
    index = (theta + gumbel(noise)).argmax(-1)  # (6, 3)
    hard = torch.nn.functional.one_hot(index, 4).double()
    # GST: sampled logit := max θ; the others := min(θ_k, max θ − κ)
    z = torch.where(hard > 0.5, theta.max(), torch.minimum(theta, theta.max() - gap))
    y = torch.softmax(z / tau, -1)
    grad_f = 2 * ((hard * costs).sum(-1, keepdim=True) - 0.2) * costs  # ∂f/∂y at y = hard
    by_hand = ((softmax_jacobian(y) / tau) @ grad_f[..., None])[..., 0].mean(1)  # ∂y/∂θ = J(y)/τ
    torch.testing.assert_close(grads["theta"], by_hand, rtol=1e-12, atol=1e-14)


def test_by_hand_on_bernoulli():
    problem = Bernoulli(theta=[0.2, -0.4, 1.3], target=[0.3, 0.9, 0.5])
    noise = fixed_noise(problem, 5, 3)
    tau, gap = 0.5, 1.0
    grads = make("estimator", "gapped_st", temperature=tau, gap=gap).estimate(
        problem, problem.params(), noise
    )
    phi = problem.theta
    b = (noise > 1 - torch.sigmoid(phi)).double()
    d = torch.where(b > 0.5, torch.maximum(phi, torch.tensor(gap)), torch.minimum(phi, torch.tensor(-gap)))
    y = torch.sigmoid(d / tau)
    by_hand = (y * (1 - y) / tau * 2 * (b - problem.target)).mean(1)
    torch.testing.assert_close(grads["theta"], by_hand, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cost", ["linear", "quadratic"])
def test_biased_by_enumeration(cost):
    problem = Categorical(theta=[0.1, 0.9, -0.3, 0.4], costs=[1.0, -2.0, 0.5, 0.3], cost=cost, target=0.2)
    params = problem.params()
    outcomes = problem.enumerate_outcomes()
    noise = onehot_noise(outcomes)[:, None]
    grads = make("estimator", "gapped_st").estimate(problem, params, noise)["theta"]
    mean = (problem.log_prob(params, outcomes).exp()[:, None] * grads).sum(0)
    assert (mean - problem.exact()["theta"]).abs().max() > 1e-2


@pytest.mark.statistical
def test_the_bias_test_rejects():
    # α = 1e-3 family-wise (the harness's bias_pvalue): a biased estimator must be caught.
    problem = make("problem", "multicategorical")
    result = run_cell(problem, make("estimator", "gapped_st"), n_samples=4, n_estimates=20_000, seed=2)
    assert result.row["bias_pvalue"] < ALPHA, result.row
