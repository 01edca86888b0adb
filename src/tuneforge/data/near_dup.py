"""Near duplicates: MinHash signatures of word shingles, banded LSH, verified pairs, clusters.

Written with numpy rather than taken from datasketch because datasketch hashes one document (and one shingle
update) at a time in Python; here a whole batch of documents is hashed in a handful of array operations
(bench/dedup.py measures the difference).

Every LSH candidate pair is verified (the share of equal signature values estimates the Jaccard
similarity), so extra candidates cost only a little time while missed ones are lost for good. The banding is
therefore chosen as datasketch chooses it, but with missed pairs weighted 19:1 over extra candidates: at 0.8
and 128 permutations that is 16 bands of 8 rows (datasketch: 9 of 13), finding most pairs at the threshold
instead of four in ten.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

NUM_PERM = 128
SHINGLE_WORDS = 3
SEED = 1
MISSED_PAIR_WEIGHT = 0.95
_MAX_HASH_ELEMENTS = 1 << 17  # shingles x permutations hashed at once: 1 MiB of uint64 stays in cache
_POSITIONS = 64  # byte positions with their own multiplier; longer words reuse them cyclically

_U64 = np.uint64


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer: spreads every input bit over the whole word (in place on a uint64 array)."""
    z ^= z >> _U64(30)
    z *= _U64(0xBF58476D1CE4E5B9)
    z ^= z >> _U64(27)
    z *= _U64(0x94D049BB133111EB)
    z ^= z >> _U64(31)
    return z


@lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int, missed_weight: float = MISSED_PAIR_WEIGHT) -> tuple[int, int]:
    """(bands, rows per band) minimising the weighted areas of extra candidates and missed pairs.

    `missed_weight=0.5` gives datasketch's own choice.
    """
    xs = np.linspace(0.0, 1.0, 2001)
    below, above = xs <= threshold, xs >= threshold
    best, best_err = (1, num_perm), math.inf
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            p = 1.0 - (1.0 - xs**r) ** b
            extra = np.trapezoid(p[below], xs[below])
            missed = np.trapezoid(1.0 - p[above], xs[above])
            err = (1 - missed_weight) * extra + missed_weight * missed
            if err < best_err:
                best, best_err = (b, r), float(err)
    return best


class MinHasher:
    """MinHash signatures (num_perm uint32 per text) of the word shingles of normalized texts, in batches."""

    def __init__(
        self, num_perm: int = NUM_PERM, shingle_words: int = SHINGLE_WORDS, seed: int = SEED
    ) -> None:
        rng = np.random.default_rng(seed)
        big = np.iinfo(np.uint64).max
        self.num_perm = num_perm
        self.shingle_words = shingle_words
        self._byte_mult = rng.integers(1, big, size=_POSITIONS, dtype=np.uint64, endpoint=True) | _U64(1)
        self._word_mult = rng.integers(1, big, size=shingle_words, dtype=np.uint64, endpoint=True) | _U64(1)
        # Multiply-add-shift hashing (Dietzfelbinger): the high 32 bits of a*x+b for odd random a.
        self._a = rng.integers(1, big, size=num_perm, dtype=np.uint64, endpoint=True) | _U64(1)
        self._b = rng.integers(0, big, size=num_perm, dtype=np.uint64, endpoint=True)

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), num_perm) uint32 signatures of texts already normalized to lowercase words and spaces.

        A text without words gets the all-ones signature; callers leave such texts out of matching.
        """
        out = np.full((len(texts), self.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
        shingles, docs = self._shingles(texts)
        if not len(shingles):
            return out
        per_chunk = max(1, _MAX_HASH_ELEMENTS // self.num_perm)
        for lo in range(0, len(shingles), per_chunk):
            s, d = shingles[lo : lo + per_chunk], docs[lo : lo + per_chunk]
            h = s[:, None] * self._a[None, :]  # (S, P), wraps modulo 2**64
            h += self._b[None, :]
            starts = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
            mins = np.minimum.reduceat(h, starts, axis=0)  # (docs in chunk, P)
            # min commutes with the monotone ">> 32", so only the per-document minima are shifted.
            mins = (mins >> _U64(32)).astype(np.uint32)
            rows = d[starts]
            out[rows] = np.minimum(out[rows], mins)  # a document cut by the chunk edge gets both halves
        return out

    def _shingles(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Hashes of all k-word shingles (a text under k words: one shingle of all of them) and their text."""
        data = np.frombuffer("\n".join(texts).encode("utf-8"), dtype=np.uint8)
        if not len(data):
            return np.empty(0, np.uint64), np.empty(0, np.int64)
        newline = data == 10
        in_word = (data != 32) & ~newline
        starts = in_word & ~np.r_[False, in_word[:-1]]
        word_pos = np.flatnonzero(starts)
        if not len(word_pos):
            return np.empty(0, np.uint64), np.empty(0, np.int64)
        word_doc = np.cumsum(newline)[word_pos]  # (W,) which text each word belongs to
        # Word hash: sum of (byte + 1) * a random multiplier for its position in the word, then mixed. One
        # `add.reduceat` hashes every word of the batch at once.
        byte_idx = np.flatnonzero(in_word)
        first = np.flatnonzero(starts[byte_idx])  # (W,) offset of each word in the compacted bytes
        word_of_byte = np.cumsum(starts[byte_idx]) - 1
        pos = np.arange(len(byte_idx)) - first[word_of_byte]
        contrib = (data[byte_idx].astype(np.uint64) + _U64(1)) * self._byte_mult[pos % _POSITIONS]
        words = _mix64(np.add.reduceat(contrib, first))  # (W,)
        n, k = len(words), self.shingle_words
        shingle = words * self._word_mult[0]
        for j in range(1, k):
            same = word_doc[j:] == word_doc[: n - j]
            shingle[: n - j] += np.where(same, words[j:] * self._word_mult[j], _U64(0))
        full = np.zeros(n, dtype=bool)
        if n >= k:
            full[: n - k + 1] = word_doc[k - 1 :] == word_doc[: n - k + 1]
        doc_first = np.flatnonzero(np.r_[True, word_doc[1:] != word_doc[:-1]])
        words_in_doc = np.diff(np.r_[doc_first, n])
        full[doc_first[words_in_doc < k]] = True
        return _mix64(shingle[full]), word_doc[full]


@dataclass
class NearDuplicates:
    """The outcome of matching: verified pairs and, for every text, the lowest index of its cluster."""

    pairs: np.ndarray
    """(E, 2) int64, i < j: texts whose estimated Jaccard similarity reaches the threshold."""
    cluster: np.ndarray
    """(N,) int64: the lowest index in each text's cluster (its own index when it has no near duplicate)."""

    def clusters(self, min_size: int = 2) -> list[list[int]]:
        """Member lists of clusters with at least `min_size` texts, largest first (ties: by first member)."""
        roots, counts = np.unique(self.cluster, return_counts=True)
        big = roots[counts >= min_size]
        if not len(big):
            return []
        order = np.argsort(self.cluster, kind="stable")
        sorted_roots = self.cluster[order]
        groups = [
            order[np.searchsorted(sorted_roots, r) : np.searchsorted(sorted_roots, r, "right")] for r in big
        ]
        groups.sort(key=lambda g: (-len(g), int(g[0])))
        return [[int(i) for i in g] for g in groups]


class NearDuplicateIndex:
    """Collect signatures batch by batch (on disk when given a folder: bounded memory), then match."""

    def __init__(
        self,
        threshold: float = 0.8,
        *,
        num_perm: int = NUM_PERM,
        shingle_words: int = SHINGLE_WORDS,
        seed: int = SEED,
        workdir: Path | None = None,
    ) -> None:
        self.threshold = threshold
        self.hasher = MinHasher(num_perm, shingle_words, seed)
        self.bands, self.rows = lsh_params(threshold, num_perm)
        self._mem: list[np.ndarray] = []
        self._file = None
        if workdir is not None:
            fd, name = tempfile.mkstemp(prefix="signatures.", suffix=".u32", dir=workdir)
            self._path = Path(name)
            self._file = os.fdopen(fd, "wb")
        self.size = 0

    def add(self, normalized_texts: Sequence[str]) -> None:
        sig = self.hasher.signatures(normalized_texts)
        if self._file is not None:
            self._file.write(sig.tobytes())
        else:
            self._mem.append(sig)
        self.size += len(sig)

    def signatures(self) -> np.ndarray:
        """(N, num_perm) uint32, memory-mapped when the index lives on disk."""
        p = self.hasher.num_perm
        if self._file is not None:
            self._file.flush()
            if self.size == 0:
                return np.empty((0, p), np.uint32)
            return np.memmap(self._path, dtype=np.uint32, mode="r", shape=(self.size, p))
        if len(self._mem) > 1:
            self._mem = [np.concatenate(self._mem)]  # keep one copy, not the batches and their concatenation
        return self._mem[0] if self._mem else np.empty((0, p), np.uint32)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._path.unlink(missing_ok=True)
            self._file = None

    def match(self, include: np.ndarray | None = None) -> NearDuplicates:
        """Near-duplicate pairs and clusters of the rows added; `include` (a bool mask) limits the rows."""
        sig = self.signatures()
        pairs = verified_pairs(sig, self.threshold, self.bands, self.rows, include)
        return NearDuplicates(pairs=pairs, cluster=connected_clusters(len(sig), pairs))


def band_hashes(sig: np.ndarray, bands: int, rows: int, chunk: int = 1 << 13) -> np.ndarray:
    """(N, bands) uint64: one hash per band of `rows` signature values, computed in row chunks."""
    mult = np.random.default_rng(SEED + 1).integers(
        1, np.iinfo(np.uint64).max, size=rows, dtype=np.uint64, endpoint=True
    ) | _U64(1)
    out = np.empty((len(sig), bands), dtype=np.uint64)
    for lo in range(0, len(sig), chunk):
        block = np.asarray(sig[lo : lo + chunk, : bands * rows]).reshape(-1, bands, rows).astype(np.uint64)
        h = (block * mult).sum(axis=2, dtype=np.uint64)  # (n, bands), wraps modulo 2**64
        h += np.arange(bands, dtype=np.uint64)  # the same values in two different bands must not meet
        out[lo : lo + chunk] = _mix64(h)
    return out


def _candidates(bh: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Pairs sharing a band bucket: each member with the bucket's first and its next three members."""
    idx = np.flatnonzero(keep)
    found: list[np.ndarray] = []
    for band in range(bh.shape[1]):
        order = idx[np.argsort(bh[idx, band], kind="stable")]
        values = bh[order, band]
        if len(order) < 2:
            continue
        new_run = np.r_[True, values[1:] != values[:-1]]
        run_id = np.cumsum(new_run) - 1
        leader = order[np.flatnonzero(new_run)][run_id]
        same = ~new_run
        found.append(np.stack([leader[same], order[same]], axis=1))
        for d in (1, 2, 3):
            if len(order) > d:
                ok = run_id[d:] == run_id[:-d]
                found.append(np.stack([order[:-d][ok], order[d:][ok]], axis=1))
    if not found:
        return np.empty((0, 2), np.int64)
    pairs = np.concatenate(found).astype(np.int64)
    pairs.sort(axis=1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return np.unique(pairs, axis=0)


def verified_pairs(
    sig: np.ndarray, threshold: float, bands: int, rows: int, include: np.ndarray | None = None
) -> np.ndarray:
    """LSH candidates whose estimated Jaccard similarity (signature agreement) ≥ threshold."""
    n, p = sig.shape
    if n < 2:
        return np.empty((0, 2), np.int64)
    bh = band_hashes(sig, bands, rows)
    matched = np.asarray(sig[:, 0]) != np.iinfo(np.uint32).max  # texts without words match nothing
    if include is not None:
        matched &= include
    cand = _candidates(bh, matched)
    if not len(cand):
        return cand
    keep = np.zeros(len(cand), dtype=bool)
    step = max(1, _MAX_HASH_ELEMENTS // p)
    for lo in range(0, len(cand), step):
        c = cand[lo : lo + step]
        agree = (np.asarray(sig[c[:, 0]]) == np.asarray(sig[c[:, 1]])).mean(axis=1)
        keep[lo : lo + step] = agree >= threshold
    return cand[keep]


def connected_clusters(n: int, pairs: np.ndarray) -> np.ndarray:
    """(n,) the lowest index of each connected component of the graph whose edges are `pairs`."""
    if n == 0:
        return np.empty(0, np.int64)
    if not len(pairs):
        return np.arange(n, dtype=np.int64)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    lowest = np.full(label.max() + 1, n, dtype=np.int64)
    np.minimum.at(lowest, label, np.arange(n, dtype=np.int64))
    return lowest[label]
