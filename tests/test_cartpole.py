"""Tests of the CartPole problem and the reward-to-go estimator.

Ground truths: Gymnasium's own CartPole-v1 (dynamics, resets, rewards, termination) and a
brute-force enumeration of episodes written independently of ``problems.cartpole`` (a Python
depth-first search stepping Gymnasium's environment, with score functions by hand in numpy).
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
import yaml
from torch import Tensor

from bench.errors import ConfigError
from bench.estimators import REGISTRY as ESTIMATORS
from bench.estimators.base import Estimator, detached
from bench.estimators.reinforce_rtg import ReinforceRewardToGo, reward_to_go
from bench.problems import REGISTRY as PROBLEMS
from bench.problems.base import Params, Problem
from bench.problems.bernoulli import Bernoulli
from bench.problems.cartpole import CartPole, cartpole_step, cartpole_terminated

ROOT = Path(__file__).resolve().parents[1]

# A policy point away from the symmetric zero default (terminations become more or less likely
# depending on the state, so no gradient component vanishes by symmetry).
WEIGHT = [[0.3, -0.2, 0.5, 0.1], [-0.1, 0.4, -0.6, 0.2]]
BIAS = [0.1, -0.2]


def flat(grads: Params, batch: int | None = None) -> Tensor:
    """{name: (batch, *shape)} → (batch, P), or {name: shape} → (P,), in dict order, float64."""
    if batch is None:
        return torch.cat([value.reshape(-1) for value in grads.values()]).to(torch.float64)
    return torch.cat([value.reshape(batch, -1) for value in grads.values()], 1).to(torch.float64)


def sample_estimates(
    problem: Problem, estimator: Estimator, n_estimates: int, n_samples: int, seed: int
) -> Tensor:
    """(n_estimates, P) float64 estimates at the problem's point, float32 run dtype like the runner."""
    generator = torch.Generator().manual_seed(seed)
    params = {name: value.to(torch.float32) for name, value in problem.params().items()}
    noise = problem.noise(generator, (n_estimates, n_samples), torch.float32)
    return flat(estimator.estimate(problem, params, noise), n_estimates)


def bias_pvalue(estimates: Tensor, exact: Tensor) -> float:
    """Bonferroni-adjusted p-value of the per-dimension two-sided z-tests of mean = exact."""
    n = estimates.shape[0]
    stderr = (estimates.var(0) / n).sqrt()  # (P,)
    z = (estimates.mean(0) - exact) / stderr
    p_min = float(torch.special.erfc(z.abs().max() / math.sqrt(2.0)))
    return min(1.0, exact.numel() * p_min)


class NoDiscountRewardToGo(ReinforceRewardToGo):
    """A deliberately biased variant: weights G_t = Σ_{t'≥t} γ^{t'−t} r_{t'} (γ^t dropped)."""

    name = ""  # not registered
    unbiased = False

    def surrogate(self, problem: Problem, params: Params, noise: Tensor) -> Tensor:
        x = problem.sample(detached(params), noise)
        step_log_probs = problem.step_log_probs(params, x)  # (S, T)
        discounts = problem.discounts(step_log_probs.device, step_log_probs.dtype)  # (T,)
        weights = reward_to_go(problem.step_rewards(params, x)) / discounts  # (S, T)
        return (problem.cost(params, x) + (weights.detach() * step_log_probs).sum(-1)).mean()


# --- the port matches Gymnasium ---------------------------------------------------------------
def test_step_matches_gymnasium() -> None:
    env = gymnasium.make("CartPole-v1").unwrapped
    env.reset(seed=0)
    rng = np.random.default_rng(1)
    n = 3000
    # States around and beyond the termination bounds, so both outcomes of the test occur.
    states = rng.uniform([-2.7, -3.0, -0.3, -3.5], [2.7, 3.0, 0.3, 3.5], size=(n, 4))  # (n, 4)
    actions = rng.integers(0, 2, size=n)  # (n,)
    ours = cartpole_step(torch.tensor(states), torch.tensor(actions, dtype=torch.float64))  # (n, 4)
    our_terminated = cartpole_terminated(ours)  # (n,)
    theirs, their_terminated, their_rewards = [], [], []
    for state, action in zip(states, actions, strict=True):
        env.state = state.copy()
        env.steps_beyond_terminated = None
        _obs, reward, terminated, truncated, _info = env.step(int(action))
        assert not truncated
        theirs.append(np.array(env.state, dtype=np.float64))
        their_terminated.append(terminated)
        their_rewards.append(reward)
    env.close()
    np.testing.assert_allclose(ours.numpy(), np.stack(theirs), rtol=0, atol=1e-12)
    assert our_terminated.tolist() == their_terminated
    assert 0.1 < np.mean(their_terminated) < 0.9
    assert all(reward == 1.0 for reward in their_rewards)  # +1 per step, including the terminating one


def test_reset_states_match_gymnasium() -> None:
    seeds = [0, 1, 2, 7, 12345]
    problem = CartPole(reset_seeds=seeds)
    env = gymnasium.make("CartPole-v1")
    for seed, ours in zip(seeds, problem.start_states, strict=True):
        observation, _info = env.reset(seed=seed)
        np.testing.assert_array_equal(ours.numpy(), env.unwrapped.state)
        np.testing.assert_array_equal(ours.numpy().astype(np.float32), observation)
    env.close()
    assert problem.start_states.dtype == torch.float64


def test_sampled_episodes_replay_in_gymnasium() -> None:
    """Replaying a sample's actions in Gymnasium gives its states, its alive mask and its return."""
    problem = CartPole(weight=WEIGHT, bias=BIAS, horizon=16, gamma=0.9)
    generator = torch.Generator().manual_seed(3)
    noise = problem.noise(generator, (64,), torch.float32)
    states, actions, alive = problem.sample(problem.params(), noise)  # (64, 16, 4), (64, 16), (64, 16)
    returns = problem.cost(problem.params(), (states, actions, alive))  # (64,)
    assert states.dtype == torch.float64
    env = gymnasium.make("CartPole-v1").unwrapped
    seen_termination = False
    for episode in range(64):
        env.reset()
        env.state = states[episode, 0].numpy().copy()
        assert any(np.array_equal(env.state, start) for start in problem.start_states.numpy())
        expected_return = 0.0
        for t in range(problem.horizon):
            assert alive[episode, t] == 1.0
            np.testing.assert_array_equal(states[episode, t].numpy(), env.state)
            _obs, reward, terminated, _truncated, _info = env.step(int(actions[episode, t]))
            expected_return += problem.gamma**t * reward
            if terminated:
                seen_termination = True
                assert (alive[episode, t + 1 :] == 0.0).all()
                break
        assert returns[episode].item() == pytest.approx(expected_return, rel=1e-12)
    env.close()
    assert seen_termination


def test_actions_follow_the_noise() -> None:
    """a_t = 1[u_{t+1} < π(1|s_t)] and the reset index is ⌊u_0 R⌋."""
    problem = CartPole(weight=WEIGHT, bias=BIAS, horizon=4, reset_seeds=[0, 1, 2, 3])
    noise = torch.tensor([[0.1, 0.0001, 0.9999, 0.0001, 0.9999], [0.99, 0.9999, 0.9999, 0.9999, 0.0001]])
    states, actions, _alive = problem.sample(problem.params(), noise)
    assert actions.tolist() == [[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    assert torch.equal(states[0, 0], problem.start_states[0])
    assert torch.equal(states[1, 0], problem.start_states[3])


def test_per_step_terms_are_consistent() -> None:
    problem = CartPole(weight=WEIGHT, bias=BIAS, horizon=16, gamma=0.8)
    params = {name: value.to(torch.float32) for name, value in problem.params().items()}
    noise = problem.noise(torch.Generator().manual_seed(0), (256,), torch.float32)
    x = problem.sample(params, noise)
    _states, _actions, alive = x
    step_log_probs = problem.step_log_probs(params, x)  # (256, 16)
    step_rewards = problem.step_rewards(params, x)  # (256, 16)
    assert step_log_probs.dtype == step_rewards.dtype == torch.float32
    assert (alive == 0).any()
    assert (step_log_probs[alive == 0] == 0).all() and (step_rewards[alive == 0] == 0).all()
    assert (step_log_probs[alive == 1] < 0).all()
    torch.testing.assert_close(problem.log_prob(params, x), step_log_probs.sum(-1))
    torch.testing.assert_close(problem.cost(params, x), step_rewards.sum(-1))
    torch.testing.assert_close(step_rewards, alive.float() * 0.8 ** torch.arange(16.0))


# --- the exact gradient --------------------------------------------------------------------------
def brute_force(
    weight: np.ndarray, bias: np.ndarray, seeds: list[int], horizon: int, gamma: float
) -> tuple[float, np.ndarray, np.ndarray]:
    """E[f] and its gradient by a depth-first search over every episode, stepping Gymnasium.

    Each episode (an action sequence up to termination or the horizon, no duplicates) contributes
    P(τ) f(τ) to E[f] and P(τ) f(τ) ∇log P(τ) to the gradient, with ∇_W log π(a|s) = (e_a − π) sᵀ and
    ∇_b log π(a|s) = e_a − π written out by hand.
    """
    env = gymnasium.make("CartPole-v1").unwrapped
    value, grad_weight, grad_bias = 0.0, np.zeros((2, 4)), np.zeros(2)
    for seed in seeds:
        env.reset(seed=seed)
        # (state, t, P(prefix), score_W, score_b, discounted return so far)
        stack = [(env.state.copy(), 0, 1.0, np.zeros((2, 4)), np.zeros(2), 0.0)]
        while stack:
            state, t, prob, score_weight, score_bias, ret = stack.pop()
            logits = weight @ state + bias
            policy = np.exp(logits - logits.max())
            policy /= policy.sum()
            for action in (0, 1):
                env.state = state.copy()
                env.steps_beyond_terminated = None
                _obs, reward, terminated, _truncated, _info = env.step(action)
                score = np.eye(2)[action] - policy
                child = (
                    env.state.copy(),
                    t + 1,
                    prob * policy[action],
                    score_weight + np.outer(score, state),
                    score_bias + score,
                    ret + gamma**t * reward,
                )
                if terminated or t + 1 == horizon:
                    _, _, p, s_w, s_b, f = child
                    value += p * f / len(seeds)
                    grad_weight += p * f * s_w / len(seeds)
                    grad_bias += p * f * s_b / len(seeds)
                else:
                    stack.append(child)
    env.close()
    return value, grad_weight, grad_bias


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_exact_gradient_matches_brute_force(gamma: float) -> None:
    seeds = [0, 1, 2]
    horizon = 10  # the earliest terminations happen at about step 9
    problem = CartPole(weight=WEIGHT, bias=BIAS, reset_seeds=seeds, horizon=horizon, gamma=gamma)
    value, grad_weight, grad_bias = brute_force(np.array(WEIGHT), np.array(BIAS), seeds, horizon, gamma)
    exact = problem.exact_gradient()
    with torch.no_grad():
        assert problem.expected_return(problem.params()).item() == pytest.approx(value, rel=1e-13)
    assert np.abs(grad_weight).max() > 1e-3  # not a degenerate instance
    np.testing.assert_allclose(exact["weight"].numpy(), grad_weight, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(exact["bias"].numpy(), grad_bias, rtol=1e-9, atol=1e-13)


def test_exact_gradient_matches_finite_differences() -> None:
    problem = CartPole(weight=WEIGHT, bias=BIAS, horizon=14, gamma=0.95)
    exact = flat(problem.exact_gradient())
    point = flat(problem.params())
    step = 1e-5
    numeric = torch.zeros_like(point)
    for i in range(point.numel()):
        offsets = torch.zeros_like(point)
        offsets[i] = step
        values = []
        for shifted in (point + offsets, point - offsets):
            params = {"weight": shifted[:8].reshape(2, 4), "bias": shifted[8:]}
            with torch.no_grad():
                values.append(problem.expected_return(params))
        numeric[i] = (values[0] - values[1]) / (2 * step)
    assert exact.abs().max() > 0.01
    torch.testing.assert_close(exact, numeric, rtol=1e-7, atol=1e-9)


def test_exact_gradient_edge_cases() -> None:
    for horizon in (1, 2, 8):  # no episode can end before step 9: E[f] = Σ_t γ^t whatever θ
        problem = CartPole(weight=WEIGHT, bias=BIAS, horizon=horizon, gamma=0.9)
        torch.testing.assert_close(flat(problem.exact()), torch.zeros(10, dtype=torch.float64))
        with torch.no_grad():
            expected = problem.expected_return(problem.params()).item()
        assert expected == pytest.approx(sum(0.9**t for t in range(horizon)), rel=1e-14)
    # The policy only acts through differences of the two rows: the gradient rows are opposite.
    exact = CartPole(weight=WEIGHT, bias=BIAS).exact()
    torch.testing.assert_close(exact["weight"][0], -exact["weight"][1], rtol=0, atol=1e-12)
    torch.testing.assert_close(exact["bias"][0], -exact["bias"][1], rtol=0, atol=1e-12)


@pytest.mark.statistical
def test_sampled_returns_match_expected_return() -> None:
    # False-alarm rate: alpha = 1e-3, one two-sided z-test (CLT on 20000 i.i.d. returns).
    problem = CartPole(weight=WEIGHT, bias=BIAS, horizon=16, gamma=0.95)
    noise = problem.noise(torch.Generator().manual_seed(11), (20000,), torch.float64)
    returns = problem.cost(problem.params(), problem.sample(problem.params(), noise))  # (20000,)
    with torch.no_grad():
        expected = problem.expected_return(problem.params())
    z = (returns.mean() - expected) / (returns.std() / math.sqrt(returns.numel()))
    assert abs(z.item()) < 3.29


# --- the estimators ---------------------------------------------------------------------------
def test_reward_to_go_matches_hand_computation() -> None:
    """One single-sample estimate against Σ_t (Σ_{t'≥t} γ^{t'} r_{t'}) ∇log π(a_t|s_t), by hand."""
    problem = CartPole(weight=WEIGHT, bias=BIAS, horizon=16, gamma=0.9)
    params = problem.params()
    generator = torch.Generator().manual_seed(5)
    for _ in range(5):
        noise = problem.noise(generator, (1, 1), torch.float64)  # (1 estimate, 1 sample, 17)
        estimate = ReinforceRewardToGo().estimate(problem, params, noise)
        states, actions, alive = problem.sample(params, noise[0])
        weight, bias = np.array(WEIGHT), np.array(BIAS)
        grad_weight, grad_bias = np.zeros((2, 4)), np.zeros(2)
        rewards = [0.9**t * float(alive[0, t]) for t in range(16)]
        for t in range(16):
            if alive[0, t] == 0:
                break
            state = states[0, t].numpy()
            logits = weight @ state + bias
            policy = np.exp(logits) / np.exp(logits).sum()
            score = np.eye(2)[int(actions[0, t])] - policy
            grad_weight += sum(rewards[t:]) * np.outer(score, state)
            grad_bias += sum(rewards[t:]) * score
        np.testing.assert_allclose(estimate["weight"][0].numpy(), grad_weight, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(estimate["bias"][0].numpy(), grad_bias, rtol=1e-10, atol=1e-12)


def test_registration_and_capabilities() -> None:
    assert PROBLEMS["cartpole"] is CartPole
    assert ESTIMATORS["reinforce_rtg"] is ReinforceRewardToGo
    problem = CartPole()
    assert problem.discrete and problem.sequential
    assert not (problem.has_rsample or problem.has_relaxed_cost or problem.has_enumerate_support)
    assert ReinforceRewardToGo().why_not(problem, 1) is None
    assert "sequential" in ReinforceRewardToGo().why_not(Bernoulli(), 1)
    for name in ("gumbel_softmax", "st_gumbel_softmax", "pathwise"):
        if name in ESTIMATORS:
            assert ESTIMATORS[name]().why_not(problem, 4) is not None


def test_config_files_match_constructors() -> None:
    problem_yaml = yaml.safe_load((ROOT / "conf/problem/cartpole.yaml").read_text())
    parameters = set(inspect.signature(CartPole.__init__).parameters) - {"self", "device"}
    assert set(problem_yaml) == parameters
    assert CartPole(**problem_yaml).config() == CartPole().config()
    assert yaml.safe_load((ROOT / "conf/estimator/reinforce_rtg.yaml").read_text()) == {}


def test_estimators_run_on_the_default_point() -> None:
    """Every applicable registered estimator gives finite float32 estimates of the right shapes."""
    problem = CartPole()
    for name, estimator_class in ESTIMATORS.items():
        estimator = estimator_class()
        if estimator.why_not(problem, 4) is not None:
            continue
        estimates = sample_estimates(problem, estimator, n_estimates=8, n_samples=4, seed=0)
        assert estimates.shape == (8, 10), name
        assert torch.isfinite(estimates).all(), name


@pytest.mark.statistical
@pytest.mark.parametrize("name", ["reinforce", "rloo", "reinforce_rtg"])
@pytest.mark.parametrize("gamma", [1.0, 0.8])
def test_unbiased(name: str, gamma: float) -> None:
    # False-alarm rate: alpha = 1e-3 family-wise per case, Bonferroni over the 10 dimensions.
    problem = CartPole(weight=WEIGHT, bias=BIAS, horizon=16, gamma=gamma)
    estimates = sample_estimates(problem, ESTIMATORS[name](), n_estimates=20000, n_samples=4, seed=1)
    assert bias_pvalue(estimates, flat(problem.exact())) > 1e-3


@pytest.mark.statistical
def test_bias_test_rejects_reward_to_go_without_discount_factor() -> None:
    # The same test as test_unbiased (alpha = 1e-3, Bonferroni over 10 dimensions) must reject
    # G_t-weighted reward-to-go at γ = 0.8: its bias is ~19 standard errors in the worst dimension
    # at 20000 estimates (measured on other seeds), so a miss would be a > 14-sigma event.
    problem = CartPole(weight=WEIGHT, bias=BIAS, horizon=16, gamma=0.8)
    estimates = sample_estimates(problem, NoDiscountRewardToGo(), n_estimates=20000, n_samples=4, seed=1)
    assert bias_pvalue(estimates, flat(problem.exact())) < 1e-3


@pytest.mark.statistical
def test_reward_to_go_has_lower_variance_than_reinforce() -> None:
    # A one-sided paired z-test on common random numbers, alpha = 1e-3: d_i = ‖a_i − g‖² − ‖b_i − g‖²
    # with g the exact gradient, a = reinforce_rtg, b = reinforce (both unbiased, so E[d] =
    # tr Cov(a) − tr Cov(b)). Passing needs z < −3.09, which equal variances give with probability
    # 1e-3 at most; the measured traces (~88 vs ~320) put z near −66 (seeds 2, 3), so failing by
    # chance is out of reach.
    problem = CartPole()
    exact = flat(problem.exact())
    rtg = sample_estimates(problem, ESTIMATORS["reinforce_rtg"](), n_estimates=8192, n_samples=4, seed=2)
    reinforce = sample_estimates(problem, ESTIMATORS["reinforce"](), n_estimates=8192, n_samples=4, seed=2)
    differences = ((rtg - exact) ** 2).sum(-1) - ((reinforce - exact) ** 2).sum(-1)  # (8192,)
    z = differences.mean() / (differences.std() / math.sqrt(differences.numel()))
    assert z.item() < -3.09


def test_runner_integration() -> None:
    from bench import runner

    problem = CartPole(weight=WEIGHT, bias=BIAS)
    for name in ("exact", "reinforce_rtg"):
        result = runner.run_cell(problem, ESTIMATORS[name](), n_samples=4, n_estimates=256, seed=0)
        assert result.row["status"] == "ok", name
        assert [dim["param"] for dim in result.dims][:2] == ["weight[0,0]", "weight[0,1]"]
    assert result.row["variance"] > 0


# --- configuration ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("weight", [[0.0, 0.0, 0.0, 0.0]]),
        ("weight", [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
        ("weight", [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
        ("weight", [["a", 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]),
        ("weight", [[float("nan"), 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]),
        ("weight", "zeros"),
        ("bias", [0.0, 0.0, 0.0]),
        ("bias", [0.0, float("inf")]),
        ("reset_seeds", []),
        ("reset_seeds", [-1]),
        ("reset_seeds", [1.5]),
        ("reset_seeds", "0"),
        ("reset_seeds", 3),
        ("horizon", 0),
        ("horizon", 2.5),
        ("horizon", True),
        ("horizon", 21),
        ("gamma", 0.0),
        ("gamma", -0.5),
        ("gamma", 1.5),
        ("gamma", "high"),
        ("gamma", float("nan")),
    ],
)
def test_bad_config_raises_naming_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as error:
        CartPole(**{key: value})
    assert error.value.key == f"problem.{key}"
    assert str(error.value).startswith(f"problem.{key}:")
