"""ARM, DisARM and the oracle constant baseline: formulas by hand on fixed noise, exact one-bit
moments by quadrature against the harness's empirical variance, the oracle baseline by hand and
its optimality by enumeration, applicability, and arm/disarm throughput against reinforce.

Statistical tests (marked) state their false-alarm rate: α = 1e-3 family-wise (Bonferroni over
dimensions); seeds are fixed, and a failing seed may be bumped at most once (torch.distributions'
rule). Each such check is also shown to reject a known-wrong reference ("test the test").
"""

from __future__ import annotations

import json
import statistics
import time

import numpy as np
import pytest
import torch
from scipy import integrate

from bench.estimators.arm import antithetic_pair
from bench.problems.bernoulli import Bernoulli
from bench.problems.categorical import Categorical
from bench.runner import run_cell
from tests.conftest import make

ALPHA = 1e-3
RTOL, ATOL = 1e-12, 1e-14


def fixed_noise(problem, n_estimates: int, n_samples: int, seed: int = 0) -> torch.Tensor:
    return problem.noise(torch.Generator().manual_seed(seed), (n_estimates, n_samples), torch.float64)


def pair_by_hand(theta: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    p = torch.sigmoid(theta)
    return (u > 1 - p).double(), (u < p).double()


def bernoulli_cost(problem: Bernoulli, b: torch.Tensor) -> torch.Tensor:
    return ((b - problem.target) ** 2).sum(-1)


# --- formulas by hand on fixed noise ----------------------------------------------------------------
def test_pair_is_the_problems_sample_and_its_antithetic_copy():
    problem = Bernoulli(theta=[0.2, -0.4, 1.5], target=[0.3, 0.9, 0.5])
    params = problem.params()
    u = fixed_noise(problem, 50, 3)
    first, second = antithetic_pair(problem, params, u, problem.logits(params))
    assert torch.equal(first, problem.sample(params, u))
    assert torch.equal(second, problem.sample(params, 1 - u))  # b₂ is b₁ at u → 1 − u
    assert torch.equal(second, pair_by_hand(problem.theta, u)[1])


def test_arm_by_hand_on_bernoulli():
    problem = Bernoulli(theta=[0.2, -0.4, 1.5], target=[0.3, 0.9, 0.5])
    u = fixed_noise(problem, 5, 3)  # (5, 3, D)
    grads = make("estimator", "arm").estimate(problem, problem.params(), u)["theta"]  # (5, D)
    b1, b2 = pair_by_hand(problem.theta, u)
    delta = (bernoulli_cost(problem, b1) - bernoulli_cost(problem, b2)).unsqueeze(-1)  # (5, 3, 1)
    torch.testing.assert_close(grads, (delta * (u - 0.5)).mean(1), rtol=RTOL, atol=ATOL)


def test_disarm_by_hand_on_bernoulli():
    problem = Bernoulli(theta=[0.2, -0.4, 1.5], target=[0.3, 0.9, 0.5])
    u = fixed_noise(problem, 5, 3)
    grads = make("estimator", "disarm").estimate(problem, problem.params(), u)["theta"]
    b1, b2 = pair_by_hand(problem.theta, u)
    delta = (bernoulli_cost(problem, b1) - bernoulli_cost(problem, b2)).unsqueeze(-1)
    by_hand = 0.5 * delta * (-1.0) ** b2 * (b1 != b2).double() * torch.sigmoid(problem.theta.abs())
    torch.testing.assert_close(grads, by_hand.mean(1), rtol=RTOL, atol=ATOL)
    assert (grads != 0).any()


@pytest.mark.parametrize("name", ["arm", "disarm"])
def test_by_hand_on_vae_bernoulli_chain_rule_and_direct_term(name):
    # φ = encoder(x): ĝ_θ = J_φ(θ)ᵀ g_φ + ½ mean_s [∇θ f(θ, b₁ₛ) + ∇θ f(θ, b₂ₛ)], by autograd here.
    problem = make("problem", "vae_bernoulli")
    params = problem.params()
    u = fixed_noise(problem, 3, 2)  # (3, 2, B, L)
    grads = make("estimator", name).estimate(problem, params, u)
    for e in range(u.shape[0]):  # a test may loop over three estimates
        leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        logits = problem.encode(leaves)  # (B, L)
        b1, b2 = pair_by_hand(logits.detach(), u[e])
        f1, f2 = problem.cost(leaves, b1), problem.cost(leaves, b2)  # (2,) each
        delta = (f1 - f2).detach()[:, None, None]
        if name == "arm":
            per_pair = delta * (u[e] - 0.5)
        else:
            s = torch.sigmoid(logits.detach().abs())
            per_pair = 0.5 * delta * (1 - 2 * b2) * (b1 != b2).double() * s
        surrogate = (per_pair.mean(0) * logits).sum() + 0.5 * (f1 + f2).mean()
        by_hand = torch.autograd.grad(surrogate, list(leaves.values()))
        for key, value in zip(leaves, by_hand, strict=True):
            torch.testing.assert_close(grads[key][e], value, rtol=1e-10, atol=1e-12)


class PenalizedBernoulli(Bernoulli):
    """f(θ, b) = Σ (b − t)² + Σ θ²: a cost with a direct dependence on θ whose gradient, 2θ, has a
    non-zero mean (the ELBO's log q term has mean zero, so it cannot show a missing direct term).
    Unregistered (empty name)."""

    name = ""
    cost_depends_on_params = True  # Bernoulli's cost is free of θ; this one's is not

    def cost(self, params, x):
        return super().cost(params, x) + (params["theta"] ** 2).sum()


@pytest.mark.parametrize("name", ["arm", "disarm"])
def test_direct_term_is_included_exactly(name):
    plain = Bernoulli(theta=[0.2, -0.4], target=[0.3, 0.9])
    penalized = PenalizedBernoulli(theta=[0.2, -0.4], target=[0.3, 0.9])
    u = fixed_noise(plain, 6, 3)
    estimator = make("estimator", name)
    difference = (
        estimator.estimate(penalized, penalized.params(), u)["theta"]
        - estimator.estimate(plain, plain.params(), u)["theta"]
    )
    torch.testing.assert_close(difference, (2 * plain.theta).expand(6, 2), rtol=RTOL, atol=ATOL)


class AutogradBernoulli(Bernoulli):
    """Bernoulli declaring a θ-dependent cost, which sends ARM/DisARM down the per-estimate
    vmap(grad) path instead of the batched one. Unregistered."""

    name = ""
    cost_depends_on_params = True


@pytest.mark.parametrize("name", ["arm", "disarm"])
def test_batched_path_gives_the_per_estimate_autograd_estimates(name):
    batched = Bernoulli(theta=[0.2, -0.4, 1.5], target=[0.3, 0.9, 0.5])
    autograd = AutogradBernoulli(theta=[0.2, -0.4, 1.5], target=[0.3, 0.9, 0.5])
    u = fixed_noise(batched, 64, 3)
    estimator = make("estimator", name)
    expected = estimator.estimate(autograd, autograd.params(), u)["theta"]
    torch.testing.assert_close(estimator.estimate(batched, batched.params(), u)["theta"], expected)


class BooleanBernoulli(Bernoulli):
    """A Bernoulli whose samples are booleans (a public DisARM crashed on those). Unregistered."""

    name = ""

    def sample(self, params, noise):
        return super().sample(params, noise) > 0.5

    def cost(self, params, x):
        return super().cost(params, x.to(self.theta.dtype))


@pytest.mark.parametrize("name", ["arm", "disarm"])
def test_boolean_samples_give_the_same_estimates(name):
    floats = Bernoulli(theta=[0.2, -0.4, 1.5], target=[0.3, 0.9, 0.5])
    booleans = BooleanBernoulli(theta=[0.2, -0.4, 1.5], target=[0.3, 0.9, 0.5])
    u = fixed_noise(floats, 8, 3)
    estimator = make("estimator", name)
    expected = estimator.estimate(floats, floats.params(), u)["theta"]
    torch.testing.assert_close(estimator.estimate(booleans, booleans.params(), u)["theta"], expected)


def test_oracle_baseline_by_hand_on_bernoulli():
    problem = Bernoulli(theta=[0.2, -0.4, 1.5], target=[0.3, 0.9, 0.5])
    u = fixed_noise(problem, 5, 3)
    grads = make("estimator", "oracle_baseline").estimate(problem, problem.params(), u)["theta"]
    b = (u > 1 - torch.sigmoid(problem.theta)).double()
    f = bernoulli_cost(problem, b).unsqueeze(-1)  # (5, 3, 1)
    by_hand = ((f - bernoulli_baseline_by_hand(problem)) * (b - torch.sigmoid(problem.theta))).mean(1)
    torch.testing.assert_close(grads, by_hand, rtol=RTOL, atol=ATOL)


# --- the oracle baseline b* by hand, and its optimality -------------------------------------------
def bernoulli_baseline_by_hand(problem: Bernoulli) -> torch.Tensor:
    """sᵢ = bᵢ − pᵢ, E[sᵢ²] = pᵢ(1 − pᵢ), and f = Σ_j f_j(b_j) with independent bits, so
    b*ᵢ = E[fᵢ sᵢ²]/E[sᵢ²] + Σ_{j≠i} E[f_j] = (1 − pᵢ)(1 − tᵢ)² + pᵢ tᵢ² + Σ_{j≠i} E[f_j]."""
    p, t = torch.sigmoid(problem.theta), problem.target
    own = (1 - p) * (1 - t) ** 2 + p * t**2
    expected = p * (1 - t) ** 2 + (1 - p) * t**2  # E[f_j]
    return own + expected.sum() - expected


def test_oracle_baseline_by_hand():
    bernoulli = Bernoulli(theta=[0.2, -0.4, 1.5], target=[0.3, 0.9, 0.5])
    fitted = make("estimator", "oracle_baseline").baselines(bernoulli)["theta"]
    torch.testing.assert_close(fitted, bernoulli_baseline_by_hand(bernoulli), rtol=RTOL, atol=ATOL)
    # categorical: s_k = 1[z = k] − π_k, so b*_k = Σ_z π_z c_z (1[z=k] − π_k)² / (π_k (1 − π_k))
    categorical = Categorical(theta=[0.1, 0.9, -0.3], costs=[1.0, -2.0, 0.5])
    pi, c = torch.softmax(categorical.theta, 0), categorical.costs
    indicator = torch.eye(3, dtype=torch.float64)  # [z, k]
    numerator = (pi[:, None] * c[:, None] * (indicator - pi[None, :]) ** 2).sum(0)
    fitted = make("estimator", "oracle_baseline").baselines(categorical)["theta"]
    torch.testing.assert_close(fitted, numerator / (pi * (1 - pi)), rtol=RTOL, atol=ATOL)


def exact_single_sample_variance(problem, estimator, outcomes_noise, weights) -> tuple[torch.Tensor, ...]:
    """Mean and variance per dimension of one single-sample estimate over the weighted outcomes."""
    grads = estimator.estimate(problem, problem.params(), outcomes_noise)["theta"]  # (M, D)
    mean = (weights[:, None] * grads).sum(0)
    return mean, (weights[:, None] * (grads - mean) ** 2).sum(0)


def test_oracle_baseline_minimizes_the_variance_by_enumeration():
    # Exact (enumerated) single-sample moments: unbiased at b*, and moving any b*ᵢ by ±δ only
    # raises that dimension's variance, by exactly δ² E[sᵢ²] (the variance is a parabola in b).
    problem = Bernoulli(theta=[0.2, -0.4, 1.5], target=[0.3, 0.9, 0.5])
    outcomes = problem.enumerate_outcomes()  # (8, 3)
    p = torch.sigmoid(problem.theta)
    weights = problem.log_prob(problem.params(), outcomes).exp()  # (8,)
    noise = torch.where(outcomes > 0.5, 1 - p / 2, (1 - p) / 2).unsqueeze(1)  # (8, 1, 3): each outcome
    oracle = make("estimator", "oracle_baseline")
    mean, best = exact_single_sample_variance(problem, oracle, noise, weights)
    torch.testing.assert_close(mean, problem.exact()["theta"], rtol=1e-12, atol=1e-14)
    optimum = oracle.baselines(problem)["theta"].clone()
    for delta in (-0.1, 0.05, 0.3):
        oracle._fitted = (problem, {"theta": optimum + delta})
        _mean, moved = exact_single_sample_variance(problem, oracle, noise, weights)
        torch.testing.assert_close(moved - best, delta**2 * p * (1 - p), rtol=1e-10, atol=1e-14)
    _mean, reinforce = exact_single_sample_variance(problem, make("estimator", "reinforce"), noise, weights)
    assert (best < reinforce).all()


def test_oracle_baseline_fit_stage_in_the_row():
    problem = Bernoulli(theta=[0.2, -0.4, 1.5], target=[0.3, 0.9, 0.5])
    row = run_cell(problem, make("estimator", "oracle_baseline"), n_samples=2, n_estimates=100, seed=0).row
    assert row["status"] == "ok" and row["fit_steps"] == 0 and row["cost_evals"] == 2
    fitted = json.loads(row["fitted"])["baseline"]
    np.testing.assert_allclose(fitted, bernoulli_baseline_by_hand(problem).numpy(), rtol=1e-12)


# --- exact one-bit moments: closed form, quadrature, and the harness ------------------------------
def one_bit_closed_form(name: str, theta: float, target: float) -> tuple[float, float]:
    """(g, Var) of one pair on f = (b − t)². Δ = f(1) − f(0) = 1 − 2t, p = σ(φ), s = σ(|φ|) = max(p, 1 − p).

    ARM: |f(b₁) − f(b₂)| = |Δ| exactly when u is outside (1 − s, s) (the pair disagrees), so
      E[ĝ²] = Δ² ∫_{u∉(1−s,s)} (u − ½)² du = Δ² (2/3)(1/8 − (s − ½)³).
    DisARM: ĝ = ½ Δ s on the event "pair disagrees" (probability 2(1 − s)) and 0 otherwise, so
      E[ĝ²] = ½ Δ² s² (1 − s), and Var = E[ĝ²] − g² = s²(1 − s)(s − ½) Δ².
    """
    p = 1 / (1 + np.exp(-theta))
    s, delta = max(p, 1 - p), 1 - 2 * target
    g = p * (1 - p) * delta
    if name == "arm":
        return g, delta**2 * (2 / 3) * (1 / 8 - (s - 0.5) ** 3) - g**2
    return g, s**2 * (1 - s) * (s - 0.5) * delta**2


def quadrature_moments(name: str, theta: float, target: float) -> tuple[float, float, float]:
    """Mean, variance and fourth central moment of one estimate, integrating the estimator's own
    code over u ∈ (0, 1) (scipy.integrate.quad, broken at the pair's switching points)."""
    problem = Bernoulli(theta=[theta], target=[target])
    estimator, params = make("estimator", name), problem.params()

    def estimate(u: float) -> float:
        noise = torch.tensor([[[u]]], dtype=torch.float64)  # (1 estimate, 1 pair, 1 bit)
        return float(estimator.estimate(problem, params, noise)["theta"][0, 0])

    p = float(torch.sigmoid(problem.theta)[0])
    points = sorted([p, 1 - p])

    def moment(function) -> float:
        value, _error = integrate.quad(function, 0, 1, points=points, epsabs=1e-14, epsrel=1e-12)
        return value

    mean = moment(estimate)
    var = moment(lambda u: (estimate(u) - mean) ** 2)
    mu4 = moment(lambda u: (estimate(u) - mean) ** 4)
    return mean, var, mu4


ONE_BIT = [(0.8, 0.2), (-1.3, 0.7)]


def critical_value(n_tests: int) -> float:
    return float(torch.special.ndtri(torch.tensor(1 - ALPHA / (2 * n_tests), dtype=torch.float64)))


def variance_z(empirical: float, var: float, mu4: float, n: int) -> float:
    """z of the sample variance against σ²; its standard error is sqrt((μ4 − σ⁴)/n)."""
    return (empirical - var) / np.sqrt((mu4 - var**2) / n)


@pytest.mark.parametrize("name", ["arm", "disarm"])
@pytest.mark.parametrize("theta,target", ONE_BIT)
def test_one_bit_closed_form_matches_quadrature(name, theta, target):
    g, var = one_bit_closed_form(name, theta, target)
    mean, quad_var, _mu4 = quadrature_moments(name, theta, target)
    assert mean == pytest.approx(g, rel=1e-10)  # unbiased, exactly
    problem = Bernoulli(theta=[theta], target=[target])
    assert mean == pytest.approx(float(problem.exact()["theta"][0]), rel=1e-10)
    assert quad_var == pytest.approx(var, rel=1e-10)


N_VARIANCE = 200_000


@pytest.mark.statistical
@pytest.mark.parametrize("name", ["arm", "disarm"])
@pytest.mark.parametrize("theta,target", ONE_BIT)
def test_harness_variance_matches_the_exact_one_bit_variance(name, theta, target):
    # α = 1e-3 for the z-test of the harness's sample variance s² (float64, N_VARIANCE estimates)
    # against the exact σ², standard error sqrt((μ4 − σ⁴)/n) with μ4 from quadrature.
    _g, var = one_bit_closed_form(name, theta, target)
    _mean, _var, mu4 = quadrature_moments(name, theta, target)
    problem = Bernoulli(theta=[theta], target=[target])
    result = run_cell(
        problem, make("estimator", name), n_samples=1, n_estimates=N_VARIANCE, seed=3, dtype="float64"
    )
    assert result.row["cost_evals"] == 2
    empirical = result.dims[0]["var"]
    assert abs(variance_z(empirical, var, mu4, N_VARIANCE)) < critical_value(1), (empirical, var)


@pytest.mark.statistical
@pytest.mark.parametrize("name,wrong", [("disarm", "arm"), ("arm", "disarm")])
def test_the_variance_check_rejects_a_wrong_variance(name, wrong):
    # Test the test: the same α = 1e-3 check, fed the other estimator's exact variance (ARM's is
    # ~18% above DisARM's at φ = 0.8, t = 0.2), must reject.
    theta, target = ONE_BIT[0]
    _g, wrong_var = one_bit_closed_form(wrong, theta, target)
    _mean, _var, mu4 = quadrature_moments(wrong, theta, target)
    problem = Bernoulli(theta=[theta], target=[target])
    result = run_cell(
        problem, make("estimator", name), n_samples=1, n_estimates=N_VARIANCE, seed=3, dtype="float64"
    )
    assert abs(variance_z(result.dims[0]["var"], wrong_var, mu4, N_VARIANCE)) > critical_value(1)


def test_disarm_variance_never_exceeds_arm_on_one_bit():
    for theta in np.linspace(-4, 4, 17):
        assert (
            one_bit_closed_form("disarm", theta, 0.2)[1] <= one_bit_closed_form("arm", theta, 0.2)[1] + 1e-15
        )


# --- applicability and cost -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "estimator_name,problem_name,words",
    [
        ("arm", "categorical", "arm needs binary latents"),
        ("disarm", "categorical", "disarm needs binary latents"),
        ("arm", "gaussian", "arm needs binary latents"),
        ("disarm", "vae_gaussian", "disarm needs binary latents"),
        ("oracle_baseline", "gaussian", "enumerating every outcome"),
        ("oracle_baseline", "vae_gaussian", "enumerating every outcome"),
        ("oracle_baseline", "vae_bernoulli", "enumerating every outcome"),
    ],
)
def test_pairs_that_do_not_apply_are_skipped_with_the_reason(estimator_name, problem_name, words):
    row = run_cell(
        make("problem", problem_name), make("estimator", estimator_name), n_samples=4, n_estimates=10, seed=0
    ).row
    assert row["status"] == "skipped"
    assert words in row["reason"] and problem_name in row["reason"]


def test_applicable_pairs():
    for name in ("arm", "disarm"):
        assert make("estimator", name).why_not(make("problem", "bernoulli"), 1) is None
        assert make("estimator", name).why_not(make("problem", "vae_bernoulli"), 1) is None
    assert make("estimator", "oracle_baseline").why_not(make("problem", "categorical"), 1) is None


def test_cost_evals():
    assert make("estimator", "arm").cost_evals(4) == 8
    assert make("estimator", "disarm").cost_evals(3) == 6
    assert make("estimator", "oracle_baseline").cost_evals(5) == 5


# --- speed ---------------------------------------------------------------------------------------
def cpu_seconds_per_batch(estimator, problem, params, batch: int, n_samples: int, repeats: int) -> float:
    """Thread CPU time of noise generation plus estimation (what the runner times), per batch."""
    started = time.thread_time()
    for repeat in range(repeats):
        generator, aux = torch.Generator().manual_seed(repeat), torch.Generator().manual_seed(10**6 + repeat)
        noise = estimator.make_noise(problem, generator, aux, (batch, n_samples), torch.float32)
        estimator.estimate(problem, params, noise)
    return (time.thread_time() - started) / repeats


def test_arm_and_disarm_throughput_is_at_least_0_4_of_reinforce():
    # They spend two cost evaluations per draw, reinforce one. Thread CPU time in one process, one
    # thread, the order alternated over rounds, medians compared: robust to a busy shared machine.
    problem = make("problem", "bernoulli")
    params = {name: value.float() for name, value in problem.params().items()}
    estimators = {name: make("estimator", name) for name in ("reinforce", "arm", "disarm")}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for estimator in estimators.values():  # warm-up
            cpu_seconds_per_batch(estimator, problem, params, 256, 4, 1)
        seconds: dict[str, list[float]] = {name: [] for name in estimators}
        for round_ in range(7):
            order = list(estimators) if round_ % 2 == 0 else list(estimators)[::-1]
            for name in order:
                seconds[name].append(cpu_seconds_per_batch(estimators[name], problem, params, 4096, 4, 3))
    finally:
        torch.set_num_threads(threads)
    reference = statistics.median(seconds["reinforce"])
    for name in ("arm", "disarm"):
        ratio = reference / statistics.median(seconds[name])  # throughput relative to reinforce
        assert ratio >= 0.4, (name, ratio, seconds)
