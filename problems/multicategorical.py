"""Many independent categorical variables with a separable or coupled cost; exact by enumeration."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from bench.errors import ConfigError
from bench.problems.base import Params, Problem, as_tensor_list, open_uniform

COSTS = ("separable", "coupled")
MAX_OUTCOMES = 2**20  # the exact gradient enumerates every joint outcome, K^D of them


def logit_table(values: Any, device: torch.device | str = "cpu") -> Tensor:
    """``problem.theta`` (a list of D lists of K logits) as a (D, K) float64 tensor."""
    rows = values if isinstance(values, Sequence) and not isinstance(values, str) else None
    if not rows or not all(isinstance(row, Sequence) and not isinstance(row, str) for row in rows):
        raise ConfigError("problem.theta", f"expected a list of lists of logits (D × K), got {values!r}")
    widths = {len(row) for row in rows}
    if len(widths) != 1:
        raise ConfigError("problem.theta", f"every variable needs the same number of classes, got {values!r}")
    try:
        table = torch.tensor([[float(v) for v in row] for row in rows], dtype=torch.float64, device=device)
    except (TypeError, ValueError) as error:
        raise ConfigError("problem.theta", f"expected a list of lists of numbers, got {values!r}") from error
    if table.shape[1] < 2:
        raise ConfigError("problem.theta", f"each variable needs at least 2 classes, got {table.shape[1]}")
    if not torch.isfinite(table).all():
        raise ConfigError("problem.theta", f"logits must be finite, got {values!r}")
    return table


def joint_classes(n_variables: int, n_classes: int, device: torch.device | str = "cpu") -> Tensor:
    """Every joint outcome of ``n_variables`` K-way variables as class indices, in
    ``itertools.product`` order (the first variable varies slowest): (K^D, D) int64, no loops."""
    places = n_classes ** torch.arange(n_variables - 1, -1, -1, device=device)  # (D,)
    index = torch.arange(n_classes**n_variables, device=device)  # (K^D,)
    return (index[:, None] // places) % n_classes  # (K^D, D)


class MultiCategorical(Problem):
    """x_d ~ Categorical(softmax(θ_d)), d = 1..D independent, each a one-hot over K classes.

    Class k has the value v_k = k/(K − 1) (so values span [0, 1]); variable d takes s_d = v·x_d.
    Costs (``cost``), with ``target`` t ∈ R^D:
      separable: f(x) = Σ_d (s_d − t_d)²: a sum of one-variable terms.
      coupled:   f(x) = (mean_d s_d − mean_d t_d)²: the variables interact (cross terms s_d s_e).
    Both are quadratic in the one-hots. Relaxed cost: the same formulas with s_d = v·y_d for
    relaxed one-hots y_d in the simplex, equal to the cost at hard samples.

    Parameters: ``theta`` (D, K) logits, dimension names ``theta[d,k]``. Noise: u ~ U(0, 1)^(D×K);
    x_d = onehot(argmax_k(θ_dk + G(u_dk))) with Gumbel G(u) = −log(−log u) (the Gumbel-max trick,
    via ``problems.latent``), relaxed y_d = softmax((θ_d + G(u_d))/τ) on the same noise.

    Exact gradient: autograd (float64) through E[f] = Σ_x p(x; θ) f(x) over all K^D joint
    outcomes, vectorized as an (K^D, D) table of class indices; K^D ≤ 2^20 is enforced.
    """

    name = "multicategorical"
    discrete = True
    has_relaxed_cost = True
    has_enumerate_support = True
    categorical_latent = True
    has_score = True
    cost_depends_on_params = False

    def __init__(
        self,
        theta: Sequence[Sequence[float]] = ((0.0, 0.5, -0.5), (1.0, 0.0, -1.0), (-0.5, 0.3, 0.2)),
        target: Sequence[float] = (0.9, 0.8, 0.7),
        cost: str = "coupled",
        device: torch.device | str = "cpu",
    ) -> None:
        table = logit_table(theta, device)  # (D, K); validated first, so the lists below are safe
        target_list = list(target) if isinstance(target, Sequence) and not isinstance(target, str) else target
        super().__init__(device, theta=[list(row) for row in theta], target=target_list, cost=cost)
        self.theta = table
        n_variables, n_classes = self.theta.shape
        if n_classes**n_variables > MAX_OUTCOMES:
            raise ConfigError(
                "problem.theta",
                f"{n_variables} variables (rows of problem.theta) with {n_classes} classes (its columns) "
                f"have K^D = {n_classes}^{n_variables} joint outcomes, more than the 2^20 the exact "
                "gradient enumerates; use fewer variables or classes",
            )
        self.target = as_tensor_list("problem.target", target, length=n_variables, device=device)  # (D,)
        if cost not in COSTS:
            raise ConfigError("problem.cost", f"unknown cost {cost!r}; valid choices: {', '.join(COSTS)}")
        self.cost_name = cost
        self.values = torch.arange(n_classes, dtype=torch.float64, device=device) / (n_classes - 1)  # (K,)

    @property
    def n_variables(self) -> int:
        return self.theta.shape[0]

    @property
    def n_classes(self) -> int:
        return self.theta.shape[1]

    def params(self) -> Params:
        return {"theta": self.theta.clone()}

    def noise(self, generator: torch.Generator, batch: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        shape = (*batch, self.n_variables, self.n_classes)
        return open_uniform(generator, shape, dtype, self.device)  # (*batch, D, K)

    def logits(self, params: Params) -> Tensor:
        return params["theta"]  # (D, K)

    def sample(self, params: Params, noise: Tensor) -> Tensor:
        return self.hard(self.preimage({"theta": params["theta"].detach()}, noise))  # (*batch, D, K)

    def log_prob(self, params: Params, x: Tensor) -> Tensor:
        return (x * torch.log_softmax(params["theta"], -1)).sum((-2, -1))  # (*batch,)

    def score(self, params: Params, x: Tensor) -> Params:
        """∇θ log p(x; θ) = x_d − softmax(θ_d) per variable d and sample: {"theta": (*batch, D, K)}."""
        return {"theta": x - torch.softmax(params["theta"], -1)}

    def weighted_score(self, params: Params, x: Tensor, weights: Tensor) -> Params:
        """Σ_s w_s (x_s − softmax θ) = Σ_s w_s x_s − (Σ_s w_s) softmax θ over the last batch axis:
        weights (*lead, S) → {"theta": (*lead, D, K)}, one batched product, no per-sample scores."""
        probs = torch.softmax(params["theta"], -1)  # (D, K)
        counts = (weights.unsqueeze(-2) @ x.flatten(-2)).squeeze(-2)  # (*lead, D·K): Σ_s w_s x_s
        return {"theta": counts.unflatten(-1, probs.shape) - weights.sum(-1)[..., None, None] * probs}

    def cost_of_values(self, values: Tensor) -> Tensor:
        """f from the variables' values s: (*batch, D) → (*batch,)."""
        target = self.target.to(values.dtype)
        if self.cost_name == "coupled":
            return (values.mean(-1) - target.mean()) ** 2
        return ((values - target) ** 2).sum(-1)

    def cost(self, params: Params, x: Tensor) -> Tensor:
        return self.cost_of_values((x * self.values.to(x.dtype)).sum(-1))  # x: (*batch, D, K)

    def relaxed_sample(self, params: Params, noise: Tensor, temperature: float) -> Tensor:
        return self.relax(self.preimage(params, noise), temperature)  # (*batch, D, K)

    def relaxed_cost(self, params: Params, y: Tensor) -> Tensor:
        return self.cost(params, y)

    def outcome_classes(self) -> Tensor:
        """Every joint outcome as class indices, the first variable varying slowest: (K^D, D) int64."""
        return joint_classes(self.n_variables, self.n_classes, self.device)

    def enumerate_outcomes(self) -> Tensor:
        """All K^D joint outcomes as one-hots: (K^D, D, K), float64."""
        return torch.nn.functional.one_hot(self.outcome_classes(), self.n_classes).to(torch.float64)

    def expected_cost(self, params: Params, min_prob: float = 0.0) -> Tensor:
        """E[f] = Σ_x Π_d p_d(x_d) f(x) over every joint outcome (class indices, not one-hots:
        K^D × D memory). Classes rarer than ``min_prob`` are treated as impossible and each
        variable's probabilities renormalized (``Problem.exact_in``: a sampler in a low-precision
        dtype cannot produce them)."""
        probs = torch.softmax(params["theta"], -1)  # (D, K)
        probs = torch.where(probs < min_prob, 0.0, probs)
        probs = probs / probs.sum(-1, keepdim=True)
        classes = self.outcome_classes()  # (M, D)
        variables = torch.arange(self.n_variables, device=self.device)
        joint_prob = probs[variables, classes].prod(-1)  # (M,)
        values = self.values.to(probs.dtype)[classes]  # (M, D)
        return (joint_prob * self.cost_of_values(values)).sum()

    def exact_gradient(self) -> Params:
        with torch.inference_mode(False), torch.enable_grad():
            params = {"theta": self.theta.clone().requires_grad_(True)}
            (grad,) = torch.autograd.grad(self.expected_cost(params), [params["theta"]])
        return {"theta": grad}

    def memory_per_sample(self) -> int:
        return 24 * self.n_variables * self.n_classes
