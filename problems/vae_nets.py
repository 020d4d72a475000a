"""The VAE problems' shared parts: constants, networks as functions of a params dict, config
checks and the trained-point cache (problems/vae.py has the problems themselves)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.errors import ConfigError
from bench.files import replaced_atomically
from bench.problems import data
from bench.problems.base import Params

BINARIZE_THRESHOLD = 8  # digits: pixel values are 0..16; a pixel is on when its value is > 8
N_PIXELS = 64  # digits' pixels (vae_categorical and vae_gaussian); vae_bernoulli: self.n_pixels
ARCHITECTURES = ("mlp", "linear", "nonlinear")
NONLINEAR_HIDDEN = 200  # the papers' deterministic layers (DisARM's `nonlinear`)
LEAKY_SLOPE = 0.3  # their LeakyReLU(alpha=0.3)
EVAL_SAMPLES = 100  # K of the held-out importance-weighted bound (DisARM's num_eval_samples)
EVAL_CHUNK_ELEMENTS = 1 << 22  # held_out_bound: at most this many (sample, image, unit) values at once
LEGACY_DATA = ("digits", "all", "threshold", "mlp")  # dataset, training split, binarization, networks
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
DIGITS = data.DataSpec(data.DATASETS["digits"], "all", "threshold", None)  # the original data


def load_binarized_digits() -> Tensor:
    """All 1797 digits, binarized at pixel > BINARIZE_THRESHOLD: (1797, 64) float64 of 0/1."""
    return data.binarize(data.digits_pixels(), DIGITS)


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


def layer_sizes(architecture: str, n_in: int, hidden: int, n_out: int) -> tuple[int, ...]:
    """The widths of a network from n_in to n_out: mlp (n_in, hidden, n_out), linear (n_in, n_out),
    nonlinear (n_in, 200, 200, n_out)."""
    if architecture == "mlp":
        return (n_in, hidden, n_out)
    if architecture == "linear":
        return (n_in, n_out)
    return (n_in, NONLINEAR_HIDDEN, NONLINEAR_HIDDEN, n_out)


def network_init(generator: torch.Generator, prefix: str, sizes: tuple[int, ...]) -> Params:
    """Linear layers between consecutive ``sizes``, named ``<prefix>.<2i>.weight/bias`` as in an
    ``nn.Sequential`` alternating Linear and activation (nn.Linear's init; mlp_init's draws)."""
    params = {}
    for index, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        params[f"{prefix}.{2 * index}.weight"], params[f"{prefix}.{2 * index}.bias"] = linear_init(
            generator, n_in, n_out
        )
    return params


def leaky_relu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, LEAKY_SLOPE)


def network(params: Params, prefix: str, inputs: Tensor, architecture: str) -> Tensor:
    """The network of ``network_init``: Linear layers with tanh (mlp) or LeakyReLU(0.3) (nonlinear)
    between them; (*batch, in) → (*batch, out)."""
    if architecture == "mlp":
        return mlp(params, prefix, inputs)
    n_layers = 1 if architecture == "linear" else 3
    x = inputs
    for index in range(n_layers):
        if index:
            x = leaky_relu(x)
        x = F.linear(x, params[f"{prefix}.{2 * index}.weight"], params[f"{prefix}.{2 * index}.bias"])
    return x


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
    """torch.save, atomically: readers never see half a file."""
    with replaced_atomically(path) as temporary:
        torch.save(payload, temporary)


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


def detached_view(held: Tensor, asked: Tensor) -> bool:
    """``asked`` is ``held`` or ``held.detach()``: the same storage, place and layout (a detached
    tensor shares its version counter, so equal versions mean equal values). A functorch wrapper
    has no storage to compare: not recognized."""
    if held is asked:
        return True
    try:
        return (
            asked.data_ptr() == held.data_ptr()
            and asked.storage_offset() == held.storage_offset()
            and asked.shape == held.shape
            and asked.stride() == held.stride()
            and asked.dtype == held.dtype
            and asked.device == held.device
        )
    except RuntimeError:
        return False
