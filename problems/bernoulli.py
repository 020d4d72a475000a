"""Independent Bernoulli bits with a quadratic cost: the smallest discrete problem."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.problems.base import Params, Problem, as_tensor_list, open_uniform


class Bernoulli(Problem):
    """b_i ~ Bernoulli(sigmoid(θ_i)), i = 1..D, independent; f(b) = Σ_i (b_i − target_i)².

    Parameters: the logits θ (``theta``). Relaxed cost: the same formula at b ∈ [0, 1].
    Exact gradient: autograd through the closed-form E[f], which gives
    ∂E[f]/∂θ_i = σ(θ_i)σ(−θ_i)(1 − 2 target_i), accurate even at saturated logits.
    Noise: u ~ U(0, 1)^D; b = 1[u > 1 − σ(θ)], equivalently 1[θ + logit(u) > 0], so the binary
    Concrete relaxation σ((θ + logit(u))/τ) (Maddison et al. 2017) shares the noise.
    """

    name = "bernoulli"
    discrete = True
    has_relaxed_cost = True
    has_enumerate_support = True
    binary_latent = True
    has_score = True
    cost_depends_on_params = False

    def __init__(
        self,
        theta: Sequence[float] = (0.0, 0.5, -1.0),
        target: Sequence[float] = (0.45, 0.5, 0.6),
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(device, theta=list(theta), target=list(target))
        self.theta = as_tensor_list("problem.theta", theta, device=device)
        self.target = as_tensor_list(
            "problem.target", target, length=self.theta.numel(), device=device, like="problem.theta"
        )

    @property
    def dim(self) -> int:
        return self.theta.numel()

    def params(self) -> Params:
        return {"theta": self.theta.clone()}

    def noise(self, generator: torch.Generator, batch: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        return open_uniform(generator, (*batch, self.dim), dtype, self.device)  # (*batch, D)

    def logits(self, params: Params) -> Tensor:
        return params["theta"]  # (D,)

    def sample(self, params: Params, noise: Tensor) -> Tensor:
        probs = torch.sigmoid(params["theta"].detach())
        return (noise > 1.0 - probs).to(noise.dtype)  # (*batch, D)

    def log_prob(self, params: Params, x: Tensor) -> Tensor:
        theta = params["theta"]
        return (x * F.logsigmoid(theta) + (1.0 - x) * F.logsigmoid(-theta)).sum(-1)

    def score(self, params: Params, x: Tensor) -> Params:
        """∇θ log p(b; θ) = b − σ(θ) per sample: {"theta": (*batch, D)}."""
        return {"theta": x - torch.sigmoid(params["theta"])}

    def cost(self, params: Params, x: Tensor) -> Tensor:
        return ((x - self.target.to(x.dtype)) ** 2).sum(-1)

    def relaxed_sample(self, params: Params, noise: Tensor, temperature: float) -> Tensor:
        return self.relax(self.preimage(params, noise), temperature)

    def relaxed_cost(self, params: Params, y: Tensor) -> Tensor:
        return self.cost(params, y)

    def expected_cost(self, params: Params, min_prob: float = 0.0) -> Tensor:
        """E[f] in closed form: Σ_i σ(θ_i)(1 − t_i)² + (1 − σ(θ_i)) t_i². A bit whose rarer value
        has probability below ``min_prob`` is held at its likelier value (``Problem.exact_in``)."""
        theta = params["theta"]
        # exp(log σ(±θ)) rather than σ(θ) and 1 − σ(θ): autograd then gives σ(θ)σ(−θ) accurately at
        # saturated logits (at θ = 80, 1 − σ(θ) rounds to 0 even in float64; σ(−θ) = 1.8e-35 does not).
        probs, complement = torch.exp(F.logsigmoid(theta)), torch.exp(F.logsigmoid(-theta))
        rare_one, rare_zero = probs < min_prob, complement < min_prob
        probs = torch.where(rare_one, 0.0, torch.where(rare_zero, 1.0, probs))
        complement = torch.where(rare_one, 1.0, torch.where(rare_zero, 0.0, complement))
        target = self.target.to(theta.dtype)
        return (probs * (1.0 - target) ** 2 + complement * target**2).sum()

    def exact_gradient(self) -> Params:
        params = {"theta": self.theta.clone().requires_grad_(True)}
        (grad,) = torch.autograd.grad(self.expected_cost(params), [params["theta"]])
        return {"theta": grad}

    def enumerate_outcomes(self) -> Tensor:
        """All 2^D outcomes: (2^D, D), float64."""
        grid = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=torch.float64)] * self.dim)
        return grid.reshape(-1, self.dim).to(self.device)

    def memory_per_sample(self) -> int:
        return 16 * self.dim
