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

from bench.cluster.constants import ACTIVE_STATES, VANISHED_AFTER
from bench.cluster.records import Task
from bench.cluster.run import run_planned
from bench.cluster.sizing import (
    allotted_cores,
    describe_tasks,
    group_cells,
    parse_cells_per_job,
    plan_tasks,
    submitit_kind,
    task_count,
)
from bench.cluster.slurm import expand_ids, parse_states
from bench.cluster.watch import Cluster, task_end

__all__ = [
    "ACTIVE_STATES",
    "VANISHED_AFTER",
    "Cluster",
    "Task",
    "allotted_cores",
    "describe_tasks",
    "expand_ids",
    "group_cells",
    "parse_cells_per_job",
    "parse_states",
    "plan_tasks",
    "run_planned",
    "submitit_kind",
    "task_count",
    "task_end",
]
