"""The reparameterization (pathwise) estimator."""

from __future__ import annotations

from torch import Tensor

from bench.estimators.base import Estimator
from bench.problems.base import Params, Problem


class Pathwise(Estimator):
    """Reparameterization / pathwise derivative (Kingma & Welling 2014; Rezende et al. 2014).

    ĝ = (1/S) Σ_s ∇θ f(θ, g(θ, ε_s)),  ε_s ~ p(ε) i.i.d., x = g(θ, ε) ~ p(x; θ).

    Unbiased for f differentiable in x (almost everywhere, with integrable derivatives); needs a
    reparameterizable distribution (``has_rsample``).
    """

    name = "pathwise"
    unbiased = True
    requires = ("has_rsample",)

    def surrogate(self, problem: Problem, params: Params, noise: Tensor) -> Tensor:
        return problem.cost(params, problem.rsample(params, noise)).mean()
