"""The categorical VAE: codes, names, the cost against torch.distributions, the exact gradient
against loops over codes, the sampler and the relaxation, the trained point's cache, config
validation, and the existing estimators on it. The checks every VAE family shares (YAML defaults,
the exact gradient against finite differences, the trained point beating init, the cache's
determinism) run for it in test_vae.py.

Every test runs in a temporary working directory, so trained points are cached there and not in
the repository's results/.cache.

False-alarm rate of the statistical tests: α = 1e-3 family-wise (Bonferroni over the checked
frequencies or gradient dimensions); seeded. Per torch.distributions' rule a failing seed may be
bumped once; a second failure is a bug.
"""

from __future__ import annotations

import itertools
import math
import time

import pytest
import torch

from bench import estimators
from bench.errors import ConfigError
from bench.problems.base import Params
from bench.problems.vae_bernoulli import VAEBernoulli
from bench.problems.vae_categorical import VAECategorical, all_one_hot_codes
from bench.runner import run_cell
from tests.conftest import make
from tests.test_vae import assert_same_gradient, gradient_of  # the VAE families' shared checks

ALPHA = 1e-3
N_ESTIMATES = 20_000
N_SAMPLES = 4
ENCODER_NAMES = ["encoder.0.weight", "encoder.0.bias", "encoder.2.weight", "encoder.2.bias"]


@pytest.fixture(scope="module", autouse=True)
def temporary_working_directory(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("vae_categorical"))
        yield


@pytest.fixture(scope="module")
def trained() -> VAECategorical:
    return VAECategorical()  # the YAML defaults, state=trained


# --- registry, YAML, flags, names -----------------------------------------------------------------
def test_flags_select_the_intended_estimators():
    problem = VAECategorical(state="init")
    assert problem.discrete and problem.has_relaxed_cost and problem.categorical_latent
    assert not (problem.has_enumerate_support or problem.has_rsample or problem.binary_latent)
    found = {name for name in estimators.REGISTRY if make("estimator", name).why_not(problem, 4) is None}
    assert {"exact", "reinforce", "rloo", "gumbel_softmax", "st_gumbel_softmax"} <= found
    assert "pathwise" not in found


def test_encoder_names_shapes_and_data_follow_the_other_vaes():
    problem = VAECategorical(n_latent=2, n_classes=5, hidden=7, state="init")
    params = problem.params()
    assert list(params) == ENCODER_NAMES
    shapes = [tuple(value.shape) for value in params.values()]
    assert shapes == [(7, 64), (7,), (10, 7), (10,)]
    assert all(value.dtype == torch.float64 for value in params.values())
    decoder = problem.point["decoder"]
    assert decoder["decoder.0.weight"].shape == (7, 10)  # one-hot codes L·K = 10 into the decoder
    assert problem.logits(params).shape == (8, 2, 5)
    # the same minibatch as vae_bernoulli for the same data_seed
    assert torch.equal(problem.images64, VAEBernoulli(data_seed=0, state="init").images64)
    assert not torch.equal(problem.images64, VAECategorical(data_seed=3, state="init").images64)
    result = run_cell(problem, make("estimator", "exact"), n_samples=1, n_estimates=10, seed=0)
    names = [dim["param"] for dim in result.dims]
    assert names[0] == "encoder.0.weight[0,0]" and names[1] == "encoder.0.weight[0,1]"
    assert names[-1] == "encoder.2.bias[9]" and len(names) == 7 * 64 + 7 + 10 * 7 + 10


def test_codes_are_every_one_hot_in_product_order():
    codes = all_one_hot_codes(3, 4, torch.float64, torch.device("cpu"))
    assert codes.shape == (64, 3, 4) and codes.dtype == torch.float64
    assert torch.equal(codes.sum(-1), torch.ones(64, 3, dtype=torch.float64))
    assert codes.argmax(-1).tolist() == [list(c) for c in itertools.product(range(4), repeat=3)]


# --- the cost and the exact gradient ----------------------------------------------------------------
def by_hand_negative_elbo(problem: VAECategorical, params: Params, z: torch.Tensor) -> torch.Tensor:
    """f at one joint code z (B, L, K), from torch.distributions and nn.functional (an independent
    route to log q, log p(x|z) and the uniform prior)."""
    logits = problem.encode(params).reshape(problem.batch_size, problem.n_latent, problem.n_classes)
    log_q = torch.distributions.Categorical(logits=logits).log_prob(z.argmax(-1)).sum(-1)  # (B,)
    decoder = problem.point["decoder"]
    hidden = torch.tanh(
        z.reshape(problem.batch_size, -1) @ decoder["decoder.0.weight"].T + decoder["decoder.0.bias"]
    )
    pixel_logits = hidden @ decoder["decoder.2.weight"].T + decoder["decoder.2.bias"]  # (B, 64)
    log_likelihood = torch.distributions.Bernoulli(logits=pixel_logits).log_prob(problem.images64).sum(-1)
    log_prior = -problem.n_latent * math.log(problem.n_classes)
    return (log_q - log_likelihood - log_prior).mean()


def test_cost_matches_torch_distributions():
    problem = VAECategorical(batch_size=3, n_latent=2, n_classes=4, hidden=6, state="init", init_seed=2)
    params = problem.params()
    noise = problem.noise(torch.Generator().manual_seed(0), (5,), torch.float64)
    z = problem.sample(params, noise)  # (5, B, L, K)
    costs = problem.cost(params, z)
    assert costs.shape == (5,)
    for i in range(5):
        assert float(costs[i]) == pytest.approx(
            float(by_hand_negative_elbo(problem, params, z[i])), rel=1e-12
        )
    logits = problem.logits(params)
    by_distribution = torch.distributions.Categorical(logits=logits).log_prob(z.argmax(-1)).sum((-2, -1))
    torch.testing.assert_close(problem.log_prob(params, z), by_distribution, rtol=1e-12, atol=1e-12)


def test_exact_gradient_matches_a_loop_over_every_joint_code():
    problem = VAECategorical(batch_size=2, n_latent=2, n_classes=3, hidden=4, state="init", init_seed=3)

    def expected_cost(params: Params) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64)
        for classes in itertools.product(range(3), repeat=2 * 2):  # the joint code of both images
            z = torch.nn.functional.one_hot(torch.tensor(classes).reshape(2, 2), 3).to(torch.float64)
            total = total + problem.log_prob(params, z).exp() * by_hand_negative_elbo(problem, params, z)
        return total

    params = problem.params()
    torch.testing.assert_close(expected_cost(params), problem.expected_cost(params), rtol=1e-12, atol=0)
    assert_same_gradient(problem.exact(), gradient_of(expected_cost, params), rtol=1e-10, atol=1e-13)


def test_exact_gradient_at_the_code_limit():
    # batch_size 1 and K^L = 4^8 = 2^16 codes (the limit): the expectation also follows from cost
    # and log_prob on every code, a route independent of the (B, K^L) matrix formula.
    problem = VAECategorical(batch_size=1, n_latent=8, n_classes=4, hidden=8, state="init")
    problem.params()
    started = time.perf_counter()
    exact = problem.exact()
    seconds = time.perf_counter() - started
    codes = all_one_hot_codes(8, 4, torch.float64, torch.device("cpu"))[:, None]  # (K^L, 1, L, K)

    def by_codes(params: Params) -> torch.Tensor:
        return (problem.log_prob(params, codes).exp() * problem.cost(params, codes)).sum()

    assert_same_gradient(exact, gradient_of(by_codes, problem.params()), rtol=1e-9, atol=1e-12)
    assert seconds < 30, f"exact gradient at 2^16 codes took {seconds:.1f} s"


# --- sampler, log_prob, relaxation ------------------------------------------------------------------
def test_log_prob_normalizes_over_the_codes():
    problem = VAECategorical(batch_size=1, n_latent=3, n_classes=3, state="init", init_seed=4)
    codes = all_one_hot_codes(3, 3, torch.float64, torch.device("cpu"))[:, None]  # (27, 1, L, K)
    total = problem.log_prob(problem.params(), codes).exp().sum()
    assert float(total) == pytest.approx(1.0, rel=1e-12)


@pytest.mark.statistical
def test_sample_frequencies_match_q():
    # α = 1e-3 family-wise: Bonferroni over the B·L·K class frequencies' binomial z-tests
    # (state=init, where the probabilities are moderate and the normal approximation holds).
    problem = VAECategorical(state="init")
    params = problem.params()
    n = 20_000
    z = problem.sample(params, problem.noise(torch.Generator().manual_seed(2), (n,), torch.float64))
    assert z.shape == (n, 8, 3, 3) and torch.equal(z.sum(-1), torch.ones(n, 8, 3, dtype=torch.float64))
    probs = torch.softmax(problem.logits(params), -1)  # (B, L, K)
    assert probs.min() > 0.05
    critical = float(torch.special.ndtri(torch.tensor(1 - ALPHA / (2 * probs.numel()), dtype=torch.float64)))
    scores = (z.mean(0) - probs) / torch.sqrt(probs * (1 - probs) / n)
    assert scores.abs().max() < critical
    # test the test: the same check rejects q at slightly sharper logits
    wrong = torch.softmax(1.2 * problem.logits(params), -1)
    assert ((z.mean(0) - wrong) / torch.sqrt(wrong * (1 - wrong) / n)).abs().max() > critical


def test_sample_is_the_gumbel_max_of_the_encoder_logits(trained):
    params = trained.params()
    noise = trained.noise(torch.Generator().manual_seed(5), (50,), torch.float64)
    logits = trained.logits(params)
    by_hand = torch.nn.functional.one_hot((logits - torch.log(-torch.log(noise))).argmax(-1), 3).double()
    assert torch.equal(trained.sample(params, noise), by_hand)
    assert torch.equal(trained.hard(trained.preimage(params, noise)), by_hand)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relaxed_cost_equals_cost_at_hard_samples(trained, dtype):
    params = {k: v.to(dtype) for k, v in trained.params().items()}
    noise = trained.noise(torch.Generator().manual_seed(1), (100, 3), dtype)
    hard = trained.sample(params, noise)  # (100, 3, B, L, K)
    assert hard.shape == (100, 3, 8, 3, 3) and hard.dtype == dtype
    cost = trained.cost(params, hard)
    assert cost.shape == (100, 3) and cost.dtype == dtype
    torch.testing.assert_close(trained.relaxed_cost(params, hard), cost, rtol=0, atol=0)
    # as τ → 0 the relaxed sample tends to the hard one (away from the decision boundary)
    top_two = trained.preimage(params, noise).topk(2, -1).values
    margin = top_two[..., 0] - top_two[..., 1] > 1e-2  # (100, 3, B, L)
    cold = trained.relaxed_sample(params, noise, 1e-4)
    torch.testing.assert_close(cold[margin], hard[margin], rtol=0, atol=1e-6)
    clear = margin.all(-1).all(-1)  # (100, 3)
    torch.testing.assert_close(trained.relaxed_cost(params, cold)[clear], cost[clear])
    # at a soft y the relaxed cost is the same formula (decoder on y, log q as y·log softmax φ)
    soft = trained.relaxed_sample(params, noise[0, 0], 1.0).to(torch.float64)  # (B, L, K)
    params64 = trained.params()
    logits = trained.logits(params64)
    decoder = trained.point["decoder"]
    hidden = torch.tanh(soft.reshape(8, -1) @ decoder["decoder.0.weight"].T + decoder["decoder.0.bias"])
    pixel_logits = hidden @ decoder["decoder.2.weight"].T + decoder["decoder.2.bias"]
    log_likelihood = (trained.images64 * pixel_logits - torch.nn.functional.softplus(pixel_logits)).sum(-1)
    log_q = (soft * torch.log_softmax(logits, -1)).sum((-2, -1))
    by_hand = (log_q - log_likelihood + 3 * math.log(3)).mean()
    assert float(trained.relaxed_cost(params64, soft)) == pytest.approx(float(by_hand), rel=1e-12)


# --- the existing estimators on it ------------------------------------------------------------------
def test_existing_estimators_run(trained):
    for name in ["reinforce", "rloo", "gumbel_softmax", "st_gumbel_softmax", "exact"]:
        result = run_cell(trained, make("estimator", name), n_samples=N_SAMPLES, n_estimates=500, seed=0)
        assert result.row["status"] == "ok", (name, result.row)


def test_estimates_are_finite_in_float32(trained):
    params = {k: v.to(torch.float32) for k, v in trained.params().items()}
    noise = trained.noise(torch.Generator().manual_seed(4), (64, N_SAMPLES), torch.float32)
    for name in ["reinforce", "rloo", "gumbel_softmax", "st_gumbel_softmax"]:
        grads = make("estimator", name).estimate(trained, params, noise)
        assert grads.keys() == params.keys()
        for key, value in grads.items():
            assert value.shape == (64, *params[key].shape) and value.dtype == torch.float32
            assert torch.isfinite(value).all(), (name, key)


@pytest.mark.statistical
def test_the_conformance_check_rejects_gumbel_softmax(trained):
    # Test the test: tests/test_conformance.py checks the unbiased estimators on this problem at its
    # defaults (α = 1e-3 family-wise, Bonferroni over every encoder dimension, 20000 estimates of 3
    # samples, float32, seed 11); the identical check must reject the biased relaxation at τ = 1.
    relaxed = make("estimator", "gumbel_softmax", temperature=1.0)
    result = run_cell(trained, relaxed, n_samples=3, n_estimates=N_ESTIMATES, seed=11)
    assert result.row["bias_pvalue"] < ALPHA, result.row


# --- the trained point and its cache ------------------------------------------------------------------
def test_cache_name_hashes_every_training_value():
    base = VAECategorical(train_steps=30)
    assert base.cache_path().parent.as_posix() == "results/.cache"
    assert base.cache_path().name.startswith("vae_categorical-")
    assert {"n_latent", "n_classes", "hidden", "init_seed", "train_steps"} <= set(base.training_key())
    changed = [
        VAECategorical(train_steps=31),
        VAECategorical(train_steps=30, init_seed=1),
        VAECategorical(train_steps=30, hidden=16),
        VAECategorical(train_steps=30, n_latent=2),
        VAECategorical(train_steps=30, n_classes=4),
        VAECategorical(train_steps=30, n_latent=2, n_classes=4),
    ]
    paths = {problem.cache_path() for problem in changed} | {base.cache_path()}
    assert len(paths) == len(changed) + 1
    assert VAEBernoulli(train_steps=30, latent_dim=3).cache_path() != base.cache_path()


# --- config validation ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key,value",
    [
        ("batch_size", 0),
        ("batch_size", 1798),
        ("batch_size", 2.5),
        ("n_latent", 0),
        ("n_latent", 1.5),
        ("n_latent", True),
        ("n_classes", 1),
        ("n_classes", "three"),
        ("hidden", 0),
        ("state", "final"),
        ("init_seed", -1),
        ("data_seed", "zero"),
        ("train_steps", 0),
    ],
)
def test_bad_config_values_name_their_key(key, value):
    with pytest.raises(ConfigError) as error:
        make("problem", "vae_categorical", **{key: value})
    assert error.value.key == f"problem.{key}"
    assert str(error.value).startswith(f"problem.{key}: ")


@pytest.mark.parametrize("n_latent,n_classes", [(17, 2), (9, 4), (1, 2**16 + 1), (5, 10)])
def test_beyond_the_code_limit_there_is_no_exact_gradient(n_latent, n_classes):
    # Beyond 2^16 codes the problem builds without an exact gradient (bench measures its bias
    # against an estimated reference) instead of refusing the config.
    config = {"n_latent": n_latent, "n_classes": n_classes}
    problem = VAECategorical(**config)
    assert not problem.has_exact_gradient and not VAECategorical.exact_gradient_for(config)
    with pytest.raises(NotImplementedError, match="vae_categorical has no exact gradient"):
        problem.exact()
    exactly = VAECategorical(n_latent=8, n_classes=4)  # exactly 2^16 codes: enumerated (lazily)
    assert exactly.has_exact_gradient and VAECategorical.exact_gradient_for({"n_latent": 8, "n_classes": 4})


def test_latent_dim_is_not_a_key():
    with pytest.raises(ConfigError) as error:
        make("problem", "vae_categorical", latent_dim=4)
    assert error.value.key == "problem"


def test_construction_is_lazy(monkeypatch):
    def no_training(self):
        raise AssertionError("constructing the problem trained it")

    monkeypatch.setattr(VAECategorical, "train", no_training)
    problem = VAECategorical(train_steps=12345)
    assert problem.memory_per_sample() > 0
    assert "point" not in vars(problem)
