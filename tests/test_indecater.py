"""indecater (De Smet et al. 2023): the estimate against its formula by hand, its exact mean by
enumerating every outcome (multicategorical, bernoulli, and small VAEs whose cost depends on θ
directly), the direct term counted once, and the chunked vmap.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import bench.estimators.indecater as indecater_module
from bench.problems.bernoulli import Bernoulli
from bench.problems.multicategorical import MultiCategorical
from tests.conftest import make
from tests.test_categorical_estimators import bit_noise, fixed_noise, gumbel, onehot_noise, weighted_moments

THETA = [[0.0, 0.5, -0.5], [1.0, 0.0, -1.0], [-0.5, 0.3, 0.2]]


def multicategorical(cost: str) -> MultiCategorical:
    return MultiCategorical(theta=THETA, target=[0.9, 0.2, 0.6], cost=cost)


def by_hand_multicategorical(problem: MultiCategorical, noise: torch.Tensor) -> torch.Tensor:
    theta = problem.theta  # (D, K)
    n_variables, n_classes = theta.shape
    p = torch.softmax(theta, -1)
    values = torch.arange(n_classes, dtype=torch.float64) / (n_classes - 1)
    target = problem.target
    estimates = []
    for u in noise:  # (S, D, K)
        estimate = torch.zeros_like(theta)
        for sample in u:
            classes = (theta + gumbel(sample)).argmax(-1).tolist()  # Gumbel-max per variable
            for d in range(n_variables):
                for k in range(n_classes):
                    s = values[[k if e == d else classes[e] for e in range(n_variables)]]
                    if problem.cost_name == "coupled":
                        f = (s.mean() - target.mean()) ** 2
                    else:
                        f = ((s - target) ** 2).sum()
                    grad_p = p[d, k] * (torch.eye(n_classes, dtype=torch.float64)[k] - p[d])  # ∇θ_d p_d(k)
                    estimate[d] += f * grad_p
        estimates.append(estimate / u.shape[0])
    return torch.stack(estimates)


@pytest.mark.parametrize("cost", ["separable", "coupled"])
def test_by_hand_on_multicategorical(cost):
    problem = multicategorical(cost)
    noise = fixed_noise(problem, 4, 3)
    grads = make("estimator", "indecater").estimate(problem, problem.params(), noise)["theta"]
    torch.testing.assert_close(grads, by_hand_multicategorical(problem, noise), rtol=1e-12, atol=1e-14)


def test_by_hand_on_bernoulli():
    problem = Bernoulli(theta=[0.2, -0.4, 1.1], target=[0.3, 0.9, 0.5])
    noise = fixed_noise(problem, 5, 2)
    grads = make("estimator", "indecater").estimate(problem, problem.params(), noise)["theta"]
    sigma = torch.sigmoid(problem.theta)
    # separable cost: f(x_d = 1) − f(x_d = 0) = (1 − t_d)² − t_d², whatever the other bits
    by_hand = sigma * (1 - sigma) * ((1 - problem.target) ** 2 - problem.target**2)
    torch.testing.assert_close(grads, by_hand.expand(5, 3), rtol=1e-12, atol=1e-14)


def test_single_categorical_gives_the_exact_gradient():
    problem = make("problem", "categorical", cost="quadratic")
    grads = make("estimator", "indecater").estimate(problem, problem.params(), fixed_noise(problem, 7, 2))[
        "theta"
    ]
    torch.testing.assert_close(grads, problem.exact()["theta"].expand(7, 4), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cost", ["separable", "coupled"])
@pytest.mark.parametrize("n_samples", [1, 2])
def test_exact_mean_by_enumeration_on_multicategorical(cost, n_samples):
    problem = multicategorical(cost)
    params = problem.params()
    outcomes = problem.enumerate_outcomes()  # (27, 3, 3)
    log_probs = problem.log_prob(params, outcomes)  # (27,)
    tuples = torch.tensor(list(itertools.product(range(len(outcomes)), repeat=n_samples)))  # (27^S, S)
    noise = onehot_noise(outcomes[tuples])  # (27^S, S, 3, 3)
    assert torch.equal(problem.sample(params, noise), outcomes[tuples])
    grads = make("estimator", "indecater").estimate(problem, params, noise)["theta"].reshape(len(tuples), -1)
    mean, var, _mu4 = weighted_moments(grads, log_probs[tuples].sum(1).exp())
    torch.testing.assert_close(mean, problem.exact()["theta"].reshape(-1), rtol=1e-12, atol=1e-14)
    if cost == "coupled":
        assert var.sum() > 1e-4  # interacting variables: a genuine estimator, not the exact gradient


class NaiveDirectTerm(indecater_module.IndeCateR):
    """Test only (unregistered): differentiating Σ_dk p_d(k) f(θ, ·) through both factors counts
    the direct term ∇θ f once per variable, D times."""

    name = ""

    def surrogate(self, problem, params, noise):
        x = problem.sample({k: v.detach() for k, v in params.items()}, noise)
        cost = problem.cost(params, indecater_module.with_one_variable_set(problem, x))  # (S, D, K)
        probs = indecater_module.class_probabilities(problem, params)
        return (probs * cost).sum((-2, -1)).mean()


def enumerate_vae(problem, estimator) -> tuple[dict, dict]:
    """The mean estimate over every joint code of a one-image VAE, and the exact gradient."""
    params = problem.params()
    logits = problem.logits(params).detach()
    if problem.binary_latent:  # (B = 1, L) bits
        n_latent = logits.shape[-1]
        codes = torch.tensor(list(itertools.product([0.0, 1.0], repeat=n_latent)), dtype=torch.float64)[
            :, None
        ]
        noise = bit_noise(logits, codes)  # (M, 1, L)
    else:  # (B = 1, L, K) one-hots
        n_latent, n_classes = logits.shape[-2:]
        classes = torch.tensor(list(itertools.product(range(n_classes), repeat=n_latent)))
        codes = torch.nn.functional.one_hot(classes, n_classes).to(torch.float64)[:, None]  # (M, 1, L, K)
        noise = onehot_noise(codes)
    assert torch.equal(problem.sample(params, noise), codes)
    weights = problem.log_prob(params, codes).exp()  # (M,)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-12)
    grads = estimator.estimate(problem, params, noise[:, None])  # one sample per estimate
    mean = {name: torch.einsum("m,m...->...", weights, value) for name, value in grads.items()}
    return mean, problem.exact()


class DirectCost(MultiCategorical):
    """Test only (unregistered): multicategorical with a cost that also depends on θ directly,
    f(θ, x) = f(x) + ½ Σ_dk tanh(θ_dk) x_dk, whose direct term E[∇θ f] = ½ (1 − tanh²θ) p ≠ 0.
    Its exact gradient: autograd through Σ_x p(x; θ) f(θ, x) over every outcome."""

    name = ""

    def cost(self, params, x):
        return super().cost(params, x) + 0.5 * (torch.tanh(params["theta"]) * x).sum((-2, -1))

    def exact_gradient(self):
        params = {"theta": self.theta.clone().requires_grad_(True)}
        outcomes = self.enumerate_outcomes()
        expected = (self.log_prob(params, outcomes).exp() * self.cost(params, outcomes)).sum()
        return {"theta": torch.autograd.grad(expected, [params["theta"]])[0]}


def test_direct_term_counted_once_by_enumeration():
    # A cost with a direct θ-dependence of nonzero mean: the enumerated mean equals the exact
    # gradient, and the naive surrogate (the direct term counted D = 3 times) is off by 2 E[∇θ f].
    problem = DirectCost(theta=THETA, target=[0.9, 0.2, 0.6], cost="coupled")
    params = problem.params()
    outcomes = problem.enumerate_outcomes()  # (27, 3, 3)
    weights = problem.log_prob(params, outcomes).exp()
    noise = onehot_noise(outcomes)[:, None]  # one sample per estimate
    exact = problem.exact()["theta"]
    mean = torch.einsum(
        "m,mdk->dk", weights, make("estimator", "indecater").estimate(problem, params, noise)["theta"]
    )
    torch.testing.assert_close(mean, exact, rtol=1e-12, atol=1e-14)
    naive = torch.einsum("m,mdk->dk", weights, NaiveDirectTerm().estimate(problem, params, noise)["theta"])
    direct = 0.5 * (1 - torch.tanh(problem.theta) ** 2) * torch.softmax(problem.theta, -1)  # E[∇θ f(θ, x)]
    torch.testing.assert_close(naive - exact, 2 * direct, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "name,config",
    [
        ("vae_bernoulli", dict(batch_size=1, latent_dim=3, state="init")),
        ("vae_categorical", dict(batch_size=1, n_latent=2, n_classes=3, state="init")),
    ],
)
def test_exact_mean_on_a_small_vae(name, config):
    # The ELBO's cost depends on θ through log q (a direct term of mean zero, E_q[∇ log q] = 0):
    # the mean over every joint code of a one-image VAE equals the exact gradient.
    problem = make("problem", name, **config)
    mean, exact = enumerate_vae(problem, make("estimator", "indecater"))
    for key, value in exact.items():
        torch.testing.assert_close(mean[key], value, rtol=1e-10, atol=1e-12)


def test_chunked_vmap_matches_one_batch(monkeypatch):
    problem = multicategorical("coupled")
    noise = fixed_noise(problem, 9, 2)
    estimator = make("estimator", "indecater")
    whole = estimator.estimate(problem, problem.params(), noise)["theta"]
    per_estimate = 8 * 2 * 3 * 3 * problem.memory_per_sample()  # bytes, float64
    monkeypatch.setattr(indecater_module, "CHUNK_BYTES", 2 * per_estimate)  # chunks of 2 estimates
    chunked = estimator.estimate(problem, problem.params(), noise)["theta"]
    torch.testing.assert_close(chunked, whole, rtol=1e-13, atol=1e-15)


def test_with_one_variable_set_layout():
    problem = multicategorical("coupled")
    x = problem.sample(problem.params(), fixed_noise(problem, 1, 2)[0])  # (2, 3, 3)
    varied = indecater_module.with_one_variable_set(problem, x)  # (2, D, K, D, K)
    for s, d, k in itertools.product(range(2), range(3), range(3)):
        expected = x[s].clone()
        expected[d] = torch.nn.functional.one_hot(torch.tensor(k), 3).double()
        assert torch.equal(varied[s, d, k], expected)
    bits = Bernoulli(theta=[0.1, 0.2, 0.3], target=[0.0, 0.0, 0.0])
    b = bits.sample(bits.params(), fixed_noise(bits, 1, 2)[0])  # (2, 3)
    varied = indecater_module.with_one_variable_set(bits, b)  # (2, 3, 2, 3)
    for s, d, k in itertools.product(range(2), range(3), range(2)):
        expected = b[s].clone()
        expected[d] = float(k)
        assert torch.equal(varied[s, d, k], expected)
