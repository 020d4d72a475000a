"""The closed-form path of the score-function estimators (reinforce, rloo, reinforce_rtg).

On a problem that declares ``has_score`` (∇θ log p(x; θ) in closed form) and
``cost_depends_on_params = False`` (∇θ f = 0), an estimate (1/S) Σ_s [∇θ f(x_s) + w_s ∇θ log p(x_s)]
is a weighted sum of closed-form scores: the whole batch of estimates is a few tensor operations on
(estimates, samples, ...) arrays, with no autograd graph and no per-estimate ``vmap(grad)``. The
samples are the problem's own ``sample(params, noise)`` on the same noise, so common random numbers
hold exactly; only the rounding of the gradient arithmetic differs from the autograd path.

Everything else (a problem without the flags, such as the VAEs, whose cost depends on θ through
log q; an estimator subclass that overrides ``surrogate``; ``closed_form = False`` on an instance)
takes the autograd path, ``Estimator.estimate``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from bench.estimators.base import Estimator
from bench.problems.base import Params, Problem


def uses_closed_form(estimator: Estimator, problem: Problem, owner: type[Estimator]) -> bool:
    """Whether ``estimator`` may take the closed-form path on ``problem``: the problem has a
    closed-form score and a cost free of θ, the instance has not turned the path off
    (``closed_form = False``), and its class still uses ``owner``'s surrogate (a subclass that
    changes the surrogate, such as a deliberately biased test variant, must be estimated from it)."""
    surrogate: Callable[..., Tensor] = type(estimator).surrogate
    return (
        getattr(estimator, "closed_form", True)
        and problem.has_score
        and not problem.cost_depends_on_params
        and surrogate is owner.surrogate
    )


def scaled(grads: Params, factor: float) -> Params:
    """Every gradient times ``factor`` (skipped when it is 1): {name: (E, *shape)}. The mean over
    samples is applied here, to the (E, *shape) results, not to the larger (E, S, ...) weights."""
    if factor == 1.0:
        return grads
    return {name: value * factor for name, value in grads.items()}  # a few named tensors


def mean_weighted_score(problem: Problem, params: Params, x: object, weights: Tensor) -> Params:
    """(1/S) Σ_s w_s ∇θ log p(x_s; θ) per estimate: weights (E, S) → {name: (E, *shape)}."""
    return scaled(problem.weighted_score(params, x, weights), 1.0 / weights.shape[-1])


def mean_weighted_step_score(problem: Problem, params: Params, x: object, step_weights: Tensor) -> Params:
    """(1/S) Σ_s Σ_t w_st ∇θ log π(a_t | s_t) per estimate: step_weights (E, S, T) → {name: (E, *shape)}."""
    return scaled(problem.weighted_step_score(params, x, step_weights), 1.0 / step_weights.shape[-2])
