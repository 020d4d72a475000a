"""The sweep's use of ``Cluster``: run the planned cells as tasks and record the lost ones."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.cluster.constants import SUBMITIT_DIR
from bench.cluster.records import Task, read_records
from bench.cluster.sizing import describe_tasks, plan_tasks
from bench.cluster.watch import Cluster, Lost
from bench.output import cell_paths, scratch


def run_planned(
    cluster: Cluster, grid: Any, out: Path, indices: Sequence[int], cells_per_job: int | None, config: Any
) -> list[Any]:
    """Run the planned cells ``indices`` of a sweep as cluster tasks (bench.sweep.execute's
    ``launch``): wait for the ones an earlier run's tasks still hold, submit the rest in tasks,
    record the cells of tasks that ended without running them as failed, and say so."""
    from bench.cell import sweep_state
    from bench.output import run_metadata, write_cell
    from bench.sweep import chunk_overrides, skipped_row, write_plan, written_since

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
        jobs = [chunk_overrides(plan, i, out) for i in range(len(parts))]
        tasks = cluster.submit(jobs, [[grid.cells[i] for i in part] for part in parts], plan)
        logs = Path(cluster.folder).parent
        if cluster.kind == "slurm":
            n = f"{len(tasks)} task{'s' if len(tasks) > 1 else ''}"
            print(f"bench: submitted Slurm job {tasks[0].array} ({n}); logs under {logs}", flush=True)
        else:
            print(f"bench: running {len(tasks)} local job{'s' if len(tasks) > 1 else ''}, at most "
                  f"{cluster.limit} at a time, {cluster.cpus} thread{'s' if cluster.cpus > 1 else ''} each; "
                  f"logs under {logs}", flush=True)  # fmt: skip
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
        with contextlib.suppress(OSError):  # a minute's grace: another bench may be submitting its tasks
            if path.name not in keep and time.time() - path.stat().st_mtime > 60:
                path.unlink()
    with contextlib.suppress(OSError):
        (scratch(out) / SUBMITIT_DIR / "%j").rmdir()
