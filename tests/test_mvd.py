"""The measure-valued derivative: its Weibull (Rayleigh) and double-sided Maxwell constructions
(weak-derivative identities by quadrature, samplers by Kolmogorov–Smirnov tests, U·M ~ N(0, 1)),
the estimator against its formula by hand on fixed noise (gaussian and vae_gaussian), its exact
mean by quadrature, applicability, config validation and chunking.

Statistical tests (marked) state their false-alarm rate: α = 1e-3 family-wise; seeds are fixed,
and a failing seed may be bumped at most once. Each is shown to reject a known-wrong variant.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

import bench.estimators.mvd as mvd
from bench.errors import ConfigError
from bench.estimators.mvd import double_sided_maxwell, rayleigh
from bench.problems.gaussian import Gaussian
from bench.runner import run_cell
from tests.conftest import make

ALPHA = 1e-3
RTOL, ATOL = 1e-12, 1e-14
SQRT_2PI = math.sqrt(2 * math.pi)


def normal_pdf(x: np.ndarray | float) -> np.ndarray | float:
    return np.exp(-0.5 * np.square(x)) / SQRT_2PI


def maxwell_pdf(m: np.ndarray | float) -> np.ndarray | float:
    """The double-sided Maxwell density m² φ(m)."""
    return np.square(m) * normal_pdf(m)


def maxwell_cdf(m: np.ndarray) -> np.ndarray:
    """½ + ½ sign(m) P(|M| ≤ |m|), |M| ~ Maxwell (scipy.stats.maxwell, unit scale)."""
    return 0.5 + 0.5 * np.sign(m) * stats.maxwell.cdf(np.abs(m))


# --- the constructions -----------------------------------------------------------------------------
def test_weak_derivative_identities_pointwise():
    # ∂μ N(x; μ, σ²) = c_μ (p⁺ − p⁻) with c_μ = 1/(σ√(2π)), p± the densities of μ ± σW, W Rayleigh;
    # ∂σ N(x; μ, σ²) = (1/σ)(p_M − N), p_M the density of μ + σM, M double-sided Maxwell.
    mu, sigma = 0.3, 1.7
    x = np.linspace(-6, 6, 241)
    y = (x - mu) / sigma
    density = normal_pdf(y) / sigma
    d_mu = density * (x - mu) / sigma**2
    d_sigma = density * (y**2 - 1) / sigma
    rayleigh_pdf = np.where(y > 0, y * np.exp(-0.5 * y**2), 0.0)  # density of W at y
    p_plus, p_minus = rayleigh_pdf / sigma, np.where(y < 0, -y * np.exp(-0.5 * y**2), 0.0) / sigma
    np.testing.assert_allclose((p_plus - p_minus) / (sigma * SQRT_2PI), d_mu, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose((maxwell_pdf(y) / sigma - density) / sigma, d_sigma, rtol=1e-12, atol=1e-15)
    # both component densities integrate to one
    assert integrate.quad(lambda w: w * math.exp(-0.5 * w * w), 0, np.inf)[0] == pytest.approx(1, rel=1e-12)
    assert integrate.quad(maxwell_pdf, -np.inf, np.inf)[0] == pytest.approx(1, rel=1e-12)


@pytest.mark.parametrize("y", [-2.5, -0.7, 0.05, 0.4, 1.3, 3.0])  # at y = 0 exactly the integrand is 0 a.e.
def test_uniform_times_maxwell_is_standard_normal_by_quadrature(y):
    # The density of U·M at y is ∫₀¹ p_M(y/u) du/u; it must be φ(y).
    density, _error = integrate.quad(lambda u: maxwell_pdf(y / u) / u, 0, 1, epsabs=1e-14, epsrel=1e-12)
    assert density == pytest.approx(normal_pdf(y), rel=1e-9, abs=1e-14)


N_KS = 100_000


def ks_pvalue(samples: torch.Tensor, cdf) -> float:
    return float(stats.kstest(samples.numpy(), cdf).pvalue)


def draws(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(N_KS, generator=generator, dtype=torch.float64).clamp_min(1e-300)
    normals = torch.randn(3, N_KS, generator=generator, dtype=torch.float64)
    v = torch.rand(N_KS, generator=generator, dtype=torch.float64)
    return u, normals, v


@pytest.mark.statistical
def test_samplers_follow_their_laws():
    # Three KS tests at α = 1e-3 / 3 each (Bonferroni): α = 1e-3 family-wise.
    u, normals, v = draws(seed=0)
    level = ALPHA / 3
    assert ks_pvalue(rayleigh(u), stats.rayleigh.cdf) > level
    maxwell = double_sided_maxwell(normals)
    assert ks_pvalue(maxwell, maxwell_cdf) > level
    assert ks_pvalue(v * maxwell, stats.norm.cdf) > level


@pytest.mark.statistical
def test_the_same_ks_checks_reject_wrong_constructions():
    # Test the test: the same α = 1e-3 / 3 checks reject a Weibull of the wrong scale
    # (sqrt(−log u): shape 2, scale 1), a "Maxwell" from two normals (a signed Rayleigh), and
    # U·R for that signed Rayleigh R (not normal).
    u, normals, v = draws(seed=0)
    level = ALPHA / 3
    assert ks_pvalue(torch.sqrt(-torch.log(u)), stats.rayleigh.cdf) < level
    signed_rayleigh = torch.sign(normals[0]) * torch.sqrt((normals[:2] ** 2).sum(0))
    assert ks_pvalue(signed_rayleigh, maxwell_cdf) < level
    assert ks_pvalue(v * signed_rayleigh, stats.norm.cdf) < level


# --- the estimator by hand on fixed noise -------------------------------------------------------------
def fixed_noise(estimator, problem, n_estimates: int, n_samples: int, seed: int = 0):
    return estimator.make_noise(
        problem,
        torch.Generator().manual_seed(seed),
        torch.Generator().manual_seed(seed + 1),
        (n_estimates, n_samples),
        torch.float64,
    )


def standardized_by_hand(uniforms, normals, coupled: bool):
    """[W, −W', M, ε'] per the docstring: (4, *shape)."""
    weibull = torch.sqrt(-2 * torch.log(uniforms[:, 0]))
    n1, n2, n3 = normals[:, 0], normals[:, 1], normals[:, 2]
    maxwell = torch.sign(n1) * torch.sqrt(n1**2 + n2**2 + n3**2)
    if coupled:
        return weibull, -weibull, maxwell, uniforms[:, 1] * maxwell
    return weibull, -torch.sqrt(-2 * torch.log(uniforms[:, 1])), maxwell, normals[:, 3]


@pytest.mark.parametrize("coupled", [True, False])
def test_mvd_by_hand_on_gaussian(coupled):
    problem = Gaussian(mu=[0.4, -1.0, 0.2], sigma=[0.7, 2.0, 1.1], cost="cos", k=[1.5, 0.5, 2.0])
    estimator = make("estimator", "mvd", coupled=coupled)
    noise = fixed_noise(estimator, problem, 5, 3)
    grads = estimator.estimate(problem, problem.params(), noise)
    eps, uniforms, normals = noise  # (5, 3, D), (5, 3, 2, D), (5, 3, 3|4, D)
    mu, sigma, k = problem.mu, problem.sigma, problem.k
    x = mu + sigma * eps  # (5, 3, D)
    w_plus, w_minus, maxwell, eps_prime = standardized_by_hand(
        uniforms.flatten(0, 1), normals.flatten(0, 1), coupled
    )
    values = [(mu + sigma * v).reshape(5, 3, -1) for v in (w_plus, w_minus, maxwell, eps_prime)]

    def f_replaced(i: int, value: torch.Tensor) -> torch.Tensor:  # f(x with x_i = value_i): (5, 3)
        replaced = x.clone()
        replaced[..., i] = value[..., i]
        return torch.cos(k * replaced).sum(-1)

    for i in range(3):  # the test may loop over dimensions; the estimator does not
        f_plus, f_minus, f_max, f_eps = (f_replaced(i, v) for v in values)
        by_hand_mu = ((f_plus - f_minus) / (sigma[i] * SQRT_2PI)).mean(1)
        by_hand_sigma = ((f_max - f_eps) / sigma[i]).mean(1)
        torch.testing.assert_close(grads["mu"][:, i], by_hand_mu, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(grads["sigma"][:, i], by_hand_sigma, rtol=RTOL, atol=ATOL)


def f_replaced(problem, params, x, loc, scale, i: int, value) -> torch.Tensor:
    """f(θ, x with coordinate i at μᵢ + σᵢ·value_i): x (S, D) → (S,), the latent reshaped (S, 3, 2)."""
    replaced = x.clone()
    replaced[:, i] = loc[i] + scale[i] * value[:, i]
    return problem.cost(params, replaced.reshape(x.shape[0], 3, 2))


def test_mvd_by_hand_on_vae_gaussian():
    # Chain rule through the encoder's (μ, σ) (B, L) plus the direct term ∇θ f(θ, x) averaged over
    # the D scale-negative inputs (valid samples), by autograd on a hand-built surrogate.
    problem = make("problem", "vae_gaussian", batch_size=3, latent_dim=2)
    estimator = make("estimator", "mvd")
    params = problem.params()
    noise = fixed_noise(estimator, problem, 2, 2)  # eps (2, 2, B, L)
    grads = estimator.estimate(problem, params, noise)
    eps, uniforms, normals = noise
    n_dims = 3 * 2
    for e in range(2):  # a test may loop over estimates and dimensions
        leaves = {key: value.clone().requires_grad_(True) for key, value in params.items()}
        mu, sigma = problem.loc_scale(leaves)  # (B, L)
        m, s = mu.detach().reshape(-1), sigma.detach().reshape(-1)
        x = m + s * eps[e].reshape(2, -1)  # (S, D)
        blocks = standardized_by_hand(uniforms[e].flatten(2), normals[e].flatten(2), True)
        grad_mu = torch.zeros(n_dims, dtype=torch.float64)
        grad_sigma, direct = torch.zeros(n_dims, dtype=torch.float64), 0.0
        frozen = {key: value.detach() for key, value in leaves.items()}
        for i in range(n_dims):
            f_plus, f_minus, f_max = (f_replaced(problem, frozen, x, m, s, i, v) for v in blocks[:3])
            f_eps = f_replaced(problem, leaves, x, m, s, i, blocks[3])
            grad_mu[i] = ((f_plus - f_minus) / (s[i] * SQRT_2PI)).mean()
            grad_sigma[i] = ((f_max - f_eps.detach()) / s[i]).mean()
            direct = direct + f_eps.mean() / n_dims
        surrogate = (grad_mu.reshape(3, 2) * mu).sum() + (grad_sigma.reshape(3, 2) * sigma).sum()
        by_hand = torch.autograd.grad(surrogate + direct, list(leaves.values()))
        for key, value in zip(leaves, by_hand, strict=True):
            torch.testing.assert_close(grads[key][e], value, rtol=1e-10, atol=1e-12)


class PenalizedGaussian(Gaussian):
    """f(θ, x) = Σ cos(kx) + Σ μ²: a direct dependence on θ with a non-zero mean gradient 2μ."""

    name = ""  # unregistered

    def cost(self, params, x):
        return super().cost(params, x) + (params["mu"] ** 2).sum()


def test_direct_term_is_included_exactly():
    plain = Gaussian(mu=[0.4, -1.0], sigma=[0.7, 2.0], cost="cos", k=1.5)
    penalized = PenalizedGaussian(mu=[0.4, -1.0], sigma=[0.7, 2.0], cost="cos", k=1.5)
    estimator = make("estimator", "mvd")
    noise = fixed_noise(estimator, plain, 6, 3)
    plain_grads = estimator.estimate(plain, plain.params(), noise)
    penalized_grads = estimator.estimate(penalized, penalized.params(), noise)
    torch.testing.assert_close(penalized_grads["mu"] - plain_grads["mu"], (2 * plain.mu).expand(6, 2))
    torch.testing.assert_close(penalized_grads["sigma"], plain_grads["sigma"], rtol=RTOL, atol=ATOL)


def test_chunked_estimate_equals_one_batch(monkeypatch):
    problem = make("problem", "vae_gaussian", batch_size=3, latent_dim=2)
    estimator = make("estimator", "mvd")
    noise = fixed_noise(estimator, problem, 10, 2)
    whole = estimator.estimate(problem, problem.params(), noise)
    monkeypatch.setattr(mvd, "CHUNK_BYTES", 1)  # one estimate per chunk
    chunked = estimator.estimate(problem, problem.params(), noise)
    for key, value in whole.items():
        torch.testing.assert_close(chunked[key], value, rtol=RTOL, atol=ATOL)


# --- the exact mean by quadrature ------------------------------------------------------------------------
@pytest.mark.parametrize("coupled", [True, False])
def test_mvd_mean_by_quadrature_on_one_dimension(coupled):
    # One coordinate, f = cos(kx): integrate the estimator's own code over its noise.
    # Mean part: ĝ_μ depends on (u_W, u_W') only; scipy.integrate.quad over u_W (coupled), or the
    # sum of the two one-dimensional integrals of its two separable terms (uncoupled).
    # Scale part: ĝ_σ depends on (M, U) or (M, ε'); a product Gauss rule (Gauss–Hermite for M
    # with weight m² φ(m), for ε' with weight φ; Gauss–Legendre for U) in one batched call.
    problem = Gaussian(mu=[0.3], sigma=[0.8], cost="cos", k=1.7)
    estimator = make("estimator", "mvd", coupled=coupled)
    params, exact = problem.params(), problem.exact()
    n_normals = 3 if coupled else 4

    def run(uniforms: torch.Tensor, normals: torch.Tensor) -> dict[str, torch.Tensor]:
        n = uniforms.shape[0]
        eps = torch.zeros(n, 1, 1, dtype=torch.float64)  # the base sample is never evaluated in 1-D
        return estimator.estimate(
            problem, params, (eps, uniforms.reshape(n, 1, 2, 1), normals.reshape(n, 1, -1, 1))
        )

    def mean_part(u_plus: float, u_minus: float) -> float:
        uniforms = torch.tensor([[u_plus, u_minus if not coupled else 0.5]], dtype=torch.float64)
        return float(run(uniforms, torch.ones(1, n_normals, dtype=torch.float64))["mu"][0, 0])

    quad = lambda function: integrate.quad(function, 0, 1, epsabs=1e-13, epsrel=1e-12, limit=200)[0]  # noqa: E731
    if coupled:
        mean_mu = quad(lambda u: mean_part(u, 0.5))
    else:
        anchor = mean_part(0.5, 0.5)  # ∫A − ∫B = [∫A − B(½)] + [A(½) − ∫B] − [A(½) − B(½)]
        mean_mu = quad(lambda u: mean_part(u, 0.5)) + quad(lambda u: mean_part(0.5, u)) - anchor
    assert mean_mu == pytest.approx(float(exact["mu"][0]), rel=1e-9)

    nodes, weights = np.polynomial.hermite_e.hermegauss(80)  # ∫ g(m) e^{−m²/2} dm
    weights = weights / SQRT_2PI  # against φ
    legendre, legendre_weights = np.polynomial.legendre.leggauss(40)
    if coupled:  # (M, U) grid: M = m via normals (m, 0, 0), U = the Gauss–Legendre node on (0, 1)
        m, second = np.meshgrid(nodes, (legendre + 1) / 2, indexing="ij")
        weight = np.outer(weights * nodes**2, legendre_weights / 2)
        normals = np.stack([m, 0 * m, 0 * m], -1)
        uniforms = np.stack([0.5 + 0 * m, second], -1)
    else:  # (M, ε') grid
        m, second = np.meshgrid(nodes, nodes, indexing="ij")
        weight = np.outer(weights * nodes**2, weights)
        normals = np.stack([m, 0 * m, 0 * m, second], -1)
        uniforms = np.full((*m.shape, 2), 0.5)
    grads = run(torch.tensor(uniforms.reshape(-1, 2)), torch.tensor(normals.reshape(-1, n_normals)))
    mean_sigma = float((torch.tensor(weight.reshape(-1)) * grads["sigma"][:, 0]).sum())
    assert mean_sigma == pytest.approx(float(exact["sigma"][0]), rel=1e-9)


# --- bias through the harness, coupled and not, and a biased variant rejected ---------------------------
class WrongWeibull(mvd.MeasureValued):
    """A deliberately biased MVD (unregistered): Weibull of scale 1 (sqrt(−log u)) instead of √2."""

    name = ""

    def perturbed_values(self, uniforms, normals):
        values = super().perturbed_values(uniforms, normals)
        return torch.cat([values[:2] / math.sqrt(2.0), values[2:]])


@pytest.mark.statistical
@pytest.mark.parametrize("coupled", [True, False])
def test_uncoupled_and_coupled_are_unbiased_through_the_harness(coupled):
    # α = 1e-3 family-wise over dimensions (the harness's bias_pvalue), like the conformance suite.
    problem = Gaussian(mu=[0.5, -0.3], sigma=[1.0, 0.5], cost="cos", k=1.5)
    row = run_cell(
        problem, make("estimator", "mvd", coupled=coupled), n_samples=3, n_estimates=20_000, seed=11
    ).row
    assert row["status"] == "ok" and row["bias_pvalue"] > ALPHA, row


@pytest.mark.statistical
def test_the_bias_check_rejects_a_wrong_weibull():
    # Test the test: the same α = 1e-3 check must reject the biased variant.
    problem = Gaussian(mu=[0.5, -0.3], sigma=[1.0, 0.5], cost="cos", k=1.5)
    row = run_cell(problem, WrongWeibull(), n_samples=3, n_estimates=20_000, seed=11).row
    assert row["bias_pvalue"] < ALPHA, row


# --- applicability, config, cost -------------------------------------------------------------------------
@pytest.mark.parametrize("problem_name", ["bernoulli", "categorical", "vae_bernoulli"])
def test_mvd_is_skipped_without_a_gaussian_latent(problem_name):
    row = run_cell(
        make("problem", problem_name), make("estimator", "mvd"), n_samples=4, n_estimates=10, seed=0
    ).row
    assert row["status"] == "skipped"
    assert "mvd needs a Gaussian latent" in row["reason"] and problem_name in row["reason"]


def test_mvd_applies_to_gaussian_latents():
    for problem_name in ("gaussian", "vae_gaussian"):
        assert make("estimator", "mvd").why_not(make("problem", problem_name), 1) is None


@pytest.mark.parametrize("bad", ["yes", 1, None, 0.5])
def test_bad_coupled_names_the_key(bad):
    with pytest.raises(ConfigError, match=r"^estimator\.coupled:"):
        make("estimator", "mvd", coupled=bad)


def test_cost_evals_counts_every_coordinate():
    estimator = make("estimator", "mvd")
    assert estimator.cost_evals(3, make("problem", "gaussian")) == 4 * 2 * 3
    assert estimator.cost_evals(2, make("problem", "vae_gaussian")) == 4 * 8 * 4 * 2  # D = B·L
    assert estimator.cost_evals(5) == 4 * 5  # per coordinate when no problem is given
