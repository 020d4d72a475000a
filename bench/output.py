"""The public tables: per-cell files written atomically, merged into cells.parquet and dims.parquet.

Layout of a sweep directory ``out``:
  out/cells.parquet, out/dims.parquet   the sweep's tables: exactly the cells of the sweep that wrote
                                        them (reused or new), rewritten at its end
  out/summary.txt                       the summary printed at the end
  out/plots/                            PNG plots, and SVG copies for papers
  out/.bench/cells/<cell>.parquet       one finished cell's row (written when the cell completes;
  out/.bench/cells/<cell>.dims.parquet  resume reads them) and its per-dimension rows
  out/.bench/sweep.json                 the running sweep: its cells, start time, time limit
  out/.bench/multirun.yaml              the Hydra config of the last sweep into ``out``
  out/.bench/plan.json, plan-<run>.json the planned cells handed to parallel / cluster launcher jobs
  out/.bench/jobs.json (+ .jobs.lock)   cluster tasks in flight, by job id (bench.cluster)
  out/.bench/submitit/<job id>/         submitit's pickles and each cluster task's logs
  out/.bench/jobs/                      Hydra's job directory (Hydra requires one; nothing is kept in it)
Run metadata (bench version, git commit and whether the tree was dirty, code fingerprints, torch
version, device, CPU, threads, date, config) is JSON in the parquet schema metadata under ``bench``.

Column types never depend on which cells a sweep holds: fixed columns have fixed types
(``COLUMN_TYPES``), and each config column's type comes from the registry (``config_schema``).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from bench.files import replaced_atomically
from bench.verdicts import conformance, derive, holm_rejections, ratio_interval, variance_ratio  # noqa: F401

METADATA_KEY = b"bench"
SCRATCH = ".bench"
CONFIG_JSON = {"problem": "_problem_config", "estimator": "_estimator_config"}

# Every cells.parquet column before the config columns, with its pandas dtype.
COLUMN_TYPES: dict[str, str] = {
    "cell": "string", "problem": "string", "estimator": "string", "status": "string", "reason": "string",
    "unbiased": "boolean", "conformance": "string", "n_samples": "Int64", "n_estimates": "Int64",
    "seed": "Int64", "device": "string", "dtype": "string", "threads": "Int64", "load_avg": "float64",
    "n_params": "Int64", "cost_evals": "Int64", "batch_size": "Int64",
    "variance": "float64", "variance_stderr": "float64", "variance_ci_low": "float64",
    "variance_ci_high": "float64", "work_variance": "float64", "work_variance_ci_low": "float64",
    "work_variance_ci_high": "float64", "time_variance": "float64", "reference": "string",
    "variance_ratio": "float64", "variance_ratio_ci_low": "float64", "variance_ratio_ci_high": "float64",
    "work_ratio": "float64", "work_ratio_ci_low": "float64", "work_ratio_ci_high": "float64",
    "bias_norm": "float64", "mse": "float64", "exact_norm": "float64", "exact_source": "string",
    "cosine": "float64", "bias_z_max": "float64", "bias_pvalue": "float64", "bias_resolution": "float64",
    "snr": "float64",
    "skewness_max": "float64", "kurtosis_max": "float64", "clt_ok": "boolean",
    "estimates_per_s": "float64", "cpu_seconds": "float64", "timed_batches": "Int64",
    "batch_log_sd": "float64", "seconds": "float64",
    "fit_seconds": "float64", "fit_steps": "Int64", "fitted": "string",
}  # fmt: skip
CELL_COLUMNS = list(COLUMN_TYPES)
# Columns decided over the whole sweep when the tables are merged, not stored per cell.
DERIVED_COLUMNS = [
    "conformance", "work_variance", "work_variance_ci_low", "work_variance_ci_high", "time_variance",
    "reference", "variance_ratio", "variance_ratio_ci_low", "variance_ratio_ci_high", "work_ratio",
    "work_ratio_ci_low", "work_ratio_ci_high",
]  # fmt: skip
SETTING_COLUMNS = ["n_samples", "n_estimates", "seed", "dtype"]
DIM_TYPES: dict[str, str] = {
    "param": "string", "exact": "float64", "exact_stderr": "float64", "mean": "float64", "var": "float64",
    "stderr": "float64", "z": "float64", "var_stderr": "float64", "skewness": "float64",
    "kurtosis": "float64",
}  # fmt: skip
DIM_KEYS = ["cell", "problem", "estimator", *SETTING_COLUMNS]


def scratch(out: Path) -> Path:
    """Where per-cell files and Hydra's bookkeeping live, out of the user's way."""
    return out / SCRATCH


def cell_paths(out: Path, cell: str) -> tuple[Path, Path]:
    folder = scratch(out) / "cells"
    return folder / f"{cell}.parquet", folder / f"{cell}.dims.parquet"


# --- config columns -------------------------------------------------------------------------------
def value_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "Int64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "text"
    return "json"


def merged_kind(kinds: set[str]) -> str:
    """One pandas dtype for a key from the kinds of its values across the registry."""
    if kinds <= {"Int64"}:
        return "Int64"
    if kinds <= {"Int64", "float64"}:
        return "float64"
    if kinds == {"boolean"}:
        return "boolean"
    return "string"  # text, JSON text, or a mix: stored as text, lists as JSON


@functools.cache
def config_schema() -> dict[tuple[str, str], tuple[str, str]]:
    """(group, key) → (column name, pandas dtype) for every key of every problem and estimator
    with a YAML, from the types of the YAML defaults.

    Registry-wide, so no sweep changes a column's name or type. A key that two groups share
    (``hidden``, ``train_steps``) or that clashes with a fixed column is written as
    ``problem.<key>``/``estimator.<key>`` in both groups. A value that does not fit its key's type
    (a list for gaussian's ``k``, whose default is a number) goes to ``<column>_json``.
    """
    from bench.errors import ConfigError
    from bench.registry import GROUPS, default_config, group_options

    kinds: dict[tuple[str, str], set[str]] = {}
    for group in GROUPS:
        for name in group_options(group):
            try:
                defaults = default_config(group, name)
            except ConfigError:  # a plugin without defaults: the sweep refuses it, bench list shows why
                continue
            for key, value in defaults.items():
                kinds.setdefault((group, key), set()).add(value_kind(value))
    keys_by_group = {group: {key for g, key in kinds if g == group} for group in GROUPS}
    shared = keys_by_group["problem"] & keys_by_group["estimator"]
    schema = {}
    for (group, key), found in kinds.items():
        prefixed = key in shared or key in COLUMN_TYPES or key in DIM_TYPES or key in DIM_KEYS
        schema[(group, key)] = (f"{group}.{key}" if prefixed else key, merged_kind(found))
    return schema


def config_column(group: str, key: str, value: Any) -> tuple[str, str]:
    """The column name and dtype for one config key (keys unknown to the registry: by value)."""
    schema = config_schema()
    if (group, key) in schema:
        return schema[(group, key)]
    kind = value_kind(value)
    return f"{group}.{key}", "string" if kind in ("text", "json") else kind


def coerce(value: Any, dtype: str) -> Any:
    if value is None:
        return None
    if dtype == "string":
        return value if isinstance(value, str) else json.dumps(value)
    if dtype == "float64":
        return float(value)
    return value


COMPATIBLE = {"Int64": {"Int64"}, "float64": {"Int64", "float64"}, "boolean": {"boolean"}}


def config_values(problem_config: Mapping[str, Any], estimator_config: Mapping[str, Any]) -> dict[str, Any]:
    """{column: value} for one cell's configs, each value in its column's type. A value that does
    not fit its column's type (a list where the registry's default is a number) goes to its own
    JSON-text column ``<column>_json``, so no column ever changes type."""
    values = {}
    for group, config in (("problem", problem_config), ("estimator", estimator_config)):
        for key, value in config.items():
            column, dtype = config_column(group, key, value)
            if value is not None and dtype in COMPATIBLE and value_kind(value) not in COMPATIBLE[dtype]:
                column, dtype = f"{column}_json", "string"
            values[column] = coerce(value, dtype)
    return values


def config_dtypes() -> dict[str, str]:
    """Every config column of the registry and its dtype."""
    return dict(config_schema().values())


# --- metadata -------------------------------------------------------------------------------------
@functools.cache
def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; elsewhere what platform reports)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def git(*args: str) -> str | None:
    """A git command's output in bench's source tree, None when bench is not a git checkout."""
    source = Path(__file__).resolve().parent.parent
    if not (source / ".git").exists():
        return None
    try:
        run = subprocess.run(
            ["git", *args], cwd=source, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return run.stdout


@functools.cache
def git_commit() -> str | None:
    """The commit of bench's source tree, when it runs from a git checkout (None when installed)."""
    return (git("rev-parse", "HEAD") or "").strip() or None


@functools.cache
def git_dirty() -> bool | None:
    """Whether bench's source tree has uncommitted changes to tracked files (None when installed)."""
    status = git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status.strip())


def code_fingerprints() -> dict[str, str]:
    """``group:name`` → the code fingerprint of every registered problem and estimator (the part of
    each cell id that changes when its source does)."""
    from bench.component import code_fingerprint
    from bench.registry import REGISTRIES

    return {f"{group}:{name}": code_fingerprint(cls) for group, registry in REGISTRIES.items()
            for name, cls in sorted(registry.items())}  # fmt: skip


def run_metadata(config: Any = None) -> dict[str, Any]:
    """Provenance for a table: versions, commit, device, CPU and cores, threads, date, config."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        bench_version = version("bench")
    except PackageNotFoundError:
        bench_version = None
    cuda = torch.cuda.is_available()
    return {
        "bench_version": bench_version,
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "code_fingerprints": code_fingerprints(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device_name": torch.cuda.get_device_name() if cuda else cpu_model(),
        "cpu": cpu_model(),
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "hostname": platform.node(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": config,
    }


# --- files ----------------------------------------------------------------------------------------
def write_parquet_atomic(frame: pd.DataFrame, path: Path, metadata: Mapping[str, Any]) -> None:
    """Write ``frame`` to ``path`` via a temporary file and os.replace: readers never see half a file."""
    write_table_atomic(pa.Table.from_pandas(frame, preserve_index=False), path, metadata)


def write_table_atomic(table: pa.Table, path: Path, metadata: Mapping[str, Any]) -> None:
    """``write_parquet_atomic`` for an Arrow table."""
    schema_metadata = {
        **(table.schema.metadata or {}),
        METADATA_KEY: json.dumps(metadata, default=str).encode(),
    }
    table = table.replace_schema_metadata(schema_metadata)
    with replaced_atomically(path) as temporary:
        pq.write_table(table, temporary)


def write_text_atomic(text: str, path: Path) -> None:
    with replaced_atomically(path) as temporary:
        temporary.write_text(text)


def read_parquet_file(path: Path) -> pa.Table:
    with pq.ParquetFile(path) as file:
        return file.read()


def read_metadata(path: Path) -> dict[str, Any]:
    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata.get(METADATA_KEY, b"{}"))


def write_cell(
    out: Path,
    row: Mapping[str, Any],
    dims: list[Mapping[str, Any]],
    configs: Mapping[str, Mapping[str, Any]],
    metadata: Mapping[str, Any],
) -> None:
    """Write one finished cell's row and its dimension rows under out/.bench/cells/.

    ``configs`` = {"problem": {...}, "estimator": {...}} is kept as JSON beside the row, so the
    merge types the config columns by the registry's schema at merge time.
    """
    cell = row["cell"]
    full_row = {column: row.get(column) for column in CELL_COLUMNS if column not in DERIVED_COLUMNS}
    full_row.update({CONFIG_JSON[group]: json.dumps(configs[group]) for group in CONFIG_JSON})
    keys = {column: row.get(column) for column in DIM_KEYS}
    # Arrow tables straight from the Python values: building them through pandas took ~2/3 of a
    # sweep's per-cell writing (~7 ms a cell). Types need not be final here: the merge promotes and
    # types every column (a skipped cell's all-null columns included).
    if dims:
        dims_table = pa.Table.from_pylist([{**keys, **dim} for dim in dims])
    else:
        dims_table = pa.table({column: pa.nulls(0) for column in [*DIM_KEYS, *DIM_TYPES]})
    row_path, dims_path = cell_paths(out, cell)
    # dims first: a cell row on disk promises its dims are there too.
    write_table_atomic(dims_table, dims_path, metadata)
    write_table_atomic(pa.Table.from_pylist([full_row]), row_path, metadata)


def finished_cells(out: Path) -> dict[str, Path]:
    """Every cell id with a row file under out/.bench/cells."""
    folder = scratch(out) / "cells"
    if not folder.is_dir():
        return {}
    return {
        path.name.removesuffix(".parquet"): path
        for path in folder.glob("*.parquet")
        if not path.name.endswith(".dims.parquet") and not path.name.startswith(".")
    }


def read_cell_row(out: Path, cell: str) -> dict[str, Any] | None:
    """One cell's stored row (None if it is missing or unreadable)."""
    path, _ = cell_paths(out, cell)
    try:
        return pd.read_parquet(path).iloc[0].to_dict()
    except (OSError, ValueError, IndexError, pa.ArrowException):
        return None


# --- merging --------------------------------------------------------------------------------------
def typed(frame: pd.DataFrame, types: Mapping[str, str]) -> pd.DataFrame:
    """``frame`` with every column in ``types`` present (null where missing) and of that dtype."""
    frame = frame.copy()
    for column, dtype in types.items():
        values = frame[column] if column in frame else pd.Series([None] * len(frame), index=frame.index)
        values = values.astype(object).where(values.notna(), None)
        frame[column] = pd.array(values.tolist(), dtype=dtype) if len(values) else pd.array([], dtype=dtype)
    return frame


def config_frame(raw: pd.Series) -> pd.DataFrame:
    """Config columns from the per-cell JSON configs, typed by the registry's schema."""
    rows = [
        config_values(json.loads(problem or "{}"), json.loads(estimator or "{}"))
        for problem, estimator in zip(raw[CONFIG_JSON["problem"]], raw[CONFIG_JSON["estimator"]], strict=True)
    ]
    names = list(dict.fromkeys(name for row in rows for name in row))
    dtypes = config_dtypes()
    frame = pd.DataFrame(rows, columns=names, index=raw.index)
    return typed(frame, {name: dtypes.get(name, "string") if not name.endswith("_json") else "string"
                         for name in names})  # fmt: skip


def merge(
    out: Path,
    metadata: Mapping[str, Any],
    cells: Iterable[str] | None = None,
    *,
    alpha: float = 1e-3,
    reference: str | None = "reinforce",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Merge the per-cell files of ``cells`` (default: every finished cell under ``out``) into
    out/cells.parquet and out/dims.parquet; cells without a file are left out (not finished)."""
    available = finished_cells(out)
    wanted = (
        list(available) if cells is None else [cell for cell in dict.fromkeys(cells) if cell in available]
    )
    if not wanted:
        raise FileNotFoundError(f"no finished cells under {scratch(out) / 'cells'}")
    row_tables, dim_tables = [], []
    # ParquetFile.read, not read_table: the dataset machinery behind read_table doubles the time of
    # reading ~1 300 one-row files (the default sweep: 1.5 s vs 0.8 s, measured).
    for cell in sorted(wanted):
        row_path, dims_path = cell_paths(out, cell)
        row_tables.append(read_parquet_file(row_path))
        if dims_path.exists():
            dim_tables.append(read_parquet_file(dims_path))
    # Per-cell files may differ in columns (a skipped cell has no statistics): concatenate by name.
    raw = pa.concat_tables(row_tables, promote_options="permissive").to_pandas().astype(object)
    for column in CONFIG_JSON.values():
        if column not in raw:
            raw[column] = None
    configs = config_frame(raw)
    table = typed(raw, COLUMN_TYPES)[CELL_COLUMNS]
    table = derive(table, configs, alpha=alpha, reference=reference)
    cells_table = pd.concat([table, configs], axis=1)
    order = ["problem", "estimator", *configs.columns, "n_samples", "seed", "cell"]
    cells_table = cells_table.sort_values(order, kind="stable", na_position="first").reset_index(drop=True)

    dims = pa.concat_tables(dim_tables, promote_options="permissive").to_pandas() if dim_tables else None
    dims = typed(
        dims if dims is not None else pd.DataFrame(columns=[*DIM_KEYS, *DIM_TYPES]),
        {**{k: COLUMN_TYPES[k] for k in DIM_KEYS}, **DIM_TYPES},
    )
    by_cell = cells_table.set_index("cell")[list(configs.columns)]
    dims = dims[[*DIM_KEYS, *DIM_TYPES]].join(by_cell, on="cell")
    dims = dims[[*DIM_KEYS, *configs.columns, *DIM_TYPES]]
    meta = {**metadata, "problem_columns": group_columns("problem", configs.columns),
            "estimator_columns": group_columns("estimator", configs.columns),
            "alpha": alpha, "reference": reference}  # fmt: skip
    write_parquet_atomic(dims, out / "dims.parquet", meta)
    write_parquet_atomic(cells_table, out / "cells.parquet", meta)
    return cells_table, dims


def group_columns(group: str, columns: Iterable[str]) -> list[str]:
    names = {name for (g, _key), (name, _dtype) in config_schema().items() if g == group}
    return [c for c in columns if c in names or c.startswith(f"{group}.")]


def read_tables(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The merged tables of a sweep and their metadata."""
    cells_path = out / "cells.parquet"
    if not cells_path.exists():
        raise FileNotFoundError(f"{cells_path} not found: is {out} a bench sweep directory?")
    return pd.read_parquet(cells_path), pd.read_parquet(out / "dims.parquet"), read_metadata(cells_path)
