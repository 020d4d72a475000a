"""Cluster runs (bench.cluster): ``hydra/launcher=submitit_slurm`` against a real single-node Slurm
(``.ci/slurm/start``), and ``submitit_local``; whole commands in subprocesses, as a user runs them.

The Slurm tests skip, saying why, when no cluster answers (start one with ``.ci/slurm/start`` and
``source /tmp/bench-slurm/env``; CI does both, and sets BENCH_REQUIRE_SLURM=1, under which they fail
instead of skipping). The grid is tiny (8 cells of 2000 estimates): what
is measured is the cluster path (tasks, states, cancellation, resume), not the estimators.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.cluster import (
    ACTIVE_STATES,
    VANISHED_AFTER,
    Task,
    allotted_cores,
    expand_ids,
    group_cells,
    parse_states,
    task_count,
    task_end,
)
from bench.output import usable_cores
from tests.slurm_cluster import unavailable_reason

ROOT = Path(__file__).resolve().parent.parent
GRID = ["problem=bernoulli,categorical", "estimator=reinforce,rloo", "n_samples=2,4", "n_estimates=2000"]
N_CELLS = 8
SLURM = ["hydra/launcher=submitit_slurm"]
submitit = pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[slurm]'")


def bench(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "bench", "sweep", *GRID, *args, f"out={out}", "plots=false"]


def run(out: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run(bench(out, *args), cwd=out.parent, capture_output=True, text=True, timeout=timeout,
                          env=env)  # fmt: skip


def table(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "cells.parquet").set_index("cell").sort_index()


def wait_for(condition, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def cells_written(out: Path) -> int:
    folder = out / ".bench" / "cells"
    return (
        len([p for p in folder.glob("*.parquet") if not p.name.endswith(".dims.parquet")])
        if folder.is_dir()
        else 0
    )


def recorded_tasks(out: Path) -> list[dict]:
    try:
        return json.loads((out / ".bench" / "jobs.json").read_text())["tasks"]
    except (OSError, ValueError, KeyError):
        return []


def squeue(*args: str) -> dict[str, str]:
    done = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i|%T", *args], capture_output=True, text=True, timeout=30
    )
    return parse_states(done.stdout) if done.returncode == 0 else {}


@pytest.fixture
def slurm(monkeypatch) -> dict[str, str]:
    """The environment of a command that submits to the test cluster (skips without one)."""
    reason = unavailable_reason()
    if reason is not None and os.environ.get("BENCH_REQUIRE_SLURM"):  # CI started one: it must answer
        pytest.fail(reason)
    if reason is not None:
        pytest.skip(reason)
    conf = os.environ.get("SLURM_CONF") or str(
        Path(os.environ.get("BENCH_SLURM_DIR", "/tmp/bench-slurm")) / "slurm.conf"
    )
    monkeypatch.setenv("SLURM_CONF", conf)
    return {**os.environ, "SLURM_CONF": conf}


# --- without a cluster -------------------------------------------------------------------------------------
def test_auto_packs_cells_until_start_up_is_a_tenth_of_a_task():
    # 600 s of projected work: tasks of at least 54 s (6 s of start-up is 10% of 60) -> 11 tasks
    costs = [1.0] * 600
    assert task_count(costs) == 11
    parts = group_cells(list(range(600)), costs, None)
    assert sorted(i for part in parts for i in part) == list(range(600))  # every cell once
    assert all(part == sorted(part) for part in parts)  # in plan order within a task
    assert len(parts) in (10, 11) and min(map(len, parts)) >= 54
    assert group_cells(list(range(600)), costs, None) == parts  # always cut the same way
    # a tiny grid is one task; a cell projected past a task's share leaves fewer, fuller tasks
    assert group_cells([0, 1, 2], [0.01] * 3, None) == [[0, 1, 2]]
    assert len(group_cells(list(range(4)), [100.0, 1, 1, 100.0], None)) == 2
    assert task_count([1000.0] * 3) == 3  # never more tasks than cells
    fixed = group_cells(list(range(5)), [1.0] * 5, 2)
    assert sorted(map(len, fixed)) == [1, 2, 2] and sorted(i for part in fixed for i in part) == list(
        range(5)
    )


def test_default_grid_as_cluster_tasks(tmp_path):
    """The dry run says how the default grid would be cut: a few tasks, not one per cell."""
    command = [sys.executable, "-m", "bench", "sweep", "--dry-run", *SLURM, f"out={tmp_path / 'o'}"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(line for line in done.stdout.splitlines() if "Slurm task" in line)
    cells, tasks = int(line.split()[1]), int(line.split(" in ")[1].split()[0])
    assert cells > 300 and 1 <= tasks <= 10, line
    bad = subprocess.run([sys.executable, "-m", "bench", "sweep", "--dry-run", *SLURM, *GRID,
                          "hydra.sweeper.cells_per_job=0"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "hydra.sweeper.cells_per_job" in bad.stderr


def test_slurm_states_are_parsed_and_a_vanished_task_is_given_up_in_bounded_time():
    assert expand_ids("21_[4-6,9%2]") == ["21_4", "21_5", "21_6", "21_9"] and expand_ids("22") == ["22"]
    assert parse_states("21_0|RUNNING\n21_[1-2]|CANCELLED by 0\n21_0.batch|RUNNING\n") == {
        "21_0": "RUNNING", "21_1": "CANCELLED", "21_2": "CANCELLED"}  # fmt: skip
    task = Task(job_id="21_3", kind="slurm", folder="/nowhere/%j", cells=[], plan="/nowhere.json", chunk=0)
    assert task_end(task, {"21_3": "RUNNING"}, now=0.0) is None
    # without accounting: not in squeue, nothing from sacct -> lost after VANISHED_AFTER, not never
    assert task_end(task, {}, now=1.0) is None
    assert task_end(task, {}, now=1.0 + VANISHED_AFTER / 2) is None
    assert task_end(task, {}, now=2.0 + VANISHED_AFTER).startswith("VANISHED")
    # an end state counts after its settling time (the result file may still be on its way)
    task = Task(job_id="21_4", kind="slurm", folder="/nowhere/%j", cells=[], plan="/nowhere.json", chunk=0)
    assert task_end(task, {"21_4": "TIMEOUT"}, now=0.0) is None
    assert task_end(task, {"21_4": "TIMEOUT"}, now=10.0) == "TIMEOUT"
    assert "PREEMPTED" not in ACTIVE_STATES and "REQUEUED" in ACTIVE_STATES


def test_a_task_uses_the_cores_slurm_gave_it(monkeypatch):
    from bench.sweep import auto_threads

    for name in ("BENCH_TASK_CPUS", "SLURM_CPUS_PER_TASK", "SLURM_JOB_ID", "SLURM_CPUS_ON_NODE"):
        monkeypatch.delenv(name, raising=False)
    assert allotted_cores() is None
    monkeypatch.setenv("SLURM_CPUS_ON_NODE", "3")
    assert allotted_cores() is None  # outside a Slurm job it means nothing
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    assert allotted_cores() == 3
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert allotted_cores() == 1 and auto_threads(1) == 1  # not the node's cores, whatever the load


def test_a_requeued_task_skips_the_cells_it_already_wrote(tmp_path, monkeypatch):
    """A requeued task (preemption, timeout) runs its chunk again: cells written since the plan
    are skipped; a row older than the plan (another sweep's, or resume=false) is not."""
    import bench.sweep as sweep

    out = tmp_path / "out"
    (out / ".bench" / "cells").mkdir(parents=True)
    old = out / ".bench" / "cells" / "old.parquet"
    old.write_text("")
    os.utime(old, (time.time() - 60, time.time() - 60))
    container = {"out": str(out), "plugins": []}
    entries = [{"names": {"id": cell}, "container": container, "cell": cell} for cell in ("old", "a", "b")]
    plan = out / ".bench" / "plan-x.json"
    plan.write_text(json.dumps([entries]))
    (out / ".bench" / "cells" / "a.parquet").write_text("")  # written by the first attempt
    ran = []
    monkeypatch.setattr(sweep, "run_in_process", lambda specs, problems: ran.extend(specs))
    sweep.run_chunk(str(plan), 0)
    assert [spec.names["id"] for spec in ran] == ["old", "b"]


def test_submitit_local_runs_at_most_the_usable_cores_at_once(tmp_path):
    """On one usable core, two local jobs run one after the other, each with one thread."""
    out = tmp_path / "local"
    core = min(os.sched_getaffinity(0))
    done = subprocess.run(bench(out, "hydra/launcher=submitit_local", "hydra.sweeper.cells_per_job=4"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=240,
                          preexec_fn=lambda: os.sched_setaffinity(0, {core}))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{N_CELLS} cells in 2 local tasks" in done.stdout
    spans = []
    for log in sorted((out / ".bench" / "submitit").glob("*/*_log.out")):
        lines = [line for line in log.read_text().splitlines() if line.startswith("submitit INFO (")]
        stamps = [pd.Timestamp(line.split("(", 1)[1].split(")", 1)[0].replace(",", ".")) for line in lines]
        spans.append((min(stamps), max(stamps)))
    assert len(spans) == 2
    first, second = sorted(spans)
    assert first[1] <= second[0], f"the two local jobs overlapped: {spans}"
    cells = table(out)
    assert (cells["status"] == "ok").all() and (cells["threads"] == 1).all()
    assert not (out / ".submitit").exists() and not (out / ".bench" / "submitit" / "%j").exists()
    assert not (out / ".bench" / "jobs.json").exists()


# --- against the Slurm cluster ------------------------------------------------------------------------------
def test_slurm_sweep_equals_the_serial_sweep(tmp_path, slurm):
    """Same tables as the serial run (variances identical: both on the same number of threads, which
    the Slurm task takes from SLURM_CPUS_PER_TASK); cells_per_job=auto makes one task of 8 cells."""
    cpus = 2 if usable_cores() >= 2 else 1
    serial = run(tmp_path / "serial", f"threads={cpus}")
    assert serial.returncode == 0, serial.stderr[-3000:]
    tic = time.monotonic()
    cluster = run(tmp_path / "slurm", *SLURM, f"hydra.launcher.cpus_per_task={cpus}", env=slurm)
    seconds = time.monotonic() - tic
    assert cluster.returncode == 0, cluster.stdout[-3000:] + cluster.stderr[-3000:]
    assert f"{N_CELLS} cells in 1 Slurm task " in cluster.stdout  # auto: far fewer tasks than cells
    a, b = table(tmp_path / "serial"), table(tmp_path / "slurm")
    assert list(a.index) == list(b.index) and (b["status"] == "ok").all()
    pd.testing.assert_series_equal(a["variance"], b["variance"], check_exact=True)
    pd.testing.assert_series_equal(a["bias_norm"], b["bias_norm"], check_exact=True)
    assert (b["threads"] == cpus).all()
    dims_a = pd.read_parquet(tmp_path / "serial" / "dims.parquet").sort_values(["cell", "param"])
    dims_b = pd.read_parquet(tmp_path / "slurm" / "dims.parquet").sort_values(["cell", "param"])
    assert (dims_a["var"].to_numpy() == dims_b["var"].to_numpy()).all()
    # submitit's files live under out/.bench/submitit, and no task is left on record
    out = tmp_path / "slurm"
    assert not (out / ".submitit").exists()
    assert list((out / ".bench" / "submitit").glob("*/*_log.out"))
    assert not (out / ".bench" / "jobs.json").exists()
    print(f"slurm sweep of {N_CELLS} cells: {seconds:.1f} s")


def test_scancel_mid_sweep_fails_the_lost_cells_and_the_rerun_resumes(tmp_path, slurm):
    """scancel of the job array while its first task runs: bench exits 1 within a minute, with the
    finished cells merged and the others failed (slurm: CANCELLED); the rerun completes. Without
    accounting (sacct fails), as on clusters that have none."""
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "sacct").write_text(
        "#!/bin/sh\necho 'sacct: error: accounting storage is disabled' >&2\nexit 1\n"
    )
    (shim / "sacct").chmod(0o755)
    env = {**slurm, "PATH": f"{shim}:{slurm['PATH']}"}
    out = tmp_path / "cancel"
    args = [*SLURM, "hydra.sweeper.cells_per_job=2", "hydra.launcher.array_parallelism=1"]
    process = subprocess.Popen(bench(out, *args), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for(lambda: cells_written(out) >= 1, 90, "the first task's first cell")
        array = recorded_tasks(out)[0]["job_id"].split("_")[0]
        subprocess.run(["scancel", array], check=True, timeout=30)
        tic = time.monotonic()
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, stdout[-2000:] + stderr[-2000:]
    assert time.monotonic() - tic < 60
    cells = table(out)
    assert len(cells) == N_CELLS
    ok, failed = cells[cells["status"] == "ok"], cells[cells["status"] == "failed"]
    assert len(ok) >= 1 and len(failed) >= N_CELLS - 2 and len(ok) + len(failed) == N_CELLS
    assert failed["reason"].str.startswith("slurm: CANCELLED").all(), failed["reason"].tolist()
    assert "run the same command again" in stderr.splitlines()[-1]
    assert not (out / ".bench" / "jobs.json").exists()
    rerun = run(out, *SLURM, env=env)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert f"{len(ok)} already finished in out are reused" in rerun.stdout
    assert (table(out)["status"] == "ok").all()


def test_sigterm_cancels_the_slurm_jobs(tmp_path, slurm):
    """SIGTERM to bench: it scancels its jobs, merges what finished and exits 143; squeue is empty
    within 30 s."""
    out = tmp_path / "term"
    args = [*SLURM, "hydra.sweeper.cells_per_job=2", "hydra.launcher.array_parallelism=2"]
    process = subprocess.Popen(bench(out, *args), cwd=tmp_path, env=slurm, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        tasks = wait_for(lambda: recorded_tasks(out), 60, "the job ids in out/.bench/jobs.json")
        array = tasks[0]["job_id"].split("_")[0]
        wait_for(lambda: "RUNNING" in squeue("-j", array).values(), 60, "a running task")
        process.send_signal(signal.SIGTERM)
        tic = time.monotonic()
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, stdout[-2000:] + stderr[-2000:]
    assert f"cancelled Slurm job {array}" in stderr and "interrupted after" in stderr
    wait_for(lambda: not squeue("-j", array), 30 - (time.monotonic() - tic), "an empty squeue")
    assert not (out / ".bench" / "jobs.json").exists()


def test_a_rerun_waits_for_the_tasks_still_running_instead_of_submitting_them_again(tmp_path, slurm):
    """The first bench dies (SIGKILL) with its tasks queued and running; a rerun into the same out
    finds them from out/.bench/jobs.json, says so, submits nothing and completes every cell."""
    out = tmp_path / "again"
    args = [*SLURM, "hydra.sweeper.cells_per_job=2", "hydra.launcher.array_parallelism=2"]
    first = subprocess.Popen(bench(out, *args), cwd=tmp_path, env=slurm, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        tasks = wait_for(lambda: recorded_tasks(out), 60, "the job ids in out/.bench/jobs.json")
        array = tasks[0]["job_id"].split("_")[0]
        wait_for(lambda: "RUNNING" in squeue("-j", array).values(), 60, "a running task")
    finally:
        first.kill()
        first.wait()
    assert squeue("-j", array), "the first run's tasks should still be queued or running"
    rerun = run(out, *args, env=slurm)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "of an earlier run into this out" in rerun.stdout and array in rerun.stdout
    assert "submitted Slurm job" not in rerun.stdout, rerun.stdout
    assert (table(out)["status"] == "ok").all() and len(table(out)) == N_CELLS
    assert not squeue("-j", array)
