"""The VAE problems: exact gradients against independent references, the trained point and its
cache, config validation, and bias checks of the estimators that apply.

Every test runs in a temporary working directory, so trained points are cached there and not in
the repository's results/.cache.
"""

from __future__ import annotations

import inspect
import itertools
import math
import time

import numpy as np
import pytest
import torch

from bench import estimators
from bench.errors import ConfigError
from bench.problems import REGISTRY
from bench.problems.base import Params
from bench.problems.vae_bernoulli import VAEBernoulli
from bench.problems.vae_categorical import VAECategorical
from bench.problems.vae_gaussian import VAEGaussian
from bench.problems.vae_nets import load_binarized_digits, mlp
from bench.sweep import default_config
from tests.conftest import make

ALPHA = 1e-3
N_ESTIMATES = 20_000
N_SAMPLES = 4


@pytest.fixture(scope="module", autouse=True)
def temporary_working_directory(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("vae"))
        yield


@pytest.fixture(scope="module")
def bernoulli() -> VAEBernoulli:
    return VAEBernoulli()  # the YAML defaults, state=trained


@pytest.fixture(scope="module")
def gaussian() -> VAEGaussian:
    return VAEGaussian()


def flat(grads: Params, batch: int | None = None) -> torch.Tensor:
    if batch is None:
        return torch.cat([value.reshape(-1) for value in grads.values()])
    return torch.cat([value.reshape(batch, -1) for value in grads.values()], dim=1)


def gradient_of(function, params: Params) -> Params:
    """∇ function(params) by autograd, float64."""
    leaves = {name: value.detach().clone().requires_grad_(True) for name, value in params.items()}
    grads = torch.autograd.grad(function(leaves), list(leaves.values()))
    return dict(zip(leaves, grads, strict=True))


def assert_same_gradient(actual: Params, expected: Params, rtol: float, atol: float) -> None:
    assert actual.keys() == expected.keys()
    for name in actual:
        torch.testing.assert_close(actual[name], expected[name], rtol=rtol, atol=atol, msg=name)


def bias_pvalue(
    problem, estimator, *, n_estimates: int, n_samples: int, seed: int, chunk: int = 5000
) -> float:
    """Bonferroni-adjusted p-value of the per-dimension two-sided z-tests of mean estimate = exact,
    everything in float64. Moments are of (estimate − exact), so nothing cancels when the bias is
    small. A dimension with zero variance counts as biased unless its mean is exactly right."""
    params = problem.params()
    exact = flat(problem.exact())  # (P,)
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros_like(exact)
    total_squares = torch.zeros_like(exact)
    for start in range(0, n_estimates, chunk):
        size = min(chunk, n_estimates - start)
        noise = problem.noise(generator, (size, n_samples), torch.float64)
        deviation = flat(estimator.estimate(problem, params, noise), size) - exact  # (size, P)
        total += deviation.sum(0)
        total_squares += (deviation**2).sum(0)
    bias = total / n_estimates
    variance = (total_squares - n_estimates * bias**2) / (n_estimates - 1)
    stderr = torch.sqrt(variance.clamp(min=0) / n_estimates)
    z = torch.where(bias == 0, torch.zeros_like(bias), bias.abs() / stderr)  # inf where stderr = 0
    p_min = float(torch.special.erfc(z.max() / math.sqrt(2.0)))
    return min(1.0, exact.numel() * p_min)


# --- the registry and the YAML files -----------------------------------------------------------
@pytest.mark.parametrize("cls", [VAEBernoulli, VAEGaussian, VAECategorical])
def test_yaml_lists_exactly_the_constructor_defaults(cls):
    signature = inspect.signature(cls.__init__)
    defaults = {name: p.default for name, p in signature.parameters.items() if name not in ("self", "device")}
    assert default_config("problem", cls.name) == defaults
    assert REGISTRY[cls.name] is cls
    assert make("problem", cls.name, state="init").config() == {**defaults, "state": "init"}


@pytest.mark.parametrize(
    "cls,applicable",
    [
        (VAEBernoulli, {"exact", "reinforce", "rloo", "gumbel_softmax", "st_gumbel_softmax"}),
        (VAEGaussian, {"exact", "pathwise", "reinforce", "rloo"}),
    ],
)
def test_flags_select_the_intended_estimators(cls, applicable):
    problem = cls(state="init")
    found = {name for name in estimators.REGISTRY if make("estimator", name).why_not(problem, 4) is None}
    assert applicable <= found
    assert not found & {"pathwise", "gumbel_softmax", "st_gumbel_softmax"} - applicable


def test_data_is_binarized_digits_and_minibatch_follows_data_seed():
    images = load_binarized_digits()
    assert images.shape == (1797, 64) and images.dtype == torch.float64
    assert set(images.unique().tolist()) == {0.0, 1.0}
    a, b = VAEBernoulli(data_seed=1, state="init"), VAEBernoulli(data_seed=2, state="init")
    assert torch.equal(a.images64, VAEBernoulli(data_seed=1, state="init").images64)
    assert not torch.equal(a.images64, b.images64)
    assert a.images64.shape == (8, 64)


# --- exact gradients against independent references --------------------------------------------
def test_bernoulli_exact_gradient_matches_a_loop_over_every_joint_code():
    problem = VAEBernoulli(batch_size=2, latent_dim=3, hidden=4, state="init", init_seed=3)

    def expected_cost(params: Params) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64)
        for bits in itertools.product((0.0, 1.0), repeat=2 * 3):
            z = torch.tensor(bits, dtype=torch.float64).reshape(2, 3)  # one joint sample (B, L)
            total = total + problem.log_prob(params, z).exp() * problem.cost(params, z)
        return total

    torch.testing.assert_close(
        expected_cost(problem.params()), problem.expected_cost(problem.params()), rtol=1e-12, atol=0
    )
    assert_same_gradient(
        problem.exact(), gradient_of(expected_cost, problem.params()), rtol=1e-10, atol=1e-13
    )


@pytest.mark.parametrize(
    "problem",
    [
        VAEBernoulli(batch_size=3, latent_dim=3, hidden=5, state="init", init_seed=1),
        VAEGaussian(batch_size=3, latent_dim=2, hidden=5, state="init", init_seed=1, sigma_x=0.7),
        VAECategorical(batch_size=3, n_latent=2, n_classes=3, hidden=5, state="init", init_seed=1),
    ],
    ids=["bernoulli", "gaussian", "categorical"],
)
def test_exact_gradient_matches_central_differences(problem):
    generator = torch.Generator().manual_seed(0)
    params = problem.params()
    exact = problem.exact()
    step = 1e-5
    for _ in range(5):
        direction = {
            k: torch.randn(v.shape, generator=generator, dtype=torch.float64) for k, v in params.items()
        }
        plus = problem.expected_cost({k: v + step * direction[k] for k, v in params.items()})
        minus = problem.expected_cost({k: v - step * direction[k] for k, v in params.items()})
        numeric = float((plus - minus) / (2 * step))
        analytic = float(sum((exact[k] * direction[k]).sum() for k in params))
        assert numeric == pytest.approx(analytic, rel=1e-6, abs=1e-9)


def test_gaussian_closed_form_matches_gauss_hermite_quadrature():
    # f is a quadratic polynomial in the noise ε, so a 5-point Gauss–Hermite rule per coordinate
    # integrates E_ε[f] exactly; differentiating the quadrature sum goes through rsample and cost,
    # a different route from the closed form.
    problem = VAEGaussian(batch_size=2, latent_dim=2, hidden=6, state="init", init_seed=2, sigma_x=0.8)
    nodes, weights = np.polynomial.hermite_e.hermegauss(5)
    nodes = torch.tensor(nodes, dtype=torch.float64)
    weights = torch.tensor(weights / math.sqrt(2 * math.pi), dtype=torch.float64)
    grid = torch.cartesian_prod(*[torch.arange(5)] * 4)  # (625, B·L)
    noise = nodes[grid].reshape(-1, 2, 2)  # (625, B, L)
    grid_weights = weights[grid].prod(-1)  # (625,)

    def by_quadrature(params: Params) -> torch.Tensor:
        return (grid_weights * problem.cost(params, problem.rsample(params, noise))).sum()

    params = problem.params()
    torch.testing.assert_close(by_quadrature(params), problem.expected_cost(params), rtol=1e-12, atol=0)
    assert_same_gradient(problem.exact(), gradient_of(by_quadrature, params), rtol=1e-10, atol=1e-12)


def test_bernoulli_latent_dim_16_exact_gradient():
    # batch_size 1: the joint outcomes are the 2^16 codes, so the expectation also follows from
    # cost and log_prob on every code (a route independent of the (B, 2^L) matrix formula).
    problem = VAEBernoulli(batch_size=1, latent_dim=16, hidden=8, state="init")
    problem.params()
    started = time.perf_counter()
    exact = problem.exact()
    seconds = time.perf_counter() - started
    bits = (torch.arange(2**16)[:, None] >> torch.arange(16)) & 1  # (K, L)
    codes = bits.to(torch.float64)[:, None, :]  # (K, 1, L): one joint sample per code

    def by_codes(params: Params) -> torch.Tensor:
        return (problem.log_prob(params, codes).exp() * problem.cost(params, codes)).sum()

    assert_same_gradient(exact, gradient_of(by_codes, problem.params()), rtol=1e-9, atol=1e-12)
    assert seconds < 30, f"exact gradient at latent_dim=16 took {seconds:.1f} s"


# --- samplers and the relaxation -----------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relaxed_cost_equals_cost_at_hard_samples(bernoulli, dtype):
    params = {k: v.to(dtype) for k, v in bernoulli.params().items()}
    noise = bernoulli.noise(torch.Generator().manual_seed(1), (100, 3), dtype)
    hard = bernoulli.sample(params, noise)  # (100, 3, B, L)
    assert hard.shape == (100, 3, 8, 4) and hard.dtype == dtype
    cost = bernoulli.cost(params, hard)
    assert cost.shape == (100, 3) and cost.dtype == dtype
    torch.testing.assert_close(bernoulli.relaxed_cost(params, hard), cost, rtol=0, atol=0)
    # as τ → 0 the relaxed sample tends to the hard one (away from the decision boundary)
    logits = bernoulli.encode(params)
    margin = (logits + torch.log(noise) - torch.log1p(-noise)).abs() > 1e-2
    cold = bernoulli.relaxed_sample(params, noise, 1e-4)
    torch.testing.assert_close(cold[margin], hard[margin], rtol=0, atol=1e-6)
    clear = margin.all(-1).all(-1)  # (100, 3): samples with every bit away from the boundary
    torch.testing.assert_close(bernoulli.relaxed_cost(params, cold)[clear], cost[clear])


@pytest.mark.statistical
def test_bernoulli_sample_frequencies_match_q():
    # α = 1e-3 family-wise: Bonferroni over the B·L bits of binomial z-tests (state=init, where the
    # probabilities are moderate and the normal approximation is accurate at n = 20000).
    problem = VAEBernoulli(state="init")
    params = problem.params()
    n = 20_000
    z = problem.sample(params, problem.noise(torch.Generator().manual_seed(2), (n,), torch.float64))
    probs = torch.sigmoid(problem.encode(params))  # (B, L)
    scores = (z.mean(0) - probs) / torch.sqrt(probs * (1 - probs) / n)
    critical = float(torch.special.ndtri(torch.tensor(1 - ALPHA / (2 * probs.numel()), dtype=torch.float64)))
    assert scores.abs().max() < critical


def test_gaussian_rsample_moments_and_log_prob(gaussian):
    params = gaussian.params()
    mu, log_sigma = gaussian.moments(gaussian.encode(params))
    noise = gaussian.noise(torch.Generator().manual_seed(3), (2,), torch.float64)
    z = gaussian.rsample(params, noise)
    torch.testing.assert_close(z, mu + log_sigma.exp() * noise)
    torch.testing.assert_close(gaussian.sample(params, noise), z)
    reference = torch.distributions.Normal(mu, log_sigma.exp()).log_prob(z).sum((-2, -1))
    torch.testing.assert_close(gaussian.log_prob(params, z), reference, rtol=1e-12, atol=1e-12)


# --- bias checks of the estimators that apply ------------------------------------------------------
@pytest.mark.statistical
@pytest.mark.parametrize(
    "problem_name,estimator_name",
    [
        ("vae_bernoulli", "reinforce"),
        ("vae_bernoulli", "rloo"),
        ("vae_gaussian", "pathwise"),
        ("vae_gaussian", "reinforce"),
    ],
)
def test_unbiased_estimators_pass_the_bias_check(problem_name, estimator_name, bernoulli, gaussian):
    # α = 1e-3 family-wise: Bonferroni over every gradient dimension of the per-dimension z-tests;
    # float64, N_ESTIMATES = 20000 estimates of N_SAMPLES = 4 samples, at the trained default point.
    problem = bernoulli if problem_name == "vae_bernoulli" else gaussian
    estimator = make("estimator", estimator_name)
    pvalue = bias_pvalue(problem, estimator, n_estimates=N_ESTIMATES, n_samples=N_SAMPLES, seed=7)
    assert pvalue > ALPHA


@pytest.mark.statistical
def test_the_same_check_rejects_gumbel_softmax(bernoulli):
    # Test the test: the identical check (α = 1e-3 family-wise, same n_estimates and seed) must
    # reject the biased relaxation at τ = 1.
    estimator = make("estimator", "gumbel_softmax", temperature=1.0)
    pvalue = bias_pvalue(bernoulli, estimator, n_estimates=N_ESTIMATES, n_samples=N_SAMPLES, seed=7)
    assert pvalue < ALPHA


def test_estimates_are_finite_in_float32(bernoulli, gaussian):
    for problem, names in ((bernoulli, ["reinforce", "rloo", "gumbel_softmax", "st_gumbel_softmax"]),
                           (gaussian, ["pathwise", "reinforce", "rloo"])):  # fmt: skip
        params = {k: v.to(torch.float32) for k, v in problem.params().items()}
        noise = problem.noise(torch.Generator().manual_seed(4), (64, N_SAMPLES), torch.float32)
        for name in names:
            grads = make("estimator", name).estimate(problem, params, noise)
            assert grads.keys() == params.keys()
            for key, value in grads.items():
                assert value.shape == (64, *params[key].shape) and value.dtype == torch.float32
                assert torch.isfinite(value).all(), (name, key)


# --- the trained point ------------------------------------------------------------------------------
def full_data_negative_elbo(problem, point: dict[str, Params]) -> float:
    images = problem.all_images
    encoded = mlp(point["encoder"], "encoder", images)
    return float(problem.expected_negative_elbo(encoded, point["decoder"], images))


@pytest.mark.parametrize("cls", [VAEBernoulli, VAEGaussian, VAECategorical])
def test_trained_point_is_better_than_init(cls):
    trained, init = cls(), cls(state="init")
    assert full_data_negative_elbo(trained, trained.point) < full_data_negative_elbo(init, init.point) - 5
    assert trained.expected_cost(trained.params()) < init.expected_cost(init.params())
    assert trained.params().keys() == init.params().keys()


@pytest.mark.parametrize("cls", [VAEBernoulli, VAECategorical])  # the cache is DigitsVAE's
def test_training_is_deterministic_and_cached(cls, tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    first = cls(train_steps=30)
    path = first.cache_path()
    assert not path.exists()
    first_point = first.point
    assert path.exists()

    monkeypatch.chdir(tmp_path / "b")  # an empty cache: trains again
    second_point = cls(train_steps=30).point
    for group in ("encoder", "decoder"):
        for name, value in first_point[group].items():
            assert torch.equal(value, second_point[group][name]), name

    monkeypatch.chdir(tmp_path / "a")

    def no_training(self):
        raise AssertionError("trained again despite a cached point")

    with monkeypatch.context() as patch:
        patch.setattr(cls, "train", no_training)
        cached = cls(train_steps=30, batch_size=3, data_seed=5)  # same training, other data
        assert cached.cache_path() == path
        for name, value in cached.params().items():
            assert torch.equal(value, first_point["encoder"][name])

    path.write_bytes(b"not a torch file")  # a corrupt cache is replaced, not trusted
    assert torch.equal(
        cls(train_steps=30).params()["encoder.2.bias"], first_point["encoder"]["encoder.2.bias"]
    )
    assert len(list(path.parent.iterdir())) == 1  # no temporary files left behind


def test_cache_name_hashes_every_training_value():
    base = VAEGaussian(train_steps=30).cache_path()
    assert base.parent.as_posix() == "results/.cache"
    changed = [
        VAEGaussian(train_steps=31),
        VAEGaussian(train_steps=30, init_seed=1),
        VAEGaussian(train_steps=30, hidden=16),
        VAEGaussian(train_steps=30, latent_dim=3),
        VAEGaussian(train_steps=30, sigma_x=0.6),
    ]
    assert len({problem.cache_path() for problem in changed} | {base}) == len(changed) + 1
    assert VAEBernoulli(train_steps=30).cache_path() != base


# --- config validation --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cls,key,value",
    [
        (VAEBernoulli, "batch_size", 0),
        (VAEBernoulli, "batch_size", 1798),
        (VAEBernoulli, "batch_size", 2.5),
        (VAEBernoulli, "latent_dim", 0),
        (VAEBernoulli, "hidden", 0),
        (VAEBernoulli, "hidden", True),
        (VAEBernoulli, "state", "final"),
        (VAEBernoulli, "init_seed", -1),
        (VAEBernoulli, "data_seed", "zero"),
        (VAEBernoulli, "train_steps", 0),
        (VAEGaussian, "latent_dim", 0),
        (VAEGaussian, "state", None),
        (VAEGaussian, "sigma_x", 0.0),
        (VAEGaussian, "sigma_x", -1.0),
        (VAEGaussian, "sigma_x", "wide"),
        (VAEGaussian, "sigma_x", float("inf")),
    ],
)
def test_bad_config_values_name_their_key(cls, key, value):
    with pytest.raises(ConfigError) as error:
        cls(**{key: value})
    assert error.value.key == f"problem.{key}"
    assert str(error.value).startswith(f"problem.{key}: ")


def test_beyond_enumeration_there_is_no_exact_gradient():
    # Up to 16 bits the exact gradient enumerates the codes; beyond, bias is measured against an
    # estimated reference (bench.reference) instead of refusing the config.
    assert VAEBernoulli(latent_dim=16).has_exact_gradient
    beyond = VAEBernoulli(latent_dim=17, state="init")
    assert not beyond.has_exact_gradient and VAEBernoulli.has_exact_gradient  # the instance decides
    assert not VAEBernoulli.exact_gradient_for({"latent_dim": 17})
    assert VAEBernoulli.exact_gradient_for({"latent_dim": 16})
    with pytest.raises(NotImplementedError, match="vae_bernoulli has no exact gradient"):
        beyond.exact()
    assert beyond.exact_in(torch.float32) is None
    assert VAEGaussian(latent_dim=17).has_exact_gradient  # closed form: no limit


def test_construction_is_lazy(monkeypatch):
    def no_training(self):
        raise AssertionError("constructing the problem trained it")

    monkeypatch.setattr(VAEBernoulli, "train", no_training)
    problem = VAEBernoulli(train_steps=12345)
    assert problem.memory_per_sample() > 0
    assert "point" not in vars(problem)
