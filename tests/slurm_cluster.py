"""Find the throw-away Slurm cluster that `.ci/slurm/start` runs, for the Slurm tests.

`.ci/slurm/start` writes everything to ``$BENCH_SLURM_DIR`` (default ``/tmp/bench-slurm``); a client
(sbatch, squeue, sacct, scancel, and so submitit, which calls them) needs only ``SLURM_CONF``
pointing at the ``slurm.conf`` there. A job inherits the submitter's environment, so the ``srun``
that submitit's batch script runs finds the cluster too.

Usage in a test module (``tests/`` is on ``sys.path`` under pytest's default import mode)::

    from slurm_cluster import use_slurm

    def test_submit(monkeypatch, tmp_path):
        use_slurm(monkeypatch)  # skips, with the reason, unless the cluster answers
        ...
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

RUN_DIR = Path(os.environ.get("BENCH_SLURM_DIR", "/tmp/bench-slurm"))
# Node states in which the node takes jobs (sinfo's %T; a trailing flag such as $ or @ is dropped,
# but "*", not responding, makes the node unusable).
_USABLE = {"idle", "mixed", "allocated", "completing"}


def _conf() -> Path:
    given = os.environ.get("SLURM_CONF")
    return Path(given) if given else RUN_DIR / "slurm.conf"


def _controller(conf: Path) -> tuple[str, int]:
    """slurmctld's address and port as slurm.conf gives them (SlurmctldHost=name(addr))."""
    host, port = "127.0.0.1", 6817
    for line in conf.read_text().splitlines():
        key, _, value = line.partition("=")
        key, value = key.strip().lower(), value.split("#")[0].strip()
        if key in ("slurmctldhost", "controlmachine") and value:
            host = value.partition("(")[2].rstrip(")") or value.partition("(")[0]
        elif key == "slurmctldport" and value.split("-")[0].isdigit():
            port = int(value.split("-")[0])
    return host, port


def unavailable_reason() -> str | None:
    """Why the Slurm cluster cannot take jobs, or None when it can."""
    conf = _conf()
    if not conf.is_file():
        return f"no Slurm cluster: {conf} is missing (start one with .ci/slurm/start)"
    if shutil.which("sinfo") is None:
        return "no Slurm cluster: sinfo is not installed (.ci/slurm/start installs it)"
    # A quick look first: with no controller listening, sinfo retries for about 10 s.
    host, port = _controller(conf)
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as error:
        return f"no Slurm cluster: slurmctld at {host}:{port} ({conf}) does not answer: {error}"
    try:
        done = subprocess.run(
            ["sinfo", "-h", "-o", "%T"],
            env={**os.environ, "SLURM_CONF": str(conf)},
            capture_output=True,
            text=True,
            timeout=15,
        )
    except subprocess.TimeoutExpired:
        return f"no Slurm cluster: sinfo (SLURM_CONF={conf}) timed out"
    if done.returncode != 0:
        return f"no Slurm cluster: sinfo (SLURM_CONF={conf}) failed: {done.stderr.strip()[:300]}"
    states = [line.strip().rstrip("~#!%$@^-").lower() for line in done.stdout.splitlines() if line.strip()]
    if not any(state in _USABLE for state in states):
        return f"Slurm cluster at {conf} has no usable node (states: {', '.join(states) or 'none'})"
    return None


def slurm_env() -> dict[str, str] | None:
    """The variables a Slurm client needs ({"SLURM_CONF": ...}), or None when the cluster is down."""
    if unavailable_reason() is not None:
        return None
    return {"SLURM_CONF": str(_conf())}


def use_slurm(monkeypatch) -> dict[str, str]:
    """Skip the calling test unless the cluster answers; else set its variables for the test."""
    import pytest

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    env = {"SLURM_CONF": str(_conf())}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env
