"""REINFORCE with the leave-one-out baseline."""

from __future__ import annotations

from torch import Tensor

from estimators.base import Estimator, detached, score_function_surrogate
from problems.base import Params, Problem


class ReinforceLeaveOneOut(Estimator):
    """Score function with the leave-one-out baseline (Kool et al. 2019, "Buy 4 REINFORCE samples,
    get a baseline for free!"; Mnih & Rezende 2016).

    ĝ = (1/S) Σ_s [ ∇θ f(θ, x_s) + (f_s − b_s) ∇θ log p(x_s; θ) ],  b_s = (1/(S−1)) Σ_{j≠s} f_j.

    b_s is independent of x_s, so the baseline adds no bias; needs S ≥ 2.
    """

    name = "rloo"
    unbiased = True
    min_samples = 2

    def surrogate(self, problem: Problem, params: Params, noise: Tensor) -> Tensor:
        x = problem.sample(detached(params), noise)
        cost = problem.cost(params, x)  # (S,)
        n_samples = cost.shape[0]
        baseline = (cost.sum() - cost) / (n_samples - 1)  # (S,)
        return score_function_surrogate(cost, problem.log_prob(params, x), cost - baseline)
