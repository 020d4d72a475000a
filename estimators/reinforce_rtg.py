"""REINFORCE with reward-to-go: each action's score weighted only by the rewards that follow it."""

from __future__ import annotations

from torch import Tensor

from estimators.base import Estimator, detached
from problems.base import Params, Problem


def reward_to_go(step_rewards: Tensor) -> Tensor:
    """R_t = Σ_{t' ≥ t} step_rewards_{t'} along the last axis: (..., T) → (..., T)."""
    return step_rewards.flip(-1).cumsum(-1).flip(-1)


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
    """

    name = "reinforce_rtg"
    unbiased = True
    requires = ("sequential",)

    def surrogate(self, problem: Problem, params: Params, noise: Tensor) -> Tensor:
        x = problem.sample(detached(params), noise)
        cost = problem.cost(params, x)  # (S,)
        step_log_probs = problem.step_log_probs(params, x)  # (S, T)
        weights = reward_to_go(problem.step_rewards(params, x)).detach()  # (S, T)
        return (cost + (weights * step_log_probs).sum(-1)).mean()
