"""Submitting planned cells as tasks and watching them to their end (``Cluster``): outcomes, lost
tasks, cancellation."""

from __future__ import annotations

import math
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cluster.constants import (
    ACTIVE_STATES,
    CANCEL_WAIT,
    REQUEUED_STATES,
    SETTLE,
    SETTLE_DEFAULT,
    SUBMITIT_DIR,
    UNREACHABLE_AFTER,
    VANISHED_AFTER,
)
from bench.cluster.records import Task, owner, owner_alive, read_records, update_records
from bench.cluster.sizing import submitit_kind
from bench.cluster.slurm import (
    deferred_signals,
    local_alive,
    local_exit,
    sacct_states,
    scancel,
    signal_name,
    squeue_states,
    stop_local,
    task_cpus,
)
from bench.errors import ConfigError
from bench.output import cell_paths, scratch, usable_cores


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
        from bench.stops import SweepStopped

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
        except Exception as error:  # no srun, an unknown parameter, a folder it cannot create
            raise ConfigError(f"hydra/launcher=submitit_{kind}", " ".join(str(error).split())) from None
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
        from bench.stops import SweepStopped, TimeLimitExceeded

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
