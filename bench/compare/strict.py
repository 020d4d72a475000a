"""What ``--strict`` fails on (exit 6), and what is otherwise only reported: a baseline cell the
new sweep lacks, a cell that was ok and is not (skipped or failed), and a matched pair whose
settings differ (n_estimates, seed or device: cells paired by their config, not by id). The torch
threads are not a setting here: ``threads=auto`` picks fewer on a loaded machine, so they are
reported beside the throughput instead."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.compare.common import Pair, canonical, text

# The settings a matched pair may differ in (problem, estimator, dtype, n_samples and the shared
# config columns are what matching by setting pairs on, so those never differ).
SETTINGS = ["n_estimates", "seed", "device"]


def setting_text(value: Any) -> str:
    value = canonical(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "-" if value is None else str(value)


def check_pair(pair: Pair) -> None:
    """Records on ``pair.strict`` what --strict fails on; a changed setting is also a ``setting``
    change in the findings (reported in the table)."""
    before, after = text(pair.base.get("status")), text(pair.new.get("status"))
    if before == "ok" and after != "ok":
        pair.strict.append(f"ok→{after}")
    changed = [
        f"{column} {setting_text(pair.base.get(column))}→{setting_text(pair.new.get(column))}"
        for column in SETTINGS
        if None not in (canonical(pair.base.get(column)), canonical(pair.new.get(column)))
        and canonical(pair.base.get(column)) != canonical(pair.new.get(column))
    ]
    if changed:
        pair.strict.append("changed " + ", ".join(changed))
        pair.findings["setting"] = "change"
        pair.data["settings_changed"] = changed


def strict_checks(pairs: Sequence[Pair], unmatched_base: Sequence[dict]) -> dict[str, int]:
    """Counts of what --strict fails on: missing baseline cells, ok→not ok, changed settings."""
    for pair in pairs:
        check_pair(pair)
    return {
        "missing_in_new": len(unmatched_base),
        "no_longer_ok": sum(any(item.startswith("ok→") for item in p.strict) for p in pairs),
        "settings_changed": sum("setting" in p.findings for p in pairs),
    }
