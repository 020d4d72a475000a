"""The comparison as text (header lines, a table of the pairs that changed, unmatched cells, notes,
one summary line) and as JSON (``--json``), and the exit status."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bench.compare.common import (
    EXIT_OK,
    EXIT_REGRESSION,
    EXIT_STRICT,
    KINDS,
    Options,
    Pair,
    both_ok,
    canonical,
    counted,
    fmt,
    json_safe,
    missing,
    text,
)
from bench.compare.reading import Sweep
from bench.compare.throughput import MIN_CORE_SHARE

MAX_UNMATCHED_LISTED = 10
VERDICT_WORDS = {
    ("status", "regression"): "FAILED",
    ("status", "improvement"): "fixed",
    ("status", "change"): "status changed",
    ("conformance", "regression"): "CONFORMANCE FAIL",
    ("conformance", "improvement"): "conformance fixed",
    ("conformance", "change"): "conformance changed",
    ("variance", "regression"): "VARIANCE UP",
    ("variance", "improvement"): "variance down",
    ("variance", "change"): "variance zero changed",
    ("throughput", "regression"): "SLOWER",
    ("throughput", "improvement"): "faster",
    ("setting", "change"): "settings changed",
}
HEADER = [
    "cell", "problem", "estimator", "config (keys that vary)", "n_s", "status", "variance new/base [bound]",
    "conformance", "speed", "load/threads/held", "verdict",
]  # fmt: skip


@dataclass
class Comparison:
    """Everything the report needs."""

    base: Sweep
    new: Sweep
    pairs: list[Pair]
    unmatched_base: list[dict]
    unmatched_new: list[dict]
    notes: list[str]
    variance_info: dict[str, Any]
    throughput_info: dict[str, Any]
    strict_counts: dict[str, int]
    options: Options
    show_all: bool


# --- the table ------------------------------------------------------------------------------------
def varying_columns(
    frames: Sequence[pd.DataFrame], columns: Sequence[str]
) -> dict[tuple[str, str], list[str]]:
    """(problem, estimator) → the config columns whose value varies among its cells (both tables):
    the keys that tell its cells apart, shown in the table (the JSON has every config value)."""
    rows = pd.concat([frame[["problem", "estimator", *columns]] for frame in frames], ignore_index=True)
    varying = {}
    for (problem, estimator), group in rows.groupby(["problem", "estimator"], sort=False):
        varying[(problem, estimator)] = [
            column for column in columns if len({canonical(value) for value in group[column]}) > 1
        ]
    return varying


def config_text(row: dict[str, Any], columns: Sequence[str], width: int = 40) -> str:
    parts = [f"{column}={row[column]}" for column in columns if column in row and not missing(row[column])]
    joined = ",".join(parts).replace(" ", "") or "-"
    return joined if len(joined) <= width else joined[: width - 1] + "…"


def load_text(pair: Pair) -> str:
    """load average, threads and cores held while timed, baseline→new: ``1.9/1t/98%→2.1/1t/51%``."""

    def one(side: str) -> str:
        load, threads, share = (pair.data[f"{name}_{side}"] for name in ("load_avg", "threads", "core_share"))
        if not any(math.isfinite(x) for x in (load, threads, share)):
            return "-"
        return f"{fmt(load, 2)}/{fmt(threads)}t/" + (f"{share:.0%}" if math.isfinite(share) else "-")

    return f"{one('baseline')}→{one('new')}"


def speed_text(pair: Pair) -> str:
    """The normalized ratio, with its z when judged or ``short`` when too short to judge."""
    d = pair.data
    if "throughput_ratio" not in d:
        return "-"
    if d.get("throughput_judged"):
        return f"{fmt(d['throughput_ratio'])} z={d['throughput_z']:+.1f}"
    return f"{fmt(d['throughput_ratio'])} short"


def verdict_text(pair: Pair, options: Options) -> str:
    words = []
    for kind in [*KINDS, "setting"]:
        finding = pair.findings.get(kind)
        if finding is None:
            continue
        word = VERDICT_WORDS[(kind, finding)]
        if kind == "throughput" and pair.data.get("busy"):
            uncounted = finding == "regression" and not counted(pair, kind, options)
            word += f" (busy: {pair.data['busy']}{'; not counted' if uncounted else ''})"
        if kind == "setting":
            word += f" ({', '.join(pair.data['settings_changed'])})"
        words.append(word)
    return ", ".join(words) or "same"


def table_row(pair: Pair, varying: dict[tuple[str, str], list[str]], options: Options) -> list[str]:
    d = pair.data
    cell = pair.base["cell"] if pair.match == "id" else f"{pair.base['cell']}~{pair.new['cell']}"
    before, after = d["status_baseline"], d["status_new"]
    if "variance_ratio" in d:
        variance = (
            f"{fmt(d['variance_ratio'])} [{fmt(d['variance_ratio_low'])}, {fmt(d['variance_ratio_high'])}]"
        )
    else:
        variance = f"{fmt(d['variance_baseline'])}→{fmt(d['variance_new'])}" if both_ok(pair) else "-"
    conformance = [d["conformance_baseline"] or "-", d["conformance_new"] or "-"]
    return [
        cell,
        str(pair.base["problem"]),
        str(pair.base["estimator"]),
        config_text(pair.base, varying.get((pair.base["problem"], pair.base["estimator"]), [])),
        str(pair.base["n_samples"]),
        before if before == after else f"{before}→{after}",
        variance,
        conformance[0] if conformance[0] == conformance[1] else "→".join(conformance),
        speed_text(pair),
        load_text(pair),
        verdict_text(pair, options),
    ]


def table_lines(
    pairs: Sequence[Pair], varying: dict[tuple[str, str], list[str]], options: Options
) -> list[str]:
    rows = [table_row(pair, varying, options) for pair in pairs]
    widths = [max(len(row[i]) for row in [HEADER, *rows]) for i in range(len(HEADER))]
    return [
        "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
        for row in [HEADER, *rows]
    ]


# --- header and notes -----------------------------------------------------------------------------
def sweep_line(sweep: Sweep) -> str:
    meta = sweep.metadata
    facts = [f"{len(sweep.cells)} cells"]
    if meta.get("git_commit"):
        facts.append(f"git {str(meta['git_commit'])[:9]}")
    if meta.get("date"):
        facts.append(str(meta["date"])[:10])
    if meta.get("device_name"):
        facts.append(f"{meta['device_name']}, {sweep.cores} cores")
    return f"{sweep.role:<8} {sweep.path}  ({'; '.join(facts)})"


def machine_notes(base: Sweep, new: Sweep, pairs: Sequence[Pair]) -> list[str]:
    notes = []
    devices_named = base.metadata.get("device_name"), new.metadata.get("device_name")
    if all(devices_named) and devices_named[0] != devices_named[1]:
        notes.append(
            f"the sweeps ran on different devices ({base.metadata.get('device_name')} vs "
            f"{new.metadata.get('device_name')}): throughput ratios compare machines as well as code"
        )
    devices = {(text(p.base.get("device")), text(p.new.get("device"))) for p in pairs}
    changed = sorted(f"{a}→{b}" for a, b in devices if a != b)
    if changed:
        notes.append(f"matched cells ran on different devices ({', '.join(changed)})")
    return notes


def variance_line(info: dict[str, Any], options: Options) -> str:
    if not info["tests"]:
        return "variance: not compared (no matched cell has a positive variance and its stderr in both)"
    return (
        f"variance: regression when new/base > {1 + options.variance_tolerance:g} beyond its one-sided "
        f"bound at family-wise alpha={options.alpha:g} over {info['tests']} cells "
        f"(z={info['z']:.2f}; [bound] = ratio·exp(∓z·sd))"
    )


def throughput_lines(info: dict[str, Any], options: Options) -> list[str]:
    if not info["checked"]:
        return [f"speed: not compared ({info['reason']})"]
    if info["control"] == "median":
        reference = f"the median new/base over {info['median_of']} cells ({info['reference']})"
    else:
        reference = (
            f"{info['control_problem']} × {info['control_estimator']} n_samples={info['control_n_samples']} "
            f"({info['reference']})"
        )
    busy = f" (busy: {info['control_busy']})" if info["control_busy"] else ""
    test = (
        f"regression when z < −{info['z']:.2f} (one-sided, family-wise alpha={options.alpha:g} over "
        f"{info['judged']}) and new/base < {1 - options.throughput_tolerance:g}"
        if info["judged"]
        else "no pair to judge"
    )
    return [
        f"speed: estimates_per_s new/base over the machine factor {fmt(info['machine_factor'])}: {reference}"
        f"{busy}",
        f"       judged: {info['judged']} pair(s) timed ≥ {options.min_timed_seconds:g} s over ≥ "
        f"{info['min_batches']} batches in both; {info['too_short']} too short to judge ('short': never a "
        f"regression); {test}; z = log(ratio) / sqrt(se_base² + se_new² + τ²·(1/T_base + 1/T_new)/2), "
        f"τ={options.noise_floor:g}, T the timed seconds",
        "       load/threads/held: the 1-minute load average at the cell's start, torch threads, and cores "
        "held while timed, base→new; a drop timed on a busy machine (load above cores + 0.5, or under "
        f"{MIN_CORE_SHARE:.0%} of a core held) is reported, not counted"
        + (" (--count-busy: counted)" if options.count_busy else ""),
    ]


def unmatched_lines(unmatched_base: list[dict], unmatched_new: list[dict]) -> list[str]:
    lines = []
    for label, rows in (("BASELINE", unmatched_base), ("NEW", unmatched_new)):
        if rows:
            lines.append(f"unmatched in {label} ({len(rows)}):")
            for row in rows[:MAX_UNMATCHED_LISTED]:
                lines.append(
                    f"  {row['cell']} {row['problem']} × {row['estimator']} n_samples={row['n_samples']}: "
                    f"{row['reason']}"
                )
            if len(rows) > MAX_UNMATCHED_LISTED:
                lines.append(f"  ... and {len(rows) - MAX_UNMATCHED_LISTED} more (--json PATH lists all)")
    return lines


# --- summary, exit status, JSON -------------------------------------------------------------------
def summarize(pairs: Sequence[Pair], options: Options, strict_counts: dict[str, int]) -> dict[str, Any]:
    """Counts by kind. A pair with any regression adds to no improvement count (a biased estimator
    whose variance dropped is not an improvement)."""
    clean = [p for p in pairs if not any(p.findings.get(kind) == "regression" for kind in KINDS)]
    return {
        "regressions": {kind: sum(counted(p, kind, options) for p in pairs) for kind in KINDS},
        "improvements": {kind: sum(p.findings.get(kind) == "improvement" for p in clean) for kind in KINDS},
        "changes": {
            kind: sum(p.findings.get(kind) == "change" for p in pairs) for kind in [*KINDS, "setting"]
        },
        "busy_throughput_drops_not_counted": sum(
            p.findings.get("throughput") == "regression" and not counted(p, "throughput", options)
            for p in pairs
        ),
        "conformance_still_failing": sum(
            p.data.get("conformance_baseline") == "fail" == p.data.get("conformance_new") for p in pairs
        ),
        "strict": {**strict_counts, "total": sum(strict_counts.values())},
    }


def exit_status(summary: dict[str, Any], options: Options) -> int:
    """5 on a regression; else 6 when --strict and a baseline cell is missing, no longer ok, or
    was run at other settings; else 0."""
    if sum(summary["regressions"].values()):
        return EXIT_REGRESSION
    if options.strict and summary["strict"]["total"]:
        return EXIT_STRICT
    return EXIT_OK


def summary_line(comparison: Comparison, summary: dict[str, Any], status: int) -> str:
    pairs, regressions = comparison.pairs, summary["regressions"]
    by_id = sum(p.match == "id" for p in pairs)
    kinds = ", ".join(f"{kind} {count}" for kind, count in regressions.items())
    uncounted = summary["busy_throughput_drops_not_counted"]
    busy_note = f" (+{uncounted} slower on a busy machine, not counted)" if uncounted else ""
    strict = summary["strict"]
    strict_note = ""
    if strict["total"] or comparison.options.strict:
        strict_note = (
            f"; strict: {strict['missing_in_new']} missing in NEW, {strict['no_longer_ok']} no longer ok, "
            f"{strict['settings_changed']} with changed settings"
            + ("" if comparison.options.strict else " (reported; --strict fails on them)")
        )
    return (
        f"bench compare: {len(pairs)} matched ({by_id} by id, {len(pairs) - by_id} by config), unmatched "
        f"{len(comparison.unmatched_base)} baseline / {len(comparison.unmatched_new)} new; "
        f"{sum(regressions.values())} regression(s): {kinds}{busy_note}{strict_note}; "
        f"{sum(summary['improvements'].values())} improvement(s); exit {status}"
    )


def pair_record(pair: Pair, columns: Sequence[str], options: Options) -> dict[str, Any]:
    return {
        "cell_baseline": pair.base["cell"],
        "cell_new": pair.new["cell"],
        "match": pair.match,
        "problem": pair.base["problem"],
        "estimator": pair.base["estimator"],
        "n_samples": pair.base["n_samples"],
        "dtype": pair.base.get("dtype"),
        "seed_baseline": pair.base.get("seed"),
        "seed_new": pair.new.get("seed"),
        "n_estimates_baseline": pair.base.get("n_estimates"),
        "n_estimates_new": pair.new.get("n_estimates"),
        "config": {c: pair.base[c] for c in columns if c in pair.base and not missing(pair.base[c])},
        **pair.data,
        "findings": dict(pair.findings),
        "regressions": [kind for kind in KINDS if counted(pair, kind, options)],
        "strict": list(pair.strict),
    }


def body_lines(comparison: Comparison, columns: Sequence[str]) -> list[str]:
    """The table of pairs that changed (regressions first), or a line saying none did."""
    c, options = comparison, comparison.options
    shown = [p for p in c.pairs if c.show_all or p.findings or p.strict]
    shown.sort(key=lambda p: (not any(counted(p, k, options) for k in KINDS), not (p.findings or p.strict)))
    if not shown:
        return ["no matched cell changed beyond tolerance"]
    return table_lines(shown, varying_columns([c.base.cells, c.new.cells], columns), options)


def report(comparison: Comparison) -> tuple[str, dict[str, Any], int]:
    c, options = comparison, comparison.options
    summary = summarize(c.pairs, options, c.strict_counts)
    status = exit_status(summary, options)
    columns = [column for column in c.base.config_columns if column in c.new.config_columns]
    notes = [*c.notes, *machine_notes(c.base, c.new, c.pairs)]
    if summary["conformance_still_failing"]:
        notes.append(
            f"{summary['conformance_still_failing']} cell(s) fail conformance in both sweeps "
            "(not a new regression)"
        )
    lines = [sweep_line(c.base), sweep_line(c.new), variance_line(c.variance_info, options)]
    lines += [*throughput_lines(c.throughput_info, options), "", *body_lines(c, columns)]
    lines += unmatched_lines(c.unmatched_base, c.unmatched_new)
    lines += [f"note: {note}" for note in notes]
    lines.append(summary_line(c, summary, status))
    full = {
        "baseline": str(c.base.path),
        "new": str(c.new.path),
        "exit_status": status,
        "options": vars(options) | {"all": c.show_all},
        "variance_test": c.variance_info,
        "throughput_test": c.throughput_info,
        "summary": summary,
        "matched": len(c.pairs),
        "matched_by_id": sum(p.match == "id" for p in c.pairs),
        "notes": notes,
        "cells": [pair_record(p, columns, options) for p in c.pairs],
        "unmatched": {"baseline": c.unmatched_base, "new": c.unmatched_new},
    }
    return "\n".join(lines), json_safe(full), status
