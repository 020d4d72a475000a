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


FAST_TRAIN_STEPS = 30


def make_for_tests(group: str, name: str, **overrides):
    """Like ``make``, but a trained estimator trains for at most FAST_TRAIN_STEPS steps, so the
    generic suites can include it at a small cost (its statistical guarantees do not depend on
    how well it is trained: the fitted state is frozen before measuring)."""
    defaults = default_config(group, name)
    if group == "estimator" and isinstance(defaults.get("train_steps"), int):
        overrides = {"train_steps": min(defaults["train_steps"], FAST_TRAIN_STEPS), **overrides}
    return make(group, name, **overrides)


@pytest.fixture
def tmp_out(tmp_path: Path) -> Path:
    return tmp_path / "out"


@pytest.fixture(scope="session", autouse=True)
def nothing_left_in_results():
    """The suite leaves no sweep folder behind in the checkout's results/ (commands that ran nothing
    must not create one, and tests write their sweeps under tmp_path)."""
    results = ROOT / "results"
    before = set(results.iterdir()) if results.is_dir() else set()
    yield
    after = set(results.iterdir()) if results.is_dir() else set()
    left = sorted(path.name for path in after - before if path.name not in (".cache", ".gitkeep"))
    assert not left, f"the tests left folders in {results}: {left}"
