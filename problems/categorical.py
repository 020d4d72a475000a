"""One categorical draw with a linear or quadratic cost; exact by enumerating the K outcomes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from bench.errors import ConfigError
from bench.problems.base import Params, Problem, as_tensor_list, open_uniform

COSTS = ("linear", "quadratic")


class Categorical(Problem):
    """z ~ Categorical(softmax(θ)), outcomes as one-hot y ∈ {e_1..e_K}.

    Costs (``cost``), with ``costs`` = c ∈ R^K:
      linear:    f(y) = c·y, i.e. costs[z]. The relaxed and straight-through Gumbel-softmax
                 gradients coincide here: ∂f/∂y = c everywhere.
      quadratic: f(y) = (c·y − target)², i.e. (costs[z] − target)² at a hard sample. ∂f/∂y now
                 depends on y, so straight-through (which evaluates it at the hard one-hot) and
                 relaxed Gumbel-softmax (at the soft sample) give different estimates.
    Relaxed cost: the same formula at y in the simplex. Noise: u ~ U(0,1)^K, Gumbel g = −log(−log u);
    z = argmax(θ + g) (the Gumbel-max trick), relaxed y = softmax((θ + g)/τ) (Jang et al. 2017).
    Exact gradient: autograd through E[f] = Σ_k softmax(θ)_k f(e_k), float64.
    """

    name = "categorical"
    discrete = True
    has_relaxed_cost = True
    has_enumerate_support = True
    categorical_latent = True
    has_score = True
    cost_depends_on_params = False

    def __init__(
        self,
        theta: Sequence[float] = (0.0, 0.5, -0.5, 1.0),
        costs: Sequence[float] = (1.0, 0.0, 2.0, 0.5),
        cost: str = "linear",
        target: float = 0.7,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(device, theta=list(theta), costs=list(costs), cost=cost, target=target)
        self.theta = as_tensor_list("problem.theta", theta, device=device)
        self.costs = as_tensor_list(
            "problem.costs", costs, length=self.theta.numel(), device=device, like="problem.theta"
        )
        if self.theta.numel() < 2:
            raise ConfigError("problem.theta", "a categorical needs at least 2 categories")
        if cost not in COSTS:
            raise ConfigError("problem.cost", f"unknown cost {cost!r}; valid choices: {', '.join(COSTS)}")
        self.cost_name = cost
        self.target = float(as_tensor_list("problem.target", target, length=1)[0])

    @property
    def num_categories(self) -> int:
        return self.theta.numel()

    def params(self) -> Params:
        return {"theta": self.theta.clone()}

    def noise(self, generator: torch.Generator, batch: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        return open_uniform(generator, (*batch, self.num_categories), dtype, self.device)  # (*batch, K)

    def logits(self, params: Params) -> Tensor:
        return params["theta"]  # (K,)

    def sample(self, params: Params, noise: Tensor) -> Tensor:
        return self.hard(self.preimage({"theta": params["theta"].detach()}, noise))  # one-hot (*batch, K)

    def log_prob(self, params: Params, x: Tensor) -> Tensor:
        return (x * torch.log_softmax(params["theta"], -1)).sum(-1)

    def score(self, params: Params, x: Tensor) -> Params:
        """∇θ log p(y; θ) = y − softmax(θ) per sample, y one-hot: {"theta": (*batch, K)}."""
        return {"theta": x - torch.softmax(params["theta"], -1)}

    def weighted_score(self, params: Params, x: Tensor, weights: Tensor) -> Params:
        """Σ_s w_s (y_s − softmax θ) = Σ_s w_s y_s − (Σ_s w_s) softmax θ over the last batch axis,
        for one-hot samples y (the problem's own): weights (*lead, S) → {"theta": (*lead, K)}.
        Σ_s w_s y_s adds each weight into its sample's category (a scatter-add over the class
        indices, ~2× faster than a batched product over a short sample axis); no per-sample scores."""
        probs = torch.softmax(params["theta"], -1)  # (K,)
        classes = torch.arange(self.num_categories, dtype=x.dtype, device=x.device)
        index = (x @ classes).long()  # (*lead, S): the category of each one-hot sample, exactly
        zeros = weights.new_zeros(*weights.shape[:-1], self.num_categories)
        counts = zeros.scatter_add(-1, index, weights)  # (*lead, K): Σ_s w_s y_s
        return {"theta": counts - weights.sum(-1, keepdim=True) * probs}

    def cost(self, params: Params, x: Tensor) -> Tensor:
        value = (x * self.costs.to(x.dtype)).sum(-1)
        if self.cost_name == "quadratic":
            return (value - self.target) ** 2
        return value

    def relaxed_sample(self, params: Params, noise: Tensor, temperature: float) -> Tensor:
        return self.relax(self.preimage(params, noise), temperature)

    def relaxed_cost(self, params: Params, y: Tensor) -> Tensor:
        return self.cost(params, y)

    def enumerate_outcomes(self) -> Tensor:
        return torch.eye(self.num_categories, dtype=torch.float64, device=self.device)  # (K, K)

    def expected_cost(self, params: Params, min_prob: float = 0.0) -> Tensor:
        """Σ_k softmax(θ)_k f(e_k); categories rarer than ``min_prob`` are treated as impossible and
        the rest renormalized (``Problem.exact_in``)."""
        probs = torch.softmax(params["theta"], -1)
        probs = torch.where(probs < min_prob, 0.0, probs)
        probs = probs / probs.sum()
        return (probs * self.cost(params, self.enumerate_outcomes().to(probs.dtype))).sum()

    def exact_gradient(self) -> Params:
        params = {"theta": self.theta.clone().requires_grad_(True)}
        (grad,) = torch.autograd.grad(self.expected_cost(params), [params["theta"]])
        return {"theta": grad}

    def memory_per_sample(self) -> int:
        return 24 * self.num_categories
