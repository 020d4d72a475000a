"""README.md and docs/ stay true: the worked built-in estimator example of docs/development.md runs
and is unbiased, README's two commands are the ones CI runs, every link between them resolves, and
a developer who follows "Adding an estimator to bench itself" literally keeps a green suite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_NAME = "split_baseline"
CHECK_NAME = "split_baseline_readme_check"  # a name no user file has: the check never clashes


def example_source() -> str:
    readme = (ROOT / "docs" / "development.md").read_text()
    after = readme.split(f"`estimators/{EXAMPLE_NAME}.py`")[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def test_worked_estimator_example_runs_and_is_unbiased():
    source = example_source()
    assert f'name = "{EXAMPLE_NAME}"' in source
    # Registered under its own name, so a user's estimators/split_baseline.py cannot clash with it.
    source = source.replace(f'name = "{EXAMPLE_NAME}"', f'name = "{CHECK_NAME}"')
    check = (
        "from bench.runner import run_cell\n"
        "from bench.problems.categorical import Categorical\n"
        "row = run_cell(Categorical(), SplitBaseline(), n_samples=4, n_estimates=20000, seed=3).row\n"
        "assert row['status'] == 'ok', row\n"
        "assert row['bias_pvalue'] > 1e-3, row  # α = 1e-3 family-wise (Bonferroni over dims)\n"
        "from bench import estimators\n"
        f"assert estimators.REGISTRY['{CHECK_NAME}'] is SplitBaseline\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", source + check], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr


@pytest.mark.slow
def test_following_the_readme_literally_keeps_the_check_green(tmp_path):
    # A copy of the project where the user added estimators/split_baseline.py and its YAML, as
    # README says; the README test (and the conformance suite's import of the registry) still pass.
    project = tmp_path / "project"
    ignore = shutil.ignore_patterns(".git", "results", "__pycache__", "*.egg-info", ".pytest_cache")
    shutil.copytree(ROOT, project, ignore=ignore)
    (project / "estimators" / f"{EXAMPLE_NAME}.py").write_text(example_source())
    (project / "conf" / "estimator" / f"{EXAMPLE_NAME}.yaml").write_text("{}\n")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_readme.py",
         "-k", "worked_estimator_example", "tests/test_estimators.py::test_registry_matches_conf"],
        cwd=project, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def test_readme_commands_are_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pip install torch==2.13.0" in readme and "torch==2.13.0" in ci
    assert "python -m pytest -q" in readme and "python -m pytest -q" in ci


def test_links_between_readme_and_docs_resolve():
    import re

    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.name} links to {target}, which does not exist"


def test_readme_is_a_guide_a_newcomer_reads_in_ten_minutes():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.split()) < 3500, len(readme.split())
    sections = [line for line in readme.splitlines() if line.startswith("## ")]
    assert sections[:3] == ["## Two commands", "## A five-minute tour", "## Keys"]
