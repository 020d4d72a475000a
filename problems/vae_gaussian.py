"""vae_gaussian: the VAE with a Gaussian latent, whose ELBO and its gradient are closed form."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.problems.base import Params
from bench.problems.vae import DigitsVAE
from bench.problems.vae_nets import (
    LOG_2PI,
    N_PIXELS,
    checked_positive_float,
    gaussian_log_density,
    linear_init,
)


class VAEGaussian(DigitsVAE):
    """A VAE with a Gaussian latent and a linear-Gaussian decoder on binarized digits.

    Model: prior z ~ N(0, I_L); decoder p(x|z) = N(Wz + b, σ_x² I_64) (``sigma_x`` fixed);
    encoder q_φ(z|x) = N(μ, diag σ²) with (μ, log σ) = MLP_enc(x), MLP_enc: 64 → ``hidden`` → 2L.
    Cost: the negative ELBO summand with log q evaluated at the sample (not the analytic entropy),
    so that every estimator (pathwise, reinforce, rloo) estimates the same E_q[f].

    Keys: batch_size, data_seed, latent_dim, hidden, state (init | trained), init_seed,
    train_steps, sigma_x. Noise: ε ~ N(0, I) of shape (B, L); z = μ + σ ε (reparameterized).

    Exact gradient: autograd (float64) through the closed form
      E_q[f] = mean_b [ (‖x_b − Wμ_b − b‖² + Σ_j ‖W_{:,j}‖² σ_bj²) / (2σ_x²) + (D/2) log(2π σ_x²)
                        + Σ_j ( ½(μ_bj² + σ_bj² − 1) − log σ_bj ) ],  D = 64.
    """

    name = "vae_gaussian"
    discrete = False
    has_rsample = True
    has_relaxed_cost = False
    has_enumerate_support = False
    gaussian_latent = True

    def __init__(
        self,
        batch_size: int = 8,
        data_seed: int = 0,
        latent_dim: int = 4,
        hidden: int = 32,
        state: str = "trained",
        init_seed: int = 0,
        train_steps: int = 200,
        sigma_x: float = 0.5,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(batch_size, data_seed, latent_dim, hidden, state, init_seed, train_steps, device)
        self._config["sigma_x"] = sigma_x  # the one key this family adds to the shared ones
        self.sigma_x = checked_positive_float("sigma_x", sigma_x)

    @property
    def encoder_outputs(self) -> int:
        return 2 * self.latent_dim

    def init_decoder(self, generator: torch.Generator) -> Params:
        weight, bias = linear_init(generator, self.latent_dim, N_PIXELS)
        return {"decoder.weight": weight, "decoder.bias": bias}

    def training_key(self) -> dict[str, Any]:
        return {**super().training_key(), "sigma_x": self.sigma_x}

    def moments(self, encoded: Tensor) -> tuple[Tensor, Tensor]:
        """μ and log σ from the encoder's outputs (B, 2L): each (B, L)."""
        return encoded[..., : self.latent_dim], encoded[..., self.latent_dim :]

    def negative_elbo(self, encoded: Tensor, decoder: Params, images: Tensor, z: Tensor) -> Tensor:
        mu, log_sigma = self.moments(encoded)
        mean = F.linear(z, decoder["decoder.weight"], decoder["decoder.bias"])  # (*batch, B, 64)
        squared_error = ((images - mean) ** 2).sum(-1)  # (*batch, B)
        log_likelihood = -0.5 * squared_error / self.sigma_x**2 - 0.5 * N_PIXELS * math.log(
            2.0 * math.pi * self.sigma_x**2
        )
        log_prior = (-0.5 * z**2 - 0.5 * LOG_2PI).sum(-1)  # (*batch, B)
        log_q = gaussian_log_density(z, mu, log_sigma).sum(-1)  # (*batch, B)
        return (log_q - log_likelihood - log_prior).mean(-1)

    def expected_negative_elbo(self, encoded: Tensor, decoder: Params, images: Tensor) -> Tensor:
        mu, log_sigma = self.moments(encoded)  # (B, L) each
        weight = decoder["decoder.weight"]  # (64, L)
        residual = images - F.linear(mu, weight, decoder["decoder.bias"])  # (B, 64)
        spread = (torch.exp(2.0 * log_sigma) * (weight**2).sum(0)).sum(-1)  # (B,)
        expected_nll = (residual**2).sum(-1) + spread  # (B,)
        expected_nll = 0.5 * expected_nll / self.sigma_x**2 + 0.5 * N_PIXELS * math.log(
            2.0 * math.pi * self.sigma_x**2
        )
        kl = (0.5 * (mu**2 + torch.exp(2.0 * log_sigma) - 1.0) - log_sigma).sum(-1)  # (B,)
        return (expected_nll + kl).mean()

    def noise(self, generator: torch.Generator, batch: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        shape = (*batch, self.batch_size, self.latent_dim)
        return torch.randn(shape, generator=generator, dtype=dtype, device=self.device)

    def loc_scale(self, params: Params) -> tuple[Tensor, Tensor]:
        mu, log_sigma = self.moments(self.encode(params))
        return mu, torch.exp(log_sigma)  # (B, L) each

    def rsample(self, params: Params, noise: Tensor) -> Tensor:
        mu, sigma = self.loc_scale(params)  # (B, L) each
        return mu + sigma * noise  # (*batch, B, L)

    def sample_encoded(self, encoded: Tensor, noise: Tensor) -> Tensor:
        mu, log_sigma = self.moments(encoded)
        return mu + torch.exp(log_sigma) * noise  # (*batch, B, L), as ``rsample``

    def log_prob(self, params: Params, x: Tensor) -> Tensor:
        mu, log_sigma = self.moments(self.encode(params))
        return gaussian_log_density(x, mu, log_sigma).sum((-2, -1))  # (*batch,)

    def cost_and_log_prob(self, params: Params, x: Tensor) -> tuple[Tensor, Tensor]:
        """``cost`` and ``log_prob`` from one encoder pass (differentiated once, not twice)."""
        images, decoder = self.constants(x.dtype)
        encoded = self.encode(params)  # (B, 2L)
        mu, log_sigma = self.moments(encoded)
        cost = self.negative_elbo(encoded, self.decoder_in(params, decoder), images, x)
        return cost, gaussian_log_density(x, mu, log_sigma).sum((-2, -1))

    def memory_per_sample(self) -> int:
        # the sample, the decoder's mean and residual and their gradients: per image
        return 3 * self.batch_size * (4 * self.latent_dim + 2 * N_PIXELS)
