"""REBAR: REINFORCE with a control variate built from the continuous relaxation (Tucker et al. 2017).

Also holds what REBAR and RELAX share: the (u, v) noise of a discrete latent (the problem's own
uniforms u and fresh uniforms v for the conditional pre-image z̃), the score-function term that keeps
a trainable weight differentiable, and the applicability check for discrete latents.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from bench.estimators.base import (
    Estimator,
    FitReport,
    Noise,
    NoiseSource,
    detached,
    finite_float,
    fit_by_variance,
    per_estimate_gradients,
    positive_float,
    positive_int,
    temperature_value,
)
from bench.problems.base import Params, Problem, open_uniform

LATENT_FLAGS = ("binary_latent", "categorical_latent")
# The fit stage's batch (estimates per Adam step): 64, fewer at large n_samples so that a step sees
# at most ~256 samples (at n_samples = 16 on vae_bernoulli this cuts RELAX's fit from 48 s to 19 s
# with the same fitted variance), never fewer than 16.
FIT_SAMPLES, FIT_MIN_BATCH, FIT_MAX_BATCH = 256, 16, 64


def fit_batch_size(n_samples: int) -> int:
    """Estimates per fit step at ``n_samples``: 64 up to n_samples = 4, then 256 / n_samples, ≥ 16."""
    return max(FIT_MIN_BATCH, min(FIT_MAX_BATCH, FIT_SAMPLES // n_samples))


def first_fit_noise(draw_noise: NoiseSource) -> tuple[Tensor, int]:
    """The problem's noise u for one estimate, (1, S, *event), and S = n_samples, from the fit stream."""
    noise = draw_noise(1)
    u = noise[0] if isinstance(noise, tuple) else noise
    return u, u.shape[1]


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the fit stage on one CPU thread (restored afterwards). Its tensors are tiny (a batch of
    64 estimates): on a shared 2-core machine, OpenMP's second thread makes every small op wait
    ~10 ms for a busy core, 10-100× slower than one thread; one thread also makes the fitted state
    independent of the core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def warm_problem_caches(problem: Problem, params: Params, u: Tensor) -> None:
    """Evaluate f once, outside any torch.func transform, on the first sample of ``u``
    (batch, S, *event). A problem that caches dtype-cast constants on first use (the VAEs'
    ``constants``) then builds them as plain tensors; built inside a transform they would be
    wrapped tensors that outlive it ("escaped?" internal asserts in later nested transforms)."""
    with torch.no_grad():
        plain = detached(params)
        problem.cost(plain, problem.sample(plain, u[:1, 0]))


def discrete_latent_reason(name: str, problem: Problem) -> str | None:
    """Why an estimator that needs the pre-image of a binary or categorical latent does not apply."""
    if not any(getattr(problem, flag) for flag in LATENT_FLAGS):
        return f"{name} requires binary_latent or categorical_latent, which {problem.name} lacks"
    return None


def latent_and_conditional_noise(
    problem: Problem,
    generator: torch.Generator,
    aux_generator: torch.Generator,
    batch: tuple[int, ...],
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """(u, v): the problem's own uniforms u (common random numbers with every other estimator) and
    fresh uniforms v of the same shape from the auxiliary stream, for z̃ ~ p(z | b)."""
    u = problem.noise(generator, batch, dtype)  # (*batch, *latent)
    v = open_uniform(aux_generator, tuple(u.shape), dtype, u.device)  # (*batch, *latent)
    return u, v


def fit_state(
    surrogate_with: Any,
    problem: Problem,
    params: Params,
    draw_noise: NoiseSource,
    state: Params,
    *,
    steps: int,
    lr: float,
) -> Params:
    """The fit stage shared by REBAR, RELAX and double_cv: ``fit_by_variance`` on one thread (the
    tensors are small; a second thread only waits), at ``fit_batch_size`` estimates a step."""
    if steps <= 0:
        return state
    u, n_samples = first_fit_noise(draw_noise)
    warm_problem_caches(problem, params, u)
    with one_thread():
        return fit_by_variance(
            surrogate_with,
            problem,
            params,
            draw_noise,
            state,
            steps=steps,
            lr=lr,
            batch=fit_batch_size(n_samples),
        )


class ConditionalLatentEstimator(Estimator):
    """Estimators of a discrete latent's pre-image z and conditional z̃ (REBAR, RELAX; unregistered):
    the problem's own uniforms for z, fresh ones from the auxiliary stream for z̃."""

    def why_not(self, problem: Problem, n_samples: int) -> str | None:
        return super().why_not(problem, n_samples) or discrete_latent_reason(self.name, problem)

    def make_noise(
        self,
        problem: Problem,
        generator: torch.Generator,
        aux_generator: torch.Generator,
        batch: tuple[int, ...],
        dtype: torch.dtype,
    ) -> Noise:
        return latent_and_conditional_noise(problem, generator, aux_generator, batch, dtype)


def score_term(weight: Tensor, log_prob: Tensor) -> Tensor:
    """weight · (log p − stopgrad(log p)): zero in value, gradient weight · ∇θ log p.

    Unlike stopgrad(weight) · log p, the weight stays differentiable in the estimator's own
    parameters (η, λ, ψ, α), which the variance objective needs; its θ-gradient is multiplied by an
    exact zero, so it never leaks into the estimate (DiCE's "magic box", Foerster et al. 2018).
    ``.detach()`` is safe on log p: it depends on θ only.
    """
    return weight * (log_prob - log_prob.detach())


def rebar_surrogate(
    problem: Problem,
    params: Params,
    noise: tuple[Tensor, Tensor],
    eta: Tensor,
    temperature: Tensor,
    conditional_params: Params | None = None,
) -> Tensor:
    """A scalar whose θ-gradient is one REBAR estimate (formula in ``Rebar``'s docstring).

    noise: (u, v), each (S, *latent). ``conditional_params`` replaces θ inside z̃ (tests pass
    detached parameters there to reproduce the classic bug); by default θ stays differentiable.
    """
    u, v = noise
    z = problem.preimage(params, u)  # (S, *latent), differentiable in θ
    b = problem.hard(z)  # (S, *latent): the problem's own sample, no gradient
    z_tilde = problem.conditional_preimage(params if conditional_params is None else conditional_params, b, v)
    cost = problem.cost(params, b)  # (S,)
    relaxed = problem.relaxed_cost(params, problem.relax(z, temperature))  # (S,)
    relaxed_tilde = problem.relaxed_cost(params, problem.relax(z_tilde, temperature))  # (S,)
    log_prob = problem.log_prob(params, b)  # (S,)
    weight = cost - eta * relaxed_tilde  # (S,)
    return (cost + score_term(weight, log_prob) + eta * (relaxed - relaxed_tilde)).mean()


class Rebar(ConditionalLatentEstimator):
    """REBAR (Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein 2017, "REBAR: Low-variance, unbiased
    gradient estimates for discrete latent variable models", NeurIPS).

    ĝ = (1/S) Σ_s [ ∇θ f(θ, b_s) + (f(θ, b_s) − η f̃(θ, σ_λ(z̃_s))) ∇θ log p(b_s; θ)
                    + η ∇θ f̃(θ, σ_λ(z_s)) − η ∇θ f̃(θ, σ_λ(z̃_s)) ]

    with z_s = φ(θ) + logistic(u_s) for bits (φ + Gumbel(u_s) per categorical variable), b_s = H(z_s)
    the problem's own sample, z̃_s ~ p(z | b_s) from fresh uniforms v_s with θ differentiable inside
    (``problem.conditional_preimage``), σ_λ the Concrete relaxation at temperature λ (σ(z/λ) or
    softmax(z/λ)) and f̃ the problem's relaxed cost. The ∇θ of the f̃ terms are total derivatives:
    through z, through z̃ and through any direct dependence of f̃ on θ.

    Unbiased for every η and λ: with c(z) = η f̃(σ_λ(z)), E[∇θ c(z)] = ∇θ E[c(z)] (reparameterization),
    and E_b[E[c(z̃) | b] ∇log p(b) + ∇θ E[c(z̃) | b]] = ∇θ E_b[E[c(z̃) | b]] = ∇θ E[c(z)], so the two
    control-variate terms cancel in expectation. That identity needs z̃'s dependence on θ: detaching
    θ inside z̃ (the classic bug) biases it. Binary latents and categorical latents (several
    independent categorical variables too: the latent interface works per variable).

    Keys: ``temperature`` (λ > 0), ``eta`` (η), ``train_steps`` (0: use η and λ as given; > 0: first
    fit η and log λ by Adam on the single-sample variance objective, ``lr``). Three cost evaluations
    per sample: f(b), f̃(σ_λ(z)), f̃(σ_λ(z̃)).
    """

    name = "rebar"
    unbiased = True
    requires = ("has_relaxed_cost",)

    def __init__(self, temperature: Any = 0.5, eta: Any = 1.0, train_steps: Any = 0, lr: Any = 1e-2) -> None:
        super().__init__(temperature=temperature, eta=eta, train_steps=train_steps, lr=lr)
        self.temperature = temperature_value(temperature)
        self.eta = finite_float("eta", eta)
        self.train_steps = positive_int("train_steps", train_steps)
        self.lr = positive_float("lr", lr)
        self.state: Params | None = None  # {"eta": (), "log_temperature": ()} after ``fit``
        # Fitted only when asked to train (the class default, False, is the YAML default's answer);
        # with train_steps = 0, η and λ are the config's.
        self.has_fit = self.train_steps > 0  # type: ignore[misc]

    def cost_evals(self, n_samples: int, problem: Problem | None = None) -> int:
        return 3 * n_samples

    def initial_state(self, params: Params) -> Params:
        like = next(iter(params.values()))
        return {
            "eta": torch.tensor(self.eta, dtype=like.dtype, device=like.device),
            "log_temperature": torch.tensor(math.log(self.temperature), dtype=like.dtype, device=like.device),
        }

    def current_state(self, params: Params) -> Params:
        """The fitted state, or the config's η and λ; in the params' dtype."""
        state = self.state if self.state is not None else self.initial_state(params)
        like = next(iter(params.values()))
        return {name: value.to(dtype=like.dtype, device=like.device) for name, value in state.items()}

    def surrogate_with(self, problem: Problem, params: Params, noise: Noise, state: Params) -> Tensor:
        return rebar_surrogate(problem, params, noise, state["eta"], torch.exp(state["log_temperature"]))

    def estimate(self, problem: Problem, params: Params, noise: Noise) -> Params:
        warm_problem_caches(problem, params, noise[0])
        return per_estimate_gradients(self.surrogate_with, problem, params, noise, self.current_state(params))

    def fit(self, problem: Problem, params: Params, draw_noise: NoiseSource) -> FitReport:
        state = self.initial_state(params)
        state = fit_state(
            self.surrogate_with, problem, params, draw_noise, state, steps=self.train_steps, lr=self.lr
        )
        self.state = state
        return FitReport(self.train_steps, fitted_scalars(state))


def fitted_scalars(state: Params) -> dict[str, float]:
    """η and λ of a REBAR-style state, as plain floats for the ``fitted`` column."""
    return {"eta": float(state["eta"]), "temperature": float(torch.exp(state["log_temperature"]))}
