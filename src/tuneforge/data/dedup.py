"""Deduplication: exact duplicates on normalized text (near duplicates: MinHash + LSH, see near_dup)."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalized_key(text: str) -> str:
    """Text as compared for exact duplicates: NFKC, casefolded, punctuation and spacing ignored."""
    norm = _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
    return hashlib.blake2b(norm.encode(), digest_size=16).hexdigest()


def exact_duplicates(texts: list[str]) -> list[int | None]:
    """For each text, the index of the earlier text it duplicates, or None if it is the first of its kind."""
    first: dict[str, int] = {}
    out: list[int | None] = []
    for i, t in enumerate(texts):
        key = normalized_key(t)
        out.append(first.get(key))
        first.setdefault(key, i)
    return out
