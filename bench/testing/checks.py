"""The checks of bench's conformance kit: each a small function ``check_<what>(estimator, problem)``
that raises ``CheckFailed`` with one line saying what was expected and what was measured.
docs/testing.md lists them with the conventions they enforce."""

from __future__ import annotations

import copy
import functools
import inspect
import unittest
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch._C._functorch as functorch
from torch import Tensor

from bench import runner
from bench.errors import NotApplicable
from bench.estimators.base import Estimator, Noise
from bench.problems.base import Params, Problem

ALPHA = 1e-3  # the bias check's false-alarm rate per (estimator, problem), Bonferroni over dims
SEED = 11
N_SAMPLES = 3
N_ESTIMATES = 20_000
BATCH = 8  # estimates per batch in the cheap checks
TOY_PROBLEMS = ("bernoulli", "categorical", "multicategorical", "gaussian")
WHY_NOT_SAMPLES = (1, 2, 3, 4)
COST_METHODS = ("cost", "relaxed_cost", "cost_and_log_prob", "step_rewards")
BATCH_RTOL = 1e-9  # float64 batch invariance: only the rounding of differently-shaped kernels differs
ExpectedFailed = Callable[[Estimator], Mapping[str, str]] | Mapping[str, str] | None


class CheckFailed(AssertionError):
    """A check's convention is broken; the message says what was expected and what was measured."""


class SkipCheck(unittest.SkipTest):
    """A check that does not apply (pytest reports unittest.SkipTest as skipped)."""


def fail(check: str, problem: Problem, expected: str, measured: str) -> None:
    __tracebackhide__ = True  # pytest shows the check's line, not this one
    raise CheckFailed(f"{check} on {problem_id(problem)}: expected {expected}; measured {measured}")


# --- ids ------------------------------------------------------------------------------------------
def short(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(short(item) for item in value) + "]"
    return str(value)


def default_values(obj: Any, group: str) -> dict[str, Any]:
    """The config a registered component has at its defaults, else its constructor's defaults."""
    from bench import registry  # lazily: the registry loads Hydra's OmegaConf

    name = getattr(obj, "name", "")
    if name and registry.REGISTRIES[group].get(name) is type(obj):
        try:
            return registry.default_config(group, name)
        except Exception:  # a plugin without defaults: fall back to the signature
            pass
    parameters = inspect.signature(type(obj).__init__).parameters.values()
    return {
        p.name: list(p.default) if isinstance(p.default, tuple) else p.default
        for p in parameters
        if p.default is not inspect.Parameter.empty
    }


def describe(obj: Any, group: str) -> str:
    """``name(key=value, ...)``: the registry name (else the class name) and the non-default config."""
    label = getattr(obj, "name", "") or type(obj).__name__
    defaults = default_values(obj, group)
    changed = [f"{k}={short(v)}" for k, v in obj.config().items() if k not in defaults or defaults[k] != v]
    return f"{label}({', '.join(changed)})" if changed else label


def estimator_id(estimator: Estimator) -> str:
    return describe(estimator, "estimator")


def problem_id(problem: Problem) -> str:
    return describe(problem, "problem")


# --- shared machinery -----------------------------------------------------------------------------
def samples_for(estimator: Estimator) -> int:
    return max(N_SAMPLES, estimator.min_samples)


def budget(estimator: Estimator, problem: Problem, n_samples: int = N_SAMPLES) -> int:
    """N_ESTIMATES, fewer for estimators that spend many cost evaluations per estimate (indecater and
    mvd on the VAEs evaluate the whole minibatch once per latent coordinate): the same total number
    of evaluations as 8 per sample, at least 2 000 estimates. The false-alarm rate does not change;
    only the power does."""
    evals = estimator.cost_evals(n_samples, problem)
    return max(2_000, min(N_ESTIMATES, N_ESTIMATES * 8 * n_samples // max(evals, 1)))


def generators(problem: Problem, seed: int, aux_seed: int) -> tuple[torch.Generator, torch.Generator]:
    """The main and aux streams, seeded as ``run_cell`` seeds them (``seed + runner.*_STREAM``)."""
    main = torch.Generator(device=problem.device).manual_seed(seed)
    return main, torch.Generator(device=problem.device).manual_seed(aux_seed)


def draw(estimator: Estimator, problem: Problem, batch: tuple[int, int], dtype: torch.dtype) -> Noise:
    """Noise as the runner draws it: the main stream seeded SEED, the aux stream SEED + AUX_STREAM."""
    main, aux = generators(problem, SEED, SEED + runner.AUX_STREAM)
    return estimator.make_noise(problem, main, aux, batch, dtype)


def prepared(
    estimator: Estimator, problem: Problem, dtype: torch.dtype = torch.float32, n_samples: int | None = None
) -> tuple[Estimator, Params]:
    """A deep copy of ``estimator``, fitted as ``run_cell`` fits it (its own noise streams), and
    the problem's params in ``dtype``."""
    n_samples = samples_for(estimator) if n_samples is None else n_samples
    problem.prepare(dtype)
    params = {name: value.to(dtype) for name, value in problem.params().items()}
    fitted = copy.deepcopy(estimator, {id(problem): problem})
    if fitted.has_fit:
        main, aux = generators(problem, SEED + runner.FIT_STREAM, SEED + runner.FIT_AUX_STREAM)
        fitted.fit(
            problem, params, lambda size: fitted.make_noise(problem, main, aux, (size, n_samples), dtype)
        )
    return fitted, params


def noise_rows(noise: Noise, rows: slice) -> Noise:
    """The same noise for the estimates ``rows`` (the first axis of every tensor)."""
    if isinstance(noise, Tensor):
        return noise[rows]
    return type(noise)(noise_rows(item, rows) for item in noise)


def flat(grads: Params) -> Tensor:
    return torch.cat([value.reshape(value.shape[0], -1) for value in grads.values()], dim=1)


def assert_estimates(
    check: str, problem: Problem, grads: Any, params: Params, batch: int, dtype: torch.dtype
) -> None:
    """The estimate convention: {name: (batch, *shape)} in params' order, finite, in ``dtype``."""
    if not isinstance(grads, dict) or list(grads) != list(params):
        keys = list(grads) if isinstance(grads, dict) else type(grads).__name__
        fail(check, problem, f"estimate keys {list(params)} (problem.params(), in order)", f"{keys}")
    for name, value in grads.items():
        shape = (batch, *params[name].shape)
        if tuple(value.shape) != shape:
            fail(check, problem, f"{name} of shape {shape} (batch, *param)", f"{tuple(value.shape)}")
        if not value.is_floating_point() or torch.finfo(value.dtype).bits < torch.finfo(dtype).bits:
            fail(check, problem, f"{name} in {dtype} or wider (the params' dtype)", f"{value.dtype}")
        bad = int((~torch.isfinite(value)).sum())
        if bad:
            fail(check, problem, f"finite estimates of {name}", f"{bad} of {value.numel()} not finite")


# --- the checks -----------------------------------------------------------------------------------
def check_finite_and_shaped(estimator: Estimator, problem: Problem) -> None:
    """Estimates are ``{name: (batch, *shape)}`` with problem.params()'s names in its order (the
    runner flattens them in that order), finite, in the params' dtype (float32)."""
    fitted, params = prepared(estimator, problem)
    noise = draw(fitted, problem, (BATCH, samples_for(estimator)), torch.float32)
    grads = fitted.estimate(problem, params, noise)
    assert_estimates("check_finite_and_shaped", problem, grads, params, BATCH, torch.float32)


def check_same_seed_same_estimates(estimator: Estimator, problem: Problem) -> None:
    """Two runs on generators seeded alike (fit stage included) give bitwise identical estimates."""
    runs = []
    for _ in range(2):
        fitted, params = prepared(estimator, problem)
        noise = draw(fitted, problem, (BATCH, samples_for(estimator)), torch.float32)
        runs.append(flat(fitted.estimate(problem, params, noise)))
    if not torch.equal(*runs):
        gap = float((runs[0] - runs[1]).abs().nan_to_num(float("inf")).max())
        measured = f"{int((runs[0] != runs[1]).sum())} of {runs[0].numel()} values differ, by up to {gap:.3g}"
        fail("check_same_seed_same_estimates", problem, "identical estimates from equal seeds", measured)


def check_common_random_numbers(estimator: Estimator, problem: Problem) -> None:
    """Common random numbers: ``make_noise`` draws the problem's own noise first from the main
    generator, exactly ``problem.noise(generator, (B, S), dtype)`` (the whole noise, or the first
    element of a tuple; extra noise comes from the aux generator), and leaves the main generator
    where ``problem.noise`` leaves it, so every batch of a cell shares samples with every other
    estimator. Every noise tensor has the B estimates on its first axis."""
    name, batch = "check_common_random_numbers", (BATCH, samples_for(estimator))
    fitted, _ = prepared(estimator, problem)
    main, aux = generators(problem, SEED, SEED + runner.AUX_STREAM)
    noise = fitted.make_noise(problem, main, aux, batch, torch.float32)
    reference_generator = torch.Generator(device=problem.device).manual_seed(SEED)
    reference = problem.noise(reference_generator, batch, torch.float32)
    tensors = [noise] if isinstance(noise, Tensor) else list(noise) if isinstance(noise, tuple) else [None]
    if not all(isinstance(tensor, Tensor) for tensor in tensors):
        fail(name, problem, "a Tensor or a tuple of Tensors, the problem's noise first", f"{noise!r:.80}")
    own, shape = tensors[0], tuple(reference.shape)
    if own.shape != reference.shape or not torch.equal(own, reference):
        agree = float((own == reference).double().mean()) if own.shape == reference.shape else 0.0
        measured = f"{tuple(own.shape)}, {agree:.0%} of values equal"
        fail(name, problem, f"the problem's noise = problem.noise(generator seeded alike) {shape}", measured)
    if not torch.equal(main.get_state(), reference_generator.get_state()):
        fail(name, problem, "the main generator advanced only by problem.noise", "it was advanced further")
    for tensor in tensors:
        if tensor.ndim == 0 or tensor.shape[0] != BATCH:
            fail(name, problem, f"every noise tensor of shape ({BATCH}, ...)", f"{tuple(tensor.shape)}")


def check_batch_invariance(estimator: Estimator, problem: Problem) -> None:
    """A batch of 8 estimates equals the same estimates computed as two batches of 4, and its first
    estimate the same computed alone (a batch of one: a training step), from the same noise rows, in
    float64 to a relative 1e-9 of the largest estimate: each estimate depends only on its own noise,
    so the batch size changes nothing."""
    fitted, params = prepared(estimator, problem, torch.float64)
    noise = draw(fitted, problem, (BATCH, samples_for(estimator)), torch.float64)
    whole = flat(fitted.estimate(problem, params, noise))
    half = BATCH // 2
    split = torch.cat(
        [
            flat(fitted.estimate(problem, params, noise_rows(noise, rows)))
            for rows in (slice(0, half), slice(half, BATCH))
        ]
    )
    single = flat(fitted.estimate(problem, params, noise_rows(noise, slice(0, 1))))
    split = torch.cat([split, single])
    whole = torch.cat([whole, whole[:1]])
    gap = float((whole - split).abs().nan_to_num(float("inf")).max())
    scale = float(whole.abs().nan_to_num(0.0).max())
    if not gap <= BATCH_RTOL * max(scale, 1e-300):
        expected = (
            f"one batch of {BATCH} = two of {half}, its first = a batch of 1 (float64, rtol {BATCH_RTOL})"
        )
        fail(
            "check_batch_invariance",
            problem,
            expected,
            f"max difference {gap:.3g} at estimates up to {scale:.3g}",
        )


def check_float64(estimator: Estimator, problem: Problem) -> None:
    """With float64 params and noise, estimates are float64 (and finite, shaped as above)."""
    fitted, params = prepared(estimator, problem, torch.float64)
    noise = draw(fitted, problem, (BATCH, samples_for(estimator)), torch.float64)
    grads = fitted.estimate(problem, params, noise)
    assert_estimates("check_float64", problem, grads, params, BATCH, torch.float64)


def physical_numel(tensor: Tensor) -> int:
    """Elements of the tensor behind torch.func's wrappers: inside vmap a value shows one example's
    shape, but the tensor computed holds every example's."""
    while functorch.is_functorch_wrapped_tensor(tensor):
        tensor = functorch.get_unwrapped(tensor)
    return tensor.numel()


@contextmanager
def counting_evaluations(problem: Problem) -> Iterator[dict[str, int]]:
    """Count the outcomes at which f is evaluated through ``COST_METHODS`` on this instance: the
    elements of the result's batch shape, across vmap levels; a call inside another (the default
    cost_and_log_prob calls cost) or on the very same sample object counts once."""
    counts = dict.fromkeys(COST_METHODS, 0)
    seen: dict[int, Any] = {}
    depth = [0]

    def wrap(method_name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def counted(params: Params, x: Any, *args: Any, **kwargs: Any) -> Any:
            depth[0] += 1
            try:
                out = method(params, x, *args, **kwargs)
            finally:
                depth[0] -= 1
            if depth[0] == 0 and id(x) not in seen:
                seen[id(x)] = x  # kept alive, so its id is not reused during the count
                value = out[0] if isinstance(out, tuple) else out
                per_row = value.shape[-1] if method_name == "step_rewards" else 1
                counts[method_name] += physical_numel(value) // max(per_row, 1)
            return out

        return counted

    saved = {name: problem.__dict__[name] for name in COST_METHODS if name in problem.__dict__}
    for name in COST_METHODS:
        setattr(problem, name, wrap(name, getattr(problem, name)))
    try:
        yield counts
    finally:
        for name in COST_METHODS:
            problem.__dict__.pop(name)
        problem.__dict__.update(saved)


def check_cost_evals(estimator: Estimator, problem: Problem) -> None:
    """``cost_evals(n_samples, problem)`` equals the evaluations of f (relaxed f̃ included) one
    estimate makes: outcomes passed to the problem instance's cost, relaxed_cost, cost_and_log_prob
    or step_rewards during ``estimate`` (after an uncounted warm-up), counted on batches of 1 and 3
    estimates; the difference over 2 is the count per estimate (a fixed per-batch evaluation, such
    as a cache warm-up outside the transforms, is allowed and not counted)."""
    n_samples = samples_for(estimator)
    fitted, params = prepared(estimator, problem)
    noise = draw(fitted, problem, (3, n_samples), torch.float32)
    fitted.estimate(problem, params, noise)  # warm-up: lazy caches (the exact gradient, ...)
    counts = []
    for size in (1, 3):
        with counting_evaluations(problem) as count:
            fitted.estimate(problem, params, noise_rows(noise, slice(0, size)))
        counts.append(count)
    per_estimate = {k: (counts[1][k] - counts[0][k]) / 2 for k in COST_METHODS}
    declared, measured = fitted.cost_evals(n_samples, problem), sum(per_estimate.values())
    if measured != declared:
        detail = ", ".join(f"{k} {v:g}" for k, v in per_estimate.items() if v) or "no evaluation"
        expected = f"cost_evals({n_samples}, problem) = {declared} evaluations of f per estimate"
        fail("check_cost_evals", problem, expected, f"{measured:g} ({detail})")


def check_why_not_agrees(estimator: Estimator, problem: Problem) -> None:
    """``why_not(problem, n)`` (n = 1..4) agrees with what runs: None means ``check`` passes and
    ``estimate`` (fitted at n) gives finite, shaped estimates; a reason is a string, ``check``
    raises NotApplicable with it, and n < min_samples always has one. Where no n applies, the
    problem is recorded as skipped with the reason."""
    name, reasons = "check_why_not_agrees", []
    for n in WHY_NOT_SAMPLES:
        reason = estimator.why_not(problem, n)
        if reason is not None and not isinstance(reason, str):
            fail(name, problem, f"why_not(problem, {n}) a string or None", f"{type(reason).__name__}")
        if reason is None and n < estimator.min_samples:
            fail(name, problem, f"a reason at n_samples {n} < min_samples {estimator.min_samples}", "None")
        raised = "passed"
        try:
            estimator.check(problem, n)
        except NotApplicable:
            raised = "raised"
        if (raised == "raised") != (reason is not None):
            expected = f"check(problem, {n}) to raise NotApplicable iff why_not gives a reason"
            fail(name, problem, expected, f"why_not {reason!r}, check {raised}")
        if reason is not None:
            reasons.append(reason)
            continue
        try:
            fitted, params = prepared(estimator, problem, n_samples=n)
            grads = fitted.estimate(problem, params, draw(fitted, problem, (2, n), torch.float32))
        except Exception as error:  # any error is the finding
            measured = f"{type(error).__name__}: {error}".splitlines()[0]
            fail(name, problem, f"estimate to run where why_not(problem, {n}) is None", measured)
        assert_estimates(name, problem, grads, params, 2, torch.float32)
    if len(reasons) == len(WHY_NOT_SAMPLES):
        raise SkipCheck(f"{name}: not applicable to {problem_id(problem)}: {reasons[-1]}")


def check_unbiased(estimator: Estimator, problem: Problem) -> None:
    """For estimators declaring ``unbiased = True``: ``run_cell`` at n_samples 3, 20 000 estimates
    (fewer for costly estimators, ``budget``), seed 11, float32, finds no bias: its Bonferroni
    ``bias_pvalue`` over the gradient's dims is > ALPHA = 1e-3, and ``clt_ok`` (the mean is close
    enough to normal for the p-value to mean anything; false means unverifiable, and fails). False-
    alarm rate: at most 1e-3 per (estimator, problem) for an unbiased estimator with clt_ok; seeded,
    so a run is reproducible."""
    name, n_samples = "check_unbiased", samples_for(estimator)
    row = runner.run_cell(
        problem,
        copy.deepcopy(estimator, {id(problem): problem}),
        n_samples=n_samples,
        n_estimates=budget(estimator, problem, n_samples),
        seed=SEED,
    ).row
    if row["status"] != "ok":
        fail(name, problem, "an ok cell", f"{row['status']}: {row.get('reason')}")
    p, dims = row["bias_pvalue"], row["n_params"]
    measured = f"p={p:.2g}, bias {row['bias_norm']:.3g} vs resolution {row['bias_resolution']:.3g}"
    if not row["clt_ok"]:  # heavy tails: the p-value can neither clear nor convict
        skew = f"skewness up to {row['skewness_max']:.3g} at {row['n_estimates']} estimates; {measured}"
        fail(name, problem, "n_estimates >= 25·skewness² (clt_ok: the p-value is reliable)", skew)
    if not p > ALPHA:
        fail(name, problem, f"bias p-value > {ALPHA:g} (alpha, Bonferroni over {dims} dims)", measured)


CHECKS: tuple[Callable[[Estimator, Problem], None], ...] = (
    check_finite_and_shaped,
    check_same_seed_same_estimates,
    check_common_random_numbers,
    check_batch_invariance,
    check_float64,
    check_cost_evals,
    check_why_not_agrees,
    check_unbiased,
)
CHECK_NAMES = tuple(check.__name__ for check in CHECKS)
