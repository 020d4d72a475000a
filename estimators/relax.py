"""RELAX: REBAR's construction with a learned, free-form control variate (Grathwohl et al. 2018)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from bench.estimators.base import (
    FitReport,
    Noise,
    NoiseSource,
    per_estimate_gradients,
    positive_float,
    positive_int,
    temperature_value,
)
from bench.estimators.rebar import (
    ConditionalLatentEstimator,
    fit_state,
    fitted_scalars,
    score_term,
    warm_problem_caches,
)
from bench.problems.base import Params, Problem

INIT_SEED = (
    0  # the control variate's first layer is drawn from this fixed seed (training is seeded by the noise)
)


def control_variate(problem: Problem, params: Params, z: Tensor, state: Params) -> Tensor:
    """c_ψ(z) = MLP_ψ(flatten z) + η f̃(θ, σ_λ(z)) (the second term only with a relaxed cost): (S,).

    z: (S, *latent). MLP_ψ: n_latent → ``hidden`` (tanh) → 1.
    """
    flat = z.reshape(z.shape[0], -1)  # (S, n_latent)
    hidden = torch.tanh(flat @ state["w1"].T + state["b1"])  # (S, hidden)
    value = hidden @ state["w2"] + state["b2"]  # (S,)
    if "eta" in state:
        relaxed = problem.relax(z, torch.exp(state["log_temperature"]))
        value = value + state["eta"] * problem.relaxed_cost(params, relaxed)
    return value


def relax_surrogate(problem: Problem, params: Params, noise: tuple[Tensor, Tensor], state: Params) -> Tensor:
    """A scalar whose θ-gradient is one RELAX estimate (formula in ``Relax``'s docstring).

    noise: (u, v), each (S, *latent); state: ψ (``w1``, ``b1``, ``w2``, ``b2``, and ``eta``,
    ``log_temperature`` when the problem has a relaxed cost).
    """
    u, v = noise
    z = problem.preimage(params, u)  # (S, *latent), differentiable in θ
    b = problem.hard(z)  # (S, *latent): the problem's own sample
    z_tilde = problem.conditional_preimage(params, b, v)  # θ stays differentiable inside z̃
    cost = problem.cost(params, b)  # (S,)
    control = control_variate(problem, params, z, state)  # (S,)
    control_tilde = control_variate(problem, params, z_tilde, state)  # (S,)
    log_prob = problem.log_prob(params, b)  # (S,)
    return (cost + score_term(cost - control_tilde, log_prob) + control - control_tilde).mean()


class Relax(ConditionalLatentEstimator):
    """RELAX (Grathwohl, Choi, Wu, Roeder & Duvenaud 2018, "Backpropagation through the void:
    optimizing control variates for black-box gradient estimation", ICLR), discrete form.

    ĝ = (1/S) Σ_s [ ∇θ f(θ, b_s) + (f(θ, b_s) − c_ψ(z̃_s)) ∇θ log p(b_s; θ) + ∇θ c_ψ(z_s) − ∇θ c_ψ(z̃_s) ]

    with z_s, b_s = H(z_s) and z̃_s ~ p(z | b_s) as in REBAR (θ differentiable inside z̃), and the
    control variate c_ψ(z) = MLP_ψ(z) + η f̃(θ, σ_λ(z)): a one-hidden-layer tanh MLP of the flattened
    pre-image plus, when the problem has a relaxed cost, REBAR's relaxed term (the paper's choice for
    its discrete experiments: RELAX then starts from REBAR and learns a correction). Without a relaxed
    cost f is a black box evaluated only at b_s, and c_ψ is the MLP alone.

    Unbiased for every ψ = (MLP weights, η, λ), by the same identity as REBAR (c_ψ need only be
    differentiable in z). ψ is fitted before measuring by Adam on the single-sample variance
    objective mean‖ĝ‖² (whose ψ-gradient is that of Var ĝ) and then frozen. The score term's weight
    carries no θ-gradient: a leak of ∇θ c_ψ(z̃) through it (the classic bug) biases the estimate.

    Keys: ``hidden`` (MLP width), ``train_steps``, ``lr`` (Adam), ``temperature`` (initial λ).
    Initial state: η = 1, λ = ``temperature``, first layer drawn from a fixed seed, last layer zero
    (so the untrained estimator is REBAR at η = 1, or REINFORCE without a relaxed cost).
    Cost: 3 evaluations per sample with a relaxed cost (f(b), f̃(σ_λ(z)), f̃(σ_λ(z̃))), else 1.
    """

    name = "relax"
    unbiased = True
    has_fit = True

    def __init__(
        self, hidden: Any = 32, train_steps: Any = 1000, lr: Any = 1e-2, temperature: Any = 0.5
    ) -> None:
        super().__init__(hidden=hidden, train_steps=train_steps, lr=lr, temperature=temperature)
        self.hidden = positive_int("hidden", hidden, minimum=1)
        self.train_steps = positive_int("train_steps", train_steps)
        self.lr = positive_float("lr", lr)
        self.temperature = temperature_value(temperature)
        self.state: Params | None = None
        self._state_problem: Problem | None = None  # the problem ``state`` was built for

    def cost_evals(self, n_samples: int, problem: Problem | None = None) -> int:
        # f(b), plus f̃ at σ_λ(z) and σ_λ(z̃) when the control variate uses the relaxed cost; a
        # black-box problem (no relaxed cost) spends n_samples.
        if problem is not None and not problem.has_relaxed_cost:
            return n_samples
        return 3 * n_samples

    def initial_state(self, problem: Problem, params: Params) -> Params:
        """ψ before training, deterministic: w1, b1 ~ U(±1/√n_latent) from a fixed seed (on the CPU,
        so every device starts alike), w2 = 0, b2 = 0, η = 1, λ = ``temperature``."""
        like = next(iter(params.values()))
        n_latent = problem.logits(params).numel()
        generator = torch.Generator().manual_seed(INIT_SEED)
        bound = 1.0 / math.sqrt(n_latent)
        w1 = (2.0 * torch.rand(self.hidden, n_latent, generator=generator, dtype=torch.float64) - 1.0) * bound
        b1 = (2.0 * torch.rand(self.hidden, generator=generator, dtype=torch.float64) - 1.0) * bound
        zero = torch.zeros((), dtype=torch.float64)
        state = {"w1": w1, "b1": b1, "w2": torch.zeros(self.hidden, dtype=torch.float64), "b2": zero}
        if problem.has_relaxed_cost:
            state["eta"] = torch.ones((), dtype=torch.float64)
            state["log_temperature"] = torch.tensor(math.log(self.temperature), dtype=torch.float64)
        return {name: value.to(dtype=like.dtype, device=like.device) for name, value in state.items()}

    def current_state(self, problem: Problem, params: Params) -> Params:
        """The state fitted on ``problem``, else the initial one; in the params' dtype."""
        state = self.state if self._state_problem is problem else None
        if state is None:
            state = self.initial_state(problem, params)
        like = next(iter(params.values()))
        return {name: value.to(dtype=like.dtype, device=like.device) for name, value in state.items()}

    def surrogate_with(self, problem: Problem, params: Params, noise: Noise, state: Params) -> Tensor:
        return relax_surrogate(problem, params, noise, state)

    def estimate(self, problem: Problem, params: Params, noise: Noise) -> Params:
        warm_problem_caches(problem, params, noise[0])
        state = self.current_state(problem, params)
        return per_estimate_gradients(self.surrogate_with, problem, params, noise, state)

    def fit(self, problem: Problem, params: Params, draw_noise: NoiseSource) -> FitReport:
        state = self.initial_state(problem, params)
        state = fit_state(
            self.surrogate_with, problem, params, draw_noise, state, steps=self.train_steps, lr=self.lr
        )
        self.state, self._state_problem = state, problem
        return FitReport(self.train_steps, fitted_scalars(state) if "eta" in state else {})
