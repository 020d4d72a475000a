"""Variational autoencoders on binarized 8×8 digits: the ELBO gradient w.r.t. the encoder.

Two problems share everything but the latent family:

  vae_bernoulli: q(z|x) factorized Bernoulli over ``latent_dim`` bits, an MLP decoder with a
                 Bernoulli likelihood over the 64 pixels, prior Bernoulli(½)^L. Exact gradient by
                 enumerating all 2^L codes per image.
  vae_gaussian:  q(z|x) = N(μ(x), diag σ(x)²), a linear-Gaussian decoder N(Wz + b, σ_x² I), prior
                 N(0, I). Exact gradient through the closed-form ELBO.

Data: scikit-learn's bundled digits (1797 images, pixels 0..16, shipped with the package),
binarized as pixel > ``BINARIZE_THRESHOLD`` (= 8). The measured minibatch is ``batch_size``
images drawn without replacement by a ``torch.Generator`` seeded with ``data_seed``.

Why only the encoder is differentiated: the decoder's ELBO gradient is E_q[∇ log p(x|z)], a plain
pathwise average that every estimator would compute the same way; including it would only dilute
the comparison. The decoder's weights are constants of the problem; the parameters θ = φ are the
encoder's, named by their module paths (``encoder.0.weight``, ``encoder.0.bias``,
``encoder.2.weight``, ``encoder.2.bias``; ``encoder.1`` is the tanh).

The cost is the negative ELBO summand averaged over the minibatch,
    f(φ, z) = mean_b [ −log p(x_b | z_b) − log p(z_b) + log q_φ(z_b | x_b) ],
with z of shape (*batch, batch_size, latent_dim); it depends on φ directly through log q, and
estimators include that direct term. E_q[f] is the negative ELBO.

The parameter point (``state``): ``init`` is PyTorch's default ``nn.Linear`` initialization
(weights and biases U(−1/√fan_in, 1/√fan_in)) for encoder and decoder, drawn from a generator
seeded with ``init_seed``; ``trained`` continues from that point with ``train_steps`` Adam steps
(learning rate ``TRAIN_LEARNING_RATE``) on the exact negative ELBO of encoder *and* decoder, each
step on ``TRAIN_BATCH`` = 128 digits drawn (with replacement) from all 1797 by the same generator
(vae_bernoulli uses fewer when 2^L is large, at most ``TRAIN_PAIRS`` (digit, code) pairs a step);
float64, one CPU thread: ~0.1 s at the defaults, ~30 s for vae_bernoulli at latent_dim 16. The
result is cached in ``results/.cache/`` (relative to the working directory) under a name hashing
every value that affects it, written atomically (temporary file + os.replace); never downloaded.

Beyond enumeration (vae_bernoulli's latent_dim above ``MAX_BERNOULLI_LATENT`` = 16, vae_categorical's
n_classes^n_latent above 2^16) a problem has no exact gradient (``has_exact_gradient`` is false on
the instance): bench measures bias against a reference gradient estimated by rloo at a high budget
(``bench.reference``), and ``state=trained`` trains on an unbiased sampled gradient of the negative
ELBO instead of the exact one: per digit ``TRAIN_SAMPLES`` codes from q, the decoder's gradient
pathwise and the encoder's by the leave-one-out score function (rloo) plus log q's direct term,
``TRAIN_BATCH`` digits a step. Memory stays O(batch · samples · L), never O(2^L).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import tempfile
from abc import abstractmethod
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from bench.problems.base import Params, Problem, open_uniform
from torch import Tensor

from bench.errors import ConfigError

N_DIGITS = 1797  # images in scikit-learn's digits
BINARIZE_THRESHOLD = 8  # pixel values are 0..16; a pixel is on when its value is > 8
N_PIXELS = 64
STATES = ("init", "trained")
MAX_BERNOULLI_LATENT = 16
TRAIN_BATCH = 128  # digits per training step
TRAIN_PAIRS = 2**14  # vae_bernoulli: at most this many (digit, code) pairs per training step
TRAIN_LEARNING_RATE = 1e-2
TRAIN_SAMPLES = 8  # beyond enumeration: codes per digit of the sampled (rloo) training gradient
CACHE_DIR = Path("results") / ".cache"
CACHE_VERSION = 1  # bump when the training recipe changes, so stale caches are not reused
LOG_2PI = math.log(2.0 * math.pi)


# --- data ----------------------------------------------------------------------------------------
@functools.cache
def load_binarized_digits() -> Tensor:
    """All 1797 digits, binarized at pixel > BINARIZE_THRESHOLD: (1797, 64) float64 of 0/1.
    Loaded once per process (callers must not modify it)."""
    from sklearn.datasets import load_digits  # imported here: importing sklearn takes ~1 s

    pixels = torch.from_numpy(load_digits().data)  # (1797, 64), values 0..16
    return (pixels > BINARIZE_THRESHOLD).to(torch.float64)


def minibatch_indices(n_images: int, batch_size: int, data_seed: int) -> Tensor:
    """Which ``batch_size`` distinct images a generator seeded with ``data_seed`` chooses: (B,)."""
    generator = torch.Generator().manual_seed(data_seed)
    return torch.randperm(n_images, generator=generator)[:batch_size]


def choose_minibatch(images: Tensor, batch_size: int, data_seed: int) -> Tensor:
    """``batch_size`` distinct images chosen by a generator seeded with ``data_seed``: (B, 64)."""
    return images[minibatch_indices(images.shape[0], batch_size, data_seed)]


# --- networks as functions of a params dict ------------------------------------------------------
def linear_init(generator: torch.Generator, in_features: int, out_features: int) -> tuple[Tensor, Tensor]:
    """nn.Linear's default init, U(−1/√fan_in, 1/√fan_in), float64: weight (out, in), bias (out,)."""
    bound = 1.0 / math.sqrt(in_features)
    weight = torch.rand(out_features, in_features, generator=generator, dtype=torch.float64)
    bias = torch.rand(out_features, generator=generator, dtype=torch.float64)
    return (2.0 * weight - 1.0) * bound, (2.0 * bias - 1.0) * bound


def mlp_init(generator: torch.Generator, prefix: str, sizes: tuple[int, int, int]) -> Params:
    """A two-layer tanh MLP named like ``nn.Sequential(Linear, Tanh, Linear)`` under ``prefix``."""
    weight0, bias0 = linear_init(generator, sizes[0], sizes[1])
    weight2, bias2 = linear_init(generator, sizes[1], sizes[2])
    return {
        f"{prefix}.0.weight": weight0,
        f"{prefix}.0.bias": bias0,
        f"{prefix}.2.weight": weight2,
        f"{prefix}.2.bias": bias2,
    }


def mlp(params: Params, prefix: str, inputs: Tensor) -> Tensor:
    """Linear → tanh → Linear: (*batch, in) → (*batch, out)."""
    hidden = torch.tanh(F.linear(inputs, params[f"{prefix}.0.weight"], params[f"{prefix}.0.bias"]))
    return F.linear(hidden, params[f"{prefix}.2.weight"], params[f"{prefix}.2.bias"])


def bernoulli_log_prob(logits: Tensor, x: Tensor) -> Tensor:
    """x log σ(l) + (1 − x) log σ(−l) = x·l − softplus(l), elementwise; continuous in x ∈ [0, 1]."""
    return x * logits - F.softplus(logits)


def all_codes(latent_dim: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Every binary code: row k holds the bits of k, (2^L, L)."""
    bits = torch.arange(latent_dim, device=device)
    return ((torch.arange(2**latent_dim, device=device)[:, None] >> bits) & 1).to(dtype)


def gaussian_log_density(z: Tensor, mu: Tensor, log_sigma: Tensor) -> Tensor:
    """log N(z; μ, σ²) elementwise."""
    return -0.5 * ((z - mu) * torch.exp(-log_sigma)) ** 2 - log_sigma - 0.5 * LOG_2PI


# --- config validation ---------------------------------------------------------------------------
def checked_int(key: str, value: Any, minimum: int, maximum: int | None = None, why: str = "") -> int:
    """An integer config value in [minimum, maximum], else a ConfigError naming ``problem.<key>``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"problem.{key}", f"expected an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        allowed = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ConfigError(f"problem.{key}", f"must be {allowed}, got {value}{why}")
    return value


def checked_state(state: Any) -> str:
    if state not in STATES:
        raise ConfigError("problem.state", f"unknown state {state!r}; valid choices: {', '.join(STATES)}")
    return state


def checked_positive_float(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"problem.{key}", f"expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"problem.{key}", f"expected a number, got {value!r}") from error
    if not (number > 0 and math.isfinite(number)):
        raise ConfigError(f"problem.{key}", f"must be a finite number > 0, got {value!r}")
    return number


# --- the trained-point cache ---------------------------------------------------------------------
def save_atomically(payload: dict[str, Params], path: Path) -> None:
    """torch.save to a temporary file in the same folder, then os.replace: readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            torch.save(payload, file)
        os.chmod(temporary, 0o644)  # mkstemp creates 0600
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_cached(path: Path, expected: dict[str, Params]) -> dict[str, Params] | None:
    """The cached payload if it exists and matches ``expected``'s names and shapes, else None."""
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a corrupt or foreign file: train again and replace it
        return None
    try:
        matches = all(
            payload[group].keys() == tensors.keys()
            and all(payload[group][name].shape == tensor.shape for name, tensor in tensors.items())
            for group, tensors in expected.items()
        )
    except (KeyError, TypeError, AttributeError):
        return None
    return payload if matches else None


class DigitsVAE(Problem):
    """Shared machinery: data, encoder, parameter point (init / trained, cached), exact gradient.

    A subclass defines the latent family through ``encoder_outputs``, ``init_decoder``,
    ``negative_elbo`` (the cost at sampled z) and ``expected_negative_elbo`` (E_q of it, exact).
    """

    max_latent_dim: ClassVar[int | None] = None  # the exact gradient's limit, if it enumerates codes

    @classmethod
    def exact_gradient_for(cls, config: dict[str, Any]) -> bool:
        """Up to ``max_latent_dim`` latent bits the exact gradient enumerates the codes; beyond, none."""
        latent_dim = config.get("latent_dim", 4)
        if cls.max_latent_dim is None or isinstance(latent_dim, bool) or not isinstance(latent_dim, int):
            return cls.has_exact_gradient
        return latent_dim <= cls.max_latent_dim

    def __init__(
        self,
        batch_size: int = 8,
        data_seed: int = 0,
        latent_dim: int = 4,
        hidden: int = 32,
        state: str = "trained",
        init_seed: int = 0,
        train_steps: int = 200,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(
            device,
            batch_size=batch_size,
            data_seed=data_seed,
            latent_dim=latent_dim,
            hidden=hidden,
            state=state,
            init_seed=init_seed,
            train_steps=train_steps,
        )
        self.latent_dim = checked_int("latent_dim", latent_dim, 1)
        self.hidden = checked_int("hidden", hidden, 1)
        self.state = checked_state(state)
        self.init_seed = checked_int("init_seed", init_seed, 0)
        self.train_steps = checked_int("train_steps", train_steps, 1)
        self.data_seed = checked_int("data_seed", data_seed, 0)
        self.batch_size = checked_int("batch_size", batch_size, 1, N_DIGITS)
        # Chosen now (no data needed): a seeded randperm cannot run inside a torch.func transform.
        self.minibatch = minibatch_indices(N_DIGITS, self.batch_size, self.data_seed)
        self._constants: dict[torch.dtype, tuple[Tensor, Params]] = {}
        # Beyond enumeration: no exact gradient; an estimated reference instead (bench.reference).
        self.has_exact_gradient = type(self).exact_gradient_for(self._config)  # type: ignore[misc]

    # The data is loaded on first use, so that constructing a problem (to validate a sweep's
    # configs) does not import scikit-learn.
    @cached_property
    def all_images(self) -> Tensor:
        """Every digit, binarized: (N, 64) float64 on the CPU."""
        return load_binarized_digits()

    @cached_property
    def images64(self) -> Tensor:
        """The measured minibatch: (B, 64) float64 on ``self.device``."""
        return self.all_images[self.minibatch].to(self.device)

    def prepare(self, dtype: torch.dtype) -> None:
        """Build the parameter point and the constants in ``dtype`` before any torch.func transform
        runs: built lazily inside one, they would be the transform's wrapped tensors."""
        self.constants(dtype)

    # --- what a latent family defines -----------------------------------------------------------
    @property
    @abstractmethod
    def encoder_outputs(self) -> int:
        """Width of the encoder's last layer."""

    @abstractmethod
    def init_decoder(self, generator: torch.Generator) -> Params:
        """The decoder's weights at initialization, float64."""

    @abstractmethod
    def negative_elbo(self, encoded: Tensor, decoder: Params, images: Tensor, z: Tensor) -> Tensor:
        """f at z: encoded (B, out), images (B, 64), z (*batch, B, L) → (*batch,)."""

    @abstractmethod
    def expected_negative_elbo(self, encoded: Tensor, decoder: Params, images: Tensor) -> Tensor:
        """E_q[f] (the negative ELBO averaged over the images), exactly: a scalar."""

    # --- the parameter point ----------------------------------------------------------------------
    def init_point(self) -> dict[str, Params]:
        """Encoder and decoder at initialization (seeded by ``init_seed``), float64 on the CPU."""
        return self._init_point(torch.Generator().manual_seed(self.init_seed))

    def _init_point(self, generator: torch.Generator) -> dict[str, Params]:
        encoder = mlp_init(generator, "encoder", (N_PIXELS, self.hidden, self.encoder_outputs))
        return {"encoder": encoder, "decoder": self.init_decoder(generator)}

    def training_key(self) -> dict[str, Any]:
        """Every value the trained point depends on (hashed into the cache file name)."""
        key = {
            "problem": self.name,
            "version": CACHE_VERSION,
            "threshold": BINARIZE_THRESHOLD,
            "train_batch": self.train_batch_size(),
            "learning_rate": TRAIN_LEARNING_RATE,
            "latent_dim": self.latent_dim,
            "hidden": self.hidden,
            "init_seed": self.init_seed,
            "train_steps": self.train_steps,
        }
        if not self.has_exact_gradient:  # only then: the enumerable problems' cache names stay
            key.update(objective="rloo", train_samples=TRAIN_SAMPLES)
        return key

    def cache_path(self) -> Path:
        """results/.cache/<name>-<hash>.pt, relative to the working directory."""
        text = json.dumps(self.training_key(), sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:20]
        return CACHE_DIR / f"{self.name}-{digest}.pt"

    def train_batch_size(self) -> int:
        """Digits per training step."""
        return TRAIN_BATCH

    def train(self) -> dict[str, Params]:
        """``train_steps`` Adam steps on the exact negative ELBO of encoder and decoder, float64.

        Runs on one CPU thread (the setting is restored afterwards): the steps are small, and one
        thread makes the result independent of the machine's core count.
        """
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._train()
        finally:
            torch.set_num_threads(threads)

    def _train(self) -> dict[str, Params]:
        generator = torch.Generator().manual_seed(self.init_seed)
        point = self._init_point(generator)
        leaves = [tensor.requires_grad_(True) for group in point.values() for tensor in group.values()]
        optimizer = torch.optim.Adam(leaves, lr=TRAIN_LEARNING_RATE)
        n_images = self.all_images.shape[0]
        for _ in range(self.train_steps):
            chosen = torch.randint(n_images, (self.train_batch_size(),), generator=generator)
            images = self.all_images[chosen]  # (train batch, 64)
            encoded = mlp(point["encoder"], "encoder", images)
            if self.has_exact_gradient:
                loss = self.expected_negative_elbo(encoded, point["decoder"], images)
            else:
                loss = self.sampled_training_loss(encoded, point["decoder"], images, generator)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return {group: {k: v.detach() for k, v in tensors.items()} for group, tensors in point.items()}

    def sampled_training_loss(
        self, encoded: Tensor, decoder: Params, images: Tensor, generator: torch.Generator
    ) -> Tensor:
        """A surrogate whose gradient is an unbiased estimate of ∇ E_q[f] for encoder and decoder
        (training beyond enumeration): per digit S = ``TRAIN_SAMPLES`` codes z_s ~ q, per-digit
        costs f_s, and mean_{b,s} [f_s + stopgrad(f_s − mean_{s'≠s} f_s') · log q(z_s|x_b)] (rloo)."""
        z = self.training_codes(encoded.detach(), generator, TRAIN_SAMPLES)  # (S, B, *code)
        # one image per "minibatch": negative_elbo's mean over images is then per digit, (S, B)
        costs = self.negative_elbo(encoded.unsqueeze(-2), decoder, images.unsqueeze(-2), z.unsqueeze(2))
        log_q = self.code_log_prob(encoded, z)  # (S, B)
        baseline = (costs.sum(0, keepdim=True) - costs) / (TRAIN_SAMPLES - 1)
        return (costs + (costs - baseline).detach() * log_q).mean()

    def training_codes(self, encoded: Tensor, generator: torch.Generator, n: int) -> Tensor:
        """``n`` codes per digit drawn from q given the encoder's outputs (B, out): (n, B, *code)."""
        raise NotImplementedError(f"{self.name} has no sampled training")

    def code_log_prob(self, encoded: Tensor, z: Tensor) -> Tensor:
        """log q(z | x) per digit: encoded (B, out), z (*batch, B, *code) → (*batch, B)."""
        raise NotImplementedError(f"{self.name} has no sampled training")

    def trained_point(self) -> dict[str, Params]:
        """The trained point, from the cache when it holds one, else trained and cached."""
        path = self.cache_path()
        cached = load_cached(path, self.init_point())
        if cached is not None:
            return cached
        point = self.train()
        save_atomically(point, path)
        return point

    @cached_property
    def point(self) -> dict[str, Params]:
        """{"encoder": φ, "decoder": fixed weights} at ``state``, float64 on ``self.device``."""
        with torch.inference_mode(False), torch.enable_grad():
            point = self.trained_point() if self.state == "trained" else self.init_point()
        return {g: {k: v.to(self.device) for k, v in tensors.items()} for g, tensors in point.items()}

    def constants(self, dtype: torch.dtype) -> tuple[Tensor, Params]:
        """The minibatch (B, 64) and the decoder's weights in ``dtype`` (cast once per dtype)."""
        if dtype not in self._constants:
            decoder = {name: value.to(dtype) for name, value in self.point["decoder"].items()}
            self._constants[dtype] = (self.images64.to(dtype), decoder)
        return self._constants[dtype]

    # --- the Problem interface ----------------------------------------------------------------------
    def params(self) -> Params:
        return {name: value.clone() for name, value in self.point["encoder"].items()}

    def encode(self, params: Params) -> Tensor:
        """The encoder's outputs on the minibatch: (B, out), in the params' dtype."""
        images, _ = self.constants(params["encoder.0.weight"].dtype)
        return mlp(params, "encoder", images)

    def cost(self, params: Params, x: Tensor) -> Tensor:
        images, decoder = self.constants(x.dtype)
        return self.negative_elbo(self.encode(params), decoder, images, x)

    def expected_cost(self, params: Params) -> Tensor:
        """E_q[f] = −ELBO averaged over the minibatch, exact. (No ``min_prob``: codes rarer than
        eps(dtype) are a heavy-tail regime that ``clt_ok`` flags instead.) Only within enumeration."""
        if not self.has_exact_gradient:
            raise NotImplementedError(f"{self.name}: E_q[f] would enumerate more codes than it allows")
        images, decoder = self.constants(params["encoder.0.weight"].dtype)
        return self.expected_negative_elbo(self.encode(params), decoder, images)

    def exact_gradient(self) -> Params:
        with torch.inference_mode(False), torch.enable_grad():
            params = {name: value.requires_grad_(True) for name, value in self.params().items()}
            grads = torch.autograd.grad(self.expected_cost(params), list(params.values()))
        return dict(zip(params, grads, strict=True))


class VAEBernoulli(DigitsVAE):
    """A VAE with ``latent_dim`` Bernoulli latent bits on binarized digits.

    Model: prior z ~ Bernoulli(½)^L; decoder p(x|z) = Π_pixels Bernoulli(σ(MLP_dec(z))) with
    MLP_dec: L → ``hidden`` → 64 (tanh); encoder q_φ(z|x) = Π_j Bernoulli(σ(l_j)), l = MLP_enc(x)
    with MLP_enc: 64 → ``hidden`` → L. Cost: the negative ELBO summand (module docstring).

    Keys: batch_size, data_seed, latent_dim (exact gradient up to 16; beyond, an estimated reference),
    hidden, state (init | trained), init_seed, train_steps. Noise: u ~ U(0, 1)^(B×L);
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
        u = torch.rand((n, *encoded.shape), generator=generator, dtype=encoded.dtype)
        return (u < torch.sigmoid(encoded)).to(encoded.dtype)  # (n, B, L)

    def code_log_prob(self, encoded: Tensor, z: Tensor) -> Tensor:
        return bernoulli_log_prob(encoded, z).sum(-1)

    def init_decoder(self, generator: torch.Generator) -> Params:
        return mlp_init(generator, "decoder", (self.latent_dim, self.hidden, N_PIXELS))

    def negative_elbo(self, encoded: Tensor, decoder: Params, images: Tensor, z: Tensor) -> Tensor:
        pixel_logits = mlp(decoder, "decoder", z)  # (*batch, B, 64)
        log_likelihood = bernoulli_log_prob(pixel_logits, images).sum(-1)  # (*batch, B)
        log_q = bernoulli_log_prob(encoded, z).sum(-1)  # (*batch, B)
        log_prior = -self.latent_dim * math.log(2.0)
        return (log_q - log_likelihood - log_prior).mean(-1)

    def expected_negative_elbo(self, encoded: Tensor, decoder: Params, images: Tensor) -> Tensor:
        codes = all_codes(self.latent_dim, encoded.dtype, encoded.device)  # (K, L)
        pixel_logits = mlp(decoder, "decoder", codes)  # (K, 64)
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

    def sample(self, params: Params, noise: Tensor) -> Tensor:
        probs = torch.sigmoid(self.encode(params).detach())  # (B, L)
        return (noise > 1.0 - probs).to(noise.dtype)  # (*batch, B, L)

    def log_prob(self, params: Params, x: Tensor) -> Tensor:
        return bernoulli_log_prob(self.encode(params), x).sum((-2, -1))  # (*batch,)

    def cost_and_log_prob(self, params: Params, x: Tensor) -> tuple[Tensor, Tensor]:
        """``cost`` and ``log_prob`` from one encoder pass (differentiated once, not twice)."""
        images, decoder = self.constants(x.dtype)
        encoded = self.encode(params)  # (B, L)
        cost = self.negative_elbo(encoded, decoder, images, x)
        return cost, bernoulli_log_prob(encoded, x).sum((-2, -1))

    def relaxed_sample(self, params: Params, noise: Tensor, temperature: float) -> Tensor:
        return self.relax(self.preimage(params, noise), temperature)  # (*batch, B, L)

    def relaxed_cost(self, params: Params, y: Tensor) -> Tensor:
        return self.cost(params, y)

    def memory_per_sample(self) -> int:
        # decoder activations and their gradients, q's terms, the noise: per image
        return 3 * self.batch_size * (4 * self.latent_dim + 2 * self.hidden + 2 * N_PIXELS)


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

    def sample(self, params: Params, noise: Tensor) -> Tensor:
        return self.rsample({name: value.detach() for name, value in params.items()}, noise)

    def log_prob(self, params: Params, x: Tensor) -> Tensor:
        mu, log_sigma = self.moments(self.encode(params))
        return gaussian_log_density(x, mu, log_sigma).sum((-2, -1))  # (*batch,)

    def cost_and_log_prob(self, params: Params, x: Tensor) -> tuple[Tensor, Tensor]:
        """``cost`` and ``log_prob`` from one encoder pass (differentiated once, not twice)."""
        images, decoder = self.constants(x.dtype)
        encoded = self.encode(params)  # (B, 2L)
        mu, log_sigma = self.moments(encoded)
        cost = self.negative_elbo(encoded, decoder, images, x)
        return cost, gaussian_log_density(x, mu, log_sigma).sum((-2, -1))

    def memory_per_sample(self) -> int:
        # the sample, the decoder's mean and residual and their gradients: per image
        return 3 * self.batch_size * (4 * self.latent_dim + 2 * N_PIXELS)
