"""ReinMax: a second-order (Heun) straight-through estimator for discrete latents (Liu et al. 2023)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bench.errors import ConfigError
from bench.estimators.base import Estimator, detached, temperature_value
from bench.problems.base import Params, Problem


def straight_through_reason(name: str, problem: Problem) -> str | None:
    """Why a straight-through-family estimator does not apply, else None: it backpropagates
    through the hard sample of a binary or categorical latent (its logits) into the relaxed cost.
    Applies to bernoulli, categorical, multicategorical, vae_bernoulli, vae_categorical."""
    missing = []
    if not (problem.binary_latent or problem.categorical_latent):
        missing.append("a binary or categorical latent (binary_latent or categorical_latent)")
    if not problem.has_relaxed_cost:
        missing.append("a relaxed cost (has_relaxed_cost)")
    if not missing:
        return None
    return (
        f"{name} backpropagates through the hard sample of a binary or categorical latent into the "
        f"relaxed cost; {problem.name} lacks {' and '.join(missing)}"
    )


def softmax_jacobian_term(probs: Tensor, shift: Tensor) -> Tensor:
    """probs ⊙ (shift − probs·shift) over the last axis: zero in value when shift = θ − stopgrad(θ),
    and its θ-Jacobian is the softmax Jacobian diag(π) − ππᵀ evaluated at ``probs`` (any point of the
    simplex, not necessarily softmax(θ)). No logs, so a zero probability is harmless."""
    return probs * (shift - (probs * shift).sum(-1, keepdim=True))


class ReinMax(Estimator):
    """ReinMax: a second-order (Heun) straight-through estimator for discrete latents (Liu et al. 2023).

    Liu, Liu, Gao, Chen & Han 2023, "Bridging discrete and backpropagation: straight-through and
    beyond", NeurIPS, Algorithm 2.

    For a categorical with logits θ, π₀ = softmax(θ), hard sample D ∼ π₀ (one-hot), and
    π₁ = (softmax(θ/τ) + D)/2, the backward pass replaces ∂D/∂θ by 2 J(π₁) − ½ J(π₀), with
    J(π) = diag(π) − ππᵀ the softmax Jacobian evaluated at π:
        ĝ = (1/S) Σ_s [ (2 J(π₁,s) − ½ J(π₀))ᵀ ∂f̃/∂D |_{D_s} (chained to θ) + ∇θ f̃(θ, D_s) ],
    where the last term is the cost's direct dependence on θ. Implemented as the value-preserving
    D̂ = D + 2 t(π₁) − ½ t(π₀), t(π) = π ⊙ (δ − π·δ), δ = φ − stopgrad(φ) (φ = the logits), fed to
    the relaxed cost f̃. Bits b ∼ Bernoulli(σ(φ)) are the two-class case with logits (0, φ):
    b̂ = b + [2 q₁(1 − q₁) − ½ q₀(1 − q₀)] δ, q₀ = σ(φ), q₁ = (σ(φ/τ) + b)/2.

    Biased in general: at τ = 1 it is Heun's (trapezoid) rule for the integral that relates f at
    two one-hots, so its expectation is the exact gradient when f̃ is quadratic in each variable's
    one-hot (the trapezoid rule is exact for quadratics); otherwise, or at τ ≠ 1, it is biased.
    Plain straight-through (J(π₀) alone) is exact only for f̃ linear in the one-hot.
    Key ``temperature`` τ ≥ 1 (the paper's range; its reference implementation refuses τ < 1).
    Needs the relaxed cost (∂f̃/∂D at the hard sample) and a binary or categorical latent.
    The backward pass uses no noise: the estimate is a function of the hard sample alone.
    cost_evals = n_samples (f̃ and its gradient at each hard sample).
    """

    name = "reinmax"
    unbiased = False
    requires = ("has_relaxed_cost",)

    def __init__(self, temperature: Any = 1.0) -> None:
        super().__init__(temperature=temperature)
        self.temperature = temperature_value(temperature)
        if self.temperature < 1.0:
            raise ConfigError(
                "estimator.temperature",
                f"ReinMax needs temperature >= 1 (Liu et al. 2023: π₁ mixes softmax(θ/τ) with the sample, "
                f"and τ < 1 is outside the method's range), got {temperature!r}",
            )

    def why_not(self, problem: Problem, n_samples: int) -> str | None:
        return straight_through_reason(self.name, problem) or super().why_not(problem, n_samples)

    def surrogate(self, problem: Problem, params: Params, noise: Tensor) -> Tensor:
        hard = problem.sample(detached(params), noise)  # (S, *event): the problem's own sample
        logits = problem.logits(params)  # (*latent) or (*variables, K), differentiable
        constant = logits.detach()
        shift = logits - constant  # zero in value, identity Jacobian
        if problem.binary_latent:
            q0 = torch.sigmoid(constant)  # (*latent)
            q1 = 0.5 * (torch.sigmoid(constant / self.temperature) + hard)  # (S, *latent)
            slope = 2.0 * q1 * (1.0 - q1) - 0.5 * q0 * (1.0 - q0)  # (S, *latent)
            surrogate_sample = hard + slope * shift
        else:
            pi0 = torch.softmax(constant, -1)  # (*variables, K)
            pi1 = 0.5 * (torch.softmax(constant / self.temperature, -1) + hard)  # (S, *variables, K)
            surrogate_sample = (
                hard + 2.0 * softmax_jacobian_term(pi1, shift) - 0.5 * softmax_jacobian_term(pi0, shift)
            )
        return problem.relaxed_cost(params, surrogate_sample).mean()
