"""The performance gate (design and false-alarm rate: ``tests/perf/gate.py``).

``test_no_slowdown`` fails a cell when bench's kernel is shown (one-sided, α = 1e-3) to be more than
10% slower than its frozen reference, timed side by side in this process, and when it is shown to be
more than 15% faster (a stale reference, under which a slowdown could hide). pytest-benchmark records
each cell's figures (ratio, its lower bound, thread-CPU throughput of both sides) under
``extra_info``; ``--benchmark-json=results/perf.json`` keeps them. Run it alone with
``python -m pytest -q tests/perf``; leave it out of a quick local run with ``-m "not perf"``.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.perf.gate import (
    CELLS,
    STALE,
    THRESHOLD,
    build_cell,
    lower_confidence_bound,
    run_gate,
    upper_confidence_bound,
)

pytestmark = pytest.mark.perf


@pytest.mark.parametrize("cell", CELLS, ids=lambda cell: cell.name)
def test_reference_computes_what_bench_computes(cell):
    """Each frozen reference is the same computation as bench's kernel: the same estimates from the
    same seeds (to rounding). If bench's computation changes on purpose, refreeze the reference."""
    kernels = build_cell(cell, seed=3, plant=0.0)
    bench, frozen = kernels.bench(), kernels.reference()
    assert bench.shape == frozen.shape == (cell.batch, kernels.n_params)
    scale = float(frozen.abs().max()) or 1.0
    torch.testing.assert_close(bench, frozen, rtol=0.0, atol=64 * torch.finfo(bench.dtype).eps * scale)


@pytest.mark.parametrize("cell", CELLS, ids=lambda cell: cell.name)
def test_no_slowdown(cell, benchmark):
    verdict = benchmark.pedantic(run_gate, args=(cell,), rounds=1, iterations=1)
    benchmark.extra_info.update(verdict.figures())
    assert verdict.passed, (
        f"{cell.name}: bench's kernel takes {verdict.geometric_mean:.3f}× the frozen reference's thread "
        f"CPU time (one-sided 99.9% lower bound {verdict.lower_bound:.3f} > {THRESHOLD}); per-round "
        f"ratios {[round(ratio, 3) for ratio in verdict.ratios]}"
    )
    assert not verdict.stale, (
        f"{cell.name}: bench's kernel takes {verdict.geometric_mean:.3f}× the frozen reference's time "
        f"(upper bound {verdict.upper_bound:.3f} < {STALE}): bench got faster and the reference did "
        "not follow, so a slowdown could hide in the margin. Refreeze it (tests/perf/reference.py)."
    )


def test_the_bound_separates_a_slowdown_from_noise():
    """The decision rule on synthetic rounds: 1.3 ± 5% fails, 1.0 ± 10% passes, and the bound is the
    t-interval's (checked against a hand computation)."""
    noise = [math.exp(0.05 * math.sin(7.0 * i)) for i in range(12)]  # deterministic ±5% wiggle
    slow = [1.3 * n for n in noise]
    _, bound = lower_confidence_bound(slow)
    assert bound > THRESHOLD
    same = [n**2 for n in noise]
    _, bound = lower_confidence_bound(same)
    assert bound < THRESHOLD
    logs = [math.log(r) for r in slow]
    mean = sum(logs) / 12
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / 11)
    t_quantile = 4.0247  # Student's t, 11 degrees of freedom, 0.999 quantile
    assert upper_confidence_bound([0.7 * n for n in noise]) < STALE  # a stale reference is caught
    assert upper_confidence_bound(same) > STALE
    assert lower_confidence_bound(slow)[1] == pytest.approx(
        math.exp(mean - t_quantile * sd / math.sqrt(12)), rel=1e-4
    )


def test_the_plant_adds_the_asked_fraction_of_batches():
    kernels = build_cell(CELLS[0], plant=0.3)
    for _ in range(10):
        kernels.bench()
    assert kernels.planted[0] == 3  # 10 calls × 0.3 batches
