"""IndeCateR: the CatLog-derivative trick for factorized categorical (and binary) latents."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.func import grad, vmap

from bench.estimators.base import Estimator, detached
from bench.problems.base import Params, Problem

# Estimators whose working set per estimate is far above what the runner budgets for (it sizes
# batches from the problem's memory_per_sample × n_samples) vmap their batch in chunks whose
# working set stays under this.
CHUNK_BYTES = 512 << 20


def event_shape(problem: Problem) -> tuple[int, ...]:
    """The shape of one sample's noise, (*latent) for bits and (*variables, K) for categoricals,
    without building the problem's parameters (a VAE would load or train its parameter point)."""
    generator = torch.Generator(device=problem.device).manual_seed(0)
    return tuple(problem.noise(generator, (1,), torch.float32).shape[1:])


def estimates_in_chunks(
    estimator: Estimator, problem: Problem, params: Params, noise: Tensor, bytes_per_estimate: int
) -> Params:
    """``Estimator.estimate`` (vmap of grad of the surrogate over the batch) in chunks of at most
    CHUNK_BYTES // bytes_per_estimate estimates (``torch.func.vmap``'s chunk_size: still vectorized,
    no Python loop over estimates)."""

    def one_estimate(params_: Params, noise_one: Tensor) -> Tensor:
        return estimator.surrogate(problem, params_, noise_one)

    chunk = max(1, CHUNK_BYTES // max(1, bytes_per_estimate))
    chunk_size = None if chunk >= noise.shape[0] else chunk
    return vmap(grad(one_estimate), in_dims=(None, 0), chunk_size=chunk_size)(params, noise)


def latent_layout(problem: Problem) -> tuple[int, int]:
    """(D, K): the number of independent variables and of classes per variable (K = 2 for bits)."""
    shape = event_shape(problem)
    if problem.binary_latent:
        return math.prod(shape), 2
    return math.prod(shape[:-1]), shape[-1]


def class_probabilities(problem: Problem, params: Params) -> Tensor:
    """p_d(k) for every variable d and class k: (D, K), differentiable in θ. Bits: k ∈ {0, 1}."""
    logits = problem.logits(params)
    if problem.binary_latent:
        flat = logits.reshape(-1)  # (D,)
        return torch.stack([torch.sigmoid(-flat), torch.sigmoid(flat)], -1)  # (D, 2)
    return torch.softmax(logits.reshape(-1, logits.shape[-1]), -1)  # (D, K)


def with_one_variable_set(problem: Problem, x: Tensor) -> Tensor:
    """Every sample with one variable replaced by one class: (S, *event) → (S, D, K, *event), entry
    [s, d, k] = x_s with x_d := k. Built by masking, no loop over variables or classes."""
    n_samples, event = x.shape[0], x.shape[1:]
    if problem.binary_latent:
        flat = x.reshape(n_samples, -1)  # (S, D)
        n_variables = flat.shape[-1]
        one = torch.eye(n_variables, dtype=x.dtype, device=x.device)  # (D, D): which bit is set
        bit = torch.tensor([0.0, 1.0], dtype=x.dtype, device=x.device)  # (K,)
        kept = flat[:, None, None, :] * (1.0 - one)[None, :, None, :]  # (S, D, 1, D)
        replaced = bit[None, None, :, None] * one[None, :, None, :]  # (1, D, K, D)
        return (kept + replaced).reshape(n_samples, n_variables, 2, *event)
    n_classes = event[-1]
    flat = x.reshape(n_samples, -1, n_classes)  # (S, D, K)
    n_variables = flat.shape[1]
    one = torch.eye(n_variables, dtype=x.dtype, device=x.device)  # (D, D): which variable is set
    classes = torch.eye(n_classes, dtype=x.dtype, device=x.device)  # (K, K): to which one-hot
    kept = flat[:, None, None, :, :] * (1.0 - one)[None, :, None, :, None]  # (S, D, 1, D, K)
    replaced = one[None, :, None, :, None] * classes[None, None, :, None, :]  # (1, D, K, D, K)
    return (kept + replaced).reshape(n_samples, n_variables, n_classes, *event)


class IndeCateR(Estimator):
    """IndeCateR: f at every class of every variable, the others sampled (De Smet et al. 2023).

    De Smet, Sansone & Zuidberg Dos Martires 2023, "Differentiable sampling of categorical
    distributions using the CatLog-derivative trick", NeurIPS, §4.

    For x = (x_1..x_D) with independent x_d ∼ p_d(·; θ) over K classes (bits: K = 2) and samples
    x^(s) ∼ p, s = 1..S:
        ĝ = (1/S) Σ_s Σ_d Σ_k [ ∇θ p_d(k) f(θ, x^(s) with x_d := k)
                                + (1/D) p_d(k) ∇θ f(θ, x^(s) with x_d := k) ].
    The first term is the CatLog-derivative trick: ∇E[f] = Σ_d E_{x_{−d}}[Σ_k ∇p_d(k) f(x_{−d}, k)]
    by independence, each inner sum exact over x_d's K classes (a Rao-Blackwellized REINFORCE that
    needs no baseline: Σ_k ∇p_d(k) = 0). The second term is the direct dependence of f on θ (an
    ELBO's log q): E[∇θ f(θ, x)] = E_{x_{−d}}[Σ_k p_d(k) ∇θ f(θ, x_{−d}, k)] for every d, averaged
    over d with weight 1/D. (Differentiating Σ_dk p_d(k) f(θ, ·) naively would count it D times.)
    Zero for ``categorical``, ``bernoulli`` and ``multicategorical``.

    Unbiased; f may be a black box of the hard sample. Requires a binary or categorical latent
    (``binary_latent`` or ``categorical_latent``): ``bernoulli``, ``categorical`` (D = 1: then ĝ is the
    exact gradient), ``multicategorical``, ``vae_bernoulli``, ``vae_categorical`` (D = B·L: f is the
    whole minibatch's cost, evaluated as a black box). cost_evals = n_samples·D·K; all of them are
    built as one (S, D, K, *event) batch and evaluated in one call. The batch of estimates is vmapped
    in chunks so that the D·K-fold working set stays under CHUNK_BYTES.
    """

    name = "indecater"
    unbiased = True

    def cost_evals(self, n_samples: int, problem: Problem | None = None) -> int:
        """n_samples·D·K on ``problem``; per variable and class (n_samples) without one."""
        if problem is None:
            return n_samples
        n_variables, n_classes = latent_layout(problem)
        return n_samples * n_variables * n_classes

    def why_not(self, problem: Problem, n_samples: int) -> str | None:
        reason = super().why_not(problem, n_samples)
        if reason is None and not (problem.binary_latent or problem.categorical_latent):
            return (
                f"{self.name} needs independent discrete variables with logits (the flag binary_latent "
                f"or categorical_latent), which {problem.name} lacks"
            )
        return reason

    def surrogate(self, problem: Problem, params: Params, noise: Tensor) -> Tensor:
        x = problem.sample(detached(params), noise)  # (S, *event)
        varied = with_one_variable_set(problem, x)  # (S, D, K, *event)
        cost = problem.cost(params, varied)  # (S, D, K)
        probs = class_probabilities(problem, params)  # (D, K)
        n_variables = probs.shape[0]
        catlog = (probs * cost.detach()).sum((-2, -1))  # (S,): gradient Σ_dk ∇p_d(k) f
        direct = (probs.detach() * cost).sum((-2, -1)) / n_variables  # (S,): gradient of f's own θ-term
        return (catlog + direct).mean()

    def estimate(self, problem: Problem, params: Params, noise: Tensor) -> Params:
        n_variables, n_classes = latent_layout(problem)
        element = torch.finfo(noise.dtype).bits // 8
        evaluations = noise.shape[1] * n_variables * n_classes
        return estimates_in_chunks(
            self, problem, params, noise, element * evaluations * problem.memory_per_sample()
        )
