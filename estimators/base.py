"""The estimator interface: (problem, params, noise) → a batch of per-estimate gradients.

Most estimators are written as a *surrogate*: a scalar function of the parameters built from one
estimate's noise (n_samples draws) whose gradient is the estimate. ``estimate`` turns that into a
whole batch of independent estimates in one vectorized pass with
``torch.func.vmap(torch.func.grad(surrogate))`` (the per-sample-gradient recipe), so there is no
Python loop over estimates or samples. ``.detach()`` inside a surrogate is the stop-gradient.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor
from torch.func import grad, vmap

from bench.errors import ConfigError, NotApplicable
from problems.base import Params, Problem

REGISTRY: dict[str, type[Estimator]] = {}


class Estimator:
    """Base class. Subclasses set ``name``, ``unbiased``, ``requires`` and implement ``surrogate``
    (or override ``estimate``).

    Class attributes:
      unbiased: E[estimate] = ∇θ E[f] exactly (declared; the conformance tests check it).
      requires: problem capability flags that must be true (see ``problems.base.Problem``).
      min_samples: the smallest n_samples the estimator is defined for.
    """

    name: ClassVar[str] = ""
    unbiased: ClassVar[bool] = True
    requires: ClassVar[tuple[str, ...]] = ()
    min_samples: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
                raise TypeError(f"estimator name {cls.name!r} registered twice")
            REGISTRY[cls.name] = cls

    def __init__(self, **config: Any) -> None:
        self._config = config

    def config(self) -> dict[str, Any]:
        """The config values this instance was built from (for tables and cell ids)."""
        return dict(self._config)

    def cost_evals(self, n_samples: int) -> int:
        """How many evaluations of the cost f one estimate uses."""
        return n_samples

    def why_not(self, problem: Problem, n_samples: int) -> str | None:
        """None if the estimator applies to ``problem`` at ``n_samples``, else the reason."""
        missing = [flag for flag in self.requires if not getattr(problem, flag)]
        if missing:
            return f"{self.name} requires {' and '.join(missing)}, which {problem.name} lacks"
        if n_samples < self.min_samples:
            return f"{self.name} needs n_samples >= {self.min_samples}, got {n_samples}"
        return None

    def check(self, problem: Problem, n_samples: int) -> None:
        reason = self.why_not(problem, n_samples)
        if reason is not None:
            raise NotApplicable(reason)

    def surrogate(self, problem: Problem, params: Params, noise: Tensor) -> Tensor:
        """A scalar whose gradient in ``params`` is one estimate; noise: (n_samples, *event)."""
        raise NotImplementedError

    def estimate(self, problem: Problem, params: Params, noise: Tensor) -> Params:
        """A batch of independent estimates: noise (batch, n_samples, *event) → {name: (batch, *shape)}."""

        def one_estimate(params_: Params, noise_one: Tensor) -> Tensor:
            return self.surrogate(problem, params_, noise_one)

        return vmap(grad(one_estimate), in_dims=(None, 0))(params, noise)


def score_function_surrogate(cost: Tensor, log_prob: Tensor, weight: Tensor) -> Tensor:
    """mean_s [ f_s + stopgrad(w_s) · log p_s ]: its gradient is mean_s [∇f_s + w_s ∇log p_s].

    cost, log_prob, weight: (n_samples,). The ∇f_s term carries any direct dependence of the cost
    on θ (zero for most problems; −log q in an ELBO).
    """
    return (cost + weight.detach() * log_prob).mean()


def detached(params: Params) -> Params:
    return {name: value.detach() for name, value in params.items()}


def exact_batch(problem: Problem, params: Params, batch: int) -> Params:
    """The exact gradient repeated ``batch`` times, in float64."""
    exact = problem.exact()
    return {name: value.expand(batch, *value.shape) for name, value in exact.items()}


def temperature_value(temperature: Any) -> float:
    try:
        value = float(temperature)
    except (TypeError, ValueError) as error:
        raise ConfigError("estimator.temperature", f"expected a number, got {temperature!r}") from error
    if not value > 0 or value == float("inf"):
        raise ConfigError("estimator.temperature", f"must be a finite number > 0, got {temperature!r}")
    return value
