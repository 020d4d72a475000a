"""REINFORCE leave-one-out with a second, Taylor-based control variate (Titsias & Shi 2022)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.func import grad

from bench.estimators.base import (
    Estimator,
    FitReport,
    NoiseSource,
    per_estimate_gradients,
    positive_float,
    positive_int,
)
from bench.estimators.rebar import fit_state, score_term, warm_problem_caches
from bench.problems.base import Params, Problem


def double_cv_surrogate(problem: Problem, params: Params, noise: Tensor, alpha: Tensor) -> Tensor:
    """A scalar whose θ-gradient is one double-CV estimate (formula in ``DoubleCV``'s docstring).

    noise: (S, *latent) uniforms, the problem's own; alpha: a scalar.
    """
    logits = problem.logits(params)  # (*latent)
    probs = torch.sigmoid(logits)  # μ = E[b]
    b = problem.hard(problem.preimage(params, noise))  # (S, *latent): the problem's own sample

    def relaxed_total(y: Tensor) -> tuple[Tensor, Tensor]:
        cost = problem.relaxed_cost(params, y)  # (S,): equals f(θ, b) at the hard sample
        return cost.sum(), cost

    # ∇_b f at the discrete points and f itself from one evaluation (plus its backward pass)
    grad_b, cost = grad(relaxed_total, has_aux=True)(b)  # (S, *latent), (S,)
    n_samples = b.shape[0]
    others_grad = (grad_b.sum(0, keepdim=True) - grad_b) / (n_samples - 1)  # ḡ_{−k}: (S, *latent)
    taylor = alpha * (others_grad * (b - probs)).reshape(n_samples, -1).sum(1)  # a_k: (S,)
    shaped = cost + taylor  # F_k = f_k + a_k
    weight = shaped - (shaped.sum() - shaped) / (n_samples - 1)  # F_k − mean_{j≠k} F_j
    log_prob = problem.log_prob(params, b)  # (S,)
    # The expectation correction α E[∇f(b)] ⊙ μ(1 − μ), estimated by the average gradient at the
    # samples; applied in logit space: its θ-gradient is −J_φᵀ (α ḡ ⊙ μ(1 − μ)).
    correction = alpha * grad_b.mean(0) * probs * (1.0 - probs)  # (*latent)
    return cost.mean() + score_term(weight, log_prob).mean() - score_term(correction, logits).sum()


class DoubleCV(Estimator):
    """Double control variates (Titsias & Shi 2022, "Double control variates for gradient estimation
    in discrete latent variable models", AISTATS): REINFORCE leave-one-out whose learning signal gets
    a second, Taylor-based control variate scaled by α, for independent bits b ~ Bernoulli(σ(φ)).

    ĝ = (1/S) Σ_k [ ∇θ f(θ, b_k) + (F_k − (1/(S−1)) Σ_{j≠k} F_j) ∇θ log p(b_k) ] − α J_φᵀ(ḡ ⊙ μ(1 − μ)),
        F_k = f(b_k) + α ḡ_{−k}ᵀ(b_k − μ),
        ḡ_{−k} = (1/(S−1)) Σ_{j≠k} ∇_b f(b_j),   ḡ = (1/S) Σ_k ∇_b f(b_k),

    μ = σ(φ), J_φ = ∂φ/∂θ, ∇_b f the gradient of the relaxed cost at the discrete sample (the
    reference code's ``grad_b``; one backward pass at a point f is already evaluated at).

    Unbiased for every α: ḡ_{−k} is independent of b_k and E[(b − μ)(b − μ)ᵀ] = diag μ(1 − μ), so
    E[α ḡ_{−k}ᵀ(b_k − μ) ∇_φ log p(b_k)] = α E[∇_b f] ⊙ μ(1 − μ), which the last term removes
    exactly (ḡ has the same mean); each a_j (j ≠ k) in the leave-one-out average has mean zero over
    b_j given every other sample, and b_j does not enter ∇log p(b_k), so those terms vanish in
    expectation. (The tests check this by enumeration.) α = 0 gives rloo.

    α starts at 0 (as in the reference code) and is fitted by Adam on the single-sample variance
    objective (``train_steps``, ``lr``), then frozen. Needs S ≥ 2 and the relaxed cost (for ∇_b f);
    one cost evaluation (and one gradient) per sample.
    """

    name = "double_cv"
    unbiased = True
    requires = ("binary_latent", "has_relaxed_cost")
    min_samples = 2
    has_fit = True

    def __init__(self, train_steps: Any = 200, lr: Any = 5e-2) -> None:
        super().__init__(train_steps=train_steps, lr=lr)
        self.train_steps = positive_int("train_steps", train_steps)
        self.lr = positive_float("lr", lr)
        self.alpha: float = 0.0  # the fitted α (0 until ``fit``)

    def current_state(self, params: Params) -> Params:
        """{"alpha": α} in the params' dtype."""
        like = next(iter(params.values()))
        return {"alpha": torch.tensor(self.alpha, dtype=like.dtype, device=like.device)}

    def surrogate_with(self, problem: Problem, params: Params, noise: Tensor, state: Params) -> Tensor:
        return double_cv_surrogate(problem, params, noise, state["alpha"])

    def estimate(self, problem: Problem, params: Params, noise: Tensor) -> Params:
        warm_problem_caches(problem, params, noise)
        return per_estimate_gradients(self.surrogate_with, problem, params, noise, self.current_state(params))

    def fit(self, problem: Problem, params: Params, draw_noise: NoiseSource) -> FitReport:
        self.alpha = 0.0
        if self.train_steps > 0:
            state = fit_state(self.surrogate_with, problem, params, draw_noise, self.current_state(params),
                              steps=self.train_steps, lr=self.lr)  # fmt: skip
            self.alpha = float(state["alpha"])
        return FitReport(self.train_steps, {"alpha": self.alpha})
