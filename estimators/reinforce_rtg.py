"""REINFORCE with reward-to-go: each action's score weighted only by the rewards that follow it."""

from __future__ import annotations

import torch
from torch import Tensor

from bench.estimators.base import Estimator, detached
from bench.estimators.fast import mean_weighted_step_score, uses_closed_form
from bench.problems.base import Params, Problem


def reward_to_go(step_rewards: Tensor) -> Tensor:
    """R_t = Σ_{t' ≥ t} step_rewards_{t'} along the last axis: (..., T) → (..., T)."""
    return step_rewards.flip(-1).cumsum(-1).flip(-1)


def reward_to_go_by_matmul(step_rewards: Tensor) -> Tensor:
    """``reward_to_go`` as one matrix product with the (T, T) lower-triangular ones, [t', t] = 1 when
    t' ≥ t: the same sums up to rounding (exactly the same for integer rewards), and faster than
    flip-cumsum-flip over a short last axis on a large batch. (..., T) → (..., T)."""
    steps = step_rewards.shape[-1]
    later = torch.ones(steps, steps, dtype=step_rewards.dtype, device=step_rewards.device).tril()
    return step_rewards @ later


class ReinforceRewardToGo(Estimator):
    """Score function with reward-to-go (Williams 1992; Sutton et al. 2000, the policy gradient
    theorem; the "G_t" form of REINFORCE in Sutton & Barto 2018, §13.3).

    For a sequential problem with f(τ) = Σ_t γ^t r_t and log p(τ; θ) = Σ_t log π(a_t|s_t) + const:

      ĝ = (1/S) Σ_s [ ∇θ f(θ, τ_s) + Σ_t ( Σ_{t' ≥ t} γ^{t'} r_{s,t'} ) ∇θ log π(a_{s,t}|s_{s,t}) ].

    Rewards earned before a_t are fixed by the history up to s_t, and E[∇ log π(a_t|s_t) | s_t] = 0,
    so dropping them from REINFORCE's weight f(τ) keeps it unbiased and lowers the variance.

    The weight is Σ_{t' ≥ t} γ^{t'} r_{t'} = γ^t G_t (``problem.step_rewards`` already carries the
    γ^{t'}), which is unbiased for ∇θ E[Σ_t γ^t r_t]; it equals G_t when γ = 1. The common form
    with G_t = Σ_{t' ≥ t} γ^{t'−t} r_{t'} alone drops γ^t and is biased for γ < 1 (Thomas 2014,
    "Bias in natural actor-critic algorithms"; Nota & Thomas 2020).

    On a problem with a closed-form per-step score and a return free of θ the batch is computed
    as (1/S) Σ_s Σ_t R_st score_t(τ_s) directly (``estimators.fast``); ``closed_form = False`` on an
    instance forces autograd.
    """

    name = "reinforce_rtg"
    unbiased = True
    requires = ("sequential",)
    closed_form = True  # take the closed-form path where it applies (not a config key)

    def estimate(self, problem: Problem, params: Params, noise: Tensor) -> Params:
        if not uses_closed_form(self, problem, ReinforceRewardToGo):
            return super().estimate(problem, params, noise)
        x = problem.sample(detached(params), noise)  # batch (E, S)
        weights = reward_to_go_by_matmul(problem.step_rewards(params, x))  # (E, S, T)
        return mean_weighted_step_score(problem, params, x, weights)

    def surrogate(self, problem: Problem, params: Params, noise: Tensor) -> Tensor:
        x = problem.sample(detached(params), noise)
        cost = problem.cost(params, x)  # (S,)
        step_log_probs = problem.step_log_probs(params, x)  # (S, T)
        weights = reward_to_go(problem.step_rewards(params, x)).detach()  # (S, T)
        return (cost + (weights * step_log_probs).sum(-1)).mean()
