"""bench train's step against a plain hand-written PyTorch training loop of the same estimator on
the same model: the papers' binary VAE (``vae_bernoulli``, 200 latent bits, the nonlinear
200-200 LeakyReLU(0.3) networks, a minibatch of 50 dynamically binarized FashionMNIST images, Adam).

The hand-written loops below are what one writes without bench: one encoder pass, one batched
decoder pass over the samples, one surrogate, one ``backward``. They compute the same estimator
and the same decoder gradient as bench (the decoder's plain sampled gradient at the samples
x = 1[u > 1 − σ(φ)], and for disarm at both members of the antithetic pair), from the same
generators in the same order, so after a step both hold the same parameters to rounding (checked by
``test_train_speed``). Timing: thread CPU time of single steps, interleaved ABBA in rounds
(``tests.perf.gate.paired_round``), one torch thread.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.problems.base import Params, Problem
from bench.registry import build, default_config
from bench.training.loop import RunSettings, State, start, train_step

PROBLEM = {"dataset": "fashion_mnist", "architecture": "nonlinear", "latent_dim": 200, "batch_size": 50}
SAMPLES = {"rloo": 2, "disarm": 1}  # per step: 2 evaluations of f each (disarm: one antithetic pair)
LR = 1e-3


def settings(estimator: str) -> RunSettings:
    return RunSettings(n_samples=SAMPLES[estimator], seed=0, dtype=torch.float32, steps=10**6,
                       eval_every=10**6, optimizer="adam", lr=LR, eval_estimates=0,
                       eval_samples=1)  # fmt: skip


def leaky(x: Tensor) -> Tensor:
    return F.leaky_relu(x, 0.3)


def mlp(params: Params, prefix: str, x: Tensor) -> Tensor:
    """Linear, LeakyReLU(0.3), Linear, LeakyReLU(0.3), Linear (the papers' nonlinear network)."""
    x = leaky(F.linear(x, params[f"{prefix}.0.weight"], params[f"{prefix}.0.bias"]))
    x = leaky(F.linear(x, params[f"{prefix}.2.weight"], params[f"{prefix}.2.bias"]))
    return F.linear(x, params[f"{prefix}.4.weight"], params[f"{prefix}.4.bias"])


@dataclass
class HandLoop:
    """A hand-written training loop: its own parameters, Adam and generators (seeded as bench's)."""

    encoder: Params
    decoder: Params
    optimizer: torch.optim.Optimizer
    pixels: Tensor  # (N, 784) uint8
    data: torch.Generator
    noise: torch.Generator
    step: Callable[[HandLoop], None]

    def minibatch(self) -> Tensor:
        chosen = torch.randint(self.pixels.shape[0], (PROBLEM["batch_size"],), generator=self.data)
        values = self.pixels[chosen]
        uniforms = torch.rand(values.shape, generator=self.data, dtype=torch.float64)
        return (uniforms < values.to(torch.float64) / 255.0).to(torch.float32)  # (B, 784)

    def uniforms(self, n_samples: int) -> Tensor:
        u = torch.rand((1, n_samples, PROBLEM["batch_size"], PROBLEM["latent_dim"]), generator=self.noise)
        return u.clamp_(min=torch.finfo(u.dtype).tiny, max=1.0 - torch.finfo(u.dtype).eps / 2)[0]


def terms(images: Tensor, logits: Tensor, z: Tensor, decoder: Params) -> tuple[Tensor, Tensor]:
    """(log q(z|x) summed over bits, log p(x|z) summed over pixels): each (S, B)."""
    log_q = (z * logits - F.softplus(logits)).sum(-1)
    pixel_logits = mlp(decoder, "decoder", z)  # (S, B, 784)
    return log_q, (images * pixel_logits - F.softplus(pixel_logits)).sum(-1)


def rloo_step(loop: HandLoop) -> None:
    images = loop.minibatch()
    u = loop.uniforms(SAMPLES["rloo"])  # (S, B, L)
    logits = mlp(loop.encoder, "encoder", images)  # (B, L)
    z = (u > 1.0 - torch.sigmoid(logits.detach())).to(u.dtype)
    log_q, log_lik = terms(images, logits, z, loop.decoder)
    f = (log_q - log_lik + PROBLEM["latent_dim"] * math.log(2.0)).mean(-1)  # (S,): the minibatch's −ELBO
    baseline = (f.sum() - f) / (f.shape[0] - 1)
    loss = (f + (f - baseline).detach() * log_q.sum(-1)).mean()
    loop.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    loop.optimizer.step()


def disarm_step(loop: HandLoop) -> None:
    images = loop.minibatch()
    u = loop.uniforms(SAMPLES["disarm"])  # (S, B, L)
    logits = mlp(loop.encoder, "encoder", images)  # (B, L)
    p = torch.sigmoid(logits.detach())
    b1, b2 = (u > 1.0 - p).to(u.dtype), (u < p).to(u.dtype)
    log_q, log_lik = terms(images, logits, torch.cat([b1, b2]), loop.decoder)  # (2S, B): one decoder pass
    f = (log_q - log_lik + PROBLEM["latent_dim"] * math.log(2.0)).mean(-1)  # (2S,): the minibatch's −ELBO
    n_pairs = u.shape[0]
    delta = (f[:n_pairs] - f[n_pairs:]).detach()  # (S,): f(b₁) − f(b₂)
    g = 0.5 * delta[:, None, None] * (1 - 2 * b2) * (b1 != b2) * torch.sigmoid(logits.detach().abs())
    # f.mean(): the direct term (log q) for the encoder, the plain gradient at b₁ and b₂ for the decoder
    loss = (g.mean(0) * logits).sum() + f.mean()
    loop.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    loop.optimizer.step()


def hand_loop(problem: Problem, estimator: str) -> HandLoop:
    """A hand loop starting where bench's run starts, with bench's seeds (bench.training.loop)."""
    from bench.training.loop import DATA_STREAM, TRAIN_STREAM, stream

    encoder, decoder = (
        {k: v.detach().to(torch.float32).clone().requires_grad_(True) for k, v in group.items()}
        for group in problem.training_start()
    )
    optimizer = torch.optim.Adam([*encoder.values(), *decoder.values()], lr=LR)
    step = {"rloo": rloo_step, "disarm": disarm_step}[estimator]
    return HandLoop(encoder, decoder, optimizer, problem.training_pixels, stream(0, DATA_STREAM),
                    stream(0, TRAIN_STREAM), step)  # fmt: skip


def bench_loop(estimator_name: str) -> tuple[Problem, Callable[[], None], State]:
    problem = build("problem", "vae_bernoulli", {**default_config("problem", "vae_bernoulli"), **PROBLEM})
    estimator = build("estimator", estimator_name, default_config("estimator", estimator_name))
    chosen = settings(estimator_name)
    state = start(problem, chosen)
    return problem, lambda: train_step(problem, estimator, state, chosen), state
