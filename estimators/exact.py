"""The exact gradient as an estimator: the zero-variance reference row."""

from __future__ import annotations

from torch import Tensor

from bench.estimators.base import Estimator, exact_batch
from bench.problems.base import Params, Problem


class Exact(Estimator):
    """ĝ = ∇θ E[f], computed by the problem without sampling (closed form or enumeration).

    Zero variance and zero bias by construction; its row checks the pipeline (a non-zero
    bias here means the statistics are broken) and anchors the plots. Uses no cost evaluations
    that depend on the noise.
    """

    name = "exact"
    unbiased = True
    requires = ("has_exact_gradient",)  # skipped on a problem whose bias is measured against an estimate

    def cost_evals(self, n_samples: int, problem: Problem | None = None) -> int:
        return 0

    def estimate(self, problem: Problem, params: Params, noise: Tensor) -> Params:
        return exact_batch(problem, params, noise.shape[0])
