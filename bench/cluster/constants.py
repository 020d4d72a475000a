"""The measured costs, time limits and Slurm states the cluster path works with."""

# What a cluster task costs besides its cells: Slurm starting it, the interpreter, torch, Hydra
# composing the job's config, bench, and its end. Measured on the 2-core machine of the Slurm tests
# (single-node Slurm, tasks of one 4 ms cell): 2.0 s from the interpreter's start to the result file
# plus 1-3 s between one task's result and the next task's start, 3-5 s a task when the machine is
# otherwise idle; 4-7 s with two tasks at once and other load. 6 s is the figure bench sizes with.
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
# States of a task that wrote its result and was then requeued (it would only rerun finished cells).
REQUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD"}
