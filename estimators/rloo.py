"""REINFORCE with the leave-one-out baseline."""

from __future__ import annotations

from torch import Tensor

from bench.estimators.base import Estimator, detached, score_function_surrogate
from bench.estimators.fast import scaled, uses_closed_form
from bench.problems.base import Params, Problem


class ReinforceLeaveOneOut(Estimator):
    """Score function with the leave-one-out baseline (Kool et al. 2019, "Buy 4 REINFORCE samples,
    get a baseline for free!"; Mnih & Rezende 2016).

    ĝ = (1/S) Σ_s [ ∇θ f(θ, x_s) + (f_s − b_s) ∇θ log p(x_s; θ) ],  b_s = (1/(S−1)) Σ_{j≠s} f_j.

    b_s is independent of x_s, so the baseline adds no bias; needs S ≥ 2.

    On a problem with a closed-form score and a cost free of θ the batch is computed as
    (1/S) Σ_s (f_s − b_s) score(x_s) directly (``estimators.fast``); ``closed_form = False`` on an
    instance forces autograd.
    """

    name = "rloo"
    unbiased = True
    plain_model_gradient = True  # score_function_surrogate: ∇ of params only in f is mean_s ∇f_s
    min_samples = 2
    closed_form = True  # take the closed-form path where it applies (not a config key)

    def estimate(self, problem: Problem, params: Params, noise: Tensor) -> Params:
        if not uses_closed_form(self, problem, ReinforceLeaveOneOut):
            return super().estimate(problem, params, noise)
        x = problem.sample(detached(params), noise)  # batch (E, S)
        cost = problem.cost(params, x)  # (E, S)
        # f_s − b_s = S/(S − 1) (f_s − f̄), so (1/S) Σ_s (f_s − b_s) score_s = Σ_s (f_s − f̄) score_s / (S − 1)
        centred = cost - cost.mean(-1, keepdim=True)  # (E, S)
        return scaled(problem.weighted_score(params, x, centred), 1.0 / (cost.shape[-1] - 1))

    def surrogate(self, problem: Problem, params: Params, noise: Tensor) -> Tensor:
        cost, log_prob = problem.sampled_cost_and_log_prob(params, noise)  # (S,) each
        n_samples = cost.shape[0]
        baseline = (cost.sum() - cost) / (n_samples - 1)  # (S,)
        return score_function_surrogate(cost, log_prob, cost - baseline)
