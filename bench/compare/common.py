"""What every part of ``bench compare`` shares: exit statuses, options, a matched pair, and the
helpers that read a table's values the same way whatever its column types."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

EXIT_OK, EXIT_BAD_INPUT, EXIT_REGRESSION, EXIT_STRICT = 0, 2, 5, 6
# The kinds of finding that can be a regression (the exit status 5), in the summary's order.
KINDS = ["status", "conformance", "variance", "throughput"]


class BadInput(Exception):
    """Input the comparison cannot use; the message names the directory, column or option."""


@dataclass
class Options:
    variance_tolerance: float = 0.10
    throughput_tolerance: float = 0.15
    alpha: float = 0.01
    control: str | None = None
    count_busy: bool = False
    throughput: bool = True
    strict: bool = False
    min_timed_seconds: float = 0.5
    noise_floor: float = 0.065  # τ: run-to-run sd of log(new/base) at 1 s timed (docs/compare.md)


@dataclass
class Pair:
    base: dict[str, Any]
    new: dict[str, Any]
    match: str  # "id" | "config"
    findings: dict[str, str] = field(default_factory=dict)  # kind → "regression" | "change" | "improvement"
    data: dict[str, Any] = field(default_factory=dict)
    strict: list[str] = field(default_factory=list)  # what --strict fails on: "ok→skipped", ...


def missing(value: Any) -> bool:
    try:
        return value is None or bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or array: present
        return False


def number(value: Any) -> float:
    """A float, NaN for a missing or non-numeric value."""
    if missing(value):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def text(value: Any) -> str | None:
    return None if missing(value) else str(value)


def key_number(value: Any) -> float | None:
    """A number for a dict key (None, not NaN, for a missing one: NaN never equals itself)."""
    result = number(value)
    return None if math.isnan(result) else result


def canonical(value: Any) -> Any:
    """A config value in a form that compares equal across tables: numbers as floats (an Int64
    column in one table may be float64 in the other), JSON text re-serialized."""
    if missing(value):
        return None
    if isinstance(value, bool) or type(value).__name__ == "bool_":  # numpy's bool too
        return bool(value)
    if isinstance(value, (int, float)) or (hasattr(value, "__float__") and not isinstance(value, str)):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.dumps(json.loads(value), sort_keys=True)
        except ValueError:
            return value
    return str(value) if not isinstance(value, str) else value


def json_safe(value: Any) -> Any:
    """``value`` with NaN, pandas NA and numpy scalars made JSON-friendly."""
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if missing(value):
        return None
    if isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):  # numpy scalars
        return json_safe(value.item())
    return str(value)


def fmt(value: float, digits: int = 3) -> str:
    return "-" if not math.isfinite(value) else f"{value:.{digits}g}"


def both_ok(pair: Pair) -> bool:
    return text(pair.base.get("status")) == "ok" and text(pair.new.get("status")) == "ok"


def counted(pair: Pair, kind: str, options: Options) -> bool:
    """Whether a finding sets the exit status: every regression, except a throughput drop timed on
    a busy machine (unless --count-busy)."""
    if pair.findings.get(kind) != "regression":
        return False
    return not (kind == "throughput" and pair.data.get("busy") and not options.count_busy)
