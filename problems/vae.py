"""Variational autoencoders on binarized images: the ELBO gradient w.r.t. the encoder.

Two problems share everything but the latent family:

  vae_bernoulli: q(z|x) factorized Bernoulli over ``latent_dim`` bits, a decoder with a Bernoulli
                 likelihood over the pixels, prior Bernoulli(½)^L. Exact gradient by enumerating
                 all 2^L codes per image (L ≤ 16). It alone takes the data and architecture keys
                 (``dataset``, ``split``, ``binarization``, ``data_dir``, ``architecture``) and up to
                 the DisARM/RELAX/REBAR binary VAE: FashionMNIST, 200 latents, ``linear`` or
                 ``nonlinear`` networks.
  vae_gaussian:  q(z|x) = N(μ(x), diag σ(x)²), a linear-Gaussian decoder N(Wz + b, σ_x² I), prior
                 N(0, I). Exact gradient through the closed-form ELBO.

Data (``problems.data``): by default scikit-learn's bundled digits (1797 images, pixels 0..16),
binarized as pixel > ``BINARIZE_THRESHOLD`` (= 8). The measured minibatch is ``batch_size`` images
of the split drawn without replacement by a ``torch.Generator`` seeded with ``data_seed`` (under
dynamic binarization the same generator then draws their binarization: fixed per seed).

Networks (``architecture``, vae_bernoulli; the others are ``mlp``), named like ``nn.Sequential``
(Linear layers at even indices): ``mlp`` D → ``hidden`` → out with tanh; ``linear`` one layer
D → out; ``nonlinear`` D → 200 → 200 → out with LeakyReLU(0.3) (``NONLINEAR_HIDDEN``; ``hidden``
does not apply). The decoder mirrors the encoder (L → ... → D).

Why only the encoder is differentiated: the decoder's ELBO gradient is E_q[∇ log p(x|z)], a plain
pathwise average that every estimator would compute the same way; including it would only dilute
the comparison. The decoder's weights are constants of the problem; the parameters θ = φ are the
encoder's, named by their module paths (``encoder.0.weight``, ``encoder.0.bias``,
``encoder.2.weight``, ``encoder.2.bias`` for the mlp; ``encoder.1`` is the tanh).

The cost is the negative ELBO summand averaged over the minibatch,
    f(φ, z) = mean_b [ −log p(x_b | z_b) − log p(z_b) + log q_φ(z_b | x_b) ],
with z of shape (*batch, batch_size, latent_dim); it depends on φ directly through log q, and
estimators include that direct term. E_q[f] is the negative ELBO.

The parameter point (``state``): ``init`` is PyTorch's default ``nn.Linear`` initialization
(weights and biases U(−1/√fan_in, 1/√fan_in)) for encoder and decoder, drawn from a generator
seeded with ``init_seed``; ``trained`` continues from that point with ``train_steps`` Adam steps
(learning rate ``TRAIN_LEARNING_RATE``) on the exact negative ELBO of encoder *and* decoder, each
step on ``TRAIN_BATCH`` = 128 images drawn (with replacement) from the training images (every
digit under ``split=all``, else the train split; dynamic binarization draws each image's bits
afresh every step, from the same generator) (vae_bernoulli uses fewer when 2^L is large, at most
``TRAIN_PAIRS`` (image, code) pairs a step); float64, one CPU thread: ~0.1 s at the defaults, ~30 s
for vae_bernoulli at latent_dim 16. The result is cached in ``results/.cache/`` (relative to the
working directory) under a name hashing every value that affects it, written atomically (temporary
file + os.replace); never downloaded.

Beyond enumeration (vae_bernoulli's latent_dim above ``MAX_BERNOULLI_LATENT`` = 16, vae_categorical's
n_classes^n_latent above 2^16) a problem has no exact gradient (``has_exact_gradient`` is false on
the instance): bench measures bias against a reference gradient estimated by rloo at a high budget
(``bench.reference``), and ``state=trained`` trains on an unbiased sampled gradient of the negative
ELBO instead of the exact one: per image ``TRAIN_SAMPLES`` codes from q, the decoder's gradient
pathwise and the encoder's by the leave-one-out score function (rloo) plus log q's direct term,
``TRAIN_BATCH`` images a step. Memory stays O(batch · samples · L), never O(2^L).

Held-out evaluation (``held_out_bound``, for a training curve): the test split's negative ELBO and
negative K-sample importance-weighted bound, K = ``eval_samples``, with standard errors over images.

``bench train`` (the training hooks of ``problems.base``): θ is the encoder and the model the decoder,
both from initialization (``init_seed``) whatever ``state`` says. Each step draws ``batch_size``
training images with replacement and binarizes them afresh (``training_batch``); evaluations use the
problem's own minibatch (``evaluation_batch``). Either makes every dtype's constants (``constants``)
hold those images and the run's decoder. The curve's objective is the exact negative ELBO over the
whole training split within enumeration, else the held-out bounds.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
from abc import abstractmethod
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from bench.problems import data
from bench.problems.base import Params, Problem, detached
from bench.problems.vae_nets import (
    BINARIZE_THRESHOLD,
    CACHE_DIR,
    CACHE_VERSION,
    DIGITS,
    EVAL_CHUNK_ELEMENTS,
    EVAL_SAMPLES,
    LEGACY_DATA,
    TRAIN_BATCH,
    TRAIN_LEARNING_RATE,
    TRAIN_SAMPLES,
    checked_int,
    checked_state,
    detached_view,
    layer_sizes,
    load_cached,
    network,
    network_init,
    save_atomically,
)
from bench.problems.vae_training import VAETraining


class DigitsVAE(VAETraining, Problem):
    """Shared machinery: data, encoder, parameter point (init / trained, cached), exact gradient.

    A subclass defines the latent family through ``encoder_outputs``, ``init_decoder``,
    ``negative_elbo`` (the cost at sampled z) and ``expected_negative_elbo`` (E_q of it, exact).
    """

    max_latent_dim: ClassVar[int | None] = None  # the exact gradient's limit, if it enumerates codes
    fuses_model = True  # cost reads the decoder from params when they hold it (``decoder_in``)

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
        *,
        spec: data.DataSpec = DIGITS,
        architecture: str = "mlp",
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
        self.spec, self.architecture = spec, architecture  # checked by the subclass that offers them
        self.n_pixels = spec.dataset.n_pixels
        self.latent_dim = checked_int("latent_dim", latent_dim, 1)
        self.hidden = checked_int("hidden", hidden, 1)
        self.state = checked_state(state)
        self.init_seed = checked_int("init_seed", init_seed, 0)
        self.train_steps = checked_int("train_steps", train_steps, 1)
        self.data_seed = checked_int("data_seed", data_seed, 0)
        size = spec.dataset.size(spec.split)
        why = f" (the {spec.dataset.name} {spec.split} split's images)"
        self.batch_size = checked_int("batch_size", batch_size, 1, size, why)
        # Chosen now (no data needed): a seeded randperm cannot run inside a torch.func transform.
        self.minibatch, self.minibatch_uniforms = data.choose_minibatch(spec, self.batch_size, self.data_seed)
        self._constants: dict[torch.dtype, tuple[Tensor, Params]] = {}
        # What ``constants`` casts: (images, decoder) set by the training hooks; None: the problem's
        # own minibatch and point.
        self._source: tuple[Tensor, Params] | None = None
        self._device_pixels: Tensor | None = None  # training_pixels on the data generator's device
        self._encoded: tuple[list[Tensor], list[int], Tensor] | None = None  # encode's last result
        # Beyond enumeration: no exact gradient; an estimated reference instead (bench.reference).
        self.has_exact_gradient = type(self).exact_gradient_for(self._config)  # type: ignore[misc]

    # The data is loaded on first use, so that constructing a problem (to validate a sweep's
    # configs) does not import scikit-learn or read FashionMNIST.
    @cached_property
    def training_pixels(self) -> Tensor:
        """The images ``state=trained`` trains on, raw: (N, D) uint8 on the CPU."""
        return data.pixels(self.spec, self.spec.training_split)

    @cached_property
    def all_images(self) -> Tensor:
        """The training images binarized (dynamic: once, by a generator seeded with ``data_seed``):
        (N, D) float64 on the CPU. Large for FashionMNIST (314 MB); ``train`` does not use it, the
        exact ``training_objective`` does."""
        return data.binarize_with(
            self.training_pixels, self.spec, torch.Generator().manual_seed(self.data_seed)
        )

    @cached_property
    def images64(self) -> Tensor:
        """The measured minibatch: (B, D) float64 on ``self.device``."""
        values = data.pixels(self.spec, self.spec.split)[self.minibatch]
        return data.binarize(values, self.spec, self.minibatch_uniforms).to(self.device)

    @cached_property
    def test_images(self) -> Tensor:
        """The test split, binarized once per ``data_seed`` (``data.held_out_images``): (N, D) uint8."""
        return data.held_out_images(self.spec, self.data_seed)

    def encoder_network(self, params: Params, inputs: Tensor) -> Tensor:
        """The encoder: images (*batch, D) → its outputs (*batch, out)."""
        return network(params, "encoder", inputs, self.architecture)

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
        sizes = layer_sizes(self.architecture, self.n_pixels, self.hidden, self.encoder_outputs)
        encoder = network_init(generator, "encoder", sizes)
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
        spec = self.spec
        trained_on = (spec.dataset.name, spec.training_split, spec.binarization, self.architecture)
        if trained_on != LEGACY_DATA:  # only then: the original data's cache names stay
            names = ("dataset", "training_split", "binarization", "architecture")
            key.update(zip(names, trained_on, strict=True))
        return key

    def cache_path(self) -> Path:
        """results/.cache/<name>-<hash>.pt, relative to the working directory."""
        text = json.dumps(self.training_key(), sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:20]
        return CACHE_DIR / f"{self.name}-{digest}.pt"

    def train_batch_size(self) -> int:
        """Images per training step."""
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
        n_images = self.training_pixels.shape[0]
        for _ in range(self.train_steps):
            chosen = torch.randint(n_images, (self.train_batch_size(),), generator=generator)
            # dynamic binarization: fresh bits every time an image is used, as the papers train
            images = data.binarize_with(self.training_pixels[chosen], self.spec, generator)  # (batch, D)
            encoded = self.encoder_network(point["encoder"], images)
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
        """The minibatch (B, D) and the decoder's weights in ``dtype`` (cast once per dtype): the
        problem's own, or those the training hooks set (``use``)."""
        if dtype not in self._constants:
            images, decoder = self._source or (self.images64, self.point["decoder"])
            cast = {name: value.detach().to(self.device, dtype) for name, value in decoder.items()}
            self._constants[dtype] = (images.to(self.device, dtype), cast)
        return self._constants[dtype]

    def use(self, images: Tensor, decoder: Params, dtype: torch.dtype) -> None:
        """Make ``cost`` (every dtype's ``constants``) use ``images`` (B, D) and ``decoder``; the cast
        to ``dtype`` is built now, outside any torch.func transform (``prepare``). Every other
        dtype's cache is dropped, so none holds an older minibatch or decoder."""
        self._source = (images, detached(decoder))
        self._constants = {}
        self.constants(dtype)

    # --- the Problem interface ----------------------------------------------------------------------
    def params(self) -> Params:
        return {name: value.clone() for name, value in self.point["encoder"].items()}

    def encode(self, params: Params) -> Tensor:
        """The encoder's outputs on the minibatch: (B, out), in the params' dtype. The last result
        is reused while the same encoder tensors (unchanged in place) and images come again: an
        estimator that takes ``logits`` and ``cost`` of one ``params`` (arm, disarm, the relaxed
        ones) then runs, and differentiates, the encoder once instead of twice. Detached views of
        those tensors (``detached(params)``, as estimators sample) get the result detached."""
        images, _ = self.constants(params["encoder.0.weight"].dtype)
        encoder = [value for name, value in params.items() if name.startswith("encoder.")]
        key = [images, *encoder]  # held, so no id is reused while the entry lives
        versions = [tensor._version for tensor in key]
        last = self._encoded
        if last is not None and len(last[0]) == len(key) and last[1] == versions:
            if all(map(operator.is_, last[0], key)):
                return last[2]
            if not any(t.requires_grad for t in encoder) and all(map(detached_view, last[0], key)):
                return last[2].detach()
        encoded = self.encoder_network(params, images)
        self._encoded = (key, versions, encoded)
        return encoded

    @abstractmethod
    def sample_encoded(self, encoded: Tensor, noise: Tensor) -> Tensor:
        """The sample of ``noise`` (*batch, B, *event) from the encoder's outputs (B, out)."""

    def sample(self, params: Params, noise: Tensor) -> Tensor:
        return self.sample_encoded(self.encode(params).detach(), noise)

    def sampled_cost_and_log_prob(self, params: Params, noise: Tensor) -> tuple[Tensor, Tensor]:
        """One encoder pass for the sample, the cost and log q (under ``vmap`` too, where
        ``encode`` cannot tell a detached view)."""
        x = self.sample_encoded(self.encode(params).detach(), noise)
        return self.cost_and_log_prob(params, x)

    def cost(self, params: Params, x: Tensor) -> Tensor:
        images, decoder = self.constants(x.dtype)
        return self.negative_elbo(self.encode(params), self.decoder_in(params, decoder), images, x)

    def decoder_in(self, params: Params, decoder: Params) -> Params:
        """The decoder ``cost`` uses: the one in ``params`` where ``bench train`` passes it there
        (``fuses_model``), else ``decoder`` (the constants')."""
        inside = {name: value for name, value in params.items() if name.startswith("decoder.")}
        return inside or decoder

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

    # --- held-out evaluation (a training curve's) -------------------------------------------------
    eval_samples: int = EVAL_SAMPLES  # vae_bernoulli's key; the others evaluate at the default

    def held_out_bound(
        self,
        params: Params,
        eval_samples: int | None = None,
        generator: torch.Generator | None = None,
        *,
        decoder: Params | None = None,
        max_images: int | None = None,
    ) -> dict[str, Any]:
        """The test split's negative ELBO and negative K-sample importance-weighted bound (IWAE),
        K = ``eval_samples`` (default ``self.eval_samples``), from the same K codes per image
        (``held_out_log_weights``):
            neg_elbo_b = −mean_k log w_k,    neg_iwae_b = −(logsumexp_k log w_k − log K),
        averaged over the test split (its first ``max_images`` images, if given), each with its
        standard error over images (std/√N, sampling noise included). float64, no gradient.
        neg_iwae ≤ neg_elbo for every draw; E[neg_iwae] ≥ −log p(x) and falls towards it as K grows.
        ``held_out`` is false under ``split=all``, where training has seen the test images.
        """
        log_w = self.held_out_log_weights(
            params, eval_samples, generator, decoder=decoder, max_images=max_images
        )
        k, n = log_w.shape
        result: dict[str, Any] = {"eval_samples": k, "n_images": n}
        for name, values in (
            ("neg_elbo", -log_w.mean(0)),
            ("neg_iwae", math.log(k) - torch.logsumexp(log_w, 0)),
        ):
            result[name] = float(values.mean())
            result[f"{name}_stderr"] = float(values.std()) / math.sqrt(n) if n > 1 else math.nan
        result["held_out"] = self.spec.split != "all"
        return result

    def held_out_log_weights(
        self,
        params: Params,
        eval_samples: int | None = None,
        generator: torch.Generator | None = None,
        *,
        decoder: Params | None = None,
        max_images: int | None = None,
    ) -> Tensor:
        """log w_k = log p(x, z_k) − log q(z_k|x) for K codes z_k ~ q(z|x) per test image: (K, N)
        float64 on ``self.device``, computed in chunks of images (memory O(EVAL_CHUNK_ELEMENTS)).

        ``params``: the encoder's weights (named as ``params()``); ``decoder``: the decoder's
        (default: the problem's point). ``generator`` (default: seeded 0) draws the codes on its
        device. The test images are binarized once per ``data_seed`` (``data.held_out_images``).
        """
        k = checked_int("eval_samples", self.eval_samples if eval_samples is None else eval_samples, 1)
        generator = torch.Generator().manual_seed(0) if generator is None else generator
        decoder = self.point["decoder"] if decoder is None else decoder
        encoder, decoder = (
            {name: value.detach().to(self.device, torch.float64) for name, value in group.items()}
            for group in (params, decoder)
        )
        images = self.test_images if max_images is None else self.test_images[:max_images]
        chunk = max(1, EVAL_CHUNK_ELEMENTS // (k * self.eval_width()))
        parts = []
        with torch.no_grad():
            for start in range(0, images.shape[0], chunk):
                batch = images[start : start + chunk].to(self.device, torch.float64)
                encoded = self.encoder_network(encoder, batch)  # (n, out)
                z = self.training_codes(encoded, generator, k)  # (K, n, *code)
                # one image per "minibatch": negative_elbo is then −log w per image, (K, n)
                parts.append(
                    -self.negative_elbo(encoded.unsqueeze(-2), decoder, batch.unsqueeze(-2), z.unsqueeze(2))
                )
        return torch.cat(parts, dim=1)

    def eval_width(self) -> int:
        """Values per (sample, image) that ``held_out_bound`` holds at once: code and decoder units."""
        return self.encoder_outputs + self.hidden + 2 * self.n_pixels
