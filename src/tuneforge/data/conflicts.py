"""Label conflicts: one text (compared as exact duplicates are) under different labels (classification).

Deduplication alone would keep whichever copy comes first, so file order would pick the label; these rows are
found and handled on their own (data.label_conflicts), and counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.data.dedup import MATCHING
from tuneforge.data.rejected import Dropped
from tuneforge.errors import TuneforgeError

Spilled = Callable[[list[int]], Iterator[tuple[int, str, dict[str, Any]]]]  # rows -> (row, where, record)

SHOWN = 5  # conflicting texts listed in the error


def conflicting_rows(family: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, int]:
    """(N,) rows whose exact-duplicate family holds more than one label, and the number of such families."""
    n = len(family)
    if not n:
        return np.zeros(0, dtype=bool), 0
    pairs = np.unique(np.stack([family, labels], axis=1), axis=0)
    families, per_family = np.unique(pairs[:, 0], return_counts=True)
    conflicted = families[per_family > 1]
    return np.isin(family, conflicted), len(conflicted)


def other_labels(family: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> dict[int, set[int]]:
    """Label ids per conflicting family (keyed by the family's first row)."""
    out: dict[int, set[int]] = {}
    for i in rows.tolist():
        out.setdefault(int(family[i]), set()).add(int(labels[i]))
    return out


def conflict_error(copies: list[list[tuple[str, str]]], texts: int, rows: int) -> TuneforgeError:
    """data.label_conflicts=raise: the first conflicting texts, each as `where: label` of every copy."""
    lines = [f"{texts} texts appear under different labels ({rows} rows), e.g.:"]
    lines += ["  " + "; ".join(f"{where}: {label!r}" for where, label in c) for c in copies[:SHOWN]]
    return TuneforgeError(
        "\n".join(lines),
        where="data.label_conflicts",
        fix="correct the labels, or set data.label_conflicts=drop (drop every copy) or keep",
    )


def conflict_message(others: list[str]) -> str:
    return (
        f"the same text ({MATCHING}) also has label {', '.join(map(repr, others))}; every copy is dropped "
        "(data.label_conflicts=drop)"
    )


def resolve_conflicts(
    mode: str,
    family: np.ndarray,
    labels: np.ndarray,
    label_names: list[str],
    spilled: Spilled,
    dropped: Dropped,
    rejected: Path,
) -> tuple[np.ndarray, int]:
    """(N,) conflicting rows and how many texts; raise mode stops, drop mode writes them to `rejected`."""
    conflict, texts = conflicting_rows(family, labels)
    rows = np.flatnonzero(conflict)
    if not texts or mode == "keep":
        return conflict, texts
    per_family = other_labels(family, labels, rows)
    if mode == "raise":
        copies: dict[int, list[tuple[str, str]]] = {f: [] for f in sorted(per_family)[:SHOWN]}
        for i, where, record in spilled([i for i in rows.tolist() if int(family[i]) in copies]):
            copies[int(family[i])].append((where, str(record["label"])))
        raise conflict_error(list(copies.values()), texts, len(rows))
    dropped.file = open(rejected, "a", encoding="utf-8", newline="\n")  # noqa: SIM115 (closed below)
    try:
        for i, where, record in spilled(rows.tolist()):
            others = sorted(label_names[x] for x in per_family[int(family[i])] if x != int(labels[i]))
            dropped.add(where, "label_conflict", conflict_message(others), record, invalid=False)
    finally:
        dropped.file.close()
    return conflict, texts
