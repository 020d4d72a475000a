"""The score-function (REINFORCE) estimator."""

from __future__ import annotations

from torch import Tensor

from bench.estimators.base import Estimator, detached, score_function_surrogate
from bench.estimators.fast import mean_weighted_score, uses_closed_form
from bench.problems.base import Params, Problem


class Reinforce(Estimator):
    """Score function / REINFORCE / likelihood ratio (Williams 1992; Glynn 1990).

    ĝ = (1/S) Σ_s [ ∇θ f(θ, x_s) + f(θ, x_s) ∇θ log p(x_s; θ) ],  x_s ~ p(·; θ) i.i.d.

    The mean of S single-sample terms. Unbiased whenever p is differentiable in θ; needs nothing
    of f (a black box is fine). See Mohamed et al. 2020, "Monte Carlo Gradient Estimation in
    Machine Learning", §4.

    On a problem with a closed-form score and a cost free of θ (``has_score``,
    ``cost_depends_on_params = False``) the batch is computed as (1/S) Σ_s f_s score(x_s) directly
    (``estimators.fast``); ``closed_form = False`` on an instance forces autograd.
    """

    name = "reinforce"
    unbiased = True
    plain_model_gradient = True  # score_function_surrogate: ∇ of params only in f is mean_s ∇f_s
    closed_form = True  # take the closed-form path where it applies (not a config key)

    def estimate(self, problem: Problem, params: Params, noise: Tensor) -> Params:
        if not uses_closed_form(self, problem, Reinforce):
            return super().estimate(problem, params, noise)
        x = problem.sample(detached(params), noise)  # batch (E, S)
        cost = problem.cost(params, x)  # (E, S)
        return mean_weighted_score(problem, params, x, cost)

    def surrogate(self, problem: Problem, params: Params, noise: Tensor) -> Tensor:
        cost, log_prob = problem.sampled_cost_and_log_prob(params, noise)  # (S,) each
        return score_function_surrogate(cost, log_prob, cost)
