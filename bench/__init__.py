"""bench: measure Monte-Carlo gradient estimators against exact gradients.

The stable API (docs/api.md): write an estimator or a problem with these names, run it from Python
with ``bench.run``, test it in your own suite with ``bench.testing``::

    from bench import Estimator, Problem, detached, score_function_surrogate
    cells, dims = bench.run(problem="bernoulli", estimator=["reinforce", MyEstimator()], n_samples=[2, 8])
    curves, basket = bench.train(problem="bernoulli", estimator=["reinforce", "rloo"], seed=[0, 1, 2])

Names are imported on first use, so ``import bench`` (and ``bench compare``) stays light.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

# In a source checkout estimators/ and problems/ sit beside bench/ (the repository layout); an
# installed wheel has them inside it as bench/estimators and bench/problems. Either way they are
# imported as bench.estimators and bench.problems, so a user's own top-level `problems` or
# `estimators` package never collides with bench's.
_checkout = Path(__file__).resolve().parent.parent
if not (Path(__file__).resolve().parent / "estimators").is_dir() and (_checkout / "estimators").is_dir():
    __path__.append(str(_checkout))

_API: dict[str, str] = {
    "Estimator": "bench.estimators.base",
    "FitReport": "bench.estimators.base",
    "fit_by_variance": "bench.estimators.base",
    "per_estimate_gradients": "bench.estimators.base",
    "detached": "bench.problems.base",
    "score_function_surrogate": "bench.estimators.base",
    "positive_float": "bench.estimators.base",
    "positive_int": "bench.estimators.base",
    "Problem": "bench.problems.base",
    "Params": "bench.problems.base",
    "as_tensor_list": "bench.problems.base",
    "open_uniform": "bench.problems.base",
    "latent": "bench.problems",
    "ConfigError": "bench.errors",
    "NotApplicable": "bench.errors",
    "run": "bench.api",
    "train": "bench.training.api",
    "run_cell": "bench.runner",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'bench' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
