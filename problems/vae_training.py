"""What ``bench train`` does with a VAE (the training hooks of ``problems.base``), a mixin of
``DigitsVAE``: θ is the encoder and the model the decoder, both from initialization; each step draws
a fresh minibatch of training images, binarized anew; evaluations use the problem's own minibatch;
the curve's objective is the exact negative ELBO over the training split within enumeration, else
the held-out bounds (docs/training.md)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bench.problems import data
from bench.problems.base import Params

# training_objective: at most this many (image, code) pairs of the exact ELBO at once (its (images,
# codes) matrices take ~8 bytes each, a few alive at a time: ~200 MB)
OBJECTIVE_CHUNK_ELEMENTS = 1 << 22


def binarize_drawn(values: Tensor, spec: data.DataSpec, generator: torch.Generator) -> Tensor:
    """``data.binarize_with``, the uniforms drawn on the pixels' device: binarize_with draws on the
    CPU, which a CUDA generator cannot. On the CPU the two are the same draw, bit for bit."""
    uniforms = None
    if spec.dynamic:
        uniforms = torch.rand(values.shape, generator=generator, dtype=torch.float64, device=values.device)
    return data.binarize(values, spec, uniforms)


class VAETraining:
    """The training hooks; the attributes they use (``init_point``, ``use``, ``constants``,
    ``negative_elbo``, ``held_out_bound``, ...) are ``DigitsVAE``'s."""

    def training_start(self) -> tuple[Params, Params]:
        """(encoder, decoder) at initialization, float64 on ``self.device``: training starts from
        scratch whatever ``state`` says (a trained point would start where training ends)."""
        point = self.init_point()
        on_device = {g: {k: v.to(self.device) for k, v in group.items()} for g, group in point.items()}
        return on_device["encoder"], on_device["decoder"]

    def training_batch(self, model: Params, generator: torch.Generator, dtype: torch.dtype) -> None:
        """``batch_size`` training images drawn uniformly with replacement by ``generator`` and
        binarized by it (dynamic: fresh bits every draw, as ``train`` does), with the decoder
        ``model``. Indices and bits are drawn on the generator's device: no host round trip."""
        pixels = self.pixels_on(generator.device)
        chosen = torch.randint(pixels.shape[0], (self.batch_size,), generator=generator, device=pixels.device)
        self.use(binarize_drawn(pixels[chosen], self.spec, generator), model, dtype)

    def pixels_on(self, device: torch.device) -> Tensor:
        """``training_pixels`` on ``device`` (uint8, copied once: 39 MB for FashionMNIST)."""
        if self._device_pixels is None or self._device_pixels.device != device:
            self._device_pixels = self.training_pixels.to(device)
        return self._device_pixels

    def evaluation_batch(self, model: Params, dtype: torch.dtype) -> None:
        """The problem's own minibatch with the decoder ``model``; float64 is built too, for the
        exact gradient (``expectation``) the loop takes in float64."""
        self.use(self.images64, model, dtype)
        self.constants(torch.float64)

    def model_gradient(self, params: Params, model: Params, x: Tensor) -> Params:
        """∇_decoder mean_s f(θ, decoder, x_s) at the current constants' images, x (n_samples, B,
        *code) as ``sample`` gives for batch (n_samples,): the decoder's pathwise ELBO gradient
        (f depends on the decoder only through log p(x|z)). Named like ``model``, in its dtype."""
        dtype = next(iter(model.values())).dtype
        images, _ = self.constants(dtype)
        # f's log q term is constant in the decoder: any encoder output gives the same gradient, so
        # zeros stand in for the encoder's (one encoder pass less per step).
        encoded = torch.zeros(images.shape[0], self.encoder_outputs, dtype=dtype, device=images.device)
        x = x.to(dtype)
        with torch.enable_grad():  # plain autograd: ~10% of a disarm step faster than torch.func.grad
            leaves = {name: value.detach().requires_grad_(True) for name, value in model.items()}
            loss = self.negative_elbo(encoded, leaves, images, x).mean()  # mean over samples
            grads = torch.autograd.grad(loss, list(leaves.values()))
        return dict(zip(leaves, grads, strict=True))

    def training_objective(
        self, params: Params, model: Params, generator: torch.Generator, eval_samples: int
    ) -> dict[str, Any]:
        """Within enumeration: the exact negative ELBO over the training split (``all_images``), source
        "exact". Beyond: the held-out negative ELBO (``held_out_bound``, K = ``eval_samples`` codes per
        test image drawn by ``generator``), source "bound", with the IWAE bound as extra columns."""
        if self.has_exact_gradient:
            value = self.training_split_elbo(params, model)
            return {"objective": value, "objective_source": "exact", "objective_stderr": None}
        bound = self.held_out_bound(params, eval_samples, generator, decoder=model)
        return {
            "objective": bound["neg_elbo"],
            "objective_source": "bound",
            "objective_stderr": bound["neg_elbo_stderr"],
            "objective_iwae": bound["neg_iwae"],
            "objective_iwae_stderr": bound["neg_iwae_stderr"],
        }

    def training_split_elbo(self, params: Params, model: Params) -> float:
        """−ELBO averaged over ``all_images``, exact, float64, in chunks of images so that at most
        ``OBJECTIVE_CHUNK_ELEMENTS`` (image, code) pairs are held at once."""
        encoder, decoder = (
            {name: value.detach().to(self.device, torch.float64) for name, value in group.items()}
            for group in (params, model)
        )
        images = self.all_images
        chunk = max(1, OBJECTIVE_CHUNK_ELEMENTS // self.codes_per_image())
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        with torch.no_grad():
            for start in range(0, images.shape[0], chunk):
                batch = images[start : start + chunk].to(self.device)
                encoded = self.encoder_network(encoder, batch)
                total += self.expected_negative_elbo(encoded, decoder, batch) * batch.shape[0]
        return float(total) / images.shape[0]

    def codes_per_image(self) -> int:
        """Codes ``expected_negative_elbo`` enumerates per image: 2^L bits, K^L categoricals (the
        base class holds L as ``latent_dim`` for both), 1 for a closed form (the Gaussian)."""
        if self.binary_latent:
            return 2**self.latent_dim
        if self.categorical_latent:
            return int(getattr(self, "n_classes")) ** self.latent_dim  # noqa: B009 (vae_categorical's)
        return 1
