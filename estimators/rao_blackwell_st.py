"""Rao-Blackwellized straight-through Gumbel-softmax (Paulus, Maddison & Krause 2021)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bench.estimators.base import Estimator, Noise, detached, positive_int, temperature_value
from bench.estimators.reinmax import straight_through_reason
from bench.problems.base import Params, Problem, open_uniform


class RaoBlackwellStraightThrough(Estimator):
    """Rao-Blackwellized straight-through Gumbel-softmax (Paulus, Maddison & Krause 2021).

    Paulus, Maddison & Krause 2021, "Rao-Blackwellizing the straight-through Gumbel-softmax
    gradient estimator", ICLR, §3.

    ST-GS backpropagates through y = softmax(z/τ), z = φ + G with the Gumbel noise G held fixed
    (∂z/∂φ = I), at the pre-image of the hard sample D = H(z). Its estimate depends on z only
    through D and that Jacobian, so conditioning on D gives
        ĝ = (1/S) Σ_s ∂f̃/∂y |_{y = D_s} · (1/M) Σ_{j=1}^{M} ∂ softmax((φ + G̃_{s,j})/τ)/∂φ · ∂φ/∂θ
            (+ ∇θ f̃(θ, D_s), the direct term),   φ + G̃_{s,j} = z̃_{s,j} ∼ p(z | H(z) = D_s) i.i.d.,
    implemented as z = φ + stopgrad(z̃ − φ), D̂ = D + ȳ − stopgrad(ȳ), ȳ = (1/M) Σ_j softmax(z_j/τ),
    fed to the relaxed cost f̃. The conditional noise G̃ = z̃ − φ is held fixed, as ST-GS holds G
    (the paper's estimator; differentiating through the conditional sampler instead, as REBAR's z̃
    needs, is a different and here wrong estimator: the tests show its mean moving away).
    Bits: z̃ ∼ p(z | b) (logistic pre-images), y = σ((φ + stopgrad(z̃ − φ))/τ).

    Biased (as ST-GS), but E[ĝ] equals ST-GS's at the same τ exactly: given D, z̃_j has the law of
    z, so E[ĝ | D] = E[ĝ_ST-GS | D]. And Var ĝ ≤ Var ĝ_ST-GS (the conditional-variance inequality;
    M → ∞ gives the conditional expectation itself).
    Keys ``temperature`` τ > 0 and ``n_conditional`` M ≥ 1. Noise: the problem's own noise for D
    (so D is st_gumbel_softmax's sample: common random numbers) plus M uniforms per sample of the
    latent's shape from the aux stream (``problem.conditional_preimage`` turns them into z̃).
    Needs the relaxed cost and a binary or categorical latent.
    cost_evals = n_samples (one f̃ per sample: the M conditional draws only average Jacobians).
    """

    name = "rao_blackwell_st"
    unbiased = False
    requires = ("has_relaxed_cost",)

    def __init__(self, temperature: Any = 0.5, n_conditional: Any = 10) -> None:
        super().__init__(temperature=temperature, n_conditional=n_conditional)
        self.temperature = temperature_value(temperature)
        self.n_conditional = positive_int("n_conditional", n_conditional, minimum=1)

    def why_not(self, problem: Problem, n_samples: int) -> str | None:
        return straight_through_reason(self.name, problem) or super().why_not(problem, n_samples)

    def make_noise(
        self,
        problem: Problem,
        generator: torch.Generator,
        aux_generator: torch.Generator,
        batch: tuple[int, ...],
        dtype: torch.dtype,
    ) -> Noise:
        """(u, v): u (*batch, *event) the problem's own noise; v (*batch, M, *event) uniforms for the
        conditional pre-images, from the aux stream."""
        own = problem.noise(generator, batch, dtype)
        event = own.shape[len(batch) :]
        conditional = open_uniform(aux_generator, (*batch, self.n_conditional, *event), dtype, own.device)
        return own, conditional

    def surrogate(self, problem: Problem, params: Params, noise: tuple[Tensor, Tensor]) -> Tensor:
        own, conditional = noise  # (S, *event), (S, M, *event)
        constant = detached(params)
        hard = problem.sample(constant, own)  # (S, *event): the problem's own sample
        z_tilde = problem.conditional_preimage(constant, hard.unsqueeze(1), conditional)  # (S, M, *event)
        logits = problem.logits(params)  # (*latent) or (*variables, K)
        z = logits + (z_tilde - logits.detach())  # value z̃, ∂z/∂φ = I: the noise z̃ − φ held fixed
        relaxed = problem.relax(z, self.temperature).mean(1)  # (S, *event)
        straight_through = hard + relaxed - relaxed.detach()
        return problem.relaxed_cost(params, straight_through).mean()
