"""The estimator interface: (problem, params, noise) → a batch of per-estimate gradients.

Most estimators are written as a *surrogate*: a scalar function of the parameters built from one
estimate's noise (n_samples draws) whose gradient is the estimate. ``estimate`` turns that into a
whole batch of independent estimates in one vectorized pass with
``torch.func.vmap(torch.func.grad(surrogate))`` (the per-sample-gradient recipe), so there is no
Python loop over estimates or samples. ``.detach()`` inside a surrogate is the stop-gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.func import grad, vmap
from torch.utils._pytree import tree_leaves, tree_map

from bench.component import bound_config, register
from bench.errors import ConfigError, NotApplicable
from bench.problems.base import Params, Problem, detached  # noqa: F401 (re-exported: bench.detached, estimators)

REGISTRY: dict[str, type[Estimator]] = {}
Noise = Any  # a Tensor (batch, n_samples, *event) or a tuple of them: whatever ``make_noise`` returns
NoiseSource = Callable[[int], Noise]  # size → noise for ``size`` estimates


@dataclass
class FitReport:
    """What a fit stage did: optimizer steps taken and the fitted scalars worth a table column."""

    steps: int = 0
    fitted: dict[str, Any] = field(default_factory=dict)


class Estimator:
    """Base class. Subclasses set ``name``, ``unbiased``, ``requires`` and implement ``surrogate``
    (or override ``estimate``).

    Class attributes:
      unbiased: E[estimate] = ∇θ E[f] exactly (declared; the conformance tests check it).
      requires: problem capability flags that must be true (see ``problems.base.Problem``).
      min_samples: the smallest n_samples the estimator is defined for.
      has_fit: the estimator is fitted before measuring (``fit``), on its own noise stream; the
        fitted state is then frozen, so the measured estimates stay i.i.d.
      plain_model_gradient: see below (``bench train``'s one-pass model gradient).
    """

    name: ClassVar[str] = ""
    unbiased: ClassVar[bool] = True
    requires: ClassVar[tuple[str, ...]] = ()
    min_samples: ClassVar[int] = 1
    has_fit: ClassVar[bool] = False
    # The estimate's gradient of parameters that enter only the cost (a VAE's decoder, passed in
    # ``params`` by ``bench train``) is the plain sampled one, the mean of ∇f(θ, x) over the samples x
    # of ``model_samples``: true of surrogates mean_s [f_s + stopgrad(w_s) log p_s] and of the
    # antithetic pairs' mean over both members. bench train then trains the model from this one pass
    # (tested equal to ``Problem.model_gradient`` at ``model_samples``).
    plain_model_gradient: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            register(REGISTRY, "estimator", cls)

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        instance = super().__new__(cls)
        # Every constructor keyword with its default applied, whether or not the subclass hands
        # them to this base class: config() and cell ids never miss a key.
        instance._bound_config = bound_config(cls, args, kwargs)
        return instance

    def __init__(self, **config: Any) -> None:
        self._config = config

    def config(self) -> dict[str, Any]:
        """The config this instance was built from: every constructor keyword (defaults applied),
        as the subclass normalized it where it passed it to this base class (tables, cell ids)."""
        return {**getattr(self, "_bound_config", {}), **getattr(self, "_config", {})}

    def cost_evals(self, n_samples: int, problem: Problem | None = None) -> int:
        """How many evaluations of the cost f (relaxed f̃ included) one estimate spends on
        ``problem``. Some counts depend on the problem (mvd: 4·D·n_samples); without one, an
        estimator reports its count per latent coordinate."""
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

    def make_noise(
        self,
        problem: Problem,
        generator: torch.Generator,
        aux_generator: torch.Generator,
        batch: tuple[int, ...],
        dtype: torch.dtype,
    ) -> Noise:
        """The noise ``estimate`` consumes for ``batch`` = (estimates, n_samples).

        The problem's own noise must come from ``generator``, so that every estimator sees the same
        samples (common random numbers); an estimator that needs more randomness (a conditional
        z̃, a coupled Weibull draw) draws it from ``aux_generator`` and returns a tuple.
        """
        return problem.noise(generator, batch, dtype)

    def model_samples(self, problem: Problem, params: Params, noise: Tensor) -> Tensor:
        """The samples from q_θ at which ``bench train`` takes the model's plain gradient for one
        estimate whose problem noise is ``noise`` (n_samples, *event): the problem's own samples of
        it, (n_samples, *sample). An estimator that evaluates f at further samples from q_θ made
        from the same noise (ARM's and DisARM's antithetic partners) gives those too."""
        return problem.sample(params, noise)

    def fit(self, problem: Problem, params: Params, draw_noise: NoiseSource) -> FitReport:
        """Fit the estimator's own parameters before measuring (``has_fit``); ``draw_noise(size)``
        gives noise for ``size`` estimates from a stream independent of the measurement's."""
        return FitReport()

    def surrogate(self, problem: Problem, params: Params, noise: Tensor) -> Tensor:
        """A scalar whose gradient in ``params`` is one estimate; noise: (n_samples, *event)."""
        raise NotImplementedError

    def estimate(self, problem: Problem, params: Params, noise: Tensor) -> Params:
        """A batch of independent estimates: noise (batch, n_samples, *event) → {name: (batch, *shape)}."""

        def one_estimate(params_: Params, noise_one: Tensor) -> Tensor:
            return self.surrogate(problem, params_, noise_one)

        if leading_size(noise) == 1:  # one estimate (a training step): plain autograd, ~20% faster there
            with torch.enable_grad():
                leaves = {name: value.detach().requires_grad_(True) for name, value in params.items()}
                value = one_estimate(leaves, tree_map(lambda leaf: leaf[0], noise))
                single = torch.autograd.grad(
                    value, list(leaves.values()), allow_unused=True, materialize_grads=True
                )
            return {name: g.unsqueeze(0) for name, g in zip(leaves, single, strict=True)}
        return vmap(grad(one_estimate), in_dims=(None, 0))(params, noise)


def leading_size(noise: Noise) -> int:
    """The number of estimates a batch of noise (a tensor or a tuple of them) holds."""
    return int(tree_leaves(noise)[0].shape[0])


def per_estimate_gradients(
    surrogate_with: Callable[..., Tensor], problem: Problem, params: Params, noise: Noise, state: Params
) -> Params:
    """vmap(grad) of ``surrogate_with(problem, params, noise_one, state)`` over the batch of noise,
    with the estimator's own parameters ``state`` as an explicit argument (so they can be trained
    through the estimates): {name: (batch, *shape)}."""

    def one_estimate(params_: Params, noise_one: Noise, state_: Params) -> Tensor:
        return surrogate_with(problem, params_, noise_one, state_)

    return vmap(grad(one_estimate), in_dims=(None, 0, None))(params, noise, state)


def fit_by_variance(
    surrogate_with: Callable[..., Tensor],
    problem: Problem,
    params: Params,
    draw_noise: NoiseSource,
    state: Params,
    *,
    steps: int,
    lr: float,
    batch: int = 64,
) -> Params:
    """Adam on the estimator's own parameters ``state`` minimizing mean_b ‖ĝ_b‖² over a batch of
    estimates: for an estimator whose mean does not depend on ``state`` (a control variate that
    keeps it unbiased), ∂E‖ĝ‖²/∂ψ = ∂Var[ĝ]/∂ψ (Grathwohl et al. 2018, §3.3; Tucker et al. 2017, §3.2).
    Vectorized like estimation; deterministic given ``draw_noise``. Returns the fitted state (detached).
    """

    def objective(state_: Params, noise: Noise) -> Tensor:
        grads = per_estimate_gradients(surrogate_with, problem, params, noise, state_)
        return sum((value**2).sum() for value in grads.values()) / batch

    leaves = {name: value.detach().clone().requires_grad_(True) for name, value in state.items()}
    optimizer = torch.optim.Adam(list(leaves.values()), lr=lr)
    gradient = grad(objective)
    for _ in range(steps):
        step_grads = gradient({k: v.detach() for k, v in leaves.items()}, draw_noise(batch))
        for name, leaf in leaves.items():
            leaf.grad = torch.nan_to_num(step_grads[name], nan=0.0, posinf=0.0, neginf=0.0)
        optimizer.step()
    return {name: leaf.detach() for name, leaf in leaves.items()}


def positive_int(key: str, value: Any, minimum: int = 0) -> int:
    """An integer config value ≥ ``minimum`` (1e3 counts as one), else a ConfigError naming
    ``estimator.<key>``."""
    from bench.settings import as_integer

    return as_integer(f"estimator.{key}", value, minimum)


def as_number(key: str, value: Any) -> float:
    """float(value), else a ConfigError naming ``estimator.<key>``."""
    try:
        return float(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"estimator.{key}", f"expected a number, got {value!r}") from error


def finite_float(key: str, value: Any) -> float:
    """A finite number (any sign), else a ConfigError naming ``estimator.<key>``."""
    if isinstance(value, bool):
        raise ConfigError(f"estimator.{key}", f"expected a number, got {value!r}")
    number = as_number(key, value)
    if not math.isfinite(number):
        raise ConfigError(f"estimator.{key}", f"must be finite, got {value!r}")
    return number


def positive_float(key: str, value: Any) -> float:
    """A finite number > 0, else a ConfigError naming ``estimator.<key>``."""
    number = as_number(key, value)
    if isinstance(value, bool) or not (number > 0 and math.isfinite(number)):
        raise ConfigError(f"estimator.{key}", f"must be a finite number > 0, got {value!r}")
    return number


def score_function_surrogate(cost: Tensor, log_prob: Tensor, weight: Tensor) -> Tensor:
    """mean_s [ f_s + stopgrad(w_s) · log p_s ]: its gradient is mean_s [∇f_s + w_s ∇log p_s].

    cost, log_prob, weight: (n_samples,). The ∇f_s term carries any direct dependence of the cost
    on θ (zero for most problems; −log q in an ELBO).
    """
    return (cost + weight.detach() * log_prob).mean()


def exact_batch(problem: Problem, params: Params, batch: int) -> Params:
    """The exact gradient at ``params`` repeated ``batch`` times, in float64: the problem's own
    ``exact()`` at its point (``params()`` in the estimates' dtype, as the sweep measures it), else
    autograd through ``expectation`` at ``params`` (a point along ``bench train``)."""
    point = problem.params()
    if all(torch.equal(value, point[name].to(value.dtype)) for name, value in params.items()):
        exact = problem.exact()
    else:
        exact = exact_at(problem, params)
    return {name: value.expand(batch, *value.shape) for name, value in exact.items()}


def exact_at(problem: Problem, params: Params) -> Params:
    """∇θ E[f] at ``params`` (float64) by autograd through ``problem.expectation``."""
    with torch.inference_mode(False), torch.enable_grad():
        leaves = {
            name: value.detach().clone().to(torch.float64).requires_grad_(True)
            for name, value in params.items()
        }
        value = problem.expectation(leaves)
        if value is None:
            raise NotImplementedError(
                f"{problem.name} has no expectation: its exact gradient is known only at its point"
            )
        grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True, materialize_grads=True)
    return {name: grad.detach() for name, grad in zip(leaves, grads, strict=True)}


def temperature_value(temperature: Any) -> float:
    return positive_float("temperature", temperature)
