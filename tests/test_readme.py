"""README.md stays true: its worked estimator example runs and is unbiased."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_worked_estimator_example_runs_and_is_unbiased():
    readme = (ROOT / "README.md").read_text()
    example = readme.split("`estimators/split_baseline.py`")[1].split("```python\n", 1)[1].split("```", 1)[0]
    # In a subprocess: defining the class registers it, which must not leak into other tests.
    check = (
        "from bench.runner import run_cell\n"
        "from problems.categorical import Categorical\n"
        "row = run_cell(Categorical(), SplitBaseline(), n_samples=4, n_estimates=20000, seed=3).row\n"
        "assert row['status'] == 'ok', row\n"
        "assert row['bias_pvalue'] > 1e-3, row  # α = 1e-3 family-wise (Bonferroni over dims)\n"
        "import estimators\n"
        "assert estimators.REGISTRY['split_baseline'] is SplitBaseline\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", example + check], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
