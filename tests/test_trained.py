"""REBAR, RELAX and double control variates: each against its formula written out by hand on fixed
noise, exact unbiasedness (enumeration over the samples; for REBAR and RELAX also quadrature over
the continuous noise on one bit), the bias check rejecting the classic bugs, RELAX's variance
reduction after training, and the fit stage's contract (train_steps = 0 leaves the state alone;
training is deterministic from the seed).

False-alarm rates: every statistical test (marked) is seeded and states its rate; bias checks reject
at α = 1e-3 family-wise over dimensions (the harness's Bonferroni ``bias_pvalue``). Per
torch.distributions' rule, a failing seed may be bumped once; a second failure is a bug.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from bench.errors import ConfigError
from bench.estimators.base import detached, per_estimate_gradients, score_function_surrogate
from bench.estimators.double_cv import DoubleCV
from bench.estimators.rebar import Rebar, rebar_surrogate
from bench.estimators.relax import Relax, control_variate
from bench.problems.bernoulli import Bernoulli
from bench.problems.categorical import Categorical
from bench.runner import run_cell
from tests.conftest import make

ALPHA = 1e-3
N_ESTIMATES = 20_000  # the harness's default budget (conf/config.yaml) ...
N_SAMPLES = 3  # ... and the conformance suite's n_samples


# --- test-only problems and deliberately broken estimators (unregistered: name = "") -------------
class DirectCostBernoulli(Bernoulli):
    """Bernoulli bits whose cost also depends on θ directly, as the VAE's log q does:
    f(θ, b) = Σ_i (b_i − t_i)² + Σ_i b_i sin θ_i (relaxed: the same at y ∈ [0, 1]).
    Exact gradient: autograd through E[f] summed over every outcome."""

    name = ""

    def cost(self, params, x):
        return super().cost(params, x) + (x * torch.sin(params["theta"])).sum(-1)

    def relaxed_cost(self, params, y):
        return self.cost(params, y)

    def expected_cost(self, params, min_prob: float = 0.0):
        outcomes = self.enumerate_outcomes().to(params["theta"].dtype)  # (2^D, D)
        probs = self.log_prob(params, outcomes).exp()
        return (probs * self.cost(params, outcomes)).sum()


class BlackBoxBernoulli(Bernoulli):
    """Bernoulli bits without a relaxed cost: RELAX must work with f as a black box."""

    name = ""
    has_relaxed_cost = False


class DetachedRebar(Rebar):
    """The classic REBAR bug: θ detached inside the conditional pre-image z̃ (claims unbiased)."""

    name = ""
    unbiased = True

    def surrogate_with(self, problem, params, noise, state):
        temperature = torch.exp(state["log_temperature"])
        return rebar_surrogate(problem, params, noise, state["eta"], temperature, detached(params))


class LeakyRelax(Relax):
    """A RELAX whose control variate leaks gradient into θ: the score term is (f − c_ψ(z̃)) · log p
    without the stop-gradient, so −log p · ∇θ c_ψ(z̃) joins the estimate (claims unbiased)."""

    name = ""
    unbiased = True

    def surrogate_with(self, problem, params, noise, state):
        u, v = noise
        z = problem.preimage(params, u)
        b = problem.hard(z)
        z_tilde = problem.conditional_preimage(params, b, v)
        cost = problem.cost(params, b)
        control = control_variate(problem, params, z, state)
        control_tilde = control_variate(problem, params, z_tilde, state)
        log_prob = problem.log_prob(params, b)
        return (cost + (cost - control_tilde) * log_prob + control - control_tilde).mean()


# --- helpers ---------------------------------------------------------------------------------------
def conditional_noise(problem, n_estimates: int, n_samples: int, seed: int = 0):
    """(u, v) like the runner's: u from the main stream, v from an independent one (float64)."""
    main, aux = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 7919)
    u = problem.noise(main, (n_estimates, n_samples), torch.float64)
    v = problem.noise(aux, (n_estimates, n_samples), torch.float64)
    return u, v


def random_relax_state(estimator: Relax, problem, seed: int = 3, scale: float = 0.5):
    """A RELAX state away from its initial one (w2 ≠ 0, η ≠ 1, λ ≠ temperature), float64."""
    generator = torch.Generator().manual_seed(seed)
    state = estimator.initial_state(problem, problem.params())
    return {k: v + scale * torch.randn(v.shape, generator=generator, dtype=v.dtype) for k, v in state.items()}


def with_state(estimator: Relax, problem, state):
    estimator.state, estimator._state_problem = state, problem
    return estimator


def logit(u: torch.Tensor) -> torch.Tensor:
    return torch.log(u) - torch.log1p(-u)


def binary_conditional_by_hand(theta, b, v):
    """z̃ = θ + logit(u'), u' uniform on the part of (0, 1) that gives b, and ∂z̃/∂θ (derived by hand:
    b = 1: u' = 1 − p(1 − v), ∂z̃/∂θ = p v / (1 − p(1 − v));  b = 0: u' = v(1 − p),
    ∂z̃/∂θ = (1 − p)(1 − v) / (1 − v(1 − p)))."""
    p = torch.sigmoid(theta)
    u_cond = torch.where(b > 0.5, 1 - p * (1 - v), v * (1 - p))
    dz_dtheta = torch.where(b > 0.5, p * v / (1 - p * (1 - v)), (1 - p) * (1 - v) / (1 - v * (1 - p)))
    return theta + logit(u_cond), dz_dtheta


# --- each estimator against its formula written out by hand -----------------------------------
def test_rebar_by_hand_on_bernoulli():
    problem = Bernoulli(theta=[0.2, -0.4], target=[0.3, 0.9])
    eta, tau = 1.3, 0.7
    u, v = conditional_noise(problem, 5, 3)
    grads = Rebar(temperature=tau, eta=eta).estimate(problem, problem.params(), (u, v))["theta"]  # (5, 2)
    theta, t = problem.theta, problem.target
    p = torch.sigmoid(theta)
    z = theta + logit(u)  # (5, 3, 2)
    b = (z > 0).double()
    z_tilde, dz_tilde = binary_conditional_by_hand(theta, b, v)
    s, s_tilde = torch.sigmoid(z / tau), torch.sigmoid(z_tilde / tau)
    f = ((b - t) ** 2).sum(-1, keepdim=True)  # (5, 3, 1)
    f_tilde = ((s_tilde - t) ** 2).sum(-1, keepdim=True)
    d_relaxed = eta * 2 * (s - t) * s * (1 - s) / tau  # ∂(η f̃(σ(z/τ)))/∂θ, ∂z/∂θ = 1
    d_relaxed_tilde = eta * 2 * (s_tilde - t) * s_tilde * (1 - s_tilde) / tau * dz_tilde
    by_hand = ((f - eta * f_tilde) * (b - p) + d_relaxed - d_relaxed_tilde).mean(1)
    torch.testing.assert_close(grads, by_hand, rtol=1e-12, atol=1e-14)


def test_rebar_by_hand_on_categorical_with_quadratic_cost():
    problem = Categorical(theta=[0.1, 0.9, -0.3], costs=[1.0, -2.0, 0.5], cost="quadratic", target=0.4)
    eta, tau = 0.8, 0.6
    u, v = conditional_noise(problem, 4, 3)
    grads = Rebar(temperature=tau, eta=eta).estimate(problem, problem.params(), (u, v))["theta"]  # (4, 3)
    theta, costs, target = problem.theta, problem.costs, problem.target
    p = torch.softmax(theta, 0)
    z = theta - torch.log(-torch.log(u))  # (4, 3, K)
    x = torch.nn.functional.one_hot(z.argmax(-1), 3).double()
    # z̃: the maximum is Gumbel(logsumexp θ); the others are Gumbel(θ_k) truncated below it
    top = (-torch.log(-torch.log(v)) * x).sum(-1, keepdim=True) + torch.logsumexp(theta, 0)  # (4, 3, 1)
    a, big_b = torch.exp(-theta) * (-torch.log(v)), torch.exp(-top)  # (4, 3, K), (4, 3, 1)
    z_tilde = torch.where(x > 0.5, top, -torch.log(a + big_b))
    # ∂z̃_k/∂θ_j: p_j for the top category; (a_k δ_kj + B p_j) / (a_k + B) for the others
    eye = torch.eye(3, dtype=torch.float64)
    others = (a[..., :, None] * eye + big_b[..., None] * p) / (a + big_b)[..., None]  # (4, 3, K, K)
    jacobian = torch.where(x[..., :, None] > 0.5, p.expand(4, 3, 3, 3), others)

    def relaxed_and_grad(zz):
        """η (c·softmax(z/τ) − t)² and its gradient in z."""
        y = torch.softmax(zz / tau, -1)
        mean = (y * costs).sum(-1, keepdim=True)
        value = eta * (mean - target) ** 2
        return value, eta * 2 * (mean - target) * y * (costs - mean) / tau

    _c, dc = relaxed_and_grad(z)
    c_tilde, dc_tilde = relaxed_and_grad(z_tilde)
    f = ((x * costs).sum(-1, keepdim=True) - target) ** 2
    grad_c_tilde = (dc_tilde[..., :, None] * jacobian).sum(-2)  # J^T ∂c/∂z̃
    by_hand = ((f - c_tilde) * (x - p) + dc - grad_c_tilde).mean(1)
    torch.testing.assert_close(grads, by_hand, rtol=1e-12, atol=1e-14)


def test_relax_by_hand_on_bernoulli():
    problem = Bernoulli(theta=[0.2, -0.4], target=[0.3, 0.9])
    estimator = Relax(hidden=4)
    state = random_relax_state(estimator, problem)
    with_state(estimator, problem, state)
    u, v = conditional_noise(problem, 5, 3)
    grads = estimator.estimate(problem, problem.params(), (u, v))["theta"]
    theta, t = problem.theta, problem.target
    eta, tau = state["eta"], torch.exp(state["log_temperature"])
    p = torch.sigmoid(theta)
    z = theta + logit(u)
    b = (z > 0).double()
    z_tilde, dz_tilde = binary_conditional_by_hand(theta, b, v)

    def control_and_grad(zz):
        """c_ψ(z) = w2·tanh(W1 z + b1) + b2 + η Σ(σ(z/τ) − t)² and ∂c/∂z."""
        hidden = torch.tanh(zz @ state["w1"].T + state["b1"])  # (5, 3, H)
        s = torch.sigmoid(zz / tau)
        value = hidden @ state["w2"] + state["b2"] + eta * ((s - t) ** 2).sum(-1)
        grad = (state["w2"] * (1 - hidden**2)) @ state["w1"] + eta * 2 * (s - t) * s * (1 - s) / tau
        return value[..., None], grad

    _c, dc = control_and_grad(z)
    c_tilde, dc_tilde = control_and_grad(z_tilde)
    f = ((b - t) ** 2).sum(-1, keepdim=True)
    by_hand = ((f - c_tilde) * (b - p) + dc - dc_tilde * dz_tilde).mean(1)
    torch.testing.assert_close(grads, by_hand, rtol=1e-12, atol=1e-14)


def test_double_cv_by_hand_on_bernoulli():
    problem = Bernoulli(theta=[0.2, -0.4], target=[0.3, 0.9])
    estimator = DoubleCV()
    estimator.alpha = -0.7
    n_samples = 3
    u = problem.noise(torch.Generator().manual_seed(0), (6, n_samples), torch.float64)
    grads = estimator.estimate(problem, problem.params(), u)["theta"]  # (6, 2)
    theta, t, alpha = problem.theta, problem.target, -0.7
    mu = torch.sigmoid(theta)
    b = (u > 1 - mu).double()  # (6, S, 2)
    f = ((b - t) ** 2).sum(-1)  # (6, S)
    grad_f = 2 * (b - t)  # ∇f at the discrete points
    others = (grad_f.sum(1, keepdim=True) - grad_f) / (n_samples - 1)  # ḡ_{−k}
    shaped = f + alpha * (others * (b - mu)).sum(-1)  # F_k
    weight = shaped - (shaped.sum(1, keepdim=True) - shaped) / (n_samples - 1)
    by_hand = (weight[..., None] * (b - mu)).mean(1) - alpha * grad_f.mean(1) * mu * (1 - mu)
    torch.testing.assert_close(grads, by_hand, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("problem_name", ["bernoulli", "vae_bernoulli"])
def test_double_cv_at_alpha_zero_is_rloo(problem_name):
    problem = make("problem", problem_name)
    noise = problem.noise(torch.Generator().manual_seed(1), (5, 4), torch.float64)
    params = problem.params()
    double_cv = DoubleCV().estimate(problem, params, noise)  # α = 0 before fitting
    rloo = make("estimator", "rloo").estimate(problem, params, noise)
    for name in params:
        torch.testing.assert_close(double_cv[name], rloo[name], rtol=1e-12, atol=1e-12)


# --- exact unbiasedness -------------------------------------------------------------------------
def outcome_noise(problem: Bernoulli, outcomes: torch.Tensor) -> torch.Tensor:
    """Uniforms that make the problem's sampler return ``outcomes`` (float64)."""
    p = torch.sigmoid(problem.theta)
    return torch.where(outcomes > 0.5, 1 - p / 2, (1 - p) / 2)


@pytest.mark.parametrize("n_samples", [2, 3])
@pytest.mark.parametrize("alpha", [0.0, -0.7, 1.9])
@pytest.mark.parametrize("problem_class", [Bernoulli, DirectCostBernoulli])
def test_double_cv_is_exactly_unbiased_by_enumeration(problem_class, alpha, n_samples):
    # double_cv sees only the outcomes b_1..b_S: the mean over every S-tuple of outcomes, weighted
    # by its probability, is E[ĝ] exactly (for any α: the fitted α is frozen before measuring).
    problem = problem_class(theta=[0.3, -0.7], target=[0.2, 0.9])
    estimator = DoubleCV()
    estimator.alpha = alpha
    outcomes = problem.enumerate_outcomes()  # (4, 2)
    tuples = torch.tensor(list(itertools.product(range(len(outcomes)), repeat=n_samples)))  # (4^S, S)
    params = problem.params()
    weights = problem.log_prob(params, outcomes[tuples]).sum(1).exp()  # (4^S,)
    grads = estimator.estimate(problem, params, outcome_noise(problem, outcomes[tuples]))["theta"]
    torch.testing.assert_close(
        (weights[:, None] * grads).sum(0), problem.exact()["theta"], rtol=1e-12, atol=1e-14
    )


def sigmoidal_nodes(n: int, low: float, high: float, power: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Legendre on [low, high] after s = t^m / (t^m + (1 − t)^m), which clusters the nodes at
    both ends, where the integrands have weak power-law singularities (u^{1/λ}, u^{2|w|}...).
    Nodes are clamped into the open interval the problems' uniforms live in."""
    x, w = np.polynomial.legendre.leggauss(n)
    t, wt = (x + 1) / 2, w / 2
    denominator = t**power + (1 - t) ** power
    s = t**power / denominator
    ds = power * (t * (1 - t)) ** (power - 1) / denominator**2
    nodes = torch.tensor(low + (high - low) * s).clamp(torch.finfo(torch.float64).tiny, 1 - 2**-53)
    return nodes, torch.tensor(wt * ds * (high - low))


def quadrature_mean(estimator, problem: Bernoulli, n: int = 200) -> torch.Tensor:
    """E[ĝ] for one bit and n_samples = 1: the sum over b of the integral over (u, v) ∈ (0, 1)², with
    u split where b flips (u = 1 − σ(θ)), by product Gauss-Legendre quadrature."""
    cut = float(1 - torch.sigmoid(problem.theta)[0])
    u_low, w_low = sigmoidal_nodes(n, 0.0, cut)
    u_high, w_high = sigmoidal_nodes(n, cut, 1.0)
    u, u_weights = torch.cat([u_low, u_high]), torch.cat([w_low, w_high])
    v, v_weights = sigmoidal_nodes(n, 0.0, 1.0)
    grid_u, grid_v = torch.meshgrid(u, v, indexing="ij")
    weights = (u_weights[:, None] * v_weights[None, :]).reshape(-1)
    noise = (grid_u.reshape(-1, 1, 1), grid_v.reshape(-1, 1, 1))  # (n_nodes, S = 1, D = 1) each
    grads = estimator.estimate(problem, problem.params(), noise)["theta"][:, 0]
    return (weights * grads).sum()


def one_bit(problem_class) -> Bernoulli:
    return problem_class(theta=[0.3], target=[0.2])


@pytest.mark.parametrize("problem_class", [Bernoulli, DirectCostBernoulli])
@pytest.mark.parametrize("temperature,eta", [(0.5, 1.0), (0.7, 1.3), (2.0, -0.4)])
def test_rebar_is_exactly_unbiased_by_quadrature(problem_class, temperature, eta):
    # Quadrature converges to ~1e-15 here (checked at 100, 200 and 400 nodes per axis piece).
    problem = one_bit(problem_class)
    mean = quadrature_mean(Rebar(temperature=temperature, eta=eta), problem)
    torch.testing.assert_close(mean, problem.exact()["theta"][0], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("problem_class", [Bernoulli, DirectCostBernoulli, BlackBoxBernoulli])
def test_relax_is_exactly_unbiased_by_quadrature(problem_class):
    # For any ψ (here a random one, MLP output layer nonzero), not only a trained one.
    problem = one_bit(problem_class)
    estimator = Relax(hidden=5)
    with_state(estimator, problem, random_relax_state(estimator, problem))
    mean = quadrature_mean(estimator, problem)
    torch.testing.assert_close(mean, problem.exact()["theta"][0], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("problem_class", [Bernoulli, DirectCostBernoulli])
def test_quadrature_exposes_the_classic_bugs(problem_class):
    # The same exact check on the broken variants: their means miss the gradient by far more than
    # the quadrature's error.
    problem = one_bit(problem_class)
    exact = problem.exact()["theta"][0]
    assert abs(quadrature_mean(DetachedRebar(), problem) - exact) > 1e-3
    leaky = LeakyRelax(hidden=5)
    with_state(leaky, problem, random_relax_state(leaky, problem))
    assert abs(quadrature_mean(leaky, problem) - exact) > 1e-3


# --- test the test: the harness's bias check rejects the classic bugs --------------------------
@pytest.mark.statistical
@pytest.mark.parametrize("problem_name", ["bernoulli", "categorical"])
@pytest.mark.parametrize("broken", [DetachedRebar, LeakyRelax], ids=["detached-rebar", "leaky-relax"])
def test_bias_check_rejects_the_classic_bugs(problem_name, broken):
    # The conformance suite's check at its budget (n_samples 3, n_estimates 20 000, α = 1e-3, seed 11)
    # must reject both (observed p-values < 1e-100). LeakyRelax is fitted like the conformance
    # suite fits relax (30 steps).
    estimator = broken(train_steps=30) if broken is LeakyRelax else broken()
    result = run_cell(
        make("problem", problem_name), estimator, n_samples=N_SAMPLES, n_estimates=N_ESTIMATES, seed=11
    )
    assert result.row["bias_pvalue"] < ALPHA, result.row


# --- RELAX's variance after training ------------------------------------------------------------
def fit_noise(estimator, problem, n_samples: int, seed: int):
    """A draw_noise like the runner's fit stream (float64), seeded by ``seed``."""
    main, aux = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 104729)
    return lambda size: estimator.make_noise(problem, main, aux, (size, n_samples), torch.float64)


def flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([value.reshape(value.shape[0], -1) for value in grads.values()], 1)


def paired_variance_z(errors: torch.Tensor, reference_errors: torch.Tensor) -> float:
    """z of mean δ, δ_i = errors_i − reference_errors_i (paired: common random numbers)."""
    delta = errors - reference_errors
    return float(delta.mean() / (delta.std() / math.sqrt(len(delta))))


@pytest.mark.statistical
@pytest.mark.parametrize(
    "problem_name,overrides,n_samples,train_steps",
    [("bernoulli", {"target": [0.499, 0.499, 0.499]}, 1, 300), ("vae_bernoulli", {}, 4, 100)],
)
def test_trained_relax_has_lower_variance_than_reinforce(problem_name, overrides, n_samples, train_steps):
    # One-sided paired z-tests on common random numbers: with g the exact gradient and
    # δ_i = ‖ĝ_relax,i − g‖² − ‖ĝ_other,i − g‖² (all unbiased, so E δ = the difference of the variance
    # traces), reject "RELAX's variance ≥ the other's" when mean δ / stderr(δ) < −3.09. Two such
    # tests (against REINFORCE, and against RELAX's own untrained state, to show the training is
    # what helps): false-alarm rate (passing although RELAX is not better) ≤ 1e-3 each. Bernoulli
    # at t = 0.499 is the RELAX paper's toy (one sample); vae_bernoulli at the sweep's n_samples = 4.
    # Observed: z ≈ −180 and −100 against REINFORCE.
    problem = make("problem", problem_name, **overrides)
    params = problem.params()
    relax = make("estimator", "relax", train_steps=train_steps)
    report = relax.fit(problem, params, fit_noise(relax, problem, n_samples, seed=1))
    assert report.steps == train_steps
    main, aux = torch.Generator().manual_seed(2), torch.Generator().manual_seed(3)
    u, v = relax.make_noise(problem, main, aux, (2000, n_samples), torch.float64)
    exact = flat({k: g.unsqueeze(0) for k, g in problem.exact().items()})

    def squared_errors(grads: dict[str, torch.Tensor]) -> torch.Tensor:
        return ((flat(grads) - exact) ** 2).sum(1)

    trained = squared_errors(relax.estimate(problem, params, (u, v)))
    reinforce = squared_errors(make("estimator", "reinforce").estimate(problem, params, u))
    untrained = squared_errors(make("estimator", "relax", train_steps=0).estimate(problem, params, (u, v)))
    assert paired_variance_z(trained, reinforce) < -3.09, (float(trained.mean()), float(reinforce.mean()))
    assert paired_variance_z(trained, untrained) < -3.09, (float(trained.mean()), float(untrained.mean()))


# --- the fit stage ----------------------------------------------------------------------------
def test_train_steps_zero_leaves_relax_untrained():
    problem = make("problem", "bernoulli")
    relax = make("estimator", "relax", train_steps=0)
    report = relax.fit(problem, problem.params(), fit_noise(relax, problem, 2, seed=0))
    assert report.steps == 0
    initial = relax.initial_state(problem, problem.params())
    assert relax.state.keys() == initial.keys()
    assert all(torch.equal(relax.state[k], initial[k]) for k in initial)
    result = run_cell(
        problem, make("estimator", "relax", train_steps=0), n_samples=2, n_estimates=100, seed=0
    )
    assert result.row["fit_steps"] == 0
    assert json.loads(result.row["fitted"]) == {"eta": 1.0, "temperature": pytest.approx(0.5)}


def test_untrained_relax_is_rebar_at_eta_one():
    # Zero output layer: c_ψ(z) = f̃(σ_λ(z)), REBAR's control variate at η = 1.
    problem = make("problem", "bernoulli")
    noise = conditional_noise(problem, 6, 3)
    relax = make("estimator", "relax", train_steps=0, temperature=0.7).estimate(
        problem, problem.params(), noise
    )
    rebar = make("estimator", "rebar", temperature=0.7).estimate(problem, problem.params(), noise)
    torch.testing.assert_close(relax["theta"], rebar["theta"], rtol=1e-12, atol=1e-14)


def test_rebar_and_double_cv_without_training():
    problem = make("problem", "bernoulli")
    assert not make("estimator", "rebar").has_fit  # the default: η and λ as given
    assert make("estimator", "rebar", train_steps=5).has_fit
    double_cv = make("estimator", "double_cv", train_steps=0)
    assert double_cv.fit(problem, problem.params(), lambda size: None).fitted == {"alpha": 0.0}


def fitted_state(name: str, seed: int, problem_name: str = "bernoulli") -> dict[str, torch.Tensor]:
    problem = make("problem", problem_name)
    estimator = make("estimator", name, train_steps=15)
    estimator.fit(problem, problem.params(), fit_noise(estimator, problem, 2, seed))
    if name == "double_cv":
        return {"alpha": torch.tensor(estimator.alpha)}
    return estimator.state


@pytest.mark.parametrize("name", ["rebar", "relax", "double_cv"])
def test_training_is_deterministic_from_the_seed(name):
    first, again, other = fitted_state(name, 0), fitted_state(name, 0), fitted_state(name, 1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize("name", ["rebar", "relax", "double_cv"])
def test_runner_fit_is_seeded_and_reported(name):
    problem = make("problem", "bernoulli")

    def row(seed: int):
        estimator = make("estimator", name, train_steps=10)
        return run_cell(problem, estimator, n_samples=2, n_estimates=200, seed=seed).row

    first, again, other = row(0), row(0), row(5)
    assert first["fit_steps"] == 10 and first["fit_seconds"] >= 0
    assert first["fitted"] == again["fitted"] != other["fitted"]
    assert first["variance"] == again["variance"]


def test_fitted_state_is_frozen_while_measuring():
    problem = make("problem", "bernoulli")
    relax = make("estimator", "relax", train_steps=10)
    relax.fit(problem, problem.params(), fit_noise(relax, problem, 2, seed=0))
    noise = conditional_noise(problem, 8, 2)
    first = relax.estimate(problem, problem.params(), noise)["theta"]
    assert torch.equal(first, relax.estimate(problem, problem.params(), noise)["theta"])


# --- applicability and configuration ------------------------------------------------------------
def test_applicability():
    categorical, gaussian, bernoulli = (
        make("problem", "categorical"),
        make("problem", "gaussian"),
        Bernoulli(),
    )
    assert "binary_latent" in make("estimator", "double_cv").why_not(categorical, 4)
    assert "n_samples >= 2" in make("estimator", "double_cv").why_not(bernoulli, 1)
    assert make("estimator", "double_cv").why_not(BlackBoxBernoulli(), 4) is not None  # needs ∇f
    assert make("estimator", "rebar").why_not(BlackBoxBernoulli(), 4) is not None  # needs f̃
    assert make("estimator", "relax").why_not(BlackBoxBernoulli(), 1) is None  # f may be a black box
    for name in ("rebar", "relax"):
        assert make("estimator", name).why_not(categorical, 1) is None
        assert make("estimator", name).why_not(gaussian, 4) is not None
    assert "binary_latent or categorical_latent" in make("estimator", "relax").why_not(gaussian, 4)
    assert make("estimator", "rebar").cost_evals(4) == 12
    assert make("estimator", "relax").cost_evals(4) == 12
    assert make("estimator", "double_cv").cost_evals(4) == 4


@pytest.mark.parametrize(
    "name,key,bad",
    [
        ("rebar", "temperature", 0),
        ("rebar", "eta", float("nan")),
        ("rebar", "eta", "big"),
        ("rebar", "train_steps", -1),
        ("rebar", "lr", 0.0),
        ("relax", "hidden", 0),
        ("relax", "train_steps", 2.5),
        ("relax", "lr", -1.0),
        ("relax", "temperature", "hot"),
        ("double_cv", "train_steps", True),
        ("double_cv", "lr", float("inf")),
    ],
)
def test_bad_config_names_the_key(name, key, bad):
    with pytest.raises(ConfigError, match=rf"^estimator\.{key}:"):
        make("estimator", name, **{key: bad})


def test_reinforce_surrogate_matches_relax_without_control():
    # Sanity of the shared pieces: with ψ = 0 on a black-box problem, RELAX is REINFORCE.
    problem = BlackBoxBernoulli(theta=[0.2, -0.4], target=[0.3, 0.9])
    relax = Relax(hidden=3)
    state = {k: torch.zeros_like(v) for k, v in relax.initial_state(problem, problem.params()).items()}
    with_state(relax, problem, state)
    u, v = conditional_noise(problem, 5, 3)
    params = problem.params()

    def reinforce(problem_, params_, noise_, _state):
        x = problem_.sample(detached(params_), noise_)
        cost = problem_.cost(params_, x)
        return score_function_surrogate(cost, problem_.log_prob(params_, x), cost)

    expected = per_estimate_gradients(reinforce, problem, params, u, {})["theta"]
    torch.testing.assert_close(
        relax.estimate(problem, params, (u, v))["theta"], expected, rtol=1e-12, atol=1e-14
    )
