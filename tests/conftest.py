"""Shared fixtures. Statistical tests follow torch.distributions' rule: each states its false-alarm
rate; a failing seed may be bumped at most once, and twice means a real bug."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.sweep import build, default_config  # noqa: E402


def make(group: str, name: str, **overrides):
    """A problem or estimator built from its YAML defaults plus ``overrides``."""
    return build(group, name, {**default_config(group, name), **overrides})


@pytest.fixture
def tmp_out(tmp_path: Path) -> Path:
    return tmp_path / "out"
