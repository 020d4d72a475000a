"""REINFORCE with the variance-minimizing constant baseline, computed exactly by enumeration."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.func import grad, jacrev, vmap

from bench.estimators.base import Estimator, FitReport, NoiseSource, detached
from bench.problems.base import Params, Problem


def optimal_baselines(problem: Problem, params: Params) -> Params:
    """b*ᵢ = E[(f sᵢ + ∂ᵢf) sᵢ] / E[sᵢ²], sᵢ = ∂ᵢ log p(x; θ), by enumerating every outcome.

    With f independent of θ (∂ᵢf = 0, every enumerable problem so far) this is the textbook
    E[f sᵢ²] / E[sᵢ²] (Weaver & Tao 2001; Greensmith et al. 2004). A parameter that log p does
    not depend on (E[sᵢ²] = 0) gets b*ᵢ = 0: its score term vanishes whatever the baseline.
    Returns {name: (*shape)} in params' dtype (float64 here).
    """
    outcomes = problem.enumerate_outcomes()  # (M, *event)
    weights = torch.exp(problem.log_prob(params, outcomes))  # (M,)

    def cost_of(params_: Params, x: Any) -> Tensor:
        return problem.cost(params_, x)

    def log_prob_of(params_: Params, x: Any) -> Tensor:
        return problem.log_prob(params_, x)

    scores = vmap(grad(log_prob_of), in_dims=(None, 0))(params, outcomes)  # {name: (M, *shape)}
    direct = vmap(grad(cost_of), in_dims=(None, 0))(params, outcomes)  # {name: (M, *shape)}
    costs = problem.cost(params, outcomes)  # (M,)
    baselines = {}
    for name, score in scores.items():  # a loop over parameter tensors, not dimensions
        w = weights.reshape(-1, *([1] * (score.ndim - 1)))  # (M, 1, ...)
        c = costs.reshape(w.shape)
        numerator = (w * (c * score + direct[name]) * score).sum(0)  # (*shape)
        denominator = (w * score**2).sum(0)  # (*shape)
        safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
        baselines[name] = torch.where(denominator > 0, numerator / safe, torch.zeros_like(numerator))
    return baselines


class OracleBaseline(Estimator):
    """REINFORCE with the exact variance-minimizing constant baseline per dimension (a reference row).

    References: Weaver & Tao 2001, "The optimal reward baseline for gradient-based reinforcement
    learning"; Greensmith, Bartlett & Baxter 2004, JMLR. b* is computed exactly by enumeration:

      ĝᵢ = (1/S) Σ_s [ ∂ᵢ f(θ, x_s) + (f_s − b*ᵢ) ∂ᵢ log p(x_s; θ) ],
      b*ᵢ = E[f (∂ᵢ log p)²] / E[(∂ᵢ log p)²]

    (E[(f ∂ᵢ log p + ∂ᵢ f) ∂ᵢ log p] / E[(∂ᵢ log p)²] in general: the minimizer of the variance
    of one term, which equals the textbook formula when f does not depend on θ directly).

    A **reference row**, not a practical estimator: b* needs the exact expectations over every
    outcome, which a real problem does not offer. It shows the best that any constant (per
    dimension) baseline can do, the floor for moving-average, learned-constant and similar
    baselines; sample-dependent baselines (rloo) and control variates can beat it.

    Unbiased: b* is a constant and E[∂ᵢ log p] = 0. Requires ``has_enumerate_support``. The fit
    stage computes b* (no optimizer steps, no noise, fitted = {"baseline": [b*ᵢ per dimension]});
    cost_evals = n_samples (the enumeration in the fit stage is not counted).
    """

    name = "oracle_baseline"
    unbiased = True
    requires = ("has_enumerate_support",)
    has_fit = True

    def __init__(self) -> None:
        super().__init__()
        self._fitted: tuple[Problem, Params] | None = None

    def why_not(self, problem: Problem, n_samples: int) -> str | None:
        reason = super().why_not(problem, n_samples)
        if reason is not None and not problem.has_enumerate_support:
            return (
                f"{self.name} computes its baseline by enumerating every outcome "
                f"(has_enumerate_support), which {problem.name} cannot"
            )
        return reason

    def baselines(self, problem: Problem) -> Params:
        """b* for ``problem`` at its parameter point, float64; computed once per problem."""
        if self._fitted is None or self._fitted[0] is not problem:
            self._fitted = (problem, optimal_baselines(problem, problem.params()))
        return self._fitted[1]

    def fit(self, problem: Problem, params: Params, draw_noise: NoiseSource) -> FitReport:
        baselines = self.baselines(problem)
        flat = torch.cat([value.reshape(-1) for value in baselines.values()])
        return FitReport(steps=0, fitted={"baseline": flat.tolist()})

    def estimate(self, problem: Problem, params: Params, noise: Tensor) -> Params:
        baselines = {name: value.to(params[name].dtype) for name, value in self.baselines(problem).items()}

        def one_estimate(params_: Params, noise_one: Tensor) -> Params:
            x = problem.sample(detached(params_), noise_one)

            def terms(p: Params) -> Tensor:
                cost = problem.cost(p, x)  # (S,)
                log_prob = problem.log_prob(p, x)  # (S,)
                # gradients: mean_s[∂f_s + f_s ∂log p_s] and mean_s[∂log p_s]
                return torch.stack([(cost + cost.detach() * log_prob).mean(), log_prob.mean()])

            jacobian = jacrev(terms)(params_)  # {name: (2, *shape)}: one forward, two backward rows
            return {name: value[0] - baselines[name] * value[1] for name, value in jacobian.items()}

        return vmap(one_estimate, in_dims=(None, 0))(params, noise)
