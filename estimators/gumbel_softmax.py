"""The Gumbel-softmax (Concrete) relaxation estimator."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from bench.estimators.base import Estimator, temperature_value
from bench.problems.base import Params, Problem


class GumbelSoftmax(Estimator):
    """Gumbel-softmax / Concrete relaxation (Jang et al. 2017; Maddison et al. 2017).

    ĝ = (1/S) Σ_s ∇θ f̃(θ, y_s),  y_s = softmax((θ + g_s)/τ), g_s ~ Gumbel i.i.d.
    (binary: y = σ((θ + logistic noise)/τ)), with f̃ the problem's relaxed cost.

    Biased: it differentiates E[f̃(y)], not E[f(x)]; the bias shrinks as τ → 0 while the
    variance grows. Key ``temperature`` (τ > 0).
    """

    name = "gumbel_softmax"
    unbiased = False
    requires = ("has_relaxed_cost",)

    def __init__(self, temperature: Any = 0.5) -> None:
        super().__init__(temperature=temperature)
        self.temperature = temperature_value(temperature)

    def surrogate(self, problem: Problem, params: Params, noise: Tensor) -> Tensor:
        relaxed = problem.relaxed_sample(params, noise, self.temperature)
        return problem.relaxed_cost(params, relaxed).mean()
