"""The performance gate: bench's estimation kernels against frozen copies of themselves.

For each representative cell, the *bench kernel* is exactly what ``bench.runner.run_cell`` times
for one batch — ``flatten(estimator.estimate(problem, params, estimator.make_noise(...)))`` — and
the *reference* is a frozen copy of the same computation (``tests/perf/reference.py``). Both run in
this process, on one thread (``torch.set_num_threads(1)``), timed in thread CPU time
(``time.thread_time``: the CPU this thread used, so waiting for a core shared with other processes
does not count), in R rounds; each round times ``calls`` kernel calls of each side, bench first in
even rounds and the reference first in odd ones, so that drifts (a neighbour starting, the CPU
clock, caches warmed by the other side) hit both sides alike.

The test. Per round i, l_i = log(T_bench,i / T_reference,i). With l̄ and s their mean and standard
deviation over the R rounds, the one-sided lower confidence bound of the geometric-mean ratio is
    LCB = exp(l̄ − t_{1−α, R−1} · s / √R),    α = 1e-3,
and the gate fails iff LCB > 1.10: only when the data show, at confidence 1 − α, that bench is
more than 10% slower than the frozen reference. If the true ratio is ≤ 1.10 and the l_i are
independent and normal, a false alarm has probability ≤ α = 1e-3 per cell (≤ 1e-2 for all ten,
Bonferroni); an unchanged tree sits near ratio 1, where it is far smaller. Noisier rounds widen
the bound and make failing *harder*, so contention makes the gate lenient, not flaky. A 30%
slowdown (ratio ≈ 1.3: log 1.3 − log 1.1 = 0.17) is caught whenever t·s/√R < 0.17, i.e. with the
spreads measured on a 2-core machine (s ≈ 0.02–0.08 idle, up to ~0.15 with two busy loops
beside it), with a wide margin at R = 12.

The planted slowdown (tests of the gate itself): ``BENCH_PERF_PLANT=0.3`` in the environment makes
the bench kernel do 30% more work of exactly its own kind: each call owes 0.3 extra batches, and
whenever a whole batch is owed it is estimated (on noise from separate generators) and discarded.
It is read here, in ``PLANT``, and nowhere else; bench's own code never sees it.
"""

from __future__ import annotations

import gc
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from scipy import stats
from torch import Tensor

from bench.runner import flatten
from bench.sweep import build, default_config
from tests.perf import reference

PLANT = float(os.environ.get("BENCH_PERF_PLANT", "0") or 0)  # test-only: extra work for the bench side
ALPHA = 1e-3  # one-sided level of the lower confidence bound
THRESHOLD = 1.10  # fail when bench is shown to be more than 10% slower than the reference
# Fail too when bench is shown to be more than 15% FASTER than its reference: the reference is then
# stale (bench changed and it did not), and a 30% slowdown of bench would hide under the margin.
STALE = 0.85
ROUNDS = 12  # paired rounds per cell
WARMUP_CALLS = 2  # untimed calls of each side before the rounds
DTYPE = torch.float32


@dataclass(frozen=True)
class Cell:
    """One gate cell: what to build, the batch one kernel call estimates, and its frozen reference.
    ``calls`` per round and side is chosen so that one side's share of a round takes ~50–150 ms of
    CPU on the CI machine, and is a multiple of 10, so a planted 0.3 adds exactly 3 batches per 10
    calls in every round (no rounding noise in the planted ratio)."""

    name: str
    problem: str
    estimator: str
    n_samples: int
    batch: int
    calls: int
    reference: reference.Reference
    data: Callable[[Any, Any, torch.dtype], reference.Data]
    problem_config: dict[str, Any] = field(default_factory=dict)
    estimator_config: dict[str, Any] = field(default_factory=dict)


CELLS = (
    Cell("bernoulli-reinforce", "bernoulli", "reinforce", 4, 16384, 30,
         reference.bernoulli_reinforce, reference.bernoulli_data),
    Cell("categorical-rloo", "categorical", "rloo", 4, 16384, 20,
         reference.categorical_rloo, reference.categorical_data),
    Cell("cartpole-reinforce_rtg", "cartpole", "reinforce_rtg", 4, 1024, 10,
         reference.cartpole_reinforce_rtg, reference.cartpole_data),
    Cell("vae_bernoulli-rloo", "vae_bernoulli", "rloo", 4, 128, 10,
         reference.vae_bernoulli_rloo, reference.vae_data),
    Cell("bernoulli-disarm", "bernoulli", "disarm", 4, 4096, 30,
         reference.bernoulli_disarm, reference.bernoulli_data),
    Cell("bernoulli-relax", "bernoulli", "relax", 4, 2048, 10,
         reference.bernoulli_relax, reference.relax_data, estimator_config={"train_steps": 0}),
    Cell("multicategorical-indecater", "multicategorical", "indecater", 4, 1024, 20,
         reference.multicategorical_indecater, reference.multicategorical_data),
    Cell("categorical-unordered_set", "categorical", "unordered_set", 3, 256, 10,
         reference.categorical_unordered_set, reference.categorical_data),
    Cell("categorical-gumbel_softmax", "categorical", "gumbel_softmax", 4, 4096, 20,
         reference.categorical_gumbel_softmax, reference.gumbel_softmax_data),
    Cell("gaussian-mvd", "gaussian", "mvd", 4, 4096, 10,
         reference.gaussian_mvd, reference.gaussian_data),
)  # fmt: skip
CELLS_BY_NAME = {cell.name: cell for cell in CELLS}


@dataclass
class Kernels:
    """The two sides of a cell, ready to call: each returns the (batch, P) estimates.
    ``planted`` counts the extra batches the planted slowdown has estimated."""

    bench: Callable[[], Tensor]
    reference: Callable[[], Tensor]
    n_params: int
    planted: list[int]


def build_cell(cell: Cell, seed: int = 0, plant: float | None = None) -> Kernels:
    """The bench kernel and the reference for ``cell``, each with its own generators seeded alike
    (so, called once each, they see the same noise and give the same estimates)."""
    plant = PLANT if plant is None else plant
    problem = build(
        "problem", cell.problem, {**default_config("problem", cell.problem), **cell.problem_config}
    )
    estimator = build(
        "estimator", cell.estimator, {**default_config("estimator", cell.estimator), **cell.estimator_config}
    )
    problem.prepare(DTYPE)
    params = {name: value.to(DTYPE) for name, value in problem.params().items()}
    shape = (cell.batch, cell.n_samples)
    if estimator.has_fit:  # as the runner does: fit (here: no steps), then freeze the state
        fit_generator, fit_aux = (
            torch.Generator().manual_seed(seed + 1),
            torch.Generator().manual_seed(seed + 2),
        )
        estimator.fit(
            problem,
            params,
            lambda size: estimator.make_noise(problem, fit_generator, fit_aux, (size, cell.n_samples), DTYPE),
        )
    bench_generator, bench_aux = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 7)
    plant_generator, plant_aux = (
        torch.Generator().manual_seed(seed + 3),
        torch.Generator().manual_seed(seed + 4),
    )
    calls, planted = [0], [0]  # bench calls made, and planted batches estimated

    def one_batch(generator: torch.Generator, aux: torch.Generator) -> Tensor:
        noise = estimator.make_noise(problem, generator, aux, shape, DTYPE)
        return flatten(estimator.estimate(problem, params, noise), cell.batch)

    def bench_kernel() -> Tensor:
        estimates = one_batch(bench_generator, bench_aux)
        # The planted slowdown: every call owes `plant` more batches, estimated (on noise of their
        # own) and discarded once a whole batch is owed: exactly that much more work of the same
        # kind on average (a smaller batch would not cost proportionally less: caches, overheads).
        calls[0] += 1
        while planted[0] < math.floor(calls[0] * plant + 1e-9):  # at most one per call for plant ≤ 1
            one_batch(plant_generator, plant_aux)
            planted[0] += 1
        return estimates

    data = cell.data(problem, estimator, DTYPE)
    reference_generator = torch.Generator().manual_seed(seed)
    reference_aux = torch.Generator().manual_seed(seed + 7)

    def reference_kernel() -> Tensor:
        return cell.reference(data, reference_generator, reference_aux, cell.batch, cell.n_samples, DTYPE)

    n_params = sum(value.numel() for value in params.values())
    return Kernels(bench_kernel, reference_kernel, n_params, planted)


@contextmanager
def one_thread_no_gc() -> Iterator[None]:
    """torch on one thread and Python's collector off while timing (collected between rounds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        torch.set_num_threads(threads)


def paired_round(
    first: Callable[[], Tensor], second: Callable[[], Tensor], calls: int
) -> tuple[float, float]:
    """Thread CPU seconds of ``calls`` calls of each kernel, interleaved call by call in the order
    first, second, second, first, first, second, ... (ABBA), so that a burst of contention lands on
    both sides alike. A loop over calls of a whole batch, not over estimates."""
    spent = [0.0, 0.0]
    for index in range(2 * calls):
        side = (index + index // 2) % 2  # 0, 1, 1, 0, 0, 1, 1, 0, ...
        kernel = first if side == 0 else second
        start = time.thread_time()
        kernel()
        spent[side] += time.thread_time() - start
    return spent[0], spent[1]


@dataclass
class Verdict:
    """The outcome of one cell's gate, with the figures pytest-benchmark records."""

    cell: str
    ratios: list[float]  # per round, bench / reference
    bench_seconds: list[float]  # per round, thread CPU seconds of ``calls`` bench calls
    reference_seconds: list[float]
    calls: int
    batch: int
    geometric_mean: float
    lower_bound: float
    upper_bound: float
    passed: bool
    stale: bool
    plant: float

    def figures(self) -> dict[str, Any]:
        per_call = sorted(seconds / self.calls for seconds in self.bench_seconds)
        reference_per_call = sorted(seconds / self.calls for seconds in self.reference_seconds)
        median, reference_median = per_call[len(per_call) // 2], reference_per_call[len(per_call) // 2]
        return {
            "ratio_geometric_mean": self.geometric_mean,
            "ratio_lower_bound": self.lower_bound,
            "ratio_upper_bound": self.upper_bound,
            "stale_reference": self.stale,
            "threshold": THRESHOLD,
            "alpha": ALPHA,
            "passed": self.passed,
            "plant": self.plant,
            "rounds": len(self.ratios),
            "calls_per_round": self.calls,
            "batch": self.batch,
            "bench_estimates_per_cpu_s": self.batch / median,
            "reference_estimates_per_cpu_s": self.batch / reference_median,
            "ratios": self.ratios,
        }


def lower_confidence_bound(ratios: list[float], alpha: float = ALPHA) -> tuple[float, float]:
    """(geometric mean, one-sided 1 − α lower confidence bound of it) from per-round ratios, by
    Student's t on the log ratios."""
    logs = [math.log(ratio) for ratio in ratios]
    n = len(logs)
    mean = sum(logs) / n
    spread = math.sqrt(sum((value - mean) ** 2 for value in logs) / (n - 1))
    quantile = float(stats.t.ppf(1.0 - alpha, n - 1))
    return math.exp(mean), math.exp(mean - quantile * spread / math.sqrt(n))


def upper_confidence_bound(ratios: list[float], alpha: float = ALPHA) -> float:
    """The one-sided 1 − α upper confidence bound of the geometric-mean ratio (Student's t)."""
    geometric_mean, lower = lower_confidence_bound(ratios, alpha)
    return geometric_mean**2 / lower  # exp(l̄ + t·s/√n): the lower bound mirrored about l̄


def run_gate(cell: Cell, rounds: int = ROUNDS, seed: int = 0, plant: float | None = None) -> Verdict:
    """Time the cell's two kernels in alternating paired rounds and apply the test above."""
    kernels = build_cell(cell, seed=seed, plant=plant)
    bench_seconds, reference_seconds = [], []
    with one_thread_no_gc():
        for _ in range(WARMUP_CALLS):
            kernels.bench()
            kernels.reference()
        for index in range(rounds):
            gc.collect()
            if index % 2 == 0:
                bench, ref = paired_round(kernels.bench, kernels.reference, cell.calls)
            else:
                ref, bench = paired_round(kernels.reference, kernels.bench, cell.calls)
            bench_seconds.append(bench)
            reference_seconds.append(ref)
    ratios = [b / r for b, r in zip(bench_seconds, reference_seconds, strict=True)]
    geometric_mean, lower_bound = lower_confidence_bound(ratios)
    upper_bound = upper_confidence_bound(ratios)
    return Verdict(
        cell=cell.name,
        ratios=ratios,
        bench_seconds=bench_seconds,
        reference_seconds=reference_seconds,
        calls=cell.calls,
        batch=cell.batch,
        geometric_mean=geometric_mean,
        lower_bound=lower_bound,
        upper_bound=upper_bound,
        passed=lower_bound <= THRESHOLD,
        stale=upper_bound < STALE,
        plant=PLANT if plant is None else plant,
    )
