"""Frozen copies of bench's estimation kernels for the performance gate's cells.

Each reference repeats, in plain torch and without calling bench, what the runner times for one
cell as of the commit that froze it: noise generation, the estimator's batch of estimates (closed
form or ``vmap(grad(surrogate))``, as the estimator does it), and the runner's ``flatten`` to
(E, P). The problem's and estimator's *code* is copied here; only their *data* (logits, targets,
costs, network weights, start states, a control variate's state) is read from the instances, once,
by ``*_data`` at setup. So a change that slows bench's kernels (the problem's sampler or cost, an
estimator, the latent helpers, the runner's flatten) shows up as a ratio bench / reference above 1,
whatever the machine, while both sides run on the same machine at the same moment.

``tests/perf/test_gate.py`` checks that every reference still computes the same estimates as bench
(to rounding). When bench's computation changes on purpose (a bug fix, a new formula), that check
fails: refreeze the reference by copying the new code here, in the same commit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import grad, vmap

Data = dict[str, Any]
# (data, generator, aux_generator, n_estimates, n_samples, dtype) → (n_estimates, P)
Reference = Callable[[Data, torch.Generator, torch.Generator, int, int, torch.dtype], Tensor]


# --- shared pieces (problems.base, problems.latent, bench.runner) --------------------------------
def open_uniform(generator: torch.Generator, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    u = torch.rand(shape, generator=generator, dtype=dtype)
    return u.clamp_(min=torch.finfo(dtype).tiny, max=1.0 - torch.finfo(dtype).eps / 2)


def flatten(grads: dict[str, Tensor], batch: int) -> Tensor:
    if len(grads) == 1:
        return next(iter(grads.values())).reshape(batch, -1)
    return torch.cat([value.reshape(batch, -1) for value in grads.values()], dim=1)


def logistic(u: Tensor) -> Tensor:
    return torch.log(u) - torch.log1p(-u)


def gumbel(u: Tensor) -> Tensor:
    return -torch.log(-torch.log(u))


def categorical_hard(z: Tensor) -> Tensor:
    winner = z.argmax(-1, keepdim=True)
    return (torch.arange(z.shape[-1]) == winner).to(z.dtype)


def binary_conditional(logits: Tensor, b: Tensor, v: Tensor) -> Tensor:
    log_p = F.logsigmoid(logits)
    log_q = F.logsigmoid(-logits)
    p, q = torch.exp(log_p), torch.exp(log_q)
    one = logits + torch.log1p(-p * (1.0 - v)) - log_p - torch.log1p(-v)
    zero = logits + torch.log(v) + log_q - torch.log1p(-v * q)
    return torch.where(b > 0.5, one, zero)


def batch_of_grads(
    surrogate: Callable[..., Tensor], params: dict[str, Tensor], noise: Any
) -> dict[str, Tensor]:
    """Estimator.estimate: vmap over the batch of grad of the one-estimate surrogate."""
    return vmap(grad(surrogate), in_dims=(None, 0))(params, noise)


def scaled(grads: dict[str, Tensor], factor: float) -> dict[str, Tensor]:
    if factor == 1.0:
        return grads
    return {name: value * factor for name, value in grads.items()}


def cast(params: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    return {name: value.to(dtype) for name, value in params.items()}


# --- bernoulli -----------------------------------------------------------------------------------
def bernoulli_data(problem: Any, estimator: Any, dtype: torch.dtype) -> Data:
    return {"params": cast(problem.params(), dtype), "target": problem.target}


def bernoulli_sample(theta: Tensor, u: Tensor) -> Tensor:
    return (u > 1.0 - torch.sigmoid(theta.detach())).to(u.dtype)


def bernoulli_cost(data: Data, x: Tensor) -> Tensor:
    return ((x - data["target"].to(x.dtype)) ** 2).sum(-1)


def bernoulli_log_prob(theta: Tensor, x: Tensor) -> Tensor:
    return (x * F.logsigmoid(theta) + (1.0 - x) * F.logsigmoid(-theta)).sum(-1)


def bernoulli_reinforce(
    data: Data, g: torch.Generator, aux: torch.Generator, E: int, S: int, dtype
) -> Tensor:
    """reinforce's closed form: (1/S) Σ_s f_s (b_s − σ(θ))."""
    theta = data["params"]["theta"]
    u = open_uniform(g, (E, S, theta.numel()), dtype)
    x = bernoulli_sample(theta, u)  # (E, S, D)
    cost = bernoulli_cost(data, x)  # (E, S)
    per_sample = (x - torch.sigmoid(theta)).reshape(E, S, -1)
    if S == 1:
        summed = cost * per_sample.squeeze(-2)
    else:
        summed = (cost.unsqueeze(-1) * per_sample).sum(-2)
    return flatten(scaled({"theta": summed.reshape(E, *theta.shape)}, 1.0 / S), E)


def bernoulli_disarm(data: Data, g: torch.Generator, aux: torch.Generator, E: int, S: int, dtype) -> Tensor:
    """DisARM's batched path (estimators.arm.AntitheticBinary.estimate + estimators.disarm.logit_gradient)."""
    params = data["params"]
    u = open_uniform(g, (E, S, params["theta"].numel()), dtype)
    logits = params["theta"].detach()
    first = bernoulli_sample(logits, u)  # (E, S, D)
    second = (u < torch.sigmoid(logits)).to(first.dtype)
    costs = bernoulli_cost(data, torch.cat([first, second], 1))  # (E, 2S)
    delta = costs[:, :S] - costs[:, S:]
    first_bits, second_bits = first.to(u.dtype), second.to(u.dtype)
    delta = delta.reshape(delta.shape + (1,) * (u.ndim - delta.ndim))
    sign = 1.0 - 2.0 * second_bits
    differ = (first_bits != second_bits).to(u.dtype)
    logit_grad = (0.5 * delta * sign * differ * torch.sigmoid(logits.abs())).mean(1)  # (E, D)
    _, pullback = torch.func.vjp(lambda p: p["theta"], params)
    (grads,) = vmap(pullback)(logit_grad)
    return flatten(grads, E)


def relax_data(problem: Any, estimator: Any, dtype: torch.dtype) -> Data:
    data = bernoulli_data(problem, estimator, dtype)
    data["state"] = {name: value.to(dtype) for name, value in estimator.state.items()}
    return data


def bernoulli_relax(data: Data, g: torch.Generator, aux: torch.Generator, E: int, S: int, dtype) -> Tensor:
    """RELAX with a frozen control variate (estimators.relax.relax_surrogate, control_variate)."""
    params, state = data["params"], data["state"]
    u = open_uniform(g, (E, S, params["theta"].numel()), dtype)
    v = open_uniform(aux, tuple(u.shape), dtype)
    with torch.no_grad():  # warm_problem_caches: one cost evaluation outside the transform
        plain = {name: value.detach() for name, value in params.items()}
        bernoulli_cost(data, bernoulli_sample(plain["theta"], u[:1, 0]))
    state = {name: value.to(dtype=params["theta"].dtype) for name, value in state.items()}

    def control_variate(z: Tensor, state_: dict[str, Tensor]) -> Tensor:
        flat = z.reshape(z.shape[0], -1)
        hidden = torch.tanh(flat @ state_["w1"].T + state_["b1"])
        value = hidden @ state_["w2"] + state_["b2"]
        relaxed = torch.sigmoid(z / torch.exp(state_["log_temperature"]))
        return value + state_["eta"] * bernoulli_cost(data, relaxed)

    def surrogate(
        params_: dict[str, Tensor], noise: tuple[Tensor, Tensor], state_: dict[str, Tensor]
    ) -> Tensor:
        u_, v_ = noise
        logits = params_["theta"]
        z = logits + logistic(u_)
        b = (z > 0).to(z.dtype)
        z_tilde = binary_conditional(logits, b, v_)
        cost = bernoulli_cost(data, b)
        control = control_variate(z, state_)
        control_tilde = control_variate(z_tilde, state_)
        log_prob = bernoulli_log_prob(logits, b)
        weight = cost - control_tilde
        return (cost + weight * (log_prob - log_prob.detach()) + control - control_tilde).mean()

    grads = vmap(grad(surrogate), in_dims=(None, 0, None))(params, (u, v), state)
    return flatten(grads, E)


# --- categorical ---------------------------------------------------------------------------------
def categorical_data(problem: Any, estimator: Any, dtype: torch.dtype) -> Data:
    assert problem.cost_name == "linear", "the frozen categorical cost is the linear one"
    return {"params": cast(problem.params(), dtype), "costs": problem.costs}


def categorical_cost(data: Data, x: Tensor) -> Tensor:
    return (x * data["costs"].to(x.dtype)).sum(-1)


def categorical_rloo(data: Data, g: torch.Generator, aux: torch.Generator, E: int, S: int, dtype) -> Tensor:
    """rloo's closed form: Σ_s (f_s − f̄)(y_s − softmax θ) / (S − 1)."""
    theta = data["params"]["theta"]
    u = open_uniform(g, (E, S, theta.numel()), dtype)
    x = categorical_hard(theta.detach() + gumbel(u))  # (E, S, K)
    cost = categorical_cost(data, x)  # (E, S)
    centred = cost - cost.mean(-1, keepdim=True)
    probs = torch.softmax(theta, -1)
    counts = (centred.unsqueeze(-2) @ x).squeeze(-2)
    grads = {"theta": counts - centred.sum(-1, keepdim=True) * probs}
    return flatten(scaled(grads, 1.0 / (S - 1)), E)


def gumbel_softmax_data(problem: Any, estimator: Any, dtype: torch.dtype) -> Data:
    return {**categorical_data(problem, estimator, dtype), "temperature": estimator.temperature}


def categorical_gumbel_softmax(
    data: Data, g: torch.Generator, aux: torch.Generator, E: int, S: int, dtype
) -> Tensor:
    """Gumbel-softmax: (1/S) Σ_s ∇θ f̃(softmax((θ + G_s)/τ))."""
    params = data["params"]
    u = open_uniform(g, (E, S, params["theta"].numel()), dtype)

    def surrogate(params_: dict[str, Tensor], noise: Tensor) -> Tensor:
        relaxed = torch.softmax((params_["theta"] + gumbel(noise)) / data["temperature"], -1)
        return categorical_cost(data, relaxed).mean()

    return flatten(batch_of_grads(surrogate, params, u), E)


# unordered set (estimators.unordered_set)
Y_STEP, Y_LOW, LOG_SURE, WORK_PER_NODE, CHUNK_BYTES = 0.2, -40.0, -1e4, 6, 512 << 20


def log1mexp_of_log(log_w: Tensor) -> Tensor:
    w = torch.exp(log_w)
    small = torch.log(-torch.expm1(-w))
    large = torch.log1p(-torch.exp(-w))
    return torch.where(log_w < math.log(math.log(2.0)), small, large).clamp(min=LOG_SURE)


def log_set_probabilities(log_p: Tensor, log_rest: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    n_items = log_p.shape[-1]
    y_high = math.log(2 * n_items + 60.0)
    n_nodes = math.ceil((y_high - Y_LOW) / Y_STEP) + 1
    y = Y_LOW + Y_STEP * torch.arange(n_nodes, dtype=log_p.dtype)
    factors = log1mexp_of_log((log_p - log_rest)[:, None] + y[None, :])
    base = y - torch.exp(y) + math.log(Y_STEP)
    full = base + factors.sum(0)
    without_one = full[None, :] - factors
    without_two = without_one[:, None, :] - factors[None, :, :]
    log_set = torch.logsumexp(full, -1)
    log_without_one = torch.logsumexp(without_one, -1)
    log_without_two = torch.logsumexp(without_two, -1)
    diagonal = torch.eye(n_items, dtype=torch.bool)
    log_without_two = torch.where(diagonal, log_without_one[:, None], log_without_two)
    return log_set, log_without_one, log_without_two


def categorical_unordered_set(
    data: Data, g: torch.Generator, aux: torch.Generator, E: int, S: int, dtype
) -> Tensor:
    """The unordered set estimator (Kool et al. 2020) over the Gumbel-top-k of the first row."""
    params = data["params"]
    n_classes = params["theta"].numel()
    u = open_uniform(g, (E, S, n_classes), dtype)
    n_nodes = (math.log(2 * S + 60.0) - Y_LOW) / Y_STEP
    element = torch.finfo(dtype).bits // 8
    working_set = element * WORK_PER_NODE * S**2 * int(n_nodes)
    chunk = max(1, CHUNK_BYTES // max(1, working_set))

    def surrogate(params_: dict[str, Tensor], noise: Tensor) -> Tensor:
        k = noise.shape[0]
        event = noise.shape[1:]
        log_p = torch.log_softmax(params_["theta"].reshape(n_classes), -1)
        perturbed = (params_["theta"].detach() + gumbel(noise[0])).reshape(n_classes)
        basis = torch.eye(n_classes, dtype=noise.dtype).reshape(n_classes, *event)
        chosen = torch.topk(perturbed, k).indices
        in_set = torch.zeros_like(perturbed, dtype=torch.bool).scatter(0, chosen, True)
        constant_log_p = log_p.detach()
        log_p_set = constant_log_p[chosen]
        log_rest = torch.logsumexp(torch.where(in_set, -math.inf, constant_log_p), 0)
        log_set, log_without_one, log_without_two = log_set_probabilities(log_p_set, log_rest)
        cost = categorical_cost(data, basis[chosen])
        constant_cost = cost.detach()
        weight = torch.exp(log_p_set + log_without_one - log_set)
        baseline = (
            torch.exp(log_p_set[None, :] + log_without_two - log_without_one[:, None]) * constant_cost
        ).sum(-1)
        score_weight = weight * (constant_cost - baseline)
        return (score_weight * log_p[chosen]).sum() + (weight * cost).sum()

    chunk_size = None if chunk >= E else chunk
    return flatten(vmap(grad(surrogate), in_dims=(None, 0), chunk_size=chunk_size)(params, u), E)


# --- multicategorical (indecater) --------------------------------------------------------------
def multicategorical_data(problem: Any, estimator: Any, dtype: torch.dtype) -> Data:
    assert problem.cost_name == "coupled", "the frozen multicategorical cost is the coupled one"
    return {
        "params": cast(problem.params(), dtype),
        "target": problem.target,
        "values": problem.values,
        "memory_per_sample": problem.memory_per_sample(),
    }


def multicategorical_cost(data: Data, x: Tensor) -> Tensor:
    values = (x * data["values"].to(x.dtype)).sum(-1)
    target = data["target"].to(values.dtype)
    return (values.mean(-1) - target.mean()) ** 2


def multicategorical_indecater(
    data: Data, g: torch.Generator, aux: torch.Generator, E: int, S: int, dtype
) -> Tensor:
    """IndeCateR (estimators.indecater): f at every class of every variable, the others sampled."""
    params = data["params"]
    n_variables, n_classes = params["theta"].shape
    u = open_uniform(g, (E, S, n_variables, n_classes), dtype)
    open_uniform(torch.Generator().manual_seed(0), (1, n_variables, n_classes), torch.float32)  # event_shape
    element = torch.finfo(dtype).bits // 8
    per_estimate = element * S * n_variables * n_classes * data["memory_per_sample"]
    chunk = max(1, CHUNK_BYTES // max(1, per_estimate))

    def surrogate(params_: dict[str, Tensor], noise: Tensor) -> Tensor:
        x = categorical_hard(params_["theta"].detach() + gumbel(noise))  # (S, D, K)
        n_samples, event = x.shape[0], x.shape[1:]
        flat = x.reshape(n_samples, -1, n_classes)
        one = torch.eye(n_variables, dtype=x.dtype)
        classes = torch.eye(n_classes, dtype=x.dtype)
        kept = flat[:, None, None, :, :] * (1.0 - one)[None, :, None, :, None]
        replaced = one[None, :, None, :, None] * classes[None, None, :, None, :]
        varied = (kept + replaced).reshape(n_samples, n_variables, n_classes, *event)
        cost = multicategorical_cost(data, varied)  # (S, D, K)
        probs = torch.softmax(params_["theta"].reshape(-1, n_classes), -1)
        catlog = (probs * cost.detach()).sum((-2, -1))
        direct = (probs.detach() * cost).sum((-2, -1)) / n_variables
        return (catlog + direct).mean()

    chunk_size = None if chunk >= E else chunk
    return flatten(vmap(grad(surrogate), in_dims=(None, 0), chunk_size=chunk_size)(params, u), E)


# --- gaussian (mvd) ----------------------------------------------------------------------------
def gaussian_data(problem: Any, estimator: Any, dtype: torch.dtype) -> Data:
    assert problem.cost_name == "quadratic" and estimator.coupled, "frozen: quadratic cost, coupled MVD"
    return {
        "params": cast(problem.params(), dtype),
        "k": problem.k,
        "point": problem.params(),
        "memory_per_sample": problem.memory_per_sample(),
    }


def gaussian_cost(data: Data, x: Tensor) -> Tensor:
    return ((x - data["k"].to(x.dtype)) ** 2).sum(-1)


SQRT_2PI, BLOCKS, MVD_CHUNK_BYTES = math.sqrt(2.0 * math.pi), 4, 1 << 28


def gaussian_mvd(data: Data, g: torch.Generator, aux: torch.Generator, E: int, S: int, dtype) -> Tensor:
    """The coupled measure-valued derivative (estimators.mvd, Weibull and double-sided Maxwell)."""
    params = data["params"]
    dim = params["mu"].numel()
    eps = torch.randn((E, S, dim), generator=g, dtype=dtype)
    uniforms = open_uniform(aux, (E, S, 2, dim), dtype)
    normals = torch.randn((E, S, 3, dim), generator=aux, dtype=dtype)
    point = {name: value.clone() for name, value in data["point"].items()}  # latent_size
    latent = point["mu"].numel()
    per_estimate = eps.element_size() * BLOCKS * S * latent * data["memory_per_sample"]
    chunk = max(1, MVD_CHUNK_BYTES // max(per_estimate, 1))
    assert chunk >= E, "the gate's batches are below the chunk size"

    def surrogate(params_: dict[str, Tensor], noise: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        eps_, uniforms_, normals_ = noise
        mu, sigma = params_["mu"], params_["sigma"]
        n_samples, latent_shape = eps_.shape[0], mu.shape
        loc, scale = mu.detach().reshape(-1), sigma.detach().reshape(-1)
        base = loc + scale * eps_.reshape(n_samples, -1)
        weibull = torch.sqrt(-2.0 * torch.log(uniforms_[:, 0]))
        triple = normals_[:, :3].movedim(1, 0)
        maxwell = torch.sign(triple[0]) * torch.sqrt((triple**2).sum(0))
        standardized = torch.stack([weibull, -weibull, maxwell, uniforms_[:, 1] * maxwell])
        standardized = standardized.reshape(BLOCKS, n_samples, -1)
        values = loc + scale * standardized
        diagonal = torch.eye(base.shape[-1], dtype=torch.bool)
        inputs = torch.where(diagonal, values.unsqueeze(-1), base.unsqueeze(-2))
        inputs = inputs.reshape(BLOCKS, n_samples, loc.numel(), *latent_shape)
        frozen = gaussian_cost(data, inputs[:3])
        scale_minus = gaussian_cost(data, inputs[3])
        grad_loc = ((frozen[0] - frozen[1]) / (scale * SQRT_2PI)).mean(0)
        grad_scale = ((frozen[2] - scale_minus.detach()) / scale).mean(0)
        chain = (grad_loc.detach().reshape(latent_shape) * mu).sum()
        chain = chain + (grad_scale.detach().reshape(latent_shape) * sigma).sum()
        return chain + scale_minus.mean()

    return flatten(batch_of_grads(surrogate, params, (eps, uniforms, normals)), E)


# --- cartpole (reinforce_rtg) ------------------------------------------------------------------
GRAVITY, MASSCART, MASSPOLE, LENGTH, FORCE_MAG, TAU = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
TOTAL_MASS = MASSPOLE + MASSCART
POLEMASS_LENGTH = MASSPOLE * LENGTH
THETA_THRESHOLD = 12 * 2 * math.pi / 360
X_THRESHOLD = 2.4


def cartpole_data(problem: Any, estimator: Any, dtype: torch.dtype) -> Data:
    return {
        "params": cast(problem.params(), dtype),
        "start_states": problem.start_states,
        "horizon": problem.horizon,
        "gamma": problem.gamma,
    }


def cartpole_step(state: Tensor, action: Tensor) -> Tensor:
    x, x_dot, theta, theta_dot = state.unbind(-1)
    force = torch.where(action > 0.5, FORCE_MAG, -FORCE_MAG).to(state.dtype)
    costheta = torch.cos(theta)
    sintheta = torch.sin(theta)
    temp = (force + POLEMASS_LENGTH * (theta_dot * theta_dot) * sintheta) / TOTAL_MASS
    thetaacc = (GRAVITY * sintheta - costheta * temp) / (
        LENGTH * (4.0 / 3.0 - MASSPOLE * (costheta * costheta) / TOTAL_MASS)
    )
    xacc = temp - POLEMASS_LENGTH * thetaacc * costheta / TOTAL_MASS
    next_state = (x + TAU * x_dot, x_dot + TAU * xacc, theta + TAU * theta_dot, theta_dot + TAU * thetaacc)
    return torch.stack(next_state, dim=-1)


def cartpole_terminated(state: Tensor) -> Tensor:
    x, theta = state[..., 0], state[..., 2]
    return (x < -X_THRESHOLD) | (x > X_THRESHOLD) | (theta < -THETA_THRESHOLD) | (theta > THETA_THRESHOLD)


def cartpole_rollout(data: Data, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    params = data["params"]
    weight = params["weight"].detach().to(torch.float64)
    bias = params["bias"].detach().to(torch.float64)
    uniforms = noise.to(torch.float64)
    starts = data["start_states"]
    n_resets = starts.shape[0]
    index = (uniforms[..., 0] * n_resets).floor().clamp(max=n_resets - 1)
    resets = torch.arange(n_resets, dtype=uniforms.dtype)
    state = (index.unsqueeze(-1) == resets).to(torch.float64) @ starts
    alive = torch.ones_like(uniforms[..., 0], dtype=torch.bool)
    gap_weight, gap_bias = weight[1] - weight[0], bias[1] - bias[0]
    states, actions, alives = [], [], []
    for t in range(data["horizon"]):  # the steps of an episode (sequential), not samples
        prob_right = torch.sigmoid(state @ gap_weight + gap_bias)
        action = (uniforms[..., t + 1] < prob_right).to(torch.float64)
        states.append(state)
        actions.append(action)
        alives.append(alive)
        next_state = cartpole_step(state, action)
        state = torch.where(alive.unsqueeze(-1), next_state, state)
        alive = alive & ~cartpole_terminated(next_state)
    return torch.stack(states, -2), torch.stack(actions, -1), torch.stack(alives, -1).to(torch.float64)


def cartpole_reinforce_rtg(
    data: Data, g: torch.Generator, aux: torch.Generator, E: int, S: int, dtype
) -> Tensor:
    """reinforce_rtg's closed form: (1/S) Σ_s Σ_t R_st alive_st (onehot(a_st) − π_st) ⊗ (s_st, 1)."""
    params, horizon = data["params"], data["horizon"]
    noise = open_uniform(g, (E, S, horizon + 1), dtype)
    states, actions, alive = cartpole_rollout(data, noise)
    weight, bias = params["weight"], params["bias"]
    discounts = data["gamma"] ** torch.arange(horizon, dtype=weight.dtype)
    step_rewards = alive.to(weight.dtype) * discounts
    later = torch.ones(horizon, horizon, dtype=step_rewards.dtype).tril()
    step_weights = step_rewards @ later
    gap_weight = (weight[1] - weight[0]).to(states.dtype)
    gap_bias = (bias[1] - bias[0]).to(states.dtype)
    signed = torch.matmul(states, gap_weight)
    signed.add_(gap_bias).sigmoid_().sub_(actions).neg_()
    signed.mul_(alive).mul_(step_weights)
    row = torch.einsum("...st,...stj->...j", signed, states)
    row_bias = signed.sum((-2, -1))
    grads = {
        "weight": torch.stack([-row, row], -2).to(weight.dtype),
        "bias": torch.stack([-row_bias, row_bias], -1).to(bias.dtype),
    }
    return flatten(scaled(grads, 1.0 / S), E)


# --- vae_bernoulli (rloo, autograd) ------------------------------------------------------------
def vae_data(problem: Any, estimator: Any, dtype: torch.dtype) -> Data:
    problem.prepare(dtype)
    images, decoder = problem.constants(dtype)
    return {
        "params": cast(problem.params(), dtype),
        "images": images,
        "decoder": decoder,
        "latent_dim": problem.latent_dim,
        "batch_size": problem.batch_size,
    }


def mlp(params: dict[str, Tensor], prefix: str, inputs: Tensor) -> Tensor:
    hidden = torch.tanh(F.linear(inputs, params[f"{prefix}.0.weight"], params[f"{prefix}.0.bias"]))
    return F.linear(hidden, params[f"{prefix}.2.weight"], params[f"{prefix}.2.bias"])


def vae_bernoulli_rloo(data: Data, g: torch.Generator, aux: torch.Generator, E: int, S: int, dtype) -> Tensor:
    """rloo by vmap(grad) on the VAE's negative ELBO (problems.vae.VAEBernoulli)."""
    params, images, decoder = data["params"], data["images"], data["decoder"]
    latent_dim = data["latent_dim"]
    u = open_uniform(g, (E, S, data["batch_size"], latent_dim), dtype)

    def surrogate(params_: dict[str, Tensor], noise: Tensor) -> Tensor:
        plain = {name: value.detach() for name, value in params_.items()}
        x = (noise > 1.0 - torch.sigmoid(mlp(plain, "encoder", images).detach())).to(noise.dtype)
        encoded = mlp(params_, "encoder", images)
        pixel_logits = mlp(decoder, "decoder", x)
        log_likelihood = (images * pixel_logits - F.softplus(pixel_logits)).sum(-1)
        log_q = (x * encoded - F.softplus(encoded)).sum(-1)
        log_prior = -latent_dim * math.log(2.0)
        cost = (log_q - log_likelihood - log_prior).mean(-1)  # (S,)
        log_prob = (x * encoded - F.softplus(encoded)).sum((-2, -1))  # the same encoder pass
        n_samples = cost.shape[0]
        baseline = (cost.sum() - cost) / (n_samples - 1)
        return (cost + (cost - baseline).detach() * log_prob).mean()

    return flatten(batch_of_grads(surrogate, params, u), E)
