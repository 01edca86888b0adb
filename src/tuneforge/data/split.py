"""Train/validation/test split: seeded, stratified by label, with whole groups kept in one split."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Hashable, Sequence

SPLIT_NAMES = ("train", "validation", "test")


def _allot(n: int, fractions: Sequence[float]) -> list[int]:
    """Split n items into counts by fractions (largest remainder), so the counts always add up to n."""
    raw = [n * f for f in fractions]
    counts = [int(x) for x in raw]
    order = sorted(range(len(raw)), key=lambda i: (raw[i] - counts[i], -i), reverse=True)
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def split_indices(
    strata: Sequence[Hashable],
    fractions: Sequence[float],
    seed: int,
    groups: Sequence[Hashable] | None = None,
) -> dict[str, list[int]]:
    """Assign each index to a split. Stratum = label (or one stratum); group = near-duplicate cluster.

    A group goes whole to one split (the split of its first member's stratum slot), so near duplicates never
    straddle train and test. Returns each split's indices in a seeded shuffled order, so that the first N
    examples of a split are a fair sample of it.
    """
    groups = groups if groups is not None else list(range(len(strata)))
    members: dict[Hashable, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    by_stratum: dict[Hashable, list[Hashable]] = defaultdict(list)
    for g, idx in members.items():
        by_stratum[strata[idx[0]]].append(g)
    rng = random.Random(seed)
    out: dict[str, list[int]] = {name: [] for name in SPLIT_NAMES}
    for stratum in sorted(by_stratum, key=str):
        gs = by_stratum[stratum]
        rng.shuffle(gs)
        counts = _allot(len(gs), fractions)
        start = 0
        for name, c in zip(SPLIT_NAMES, counts, strict=True):
            for g in gs[start : start + c]:
                out[name].extend(members[g])
            start += c
    for name in SPLIT_NAMES:
        out[name].sort()
        rng.shuffle(out[name])
    return out


# Names accepted in a user's split column (any case, surrounding spaces ignored).
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}


def split_name(value: object) -> str | None:
    """The split a user's split-column value names, or None when it names none."""
    return SPLIT_ALIASES.get(str(value).strip().lower()) if value is not None else None
