"""The latent interface estimators build on: pre-images reproduce the problem's own samples, and
conditional pre-images have the right law and stay differentiable in the logits.

False-alarm rate of the statistical tests: α = 1e-3 family-wise (Bonferroni over the
Kolmogorov–Smirnov tests in each test); seeded.
"""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from bench import problems
from bench.problems import latent
from bench.sweep import group_options
from tests.conftest import make

ALPHA = 1e-3


def latent_problems() -> list[str]:
    names = []
    for name in group_options("problem"):
        cls = problems.REGISTRY[name]
        if cls.binary_latent or cls.categorical_latent:
            names.append(name)
    return names


@pytest.mark.parametrize("name", latent_problems())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hard_preimage_is_the_problems_sample(name, dtype):
    problem = make("problem", name)
    params = {k: v.to(dtype) for k, v in problem.params().items()}
    noise = problem.noise(torch.Generator().manual_seed(0), (500, 2), dtype)
    z = problem.preimage(params, noise)
    torch.testing.assert_close(problem.hard(z), problem.sample(params, noise), rtol=0, atol=0)
    if problem.has_relaxed_cost:
        torch.testing.assert_close(
            problem.relax(z, 0.5), problem.relaxed_sample(params, noise, 0.5), rtol=1e-6, atol=1e-6
        )


def test_binary_conditional_is_consistent_and_has_the_unconditional_law():
    # If b ~ Bernoulli(σ(φ)) and z̃ ~ p(z | b), then z̃ ~ Logistic(φ): KS test per coordinate.
    generator = torch.Generator().manual_seed(1)
    logits = torch.tensor([-2.0, 0.0, 0.7, 3.0], dtype=torch.float64)
    n = 20_000
    u = torch.rand(n, 4, generator=generator, dtype=torch.float64)
    v = torch.rand(n, 4, generator=generator, dtype=torch.float64)
    b = latent.binary_hard(latent.binary_preimage(logits, u))
    z_tilde = latent.binary_conditional(logits, b, v)
    assert torch.equal(latent.binary_hard(z_tilde), b)
    for i in range(4):
        cdf = stats.logistic(loc=float(logits[i])).cdf
        assert stats.kstest(z_tilde[:, i].numpy(), cdf).pvalue > ALPHA / 4


def test_categorical_conditional_is_consistent_and_has_the_unconditional_law():
    # If x ~ Cat(softmax φ) and z̃ ~ p(z | x), then z̃_k ~ Gumbel(φ_k) independently: KS per k.
    generator = torch.Generator().manual_seed(2)
    logits = torch.tensor([0.3, -1.0, 1.5, 0.0, -0.2], dtype=torch.float64)
    n = 20_000
    u = torch.rand(n, 5, generator=generator, dtype=torch.float64)
    v = torch.rand(n, 5, generator=generator, dtype=torch.float64)
    x = latent.categorical_hard(latent.categorical_preimage(logits, u))
    z_tilde = latent.categorical_conditional(logits, x, v)
    assert torch.equal(latent.categorical_hard(z_tilde), x)
    for k in range(5):
        cdf = stats.gumbel_r(loc=float(logits[k])).cdf
        assert stats.kstest(z_tilde[:, k].numpy(), cdf).pvalue > ALPHA / 5


@pytest.mark.parametrize("kind", ["binary", "categorical"])
def test_conditional_preimage_is_differentiable_in_the_logits(kind):
    # The classic REBAR bug detaches φ inside z̃; here ∂z̃/∂φ must match central differences.
    generator = torch.Generator().manual_seed(3)
    logits = torch.tensor([0.4, -0.8, 1.1], dtype=torch.float64)
    u = torch.rand(7, 3, generator=generator, dtype=torch.float64)
    v = torch.rand(7, 3, generator=generator, dtype=torch.float64)
    preimage = getattr(latent, f"{kind}_preimage")
    hard = getattr(latent, f"{kind}_hard")
    conditional = getattr(latent, f"{kind}_conditional")
    x = hard(preimage(logits, u))  # held fixed: z̃ is differentiated at a given sample

    def f(phi: torch.Tensor) -> torch.Tensor:
        return conditional(phi, x, v)

    jacobian = torch.autograd.functional.jacobian(f, logits)  # (7, 3, 3)
    assert jacobian.abs().sum() > 0
    step = 1e-6
    for j in range(3):
        shift = torch.zeros(3, dtype=torch.float64)
        shift[j] = step
        numeric = (f(logits + shift) - f(logits - shift)) / (2 * step)
        torch.testing.assert_close(jacobian[..., j], numeric, rtol=1e-5, atol=1e-7)
