"""A VAE with categorical latent codes on binarized 8×8 digits: the ELBO gradient w.r.t. the encoder.

The data, the minibatch, the parameter point (``state``, ``init_seed``, ``train_steps``, the
cache under results/.cache) and the naming of the encoder's parameters are those of
``vae_bernoulli`` (``problems.vae.DigitsVAE``); only the latent family differs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.problems import latent
from bench.problems.base import Params, open_uniform
from bench.problems.multicategorical import joint_classes
from bench.problems.vae import DigitsVAE
from bench.problems.vae_nets import (
    N_PIXELS,
    TRAIN_BATCH,
    TRAIN_PAIRS,
    bernoulli_log_prob,
    checked_int,
    mlp,
    mlp_init,
)

# The exact gradient enumerates n_classes^n_latent codes per image (as vae_bernoulli's 2^16); beyond,
# bias is measured against an estimated reference gradient (``bench.reference``).
MAX_CODES = 2**16


def enumerable(n_latent: int, n_classes: int) -> bool:
    """n_classes^n_latent ≤ MAX_CODES, without forming a huge power."""
    codes = 1
    for _ in range(n_latent):
        codes *= n_classes
        if codes > MAX_CODES:
            return False
    return True


def all_one_hot_codes(n_latent: int, n_classes: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Every code as one-hots, the first variable varying slowest: (K^L, L, K)."""
    return F.one_hot(joint_classes(n_latent, n_classes, device), n_classes).to(dtype)


class VAECategorical(DigitsVAE):
    """A VAE whose code is ``n_latent`` independent categorical variables of ``n_classes`` classes.

    Model: prior z ~ uniform over the K^L codes (log p(z) = −L log K); decoder
    p(x|z) = Π_pixels Bernoulli(σ(MLP_dec(z))) with the one-hot code flattened into the input,
    MLP_dec: L·K → ``hidden`` → 64 (tanh); encoder q_φ(z|x) = Π_l Categorical(softmax(φ_l)),
    φ = MLP_enc(x) reshaped to (L, K), MLP_enc: 64 → ``hidden`` → L·K. Cost: the negative ELBO
    summand mean_b [log q_φ(z_b|x_b) − log p(x_b|z_b) − log p(z_b)], z of shape (*batch, B, L, K).

    Keys: batch_size, data_seed, n_latent (L), n_classes (K, ≥ 2; exact gradient while K^L ≤ 2^16,
    beyond it an estimated reference), hidden, state (init | trained), init_seed, train_steps.
    Noise: u ~ U(0, 1)^(B×L×K); z_bl = onehot(argmax_k(φ_blk + G(u_blk))), G(u) = −log(−log u)
    (the Gumbel-max trick, via ``problems.latent``), so the Gumbel-softmax relaxation
    softmax((φ + G(u))/τ) shares the noise. Relaxed cost: the same formula at relaxed one-hots y
    (decoder on the flattened y, log q as Σ_lk y_lk log softmax(φ_l)_k); equal to the cost at hard
    codes.

    Exact gradient: autograd (float64) through E_q[f] = mean_b Σ_c q(c|x_b) f_b(c) over all K^L
    codes c per image, vectorized as (B, K^L) matrices. ``enumerate_outcomes`` is not offered: one
    sample is the joint code of all B images, K^(B·L) outcomes.

    Parameter point and cache: as vae_bernoulli (``problems.vae``); training takes at most
    ``TRAIN_PAIRS`` (digit, code) pairs a step, so fewer digits when K^L is large.
    """

    name = "vae_categorical"
    discrete = True
    has_rsample = False
    has_relaxed_cost = True
    has_enumerate_support = False
    categorical_latent = True

    def __init__(
        self,
        batch_size: int = 8,
        data_seed: int = 0,
        n_latent: int = 3,
        n_classes: int = 3,
        hidden: int = 32,
        state: str = "trained",
        init_seed: int = 0,
        train_steps: int = 200,
        device: torch.device | str = "cpu",
    ) -> None:
        self.n_latent = checked_int("n_latent", n_latent, 1)
        self.n_classes = checked_int("n_classes", n_classes, 2)
        # the base class knows one latent size, used for the encoder's shapes only through
        # encoder_outputs/init_decoder below; its config and cache key are replaced with L and K
        super().__init__(batch_size, data_seed, n_latent, hidden, state, init_seed, train_steps, device)
        config = {key: value for key, value in self._config.items() if key != "latent_dim"}
        self._config = {**config, "n_latent": n_latent, "n_classes": n_classes}
        self.has_exact_gradient = enumerable(self.n_latent, self.n_classes)  # type: ignore[misc]

    @classmethod
    def exact_gradient_for(cls, config: dict[str, Any]) -> bool:
        """While the K^L codes can be enumerated (≤ 2^16); beyond, no exact gradient."""
        n_latent, n_classes = config.get("n_latent", 3), config.get("n_classes", 3)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (n_latent, n_classes)):
            return cls.has_exact_gradient
        return enumerable(n_latent, n_classes)

    @property
    def n_codes(self) -> int:
        return self.n_classes**self.n_latent

    @property
    def encoder_outputs(self) -> int:
        return self.n_latent * self.n_classes

    def init_decoder(self, generator: torch.Generator) -> Params:
        return mlp_init(generator, "decoder", (self.n_latent * self.n_classes, self.hidden, N_PIXELS))

    def training_key(self) -> dict[str, Any]:
        key = {name: value for name, value in super().training_key().items() if name != "latent_dim"}
        return {**key, "n_latent": self.n_latent, "n_classes": self.n_classes}

    def train_batch_size(self) -> int:
        """TRAIN_BATCH digits, fewer when K^L is large: a step enumerates K^L codes per digit
        (beyond enumeration the step samples codes: TRAIN_BATCH)."""
        if not self.has_exact_gradient:
            return TRAIN_BATCH
        return max(1, min(TRAIN_BATCH, TRAIN_PAIRS // self.n_codes))

    def training_codes(self, encoded: Tensor, generator: torch.Generator, n: int) -> Tensor:
        logits = self.code_logits(encoded)  # (B, L, K)
        u = open_uniform(generator, (n, *logits.shape), logits.dtype, logits.device)
        return latent.categorical_hard(latent.categorical_preimage(logits, u))  # (n, B, L, K)

    def code_log_prob(self, encoded: Tensor, z: Tensor) -> Tensor:
        return (z * torch.log_softmax(self.code_logits(encoded), -1)).sum((-2, -1))

    def code_logits(self, encoded: Tensor) -> Tensor:
        """The encoder's outputs (..., L·K) as logits (..., L, K)."""
        return encoded.unflatten(-1, (self.n_latent, self.n_classes))

    def negative_elbo(self, encoded: Tensor, decoder: Params, images: Tensor, z: Tensor) -> Tensor:
        pixel_logits = mlp(decoder, "decoder", z.flatten(-2))  # (*batch, B, 64)
        log_likelihood = bernoulli_log_prob(pixel_logits, images).sum(-1)  # (*batch, B)
        log_q = (z * torch.log_softmax(self.code_logits(encoded), -1)).sum((-2, -1))  # (*batch, B)
        log_prior = -self.n_latent * math.log(self.n_classes)
        return (log_q - log_likelihood - log_prior).mean(-1)

    def expected_negative_elbo(self, encoded: Tensor, decoder: Params, images: Tensor) -> Tensor:
        codes = all_one_hot_codes(self.n_latent, self.n_classes, encoded.dtype, encoded.device)  # (M, L, K)
        flat_codes = codes.flatten(-2)  # (M, L·K)
        pixel_logits = mlp(decoder, "decoder", flat_codes)  # (M, 64)
        # log p(x_b | c_m) = x_b·d_m − Σ softplus(d_m): (B, M)
        log_likelihood = images @ pixel_logits.T - F.softplus(pixel_logits).sum(-1)
        # log q(c_m | x_b) = Σ_lk c_mlk log softmax(φ_bl)_k: (B, M)
        log_q = torch.log_softmax(self.code_logits(encoded), -1).flatten(-2) @ flat_codes.T
        log_prior = -self.n_latent * math.log(self.n_classes)
        per_image = (torch.exp(log_q) * (log_q - log_likelihood - log_prior)).sum(-1)  # (B,)
        return per_image.mean()

    def noise(self, generator: torch.Generator, batch: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        shape = (*batch, self.batch_size, self.n_latent, self.n_classes)
        return open_uniform(generator, shape, dtype, self.device)  # (*batch, B, L, K)

    def logits(self, params: Params) -> Tensor:
        return self.code_logits(self.encode(params))  # (B, L, K)

    def sample_encoded(self, encoded: Tensor, noise: Tensor) -> Tensor:
        return self.hard(latent.categorical_preimage(self.code_logits(encoded), noise))  # (*batch, B, L, K)

    def log_prob(self, params: Params, x: Tensor) -> Tensor:
        return (x * torch.log_softmax(self.logits(params), -1)).sum((-3, -2, -1))  # (*batch,)

    def relaxed_sample(self, params: Params, noise: Tensor, temperature: float) -> Tensor:
        return self.relax(self.preimage(params, noise), temperature)  # (*batch, B, L, K)

    def relaxed_cost(self, params: Params, y: Tensor) -> Tensor:
        return self.cost(params, y)

    def memory_per_sample(self) -> int:
        # the code and its noise, decoder activations and their gradients, q's terms: per image
        return 3 * self.batch_size * (4 * self.n_latent * self.n_classes + 2 * self.hidden + 2 * N_PIXELS)
