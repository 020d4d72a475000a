"""``bench compare BASELINE_DIR NEW_DIR``: two sweeps compared cell by cell.

Exit status: 0 no regression, 5 at least one regression (a cell that failed, a conformance
``fail``, a variance or a throughput significantly worse), 6 only with ``--strict`` and no
regression (a baseline cell missing from NEW, a cell that was ok and is skipped or failed, a matched
cell run at other settings), 2 bad input (a missing directory, no cells.parquet, no matched cell,
a bad option). The tests and their false-alarm rates: docs/compare.md.

One module per concern: ``reading`` (the tables), ``matching`` (pairs by id, then by setting),
``labels`` (status, conformance, the variance test), ``throughput`` (the throughput test),
``strict`` (what ``--strict`` fails on), ``report`` (text, JSON, exit status), ``cli`` (options).
"""

from __future__ import annotations

from bench.compare.cli import main, parser
from bench.compare.common import EXIT_BAD_INPUT, EXIT_OK, EXIT_REGRESSION, EXIT_STRICT, BadInput, Options
from bench.compare.labels import log_ratio_sd, variance_verdict

__all__ = [
    "EXIT_BAD_INPUT", "EXIT_OK", "EXIT_REGRESSION", "EXIT_STRICT", "BadInput", "Options", "log_ratio_sd",
    "main", "parser", "variance_verdict",
]  # fmt: skip
