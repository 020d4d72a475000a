"""Writing figures: PNG and SVG, atomically, and a forked child that draws part of them.

The figures are independent: on Linux with two cores a forked child draws its share while the parent
draws the rest. The child inherits the prepared table and the loaded fonts and runs only matplotlib.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from bench.files import replaced_atomically

from .style import apply_theme
from .text import DPI


def save(figure: Figure, directory: Path, stem: str) -> list[Path]:
    """Write ``stem``.png and ``stem``.svg atomically (a temporary file, then a rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    with matplotlib.rc_context(apply_theme()):
        for suffix in ("png", "svg"):
            path = directory / f"{stem}.{suffix}"
            options = (
                {"metadata": {"Date": None}} if suffix == "svg" else {"pil_kwargs": {"compress_level": 1}}
            )
            with replaced_atomically(path, suffix=f".{suffix}") as temporary:
                figure.savefig(temporary, format=suffix, dpi=DPI, **options)
            written.append(path)
    return written


def can_fork() -> bool:
    """Fork where it is safe and cheap (Linux; macOS frameworks are not fork-safe) and a second core
    is ours."""
    if sys.platform != "linux" or not hasattr(os, "fork"):
        return False
    try:
        return len(os.sched_getaffinity(0)) >= 2
    except AttributeError:
        return (os.cpu_count() or 1) >= 2


def fork_drawing(stems: Sequence[str], draw: Callable[[str], list[Path]]) -> tuple[int, int] | None:
    """A forked child that draws ``stems`` with ``draw`` and reports the files it wrote through a
    pipe: (pid, the pipe's reading end), or None if the fork fails."""
    reader, writer = os.pipe()
    gc.freeze()  # the child's collector leaves the parent's objects (and their pages) alone
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # Python >= 3.12 warns on fork
            pid = os.fork()
    except OSError:
        os.close(reader)
        os.close(writer)
        return None
    finally:
        gc.unfreeze()
    if pid == 0:  # the child: never returns, never runs the parent's exit handlers
        status = 1
        try:
            os.close(reader)
            written = [str(path) for stem in stems for path in draw(stem)]
            with os.fdopen(writer, "w") as stream:
                json.dump(written, stream)
            status = 0
        finally:
            os._exit(status)
    os.close(writer)
    return pid, reader


def collect(child: tuple[int, int], abandon: bool) -> list[Path] | None:
    """The files the child wrote, or None if it failed (or was abandoned: killed)."""
    pid, reader = child
    if abandon:
        os.kill(pid, signal.SIGKILL)
    with os.fdopen(reader) as stream:
        text = stream.read()
    _, status = os.waitpid(pid, 0)
    if abandon or not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        return None
    return [Path(path) for path in json.loads(text)]
