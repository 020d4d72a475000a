"""Asking Slurm (squeue, sacct, scancel) and managing ``submitit_local`` job processes and signals."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bench.cluster.records import Task, process_cmdline


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
