"""The public tables: per-cell files written atomically, merged into cells.parquet and dims.parquet.

Layout of a sweep directory ``out``:
  out/cells/<cell>.parquet        one row per finished cell (written when the cell completes)
  out/cells/<cell>.dims.parquet   its per-dimension rows
  out/cells.parquet, out/dims.parquet   the merged tables (rewritten at the end of a sweep)
  out/plots/*.png
Run metadata (git commit, torch version, device, date, config) is JSON in the parquet schema
metadata under the key ``bench``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

METADATA_KEY = b"bench"
# Columns every cells.parquet row has, in order; config columns follow.
CELL_COLUMNS = [
    "cell", "problem", "estimator", "status", "reason", "unbiased", "n_samples", "n_estimates", "seed",
    "device", "dtype", "n_params", "cost_evals", "batch_size", "variance", "bias_norm", "mse",
    "exact_norm", "cosine", "bias_z_max", "bias_pvalue", "snr", "estimates_per_s", "seconds", "fit_seconds", "fit_steps", "fitted",
]  # fmt: skip
DIM_COLUMNS = ["cell", "problem", "estimator", "param", "exact", "mean", "var", "stderr", "z"]


def config_columns(
    problem_config: Mapping[str, Any], estimator_config: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """One column per problem/estimator config value, as {"problem": {...}, "estimator": {...}};
    lists become JSON text. A name that clashes with a fixed column (or between the two groups) is
    prefixed with ``problem.``/``estimator.``."""
    columns: dict[str, dict[str, Any]] = {"problem": {}, "estimator": {}}
    for group, config in (("problem", problem_config), ("estimator", estimator_config)):
        for key, value in config.items():
            clash = key in CELL_COLUMNS or key in columns["problem"]
            name = f"{group}.{key}" if clash else key
            columns[group][name] = (
                value if isinstance(value, (bool, int, float, str)) or value is None else (json.dumps(value))
            )
    return columns


def run_metadata(config: Any = None) -> dict[str, Any]:
    """Provenance for a table: git commit (if any), torch version, device name, date, config."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    device_name = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else (platform.processor() or platform.machine())
    )
    return {
        "git_commit": commit,
        "torch_version": torch.__version__,
        "device_name": device_name,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": config,
    }


def write_parquet_atomic(frame: pd.DataFrame, path: Path, metadata: Mapping[str, Any]) -> None:
    """Write ``frame`` to ``path`` via a temporary file and os.replace: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    schema_metadata = {
        **(table.schema.metadata or {}),
        METADATA_KEY: json.dumps(metadata, default=str).encode(),
    }
    table = table.replace_schema_metadata(schema_metadata)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        pq.write_table(table, temporary)
        os.chmod(temporary, 0o644)  # mkstemp makes it private; tables are for everyone who reads results
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_metadata(path: Path) -> dict[str, Any]:
    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata.get(METADATA_KEY, b"{}"))


def write_cell(
    out: Path,
    row: Mapping[str, Any],
    dims: list[Mapping[str, Any]],
    columns: Mapping[str, Mapping[str, Any]],
    metadata: Mapping[str, Any],
) -> None:
    """Write one finished cell's row (with its config ``columns`` from ``config_columns``) and its
    dimension rows."""
    cell = row["cell"]
    config = {**columns["problem"], **columns["estimator"]}
    full_row = {column: row.get(column) for column in CELL_COLUMNS} | config
    meta = {
        **metadata,
        "problem_columns": list(columns["problem"]),
        "estimator_columns": list(columns["estimator"]),
    }
    dims_frame = pd.DataFrame(
        [
            {"cell": cell, "problem": row["problem"], "estimator": row["estimator"], **config, **dim}
            for dim in dims
        ],
        columns=["cell", "problem", "estimator", *config, *DIM_COLUMNS[3:]],
    )
    # dims first: a cell row on disk promises its dims are there too.
    write_parquet_atomic(dims_frame, out / "cells" / f"{cell}.dims.parquet", meta)
    write_parquet_atomic(pd.DataFrame([full_row]), out / "cells" / f"{cell}.parquet", meta)


def unify_config_column(values: pd.Series) -> pd.Series:
    """A config column holds numbers or text; mixed cells (a list here, a number there) become text."""
    present = values.dropna()
    if present.map(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)).all():
        return pd.to_numeric(values)
    if present.map(lambda v: isinstance(v, bool)).all():
        return values
    return values.map(lambda v: v if v is None or isinstance(v, str) else json.dumps(v))


def merge(out: Path, metadata: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Merge every per-cell file under ``out/cells`` into out/cells.parquet and out/dims.parquet."""
    cell_files = sorted(p for p in (out / "cells").glob("*.parquet") if not p.name.endswith(".dims.parquet"))
    if not cell_files:
        raise FileNotFoundError(f"no finished cells under {out / 'cells'}")
    groups: dict[str, list[str]] = {"problem_columns": [], "estimator_columns": []}
    cell_frames, dim_frames = [], []
    for path in cell_files:
        cell_metadata = read_metadata(path)
        for group, names in groups.items():
            names.extend(name for name in cell_metadata.get(group, []) if name not in names)
        cell_frames.append(pd.read_parquet(path))
        dims_path = path.with_name(path.name.removesuffix(".parquet") + ".dims.parquet")
        if dims_path.exists():
            dim_frames.append(pd.read_parquet(dims_path))
    config_names = groups["problem_columns"] + groups["estimator_columns"]
    cells = pd.concat([f.astype(object) for f in cell_frames], ignore_index=True)
    dims = (
        pd.concat([f.astype(object) for f in dim_frames], ignore_index=True)
        if dim_frames
        else (pd.DataFrame(columns=DIM_COLUMNS))
    )
    cells = cells.reindex(columns=CELL_COLUMNS + config_names)
    dims = dims.reindex(columns=["cell", "problem", "estimator", *config_names, *DIM_COLUMNS[3:]])
    for column in cells.columns:
        cells[column] = unify_config_column(cells[column]) if column in config_names else cells[column]
    for column in config_names:
        dims[column] = unify_config_column(dims[column])
    cells = cells.infer_objects()
    for column in ("n_params", "batch_size", "cost_evals"):
        cells[column] = cells[column].astype("Int64")  # integers, null where a cell did not run
    cells["unbiased"] = cells["unbiased"].astype("boolean")
    dims = dims.infer_objects()
    meta = {**metadata, **groups}
    write_parquet_atomic(dims, out / "dims.parquet", meta)
    write_parquet_atomic(cells, out / "cells.parquet", meta)
    return cells, dims


def read_tables(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The merged tables of a sweep and their metadata."""
    cells_path = out / "cells.parquet"
    if not cells_path.exists():
        raise FileNotFoundError(f"{cells_path} not found: is {out} a bench sweep directory?")
    return pd.read_parquet(cells_path), pd.read_parquet(out / "dims.parquet"), read_metadata(cells_path)
