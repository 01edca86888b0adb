"""Leakage across splits: training rows that are exact or near duplicates of a validation or test row."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TRAIN = 0
NOT_KEPT = -1


@dataclass
class Leakage:
    """Training rows to drop because a validation/test row has the same or a near-identical text."""

    drop: np.ndarray
    """(N,) bool: training rows that leak."""
    exact: int = 0
    """Training rows with an exact duplicate (normalized text) in validation or test."""
    near: int = 0
    """Further training rows with a near duplicate in validation or test."""
    examples: list[tuple[int, int]] = field(default_factory=list)
    """(training row, validation/test row) pairs, a few, for the report."""


def find_leakage(
    split: np.ndarray, family: np.ndarray, near_pairs: np.ndarray, max_examples: int = 5
) -> Leakage:
    """Check the final splits for training rows that duplicate a validation/test row.

    Args:
        split: per row, 0 train, 1 validation, 2 test, -1 not kept.
        family: per row, the lowest index of the rows with the same normalized text.
        near_pairs: verified near-duplicate pairs of rows.

    Near pairs are taken family to family, so a near duplicate of any copy of a text counts.
    """
    n = len(split)
    kept = split != NOT_KEPT
    has_train = np.zeros(n, dtype=bool)
    has_eval = np.zeros(n, dtype=bool)
    has_train[family[kept & (split == TRAIN)]] = True
    has_eval[family[kept & (split > TRAIN)]] = True
    is_train = kept & (split == TRAIN)
    exact = is_train & has_eval[family]

    leaking_family = np.zeros(n, dtype=bool)
    examples: list[tuple[int, int]] = []
    if len(near_pairs):
        fa, fb = family[near_pairs[:, 0]], family[near_pairs[:, 1]]
        a_leaks = has_train[fa] & has_eval[fb]  # family a has training rows, family b has evaluation rows
        b_leaks = has_train[fb] & has_eval[fa]
        leaking_family[fa[a_leaks]] = True
        leaking_family[fb[b_leaks]] = True
        sa, sb = split[near_pairs[:, 0]], split[near_pairs[:, 1]]
        direct = np.concatenate(
            [near_pairs[(sa == TRAIN) & (sb > TRAIN)], near_pairs[(sb == TRAIN) & (sa > TRAIN)][:, ::-1]]
        )
        examples = [(int(a), int(b)) for a, b in direct[:max_examples]]
    near = is_train & leaking_family[family] & ~exact
    if len(examples) < max_examples:
        # An exact leak: pair a training copy with an evaluation copy of the same text.
        eval_of_family = np.full(n, -1, dtype=np.int64)
        evals = np.flatnonzero(kept & (split > TRAIN))
        eval_of_family[family[evals]] = evals
        for i in np.flatnonzero(exact)[: max_examples - len(examples)]:
            examples.append((int(i), int(eval_of_family[family[i]])))
    return Leakage(drop=exact | near, exact=int(exact.sum()), near=int(near.sum()), examples=examples)
