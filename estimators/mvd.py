"""The measure-valued derivative (MVD) for Gaussian latents: Weibull (Rayleigh) and double-sided
Maxwell couplings, vectorized over every latent coordinate."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.func import grad, vmap

from bench.errors import ConfigError
from bench.estimators.base import Estimator, Noise, detached
from bench.problems.base import Params, Problem, open_uniform

SQRT_2PI = math.sqrt(2.0 * math.pi)
BLOCKS = 4  # perturbed inputs per coordinate and draw: mean +, mean −, scale +, scale −
CHUNK_BYTES = 1 << 28  # working set of one vectorized chunk of estimates (see ``estimate``)


def rayleigh(u: Tensor) -> Tensor:
    """W = sqrt(−2 log u) from uniforms in (0, 1): the Rayleigh law, density w e^{−w²/2} on w > 0
    (= Weibull with shape 2 and scale √2)."""
    return torch.sqrt(-2.0 * torch.log(u))


def double_sided_maxwell(normals: Tensor) -> Tensor:
    """M = sign(n₁) ‖(n₁, n₂, n₃)‖ from three standard normals on the leading axis (3, ...):
    density m² e^{−m²/2} / √(2π) on the real line. ‖n‖ is Maxwell (chi with 3 degrees of freedom),
    and sign(n₁) is independent of ‖n‖ (the normal's direction is uniform and independent of its
    length), so the sign is a fair coin independent of the magnitude."""
    return torch.sign(normals[0]) * torch.sqrt((normals**2).sum(0))


def replace_one_coordinate(base: Tensor, values: Tensor) -> Tensor:
    """For every coordinate i, ``base`` with coordinate i replaced by values[..., i]:
    base (S, D), values (..., S, D) → (..., S, D, D) with [..., s, i, j] = values[s, i] if j == i
    else base[s, j]. One batched ``where`` (no loop over dimensions)."""
    dim = base.shape[-1]
    diagonal = torch.eye(dim, dtype=torch.bool, device=base.device)  # (D, D)
    return torch.where(diagonal, values.unsqueeze(-1), base.unsqueeze(-2))


class MeasureValued(Estimator):
    """Measure-valued derivative for Gaussian latents: Weibull and double-sided Maxwell couplings.

    References: Pflug 1989; Heidergott & Vázquez-Abad 2000; Mohamed, Rosca, Figurnov & Mnih 2020,
    "Monte Carlo Gradient Estimation in Machine Learning", JMLR, §6 (weak derivatives of the
    Gaussian: mean by the Weibull/Rayleigh pair, scale by the double-sided Maxwell and the Gaussian).

    x = μ + σ ε ~ N(μ, diag σ²) with (μ, σ) = ``problem.loc_scale(params)`` and ε the problem's own
    noise. ∂N/∂μᵢ and ∂N/∂σᵢ are written as a constant times a difference of two densities, so per
    coordinate i, with every other coordinate at the base sample x (x^{i←v}: x with xᵢ = v):

      ĝ_μᵢ = (1/S) Σ_s [f(x_s^{i←μᵢ+σᵢW}) − f(x_s^{i←μᵢ−σᵢW'})] / (σᵢ √(2π)),
             W, W' ~ Rayleigh (density w e^{−w²/2}, the Weibull with shape 2 and scale √2);
      ĝ_σᵢ = (1/S) Σ_s [f(x_s^{i←μᵢ+σᵢM}) − f(x_s^{i←μᵢ+σᵢε'})] / σᵢ,
             M ~ double-sided Maxwell (density m² e^{−m²/2}/√(2π)), ε' ~ N(0, 1).

    Key ``coupled`` (default true): W' = W, and ε' = U·M with U ~ U(0, 1) (U·M is exactly N(0, 1)),
    so each difference compares nearby points and the variance drops; false: W', ε' are drawn
    independently of W, M (a fresh ε', not the base sample, so both settings cost the same).
    The extra draws (W, U, M, ε') come from the aux stream; ε is the problem's.

    Gradients reach θ by the chain rule through μ(θ), σ(θ) (an encoder, for ``vae_gaussian``): the
    surrogate holds stopgrad(ĝ_μ)·μ(θ) + stopgrad(ĝ_σ)·σ(θ). When f depends on θ directly (the
    ELBO's log q), the direct term ∇θ f(θ, x) is averaged over the D scale-negative inputs
    x^{i←μᵢ+σᵢε'}: each is an exact draw from N(μ, σ²) (ε'ᵢ is N(0, 1) and independent of the other
    coordinates), so this is unbiased and costs no extra evaluation.

    Unbiased for any integrable f (f need not be differentiable: a black box). Requires
    ``gaussian_latent``. cost_evals = 4·D·n_samples, D the number of latent coordinates (B·L for
    a VAE: f is a black box of the whole latent, so each coordinate costs full evaluations). All
    4·D·S inputs are built in one batch and evaluated in two calls of the cost.
    """

    name = "mvd"
    unbiased = True
    requires = ("gaussian_latent",)

    def __init__(self, coupled: Any = True) -> None:
        super().__init__(coupled=coupled)
        if not isinstance(coupled, bool):
            raise ConfigError("estimator.coupled", f"expected true or false, got {coupled!r}")
        self.coupled = coupled

    def cost_evals(self, n_samples: int, problem: Problem | None = None) -> int:
        """4·D·n_samples, D = the problem's number of latent coordinates (B·L for a VAE); per
        coordinate (4·n_samples) without a problem or on one without a Gaussian latent."""
        if problem is None or not problem.gaussian_latent:
            return BLOCKS * n_samples
        return BLOCKS * latent_size(problem) * n_samples

    def why_not(self, problem: Problem, n_samples: int) -> str | None:
        reason = super().why_not(problem, n_samples)
        if reason is not None and not problem.gaussian_latent:
            return (
                f"{self.name} needs a Gaussian latent x = μ + σε (the flag gaussian_latent), "
                f"which {problem.name} lacks"
            )
        return reason

    def make_noise(
        self,
        problem: Problem,
        generator: torch.Generator,
        aux_generator: torch.Generator,
        batch: tuple[int, ...],
        dtype: torch.dtype,
    ) -> Noise:
        """(ε, uniforms, normals): ε (*batch, *latent) the problem's own noise; from the aux stream,
        uniforms (*batch, 2, *latent) for W and U (coupled) or W and W' (uncoupled), and normals
        (*batch, 3 or 4, *latent): three for M, plus ε' when uncoupled."""
        eps = problem.noise(generator, batch, dtype)
        event = tuple(eps.shape[len(batch) :])
        uniforms = open_uniform(aux_generator, (*batch, 2, *event), dtype, eps.device)
        n_normals = 3 if self.coupled else 4
        normals = torch.randn(
            (*batch, n_normals, *event), generator=aux_generator, dtype=dtype, device=eps.device
        )
        return eps, uniforms, normals

    def perturbed_values(self, uniforms: Tensor, normals: Tensor) -> Tensor:
        """The standardized values that replace coordinate i, per block: (4, S, *latent) =
        [W, −W', M, ε'] from uniforms (S, 2, *latent) and normals (S, 3|4, *latent)."""
        weibull = rayleigh(uniforms[:, 0])
        maxwell = double_sided_maxwell(normals[:, :3].movedim(1, 0))
        if self.coupled:
            weibull_minus, eps_prime = weibull, uniforms[:, 1] * maxwell
        else:
            weibull_minus, eps_prime = rayleigh(uniforms[:, 1]), normals[:, 3]
        return torch.stack([weibull, -weibull_minus, maxwell, eps_prime])

    def surrogate(self, problem: Problem, params: Params, noise: Noise) -> Tensor:
        eps, uniforms, normals = noise  # (S, *latent), (S, 2, *latent), (S, 3|4, *latent)
        mu, sigma = problem.loc_scale(params)  # (*latent) each, differentiable in θ
        n_samples, latent_shape = eps.shape[0], mu.shape
        loc, scale = mu.detach().reshape(-1), sigma.detach().reshape(-1)  # (D,)
        base = loc + scale * eps.reshape(n_samples, -1)  # (S, D): the sample every estimator sees
        standardized = self.perturbed_values(uniforms, normals).reshape(BLOCKS, n_samples, -1)  # (4, S, D)
        inputs = replace_one_coordinate(base, loc + scale * standardized)  # (4, S, D, D)
        inputs = inputs.reshape(BLOCKS, n_samples, loc.numel(), *latent_shape)  # (4, S, D, *latent)
        frozen = problem.cost(detached(params), inputs[:3])  # (3, S, D): mean ±, scale +
        scale_minus = problem.cost(params, inputs[3])  # (S, D): valid samples, θ attached
        grad_loc = ((frozen[0] - frozen[1]) / (scale * SQRT_2PI)).mean(0)  # (D,)
        grad_scale = ((frozen[2] - scale_minus.detach()) / scale).mean(0)  # (D,)
        chain = (grad_loc.detach().reshape(latent_shape) * mu).sum()
        chain = chain + (grad_scale.detach().reshape(latent_shape) * sigma).sum()
        return chain + scale_minus.mean()  # + the direct term ∇θ f(θ, x) at valid samples

    def estimate(self, problem: Problem, params: Params, noise: Noise) -> Params:
        """vmap(grad(surrogate)) over the batch, in chunks so that the 4·D·S perturbed inputs of
        one chunk stay within CHUNK_BYTES (the runner sizes batches for S evaluations per
        estimate, not 4·D·S). A loop over a few chunks of many estimates each, not over estimates."""

        def one_estimate(params_: Params, noise_one: Noise) -> Tensor:
            return self.surrogate(problem, params_, noise_one)

        batch_grad = vmap(grad(one_estimate), in_dims=(None, 0))
        eps = noise[0]
        n_estimates, n_samples = eps.shape[0], eps.shape[1]
        element = eps.element_size()
        per_estimate = element * BLOCKS * n_samples * latent_size(problem) * problem.memory_per_sample()
        chunk = max(1, CHUNK_BYTES // max(per_estimate, 1))
        if chunk >= n_estimates:
            return batch_grad(params, noise)
        parts = [
            batch_grad(params, tuple(part[start : start + chunk] for part in noise))
            for start in range(0, n_estimates, chunk)
        ]
        return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


def latent_size(problem: Problem) -> int:
    """D: the number of Gaussian latent coordinates, from ``loc_scale`` at the parameter point."""
    mu, _sigma = problem.loc_scale(problem.params())
    return mu.numel()
