"""The score-function (REINFORCE) estimator."""

from __future__ import annotations

from torch import Tensor

from estimators.base import Estimator, detached, score_function_surrogate
from problems.base import Params, Problem


class Reinforce(Estimator):
    """Score function / REINFORCE / likelihood ratio (Williams 1992; Glynn 1990).

    ĝ = (1/S) Σ_s [ ∇θ f(θ, x_s) + f(θ, x_s) ∇θ log p(x_s; θ) ],  x_s ~ p(·; θ) i.i.d.

    The mean of S single-sample terms. Unbiased whenever p is differentiable in θ; needs nothing
    of f (a black box is fine). See Mohamed et al. 2020, "Monte Carlo Gradient Estimation in
    Machine Learning", §4.
    """

    name = "reinforce"
    unbiased = True

    def surrogate(self, problem: Problem, params: Params, noise: Tensor) -> Tensor:
        x = problem.sample(detached(params), noise)
        cost = problem.cost(params, x)  # (S,)
        return score_function_surrogate(cost, problem.log_prob(params, x), cost)
