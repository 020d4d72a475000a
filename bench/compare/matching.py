"""Pairing the cells of two sweeps: by id, then by setting (problem, estimator, dtype, n_samples
and the config columns both tables hold), in rounds that tell repeated settings apart by seed, then
n_estimates; what is left is unmatched, with the reason."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.compare.common import Pair, canonical, json_safe, key_number, text
from bench.compare.reading import Sweep

# The rounds of matching by setting: the setting plus these columns, then the setting alone.
ROUNDS = [("seed",), ("n_estimates",), ()]


def setting_key(row: dict[str, Any], columns: Sequence[str]) -> tuple:
    """problem, estimator, dtype, n_samples and the config values: what makes two cells one setting."""
    return (
        text(row.get("problem")),
        text(row.get("estimator")),
        text(row.get("dtype")),
        key_number(row.get("n_samples")),
        tuple(canonical(row.get(column)) for column in columns),
    )


def column_notes(base: Sweep, new: Sweep) -> list[str]:
    notes = []
    for sweep, other in ((base, new), (new, base)):
        only = [
            c for c in sweep.config_columns if c not in other.config_columns and sweep.cells[c].notna().any()
        ]
        if only:
            notes.append(f"config column(s) only in {sweep.role}, ignored for matching: {', '.join(only)}")
    return notes


def pair_by_setting(
    base_rows: list[dict],
    new_rows: list[dict],
    keys: tuple[list[tuple], list[tuple]],
    paired: dict[int, tuple[int, str]],
    taken: set[int],
) -> None:
    """Pairs the leftovers in place, round by round; a round pairs only groups holding exactly one
    cell on each side."""
    for extra in ROUNDS:
        groups: list[dict[tuple, list[int]]] = [{}, {}]
        for side, (rows, used) in enumerate(((base_rows, set(paired)), (new_rows, taken))):
            for position, row in enumerate(rows):
                if position not in used:
                    key = (keys[side][position], *(key_number(row.get(c)) for c in extra))
                    groups[side].setdefault(key, []).append(position)
        for key, members in groups[0].items():
            others = groups[1].get(key, [])
            if len(members) == 1 and len(others) == 1:
                paired[members[0]] = (others[0], "config")
                taken.add(others[0])


def match_cells(base: Sweep, new: Sweep) -> tuple[list[Pair], list[dict], list[dict], list[str]]:
    """(pairs in the baseline's row order, unmatched baseline rows, unmatched new rows, notes)."""
    shared = [column for column in base.config_columns if column in new.config_columns]
    base_rows = base.cells.to_dict("records")
    new_rows = new.cells.to_dict("records")
    new_index = {row["cell"]: position for position, row in enumerate(new_rows)}
    paired: dict[int, tuple[int, str]] = {  # base position → (new position, how)
        position: (new_index[row["cell"]], "id")
        for position, row in enumerate(base_rows)
        if row["cell"] in new_index
    }
    taken = {new_position for new_position, _ in paired.values()}
    keys = ([setting_key(row, shared) for row in base_rows], [setting_key(row, shared) for row in new_rows])
    pair_by_setting(base_rows, new_rows, keys, paired, taken)
    pairs = [
        Pair(base_rows[position], new_rows[paired[position][0]], paired[position][1])
        for position in range(len(base_rows))
        if position in paired
    ]
    unmatched_base = [
        unmatched(row, keys[0][i], keys[1], shared, "NEW")
        for i, row in enumerate(base_rows)
        if i not in paired
    ]
    unmatched_new = [
        unmatched(row, keys[1][i], keys[0], shared, "BASELINE")
        for i, row in enumerate(new_rows)
        if i not in taken
    ]
    return pairs, unmatched_base, unmatched_new, column_notes(base, new)


def unmatched(
    row: dict[str, Any],
    key: tuple,
    other_keys: list[tuple],
    columns: Sequence[str],
    where: str,
) -> dict[str, Any]:
    """An unmatched cell and why: ambiguous, or the config columns in which the nearest cell of the
    other sweep (same problem, estimator, dtype, n_samples) differs."""
    same_setting = sum(other_key == key for other_key in other_keys)
    if same_setting:
        reason = (
            f"{same_setting} cell(s) of {where} share its setting but were paired with others or "
            "could not be told apart by seed or n_estimates"
        )
    else:
        near = [i for i, other_key in enumerate(other_keys) if other_key[:4] == key[:4]]
        if near:
            differing = min(
                (
                    [c for c, a, b in zip(columns, key[4], other_keys[i][4], strict=True) if a != b]
                    for i in near
                ),
                key=len,
            )
            reason = f"nearest cell of {where} differs in {', '.join(differing)}"
        else:
            reason = f"no cell of {where} with this problem, estimator, dtype and n_samples"
    return {
        "cell": row["cell"],
        "problem": text(row.get("problem")),
        "estimator": text(row.get("estimator")),
        "n_samples": json_safe(row.get("n_samples")),
        "status": text(row.get("status")),
        "reason": reason,
    }
