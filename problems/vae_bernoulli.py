"""vae_bernoulli: the binary VAE (factorized Bernoulli latent), from the small MLP on digits to the
papers' 200-latent linear and nonlinear models on FashionMNIST (docs/problems.md)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.problems import data
from bench.problems.base import Params, open_uniform
from bench.problems.vae import DigitsVAE
from bench.problems.vae_nets import (
    ARCHITECTURES,
    EVAL_SAMPLES,
    MAX_BERNOULLI_LATENT,
    TRAIN_BATCH,
    TRAIN_PAIRS,
    all_codes,
    bernoulli_log_prob,
    checked_int,
    layer_sizes,
    network,
    network_init,
)


class VAEBernoulli(DigitsVAE):
    """A VAE with ``latent_dim`` Bernoulli latent bits on binarized digits or FashionMNIST.

    Model: prior z ~ Bernoulli(½)^L; decoder p(x|z) = Π_pixels Bernoulli(σ(NN_dec(z))); encoder
    q_φ(z|x) = Π_j Bernoulli(σ(l_j)), l = NN_enc(x). Networks (``architecture``): mlp
    D → ``hidden`` → L and L → ``hidden`` → D (tanh); linear D → L and L → D; nonlinear
    D → 200 → 200 → L and L → 200 → 200 → D (LeakyReLU(0.3)), the DisARM/RELAX/REBAR binary VAE
    at latent_dim = 200 on FashionMNIST (D = 784). Cost: the negative ELBO summand (module docstring).

    Keys: batch_size, data_seed, latent_dim (exact gradient up to 16; beyond, an estimated reference),
    hidden (mlp only), state (init | trained), init_seed, train_steps, dataset (digits |
    fashion_mnist), architecture (mlp | linear | nonlinear), split (train | test | all | auto),
    binarization (threshold | dynamic | auto), data_dir (FashionMNIST's folder), eval_samples (K of
    ``held_out_bound``); see ``problems.data``. Noise: u ~ U(0, 1)^(B×L);
    z = 1[u > 1 − σ(l)], so the binary Concrete relaxation σ((l + log u − log(1 − u))/τ) shares
    the noise. Relaxed cost: the same formula at z ∈ [0, 1]^L
    (decoder on the relaxed z, log q as z log σ(l) + (1 − z) log σ(−l)); equal to the cost at hard z.

    Exact gradient: autograd (float64) through E_q[f] = mean_b Σ_k q(c_k|x_b) f_b(c_k), summed over
    all 2^L codes c_k per image, vectorized as (B, 2^L) matrices.

    ``enumerate_outcomes`` is not offered: one sample is the joint z of all B images, 2^(B·L)
    outcomes (2^32 at the defaults).

    Training length matters for the bias checks: the exact ELBO drives q towards deterministic
    codes (after 1000 steps some probabilities are ~1e-7). Score-function estimates then hinge on
    outcomes too rare to appear in 1e5 draws, and a z-test that trusts the central limit theorem
    flags unbiased estimators (seen with reinforce at 500-1000 steps, n_estimates = 20000). At the
    default 200 steps the smallest probability on the default minibatch is ~5e-4 and the checks hold.
    """

    name = "vae_bernoulli"
    discrete = True
    has_rsample = False
    has_relaxed_cost = True
    has_enumerate_support = False
    binary_latent = True
    max_latent_dim = MAX_BERNOULLI_LATENT

    def __init__(
        self,
        batch_size: int = 8,
        data_seed: int = 0,
        latent_dim: int = 4,
        hidden: int = 32,
        state: str = "trained",
        init_seed: int = 0,
        train_steps: int = 200,
        dataset: str = "digits",
        architecture: str = "mlp",
        split: str = "auto",
        binarization: str = "auto",
        data_dir: str | None = None,
        eval_samples: int = EVAL_SAMPLES,
        device: torch.device | str = "cpu",
    ) -> None:
        spec = data.resolve(dataset, split, binarization, data_dir)
        architecture = data.choice("architecture", architecture, ARCHITECTURES)
        super().__init__(batch_size, data_seed, latent_dim, hidden, state, init_seed, train_steps, device,
                         spec=spec, architecture=architecture)  # fmt: skip
        self._config.update(
            dataset=dataset, architecture=architecture, split=split, binarization=binarization,
            data_dir=data_dir, eval_samples=eval_samples,
        )  # fmt: skip
        self.eval_samples = checked_int("eval_samples", eval_samples, 1)

    @property
    def decoder_sizes(self) -> tuple[int, ...]:
        """The decoder's widths, L → ... → D."""
        return layer_sizes(self.architecture, self.latent_dim, self.hidden, self.n_pixels)

    def decoder_network(self, decoder: Params, z: Tensor) -> Tensor:
        """Pixel logits: z (*batch, L) → (*batch, D)."""
        return network(decoder, "decoder", z, self.architecture)

    @property
    def encoder_outputs(self) -> int:
        return self.latent_dim

    def train_batch_size(self) -> int:
        """TRAIN_BATCH digits, fewer when 2^L is large: a step enumerates 2^L codes per digit
        (beyond enumeration the step samples codes: TRAIN_BATCH)."""
        if not self.has_exact_gradient:
            return TRAIN_BATCH
        return max(1, min(TRAIN_BATCH, TRAIN_PAIRS >> self.latent_dim))

    def training_codes(self, encoded: Tensor, generator: torch.Generator, n: int) -> Tensor:
        u = torch.rand((n, *encoded.shape), generator=generator, dtype=encoded.dtype, device=generator.device)
        return (u.to(encoded.device) < torch.sigmoid(encoded)).to(encoded.dtype)  # (n, B, L)

    def code_log_prob(self, encoded: Tensor, z: Tensor) -> Tensor:
        return bernoulli_log_prob(encoded, z).sum(-1)

    def init_decoder(self, generator: torch.Generator) -> Params:
        return network_init(generator, "decoder", self.decoder_sizes)

    def negative_elbo(self, encoded: Tensor, decoder: Params, images: Tensor, z: Tensor) -> Tensor:
        return self.negative_elbo_at(bernoulli_log_prob(encoded, z).sum(-1), decoder, images, z)

    def negative_elbo_at(self, log_q: Tensor, decoder: Params, images: Tensor, z: Tensor) -> Tensor:
        """``negative_elbo`` from log q(z|x) (*batch, B), computed once where log q is used twice."""
        pixel_logits = self.decoder_network(decoder, z)  # (*batch, B, D)
        log_likelihood = bernoulli_log_prob(pixel_logits, images).sum(-1)  # (*batch, B)
        log_prior = -self.latent_dim * math.log(2.0)
        return (log_q - log_likelihood - log_prior).mean(-1)

    def expected_negative_elbo(self, encoded: Tensor, decoder: Params, images: Tensor) -> Tensor:
        codes = all_codes(self.latent_dim, encoded.dtype, encoded.device)  # (K, L)
        pixel_logits = self.decoder_network(decoder, codes)  # (K, D)
        # log p(x_b | c_k) = x_b·d_k − Σ softplus(d_k): (B, K)
        log_likelihood = images @ pixel_logits.T - F.softplus(pixel_logits).sum(-1)
        # log q(c_k | x_b) = l_b·c_k + Σ_j log σ(−l_bj): (B, K)
        log_q = encoded @ codes.T + F.logsigmoid(-encoded).sum(-1, keepdim=True)
        log_prior = -self.latent_dim * math.log(2.0)
        per_image = (torch.exp(log_q) * (log_q - log_likelihood - log_prior)).sum(-1)  # (B,)
        return per_image.mean()

    def noise(self, generator: torch.Generator, batch: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        return open_uniform(generator, (*batch, self.batch_size, self.latent_dim), dtype, self.device)

    def logits(self, params: Params) -> Tensor:
        return self.encode(params)  # (B, L)

    def sample_encoded(self, encoded: Tensor, noise: Tensor) -> Tensor:
        return (noise > 1.0 - torch.sigmoid(encoded)).to(noise.dtype)  # (*batch, B, L)

    def log_prob(self, params: Params, x: Tensor) -> Tensor:
        return bernoulli_log_prob(self.encode(params), x).sum(-1).sum(-1)  # (*batch,), as cost_and_log_prob

    def cost_and_log_prob(self, params: Params, x: Tensor) -> tuple[Tensor, Tensor]:
        """``cost`` and ``log_prob`` from one encoder pass (differentiated once, not twice)."""
        images, decoder = self.constants(x.dtype)
        log_q = bernoulli_log_prob(self.encode(params), x).sum(-1)  # (*batch, B)
        return self.negative_elbo_at(log_q, self.decoder_in(params, decoder), images, x), log_q.sum(-1)

    def relaxed_sample(self, params: Params, noise: Tensor, temperature: float) -> Tensor:
        return self.relax(self.preimage(params, noise), temperature)  # (*batch, B, L)

    def relaxed_cost(self, params: Params, y: Tensor) -> Tensor:
        return self.cost(params, y)

    def memory_per_sample(self) -> int:
        # decoder activations and their gradients, q's terms, the noise: per image
        hidden = sum(self.decoder_sizes[1:-1])
        return 3 * self.batch_size * (4 * self.latent_dim + 2 * hidden + 2 * self.n_pixels)

    def eval_width(self) -> int:
        return self.latent_dim + sum(self.decoder_sizes[1:-1]) + 2 * self.n_pixels
