"""Training runs on disk: ids, per-run files, checkpoints, resume, and the merged tables.

  out/.bench/runs/<run>/curve.parquet    the run's evaluations so far (rewritten after each one)
  out/.bench/runs/<run>/basket.parquet   the basket's measurements at the same points
  out/.bench/runs/<run>/checkpoint.pt    parameters, optimizer, streams and counters after the last
                                         evaluation: a killed run resumes from there
  out/curves.parquet, out/basket.parquet the command's runs merged (only this command's: another
                                         command's runs in the same ``out`` stay in .bench/runs)

Every file is written atomically (a temporary file, then os.replace). A run's status is in its
curve rows: ``ok`` (finished), ``failed`` (with ``reason``; the others go on) or ``partial``
(stopped by a signal or the time limit; rerunning the command resumes it from its checkpoint).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import torch

from bench.files import replaced_atomically
from bench.output import (
    config_frame,
    read_parquet_file,
    scratch,
    typed,
    write_parquet_atomic,
    write_table_atomic,
)
from bench.runner import code_of

RUN_KEYS = (
    "n_samples",
    "seed",
    "dtype",
    "steps",
    "eval_every",
    "optimizer",
    "lr",
    "eval_estimates",
    "eval_samples",
)
CURVE_TYPES = {
    "run": "string", "problem": "string", "estimator": "string", "n_samples": "Int64", "seed": "Int64",
    "dtype": "string", "optimizer": "string", "lr": "float64", "steps": "Int64", "eval_every": "Int64",
    "eval_estimates": "Int64", "eval_samples": "Int64", "basket": "string", "device": "string",
    "status": "string", "reason": "string", "step": "Int64", "cost_evals": "Int64", "seconds": "float64",
    "objective": "float64", "objective_source": "string", "objective_stderr": "float64",
    "objective_iwae": "float64", "objective_iwae_stderr": "float64", "direction": "string",
    "variance": "float64", "variance_ci_low": "float64", "variance_ci_high": "float64",
    "bias_norm": "float64", "eval_seconds": "float64",
}  # fmt: skip
BASKET_TYPES = {
    "run": "string", "problem": "string", "run_estimator": "string", "n_samples": "Int64", "seed": "Int64",
    "step": "Int64", "estimator": "string", "variance": "float64", "variance_ci_low": "float64",
    "variance_ci_high": "float64", "bias_norm": "float64",
}  # fmt: skip
CONFIG_COLUMNS = ("_problem_config", "_estimator_config")


def run_id(names: dict[str, str], configs: dict[str, dict[str, Any]], settings: dict[str, Any]) -> str:
    """A stable id: a hash of everything that defines the run (not the device), including the code
    of its problem and estimator and the basket's estimators."""
    from bench.registry import REGISTRIES, default_config

    code = code_of(REGISTRIES["problem"][names["problem"]], REGISTRIES["estimator"][names["estimator"]])
    basket = [[name, default_config("estimator", name)] for name in settings["basket"]]
    key = ["train", names["problem"], configs["problem"], names["estimator"], configs["estimator"],
           {k: settings[k] for k in RUN_KEYS}, basket, code]  # fmt: skip
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_dir(out: Path, run: str) -> Path:
    return scratch(out) / "runs" / run


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """torch.save, atomically: a kill never leaves half a checkpoint."""
    with replaced_atomically(path) as temporary:
        torch.save(payload, temporary)


def load_checkpoint(out: Path, run: str) -> dict[str, Any] | None:
    path = run_dir(out, run) / "checkpoint.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, ValueError):
        return None


def write_run(out: Path, run: str, rows: list[dict[str, Any]], basket_rows: list[dict[str, Any]],
              metadata: dict[str, Any]) -> None:  # fmt: skip
    folder = run_dir(out, run)
    if basket_rows:
        write_table_atomic(pa.Table.from_pylist(basket_rows), folder / "basket.parquet", metadata)
    write_table_atomic(pa.Table.from_pylist(rows), folder / "curve.parquet", metadata)


def run_status(out: Path, run: str) -> str | None:
    """``ok``, ``failed`` or ``partial`` as the run's file says; None without one."""
    path = run_dir(out, run) / "curve.parquet"
    try:
        statuses = read_parquet_file(path).column("status").to_pylist()
    except (OSError, KeyError, pa.ArrowException):
        return None
    return statuses[-1] if statuses else None


def finished_runs(out: Path) -> set[str]:
    folder = scratch(out) / "runs"
    if not folder.is_dir():
        return set()
    return {path.name for path in folder.iterdir() if (path / "curve.parquet").exists()}


def qualified(column: str) -> str:
    """A config column named like a training column (vae_bernoulli's ``eval_samples``), as
    ``problem.eval_samples``: the training key is the one the run used."""
    from bench.output import config_schema

    for (group, key), (name, _dtype) in config_schema().items():
        if name == column:
            return f"{group}.{key}"
    return f"config.{column}"


def merge_runs(out: Path, runs: list[str], metadata: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """out/curves.parquet and out/basket.parquet from the runs' files (those that have one)."""
    curves, baskets = [], []
    for run in runs:
        folder = run_dir(out, run)
        if (folder / "curve.parquet").exists():
            curves.append(read_parquet_file(folder / "curve.parquet"))
        if (folder / "basket.parquet").exists():
            baskets.append(read_parquet_file(folder / "basket.parquet"))
    raw = pa.concat_tables(curves, promote_options="permissive").to_pandas().astype(object)
    for column in CONFIG_COLUMNS:
        if column not in raw:
            raw[column] = None
    configs = config_frame(raw)
    configs = configs.rename(columns={c: qualified(c) for c in configs.columns if c in CURVE_TYPES})
    table = pd.concat([typed(raw, CURVE_TYPES)[list(CURVE_TYPES)], configs], axis=1)
    first = ["run", "problem", "estimator", *configs.columns]
    table = table[first + [c for c in CURVE_TYPES if c not in first]]
    order = ["problem", "estimator", *configs.columns, "n_samples", "seed", "run", "step"]
    table = table.sort_values(order, kind="stable", na_position="first").reset_index(drop=True)
    if baskets:
        basket = pa.concat_tables(baskets, promote_options="permissive").to_pandas()
    else:
        basket = pd.DataFrame(columns=list(BASKET_TYPES))
    basket = typed(basket, BASKET_TYPES)[list(BASKET_TYPES)]
    basket = basket.sort_values(["problem", "run", "step", "estimator"], kind="stable").reset_index(drop=True)
    meta = {**metadata, "problem_columns": [c for c in configs.columns if c in configs],
            "runs": len(runs)}  # fmt: skip
    write_parquet_atomic(table, out / "curves.parquet", meta)
    write_parquet_atomic(basket, out / "basket.parquet", meta)
    return table, basket
