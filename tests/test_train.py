"""``bench train``: the loop's correctness (exact gradients follow gradient descent step for step,
determinism, resume) and the command as a user runs it (subprocess, real files, real signals)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.registry import REGISTRIES, build, default_config
from bench.training.loop import RunSettings, run_training

ROOT = Path(__file__).resolve().parent.parent
VOLATILE = ["seconds", "eval_seconds"]  # wall-clock columns: everything else must repeat exactly


def settings(**changes) -> RunSettings:
    values = dict(n_samples=4, seed=0, dtype=torch.float64, steps=6, eval_every=1, optimizer="sgd",
                  lr=0.1, eval_estimates=0, eval_samples=10)  # fmt: skip
    return RunSettings(**{**values, **changes})


def make(group: str, name: str, **keys):
    return build(group, name, {**default_config(group, name), **keys})


def gradient_descent(problem, theta: dict, lr: float, steps: int, ascend: bool) -> list[float]:
    """E[f] along deterministic gradient descent (ascent) on E[f], by autograd on ``expectation``:
    computed here, without the training loop's code."""
    theta = {k: v.detach().clone().to(torch.float64).requires_grad_(True) for k, v in theta.items()}
    values = []
    for _ in range(steps + 1):
        value = problem.expectation(theta)
        values.append(float(value.detach()))
        grads = torch.autograd.grad(value, list(theta.values()))
        with torch.no_grad():
            for tensor, grad in zip(theta.values(), grads, strict=True):
                tensor += lr * grad if ascend else -lr * grad
    return values


@pytest.mark.parametrize("name", ["bernoulli", "categorical", "gaussian", "cartpole"])
def test_exact_with_sgd_follows_gradient_descent(name: str) -> None:
    problem = make("problem", name, **({"horizon": 12} if name == "cartpole" else {}))
    run = run_training(problem, make("estimator", "exact"), {}, settings(steps=6))
    expected = gradient_descent(problem, problem.training_start()[0], 0.1, 6, problem.direction == "maximize")
    objectives = [row["objective"] for row in run.rows]
    assert [row["step"] for row in run.rows] == list(range(7))
    assert objectives == pytest.approx(expected, rel=1e-12, abs=1e-14)
    assert len(set(objectives)) > 1  # it moved: a loop that never steps would fail here


def test_exact_check_rejects_a_wrong_step() -> None:
    """The comparison above catches a loop that steps the wrong way or by the wrong amount."""
    problem = make("problem", "bernoulli")
    run = run_training(problem, make("estimator", "exact"), {}, settings(steps=4))
    wrong = gradient_descent(problem, problem.training_start()[0], 0.1, 4, ascend=True)
    assert [row["objective"] for row in run.rows] != pytest.approx(wrong, rel=1e-6)


def test_a_run_repeats_from_its_seed_and_differs_between_seeds() -> None:
    problem, rloo = make("problem", "categorical"), make("estimator", "rloo")
    basket = {"reinforce": make("estimator", "reinforce")}
    chosen = settings(steps=30, eval_every=10, optimizer="adam", eval_estimates=200, dtype=torch.float32)
    first = run_training(problem, rloo, basket, chosen)
    again = run_training(problem, rloo, basket, chosen)
    other = run_training(problem, rloo, basket, settings(**{**chosen.__dict__, "seed": 1}))
    strip = lambda rows: [{k: v for k, v in row.items() if k not in VOLATILE} for row in rows]  # noqa: E731
    assert strip(first.rows) == strip(again.rows)
    assert first.basket_rows == again.basket_rows
    assert strip(first.rows) != strip(other.rows)
    assert [row["cost_evals"] for row in first.rows] == [0, 40, 80, 120]


def test_resuming_from_a_checkpoint_gives_the_same_run() -> None:
    """A run stopped after an evaluation and resumed from its checkpoint ends as an uninterrupted one
    (Adam's state, the streams and the counters all travel in the checkpoint)."""
    problem, estimator = make("problem", "bernoulli"), make("estimator", "disarm")
    chosen = settings(steps=40, eval_every=10, optimizer="adam", eval_estimates=100, dtype=torch.float32,
                      n_samples=2)  # fmt: skip
    whole = run_training(problem, estimator, {}, chosen)
    saved = {}

    class Stop(Exception):
        pass

    def stop_at_20(state) -> None:
        if state.step == 20:
            saved.update(state.checkpoint())
            raise Stop

    with pytest.raises(Stop):
        run_training(problem, make("estimator", "disarm"), {}, chosen, on_eval=stop_at_20)
    resumed = run_training(problem, make("estimator", "disarm"), {}, chosen, saved=saved)
    strip = lambda rows: [{k: v for k, v in row.items() if k not in VOLATILE} for row in rows]  # noqa: E731
    assert strip(resumed.rows) == strip(whole.rows)


# --- the command --------------------------------------------------------------------------------------
def bench(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


SMALL = ["problem=bernoulli", "estimator=reinforce,rloo", "seed=0,1", "steps=40", "eval_every=20",
         "eval_estimates=200", "basket=[arm]"]  # fmt: skip


def test_a_small_grid_writes_curves_basket_summary_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = bench("train", *SMALL, f"out={out}")
    assert done.returncode == 0, done.stderr
    curves, basket = pd.read_parquet(out / "curves.parquet"), pd.read_parquet(out / "basket.parquet")
    assert len(curves) == 4 * 3 and set(curves["status"]) == {"ok"}
    assert set(curves["estimator"]) == {"reinforce", "rloo"} and set(curves["step"]) == {0, 20, 40}
    assert (curves["objective_source"] == "exact").all() and (curves["direction"] == "minimize").all()
    assert curves["bias_norm"].notna().all() and (curves["variance_ci_low"] <= curves["variance"]).all()
    assert len(basket) == 4 * 3 and set(basket["estimator"]) == {"arm"}
    assert (out / "summary.txt").read_text().count("rloo") >= 1
    for stem in ("training_curves", "variance_along_training"):
        assert (out / "plots" / f"{stem}.png").exists() and (out / "plots" / f"{stem}.svg").exists()
    again = bench("train", *SMALL, f"out={out}", "plots=false")
    assert again.returncode == 0 and "4 already finished in out are reused" in again.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["optimizer=rmsprop"], "optimizer"),
        (["lr=-1"], "lr"),
        (["steps=0"], "steps"),
        (["basket=[nope]"], "basket"),
        (["estimator=nope"], "estimator"),
        (["eval_estimates=1"], "eval_estimates"),
        (["--steps", "3"], "steps=3"),
        (["problem.nope=1"], "problem.nope"),
        (
            ["problem=vae_bernoulli", "problem.dataset=fashion_mnist", "problem.data_dir=/nonexistent"],
            "apt-get install dataset-fashion-mnist",
        ),
    ],
)
def test_bad_input_exits_2_and_leaves_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "nothing"
    chosen = args if any(arg.startswith("problem=") for arg in args) else ["problem=bernoulli", *args]
    done = bench("train", "steps=5", *chosen, f"out={out}")
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and not out.exists()


LONG = ["problem=categorical", "estimator=rloo", "eval_every=200", "eval_estimates=200", "plots=false"]


def start(out: Path, *extra: str) -> subprocess.Popen:
    args = [*LONG, "steps=12000", f"out={out}", *extra]
    return subprocess.Popen([sys.executable, "-m", "bench", "train", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def wait_for_checkpoint(process: subprocess.Popen, out: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not list((out / ".bench" / "runs").glob("*/checkpoint.pt")):
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.05)


def test_sigkill_then_resume_gives_the_uninterrupted_curve(tmp_path: Path) -> None:
    whole = bench("train", *LONG, "steps=12000", f"out={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr
    process = start(tmp_path / "killed")
    wait_for_checkpoint(process, tmp_path / "killed")
    process.kill()
    process.communicate()
    resumed = bench("train", *LONG, "steps=12000", f"out={tmp_path / 'killed'}")
    assert resumed.returncode == 0, resumed.stderr
    a = pd.read_parquet(tmp_path / "whole" / "curves.parquet").drop(columns=VOLATILE)
    b = pd.read_parquet(tmp_path / "killed" / "curves.parquet").drop(columns=VOLATILE)
    pd.testing.assert_frame_equal(a, b)
    assert not list((tmp_path / "killed" / ".bench" / "runs").glob("*/checkpoint.pt"))  # removed when done


def test_sigint_merges_what_ran_and_exits_130(tmp_path: Path) -> None:
    out = tmp_path / "stopped"
    process = start(out, "seed=0,1")
    wait_for_checkpoint(process, out)
    process.send_signal(signal.SIGINT)
    _stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Run the same command again" in stderr
    curves = pd.read_parquet(out / "curves.parquet")
    assert set(curves["status"]) == {"partial"} and curves["step"].min() == 0
    assert list((out / ".bench" / "runs").glob("*/checkpoint.pt"))  # what the same command resumes from


def test_an_interrupt_while_checkpointing_leaves_the_rows_to_merge(tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C may land at any point of an evaluation's writes. The run's files come first, so an
    interrupt during the checkpoint's write (here: the first evaluation's) still leaves the rows
    that the merge shows; the checkpoint is the previous one (none at step 0)."""
    from bench.training import execute as execute_module
    from bench.training.execute import RunWriter
    from bench.training.runs import run_dir, run_status

    def interrupted(payload, path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(execute_module, "save_checkpoint", interrupted)
    problem, estimator = make("problem", "bernoulli"), make("estimator", "rloo")
    base = {"run": "r1", "problem": "bernoulli", "estimator": "rloo", "n_samples": 4, "seed": 0}
    writer = RunWriter(tmp_path, "r1", base, {}, None, time.time(), [0, 3, 6])
    with pytest.raises(KeyboardInterrupt):
        run_training(problem, estimator, {}, settings(eval_every=3), on_eval=lambda state: writer(state, 6))
    assert run_status(tmp_path, "r1") == "partial"
    assert not (run_dir(tmp_path, "r1") / "checkpoint.pt").exists()


def test_time_limit_stops_with_exit_4_and_the_run_resumes(tmp_path: Path) -> None:
    out = tmp_path / "limited"
    done = bench("train", "problem=categorical", "estimator=rloo", "steps=20000", "eval_every=100",
                 "eval_estimates=0", "plots=false", "time_limit=1", f"out={out}")  # fmt: skip
    assert done.returncode == 4, done.stderr
    assert "time_limit" in done.stderr and list((out / ".bench" / "runs").glob("*/checkpoint.pt"))


def test_a_failing_run_is_recorded_and_the_others_go_on(tmp_path: Path) -> None:
    """lr = 1e6 with sgd sends the Gaussian problem's θ to infinity: that run fails with its reason."""
    out = tmp_path / "failing"
    done = bench("train", "problem=gaussian", "estimator=pathwise", "optimizer=sgd", "lr=1e6,0.01",
                 "steps=200", "eval_every=50", "eval_estimates=0", "plots=false", f"out={out}")  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    curves = pd.read_parquet(out / "curves.parquet")
    failed = curves[curves["status"] == "failed"]
    assert set(failed["lr"]) == {1e6} and failed["reason"].str.contains("diverged").all()
    assert (curves.loc[curves["lr"] == 0.01, "status"] == "ok").all()


VAE_NAMES = ("vae_bernoulli", "vae_categorical", "vae_gaussian")
PLAIN_MODEL_GRADIENT = sorted(
    (problem, name)
    for name, cls in REGISTRIES["estimator"].items()
    if cls.plain_model_gradient
    for problem in VAE_NAMES
    if make("estimator", name).why_not(make("problem", problem), 4) is None
)


def test_the_one_pass_model_gradient_is_checked_for_every_declaring_estimator() -> None:
    """Every registered estimator declaring ``plain_model_gradient`` joins the check below."""
    assert {name for _, name in PLAIN_MODEL_GRADIENT} >= {"reinforce", "rloo", "arm", "disarm"}


@pytest.mark.parametrize(("name", "estimator_name"), PLAIN_MODEL_GRADIENT)
def test_one_pass_model_gradient_equals_the_separate_pass(name: str, estimator_name: str) -> None:
    """Where the estimator declares ``plain_model_gradient``, the loop takes the decoder's gradient
    from the estimate's own pass; it must be what ``Problem.model_gradient`` gives at the estimator's
    ``model_samples`` of the same noise (and θ's gradient must not change). The same comparison
    fails against the wrong samples: for ARM and DisARM the pairs' first members alone, for the
    others the samples of other noise."""
    problem, estimator = make("problem", name), make("estimator", estimator_name)
    theta, model = problem.training_start()
    problem.training_batch(model, torch.Generator().manual_seed(0), torch.float64)
    noise = problem.noise(torch.Generator().manual_seed(1), (1, 4), torch.float64)
    fused = estimator.estimate(problem, {**theta, **model}, noise)
    alone = estimator.estimate(problem, theta, noise)
    x = estimator.model_samples(problem, theta, noise[0])
    separate = problem.model_gradient(theta, model, x)
    assert set(fused) == set(theta) | set(model)
    for key in theta:
        torch.testing.assert_close(fused[key][0], alone[key][0], rtol=1e-10, atol=1e-12)
    for key in model:
        torch.testing.assert_close(fused[key][0], separate[key], rtol=1e-10, atol=1e-12)
    first = problem.sample(theta, noise[0])
    other = problem.sample(theta, problem.noise(torch.Generator().manual_seed(2), (4,), torch.float64))
    wrong = problem.model_gradient(theta, model, first if x.shape[0] > first.shape[0] else other)
    with pytest.raises(AssertionError):
        torch.testing.assert_close({k: fused[k][0] for k in model}, wrong)


def test_bench_train_in_python_matches_the_command(tmp_path: Path) -> None:
    """``bench.train`` validates like the command and gives the curves the command writes."""
    import bench
    from bench.errors import ConfigError

    curves, basket = bench.train("bernoulli", ["reinforce", "rloo"], seed=[0, 1], steps=40, eval_every=20,
                                 eval_estimates=200, basket=["arm"])  # fmt: skip
    done = bench_command_curves(tmp_path)
    columns = [c for c in done.columns if c not in VOLATILE]
    pd.testing.assert_frame_equal(
        curves[columns].reset_index(drop=True), done[columns].reset_index(drop=True), check_dtype=False
    )
    assert len(basket) == 12 and set(basket["estimator"]) == {"arm"}
    with pytest.raises(ConfigError, match="optimizer"):
        bench.train("bernoulli", "rloo", optimizer="rmsprop")
    with pytest.raises(ConfigError, match="nope"):
        bench.train("bernoulli", "rloo", nope=1)


def bench_command_curves(tmp_path: Path) -> pd.DataFrame:
    out = tmp_path / "command"
    done = bench("train", *SMALL, "plots=false", f"out={out}")
    assert done.returncode == 0, done.stderr
    return pd.read_parquet(out / "curves.parquet")


def test_help_lists_the_keys_and_a_dry_run_runs_nothing(tmp_path: Path) -> None:
    helped = bench("train", "--help")
    assert helped.returncode == 0
    for key in ("steps=200", "eval_every=20", "optimizer=adam", "lr=0.05", "basket=[]", "eval_estimates=1000",
                "eval_samples=100"):  # fmt: skip
        assert key in helped.stdout, key
    out = tmp_path / "dry"
    dry = bench(
        "train", "--dry-run", "problem=bernoulli", "estimator=rloo,pathwise", "seed=0,1", f"out={out}"
    )
    assert dry.returncode == 0, dry.stderr
    assert "4 training runs" in dry.stdout and "2 skipped (does not apply)" in dry.stdout
    assert not out.exists()


def test_an_exclusion_typed_on_the_command_line_applies() -> None:
    """Choosing problem= or estimator= lifts the default grid's exclusions, but not one the user
    typed (the paper-shaped experiment runs rloo at 2 samples and disarm at 1 pair, docs/training.md)."""
    from bench.plan import GridRules, typed_exclusions

    assert typed_exclusions([], "train") == [] and typed_exclusions(["*:disarm:2"], "train")
    names = {"problem": "bernoulli", "estimator": "disarm"}
    typed = GridRules.from_config(
        {}, ["*:disarm:2"], ["estimator", *typed_exclusions(["*:disarm:2"], "train")]
    )
    assert typed.excludes(names, 2) and not typed.excludes(names, 1)
    lifted = GridRules.from_config({}, ["*:disarm:2"], ["estimator"])
    assert not lifted.excludes(names, 2)
