"""Running a planned set of training runs: each run resumes from its checkpoint when it has one, a
failing run is recorded with its reason while the others go on, a signal or the time limit stops
the command after the current evaluation's checkpoint, and the runs are then merged, summarized
and plotted."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench.cell import auto_threads
from bench.errors import NotApplicable
from bench.output import run_metadata, scratch, write_text_atomic
from bench.plan import JobSpec, Plan
from bench.registry import build, default_config
from bench.settings import format_duration, parse_duration, parse_threads, resolve_device, resolve_dtype
from bench.stops import (
    EXIT_FAILED,
    EXIT_OK,
    Interrupted,
    SweepStopped,
    TimeLimitExceeded,
    is_main_thread,
    raise_interrupted,
)
from bench.training.loop import RunSettings, State, eval_steps, run_training
from bench.training.runs import (
    RUN_KEYS,
    load_checkpoint,
    merge_runs,
    run_dir,
    run_status,
    save_checkpoint,
    write_run,
)

log = logging.getLogger("bench")


def run_base(run: str, spec: JobSpec, device: str) -> dict[str, Any]:
    """The columns every row of a run shares."""
    names, settings = spec.names, spec.settings
    return {
        "run": run, "problem": names["problem"], "estimator": names["estimator"],
        **{key: settings[key] for key in RUN_KEYS}, "basket": json.dumps(settings["basket"]),
        "device": device, "status": "partial", "reason": None,
        "_problem_config": json.dumps(spec.configs["problem"]),
        "_estimator_config": json.dumps(spec.configs["estimator"]),
    }  # fmt: skip


def run_settings(settings: dict[str, Any]) -> RunSettings:
    values = {key: settings[key] for key in RUN_KEYS if key != "dtype"}
    return RunSettings(dtype=resolve_dtype(settings["dtype"]), **values)


class RunWriter:
    """Writes a run's checkpoint and files after each evaluation, and guards the time limit."""

    def __init__(self, out: Path, run: str, base: dict[str, Any], metadata: dict[str, Any],
                 limit: float | None, started: float, eval_steps: list[int]) -> None:  # fmt: skip
        self.out, self.run, self.base, self.metadata = out, run, base, metadata
        self.limit, self.started, self.eval_steps = limit, started, eval_steps
        self.rows: list[dict[str, Any]] = []
        self.basket_rows: list[dict[str, Any]] = []

    def __call__(self, state: State, steps: int) -> None:
        # The run's files first, then the checkpoint: a stop between the two leaves files that the
        # merge shows (a Ctrl-C right after the first evaluation included) and the previous
        # checkpoint, from which a resumed run repeats the same rows exactly.
        status = "ok" if state.step >= steps else "partial"
        self.write(state.rows, state.basket_rows, status)
        checkpoint = run_dir(self.out, self.run) / "checkpoint.pt"
        if status == "ok":
            checkpoint.unlink(missing_ok=True)
            return
        save_checkpoint(state.checkpoint(), checkpoint)
        if self.limit is not None and state.step > 0:  # at step 0 nothing says what a step costs
            evals = [row["eval_seconds"] for row in state.rows]
            remaining_evals = sum(1 for step in self.eval_steps if step > state.step)
            projected = (
                state.seconds / state.step * (steps - state.step) + sum(evals) / len(evals) * remaining_evals
            )
            spent = time.time() - self.started
            if spent + projected > self.limit:
                raise TimeLimitExceeded(
                    f"run {self.run} ({self.base['problem']} × {self.base['estimator']}) needs about "
                    f"{format_duration(projected)} more, which with the {format_duration(spent)} spent "
                    f"passes time_limit={format_duration(self.limit)}; its checkpoint is saved: rerun "
                    "with a larger time_limit (or none) to continue"
                )

    def write(self, rows: list[dict[str, Any]], basket_rows: list[dict[str, Any]], status: str,
              reason: str | None = None) -> None:  # fmt: skip
        self.rows = [{**self.base, **row, "status": status, "reason": reason} for row in rows]
        keys = {k: self.base[k] for k in ("run", "problem", "n_samples", "seed")}
        self.basket_rows = [
            {**keys, "run_estimator": self.base["estimator"], **row} for row in basket_rows
        ]  # fmt: skip
        write_run(self.out, self.run, self.rows or [{**self.base, "status": status, "reason": reason}],
                  self.basket_rows, self.metadata)  # fmt: skip


def execute_run(spec: JobSpec, run: str, out: Path, metadata: dict[str, Any], started: float) -> str:
    """Train one run (resuming it from its checkpoint) and write its files; return its status."""
    container = spec.container
    device = resolve_device(str(container["device"]))
    base = run_base(run, spec, str(device))
    limit = parse_duration(container["time_limit"])
    writer = RunWriter(out, run, base, metadata, limit, started, eval_steps(run_settings(spec.settings)))
    saved = load_checkpoint(out, run) if container["resume"] else None
    threads_before = torch.get_num_threads()
    label = f"{spec.names['problem']} × {spec.names['estimator']} seed={spec.settings['seed']}"
    try:
        torch.set_num_threads(parse_threads(container["threads"]) or auto_threads(1))
        problem = build("problem", spec.names["problem"], spec.configs["problem"], device)
        estimator = build("estimator", spec.names["estimator"], spec.configs["estimator"])
        members = spec.settings["basket"]
        basket = {name: build("estimator", name, default_config("estimator", name)) for name in members}
        settings = run_settings(spec.settings)
        if saved is not None:
            log.info(f"{label}: resuming from step {saved['step']}")
        run_training(problem, estimator, basket, settings, saved=saved,
                     on_eval=lambda state: writer(state, settings.steps))  # fmt: skip
        status = "ok"
        final = writer.rows[-1]
        log.info(f"{label}: ok, objective {final['objective']:.5g} after {settings.steps} steps "
                 f"({final['seconds']:.1f} s training)")  # fmt: skip
    except NotApplicable as reason:
        status = "skipped"
        writer.write([], [], status, str(reason))
    except Exception as error:  # one run fails, the others go on
        log.debug("run %s failed", run, exc_info=True)
        status = "failed"
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        kept = [{k: v for k, v in row.items() if k not in writer.base} for row in writer.rows]
        writer.write(kept, [], status, reason)
        log.info(f"{label}: failed: {reason}")
    finally:
        torch.set_num_threads(threads_before)
    return status


def execute(grid: Plan, out: Path, config: dict[str, Any]) -> int:
    """Run the planned runs (reusing finished ones), then merge, summarize and plot; the exit status."""
    resume = bool(config["resume"])
    reused = {run for run in grid.cells if resume and run_status(out, run) in ("ok", "skipped")}
    to_run = [i for i, run in enumerate(grid.cells) if run not in reused]
    print(f"bench: {len(grid.cells)} training runs"
          + (f"; {len(reused)} already finished in out are reused" if reused else "")
          + f"; {len(to_run)} to run -> {out}", flush=True)  # fmt: skip
    metadata = run_metadata(config)
    started = time.time()
    write_text_atomic(json.dumps({"started": started, "runs": grid.cells}), scratch(out) / "train.json")
    stopped: SweepStopped | None = None
    previous = signal.signal(signal.SIGTERM, raise_interrupted) if is_main_thread() else None
    try:
        for index in to_run:
            execute_run(grid.specs[index], grid.cells[index], out, metadata, started)
    except KeyboardInterrupt:
        stopped = Interrupted(signal.SIGINT)
    except SweepStopped as stop:
        stopped = stop
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    status = finish(out, grid.cells, metadata, bool(config["plots"]))
    if stopped is not None:
        done = sum(run_status(out, run) in ("ok", "skipped", "failed") for run in grid.cells)
        what = "interrupted" if isinstance(stopped, Interrupted) else "stopped"
        why = "" if isinstance(stopped, Interrupted) else f": {stopped}"
        print(f"bench: {what} after {done} of {len(grid.cells)} runs{why}. Run the same command again "
              "to resume (each run continues from its last evaluation)", file=sys.stderr)  # fmt: skip
        return stopped.exit_status
    return status


def finish(
    out: Path, runs: Sequence[str], metadata: dict[str, Any], draw_plots: bool, quiet: bool = False
) -> int:
    """Merge the runs that have files, print (unless ``quiet``) and write the summary, draw the plots."""
    present = [run for run in runs if run_status(out, run) is not None]
    if not present:
        return EXIT_OK
    curves, basket = merge_runs(out, present, metadata)
    from bench.training.summary import summarize_training

    text = summarize_training(curves)
    if not quiet:
        print(text)
    write_text_atomic(text + "\n", out / "summary.txt")
    if draw_plots:
        from bench.plots import training_figures

        written = training_figures(curves, basket, out / "plots")
        print(f"plots: {', '.join(str(p) for p in written if p.suffix == '.png') or 'none'}")
    print(f"tables: {out / 'curves.parquet'}, {out / 'basket.parquet'}  ({len(present)} runs)")
    failed = sorted({str(run) for run in curves.loc[curves["status"] == "failed", "run"]})
    if failed:
        print(f"bench: {len(failed)} run(s) failed; see the reason column", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
