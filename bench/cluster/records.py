"""The record of cluster tasks in flight: ``out/.bench/jobs.json``, written atomically under a lock,
with the bench process that owns each task."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.cluster.constants import JOBS_FILE
from bench.output import scratch, write_text_atomic


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
