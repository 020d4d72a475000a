"""Gapped straight-through: a deterministic, gapped relaxation of the hard sample (Fan et al. 2022)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bench.estimators.base import Estimator, detached, positive_float, temperature_value
from bench.estimators.reinmax import straight_through_reason
from bench.problems.base import Params, Problem


def gapped_logits(logits: Tensor, hard: Tensor, gap: float) -> Tensor:
    """The gapped perturbation's target logits (constants): the sampled class at max_j θ_j, every
    other class at min(θ_k, max_j θ_j − κ). logits (*variables, K), hard (S, *variables, K)."""
    top = logits.max(-1, keepdim=True).values  # (*variables, 1)
    return torch.where(hard > 0.5, top, torch.minimum(logits, top - gap))


def gapped_bit_logits(logits: Tensor, bits: Tensor, gap: float) -> Tensor:
    """Bits as two classes with logits (0, φ): the gapped logit difference z₁ − z₀ is max(φ, κ)
    when b = 1 and min(φ, −κ) when b = 0. logits (*latent), bits (S, *latent)."""
    return torch.where(bits > 0.5, logits.clamp(min=gap), logits.clamp(max=-gap))


class GappedStraightThrough(Estimator):
    """Gapped straight-through, GST-κ: a deterministic, gapped relaxation (Fan et al. 2022).

    Fan, Chi, Rudnicky & Ramadge 2022, "Training discrete deep generative models via gapped
    straight-through estimator", ICML, §4.

    Straight-through with the Gumbel noise replaced by a deterministic perturbation m of the logits
    θ that makes the relaxed sample agree with the hard sample D (class i) and keeps a gap κ:
        z_i = max_j θ_j,   z_k = min(θ_k, max_j θ_j − κ) for k ≠ i,   z = θ + stopgrad(z − θ),
        ĝ = (1/S) Σ_s ∂f̃/∂y |_{y = D_s} · ∂ softmax(z_s/τ)/∂θ  (+ ∇θ f̃(θ, D_s), the direct term),
    implemented as D̂ = D + y − stopgrad(y), y = softmax(z/τ), fed to the relaxed cost f̃. So
    argmax z = i (consistency) and the sampled class leads every other by at least κ, which keeps
    y near D and the backward pass near the hard sample's. Bits are the two-class case with logits
    (0, φ): z = max(φ, κ) if b = 1, min(φ, −κ) if b = 0, y = σ((φ + stopgrad(z − φ))/τ).

    Biased (a straight-through estimator: the Jacobian of a deterministic relaxation, not of the
    distribution). Keys ``temperature`` τ > 0 and ``gap`` κ > 0 (GST-1.0 is the paper's default).
    Needs the relaxed cost and a binary or categorical latent. The backward pass uses no noise: the
    estimate is a function of the hard sample alone. cost_evals = n_samples.
    """

    name = "gapped_st"
    unbiased = False
    requires = ("has_relaxed_cost",)

    def __init__(self, temperature: Any = 0.5, gap: Any = 1.0) -> None:
        super().__init__(temperature=temperature, gap=gap)
        self.temperature = temperature_value(temperature)
        self.gap = positive_float("gap", gap)

    def why_not(self, problem: Problem, n_samples: int) -> str | None:
        return straight_through_reason(self.name, problem) or super().why_not(problem, n_samples)

    def surrogate(self, problem: Problem, params: Params, noise: Tensor) -> Tensor:
        hard = problem.sample(detached(params), noise)  # (S, *event): the problem's own sample
        logits = problem.logits(params)  # (*latent) or (*variables, K)
        constant = logits.detach()
        if problem.binary_latent:
            gapped = gapped_bit_logits(constant, hard, self.gap)  # (S, *latent)
            relaxed = torch.sigmoid((logits + (gapped - constant)) / self.temperature)
        else:
            gapped = gapped_logits(constant, hard, self.gap)  # (S, *variables, K)
            relaxed = torch.softmax((logits + (gapped - constant)) / self.temperature, -1)
        straight_through = hard + relaxed - relaxed.detach()
        return problem.relaxed_cost(params, straight_through).mean()
