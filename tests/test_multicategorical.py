"""The multicategorical problem: exact gradient against a brute-force loop, a closed form and
finite differences; enumeration, log-probabilities, the sampler and the relaxation; config errors;
the existing estimators on it.

False-alarm rate of the statistical tests: α = 1e-3 family-wise (Bonferroni over the checked
frequencies or gradient dimensions); seeded. Per torch.distributions' rule a failing seed may be
bumped once; a second failure is a bug.
"""

from __future__ import annotations

import inspect
import itertools
import math
import time

import pytest
import torch

from bench.errors import ConfigError
from bench.problems import REGISTRY, latent
from bench.problems.multicategorical import MultiCategorical
from bench.runner import run_cell
from bench.sweep import default_config
from tests.conftest import make

ALPHA = 1e-3
SMALL_CASES = [
    # (theta, target): D = 3, K = 3; D = 2, K = 4; D = 4, K = 2
    ([[0.0, 0.5, -0.5], [1.0, 0.0, -1.0], [-0.5, 0.3, 0.2]], [0.9, 0.8, 0.7]),
    ([[0.3, -1.2, 0.8, 0.1], [-0.4, 0.0, 1.5, -2.0]], [0.25, 1.3]),
    ([[0.2, -0.7], [1.1, 0.4], [-0.3, -0.9], [0.0, 2.0]], [0.1, 0.6, -0.4, 1.0]),
]


def by_hand_cost(values: list[float], target: list[float], cost: str) -> float:
    """f from the variables' values s_d, written out: separable Σ (s_d − t_d)², coupled (s̄ − t̄)²."""
    if cost == "separable":
        return sum((s - t) ** 2 for s, t in zip(values, target, strict=True))
    return (sum(values) / len(values) - sum(target) / len(target)) ** 2


def brute_force_expected_cost(
    theta: torch.Tensor, target: list[float], cost: str, probs: torch.Tensor | None = None
) -> torch.Tensor:
    """Σ over every joint outcome, one at a time: Π_d p_d(x_d) · f(x) (plain loops), with
    p_d = softmax(θ_d) unless ``probs`` (D, K) is given."""
    n_variables, n_classes = theta.shape
    probs = torch.softmax(theta, -1) if probs is None else probs
    total = torch.zeros((), dtype=torch.float64)
    for classes in itertools.product(range(n_classes), repeat=n_variables):
        probability = torch.ones((), dtype=torch.float64)
        for d, k in enumerate(classes):
            probability = probability * probs[d, k]
        values = [k / (n_classes - 1) for k in classes]
        total = total + probability * by_hand_cost(values, target, cost)
    return total


# --- registry and YAML --------------------------------------------------------------------------
def test_yaml_lists_exactly_the_constructor_defaults():
    signature = inspect.signature(MultiCategorical.__init__)
    defaults = {name: p.default for name, p in signature.parameters.items() if name not in ("self", "device")}
    defaults["theta"] = [list(row) for row in defaults["theta"]]
    defaults["target"] = list(defaults["target"])
    assert default_config("problem", "multicategorical") == defaults
    assert REGISTRY["multicategorical"] is MultiCategorical
    assert make("problem", "multicategorical").config() == defaults
    problem = make("problem", "multicategorical")
    assert (problem.discrete, problem.has_relaxed_cost, problem.has_enumerate_support) == (True, True, True)
    assert problem.categorical_latent and not problem.binary_latent and not problem.has_rsample


def test_param_names_are_theta_d_k():
    problem = MultiCategorical(theta=[[0.0, 1.0, 2.0], [0.5, 0.5, 0.5]], target=[0.0, 0.0])
    result = run_cell(problem, make("estimator", "exact"), n_samples=1, n_estimates=10, seed=0)
    names = [dim["param"] for dim in result.dims]
    assert names == [f"theta[{d},{k}]" for d in range(2) for k in range(3)]


# --- the exact gradient ---------------------------------------------------------------------------
@pytest.mark.parametrize("cost", ["separable", "coupled"])
@pytest.mark.parametrize("theta,target", SMALL_CASES)
def test_exact_gradient_matches_a_brute_force_loop(theta, target, cost):
    problem = MultiCategorical(theta=theta, target=target, cost=cost)
    leaf = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    expected = brute_force_expected_cost(leaf, target, cost)
    (grad,) = torch.autograd.grad(expected, [leaf])
    torch.testing.assert_close(problem.expected_cost(problem.params()), expected.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(problem.exact()["theta"], grad, rtol=1e-12, atol=1e-15)
    assert problem.exact()["theta"].dtype == torch.float64


@pytest.mark.parametrize("cost", ["separable", "coupled"])
@pytest.mark.parametrize("theta,target", SMALL_CASES)
def test_exact_gradient_matches_central_differences(theta, target, cost):
    problem = MultiCategorical(theta=theta, target=target, cost=cost)
    exact = problem.exact()["theta"]
    theta0 = problem.params()["theta"]
    step = 1e-5
    for d, k in itertools.product(range(theta0.shape[0]), range(theta0.shape[1])):
        shift = torch.zeros_like(theta0)
        shift[d, k] = step
        plus = problem.expected_cost({"theta": theta0 + shift})
        minus = problem.expected_cost({"theta": theta0 - shift})
        numeric = float((plus - minus) / (2 * step))
        assert numeric == pytest.approx(float(exact[d, k]), rel=1e-6, abs=1e-10), (d, k)


def test_classes_rarer_than_min_prob_are_dropped():
    # Problem.exact_in(dtype) asks for E[f] with outcomes a dtype's sampler cannot produce left out:
    # class 2 of variable 0 (p ≈ 1e-14) is impossible in float32 noise, the rest renormalized.
    theta, target = [[0.0, 1.0, -30.0], [0.5, -0.5, 0.2]], [0.3, 0.9]
    problem = MultiCategorical(theta=theta, target=target, cost="coupled")
    leaf = torch.tensor(theta, dtype=torch.float64)
    probs = torch.softmax(leaf, -1)
    probs[0, 2] = 0.0
    probs = probs / probs.sum(-1, keepdim=True)
    expected = brute_force_expected_cost(leaf, target, "coupled", probs)
    min_prob = torch.finfo(torch.float32).eps
    torch.testing.assert_close(
        problem.expected_cost(problem.params(), min_prob), expected, rtol=1e-12, atol=0
    )
    reachable = problem.exact_in(torch.float32)["theta"]
    assert reachable.dtype == torch.float32 and abs(float(reachable[0, 2])) < 1e-20  # 0 up to rounding
    torch.testing.assert_close(reachable.double(), problem.exact()["theta"], rtol=1e-5, atol=1e-7)


def test_separable_exact_gradient_has_its_closed_form_at_the_size_limit():
    # K^D = 2^20 outcomes exactly (the limit): still accepted, vectorized, a few seconds at most.
    # Separable: ∂E[f]/∂θ_dk = π_dk (g_dk − Σ_j π_dj g_dj), g_dk = (v_k − t_d)².
    generator = torch.Generator().manual_seed(0)
    theta = torch.randn(10, 4, generator=generator, dtype=torch.float64)
    target = torch.rand(10, generator=generator, dtype=torch.float64)
    problem = MultiCategorical(theta=theta.tolist(), target=target.tolist(), cost="separable")
    started = time.perf_counter()
    grad = problem.exact()["theta"]
    seconds = time.perf_counter() - started
    probs = torch.softmax(theta, -1)
    g = (torch.arange(4, dtype=torch.float64) / 3 - target[:, None]) ** 2  # (D, K)
    by_hand = probs * (g - (probs * g).sum(-1, keepdim=True))
    torch.testing.assert_close(grad, by_hand, rtol=1e-9, atol=1e-14)
    assert seconds < 10, f"exact gradient at 2^20 outcomes took {seconds:.1f} s"


# --- enumeration, log_prob, cost ------------------------------------------------------------------
@pytest.mark.parametrize("theta,target", SMALL_CASES)
def test_enumeration_lists_every_outcome_and_log_prob_normalizes(theta, target):
    problem = MultiCategorical(theta=theta, target=target)
    n_variables, n_classes = len(theta), len(theta[0])
    outcomes = problem.enumerate_outcomes()
    assert outcomes.shape == (n_classes**n_variables, n_variables, n_classes)
    assert outcomes.dtype == torch.float64
    assert torch.equal(outcomes.sum(-1), torch.ones(n_classes**n_variables, n_variables, dtype=torch.float64))
    classes = outcomes.argmax(-1)  # (M, D)
    assert classes.tolist() == [list(c) for c in itertools.product(range(n_classes), repeat=n_variables)]
    params = problem.params()
    log_probs = problem.log_prob(params, outcomes)
    assert float(log_probs.exp().sum()) == pytest.approx(1.0, rel=1e-12)
    # log p(x) = Σ_d log softmax(θ_d)[x_d], one outcome by hand
    by_hand = sum(
        math.log(float(torch.softmax(torch.tensor(row, dtype=torch.float64), 0)[1])) for row in theta
    )
    one = torch.zeros(n_variables, n_classes, dtype=torch.float64)
    one[:, 1] = 1.0
    assert float(problem.log_prob(params, one)) == pytest.approx(by_hand, rel=1e-12)
    # E[f] from cost and log_prob on the enumeration: a second route to the expectation
    for cost in ("separable", "coupled"):
        problem = MultiCategorical(theta=theta, target=target, cost=cost)
        total = (log_probs.exp() * problem.cost(params, outcomes)).sum()
        torch.testing.assert_close(total, problem.expected_cost(params), rtol=1e-12, atol=0)


@pytest.mark.parametrize("cost", ["separable", "coupled"])
def test_cost_matches_the_formula_at_every_outcome(cost):
    theta, target = SMALL_CASES[1]
    problem = MultiCategorical(theta=theta, target=target, cost=cost)
    outcomes = problem.enumerate_outcomes()
    costs = problem.cost(problem.params(), outcomes)
    for outcome, value in zip(outcomes, costs, strict=True):
        values = [float(k) / 3 for k in outcome.argmax(-1)]
        assert float(value) == pytest.approx(by_hand_cost(values, target, cost), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("cost", ["separable", "coupled"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relaxed_cost_equals_cost_at_hard_samples(cost, dtype):
    problem = MultiCategorical(cost=cost)
    params = {"theta": problem.params()["theta"].to(dtype)}
    noise = problem.noise(torch.Generator().manual_seed(1), (200, 3), dtype)
    hard = problem.sample(params, noise)
    assert hard.shape == (200, 3, 3, 3) and hard.dtype == dtype
    cost_value = problem.cost(params, hard)
    assert cost_value.shape == (200, 3) and cost_value.dtype == dtype
    torch.testing.assert_close(problem.relaxed_cost(params, hard), cost_value, rtol=0, atol=0)
    # the relaxed sample shares the noise: at a tiny temperature it is the hard sample (for the
    # variables whose top two pre-image values are not within 1e-2 of each other)
    top_two = problem.preimage(params, noise).topk(2, -1).values  # (200, 3, D, 2)
    clear = top_two[..., 0] - top_two[..., 1] > 1e-2  # (200, 3, D)
    cold = problem.relaxed_sample(params, noise, 1e-4)
    torch.testing.assert_close(cold[clear], hard[clear], rtol=0, atol=1e-6)
    assert clear.float().mean() > 0.95
    # at a soft y, the relaxed cost is the formula at s_d = v·y_d
    soft = problem.relaxed_sample(params, noise, 1.0)
    values = (soft * torch.tensor([0.0, 0.5, 1.0], dtype=dtype)).sum(-1)  # (200, 3, D)
    target = torch.tensor([0.9, 0.8, 0.7], dtype=dtype)
    if cost == "separable":
        expected = ((values - target) ** 2).sum(-1)
    else:
        expected = (values.mean(-1) - target.mean()) ** 2
    torch.testing.assert_close(problem.relaxed_cost(params, soft), expected)


def test_sample_is_the_gumbel_max_of_the_latent_interface():
    problem = MultiCategorical()
    params = problem.params()
    noise = problem.noise(torch.Generator().manual_seed(2), (100,), torch.float64)
    theta = params["theta"]
    by_hand = torch.nn.functional.one_hot((theta - torch.log(-torch.log(noise))).argmax(-1), 3).double()
    assert torch.equal(problem.sample(params, noise), by_hand)
    z = problem.preimage(params, noise)
    torch.testing.assert_close(z, latent.categorical_preimage(theta, noise), rtol=0, atol=0)
    assert torch.equal(problem.hard(z), by_hand)
    assert torch.equal(problem.logits(params), theta)


def joint_frequency_scores(problem, probabilities: torch.Tensor, seed: int, n: int) -> torch.Tensor:
    """z-scores of the observed joint-outcome frequencies against ``probabilities`` (K^D,)."""
    samples = problem.sample(
        problem.params(), problem.noise(torch.Generator().manual_seed(seed), (n,), torch.float64)
    )
    places = problem.n_classes ** torch.arange(problem.n_variables - 1, -1, -1)
    index = (samples.argmax(-1) * places).sum(-1)  # (n,): the outcome's row in enumerate_outcomes
    frequency = torch.bincount(index, minlength=len(probabilities)).double() / n
    return (frequency - probabilities) / torch.sqrt(probabilities * (1 - probabilities) / n)


@pytest.mark.statistical
def test_sampler_frequencies_match_softmax():
    # α = 1e-3 family-wise: Bonferroni over the K^D = 27 joint outcomes' binomial z-tests (which
    # also checks that the variables are independent); every probability is ≥ 0.003, so at
    # n = 200000 each count is ≥ 600 and the normal approximation holds.
    problem = MultiCategorical()
    probabilities = problem.log_prob(problem.params(), problem.enumerate_outcomes()).exp()
    assert probabilities.min() > 0.003
    by_hand = torch.softmax(problem.theta, -1)
    torch.testing.assert_close(probabilities[5], by_hand[0, 0] * by_hand[1, 1] * by_hand[2, 2])  # (0, 1, 2)
    critical = float(
        torch.special.ndtri(torch.tensor(1 - ALPHA / (2 * len(probabilities)), dtype=torch.float64))
    )
    scores = joint_frequency_scores(problem, probabilities, seed=3, n=200_000)
    assert scores.abs().max() < critical, scores
    # test the test: the same check rejects the law of slightly different logits
    wrong = MultiCategorical(theta=(problem.theta * 1.1).tolist())
    wrong_probabilities = wrong.log_prob(wrong.params(), wrong.enumerate_outcomes()).exp()
    assert joint_frequency_scores(problem, wrong_probabilities, seed=3, n=200_000).abs().max() > critical


# --- config errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides,key",
    [
        ({"theta": [0.0, 1.0, 2.0]}, "problem.theta"),  # not a list of lists
        ({"theta": "abc"}, "problem.theta"),
        ({"theta": []}, "problem.theta"),
        ({"theta": [[0.0, 1.0], [0.0, 1.0, 2.0]]}, "problem.theta"),  # ragged
        ({"theta": [[0.0], [1.0]], "target": [0.0, 0.0]}, "problem.theta"),  # K < 2
        ({"theta": [["a", 1.0]], "target": [0.0]}, "problem.theta"),
        ({"theta": [[float("nan"), 1.0]], "target": [0.0]}, "problem.theta"),
        ({"target": [0.1, 0.2]}, "problem.target"),  # D = 3 variables
        ({"target": [0.1, 0.2, float("inf")]}, "problem.target"),
        ({"cost": "cubic"}, "problem.cost"),
    ],
)
def test_bad_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as error:
        make("problem", "multicategorical", **overrides)
    assert error.value.key == key
    assert str(error.value).startswith(f"{key}: ")


@pytest.mark.parametrize("n_variables,n_classes", [(21, 2), (11, 4), (2, 1025)])
def test_outcome_limit_names_the_keys(n_variables, n_classes):
    theta = [[0.0] * n_classes for _ in range(n_variables)]
    with pytest.raises(ConfigError, match=r"problem\.theta.*2\^20") as error:
        MultiCategorical(theta=theta, target=[0.0] * n_variables)
    assert error.value.key == "problem.theta"
    assert f"{n_classes}^{n_variables}" in str(error.value)


# --- the existing estimators on it ----------------------------------------------------------------
APPLICABLE = ["reinforce", "rloo", "gumbel_softmax", "st_gumbel_softmax", "exact"]


@pytest.mark.parametrize("cost", ["separable", "coupled"])
def test_existing_estimators_run(cost):
    problem = make("problem", "multicategorical", cost=cost)
    for name in APPLICABLE:
        estimator = make("estimator", name)
        assert estimator.why_not(problem, 4) is None, name
        result = run_cell(problem, estimator, n_samples=4, n_estimates=2000, seed=0)
        assert result.row["status"] == "ok", (name, result.row)
        assert len(result.dims) == 9
    assert make("estimator", "pathwise").why_not(problem, 4) is not None


@pytest.mark.statistical
@pytest.mark.parametrize("estimator_name", ["reinforce", "rloo"])
def test_unbiased_estimators_pass_on_the_separable_cost(estimator_name):
    # α = 1e-3 family-wise (the harness's Bonferroni bias_pvalue over the 9 dimensions); the
    # default (coupled) cost is covered by tests/test_conformance.py.
    problem = make("problem", "multicategorical", cost="separable")
    result = run_cell(problem, make("estimator", estimator_name), n_samples=3, n_estimates=20_000, seed=11)
    assert result.row["bias_pvalue"] > ALPHA, result.row


@pytest.mark.statistical
@pytest.mark.parametrize("cost", ["separable", "coupled"])
def test_the_same_check_rejects_gumbel_softmax(cost):
    # Test the test: the identical check must reject the biased relaxation at τ = 1.
    problem = make("problem", "multicategorical", cost=cost)
    estimator = make("estimator", "gumbel_softmax", temperature=1.0)
    result = run_cell(problem, estimator, n_samples=3, n_estimates=20_000, seed=11)
    assert result.row["bias_pvalue"] < ALPHA, result.row


def test_a_default_cell_takes_well_under_a_second():
    problem = make("problem", "multicategorical")
    estimator = make("estimator", "reinforce")
    run_cell(problem, estimator, n_samples=4, n_estimates=1000, seed=0, dtype="float32")  # warm-up
    started = time.perf_counter()
    result = run_cell(problem, estimator, n_samples=4, n_estimates=20_000, seed=0, dtype="float32")
    seconds = time.perf_counter() - started
    assert result.row["status"] == "ok"
    assert seconds < 1.0, f"a cell of 20000 estimates took {seconds:.2f} s"
