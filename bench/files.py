"""Files written atomically: a temporary file beside the target, then ``os.replace``, so that a
reader (or a run killed mid-write) never sees half a file. Standard library only: problems use it
too, without pulling in the output stack."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replaced_atomically(path: Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path in ``path``'s folder (created if missing) to write to; when the block ends
    it replaces ``path``, readable by everyone (mkstemp makes it private), and when the block
    raises it is removed. ``suffix`` for writers that go by the file's extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
