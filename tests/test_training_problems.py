"""The problems' training hooks (``problems.base``, training section) that ``bench train`` calls.

Statistical checks (false-alarm rates, per check, under the CLT):
  * ``test_model_gradient_is_unbiased``: per decoder coordinate a z-test of the mean of G group
    means of ``model_gradient`` against the exact decoder gradient, Bonferroni over the P
    coordinates at family-wise ALPHA = 1e-3 (|z| > Φ⁻¹(1 − ALPHA/(2P)) ≈ 5 fails). Seeded, so a
    run is deterministic; the rate is that of a fresh seed. The same test rejects two wrong variants.
  * ``test_dynamic_binarization_draws_fresh_bits``: duplicates within one batch of 512 images drawn
    with replacement (~70 pairs) all binarized alike has probability < 1e-30 under dynamic
    binarization (every digit has pixels strictly between 0 and 16). Everything else is exact.

Every test runs in a temporary working directory: no trained point is cached in results/.cache.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest
import torch

from bench.problems import data, vae_training
from bench.problems.base import Params
from bench.problems.vae import DigitsVAE
from bench.problems.vae_bernoulli import VAEBernoulli
from bench.problems.vae_categorical import VAECategorical
from bench.problems.vae_gaussian import VAEGaussian
from bench.problems.vae_nets import load_binarized_digits
from tests.conftest import make

ALPHA = 1e-3
GROUPS = 400  # group means of model_gradient in the z-test
PER_GROUP = 8  # samples per model_gradient call (the loop's n_samples)
F64 = torch.float64


@pytest.fixture(scope="module", autouse=True)
def temporary_working_directory(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("training_problems"))
        yield


# Small VAEs of each family at initialization (no training, no cache).
VAES: dict[str, Callable[[], DigitsVAE]] = {
    "vae_bernoulli": lambda: VAEBernoulli(batch_size=4, latent_dim=4, state="init"),
    "vae_categorical": lambda: VAECategorical(batch_size=4, n_latent=2, n_classes=3, state="init"),
    "vae_gaussian": lambda: VAEGaussian(batch_size=4, latent_dim=3, state="init"),
}


def flat(grads: Params, lead: tuple[int, ...] = ()) -> torch.Tensor:
    return torch.cat([value.reshape(*lead, -1) for value in grads.values()], dim=-1)


def cast(params: Params, dtype: torch.dtype) -> Params:
    return {name: value.to(dtype) for name, value in params.items()}


def exact_decoder_gradient(problem: DigitsVAE, theta: Params, model: Params) -> Params:
    """∇_decoder E_q[f] on the current constants' images, by autograd through the exact ELBO."""
    images, _ = problem.constants(F64)
    encoded = problem.encode(theta).detach()
    leaves = {name: value.detach().clone().requires_grad_(True) for name, value in model.items()}
    value = problem.expected_negative_elbo(encoded, leaves, images)
    return dict(zip(leaves, torch.autograd.grad(value, list(leaves.values())), strict=True))


def max_abs_z(estimates: torch.Tensor, exact: torch.Tensor) -> float:
    """max over coordinates of |mean − exact| / (std/√n), estimates (n, P); a coordinate that never
    varies must match exactly (up to rounding)."""
    n = estimates.shape[0]
    gap = estimates.mean(0) - exact
    stderr = estimates.std(0) / math.sqrt(n)
    constant = stderr <= 1e-12 * (1.0 + exact.abs())
    assert torch.all(gap[constant].abs() <= 1e-9 * (1.0 + exact[constant].abs()))
    return float((gap[~constant] / stderr[~constant]).abs().max())


def grouped_model_gradients(
    problem: DigitsVAE, theta: Params, model: Params, x: torch.Tensor
) -> torch.Tensor:
    """``model_gradient`` per group of PER_GROUP samples: x (G·m, B, …) → (G, P). A loop over the
    groups (model_gradient is plain autograd, one call per training step, not vmappable)."""
    groups = x.reshape(GROUPS, PER_GROUP, *x.shape[1:])
    per_group = [problem.model_gradient(theta, model, group) for group in groups]
    grads = {name: torch.stack([g[name] for g in per_group]) for name in per_group[0]}
    return flat(grads, (GROUPS,))


def shifted_encoder(theta: Params) -> Params:
    """θ with the encoder's first output (a bit's logit, a class's logit, μ_0) moved by 1: samples
    from it are biased for q_θ. (Moving every output alike would leave a softmax unchanged.)"""
    last_bias = [name for name in theta if name.endswith("bias")][-1]
    shift = torch.zeros_like(theta[last_bias])
    shift[0] = 1.0
    return {**theta, last_bias: theta[last_bias] + shift}


def estimator_samples(
    estimator_name: str, problem: DigitsVAE, theta: Params, noise: torch.Tensor
) -> torch.Tensor:
    """``model_samples`` of each group's noise, noise (G, m', B, …) → x (G·m, B, …): the loop's
    samples, one group per training step (disarm: m' = m/2 pairs give m samples)."""
    estimator = make("estimator", estimator_name)
    return torch.cat([estimator.model_samples(problem, theta, group) for group in noise])


@pytest.mark.parametrize(
    ("name", "estimator_name"),
    [(name, "rloo") for name in VAES] + [("vae_bernoulli", "disarm")],  # disarm: both pair members
)
def test_model_gradient_is_unbiased(name: str, estimator_name: str) -> None:
    problem = VAES[name]()
    theta, model = problem.training_start()
    generator = torch.Generator().manual_seed(11)
    problem.training_batch(model, generator, F64)  # a training minibatch, as in a step
    exact = flat(exact_decoder_gradient(problem, theta, model))
    per_noise = PER_GROUP // 2 if estimator_name == "disarm" else PER_GROUP
    noise = problem.noise(generator, (GROUPS, per_noise), F64)
    x = estimator_samples(estimator_name, problem, theta, noise)  # (G·m, B, *code)
    estimates = grouped_model_gradients(problem, theta, model, x)
    critical = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1 - ALPHA / (2 * exact.numel()))))
    assert max_abs_z(estimates, exact) < critical
    # wrong variants: half the gradient; x drawn from a shifted encoder (biased samples)
    assert max_abs_z(0.5 * estimates, exact) > critical
    biased = grouped_model_gradients(
        problem, theta, model, estimator_samples(estimator_name, problem, shifted_encoder(theta), noise)
    )
    assert max_abs_z(biased, exact) > critical


@pytest.mark.parametrize("name", list(VAES))
def test_model_gradient_names_and_dtype(name: str) -> None:
    problem = VAES[name]()
    theta, model = (cast(group, torch.float32) for group in problem.training_start())
    problem.training_batch(model, torch.Generator().manual_seed(0), torch.float32)
    x = problem.sample(theta, problem.noise(torch.Generator().manual_seed(1), (5,), torch.float32))
    grads = problem.model_gradient(theta, model, x)
    assert {k: (v.shape, v.dtype) for k, v in grads.items()} == {
        k: (v.shape, v.dtype) for k, v in model.items()
    }
    assert not set(grads) & set(theta)  # the loop merges θ's and the model's gradients by name


def test_training_start_is_the_initialization() -> None:
    problem = VAEBernoulli(latent_dim=4, train_steps=1)  # state=trained: training still starts at init
    theta, model = problem.training_start()
    init = VAEBernoulli(latent_dim=4, state="init").point
    for got, expected in ((theta, init["encoder"]), (model, init["decoder"])):
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) and got[k].dtype == F64 for k in got)


@pytest.mark.parametrize("binarization", ["threshold", "dynamic"])
def test_training_batch_draws_with_replacement_and_is_seeded(binarization: str) -> None:
    problem = VAEBernoulli(batch_size=8, state="init", binarization=binarization)
    _, model = problem.training_start()
    generator = torch.Generator().manual_seed(5)
    problem.training_batch(model, generator, F64)
    first = problem.constants(F64)[0].clone()
    problem.training_batch(model, generator, F64)
    second = problem.constants(F64)[0].clone()
    assert not torch.equal(first, second)
    # an independent recomputation: uniform indices, then data.binarize_with, from the same seed
    replay = torch.Generator().manual_seed(5)
    for images in (first, second):
        chosen = torch.randint(problem.training_pixels.shape[0], (8,), generator=replay)
        assert torch.equal(images, data.binarize_with(problem.training_pixels[chosen], problem.spec, replay))
    # every dtype's constants hold the same minibatch and the given decoder
    problem.training_batch(model, torch.Generator().manual_seed(5), torch.float32)
    images32, decoder32 = problem.constants(torch.float32)
    assert torch.equal(images32.to(F64), first) and torch.equal(problem.constants(F64)[0], first)
    assert all(torch.equal(decoder32[k], model[k].float()) for k in model)


@pytest.mark.parametrize("binarization", ["threshold", "dynamic"])
def test_dynamic_binarization_draws_fresh_bits(binarization: str) -> None:
    problem = VAEBernoulli(batch_size=512, state="init", binarization=binarization)
    _, model = problem.training_start()
    problem.training_batch(model, torch.Generator().manual_seed(3), F64)
    images = problem.constants(F64)[0]
    chosen = torch.randint(
        problem.training_pixels.shape[0], (512,), generator=torch.Generator().manual_seed(3)
    )
    pairs = [(i, j) for i, j in itertools.combinations(range(512), 2) if chosen[i] == chosen[j]]
    assert len(pairs) > 20
    alike = [torch.equal(images[i], images[j]) for i, j in pairs]
    # threshold: an image's bits are a function of its pixels; dynamic: drawn afresh every time
    assert all(alike) if binarization == "threshold" else not any(alike)


@pytest.mark.parametrize("name", list(VAES))
def test_evaluation_batch_restores_the_problems_minibatch(name: str) -> None:
    problem, fresh = VAES[name](), VAES[name]()
    theta, model = problem.training_start()
    problem.training_batch(model, torch.Generator().manual_seed(0), F64)
    x = problem.sample(theta, problem.noise(torch.Generator().manual_seed(1), (6,), F64))
    assert not torch.equal(problem.cost(theta, x), fresh.cost(theta, x))  # a training minibatch
    for dtype in (torch.float32, F64):
        problem.evaluation_batch(cast(model, dtype), dtype)
        assert torch.equal(
            problem.cost(cast(theta, dtype), x.to(dtype)), fresh.cost(cast(theta, dtype), x.to(dtype))
        )
    # the exact gradient at the run's point, as the loop takes it: float64 θ after a float32 batch
    problem.evaluation_batch(cast(model, torch.float32), torch.float32)
    leaves = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    exact = torch.autograd.grad(problem.expectation(leaves), list(leaves.values()))
    torch.testing.assert_close(
        flat(dict(zip(theta, exact, strict=True))), flat(fresh.exact()), rtol=1e-5, atol=1e-8
    )
    # the model the hooks are given is the one used (not the problem's point)
    scaled = {k: 2.0 * v for k, v in model.items()}
    problem.evaluation_batch(scaled, F64)
    images, _ = fresh.constants(F64)
    expected = problem.expected_negative_elbo(problem.encode(theta), scaled, images)
    assert torch.equal(problem.expectation(theta), expected)
    assert not torch.allclose(expected, fresh.expected_cost(theta))


def independent_bernoulli_objective(problem: VAEBernoulli, theta: Params, model: Params) -> float:
    """−ELBO over every digit (split all, threshold 8) by enumeration with torch.distributions."""
    images = load_binarized_digits()  # (1797, 64)
    codes = torch.tensor(list(itertools.product([0.0, 1.0], repeat=problem.latent_dim)), dtype=F64)  # (16, L)
    code_logits = problem.encoder_network(theta, images)[:, None]  # (N, 1, L)
    log_q = torch.distributions.Bernoulli(logits=code_logits).log_prob(codes).sum(-1)  # (N, 16)
    pixel_logits = problem.decoder_network(model, codes)  # (16, 64)
    log_likelihood = torch.distributions.Bernoulli(logits=pixel_logits).log_prob(images[:, None]).sum(-1)
    log_prior = -problem.latent_dim * math.log(2.0)
    return float((log_q.exp() * (log_q - log_likelihood - log_prior)).sum(-1).mean())


def test_exact_objective_matches_an_independent_enumeration(monkeypatch: pytest.MonkeyPatch) -> None:
    problem = VAEBernoulli(batch_size=4, latent_dim=4, state="init")
    theta, model = problem.training_start()
    row = problem.training_objective(theta, model, torch.Generator().manual_seed(0), 10)
    assert row["objective_source"] == "exact" and row["objective_stderr"] is None
    assert row["objective"] == pytest.approx(
        independent_bernoulli_objective(problem, theta, model), rel=1e-12
    )
    # chunked the same (18 chunks of 100 digits), and not the measured minibatch's value
    monkeypatch.setattr(vae_training, "OBJECTIVE_CHUNK_ELEMENTS", 16 * 100)
    chunked = problem.training_objective(theta, model, torch.Generator().manual_seed(0), 10)
    assert chunked["objective"] == pytest.approx(row["objective"], rel=1e-12)
    assert float(problem.expected_cost(theta)) != pytest.approx(row["objective"], rel=1e-3)


@pytest.mark.parametrize("name", ["vae_categorical", "vae_gaussian"])
def test_exact_objective_is_the_training_split_average(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    problem = VAES[name]()
    theta, model = cast(problem.training_start()[0], torch.float32), problem.training_start()[1]
    images = problem.all_images
    whole = problem.expected_negative_elbo(problem.encoder_network(cast(theta, F64), images), model, images)
    monkeypatch.setattr(vae_training, "OBJECTIVE_CHUNK_ELEMENTS", 100 * problem.codes_per_image())
    row = problem.training_objective(theta, model, torch.Generator().manual_seed(0), 10)
    assert row == {"objective": pytest.approx(float(whole), rel=1e-12), "objective_source": "exact",
                   "objective_stderr": None}  # fmt: skip


def test_bound_objective_beyond_enumeration() -> None:
    problem = VAEBernoulli(batch_size=4, latent_dim=20, dataset="digits", state="init")
    assert not problem.has_exact_gradient and problem.expectation(problem.params()) is None
    theta, model = problem.training_start()
    row = problem.training_objective(theta, model, torch.Generator().manual_seed(4), 10)
    assert row["objective_source"] == "bound"
    assert math.isfinite(row["objective_stderr"]) and row["objective_stderr"] > 0
    assert math.isfinite(row["objective_iwae_stderr"])
    assert row["objective_iwae"] <= row["objective"]
    bound = problem.held_out_bound(theta, 10, torch.Generator().manual_seed(4), decoder=model)
    assert (row["objective"], row["objective_iwae"]) == (bound["neg_elbo"], bound["neg_iwae"])


CARTPOLE_POINT = {"weight": [[0.3, -0.2, 0.5, 0.1], [-0.1, 0.4, -0.6, 0.2]], "bias": [0.1, -0.1]}


def test_cartpole_maximizes_its_expected_return() -> None:
    problem = make("problem", "cartpole", horizon=8, **CARTPOLE_POINT)
    assert problem.direction == "maximize"
    theta, model = problem.training_start()
    assert model == {} and all(torch.equal(theta[k], v) for k, v in problem.params().items())
    leaves = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    value = problem.expectation(leaves)
    assert torch.equal(value, problem.expected_return(leaves))
    value_float = float(value.detach())
    gradient = dict(zip(leaves, torch.autograd.grad(value, list(leaves.values())), strict=True))
    torch.testing.assert_close(gradient, problem.exact_gradient(), rtol=1e-12, atol=1e-14)
    objective = problem.training_objective(theta, {}, torch.Generator(), 10)
    assert objective == {"objective": value_float, "objective_source": "exact", "objective_stderr": None}


def test_cartpole_horizon_one_expectation_stays_differentiable() -> None:
    problem = make("problem", "cartpole", horizon=1, **CARTPOLE_POINT)
    leaves = {k: v.clone().requires_grad_(True) for k, v in problem.params().items()}
    value = problem.expectation(leaves)
    grads = torch.autograd.grad(value, list(leaves.values()))
    assert float(value.detach()) == 1.0 and all(torch.all(g == 0) for g in grads)


@pytest.mark.parametrize("name", ["bernoulli", "categorical", "multicategorical", "gaussian"])
def test_toys_use_the_defaults(name: str) -> None:
    problem = make("problem", name)
    assert problem.direction == "minimize"
    theta, model = problem.training_start()
    assert model == {} and all(torch.equal(theta[k], v) for k, v in problem.params().items())
    problem.training_batch(model, torch.Generator(), torch.float32)  # no-ops
    problem.evaluation_batch(model, torch.float32)
    x = problem.sample(theta, problem.noise(torch.Generator().manual_seed(0), (3,), F64))
    assert problem.model_gradient(theta, model, x) == {}
    row = problem.training_objective(cast(theta, torch.float32), model, torch.Generator(), 10)
    expected = float(problem.expected_cost(cast(cast(theta, torch.float32), F64)))
    assert row == {"objective": expected, "objective_source": "exact", "objective_stderr": None}
