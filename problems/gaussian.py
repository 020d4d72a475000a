"""A diagonal Gaussian with four cost families whose expectations have closed forms."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from bench.errors import ConfigError
from bench.problems.base import Params, Problem, as_tensor_list, detached

COSTS = ("linear", "quadratic", "cos", "exp_quadratic")


def cost_value(cost: str, x: Tensor, k: Tensor) -> Tensor:
    """The per-dimension cost c(x_i): (*batch, D)."""
    if cost == "linear":
        return x
    if cost == "quadratic":
        return (x - k) ** 2
    if cost == "cos":
        return torch.cos(k * x)
    return torch.exp(-k * x**2)  # exp_quadratic


def expected_cost_value(cost: str, mu: Tensor, sigma: Tensor, k: Tensor) -> Tensor:
    """E[c(x_i)] for x_i ~ N(μ_i, σ_i²), closed form: (D,).

    linear: μ. quadratic: (μ − k)² + σ². cos: cos(kμ) exp(−k²σ²/2) (the Gaussian characteristic
    function). exp_quadratic: exp(−kμ²/(1 + 2kσ²)) / sqrt(1 + 2kσ²) (a Gaussian integral, k > −1/(2σ²)).
    """
    if cost == "linear":
        return mu
    if cost == "quadratic":
        return (mu - k) ** 2 + sigma**2
    if cost == "cos":
        return torch.cos(k * mu) * torch.exp(-0.5 * k**2 * sigma**2)
    spread = 1.0 + 2.0 * k * sigma**2
    return torch.exp(-k * mu**2 / spread) / torch.sqrt(spread)


class Gaussian(Problem):
    """x ~ N(μ, diag(σ²)); f(x) = Σ_i c(x_i) with c from ``cost`` (linear, quadratic, cos,
    exp_quadratic) and scale ``k`` (a number or one per dimension).

    Parameters: ``mu`` and ``sigma`` (σ itself, not log σ). Reparameterization: x = μ + σ ε with
    ε ~ N(0, I). Exact gradient: autograd through the closed-form E[f] in float64 (see
    ``expected_cost_value``); the tests check it against numerical integration.
    """

    name = "gaussian"
    discrete = False
    has_rsample = True
    gaussian_latent = True
    has_score = True
    cost_depends_on_params = False

    def __init__(
        self,
        mu: Sequence[float] = (0.5, -0.3),
        sigma: Sequence[float] = (1.0, 0.5),
        cost: str = "quadratic",
        k: float | Sequence[float] = 1.0,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(device, mu=list(mu), sigma=list(sigma), cost=cost, k=k)
        self.mu = as_tensor_list("problem.mu", mu, device=device)
        self.sigma = as_tensor_list(
            "problem.sigma", sigma, length=self.mu.numel(), device=device, like="problem.mu"
        )
        if (self.sigma <= 0).any():
            raise ConfigError("problem.sigma", f"every value must be > 0, got {list(sigma)}")
        if cost not in COSTS:
            raise ConfigError("problem.cost", f"unknown cost {cost!r}; valid choices: {', '.join(COSTS)}")
        self.cost_name = cost
        self.k = as_tensor_list("problem.k", k, length=self.mu.numel(), device=device, like="problem.mu")
        if cost == "exp_quadratic" and (1.0 + 2.0 * self.k * self.sigma**2 <= 0).any():
            raise ConfigError("problem.k", "exp_quadratic needs 1 + 2kσ² > 0, or E[f] is infinite")

    def params(self) -> Params:
        return {"mu": self.mu.clone(), "sigma": self.sigma.clone()}

    def noise(self, generator: torch.Generator, batch: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        shape = (*batch, self.mu.numel())
        return torch.randn(shape, generator=generator, dtype=dtype, device=self.device)  # (*batch, D)

    def loc_scale(self, params: Params) -> tuple[Tensor, Tensor]:
        return params["mu"], params["sigma"]  # (D,) each

    def rsample(self, params: Params, noise: Tensor) -> Tensor:
        return params["mu"] + params["sigma"] * noise

    def sample(self, params: Params, noise: Tensor) -> Tensor:
        return self.rsample(detached(params), noise)

    def log_prob(self, params: Params, x: Tensor) -> Tensor:
        mu, sigma = params["mu"], params["sigma"]
        z = (x - mu) / sigma
        return (-0.5 * z**2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)).sum(-1)

    def score(self, params: Params, x: Tensor) -> Params:
        """∇ log N(x; μ, σ²) per sample: (x − μ)/σ² for ``mu`` and ((x − μ)² − σ²)/σ³ for ``sigma``
        (σ itself is the parameter): {"mu": (*batch, D), "sigma": (*batch, D)}."""
        mu, sigma = params["mu"], params["sigma"]
        centred = x - mu  # (*batch, D)
        variance = sigma * sigma
        return {"mu": centred / variance, "sigma": (centred * centred - variance) / (variance * sigma)}

    def cost(self, params: Params, x: Tensor) -> Tensor:
        return cost_value(self.cost_name, x, self.k.to(x.dtype)).sum(-1)

    def expected_cost(self, params: Params) -> Tensor:
        """E[f] in closed form."""
        k = self.k.to(params["mu"].dtype)
        return expected_cost_value(self.cost_name, params["mu"], params["sigma"], k).sum()

    def exact_gradient(self) -> Params:
        params = {name: value.requires_grad_(True) for name, value in self.params().items()}
        # linear cost: E[f] does not depend on σ, whose gradient is then exactly zero
        grads = torch.autograd.grad(self.expected_cost(params), list(params.values()), materialize_grads=True)
        return dict(zip(params, grads, strict=True))

    def memory_per_sample(self) -> int:
        return 24 * self.mu.numel()
