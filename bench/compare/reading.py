"""Reading a sweep: its out directory's cells.parquet and the metadata bench wrote into it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.compare.common import BadInput

REQUIRED_COLUMNS = ["cell", "problem", "estimator", "status", "n_samples"]
# Columns the checks read; a table without one (an older sweep) skips or limits that check.
OPTIONAL_COLUMNS = [
    "conformance", "variance", "variance_stderr", "seed", "n_estimates", "dtype", "estimates_per_s",
    "load_avg", "threads", "cpu_seconds", "timed_batches", "batch_log_sd",
]  # fmt: skip


@dataclass
class Sweep:
    role: str  # "BASELINE" | "NEW"
    path: Path
    cells: pd.DataFrame
    metadata: dict[str, Any]
    config_columns: list[str]
    cores: int  # usable cores of the machine that ran the sweep


def sweep_directory(text: str, role: str) -> Path:
    """The path of cells.parquet in the sweep directory ``text``, or BadInput saying what is there."""
    path = Path(text)
    if not path.exists():
        raise BadInput(f"{role} {path}: no such directory")
    if not path.is_dir():
        raise BadInput(
            f"{role} {path}: not a directory (give the sweep's out directory, which holds cells.parquet)"
        )
    cells_path = path / "cells.parquet"
    if not cells_path.is_file():
        if (path / ".bench" / "cells").is_dir():
            hint = (
                "it holds per-cell files but no merged table: the sweep is still running or was stopped "
                f"before merging (`bench plot {path}` merges the finished cells)"
            )
        else:
            hint = "is it the out directory of a `bench sweep`?"
        raise BadInput(f"{role} {path}: no cells.parquet; {hint}")
    return cells_path


def read_table(cells_path: Path, role: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The cells and bench's metadata of one table, checked for the columns every check needs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(cells_path)
        cells = table.to_pandas()
        metadata = json.loads((table.schema.metadata or {}).get(b"bench", b"{}"))
    except (OSError, ValueError, pa.ArrowException) as error:
        raise BadInput(f"{role} {cells_path}: not a readable parquet table ({error})") from error
    lacking = [column for column in REQUIRED_COLUMNS if column not in cells]
    if lacking:
        raise BadInput(
            f"{role} {cells_path}: missing column(s) {', '.join(lacking)}; not a bench cells table"
        )
    if cells.empty:
        raise BadInput(f"{role} {cells_path}: the table has no cells")
    repeated = cells["cell"][cells["cell"].duplicated()]
    if len(repeated):
        raise BadInput(
            f"{role} {cells_path}: cell id(s) repeat ({', '.join(map(str, repeated[:3]))}); "
            "bench writes each cell once, was the table concatenated by hand?"
        )
    return cells.reset_index(drop=True), metadata if isinstance(metadata, dict) else {}


def load_sweep(text: str, role: str) -> Sweep:
    """A sweep directory's cells.parquet and metadata, or BadInput naming what is wrong."""
    path = Path(text)
    cells, metadata = read_table(sweep_directory(text, role), role)
    cores = metadata.get("usable_cores") or metadata.get("cpu_count")
    if not cores:  # a table without bench's metadata; bench.output imports torch, so only then
        from bench.output import usable_cores

        cores = usable_cores()
    return Sweep(role, path, cells, metadata, config_columns(cells, metadata), int(cores))


def config_columns(cells: pd.DataFrame, metadata: dict[str, Any]) -> list[str]:
    """The config columns: from the table's metadata (the merge records them), else every column
    that is not one of bench's fixed columns."""
    listed = [*(metadata.get("problem_columns") or []), *(metadata.get("estimator_columns") or [])]
    if listed:
        return [column for column in listed if column in cells]
    from bench.output import CELL_COLUMNS  # imports torch: only for tables without that metadata

    return [column for column in cells.columns if column not in CELL_COLUMNS]
