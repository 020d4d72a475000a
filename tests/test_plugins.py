"""Plugins (bench.plugins), bench's own import names, code fingerprints in cell ids, and bench.run,
as a user meets them: subprocesses run from a directory of their own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

import bench
from bench.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

PLUGIN = '''
"""A test plugin: an unbiased estimator with a key, and nothing else."""
from torch import Tensor

from bench import Estimator, Params, Problem, detached, score_function_surrogate


class IndepHalf(Estimator):
    """REINFORCE with a baseline from the other half of the samples (times ``scale``).

    ĝ = (2/S) Σ_{s ≤ S/2} [∇f(x_s) + (f_s − b) ∇log p(x_s)],  b = scale · mean of the other half.
    """

    name = "indep_half"
    unbiased = True
    min_samples = 2

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = float(scale)

    def surrogate(self, problem: Problem, params: Params, noise: Tensor) -> Tensor:
        x = problem.sample(detached(params), noise)
        cost = problem.cost(params, x)
        half = cost.shape[0] // 2
        baseline = self.scale * cost[half:].mean()
        return score_function_surrogate(
            cost[:half], problem.log_prob(params, x)[:half], cost[:half] - baseline
        )
'''


def bench_command(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300):
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "MPLBACKEND": "Agg", **(env or {})},
    )  # fmt: skip


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    """A research repository of the user's own: its own `problems` and `estimators` packages (which
    would break bench if bench imported them) and a plugin file."""
    home = tmp_path / "lab"
    for package in ("problems", "estimators"):
        (home / package).mkdir(parents=True)
        (home / package / "__init__.py").write_text(f"raise ImportError('the user\\'s own {package}')\n")
    (home / "myplugin.py").write_text(PLUGIN)
    return home


def reused(stdout: str) -> int:
    match = re.search(r"(\d+) already finished in out are reused", stdout)
    return int(match[1]) if match else 0


def test_a_plugin_file_is_listed_and_swept_from_a_directory_with_its_own_packages(user_dir: Path):
    listing = bench_command("list", "plugins=myplugin.py", cwd=user_dir)
    assert listing.returncode == 0, listing.stderr
    block = listing.stdout.split("  indep_half", 1)[1].split("\n  ", 4)
    assert "from myplugin (myplugin.py, plugins key)" in listing.stdout
    assert "estimator.scale=1.0" in "".join(block)
    assert "bernoulli" in listing.stdout and "rloo" in listing.stdout  # the built-ins are still there
    # The same through the environment variable, and a sweep that varies the plugin's key.
    sweep = bench_command(
        "sweep", "problem=bernoulli,categorical", "estimator=indep_half,rloo", "n_samples=2",
        "estimator.scale=1,2", "n_estimates=3000", "out=out", "plots=false", "reference=rloo",
        cwd=user_dir, env={"BENCH_PLUGINS": "myplugin.py"},
    )  # fmt: skip
    assert sweep.returncode == 0, sweep.stdout[-2000:] + sweep.stderr[-2000:]
    cells = pd.read_parquet(user_dir / "out" / "cells.parquet")
    mine = cells[cells["estimator"] == "indep_half"]
    assert sorted(mine["scale"]) == [1.0, 1.0, 2.0, 2.0]
    assert cells["scale"].dtype == "float64"
    assert (mine["conformance"] == "pass").all()  # the verdict treats it as a built-in
    assert mine["work_ratio"].notna().all()  # ratios to the reference estimator, rloo here
    assert "indep_half" in (user_dir / "out" / "summary.txt").read_text()


def test_list_and_sweep_work_from_a_directory_holding_problems_and_estimators(user_dir: Path):
    run = bench_command("list", cwd=user_dir)
    assert run.returncode == 0, run.stderr
    sweep = bench_command(
        "sweep", "problem=bernoulli", "estimator=rloo", "n_samples=2", "n_estimates=1000", "out=o",
        "plots=false", cwd=user_dir,
    )  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr[-2000:]


def test_a_broken_plugin_stops_the_sweep_before_any_work_and_leaves_bench_list_working(tmp_path: Path):
    (tmp_path / "broken.py").write_text("raise RuntimeError('this plugin is broken')\n")
    (tmp_path / "good.py").write_text(PLUGIN)
    sweep = bench_command(
        "sweep", "plugins=good.py,broken.py", "problem=bernoulli", "estimator=rloo", "out=o", cwd=tmp_path
    )
    assert sweep.returncode == 2
    assert "broken.py (plugins key): RuntimeError: this plugin is broken" in sweep.stderr
    assert "Traceback" not in sweep.stderr + sweep.stdout
    assert not (tmp_path / "o").exists()  # nothing ran, nothing left behind
    listing = bench_command("list", "plugins=good.py,broken.py", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "indep_half" in listing.stdout
    assert "broken plugins (not imported):\n  broken.py (plugins key): RuntimeError" in listing.stdout


def test_an_installed_plugin_that_fails_names_its_distribution(tmp_path: Path):
    # A distribution's metadata on the path, as pip leaves it: an entry point to a missing module.
    info = tmp_path / "site" / "fakelab-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakelab\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[bench.plugins]\nfake = fakelab_gone.estimators\n")
    env = {"PYTHONPATH": str(tmp_path / "site")}
    sweep = bench_command("sweep", "problem=bernoulli", "estimator=rloo", "out=o", cwd=tmp_path, env=env)
    assert sweep.returncode == 2
    assert "fakelab_gone.estimators (entry point fake (distribution fakelab)): ModuleNotFoundError" in (
        sweep.stderr
    )
    listing = bench_command("list", cwd=tmp_path, env=env)
    assert listing.returncode == 0 and "fakelab_gone.estimators" in listing.stdout


def test_a_name_taken_by_a_builtin_names_both_modules(tmp_path: Path):
    (tmp_path / "clash.py").write_text(PLUGIN.replace('name = "indep_half"', 'name = "rloo"'))
    sweep = bench_command("sweep", "plugins=clash.py", "problem=bernoulli", "estimator=rloo", cwd=tmp_path)
    assert sweep.returncode == 2
    assert (
        "'rloo' is defined twice: by bench.estimators.rloo.ReinforceLeaveOneOut and by clash.IndepHalf"
        in (sweep.stderr)
    )


def test_a_keyword_without_default_is_an_error_naming_it(tmp_path: Path):
    source = PLUGIN.replace("scale: float = 1.0", "scale: float")
    (tmp_path / "nodefault.py").write_text(source)
    sweep = bench_command(
        "sweep", "plugins=nodefault.py", "problem=bernoulli", "estimator=indep_half", "out=o", cwd=tmp_path
    )
    assert sweep.returncode == 2
    assert "estimator.scale: indep_half (nodefault): the constructor keyword 'scale' has no default" in (
        sweep.stderr
    )
    listing = bench_command("list", "plugins=nodefault.py", cwd=tmp_path)
    assert listing.returncode == 0
    assert re.search(r"indep_half +BROKEN \(nodefault", listing.stdout)


def test_a_plugin_may_ship_yaml_beside_its_module(tmp_path: Path):
    (tmp_path / "withyaml.py").write_text(PLUGIN)
    (tmp_path / "indep_half.yaml").write_text("scale: 0.5  # the baseline's weight\n")
    listing = bench_command("list", "plugins=withyaml.py", cwd=tmp_path)
    assert "estimator.scale=0.5  # the baseline's weight" in listing.stdout


def test_editing_a_plugin_reruns_its_cells_and_nothing_else(tmp_path: Path):
    plugin = tmp_path / "edited.py"
    plugin.write_text(PLUGIN)
    command = ("sweep", "plugins=edited.py", "problem=bernoulli", "estimator=indep_half,rloo",
               "n_samples=4", "n_estimates=4000", "out=o", "plots=false")  # fmt: skip
    first = bench_command(*command, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    before = pd.read_parquet(tmp_path / "o" / "cells.parquet").set_index("estimator")
    # The edit changes the estimator's baseline weight from 1 to 0: a different variance.
    plugin.write_text(PLUGIN.replace("baseline = self.scale *", "baseline = 0.0 *"))
    second = bench_command(*command, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert reused(second.stdout) == 1  # rloo's cell; the edited estimator's cell ran again
    after = pd.read_parquet(tmp_path / "o" / "cells.parquet").set_index("estimator")
    assert after.loc["rloo", "cell"] == before.loc["rloo", "cell"]
    assert after.loc["indep_half", "cell"] != before.loc["indep_half", "cell"]
    assert after.loc["indep_half", "variance"] != before.loc["indep_half", "variance"]
    third = bench_command(*command, cwd=tmp_path)
    assert reused(third.stdout) == 2


def test_tables_record_code_fingerprints_and_a_dirty_tree(tmp_path: Path):
    import json

    import pyarrow.parquet as pq

    bench.run(problem="bernoulli", estimator="rloo", n_samples=2, n_estimates=500, out=str(tmp_path / "o"))
    metadata = json.loads(pq.read_schema(tmp_path / "o" / "cells.parquet").metadata[b"bench"])
    assert re.fullmatch(r"[0-9a-f]{12}", metadata["code_fingerprints"]["estimator:rloo"])
    assert "git_dirty" in metadata and metadata["git_dirty"] in (True, False, None)


# --- bench.run ----------------------------------------------------------------------------------------
def test_run_takes_names_instances_and_lists_and_returns_the_tables():
    from bench.estimators.rloo import ReinforceLeaveOneOut

    cells, dims = bench.run(
        problem=["bernoulli", "categorical"], estimator=["reinforce", ReinforceLeaveOneOut()],
        n_samples=[2, 4], n_estimates=2000,
    )  # fmt: skip
    assert len(cells) == 8 and set(cells["status"]) == {"ok"}
    assert set(dims["cell"]) == set(cells["cell"])
    swept, _ = bench.run(problem="bernoulli", estimator="rloo", n_estimates=500,
                         **{"problem.theta": [[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]]})  # fmt: skip
    assert set(swept["theta"]) == {"[0.1, 0.2, 0.3]", "[1.0, 2.0, 3.0]"}
    # The reference estimator's ratios, as in a sweep.
    assert (cells.loc[cells["estimator"] == "reinforce", "variance_ratio"] == 1.0).all()


def test_run_validates_like_the_sweep():
    with pytest.raises(ConfigError, match=r"n_samples: expected an integer >= 1"):
        bench.run(problem="bernoulli", estimator="rloo", n_samples=0)
    with pytest.raises(ConfigError, match=r"unknown key; valid keys: .*n_estimates"):
        bench.run(problem="bernoulli", estimator="rloo", n_estimate=10)
    with pytest.raises(ConfigError, match=r"unknown estimator 'rlo'; valid choices: .*rloo"):
        bench.run(problem="bernoulli", estimator="rlo")
    with pytest.raises(
        ConfigError,
        match=r"problem.costs: has 4 values but problem.theta has 3; the lists must have the same length",
    ):  # before any work
        bench.run(
            problem=["bernoulli", "categorical"], estimator="rloo", **{"problem.theta": [[0.1, 0.2, 0.3]]}
        )
    with pytest.raises(ConfigError, match=r"estimator.temperature: unknown key"):
        bench.run(problem="bernoulli", estimator="rloo", **{"estimator.temperature": 1.0})


def test_run_writes_and_resumes_out(tmp_path: Path):
    first, _ = bench.run(
        problem="bernoulli", estimator="rloo", n_samples=2, n_estimates=500, out=str(tmp_path)
    )
    second, _ = bench.run(
        problem="bernoulli", estimator="rloo", n_samples=2, n_estimates=500, out=str(tmp_path)
    )
    assert (tmp_path / "cells.parquet").exists() and (tmp_path / "summary.txt").exists()
    assert second["seconds"].tolist() == first["seconds"].tolist()  # reused, not measured again


def test_run_records_a_failing_cell_and_goes_on():
    class Exploding(bench.Estimator):
        """Raises: ĝ = nothing."""

        def surrogate(self, problem, params, noise):
            raise RuntimeError("exploded")

    cells, _ = bench.run(problem="bernoulli", estimator=["rloo", Exploding()], n_samples=2, n_estimates=200)
    by_name = cells.set_index("estimator")
    assert by_name.loc["Exploding", "status"] == "failed"
    assert "RuntimeError: exploded" in by_name.loc["Exploding", "reason"]
    assert by_name.loc["rloo", "status"] == "ok"


def test_plugin_discovery_costs_under_a_third_of_a_second():
    # Discovery = reading every installed distribution's entry points. CPU time of a fresh process,
    # so that a busy machine does not count against it.
    code = textwrap.dedent(
        """
        import time
        from bench import plugins
        tic = time.process_time()
        plugins.entry_point_plugins()
        print(time.process_time() - tic)
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert float(run.stdout) < 0.3


def test_a_fingerprint_covers_the_modules_of_its_own_package_it_uses(tmp_path: Path, monkeypatch):
    from bench.component import code_fingerprint, source_digest

    package = tmp_path / "labpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("WEIGHT = 1.0\n")
    (package / "unrelated.py").write_text("X = 1\n")
    (package / "est.py").write_text(
        "from bench import Estimator\nfrom labpkg import helpers\n\n\nclass Weighted(Estimator):\n"
        '    """ĝ = a test: no name, so not registered."""\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import labpkg.est

    def fingerprint() -> str:
        source_digest.cache_clear()
        return code_fingerprint(labpkg.est.Weighted)

    first = fingerprint()
    (package / "unrelated.py").write_text("X = 2\n")
    assert fingerprint() == first  # a module it does not use
    (package / "helpers.py").write_text("WEIGHT = 2.0\n")
    assert fingerprint() != first  # a module of its own package that it uses
