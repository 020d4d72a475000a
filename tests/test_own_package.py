"""README's "Your own estimator, in your own package" and "Your own model", followed as written:
bench's wheel in a fresh virtual environment, a throwaway package declaring the entry point
pip-installed beside it, swept from another directory, and the package's own pytest run through
``bench.testing.parametrize_with_checks`` (green for the README's estimator, red for a biased one
that claims otherwise); and the same estimator as a file through ``plugins=``.

The venv sees the system's packages (torch and the other dependencies; no network, and no second
copy of torch; pip and setuptools too, hence ``--without-pip``: a venv's own older setuptools
cannot build a wheel offline), but bench itself comes from the wheel installed into it. The one departure from
README: pip gets ``--no-build-isolation --no-deps``, since the test machine builds offline.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
PIP = ["--quiet", "--disable-pip-version-check", "--no-build-isolation", "--no-deps"]


def section(title: str) -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def run(command: list[str] | str, cwd: Path, env: dict[str, str], timeout: float = 600):
    result = subprocess.run(
        command,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        shell=isinstance(command, str),
    )
    return result


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A fresh venv holding bench's wheel; its bin/ first on PATH."""
    home = tmp_path_factory.mktemp("own")
    wheels = home / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", *PIP, "-w", str(wheels), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(home / "venv")],
        check=True,
    )
    python = home / "venv" / "bin" / "python"
    wheel = next(wheels.glob("bench-*.whl"))
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", *PIP, "--force-reinstall", str(wheel)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    env = {**os.environ, "PATH": f"{home / 'venv' / 'bin'}:{os.environ['PATH']}", "MPLBACKEND": "Agg"}
    env.pop("PYTHONPATH", None)
    where = subprocess.run([str(python), "-c", "import bench; print(bench.__file__)"], env=env,
                           cwd=home, capture_output=True, text=True, check=True)  # fmt: skip
    assert str(home / "venv") in where.stdout, where.stdout  # the wheel's bench, not the checkout's
    return home, env


def write_package(home: Path, estimator_source: str, test_source: str) -> Path:
    text = section("Your own estimator, in your own package")
    (toml,) = blocks(text, "toml")
    package = home / "mylab"
    (package / "mylab").mkdir(parents=True, exist_ok=True)
    (package / "tests").mkdir(exist_ok=True)
    (package / "pyproject.toml").write_text(toml)
    (package / "mylab" / "__init__.py").write_text("")
    (package / "mylab" / "estimators.py").write_text(estimator_source)
    (package / "tests" / "test_bench.py").write_text(test_source)
    return package


@pytest.mark.slow
def test_your_own_estimator_in_your_own_package(venv: tuple[Path, dict[str, str]]):
    home, env = venv
    text = section("Your own estimator, in your own package")
    estimator_source, test_source, notebook = blocks(text, "python")
    (commands,) = blocks(text, "bash")
    assert "`mylab/mylab/estimators.py`" in text and "`mylab/tests/test_bench.py`" in text
    package = write_package(home, estimator_source, test_source)
    elsewhere = home / "elsewhere"
    elsewhere.mkdir()

    # Not installed yet: the same estimator as a file, through the plugins key.
    sweep = run(["bench", "sweep", f"plugins={package / 'mylab' / 'estimators.py'}", "problem=bernoulli",
                 "estimator=indep_baseline,rloo", "n_samples=2", "n_estimates=2000", "out=by_file"],
                cwd=elsewhere, env=env)  # fmt: skip
    assert sweep.returncode == 0, sweep.stdout[-2000:] + sweep.stderr[-2000:]
    assert set(pd.read_parquet(elsewhere / "by_file" / "cells.parquet")["estimator"]) == {
        "indep_baseline",
        "rloo",
    }

    # README's commands, in order: install, list, sweep (pip offline: see the module docstring).
    script = commands.replace("pip install ./mylab", f"python -m pip install {' '.join(PIP)} ./mylab")
    script = script.replace("bench sweep ", f"cd {elsewhere} && bench sweep ").replace(
        "n_estimates=5000", "n_estimates=5000 out=by_entry_point"
    )
    done = run(f"set -e\n{script}", cwd=home, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "indep_baseline" in done.stdout and "entry point mylab (distribution mylab)" in done.stdout
    cells = pd.read_parquet(elsewhere / "by_entry_point" / "cells.parquet")
    mine = cells[cells["estimator"] == "indep_baseline"]
    assert len(mine) == 8 and sorted(set(mine["scale"])) == [1.0, 2.0]
    assert (mine["conformance"] == "pass").all()

    # The package's own test suite through bench's conformance kit: green as written...
    tests = run([str(home / "venv" / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                 str(package / "tests")], cwd=elsewhere, env=env)  # fmt: skip
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert re.search(r"\d+ passed", tests.stdout)
    # ... and red for an estimator whose baseline uses its own sample's cost but claims unbiasedness
    # (a test module of the package's own that defines it: the installed copy is not edited).
    biased = estimator_source.replace("baseline = self.scale * cost[half:].mean()",
                                      "baseline = self.scale * cost[:half]")  # fmt: skip
    assert biased != estimator_source
    biased = biased.replace('name = "indep_baseline"', 'name = "own_cost_baseline"')
    biased += "\n\n" + test_source.replace("from mylab.estimators import IndepBaseline\n", "")
    (package / "tests" / "test_biased.py").write_text(biased)
    tests = run([str(home / "venv" / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                 str(package / "tests" / "test_biased.py")], cwd=elsewhere, env=env)  # fmt: skip
    assert tests.returncode == 1, tests.stdout[-3000:]
    failed = re.findall(r"FAILED \S+check_unbiased-(\w+)", tests.stdout)
    assert sorted(set(failed)) == ["bernoulli", "categorical", "gaussian", "multicategorical"], tests.stdout[
        -3000:
    ]
    (package / "tests" / "test_biased.py").unlink()

    # From a script, as README shows.
    script_run = run([str(home / "venv" / "bin" / "python"), "-c", notebook + "\nprint(len(cells))"],
                     cwd=elsewhere, env=env)  # fmt: skip
    assert script_run.returncode == 0, script_run.stderr[-3000:]
    assert script_run.stdout.split()[-1] == "8"


@pytest.mark.slow
def test_your_own_model(venv: tuple[Path, dict[str, str]]):
    home, env = venv
    text = section("Your own model")
    (source,) = blocks(text, "python")
    (command,) = blocks(text, "bash")
    model_dir = home / "model"
    model_dir.mkdir()
    (model_dir / "sbn.py").write_text(source)
    done = run(command.strip() + " out=model_out", cwd=model_dir, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cells = pd.read_parquet(model_dir / "model_out" / "cells.parquet")
    assert set(cells["status"]) == {"ok"}
    assert set(cells["exact_source"]) == {"estimated"}
    assert (cells["conformance"] == "pass").all()
