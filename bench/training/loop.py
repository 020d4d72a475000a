"""One training run: an estimator's gradient drives θ, the problem's plain sampled gradient drives
its other parameters (a VAE's decoder), and every ``eval_every`` steps the run records its objective,
the variance and bias of its estimator (and of the basket's) at the current point.

A step, per run (no Python loop over samples or estimates):
    problem.training_batch(model, data stream)             the step's data (a VAE's minibatch)
    noise = estimator.make_noise(problem, (1, n_samples))  the problem's noise first (see below)
    ĝ_θ = estimator.estimate(problem, θ, noise)            one estimate of ∇θ E[f]
    x = estimator.model_samples(problem, θ, noise)         its samples from q_θ
    ĝ_model = problem.model_gradient(θ, model, x)          the plain gradient, mean over x
    optimizer step on θ and model, descending E[f] (``direction`` minimize) or ascending it.
The samples x are those the estimate used: the problem's samples of its noise (and, for ARM and
DisARM, each one's antithetic partner, at which they evaluate f too). The problem's noise is drawn
first from the step's generator (the estimator contract in ``Estimator.make_noise``), and the
generator's state before the draw is replayed to get it again, so every estimator trains the model
the same way. Where the problem ``fuses_model`` and the estimator declares ``plain_model_gradient``
(reinforce, rloo, arm, disarm), the model's parameters go into the estimate's ``params`` instead and
its one pass gives the same gradient (tests/test_train.py checks they agree), as a hand-written loop
computes it.

Streams (all derived from ``seed``; ``stream``): the training noise, the estimator's auxiliary
noise, the data, and per evaluation fresh generators for the variance measurement (common random
numbers across the run's estimator and the basket), the fit stage and the held-out bound. An
evaluation therefore never changes the training trajectory, and a run resumed from its checkpoint
(written after each evaluation) continues exactly as an uninterrupted one.

Estimators with a fit stage (``has_fit``: RELAX's control variate, double_cv's α) are refitted at
every evaluation on their own stream and frozen in between; the fit's evaluations of f are not in
``cost_evals`` (as in the sweep).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from bench.estimators.base import Estimator, detached, exact_at
from bench.problems.base import Params, Problem
from bench.runner import auto_batch_size, flatten, synchronize
from bench.stats import empty_moments, fold, summarize

# Stream offsets from the run's seed (far apart, so seeds 0, 1, 2... never share a stream).
TRAIN_STREAM, AUX_STREAM, DATA_STREAM = 0, 1 << 20, 2 << 20
EVAL_STREAM, FIT_STREAM, BOUND_STREAM = 3 << 20, 4 << 20, 5 << 20


def stream(seed: int, offset: int, step: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of one stream (at one evaluation ``step`` for the per-evaluation streams)."""
    return torch.Generator(device=device).manual_seed(seed + offset + 7919 * step)


@dataclass
class RunSettings:
    """What defines a run besides its problem and estimator (``bench.settings.train_settings``)."""

    n_samples: int
    seed: int
    dtype: torch.dtype
    steps: int
    eval_every: int
    optimizer: str
    lr: float
    eval_estimates: int
    eval_samples: int


@dataclass
class State:
    """Everything a run needs to continue: parameters, optimizer, streams, counters."""

    step: int
    theta: Params
    model: Params
    optimizer: torch.optim.Optimizer
    generators: dict[str, torch.Generator]
    cost_evals: int = 0
    seconds: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)
    basket_rows: list[dict[str, Any]] = field(default_factory=list)

    def checkpoint(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "theta": self.theta,
            "model": self.model,
            "optimizer": self.optimizer.state_dict(),
            "generators": {name: gen.get_state() for name, gen in self.generators.items()},
            "cost_evals": self.cost_evals,
            "seconds": self.seconds,
            "rows": self.rows,
            "basket_rows": self.basket_rows,
        }


def make_optimizer(name: str, leaves: list[Tensor], lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(leaves, lr=lr)
    return torch.optim.SGD(leaves, lr=lr)


def start(problem: Problem, settings: RunSettings, saved: dict[str, Any] | None = None) -> State:
    """A run's state at step 0, or as ``saved`` (a checkpoint) left it."""
    device = problem.device
    if saved is None:
        theta64, model64 = problem.training_start()
        theta = {k: v.detach().to(device, settings.dtype).clone() for k, v in theta64.items()}
        model = {k: v.detach().to(device, settings.dtype).clone() for k, v in model64.items()}
    else:
        theta = {k: v.to(device) for k, v in saved["theta"].items()}
        model = {k: v.to(device) for k, v in saved["model"].items()}
    for tensor in [*theta.values(), *model.values()]:
        tensor.requires_grad_(True)
    optimizer = make_optimizer(settings.optimizer, [*theta.values(), *model.values()], settings.lr)
    offsets = {"train": TRAIN_STREAM, "aux": AUX_STREAM, "data": DATA_STREAM}
    generators = {name: stream(settings.seed, offset, device=device) for name, offset in offsets.items()}
    state = State(0, theta, model, optimizer, generators)
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        for name, gen in generators.items():
            gen.set_state(saved["generators"][name])
        state.step, state.cost_evals, state.seconds = saved["step"], saved["cost_evals"], saved["seconds"]
        state.rows, state.basket_rows = list(saved["rows"]), list(saved["basket_rows"])
    return state


def train_step(problem: Problem, estimator: Estimator, state: State, settings: RunSettings) -> None:
    """One optimizer step (module docstring). No host synchronization: the work stays queued on CUDA."""
    gens = state.generators
    problem.training_batch(detached(state.model), gens["data"], settings.dtype)
    theta = detached(state.theta)
    fused = bool(state.model) and problem.fuses_model and estimator.plain_model_gradient
    replay = gens["train"].get_state() if state.model and not fused else None
    noise = estimator.make_noise(problem, gens["train"], gens["aux"], (1, settings.n_samples), settings.dtype)
    params = {**theta, **detached(state.model)} if fused else theta  # one pass gives both (fuses_model)
    grads = {name: value[0] for name, value in estimator.estimate(problem, params, noise).items()}
    if replay is not None:  # the model's gradient at the samples of the problem noise just drawn
        replayed = torch.Generator(device=problem.device)
        replayed.set_state(replay)
        u = problem.noise(replayed, (settings.n_samples,), settings.dtype)
        x = estimator.model_samples(problem, theta, u)
        grads.update(problem.model_gradient(theta, detached(state.model), x))
    ascend = problem.direction == "maximize"  # optimizers descend: ascending E[f] descends −E[f]
    for group in (state.theta, state.model):  # a few named tensors, not samples
        for name, leaf in group.items():
            leaf.grad = -grads[name].to(leaf.dtype) if ascend else grads[name].to(leaf.dtype)
    state.optimizer.step()
    state.step += 1
    state.cost_evals += estimator.cost_evals(settings.n_samples, problem)


def train_block(
    problem: Problem, estimator: Estimator, state: State, settings: RunSettings, until: int
) -> None:
    """Steps up to ``until``, timed as a whole (synchronized once at the end on CUDA)."""
    tic = time.perf_counter()
    while state.step < until:
        train_step(problem, estimator, state, settings)
    synchronize(problem.device)
    state.seconds += time.perf_counter() - tic
    for name, value in {**state.theta, **state.model}.items():
        if not torch.isfinite(value).all():
            raise FloatingPointError(
                f"training diverged: {name} is not finite at step {state.step}; try a smaller lr"
            )


def refit(problem: Problem, estimator: Estimator, theta: Params, settings: RunSettings, step: int) -> None:
    """Fit an estimator's own parameters at the current point (``has_fit``), on its own stream."""
    if not estimator.has_fit:
        return
    gen = stream(settings.seed, FIT_STREAM, step, problem.device)
    aux = stream(settings.seed, FIT_STREAM + (1 << 19), step, problem.device)
    estimator.fit(
        problem,
        theta,
        lambda size: estimator.make_noise(problem, gen, aux, (size, settings.n_samples), settings.dtype),
    )


def exact_flat(problem: Problem, theta: Params) -> Tensor | None:
    """∇θ E[f] at θ (float64, flattened (P,)) where the problem can compute E[f], else None."""
    try:
        grads = exact_at(problem, theta)
    except NotImplementedError:
        return None
    return flatten({k: g.unsqueeze(0) for k, g in grads.items()}, 1)[0]


def variance_at(
    problem: Problem,
    estimator: Estimator,
    theta: Params,
    settings: RunSettings,
    step: int,
    exact: Tensor | None,
) -> dict[str, Any]:
    """Variance (trace, 95% CI) and bias norm of ``estimator`` at θ over ``eval_estimates`` estimates,
    on the evaluation's noise (the same for every estimator measured at this point)."""
    if estimator.why_not(problem, settings.n_samples) is not None:
        return {"variance": None, "variance_ci_low": None, "variance_ci_high": None, "bias_norm": None}
    refit(problem, estimator, theta, settings, step)
    gen = stream(settings.seed, EVAL_STREAM, step, problem.device)
    aux = stream(settings.seed, EVAL_STREAM + (1 << 19), step, problem.device)
    n_params = sum(value.numel() for value in theta.values())
    fits = auto_batch_size(problem, n_params, settings.n_samples, settings.dtype, problem.device)
    size = min(settings.eval_estimates, fits)
    moments = empty_moments(n_params, problem.device)
    done = 0
    while done < settings.eval_estimates:  # batches of estimates, each one vectorized pass
        take = min(size, settings.eval_estimates - done)
        noise = estimator.make_noise(problem, gen, aux, (take, settings.n_samples), settings.dtype)
        moments = fold(moments, flatten(estimator.estimate(problem, theta, noise), take))
        done += take
    centre = exact if exact is not None else torch.zeros(n_params, dtype=torch.float64, device=problem.device)
    summary = summarize(moments, centre, settings.dtype)
    return {
        "variance": summary.variance,
        "variance_ci_low": summary.variance_ci_low,
        "variance_ci_high": summary.variance_ci_high,
        "bias_norm": summary.bias_norm if exact is not None else None,
    }


def evaluate(
    problem: Problem,
    estimator: Estimator,
    basket: dict[str, Estimator],
    state: State,
    settings: RunSettings,
) -> None:
    """Record the run's point at ``state.step``: objective, variance and bias (of the run's estimator
    and of each basket member), then refit the run's estimator for the steps that follow."""
    tic = time.perf_counter()
    theta = detached(state.theta)
    problem.evaluation_batch(detached(state.model), settings.dtype)
    exact = exact_flat(problem, theta) if settings.eval_estimates else None  # only the bias needs it
    bound = stream(settings.seed, BOUND_STREAM, state.step, problem.device)
    row: dict[str, Any] = {"step": state.step, "cost_evals": state.cost_evals, "seconds": state.seconds}
    row.update(problem.training_objective(theta, detached(state.model), bound, settings.eval_samples))
    row["direction"] = problem.direction
    if settings.eval_estimates:
        row.update(variance_at(problem, estimator, theta, settings, state.step, exact))
        for name, member in basket.items():
            measured = variance_at(problem, member, theta, settings, state.step, exact)
            state.basket_rows.append({"step": state.step, "estimator": name, **measured})
    if not settings.eval_estimates:  # else variance_at fitted it at this point, on the same stream
        refit(problem, estimator, theta, settings, state.step)  # what the next steps use
    synchronize(problem.device)
    row["eval_seconds"] = time.perf_counter() - tic
    state.rows.append(row)


def eval_steps(settings: RunSettings) -> list[int]:
    """The steps evaluated: 0, every ``eval_every``, and the last."""
    return sorted({*range(0, settings.steps, settings.eval_every), settings.steps})


def run_training(
    problem: Problem,
    estimator: Estimator,
    basket: dict[str, Estimator],
    settings: RunSettings,
    *,
    saved: dict[str, Any] | None = None,
    on_eval: Callable[[State], None] | None = None,
) -> State:
    """Train from step 0 (or from ``saved``) to ``settings.steps``; ``on_eval(state)`` after every
    evaluation (it writes the checkpoint, and may raise to stop the run)."""
    reason = estimator.why_not(problem, settings.n_samples)
    if reason is not None:
        from bench.errors import NotApplicable

        raise NotApplicable(reason)
    state = start(problem, settings, saved)
    if saved is not None:
        refit(problem, estimator, detached(state.theta), settings, state.step)  # as it was after its eval
    evaluated = state.step if saved is not None else -1  # a checkpoint is written after its evaluation
    for target in eval_steps(settings):
        if target <= evaluated:
            continue
        train_block(problem, estimator, state, settings, target)
        evaluate(problem, estimator, basket, state, settings)
        if on_eval is not None:
            on_eval(state)
    return state
