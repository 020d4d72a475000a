"""The closed-form path of reinforce, rloo and reinforce_rtg (``estimators.fast``) against the
autograd path on fixed noise, the closed-form scores against autograd of log p, and the cases that
must keep using autograd (a cost that depends on θ, a subclass with its own surrogate, a problem
without the flags, ``closed_form = False``). All deterministic: no statistical tests here."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad, vmap

from bench.estimators.base import Estimator, detached
from bench.estimators.fast import uses_closed_form
from bench.estimators.reinforce import Reinforce
from bench.estimators.reinforce_rtg import reward_to_go, reward_to_go_by_matmul
from bench.estimators.rloo import ReinforceLeaveOneOut
from bench.problems.base import Params, Problem
from bench.problems.bernoulli import Bernoulli
from bench.problems.cartpole import CartPole
from bench.problems.categorical import Categorical
from bench.problems.gaussian import Gaussian
from bench.problems.multicategorical import MultiCategorical
from bench.runner import run_cell
from tests.conftest import make

DTYPES = (torch.float32, torch.float64)
# A policy that is neither uniform nor deterministic, so that π(·|s) varies across states.
CARTPOLE_POINT = {"weight": [[0.3, -0.2, 0.5, 0.1], [-0.1, 0.4, -0.6, 0.2]], "bias": [0.1, -0.05]}


def problems_with_scores() -> dict[str, Problem]:
    """One instance of every problem that declares a closed-form score, at a non-symmetric point."""
    return {
        "bernoulli": Bernoulli(theta=[0.3, -1.2, 2.0], target=[0.2, 0.7, 0.45]),
        "categorical": Categorical(theta=[0.4, -0.3, 1.1, 0.0], costs=[1.5, -0.5, 0.25, 2.0]),
        "categorical_quadratic": Categorical(theta=[0.4, -0.3, 1.1], costs=[1.0, 0.0, 2.0], cost="quadratic"),
        "multicategorical": MultiCategorical(theta=[[0.1, 0.6, -0.4], [1.2, -0.3, 0.0]], target=[0.4, 0.9]),
        "gaussian": Gaussian(mu=[0.5, -1.5], sigma=[0.8, 1.7], cost="cos", k=[1.3, 0.6]),
        "cartpole": CartPole(**CARTPOLE_POINT, horizon=12, gamma=0.9),
    }


PROBLEMS = problems_with_scores()
PAIRS = [(problem, estimator) for problem in PROBLEMS for estimator in ("reinforce", "rloo")]
PAIRS += [("cartpole", "reinforce_rtg")]


def autograd_twin(estimator: Estimator) -> Estimator:
    twin = make("estimator", estimator.name)
    twin.closed_form = False
    return twin


def assert_same_to_rounding(fast: Params, slow: Params, dtype: torch.dtype) -> None:
    """Equal up to the rounding of a short sum: 64 units of rounding at each parameter's scale."""
    assert fast.keys() == slow.keys()
    for name in slow:
        assert fast[name].shape == slow[name].shape and fast[name].dtype == slow[name].dtype == dtype
        scale = float(slow[name].abs().max()) or 1.0
        atol = 64 * torch.finfo(dtype).eps * scale
        torch.testing.assert_close(fast[name], slow[name], rtol=0.0, atol=atol, msg=name)


# --- the two paths agree -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("problem_name", "estimator_name"), PAIRS)
def test_closed_form_matches_autograd_on_fixed_noise(problem_name, estimator_name, dtype):
    problem, estimator = PROBLEMS[problem_name], make("estimator", estimator_name)
    assert uses_closed_form(estimator, problem, type(estimator))
    params = {name: value.to(dtype) for name, value in problem.params().items()}
    generator = torch.Generator().manual_seed(11)
    noise = estimator.make_noise(problem, generator, generator, (257, 3), dtype)  # (E, S, *event)
    fast = estimator.estimate(problem, params, noise)
    slow = autograd_twin(estimator).estimate(problem, params, noise)
    assert_same_to_rounding(fast, slow, dtype)
    assert any(float(value.abs().max()) > 0 for value in slow.values()), "a vacuous comparison"


@pytest.mark.parametrize("estimator_name", ["reinforce", "rloo"])
def test_one_sample_per_estimate(estimator_name):
    """S = 1 takes the product without a reduction (``Problem.weighted_score``); rloo needs S ≥ 2."""
    problem, estimator = Bernoulli(theta=[0.4], target=[0.3]), make("estimator", "reinforce")
    n_samples = 1 if estimator_name == "reinforce" else 2
    params = problem.params()
    noise = problem.noise(torch.Generator().manual_seed(3), (1000, n_samples), torch.float64)
    estimator = make("estimator", estimator_name)
    assert_same_to_rounding(
        estimator.estimate(problem, params, noise), autograd_twin(estimator).estimate(problem, params, noise),
        torch.float64,
    )  # fmt: skip


def test_a_cell_gives_the_same_row_on_either_path():
    """Through the runner (noise drawn in batches, streamed moments): the same statistics."""
    problem = PROBLEMS["categorical"]
    rows = []
    for closed_form in (True, False):
        estimator = make("estimator", "rloo")
        estimator.closed_form = closed_form
        rows.append(run_cell(problem, estimator, n_samples=4, n_estimates=3000, seed=5, batch_size=700).row)
    for column in ("variance", "bias_norm", "bias_z_max"):
        assert rows[0][column] == pytest.approx(rows[1][column], rel=1e-5)


# --- the closed-form scores --------------------------------------------------------------------
def per_sample_autograd_score(problem: Problem, params: Params, x) -> Params:
    """vmap over samples of grad of log p(x_s; θ): {name: (N, *shape)} for a batch of N samples."""

    def log_prob(params_: Params, x_one) -> torch.Tensor:
        return problem.log_prob(params_, x_one)

    return vmap(grad(log_prob), in_dims=(None, 0))(params, x)


@pytest.mark.parametrize("problem_name", sorted(PROBLEMS))
def test_score_is_the_gradient_of_log_prob(problem_name):
    problem = PROBLEMS[problem_name]
    params = problem.params()  # float64
    noise = problem.noise(torch.Generator().manual_seed(2), (300,), torch.float64)
    x = problem.sample(params, noise)  # batch (300,)
    closed = problem.score(params, x)
    by_autograd = per_sample_autograd_score(problem, params, x)
    for name in by_autograd:
        assert closed[name].shape == by_autograd[name].shape
        torch.testing.assert_close(closed[name], by_autograd[name], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("problem_name", sorted(PROBLEMS))
def test_weighted_score_contracts_the_per_sample_scores(problem_name):
    problem = PROBLEMS[problem_name]
    params = problem.params()
    generator = torch.Generator().manual_seed(4)
    noise = problem.noise(generator, (50, 6), torch.float64)  # (E, S, *event)
    x = problem.sample(params, noise)
    weights = torch.randn(50, 6, generator=generator, dtype=torch.float64)
    contracted = problem.weighted_score(params, x, weights)
    for name, score in problem.score(params, x).items():  # (E, S, *shape)
        by_hand = (weights.reshape(50, 6, *([1] * (score.ndim - 2))) * score).sum(1)
        torch.testing.assert_close(contracted[name], by_hand, rtol=1e-12, atol=1e-12)


def test_cartpole_step_score_is_the_gradient_of_the_step_log_probs():
    """Σ_st w_st ∇θ log π(a_st|s_st) against autograd through ``step_log_probs``, per estimate."""
    problem = PROBLEMS["cartpole"]
    params = problem.params()
    generator = torch.Generator().manual_seed(8)
    noise = problem.noise(generator, (40, 3), torch.float64)
    x = problem.sample(params, noise)
    step_weights = torch.randn(40, 3, problem.horizon, generator=generator, dtype=torch.float64)

    def weighted_log_prob(params_: Params, x_one, weights_one) -> torch.Tensor:
        return (weights_one * problem.step_log_probs(params_, x_one)).sum()

    by_autograd = vmap(grad(weighted_log_prob), in_dims=(None, 0, 0))(params, x, step_weights)
    closed = problem.weighted_step_score(params, x, step_weights)
    for name in by_autograd:
        torch.testing.assert_close(closed[name], by_autograd[name], rtol=1e-12, atol=1e-12)


def test_reward_to_go_by_matmul():
    rewards = torch.rand(7, 3, 16, dtype=torch.float64)
    torch.testing.assert_close(reward_to_go_by_matmul(rewards), reward_to_go(rewards), rtol=1e-14, atol=0)
    alive = (torch.rand(7, 3, 16) > 0.2).cumprod(-1).float()  # integer rewards: exactly equal
    assert torch.equal(reward_to_go_by_matmul(alive), reward_to_go(alive))


# --- where autograd must stay ------------------------------------------------------------------
class BiasedReinforce(Reinforce):
    """A subclass with its own surrogate (half the score term): it must not be bypassed."""

    name = ""  # not registered

    def surrogate(self, problem: Problem, params: Params, noise: torch.Tensor) -> torch.Tensor:
        x = problem.sample(detached(params), noise)
        cost = problem.cost(params, x)
        return (cost + 0.5 * cost.detach() * problem.log_prob(params, x)).mean()


class BernoulliWithoutScore(Bernoulli):
    """A user's problem that declares no closed form (unregistered: no name)."""

    name = ""
    has_score = False


class BernoulliWithDirectCost(Bernoulli):
    """A cost that depends on θ directly: f(θ, b) = Σ (b − t)² + Σ θ² (unregistered)."""

    name = ""
    cost_depends_on_params = True

    def cost(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return super().cost(params, x) + (params["theta"] ** 2).sum()


def test_autograd_path_is_kept_where_the_closed_form_does_not_apply():
    bernoulli = PROBLEMS["bernoulli"]
    assert uses_closed_form(Reinforce(), bernoulli, Reinforce)
    assert not uses_closed_form(BiasedReinforce(), bernoulli, Reinforce)
    assert not uses_closed_form(Reinforce(), BernoulliWithoutScore(), Reinforce)
    assert not uses_closed_form(ReinforceLeaveOneOut(), BernoulliWithDirectCost(), ReinforceLeaveOneOut)
    forced = Reinforce()
    forced.closed_form = False
    assert not uses_closed_form(forced, bernoulli, Reinforce)
    vae = make("problem", "vae_bernoulli")  # the ELBO's log q: ∇θ f ≠ 0
    assert vae.cost_depends_on_params and not vae.has_score
    assert not uses_closed_form(Reinforce(), vae, Reinforce)


def test_a_subclass_surrogate_is_honoured():
    problem = PROBLEMS["bernoulli"]
    params = problem.params()
    noise = problem.noise(torch.Generator().manual_seed(6), (100, 2), torch.float64)
    full = Reinforce().estimate(problem, params, noise)["theta"]
    half = BiasedReinforce().estimate(problem, params, noise)["theta"]
    torch.testing.assert_close(half, 0.5 * full, rtol=1e-12, atol=1e-14)  # ∇f = 0 here


def test_a_direct_cost_term_is_included():
    """With cost_depends_on_params, the autograd path adds ∇θ f(θ, x) = 2θ to every estimate."""
    plain, direct = (
        Bernoulli(theta=[0.3, -0.8], target=[0.5, 0.1]),
        BernoulliWithDirectCost(theta=[0.3, -0.8], target=[0.5, 0.1]),
    )
    params = plain.params()
    noise = plain.noise(torch.Generator().manual_seed(9), (64, 4), torch.float64)
    for estimator in (Reinforce(), ReinforceLeaveOneOut()):
        without = estimator.estimate(plain, params, noise)["theta"]
        with_direct = estimator.estimate(direct, params, noise)["theta"]
        shift = 2 * params["theta"]
        if isinstance(estimator, Reinforce):  # f also gains θ² in the score weight
            shift = shift + (params["theta"] ** 2).sum() * plain.score(params, plain.sample(params, noise))[
                "theta"
            ].mean(1)
        torch.testing.assert_close(with_direct, without + shift, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["vae_bernoulli", "vae_gaussian"])
def test_vae_cost_and_log_prob_share_one_encoder_pass(name):
    """The VAEs' ``cost_and_log_prob`` (one encoder pass) equals ``cost`` and ``log_prob``."""
    problem = make("problem", name)
    problem.prepare(torch.float64)
    params = problem.params()
    x = problem.sample(params, problem.noise(torch.Generator().manual_seed(1), (5, 3), torch.float64))
    cost, log_prob = problem.cost_and_log_prob(params, x)
    torch.testing.assert_close(cost, problem.cost(params, x), rtol=0, atol=0)
    torch.testing.assert_close(log_prob, problem.log_prob(params, x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["vae_bernoulli", "vae_categorical", "vae_gaussian"])
def test_vae_sampled_cost_and_log_prob_run_the_encoder_once(name, monkeypatch):
    """``sampled_cost_and_log_prob`` equals the sample, cost and log q taken apart, with one encoder
    pass per estimate under plain autograd and under vmap(grad) (the sweep's path), where sampling
    apart costs a second one; reinforce and rloo use it."""
    from torch.func import grad, vmap

    problem = make("problem", name)
    problem.prepare(torch.float64)
    params = problem.params()
    noise = problem.noise(torch.Generator().manual_seed(1), (2, 3), torch.float64)
    x = problem.sample(params, noise[0])
    apart = problem.cost_and_log_prob(params, x)
    torch.testing.assert_close(problem.sampled_cost_and_log_prob(params, noise[0]), apart, rtol=0, atol=0)
    passes = []
    network = problem.encoder_network
    monkeypatch.setattr(problem, "encoder_network", lambda *a: passes.append(1) or network(*a))

    def surrogate(params_, noise_one):
        cost, log_prob = problem.sampled_cost_and_log_prob(params_, noise_one)
        return (cost + cost.detach() * log_prob).mean()

    vmap(grad(surrogate), in_dims=(None, 0))(params, noise)
    assert len(passes) == 1  # one batched pass for the whole vmap
    passes.clear()
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    torch.autograd.grad(surrogate(leaves, noise[0]), list(leaves.values()))
    assert len(passes) == 1
    passes.clear()
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    detached = {k: v.detach() for k, v in leaves.items()}
    problem.cost_and_log_prob(leaves, problem.sample(detached, noise[0]))
    assert len(passes) == 2  # sampling first from detached tensors cannot reuse a pass with grad


@pytest.mark.parametrize("estimator_name", ["arm", "disarm", "rloo", "reinforce"])
def test_one_training_estimate_runs_the_vae_encoder_once(estimator_name, monkeypatch):
    """A single estimate (a training step's: plain autograd) on the VAE runs the encoder once: the
    antithetic pair's sample of detached tensors reuses the differentiable pass (``encode``)."""
    problem, estimator = make("problem", "vae_bernoulli"), make("estimator", estimator_name)
    problem.prepare(torch.float64)
    params = problem.params()
    generators = torch.Generator().manual_seed(1), torch.Generator()
    noise = estimator.make_noise(problem, *generators, (1, 2), torch.float64)
    passes = []
    network = problem.encoder_network
    monkeypatch.setattr(problem, "encoder_network", lambda *a: passes.append(1) or network(*a))
    estimator.estimate(problem, params, noise)
    assert len(passes) == 1
