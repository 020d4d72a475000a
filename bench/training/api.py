"""``bench.train``: training runs in this process, for notebooks and scripts, returning the tables.

The keys, their defaults and their validation are ``bench train``'s (conf/train.yaml,
``bench.settings.train_settings``); problems and estimators are registry names (your own classes
register when their module is imported: pass ``plugins=`` or import it, then use the name); a list
sweeps a key (``basket`` is one list, not a sweep).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import ConfigError

NOT_SWEPT = ("plugins", "basket")


def plan_runs(problem: Any, estimator: Any, settings: dict[str, Any]) -> list[tuple[Any, str]]:
    """[(JobSpec, run id)] for every combination, validated before any work, duplicates dropped."""
    from bench import plugins
    from bench.api import check_members, component_grid, components, grid, split_settings
    from bench.plan import JobSpec
    from bench.training.command import TRAIN

    values, members = split_settings(settings, "train")
    plugins.load(values.get("plugins"))
    chosen = {"problem": components("problem", problem), "estimator": components("estimator", estimator)}
    if any(part.instance is not None for parts in chosen.values() for part in parts):
        raise ConfigError(
            "problem", "bench.train takes registry names (a class with a name registers on import)"
        )
    check_members(members, chosen)
    runs, seen = [], set()
    for parts in component_grid(chosen, members):
        for combination in grid(values, NOT_SWEPT):
            container = {**combination, **{g: part.config for g, part in parts.items()}}
            names = {g: part.name for g, part in parts.items()}
            spec = JobSpec(names, {g: part.config for g, part in parts.items()}, {}, container)
            spec.settings = TRAIN.settings(container)
            TRAIN.check(container)
            run = TRAIN.identify(spec)
            if run not in seen:
                seen.add(run)
                runs.append((spec, run))
    return runs


def train(
    problem: Any = "cartpole", estimator: Any = "reinforce", **settings: Any
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train problems × estimators in this process; return (curves, basket) as DataFrames.

    ``settings``: the keys of ``bench train`` (``steps``, ``eval_every``, ``optimizer``, ``lr``,
    ``n_samples``, ``seed``, ``basket``, ``eval_estimates``, ``eval_samples``, ``dtype``, ``device``,
    ``threads``, ``plugins``, ``out``, ...), validated the same way; a list sweeps a key. Member keys
    go through a dict: ``bench.train("bernoulli", ["reinforce", "rloo"], **{"problem.theta": [0, 1, 2]})``.
    ``out``: a directory for the files (curves.parquet, basket.parquet, summary.txt, plots with
    ``plots=True``), from which a second call resumes; None (default) writes nothing. A failing run
    is recorded (``status`` failed, ``reason``) and the others go on, as in ``bench train``.
    """
    from bench.api import split_settings
    from bench.output import run_metadata
    from bench.sweep import check_writable
    from bench.training.execute import execute_run, finish
    from bench.training.runs import run_status

    runs = plan_runs(problem, estimator, settings)
    values, _ = split_settings(settings, "train")
    target = Path(values["out"]) if values.get("out") is not None else None
    out = target or Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        check_writable(out)
        metadata = run_metadata(json.loads(json.dumps(values, default=str)))
        started = time.time()
        for spec, run in runs:
            spec.container["out"] = str(out)
            if not (values["resume"] and run_status(out, run) in ("ok", "skipped")):
                execute_run(spec, run, out, metadata, started)
        finish(out, [run for _, run in runs], metadata, bool(values["plots"]), quiet=target is None)
        curves = pd.read_parquet(out / "curves.parquet")
        basket = pd.read_parquet(out / "basket.parquet")
        return curves, basket
    finally:
        if target is None:
            shutil.rmtree(out, ignore_errors=True)
