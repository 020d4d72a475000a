"""The straight-through Gumbel-softmax estimator."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from bench.estimators.base import Estimator, detached, temperature_value
from bench.problems.base import Params, Problem


class StraightThroughGumbelSoftmax(Estimator):
    """Straight-through Gumbel-softmax (Jang et al. 2017, §2.2; Bengio et al. 2013).

    ĝ = (1/S) Σ_s ∂f̃/∂y |_{y = x_s} · ∂y_s/∂θ,  x_s = hard sample, y_s = softmax((θ + g_s)/τ)
    with shared Gumbel noise g_s: the forward pass uses the hard sample x_s (so the cost is
    exact), the backward pass the relaxed sample's Jacobian. Implemented as
    y = x + y_soft − stopgrad(y_soft). Biased. Key ``temperature`` (τ > 0).
    """

    name = "st_gumbel_softmax"
    unbiased = False
    requires = ("has_relaxed_cost",)

    def __init__(self, temperature: Any = 0.5) -> None:
        super().__init__(temperature=temperature)
        self.temperature = temperature_value(temperature)

    def surrogate(self, problem: Problem, params: Params, noise: Tensor) -> Tensor:
        hard = problem.sample(detached(params), noise)
        soft = problem.relaxed_sample(params, noise, self.temperature)
        straight_through = hard + soft - soft.detach()
        return problem.relaxed_cost(params, straight_through).mean()
