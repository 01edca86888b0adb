"""Exact duplicates on normalized text (near duplicates: MinHash + LSH in `near_dup`)."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


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
