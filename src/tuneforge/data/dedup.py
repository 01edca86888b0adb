"""Exact duplicates on normalized text, and one row kept per duplicate group (near: MinHash + LSH)."""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
# How "exact" duplicates are compared, as the report and manifest name it.
MATCHING = "compared after NFKC normalisation, case folding, and punctuation and spacing reduced to one space"


def normalize_for_matching(text: str) -> str:
    """Text as compared for duplicates: NFKC, casefolded, punctuation and spacing reduced to single spaces."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return _NON_WORD.sub(" ", text.casefold()).strip()


def key_of_normalized(normalized: str) -> bytes:
    """A 16-byte digest of an already normalized text (compact enough to keep one per row in memory)."""
    return hashlib.blake2b(normalized.encode(), digest_size=16).digest()


def normalized_key(text: str) -> str:
    """Hex digest of the normalized text: equal for texts that differ only in case, punctuation or spacing."""
    return key_of_normalized(normalize_for_matching(text)).hex()


def exact_duplicates(texts: list[str]) -> list[int | None]:
    """For each text, the index of the earlier text it duplicates, or None if it is the first of its kind."""
    first: dict[str, int] = {}
    out: list[int | None] = []
    for i, t in enumerate(texts):
        key = normalized_key(t)
        out.append(first.get(key))
        first.setdefault(key, i)
    return out


def exact_families(keys: np.ndarray) -> np.ndarray:
    """(N,) the lowest index of the rows with each row's 16-byte digest (N, 2 uint64)."""
    if not len(keys):
        return np.empty(0, np.int64)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    return first[inverse.reshape(-1)].astype(np.int64)


def one_per_group(group: np.ndarray, priority: np.ndarray) -> np.ndarray:
    """(N,) bool: one row per group, the one with the highest priority, then the lowest index."""
    n = len(group)
    if not n:
        return np.zeros(0, dtype=bool)
    order = np.lexsort((np.arange(n), -priority, group))
    first = np.r_[True, group[order][1:] != group[order][:-1]]
    keep = np.zeros(n, dtype=bool)
    keep[order[first]] = True
    return keep
