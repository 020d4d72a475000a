"""Run one cell: a problem × an estimator at (n_samples, n_estimates, seed), streamed in batches."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from bench.component import code_fingerprint
from bench.errors import ConfigError
from bench.estimators.base import Estimator, FitReport
from bench.problems.base import Params, Problem
from bench.settings import DTYPES, check_settings, resolve_device, resolve_dtype  # noqa: F401 (re-exported)
from bench.stats import empty_moments, fold, fold_scratch, summarize

MAX_BATCH = 1 << 16
# On CPU a batch's estimated working set is capped at 128 MiB: past a few times the last-level cache
# every array streams from memory, and larger batches got slower, not faster (measured on the
# 2-core EPYC, 32 MiB L3, estimates per CPU-second: vae_bernoulli rloo 3.8e4 at 1024 estimates per
# batch vs 2.2e4 at 7127; cartpole reinforce_rtg 1.3e5 at 4096 vs 9.7e4 at 65536).
CPU_BATCH_BYTES = 128 << 20
WARMUP = 64  # estimates in the untimed warm-up batch
# Seeds of the cell's random streams. The main stream (the problem's noise) is seeded with ``seed``
# itself, so every estimator on a problem sees the same samples; the others are independent of it.
WARMUP_STREAM = 0x5EED
# The CPU generator (mt19937) keeps only the low 32 bits of a seed, so the offsets must differ there:
# 1 << 40 would replay the main stream exactly (v = u for a conditional z̃, the fit on measurement noise).
AUX_STREAM = 0x9E3779B9  # extra noise an estimator draws beside the problem's (a conditional z̃, ...)
FIT_STREAM = 0x3C6EF372  # the fit stage's problem noise: never the measurement's
FIT_AUX_STREAM = 0xDAA66D2B
# The estimated reference gradient of a problem without an exact one (bench.reference) is seeded
# with REFERENCE_STREAM itself (plus the offsets above for its own aux and fit streams), whatever
# the cell's seed: one reference per problem config, independent of every cell's noise.
REFERENCE_STREAM = 0x78DDE6E4


@dataclass
class CellResult:
    """``row``: one row of cells.parquet (without the config columns); ``dims``: rows of dims.parquet."""

    row: dict[str, Any]
    dims: list[dict[str, Any]] = field(default_factory=list)


def param_names(params: Params) -> list[str]:
    """One name per flattened dimension: ``theta[0]``, ``weight[1,2]``, a 0-d ``scale``."""
    names = []
    for name, value in params.items():
        if value.ndim == 0:
            names.append(name)
            continue
        for index in torch.cartesian_prod(*[torch.arange(size) for size in value.shape]).reshape(
            -1, value.ndim
        ):
            names.append(f"{name}[{','.join(str(int(i)) for i in index)}]")
    return names


def flatten(grads: Params, batch: int) -> Tensor:
    """{name: (B, *shape)} → (B, P) in dict order."""
    if len(grads) == 1:  # a view, not a copy (cat would copy even one tensor)
        return next(iter(grads.values())).reshape(batch, -1)
    return torch.cat([value.reshape(batch, -1) for value in grads.values()], dim=1)


def cell_id_from(
    problem: str,
    problem_config: dict[str, Any],
    estimator: str,
    estimator_config: dict[str, Any],
    n_samples: int,
    n_estimates: int,
    seed: int,
    dtype: str,
    *,
    code: str | None = None,
    reference: dict[str, Any] | None = None,
) -> str:
    """A stable id: a hash of everything that defines the measurement (not the device). ``code``:
    the problem's and estimator's code fingerprints (``code_of``), so editing their source reruns
    the cell on resume, and nothing else does."""
    key = [problem, problem_config, estimator, estimator_config, n_samples, n_estimates, seed, dtype]
    if code:
        key.append(code)
    if reference is not None:  # an estimated reference's settings (bench.reference.reference_key)
        key.append({"reference_gradient": reference})
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]  # fmt: skip


def code_of(problem: type, estimator: type) -> str:
    """The code fingerprint of a cell: its problem's and its estimator's classes."""
    return f"{code_fingerprint(problem)}:{code_fingerprint(estimator)}"


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def auto_batch_size(problem: Problem, n_params: int, n_samples: int, dtype: torch.dtype, device) -> int:
    """Estimates per batch so that one batch's working set uses at most 1/8 of free memory
    (and at most ``CPU_BATCH_BYTES`` on CPU, where bigger batches stop paying)."""
    element = torch.finfo(dtype).bits // 8
    per_estimate = element * (n_samples * problem.memory_per_sample() + 8 * n_params)
    budget = available_bytes(device) // 8
    if device.type == "cpu":
        budget = min(budget, CPU_BATCH_BYTES)
    return int(max(1, min(MAX_BATCH, budget // per_estimate)))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_lazy_modules() -> None:
    """Pay torch's first-use costs before any timer starts.

    torch.func's first ``grad`` imports ``torch._dynamo`` (1.2–1.5 s on the 2-core EPYC, torch
    2.13), which would otherwise be charged to the ``fit_seconds`` or ``seconds`` of whichever cell
    of the process first differentiates: measured 1.24 s for an oracle_baseline fit that takes
    3 ms, and once in every parallel worker. Later calls cost ~0.2 ms."""
    torch.func.vmap(torch.func.grad(lambda x: (x * x).sum()))(torch.zeros(2, 1))


def base_row(
    problem: Problem,
    estimator: Estimator,
    n_samples: int,
    n_estimates: int,
    seed: int,
    dtype: str,
    reference: dict[str, Any] | None = None,  # an estimated reference's settings (None: exact)
) -> dict[str, Any]:
    cell = cell_id_from(
        problem.name,
        problem.config(),
        estimator.name,
        estimator.config(),
        n_samples,
        n_estimates,
        seed,
        dtype,
        code=code_of(type(problem), type(estimator)),
        reference=reference,
    )
    return {
        "cell": cell,
        "problem": problem.name,
        "estimator": estimator.name,
        "unbiased": estimator.unbiased,
        "n_samples": n_samples,
        "n_estimates": n_estimates,
        "seed": seed,
        "dtype": dtype,
        "device": str(problem.device),
        "cost_evals": estimator.cost_evals(n_samples, problem),
    }


def run_cell(
    problem: Problem,
    estimator: Estimator,
    *,
    n_samples: int,
    n_estimates: int,
    seed: int,
    dtype: torch.dtype | str = torch.float32,
    batch_size: int | None = None,
    alpha: float = 1e-3,
    progress: Callable[[int], None] | None = None,
    projection: Callable[[float, float], None] | None = None,
    cell: str | None = None,
    reference_gradient: dict[str, Any] | None = None,
) -> CellResult:
    """Measure one cell on ``problem.device``. Raises on failure (the sweep records it).

    Every estimator on the same problem, n_samples and seed sees the same noise (common random
    numbers), so paired comparisons between rows are meaningful. ``estimates_per_s`` times noise
    generation plus estimation (wall clock, synchronized on CUDA), after one untimed warm-up batch;
    ``cpu_seconds`` is the process CPU time of the same timed part. The fit stage, the exact
    gradient and the statistics are not timed.

    ``progress(size)`` is called after every batch; ``projection(seconds, rate)`` once, after the
    first measured batch, with the cell's projected measuring time (it may raise to stop the cell
    before the long work). ``alpha`` is the level at which ``bias_resolution`` is computed.

    A problem without an exact gradient (``has_exact_gradient`` false) is compared with its
    estimated reference gradient (``bench.reference``; ``reference_gradient``: the config's
    ``estimator`` and ``n_estimates``, None for the problem's defaults), whose standard error enters
    every bias test; ``exact_source`` says which was used. The reference is computed (untimed) on
    first use and cached; its settings then belong to the cell's id.
    """
    dtype_name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    torch_dtype = resolve_dtype(dtype_name)
    n_samples, n_estimates, seed = check_settings(n_samples, n_estimates, seed)
    reference_key = None
    if not problem.has_exact_gradient:
        from bench.reference import resolve

        reference_key = resolve(problem, reference_gradient).key()
    row = base_row(problem, estimator, n_samples, n_estimates, seed, dtype_name, reference_key)
    if cell is not None:
        row["cell"] = cell
    reason = estimator.why_not(problem, n_samples)
    if reason is not None:
        return CellResult({**row, "status": "skipped", "reason": reason})
    device = problem.device
    load_lazy_modules()
    started = time.perf_counter()
    row["threads"] = torch.get_num_threads()
    row["load_avg"] = load_average()
    exact_stderr, reference_clt_ok = None, True
    if reference_key is None:
        exact_params = problem.exact()
        for name, value in exact_params.items():
            if not torch.isfinite(value).all():
                raise FloatingPointError(f"the exact gradient of {name} is not finite: {value.tolist()}")
        names = param_names(exact_params)
        exact = flatten({k: v.unsqueeze(0) for k, v in exact_params.items()}, 1)[0]  # (P,)
        reachable = problem.exact_in(torch_dtype)
        exact_in_dtype = (
            None if reachable is None else flatten({k: v.unsqueeze(0) for k, v in reachable.items()}, 1)[0]
        )
    else:  # no exact gradient: the estimated reference, with its standard error
        from bench.reference import reference_gradient as estimated_reference

        reference = estimated_reference(problem, reference_gradient)
        names = param_names(problem.params())
        exact, exact_stderr, exact_in_dtype = reference.mean, reference.stderr, None
        reference_clt_ok = reference.clt_ok
    problem.prepare(torch_dtype)
    params = {name: value.to(torch_dtype) for name, value in problem.params().items()}
    if batch_size is None:
        batch_size = auto_batch_size(problem, len(names), n_samples, torch_dtype, device)
    if batch_size < 1:
        raise ConfigError("batch_size", f"expected auto or an integer >= 1, got {batch_size}")

    def stream(offset: int) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(seed + offset)

    def draw(generator: torch.Generator, aux: torch.Generator, size: int) -> Any:
        return estimator.make_noise(problem, generator, aux, (size, n_samples), torch_dtype)

    def estimate_batch(generator: torch.Generator, aux: torch.Generator, size: int) -> Tensor:
        return flatten(estimator.estimate(problem, params, draw(generator, aux, size)), size)  # (size, P)

    report, fit_seconds = FitReport(), 0.0
    if estimator.has_fit:
        fit_generator, fit_aux = stream(FIT_STREAM), stream(FIT_AUX_STREAM)
        tic = time.perf_counter()
        report = estimator.fit(problem, params, lambda size: draw(fit_generator, fit_aux, size))
        synchronize(device)
        fit_seconds = time.perf_counter() - tic

    # The warm-up batch (untimed, its own noise) also gives the pilot mean that centres the
    # variance's uncertainty stream (bench.stats).
    pilot = estimate_batch(stream(WARMUP_STREAM), stream(WARMUP_STREAM + AUX_STREAM), min(batch_size, WARMUP))
    synchronize(device)

    generator, aux_generator = stream(0), stream(AUX_STREAM)
    moments = empty_moments(len(names), device, centre=pilot.to(torch.float64).mean(0))
    scratch = fold_scratch(batch_size, len(names), device)
    elapsed = cpu = 0.0
    done = 0
    batch_times: list[tuple[float, int]] = []  # (wall seconds, estimates) of each timed batch
    while done < n_estimates:
        size = min(batch_size, n_estimates - done)
        tic, cpu_tic = time.perf_counter(), time.process_time()
        batch = estimate_batch(generator, aux_generator, size)
        synchronize(device)
        batch_times.append((time.perf_counter() - tic, size))
        elapsed += batch_times[-1][0]
        cpu += time.process_time() - cpu_tic
        moments = fold(moments, batch, scratch)
        if done == 0 and projection is not None:
            rate = size / max(elapsed, 1e-9)
            projection(n_estimates / rate, rate)
        done += size
        if progress is not None:
            progress(size)
    # A non-finite estimate carries into its column's running mean (bench.stats.fold): one check at
    # the end, with no host synchronization or extra pass over each batch.
    finite = torch.isfinite(moments.mean)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()[:5].tolist()
        raise FloatingPointError(f"non-finite gradient estimates in {[names[i] for i in bad]}")

    summary = summarize(
        moments, exact, torch_dtype, alpha=alpha, exact_in_dtype=exact_in_dtype, exact_stderr=exact_stderr
    )
    row.update(
        status="ok",
        reason=None,
        n_params=len(names),
        batch_size=batch_size,
        variance=summary.variance,
        variance_stderr=summary.variance_stderr,
        variance_ci_low=summary.variance_ci_low,
        variance_ci_high=summary.variance_ci_high,
        bias_norm=summary.bias_norm,
        mse=summary.mse,
        exact_norm=summary.exact_norm,
        exact_source="exact" if reference_key is None else "estimated",
        cosine=summary.cosine,
        bias_z_max=summary.bias_z_max,
        bias_pvalue=summary.bias_pvalue,
        bias_resolution=summary.bias_resolution,
        snr=summary.snr,
        skewness_max=summary.skewness_max,
        kurtosis_max=summary.kurtosis_max,
        # an estimated reference with heavy tails makes the test unreliable too
        clt_ok=summary.clt_ok and reference_clt_ok,
        estimates_per_s=n_estimates / elapsed if elapsed > 0 else math.inf,
        cpu_seconds=cpu,
        timed_batches=len(batch_times),
        batch_log_sd=batch_log_sd(batch_times, batch_size),
        seconds=time.perf_counter() - started,
        fit_seconds=fit_seconds if estimator.has_fit else None,
        fit_steps=report.steps if estimator.has_fit else None,
        fitted=json.dumps(report.fitted) if report.fitted else None,
    )
    per_dim = (
        summary.mean, summary.var, summary.stderr, summary.z, summary.var_stderr, summary.skewness,
        summary.kurtosis,
    )  # fmt: skip
    columns = ("mean", "var", "stderr", "z", "var_stderr", "skewness", "kurtosis")
    values = [exact.tolist(), *(tensor.tolist() for tensor in per_dim)]
    exact_stderrs = [None] * len(names) if exact_stderr is None else exact_stderr.tolist()
    dims = [
        {"param": name, "exact": e, "exact_stderr": e_se, **dict(zip(columns, rest, strict=True))}
        for name, e_se, (e, *rest) in zip(names, exact_stderrs, zip(*values, strict=True), strict=True)
    ]
    return CellResult(row, dims)


def batch_log_sd(batch_times: list[tuple[float, int]], batch_size: int) -> float | None:
    """The standard deviation over the timed batches of log(seconds per estimate), the last batch
    left out when it is under half the batch size (its fixed costs weigh more); None with fewer
    than two batches. ``bench compare`` judges a throughput change against it."""
    if len(batch_times) > 1 and 2 * batch_times[-1][1] < batch_size:
        batch_times = batch_times[:-1]
    logs = [math.log(max(seconds, 1e-9) / size) for seconds, size in batch_times]
    if len(logs) < 2:
        return None
    mean = sum(logs) / len(logs)
    return math.sqrt(sum((value - mean) ** 2 for value in logs) / (len(logs) - 1))


def load_average() -> float | None:
    """The 1-minute load average (runnable processes, averaged), or None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None
