"""Planned cells as cluster tasks: ``hydra/launcher=submitit_slurm`` and ``submitit_local``.

bench keeps Hydra's submitit launcher objects for their config (``hydra.launcher.*``) and for the
function a task runs (``launcher.__call__`` composes the job's config and runs bench's task), but
submits and waits itself, instead of the plugin's ``launch``, which blocks on every job's result
in turn and raises on the first one that did not produce any (a cancelled task crashed the sweep
~30 s later, and without Slurm accounting it waited forever). Here:

- **Tasks sized to the work** (``group_cells``): a task holds several planned cells, so that its
  start-up (Python, torch, Hydra: ``STARTUP_SECONDS``, measured) is at most ``STARTUP_SHARE`` of
  it, from a cheap projection of each cell's seconds (``projected_seconds``);
  ``hydra.sweeper.cells_per_job`` fixes the number of cells instead.
- **Recorded**: every task's id and cells go to ``out/.bench/jobs.json`` (written under a lock, each
  write atomic) the moment it is submitted, and leave it when bench has seen it end. A later run
  into the same ``out`` finds the tasks still queued or running there and waits for them instead of
  submitting their cells again.
- **Watched** by bench's own loop (``Cluster.wait``): a task is done when its result file appears;
  otherwise its state comes from ``squeue -t all`` (slurmctld's view, which also holds jobs that
  ended in the last ``MinJobAge`` seconds, without the 0.5-3 s lag of accounting), then ``sacct``
  for older ones. A task that ended without a result (cancelled, timed out, preempted, failed, node
  lost) costs its unfinished cells, which are written as ``failed`` rows with the reason
  (``slurm: CANCELLED``); a task neither squeue nor sacct knows (no accounting) counts as lost after
  ``VANISHED_AFTER`` seconds, never waited for forever.
- **Cancelled with bench**: Ctrl-C or SIGTERM ``scancel``s the recorded job ids (``submitit_local``:
  signals the job processes) and waits until they have left the queue before the sweep merges.
- **Requeue-safe**: a requeued task (preemption, ``hydra.launcher.max_num_timeout``) runs its chunk
  again; every cell is written atomically by id, and the chunk skips the cells already written since
  the plan was (``bench.sweep.run_chunk``).

The submission and waiting serve any command that runs planned cells as Hydra jobs (``Cluster``
takes plain job overrides and cell ids); ``run_planned`` is the sweep's use of it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import ConfigError
from bench.output import cell_paths, scratch, usable_cores, write_text_atomic

# A cluster task's start-up before its first cell: the interpreter, torch, Hydra composing the job's
# config, bench and the task's first problem. Measured on the 2-core machine of the Slurm tests
# (single-node Slurm, one task at a time: 4.6-5.3 s; two at a time on 2 cores: 5-7 s).
STARTUP_SECONDS = 6.0
# cells_per_job=auto packs cells until start-up is at most this share of a task.
STARTUP_SHARE = 0.10
# Projected seconds per sample (n_estimates × n_samples) of each problem at its defaults, and a
# fixed cost per cell: the default sweep on one thread (2026-12-03, 2-core machine, 363 cells,
# 153 s; fits included). Per cell the projection is off by up to ~4× (estimators differ), but a task
# sums dozens of cells. Problems not listed (plugins) are projected at DEFAULT_SECONDS_PER_SAMPLE.
SECONDS_PER_SAMPLE = {
    "bernoulli": 0.9e-6, "categorical": 1.0e-6, "multicategorical": 1.8e-6, "gaussian": 0.04e-6,
    "cartpole": 2.6e-6, "vae_bernoulli": 29e-6, "vae_categorical": 58e-6, "vae_gaussian": 21e-6,
}  # fmt: skip
DEFAULT_SECONDS_PER_SAMPLE = 10e-6
SECONDS_PER_CELL = 0.01

JOBS_FILE = "jobs.json"  # under out/.bench: the tasks in flight
SUBMITIT_DIR = "submitit"  # under out/.bench: submitit's pickles and each task's logs, by job id
VANISHED_AFTER = 30.0  # s: no result, and neither squeue nor sacct knows the task
UNREACHABLE_AFTER = 300.0  # s: squeue itself fails (slurmctld down or unreachable)
SETTLE = {"COMPLETED": 15.0, "PREEMPTED": 60.0}  # s to wait for a result file after an end state
SETTLE_DEFAULT = 3.0
CANCEL_WAIT = 25.0  # s: how long bench waits for cancelled tasks to leave the queue
# Slurm job states in which a task has not ended (or will run again).
ACTIVE_STATES = {
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
    "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "STOPPED", "RESV_DEL_HOLD", "SPECIAL_EXIT",
    "POWER_UP_NODE", "UPDATE_DB",
}  # fmt: skip


REQUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD"}


# --- which launchers, and the sweeper's key ----------------------------------------------------------
def submitit_kind(launcher: Any) -> str | None:
    """``slurm`` or ``local`` for hydra-submitit-launcher's launchers, else None."""
    try:
        from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
    except ImportError:
        return None
    return launcher._EXECUTOR if isinstance(launcher, BaseSubmititLauncher) else None


def parse_cells_per_job(value: Any) -> int | None:
    """``hydra.sweeper.cells_per_job``: auto (None) or an integer >= 1."""
    if value is None or value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError("hydra.sweeper.cells_per_job", f"expected auto or an integer >= 1, got {value!r}")
    return value


def allotted_cores() -> int | None:
    """Cores a cluster task was given, for ``threads=auto``: Slurm's ``SLURM_CPUS_PER_TASK`` (or,
    inside a Slurm job that asked for no per-task count, ``SLURM_CPUS_ON_NODE``), or
    ``BENCH_TASK_CPUS``, which bench sets for ``submitit_local`` jobs (the cores split between the
    jobs that run at once). None outside a cluster task: then the node's usable cores count."""
    names = ["BENCH_TASK_CPUS", "SLURM_CPUS_PER_TASK"]
    if os.environ.get("SLURM_JOB_ID"):
        names.append("SLURM_CPUS_ON_NODE")
    for name in names:
        match = re.match(r"\s*(\d+)", os.environ.get(name, ""))
        if match and int(match[1]) >= 1:
            return int(match[1])
    return None


# --- sizing tasks -----------------------------------------------------------------------------------
def projected_seconds(problem: str, n_samples: int, n_estimates: int) -> float:
    """A cheap projection of one cell's seconds on one thread (``SECONDS_PER_SAMPLE``)."""
    rate = SECONDS_PER_SAMPLE.get(problem, DEFAULT_SECONDS_PER_SAMPLE)
    return SECONDS_PER_CELL + rate * max(1, int(n_samples)) * max(1, int(n_estimates))


def task_count(costs: Sequence[float], startup: float = STARTUP_SECONDS, share: float = STARTUP_SHARE) -> int:
    """cells_per_job=auto: as many tasks as keep start-up at most ``share`` of each (every task
    holds at least ``startup·(1 − share)/share`` projected seconds, 54 s by default), at least one
    and at most one per cell."""
    if not costs:
        return 0
    least = startup * (1 - share) / share
    return max(1, min(len(costs), math.floor(sum(costs) / least)))


def group_cells(
    indices: Sequence[int],
    costs: Sequence[float],
    cells_per_job: int | None,
    startup: float = STARTUP_SECONDS,
    share: float = STARTUP_SHARE,
) -> list[list[int]]:
    """The planned cells ``indices`` (with projected ``costs``) cut into tasks, in plan order (a
    task's cells share problems, which it builds once). ``cells_per_job``: that many cells a task;
    None (auto): ``task_count`` tasks of about equal projected seconds."""
    indices = list(indices)
    if not indices:
        return []
    if cells_per_job is not None:
        return [indices[i : i + cells_per_job] for i in range(0, len(indices), cells_per_job)]
    n = task_count(costs, startup, share)
    least = startup * (1 - share) / share
    parts: list[list[int]] = [[]]
    sums = [0.0]
    left = sum(costs)
    for index, cost in zip(indices, costs, strict=True):
        # a new task once this one holds its share of what is left (the cell's midpoint past it)
        target = (left + sums[-1]) / (n - len(parts) + 1)
        if len(parts) < n and sums[-1] >= least and sums[-1] + cost / 2 >= target:
            parts.append([])
            sums.append(0.0)
        parts[-1].append(index)
        sums[-1] += cost
        left -= cost
    if (
        len(parts) > 1 and sums[-1] < startup * (1 - share) / share
    ):  # too short a last task joins the one before
        parts[-2] += parts.pop()
    return parts


# --- the record of tasks in flight --------------------------------------------------------------------
@dataclass
class Task:
    """One submitted cluster task: a chunk of planned cells run as one Hydra job."""

    job_id: str  # Slurm: 21_3 (array task) or 22; local: the job process's PID
    kind: str  # slurm | local
    folder: str  # submitit's folder, with %j for the job id
    cells: list[str]
    plan: str  # the plan file the task reads; its mtime marks what the task has written since
    chunk: int
    owner: dict[str, Any] = field(default_factory=dict)  # the bench process that submitted it
    # not recorded: what this process knows of it
    job: Any = None  # submitit's job object, for tasks this process submitted
    adopted: bool = False  # submitted by an earlier run into the same out
    ended_at: float | None = None  # monotonic time an end state was first seen
    unknown_since: float | None = None  # monotonic time since which no one knows the task
    state: str = "PENDING"

    def record(self) -> dict[str, Any]:
        keys = ("job_id", "kind", "folder", "cells", "plan", "chunk", "owner")
        return {key: getattr(self, key) for key in keys}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Task:
        return cls(**{key: record[key] for key in ("job_id", "kind", "folder", "cells", "plan", "chunk")},
                   owner=record.get("owner", {}), adopted=True)  # fmt: skip

    @property
    def array(self) -> str:
        return self.job_id.split("_", 1)[0]

    def result_path(self) -> Path:
        from submitit.core.utils import JobPaths

        return JobPaths(self.folder, job_id=self.job_id, task_id=0).result_pickle

    def since(self) -> float:
        try:
            return os.stat(self.plan).st_mtime - 1.0  # a second's slack for coarse file times
        except OSError:
            return 0.0


def jobs_path(out: Path) -> Path:
    return scratch(out) / JOBS_FILE


@contextlib.contextmanager
def locked(out: Path) -> Iterable[None]:
    """Serialize read-modify-write of jobs.json between bench processes on this host (flock)."""
    lock = scratch(out) / ".jobs.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        except (ImportError, OSError):  # no flock (Windows, some network file systems): best effort
            pass
        yield


def read_records(out: Path) -> list[dict[str, Any]]:
    try:
        records = json.loads(jobs_path(out).read_text()).get("tasks", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [r for r in records if isinstance(r, dict) and {"job_id", "kind", "folder", "cells"} <= set(r)]


def update_records(out: Path, add: Sequence[Task] = (), drop: Iterable[str] = ()) -> None:
    """Add tasks to out/.bench/jobs.json and drop job ids from it (atomically, under the lock)."""
    dropped = set(drop)
    with locked(out):
        records = [r for r in read_records(out) if r["job_id"] not in dropped]
        known = {r["job_id"] for r in records}
        records += [task.record() for task in add if task.job_id not in known]
        if records:
            write_text_atomic(json.dumps({"tasks": records}, indent=1) + "\n", jobs_path(out))
        else:
            jobs_path(out).unlink(missing_ok=True)


def owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "submitted": time.time()}


def owner_alive(record_owner: dict[str, Any]) -> bool:
    """Whether the bench process that submitted a task still runs (known only on its own host)."""
    if record_owner.get("host") != socket.gethostname() or record_owner.get("pid") == os.getpid():
        return False
    return "bench" in process_cmdline(record_owner.get("pid"))


def process_cmdline(pid: Any) -> str:
    try:
        return Path(f"/proc/{int(pid)}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError, TypeError):
        return ""


# --- asking Slurm ----------------------------------------------------------------------------------
def slurm_command(command: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None


def expand_ids(text: str) -> list[str]:
    """``21_3`` → [21_3]; ``21_[4-6,9%2]`` → [21_4, 21_5, 21_6, 21_9]; ``22`` → [22]."""
    match = re.fullmatch(r"(\d+)_\[([\d,\-]+)(?:%\d+)?\]", text)
    if not match:
        return [text]
    ids = []
    for part in match[2].split(","):
        low, _, high = part.partition("-")
        ids += [f"{match[1]}_{i}" for i in range(int(low), int(high or low) + 1)]
    return ids


def parse_states(text: str) -> dict[str, str]:
    """``ID|STATE`` lines → {task id: state} (``CANCELLED by 0`` → ``CANCELLED``)."""
    states = {}
    for line in text.splitlines():
        job_id, _, state = line.strip().partition("|")
        if not job_id or not state or "." in job_id:
            continue
        word = state.split()[0].rstrip("+").upper()
        for task_id in expand_ids(job_id):
            states[task_id] = word
    return states


def squeue_states(arrays: Iterable[str]) -> dict[str, str] | None:
    """{task id: state} of the jobs slurmctld holds (pending, running, and ended in the last
    MinJobAge seconds); None when squeue fails (not installed, slurmctld unreachable)."""
    arrays = sorted(set(arrays))
    if not arrays:
        return {}
    run = slurm_command(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(arrays), "-o", "%i|%T"])
    if run is None:
        return None
    if run.returncode != 0:
        # every id unknown (long gone from slurmctld's memory): an answer, not a failure
        return {} if "invalid job id" in run.stderr.lower() else None
    return parse_states(run.stdout)


def sacct_states(arrays: Iterable[str]) -> dict[str, str] | None:
    """{task id: state} from Slurm's accounting; None without accounting (sacct missing or failing)."""
    arrays = sorted(set(arrays))
    if not arrays:
        return {}
    run = slurm_command(["sacct", "-n", "-P", "-X", "-j", ",".join(arrays), "-o", "JobID,State"])
    if run is None or run.returncode != 0:
        return None
    return parse_states(run.stdout)


def scancel(job_ids: Sequence[str]) -> bool:
    if not job_ids:
        return True
    run = slurm_command(["scancel", *job_ids])
    return run is not None and run.returncode == 0


# --- outcomes ----------------------------------------------------------------------------------------
@dataclass
class Stopped:
    """A sweep stop (time_limit) raised inside a task, returned instead of crashing it."""

    name: str
    message: str
    exit_status: int


class TaskFunction:
    """What a cluster task runs: the Hydra launcher's job function (which composes the job's
    config and runs bench's task). A sweep stop raised in it (a cell projected past time_limit)
    comes back as a ``Stopped`` value, so bench stops the sweep with its message and status
    instead of seeing a crashed task. ``checkpoint`` lets submitit requeue the task on preemption
    or timeout (the chunk then skips the cells it already wrote)."""

    def __init__(self, launcher: Any) -> None:
        self.launcher = launcher

    def __call__(self, *args: Any) -> Any:
        from bench.sweep import SweepStopped

        try:
            return self.launcher(*args)
        except SweepStopped as stop:
            return Stopped(type(stop).__name__, str(stop), stop.exit_status)

    def checkpoint(self, *args: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args)


def read_outcome(task: Task) -> tuple[str | None, Stopped | None]:
    """(why the task failed, or None; a sweep stop it returned, or None) from its result file."""
    from submitit.core.utils import pickle_load

    try:
        outcome, value = pickle_load(task.result_path())
    except Exception as error:  # unreadable or half-copied: the task's own fault
        return f"{task.kind}: FAILED (unreadable result: {type(error).__name__})", None
    if outcome != "success":
        lines = [line for line in str(value).strip().splitlines() if line.strip()]
        return f"{task.kind}: FAILED ({lines[-1].strip() if lines else 'no traceback'})", None
    value = getattr(value, "_return_value", value)  # Hydra's JobReturn (its property re-raises)
    if isinstance(value, Stopped):
        return None, value
    if isinstance(value, BaseException):
        return f"{task.kind}: FAILED ({' '.join(f'{type(value).__name__}: {value}'.split())})", None
    return None, None


@dataclass
class Lost:
    task: Task
    reason: str
    cells: list[str]


# --- submitting and waiting ----------------------------------------------------------------------------
class Cluster:
    """Submits chunks of planned cells through a submitit launcher and waits for them."""

    def __init__(self, launcher: Any, out: Path) -> None:
        import submitit
        from omegaconf import OmegaConf

        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        kind = submitit_kind(launcher)
        if kind is None:
            raise ValueError(f"not a submitit launcher: {type(launcher).__name__}")
        self.kind, self.launcher, self.out = kind, launcher, out.absolute()
        params = dict(launcher.params)
        folder = str(params.get("submitit_folder", ""))
        default = str(out / ".submitit" / "%j")
        if not folder or folder == default or Path(folder).absolute() == Path(default).absolute():
            folder = str(scratch(self.out) / SUBMITIT_DIR / "%j")  # bench's scratch, not out/.submitit
        self.folder = str(Path(folder).absolute())
        # Local jobs all start at once in submitit; bench starts at most `limit` at a time.
        parallel = (
            params.pop("array_parallelism", None) if kind == "local" else params.get("array_parallelism")
        )
        self.limit = int(parallel) if isinstance(parallel, int) and parallel > 0 else None
        if kind == "local" and self.limit is None:
            self.limit = usable_cores()
        init = {"folder": self.folder}
        if "max_num_timeout" in params:
            init[f"{kind}_max_num_timeout"] = params["max_num_timeout"]
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        rest = {
            (key if key in base else f"{kind}_{key}"): value
            for key, value in params.items()
            if key not in ("submitit_folder", "max_num_timeout")
        }
        try:
            self.executor = submitit.AutoExecutor(cluster=kind, **init)
            self.executor.update_parameters(**rest)
        except Exception as error:
            hint = " (is this a Slurm cluster? srun was not found)" if kind == "slurm" else ""
            raise ConfigError(f"hydra/launcher=submitit_{kind}", f"{error}{hint}") from None
        self.function = TaskFunction(launcher)
        self.queue: list[tuple[Task, tuple]] = []  # local jobs not started yet
        self.report: list[str] = []  # what bench says once the sweep's tables are written
        self.done: list[Task] = []  # tasks seen to end
        self.cpus = 1

    @property
    def name(self) -> str:
        return "Slurm" if self.kind == "slurm" else "local"

    # --- earlier runs
    def in_flight(self, cells: Iterable[str]) -> list[Task]:
        """Tasks recorded in out/.bench/jobs.json by an earlier run that are still queued or
        running and hold some of ``cells``; the records of tasks that have ended are dropped."""
        records = [Task.from_record(r) for r in read_records(self.out)]
        if not records:
            return []
        states = self.states([t for t in records if t.kind == "slurm"], sacct=False)
        alive, ended = [], []
        for task in records:
            if task.kind == "slurm" and states is None:  # squeue failed: keep the record, adopt nothing
                continue
            if task.kind == "slurm":
                running = states.get(task.job_id) in ACTIVE_STATES
            else:
                running = task.owner.get("host") == socket.gethostname() and local_alive(task.job_id)
            (alive if running else ended).append(task)
        update_records(self.out, drop=[t.job_id for t in ended])
        wanted = set(cells)
        return [task for task in alive if wanted & set(task.cells)]

    # --- submitting
    def submit(self, jobs: Sequence[Sequence[str]], cells: Sequence[Sequence[str]], plan: Path) -> list[Task]:
        """Submit one task per job (its Hydra overrides and its cell ids): Slurm as one job array;
        local jobs as the concurrency limit allows (``wait`` starts the rest). Each submitted task
        is recorded before a signal can stop bench."""
        from hydra.core.singleton import Singleton

        state = Singleton.get_state()
        params = [(list(job), "hydra.sweep.dir", i, f"job_id_for_{i}", state) for i, job in enumerate(jobs)]
        tasks = [
            Task(job_id="", kind=self.kind, folder=self.folder, cells=list(c), plan=str(plan), chunk=i,
                 owner=owner())
            for i, c in enumerate(cells)
        ]  # fmt: skip
        if self.kind == "slurm":
            with deferred_signals():
                submitted = self.executor.map_array(self.function, *zip(*params, strict=True))
                for task, job in zip(tasks, submitted, strict=True):
                    task.job, task.job_id = job, str(job.job_id)
                update_records(self.out, add=tasks)
        else:
            self.queue = list(zip(tasks, params, strict=True))
            self.cpus = max(1, usable_cores() // max(1, min(self.limit or 1, len(tasks))))
            self.start_queued(running=0)
        return tasks

    def start_queued(self, running: int) -> None:
        """Start queued local jobs while fewer than the limit run."""
        while self.queue and running < (self.limit or len(self.queue)):
            task, params = self.queue.pop(0)
            with deferred_signals(), task_cpus(self.cpus):
                task.job = self.executor.submit(self.function, *params)
                task.job_id = str(task.job.job_id)
                update_records(self.out, add=[task])
            running += 1

    # --- states
    def states(self, tasks: Sequence[Task], sacct: bool = True) -> dict[str, str] | None:
        """{job id: Slurm state} of ``tasks``: squeue first, sacct for the ones squeue has
        forgotten; None when squeue fails."""
        arrays = {t.array for t in tasks if t.kind == "slurm"}
        states = squeue_states(arrays)
        if states is None:
            return None
        missing = {t.array for t in tasks if t.kind == "slurm" and t.job_id not in states}
        if sacct and missing:
            for job_id, state in (sacct_states(missing) or {}).items():
                states.setdefault(job_id, state)
        return states

    def wait(self, tasks: Sequence[Task], lost: Callable[[Lost], None]) -> list[Lost]:
        """Wait until every task has ended; ``lost`` gets each that ended without running all its
        cells. Raises the sweep stop a task returned (after cancelling the others), and on
        KeyboardInterrupt or SweepStopped (SIGTERM) cancels every task still in flight first."""
        from bench.sweep import SweepStopped, TimeLimitExceeded

        pending, losses = list(tasks), []
        started, last_poll, states = time.monotonic(), -math.inf, None
        try:
            while pending or self.queue:
                if self.queue:  # local jobs: start the next ones as running ones end
                    running = [t for t in pending if t.kind == "local" and t.job_id and local_exit(t) is None]
                    self.start_queued(running=len(running))
                now = time.monotonic()
                slurm = [t for t in pending if t.kind == "slurm" and not t.result_path().exists()]
                if slurm and now - last_poll >= min(10.0, 1.0 + (now - started) / 30):
                    states, last_poll = self.states(slurm), now
                ended = 0
                for task in [t for t in pending if t.job_id]:
                    if task.result_path().exists():
                        reason, stop = read_outcome(task)
                        if stop is not None:
                            self.forget(task, pending)
                            raise TimeLimitExceeded(stop.message) if stop.name == "TimeLimitExceeded" \
                                else SweepStopped(stop.message)  # fmt: skip
                    else:
                        end = task_end(task, states if task.kind == "slurm" else {}, now)
                        if end is None:
                            continue
                        reason = f"{task.kind}: {end} (task {task.job_id})"
                    self.forget(task, pending)
                    ended += 1
                    unfinished = self.unfinished(task)
                    if unfinished:
                        why = reason or f"{task.kind}: {task.state} without running it (task {task.job_id})"
                        losses.append(Lost(task, why, unfinished))
                        lost(losses[-1])
                if not (ended and self.queue):
                    time.sleep(0.5)
        except (KeyboardInterrupt, SweepStopped):
            self.cancel(pending)
            raise
        self.cancel_requeued()
        return losses

    def cancel_requeued(self) -> None:
        """Cancel this run's Slurm tasks that wrote their result and were then requeued (preempted
        while exiting): run again, they would only skip their finished cells."""
        own = [t for t in self.done if t.kind == "slurm" and not t.adopted]
        states = squeue_states({t.array for t in own}) if own else None
        stray = [t.job_id for t in own if (states or {}).get(t.job_id) in REQUEUED_STATES]
        if stray:
            scancel(stray)

    def forget(self, task: Task, pending: list[Task]) -> None:
        pending.remove(task)
        self.done.append(task)
        update_records(self.out, drop=[task.job_id])

    def unfinished(self, task: Task) -> list[str]:
        """The task's cells with no row written since its plan was."""
        since = task.since()
        missing = []
        for cell in task.cells:
            try:
                if os.stat(cell_paths(self.out, cell)[0]).st_mtime >= since:
                    continue
            except OSError:
                pass
            missing.append(cell)
        return missing

    # --- cancelling
    def cancel(self, tasks: Sequence[Task]) -> None:
        """Cancel the tasks still in flight (and forget the queued ones); wait until they have left
        the queue, at most CANCEL_WAIT seconds. Tasks of an earlier run whose own bench process is
        still alive are left to it."""
        self.queue = []
        tasks = [t for t in tasks if t.job_id and not (t.adopted and owner_alive(t.owner))]
        if not tasks:
            return
        said = []
        with deferred_signals():  # a second Ctrl-C must not leave tasks running
            slurm = [t for t in tasks if t.kind == "slurm"]
            if slurm:
                own = {t.array for t in slurm if not t.adopted}
                ids = sorted(own | {t.job_id for t in slurm if t.adopted and t.array not in own})
                scancel(ids)
                deadline = time.monotonic() + CANCEL_WAIT
                while time.monotonic() < deadline:
                    states = squeue_states({t.array for t in slurm})
                    if states is not None and not any(states.get(t.job_id) in ACTIVE_STATES for t in slurm):
                        break
                    time.sleep(0.5)
                said.append(f"Slurm job{'s' if len(ids) > 1 else ''} {', '.join(ids)}")
            local = [t for t in tasks if t.kind == "local"]
            for task in local:
                stop_local(task)
            if local:
                said.append(f"{len(local)} local job{'s' if len(local) > 1 else ''}")
            update_records(self.out, drop=[t.job_id for t in tasks])
        what = " and ".join(said)
        print(f"bench: cancelled {what}", file=sys.stderr, flush=True)


def task_end(task: Task, states: dict[str, str] | None, now: float) -> str | None:
    """None while the task may still produce its result; else the state it ended in without one.

    ``states``: {job id: Slurm state} from the last poll (None: squeue failed). An end state counts
    after a settling time (``SETTLE``: the result file may still be on its way; a preempted task may
    be requeued); a task nobody knows counts as gone after ``VANISHED_AFTER`` seconds, and an
    unreachable slurmctld after ``UNREACHABLE_AFTER``."""
    if task.kind == "local":
        code = local_exit(task)
        if code is None:
            return None
        task.state = "COMPLETED" if code == 0 else (
            f"KILLED by {signal_name(-code)}" if code < 0 else f"EXITED {code}")  # fmt: skip
    elif states is None:
        task.unknown_since = now if task.unknown_since is None else task.unknown_since
        return "UNREACHABLE (squeue failed)" if now - task.unknown_since > UNREACHABLE_AFTER else None
    elif task.job_id not in states:  # neither squeue nor accounting knows it
        task.unknown_since = now if task.unknown_since is None else task.unknown_since
        if now - task.unknown_since > VANISHED_AFTER:
            return "VANISHED (left the queue; no accounting record)"
        return None
    else:
        task.unknown_since = None
        task.state = states[task.job_id]
        if task.state in ACTIVE_STATES:
            task.ended_at = None
            return None
    task.ended_at = now if task.ended_at is None else task.ended_at
    settle = SETTLE.get(task.state.split()[0], SETTLE_DEFAULT)
    return task.state if now - task.ended_at > settle else None


# --- local jobs ----------------------------------------------------------------------------------
def local_alive(pid: Any) -> bool:
    """A submitit local job process (the controller of one job) with this PID runs."""
    return "submitit.local._local" in process_cmdline(pid)


def local_exit(task: Task) -> int | None:
    """The local job's exit code (negative: killed by that signal), None while it runs."""
    process = getattr(task.job, "_process", None)
    if process is not None:
        return process.poll()
    return None if local_alive(task.job_id) else 0


def stop_local(task: Task, wait: float = 10.0) -> None:
    """Stop a local job: SIGINT to its controller (which stops its task), SIGKILL to the tree after
    ``wait`` seconds."""
    pid = int(task.job_id)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + wait
    process = getattr(task.job, "_process", None)
    while time.monotonic() < deadline:
        if (process.poll() is not None) if process is not None else not local_alive(pid):
            return
        time.sleep(0.1)
    for victim in [*descendants(pid), pid]:
        with contextlib.suppress(OSError):
            os.kill(victim, signal.SIGKILL)
    if process is not None:
        with contextlib.suppress(Exception):
            process.wait(5)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            parent = int(text[text.rindex(")") + 2 :].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# --- signals -------------------------------------------------------------------------------------------
@contextlib.contextmanager
def deferred_signals() -> Iterable[None]:
    """Hold SIGINT and SIGTERM while a task is submitted and recorded (or cancelled), then deliver
    them: a signal between sbatch and the record would leave a task bench does not know about."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _frame: received.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}  # fmt: skip
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            signal.raise_signal(received[0])


@contextlib.contextmanager
def task_cpus(cpus: int) -> Iterable[None]:
    """BENCH_TASK_CPUS for the local jobs started inside (they inherit bench's environment)."""
    before = os.environ.get("BENCH_TASK_CPUS")
    os.environ["BENCH_TASK_CPUS"] = str(cpus)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("BENCH_TASK_CPUS", None)
        else:
            os.environ["BENCH_TASK_CPUS"] = before


# --- the sweep's use -------------------------------------------------------------------------------------
def describe_tasks(kind: str, parts: Sequence[Sequence[int]], n_cells: int, cells_per_job: int | None,
                   seconds: float) -> str:  # fmt: skip
    how = (f"cells_per_job={cells_per_job}" if cells_per_job is not None else
           f"cells_per_job=auto: ~{seconds:.0f} s of projected work, each task at least "
           f"{STARTUP_SECONDS * (1 - STARTUP_SHARE) / STARTUP_SHARE:.0f} s against {STARTUP_SECONDS:.0f} s "
           "of start-up")  # fmt: skip
    name = "Slurm" if kind == "slurm" else "local"
    return f"bench: {n_cells} cells in {len(parts)} {name} task{'s' if len(parts) != 1 else ''} ({how})"


def plan_tasks(grid: Any, indices: Sequence[int], cells_per_job: int | None) -> tuple[list[list[int]], float]:
    costs = [
        projected_seconds(
            grid.specs[i].names["problem"], grid.specs[i].settings["n_samples"],
            grid.specs[i].settings["n_estimates"],
        )
        for i in indices
    ]  # fmt: skip
    return group_cells(indices, costs, cells_per_job), sum(costs)


def run_planned(
    cluster: Cluster, grid: Any, out: Path, indices: Sequence[int], cells_per_job: int | None, config: Any
) -> list[Any]:
    """Run the planned cells ``indices`` of a sweep as cluster tasks (bench.sweep.execute's
    ``launch``): wait for the ones an earlier run's tasks still hold, submit the rest in tasks,
    record the cells of tasks that ended without running them as failed, and say so."""
    from bench.output import run_metadata, write_cell
    from bench.sweep import skipped_row, sweep_state, write_plan, written_since

    by_cell = {grid.cells[i]: i for i in indices}
    adopted = cluster.in_flight(by_cell)
    busy = {cell for task in adopted for cell in task.cells} & set(by_cell)
    if busy:
        ids = ", ".join(t.job_id for t in adopted[:8]) + (", ..." if len(adopted) > 8 else "")
        print(f"bench: {len(busy)} cells are already being run by {len(adopted)} {cluster.name} "
              f"task{'s' if len(adopted) > 1 else ''} of an earlier run into this out ({ids}); waiting "
              "for them instead of submitting them again", flush=True)  # fmt: skip
    # cells an earlier run's tasks finished since this sweep listed what to run
    started = sweep_state(out).get("started", time.time())
    fresh = {cell for cell in set(by_cell) - busy if written_since(cell_paths(out, cell)[0], started)}
    todo = [i for i in indices if grid.cells[i] not in busy | fresh]
    tasks: list[Task] = []
    if todo:
        parts, seconds = plan_tasks(grid, todo, cells_per_job)
        print(describe_tasks(cluster.kind, parts, len(todo), cells_per_job, seconds), flush=True)
        run = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        plan = write_plan(grid, out, parts, name=f"plan-{run}.json")
        jobs = [[f"+bench_plan='{plan}'", f"+bench_chunk={i}"] for i in range(len(parts))]
        tasks = cluster.submit(jobs, [[grid.cells[i] for i in part] for part in parts], plan)
        if cluster.kind == "slurm":
            print(f"bench: submitted Slurm job {tasks[0].array} ({len(tasks)} tasks); logs under "
                  f"{Path(cluster.folder).parent}", flush=True)  # fmt: skip
    metadata = run_metadata(config)

    def record_lost(loss: Lost) -> None:
        for cell in loss.cells:
            if cell in by_cell:  # an adopted task may hold cells of another sweep
                spec = grid.specs[by_cell[cell]]
                row = {**skipped_row(cell, spec, loss.reason), "status": "failed"}
                write_cell(out, row, [], spec.configs, metadata)

    losses = cluster.wait(tasks + adopted, record_lost)
    remove_stale_plans(out)
    if losses:
        cells = sum(len([c for c in loss.cells if c in by_cell]) for loss in losses)
        counts: dict[str, int] = {}
        for loss in losses:
            state = loss.reason.split(": ", 1)[-1].split(" (")[0]
            counts[state] = counts.get(state, 0) + 1
        states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        cluster.report.append(
            f"bench: {len(losses)} {cluster.name} task{'s' if len(losses) > 1 else ''} ended before running "
            f"all their cells ({states}): {cells} cell{'s' if cells != 1 else ''} recorded as failed, "
            "with the reason; run the same command again to run them"
        )
    return []


def remove_stale_plans(out: Path) -> None:
    """Delete the plan files no recorded task reads any more (and submitit_local's literal %j folder)."""
    keep = {str(Path(r.get("plan", "")).name) for r in read_records(out)}
    for path in scratch(out).glob("plan-*.json"):
        if path.name not in keep:
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (scratch(out) / SUBMITIT_DIR / "%j").rmdir()
