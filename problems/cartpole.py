"""CartPole-v1 under a linear softmax policy: a short-horizon RL return with an exact gradient."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from bench.errors import ConfigError
from bench.problems.base import Params, Problem, as_tensor_list, open_uniform

# Gymnasium CartPole-v1 constants (gymnasium/envs/classic_control/cartpole.py), computed the same way.
GRAVITY = 9.8
MASSCART = 1.0
MASSPOLE = 0.1
TOTAL_MASS = MASSPOLE + MASSCART
LENGTH = 0.5  # half the pole's length
POLEMASS_LENGTH = MASSPOLE * LENGTH
FORCE_MAG = 10.0
TAU = 0.02  # seconds between state updates (explicit Euler)
THETA_THRESHOLD = 12 * 2 * math.pi / 360
X_THRESHOLD = 2.4

NUM_ACTIONS = 2
STATE_DIM = 4
MAX_HORIZON = 20  # the exact gradient enumerates 2^(horizon − 1) branches per reset state

CartPoleSample = tuple[Tensor, Tensor, Tensor]  # (states, actions, alive); see ``CartPole.sample``


def cartpole_step(state: Tensor, action: Tensor) -> Tensor:
    """One Euler step of Gymnasium's CartPole-v1: state (..., 4) = (x, ẋ, θ, θ̇), action (...) ∈ {0, 1}.

    Same formulas and operation order as ``CartPoleEnv.step``, so float64 results agree with it to
    the last ulp or so (only sin/cos come from a different library; bitwise equal in the tests).
    Vectorized and vmap-friendly (no branching on data).
    """
    x, x_dot, theta, theta_dot = state.unbind(-1)
    force = torch.where(action > 0.5, FORCE_MAG, -FORCE_MAG).to(state.dtype)
    costheta = torch.cos(theta)
    sintheta = torch.sin(theta)
    temp = (force + POLEMASS_LENGTH * (theta_dot * theta_dot) * sintheta) / TOTAL_MASS
    thetaacc = (GRAVITY * sintheta - costheta * temp) / (
        LENGTH * (4.0 / 3.0 - MASSPOLE * (costheta * costheta) / TOTAL_MASS)
    )
    xacc = temp - POLEMASS_LENGTH * thetaacc * costheta / TOTAL_MASS
    next_state = (
        x + TAU * x_dot,
        x_dot + TAU * xacc,
        theta + TAU * theta_dot,
        theta_dot + TAU * thetaacc,
    )
    return torch.stack(next_state, dim=-1)  # (..., 4)


def cartpole_terminated(state: Tensor) -> Tensor:
    """Gymnasium's termination test on a (post-step) state (..., 4): |x| > 2.4 or |θ| > 12°. (...) bool."""
    x, theta = state[..., 0], state[..., 2]
    return (x < -X_THRESHOLD) | (x > X_THRESHOLD) | (theta < -THETA_THRESHOLD) | (theta > THETA_THRESHOLD)


def gymnasium_reset_states(seeds: Sequence[int]) -> Tensor:
    """The float64 start states of ``gymnasium.make("CartPole-v1")`` after ``reset(seed=s)``: (R, 4)."""
    import gymnasium  # imported here: only constructing a CartPole needs it

    env = gymnasium.make("CartPole-v1")
    try:
        states = []
        for seed in seeds:
            env.reset(seed=seed)
            states.append(torch.tensor(env.unwrapped.state, dtype=torch.float64))
    finally:
        env.close()
    return torch.stack(states)


def action_log_probs(weight: Tensor, bias: Tensor, states: Tensor) -> Tensor:
    """log π(·|s) = log_softmax(W s + b) for states (..., 4): (..., 2)."""
    logits = states.to(weight.dtype) @ weight.transpose(0, 1) + bias  # (..., 2)
    return torch.log_softmax(logits, dim=-1)


def check_horizon(horizon: Any) -> int:
    if not isinstance(horizon, int) or isinstance(horizon, bool) or not 1 <= horizon <= MAX_HORIZON:
        raise ConfigError(
            "problem.horizon",
            f"expected an integer in [1, {MAX_HORIZON}] (the exact gradient enumerates "
            f"2^(horizon − 1) action sequences), got {horizon!r}",
        )
    return horizon


def check_gamma(gamma: Any) -> float:
    try:
        value = float(gamma)
    except (TypeError, ValueError) as error:
        raise ConfigError("problem.gamma", f"expected a number in (0, 1], got {gamma!r}") from error
    if isinstance(gamma, bool) or not 0.0 < value <= 1.0:
        raise ConfigError("problem.gamma", f"expected a number in (0, 1], got {gamma!r}")
    return value


def check_reset_seeds(seeds: Any) -> list[int]:
    message = f"expected a non-empty list of integers >= 0 (Gymnasium reset seeds), got {seeds!r}"
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or len(seeds) == 0:
        raise ConfigError("problem.reset_seeds", message)
    for seed in seeds:
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ConfigError("problem.reset_seeds", message)
    return list(seeds)


def check_weight(weight: Any, device: torch.device | str) -> Tensor:
    message = f"expected a {NUM_ACTIONS}x{STATE_DIM} list of lists of finite numbers, got {weight!r}"
    try:
        rows = [[float(value) for value in row] for row in weight]
        tensor = torch.tensor(rows, dtype=torch.float64, device=device)
    except (TypeError, ValueError) as error:
        raise ConfigError("problem.weight", message) from error
    if tensor.shape != (NUM_ACTIONS, STATE_DIM) or not torch.isfinite(tensor).all():
        raise ConfigError("problem.weight", message)
    return tensor


class CartPole(Problem):
    """Gymnasium's CartPole-v1 driven by a linear softmax policy; f(τ) = Σ_t γ^t r_t, the return.

    Policy: π(a|s) = softmax(W s + b)_a, a ∈ {0 (push left), 1 (push right)}, parameters
    ``weight`` W (2×4) and ``bias`` b (2). An episode starts from the Gymnasium reset state of one
    of ``reset_seeds`` (uniformly), then runs the float64 Euler dynamics of ``cartpole_step`` until
    termination (|x| > 2.4 or |θ| > 12°) or ``horizon`` steps; every step taken earns r_t = 1,
    including the terminating one. The policy sees the float64 state (Gymnasium's observation is
    its float32 copy). The dynamics are a black box to the estimators (no relaxation, no
    reparameterization); only π depends on θ.

    Noise: (*batch, horizon + 1) uniforms. u_0 picks the reset state (index ⌊u_0 R⌋); u_{t+1} picks
    a_t = 1[u_{t+1} < π(1|s_t)]. After termination the state is frozen and later steps are masked
    out (no reward, no log-probability).

    Exact gradient: r_t = 1[step t is taken] depends only on a_0..a_{t−1}, so E[f] = Σ_t γ^t
    P(alive at t). ``expected_return`` enumerates every action sequence a_0..a_{H−2} (2^t branches
    at step t, per reset state, vectorized, float64) and sums path probabilities. A terminated
    branch still splits in two, each child weighted by the constant 1/2 instead of π, so its
    descendants' weights sum exactly to its own probability (powers of two are exact in floating
    point) and carry no θ dependence. Autograd through E[f] gives ∇θ E[f].
    """

    name = "cartpole"
    discrete = True
    has_rsample = False
    has_relaxed_cost = False
    has_enumerate_support = False
    sequential = True
    has_score = True
    cost_depends_on_params = False
    direction = "maximize"  # f is the return: training ascends E[f]

    def __init__(
        self,
        weight: Sequence[Sequence[float]] = ((0.0,) * STATE_DIM,) * NUM_ACTIONS,
        bias: Sequence[float] = (0.0,) * NUM_ACTIONS,
        reset_seeds: Sequence[int] = (0, 1, 2),
        horizon: int = 16,
        gamma: float = 1.0,
        device: torch.device | str = "cpu",
    ) -> None:
        weight_point = check_weight(weight, device)  # (2, 4)
        bias_point = as_tensor_list("problem.bias", bias, length=NUM_ACTIONS, device=device)  # (2,)
        seeds = check_reset_seeds(reset_seeds)
        horizon = check_horizon(horizon)
        gamma = check_gamma(gamma)
        config = {"weight": weight_point.tolist(), "bias": bias_point.tolist(), "reset_seeds": seeds}
        super().__init__(device, **config, horizon=horizon, gamma=gamma)
        self.weight = weight_point
        self.bias = bias_point
        self.reset_seeds = seeds
        self.horizon = horizon
        self.gamma = gamma
        self.start_states = gymnasium_reset_states(self.reset_seeds).to(self.device)  # (R, 4)

    # --- the problem interface --------------------------------------------------------------
    def params(self) -> Params:
        return {"weight": self.weight.clone(), "bias": self.bias.clone()}

    def noise(self, generator: torch.Generator, batch: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        return open_uniform(generator, (*batch, self.horizon + 1), dtype, self.device)  # (*batch, H + 1)

    def sample(self, params: Params, noise: Tensor) -> CartPoleSample:
        """Roll out one episode per noise row, float64 whatever the noise dtype.

        Returns (states (*batch, H, 4): s_t before action t; actions (*batch, H) ∈ {0, 1};
        alive (*batch, H) ∈ {0, 1}: step t is taken, i.e. no termination before it).
        """
        weight = params["weight"].detach().to(torch.float64)
        bias = params["bias"].detach().to(torch.float64)
        uniforms = noise.to(torch.float64)  # (*batch, H + 1)
        state = self.initial_state(uniforms[..., 0])  # (*batch, 4)
        alive = torch.ones_like(uniforms[..., 0], dtype=torch.bool)  # (*batch,)
        # Two actions: π(1|s) = softmax(Ws + b)₁ = σ(s·(w₁ − w₀) + b₁ − b₀), one matrix-vector
        # product and a sigmoid per step instead of a (…, 2) log-softmax (a fifth of the rollout).
        gap_weight, gap_bias = weight[1] - weight[0], bias[1] - bias[0]  # (4,), ()
        states, actions, alives = [], [], []
        for t in range(self.horizon):
            prob_right = torch.sigmoid(state @ gap_weight + gap_bias)  # (*batch,)
            action = (uniforms[..., t + 1] < prob_right).to(torch.float64)  # (*batch,)
            states.append(state)
            actions.append(action)
            alives.append(alive)
            next_state = cartpole_step(state, action)
            state = torch.where(alive.unsqueeze(-1), next_state, state)
            alive = alive & ~cartpole_terminated(next_state)
        return (
            torch.stack(states, dim=-2),  # (*batch, H, 4)
            torch.stack(actions, dim=-1),  # (*batch, H)
            torch.stack(alives, dim=-1).to(torch.float64),  # (*batch, H)
        )

    def log_prob(self, params: Params, x: CartPoleSample) -> Tensor:
        """log p(τ; θ) up to θ-free terms: Σ_t alive_t log π(a_t|s_t): (*batch,)."""
        return self.step_log_probs(params, x).sum(-1)

    def cost(self, params: Params, x: CartPoleSample) -> Tensor:
        """The discounted return Σ_t γ^t r_t: (*batch,)."""
        return self.step_rewards(params, x).sum(-1)

    def step_log_probs(self, params: Params, x: CartPoleSample) -> Tensor:
        states, actions, alive = x
        weight = params["weight"]
        log_probs = action_log_probs(weight, params["bias"], states)  # (*batch, H, 2)
        actions = actions.to(weight.dtype)
        chosen = actions * log_probs[..., 1] + (1.0 - actions) * log_probs[..., 0]  # (*batch, H)
        return alive.to(weight.dtype) * chosen

    def step_rewards(self, params: Params, x: CartPoleSample) -> Tensor:
        _states, _actions, alive = x
        dtype = params["weight"].dtype
        return alive.to(dtype) * self.discounts(alive.device, dtype)  # (*batch, H)

    # --- closed-form score (has_score) ---------------------------------------------------------
    def score(self, params: Params, x: CartPoleSample) -> Params:
        """∇θ log p(τ; θ) = Σ_t alive_t (onehot(a_t) − π(·|s_t)) ⊗ (s_t, 1) per episode:
        {"weight": (*batch, 2, 4), "bias": (*batch, 2)}."""
        states, actions, alive = x
        single = (states.unsqueeze(-3), actions.unsqueeze(-2), alive.unsqueeze(-2))  # a set of one sample
        return self.weighted_step_score(params, single, torch.ones_like(single[2]))

    def weighted_score(self, params: Params, x: CartPoleSample, weights: Tensor) -> Params:
        """Σ_s w_s ∇θ log p(τ_s; θ) over the last batch axis: weights (*lead, S) → {name: (*lead, *shape)}."""
        return self.weighted_step_score(params, x, weights.unsqueeze(-1))

    def weighted_step_score(self, params: Params, x: CartPoleSample, step_weights: Tensor) -> Params:
        """Σ_s Σ_t w_st alive_st (onehot(a_st) − π(·|s_st)) ⊗ (s_st, 1) over the last batch axis and
        the steps: step_weights (*lead, S, T) (or (*lead, S, 1): one weight per episode) →
        {"weight": (*lead, 2, 4), "bias": (*lead, 2)}.

        With two actions, π(1|s) = σ(l₁ − l₀) and onehot(a) − π = (−δ, δ) with δ = a − π(1|s), so
        one contraction gives both rows. Computed in float64, the rollout's dtype (no copy of the
        states), and returned in the parameters' dtype. The (*lead, S, T) intermediate is built in
        place: at the runner's batch sizes it is tens of MB, and every fresh array that size costs
        page faults.
        """
        states, actions, alive = x  # (*lead, S, T, 4), (*lead, S, T), (*lead, S, T): float64
        weight, bias = params["weight"], params["bias"]
        gap_weight = (weight[1] - weight[0]).to(states.dtype)  # (4,): l₁ − l₀ = s·gap_weight + gap_bias
        gap_bias = (bias[1] - bias[0]).to(states.dtype)
        signed = torch.matmul(states, gap_weight)  # (*lead, S, T)
        signed.add_(gap_bias).sigmoid_().sub_(actions).neg_()  # δ = a − π(1|s)
        signed.mul_(alive).mul_(step_weights)  # w alive δ
        row = torch.einsum("...st,...stj->...j", signed, states)  # (*lead, 4): Σ_st w alive δ s
        row_bias = signed.sum((-2, -1))  # (*lead,)
        return {
            "weight": torch.stack([-row, row], -2).to(weight.dtype),  # (*lead, 2, 4)
            "bias": torch.stack([-row_bias, row_bias], -1).to(bias.dtype),  # (*lead, 2)
        }

    def exact_gradient(self) -> Params:
        params = {name: value.requires_grad_(True) for name, value in self.params().items()}
        expected = self.expected_return(params)
        if not expected.requires_grad:  # horizon 1: f = 1 whatever θ
            return {name: torch.zeros_like(value).detach() for name, value in params.items()}
        grads = torch.autograd.grad(expected, list(params.values()))
        return {name: grad.detach() for name, grad in zip(params, grads, strict=True)}

    def expectation(self, params: Params) -> Tensor:
        """E[f], the expected return (``expected_return``), float64. Kept differentiable in θ even
        where it does not depend on θ (horizon 1: f = 1), so autograd gives ∇ = 0, not an error."""
        value = self.expected_return(params)
        if not value.requires_grad:
            value = value + 0.0 * sum(tensor.sum() for tensor in params.values())
        return value

    def memory_per_sample(self) -> int:
        # Per step: float64 states and dynamics temporaries, actions, alive, logits, log-softmax and
        # their backward (measured: ~2 KB per sample at horizon 12, float32 run).
        return 40 * (self.horizon + 1)

    # --- helpers ----------------------------------------------------------------------------
    @property
    def num_resets(self) -> int:
        return self.start_states.shape[0]

    def discounts(self, device: torch.device | str, dtype: torch.dtype) -> Tensor:
        """γ^t for t = 0..H−1: (H,)."""
        return self.gamma ** torch.arange(self.horizon, device=device, dtype=dtype)

    def initial_state(self, uniform: Tensor) -> Tensor:
        """The reset state with index ⌊u R⌋ (clamped to R − 1): uniform (*batch,) → (*batch, 4)."""
        index = (uniform * self.num_resets).floor().clamp(max=self.num_resets - 1)  # (*batch,)
        resets = torch.arange(self.num_resets, device=uniform.device, dtype=uniform.dtype)  # (R,)
        one_hot = (index.unsqueeze(-1) == resets).to(torch.float64)  # (*batch, R)
        return one_hot @ self.start_states.to(uniform.device)  # (*batch, 4)

    def expected_return(self, params: Params) -> Tensor:
        """E[f] = (1/R) Σ_reset Σ_t γ^t P(alive at t), by enumerating action sequences (float64).

        Branch b at step t carries its path weight (the product of π over its actions, with 1/2
        for each split after termination), its state, and whether it is alive. The reward of step
        t needs no action at t, so the last expansion is at t = H − 2: 2^(H−1) branches at most.
        """
        weight = params["weight"].to(torch.float64)
        bias = params["bias"].to(torch.float64)
        state = self.start_states.unsqueeze(1)  # (R, 1, 4)
        path_weight = torch.ones(self.num_resets, 1, dtype=torch.float64, device=state.device)  # (R, 1)
        alive = torch.ones_like(path_weight, dtype=torch.bool)  # (R, 1)
        both_actions = torch.tensor([0.0, 1.0], dtype=torch.float64, device=state.device)  # (2,)
        expected = path_weight.new_zeros(())
        for t in range(self.horizon):
            expected = expected + self.gamma**t * (path_weight * alive).sum(-1).mean()
            if t == self.horizon - 1:
                break
            probs = action_log_probs(weight, bias, state).exp()  # (R, B, 2)
            split = torch.where(alive.unsqueeze(-1), probs, 0.5)  # (R, B, 2)
            path_weight = (path_weight.unsqueeze(-1) * split).flatten(1)  # (R, 2B)
            next_state = cartpole_step(state.unsqueeze(2).expand(-1, -1, 2, -1), both_actions)  # (R, B, 2, 4)
            frozen = torch.where(alive[..., None, None], next_state, state.unsqueeze(2))
            alive = (alive.unsqueeze(-1) & ~cartpole_terminated(next_state)).flatten(1)  # (R, 2B)
            state = frozen.flatten(1, 2)  # (R, 2B, 4)
        return expected
