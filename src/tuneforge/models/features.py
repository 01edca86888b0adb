"""Frozen-model features for `method.name: head`: chunked, mean-pooled text embeddings and their cache.

A text longer than `max_length` is not cut: it is split into windows of `max_length` tokens (the tokenizer's
special tokens around each) overlapping by `stride`, each window is mean-pooled over its tokens, and the
text's vector is the token-weighted mean of its windows. Training and every later use (evaluate, serve) go
through `pooled_embeddings`, so a head sees the same features everywhere.

The cache holds vectors by text hash under a key of everything that changes them (the base model's weights,
dtype, max_length, stride): safetensors shards, never pickles, each written atomically, so a killed run leaves
the cache readable and the next run computes only what is missing. It is kept under a size limit, least
recently used first out (`prune_cache`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.artifacts import write_bytes_atomic, write_text_atomic
from tuneforge.errors import TuneforgeError

POOLING = "mean-chunks-v1"
"""Changes when the pooling rule changes, so older cached vectors are never mixed with new ones."""


def text_hash(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def chunk_ids(tok: Any, text: str, max_length: int, stride: int) -> list[list[int]]:
    """The windows of `text` a model of context `max_length` reads, special tokens included in each.

    Hand-written rather than the tokenizer's `return_overflowing_tokens`: that needs a fast tokenizer and
    differs between tokenizer kinds, while this wraps each window exactly as the tokenizer wraps a whole text.
    """
    ids = [int(i) for i in tok(text)["input_ids"]]
    if len(ids) <= max_length:
        return [ids]
    content = [int(i) for i in tok(text, add_special_tokens=False)["input_ids"]]
    n = len(content)
    start = next((p for p in range(len(ids) - n + 1) if ids[p : p + n] == content), None)
    if start is None:  # the tokenizer does more than wrap the text: keep its own truncation
        return [[int(i) for i in tok(text, truncation=True, max_length=max_length)["input_ids"]]]
    prefix, suffix = ids[:start], ids[start + n :]
    room = max_length - len(prefix) - len(suffix)
    step = max(1, room - min(stride, room - 1))
    windows = []
    for first in range(0, n, step):
        windows.append(prefix + content[first : first + room] + suffix)
        if first + room >= n:
            break
    return windows


@dataclass
class Pooled:
    """Embeddings of some texts and how they were made."""

    vectors: np.ndarray
    """(N, D) float32, one row per text."""
    chunks: list[int] = field(default_factory=list)
    """Windows per text (1 for a text within max_length)."""


def pooled_embeddings(
    model: Any,
    tok: Any,
    texts: list[str],
    *,
    max_length: int,
    stride: int,
    batch_size: int,
    on_batch: Callable[[int, int], None] | None = None,
) -> Pooled:
    """(N, D) mean-pooled last hidden states of a frozen model, long texts chunked (see the module docstring).

    Windows of all texts are batched together, longest first, so a batch pads little.
    """
    import torch

    windows: list[tuple[int, list[int]]] = []
    counts = []
    for i, text in enumerate(texts):
        chunks = chunk_ids(tok, text, max_length, stride)
        counts.append(len(chunks))
        windows += [(i, c) for c in chunks]
    order = sorted(range(len(windows)), key=lambda w: -len(windows[w][1]))
    pad = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
    device = next(model.parameters()).device
    sums: np.ndarray | None = None
    tokens = np.zeros(len(texts), dtype=np.float64)
    with torch.inference_mode():
        for first in range(0, len(order), batch_size):
            batch = [windows[w] for w in order[first : first + batch_size]]
            width = max(len(c) for _, c in batch)
            ids = torch.tensor([c + [pad] * (width - len(c)) for _, c in batch], device=device)
            mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for _, c in batch], device=device)
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()  # (B, T, D)
            m = mask.unsqueeze(-1).float()  # (B, T, 1)
            summed = (hidden * m).sum(1).cpu().numpy().astype(np.float64)  # (B, D)
            if sums is None:
                sums = np.zeros((len(texts), summed.shape[1]), dtype=np.float64)
            for row, (text_index, chunk) in enumerate(batch):
                sums[text_index] += summed[row]
                tokens[text_index] += len(chunk)
            if on_batch is not None:
                on_batch(min(first + batch_size, len(order)), len(order))
    if sums is None:
        return Pooled(np.zeros((0, 0), dtype=np.float32), counts)
    # Token-weighted over the windows: a text's vector is the mean over all the tokens it was read as.
    return Pooled((sums / np.maximum(tokens, 1)[:, None]).astype(np.float32), counts)


def model_key(path: str, *, name: str, revision: str | None, dtype: str, max_length: int, stride: int) -> str:
    """What the cached vectors depend on: the weights (files' names, sizes, times), dtype and windowing."""
    folder = Path(path)
    if folder.is_dir():
        files = sorted(folder.glob("*.safetensors"))
        weights = "|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
        where = str(folder.resolve())
    else:  # a hub id: its revision names the weights
        weights, where = f"revision={revision}", name
    text = f"{POOLING}|{where}|{weights}|{dtype}|{max_length}|{stride}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


CACHE_LIMIT_GB = 5.0
"""Default size in GB of the whole embedding cache ($TUNEFORGE_EMBEDDING_CACHE_GB)."""


class EmbeddingCache:
    """Vectors by text hash in `folder` (one safetensors shard per block of texts a run computed).

    Only the vectors a run asks for are read (a shard's hashes, then the vectors of the shards that hold
    some), so memory follows the dataset, not the cache. The cache root (every model's folder beside this
    one) is kept under $TUNEFORGE_EMBEDDING_CACHE_GB (default 5): after a write, the folders used longest
    ago go first, then this folder's oldest shards. Only files this class writes are ever removed.
    """

    def __init__(self, folder: Path, describe: dict[str, Any]) -> None:
        self.folder, self.describe = folder, describe
        self.added: dict[bytes, np.ndarray] = {}
        described = folder / "cache.json"
        if described.is_file():
            os.utime(described)  # used now: the last folder to go when the cache is pruned

    def lookup(self, hashes: set[bytes]) -> dict[bytes, np.ndarray]:
        """The cached vectors of `hashes` that the cache holds (a damaged shard counts as missing)."""
        from safetensors import SafetensorError, safe_open

        found = {h: self.added[h] for h in hashes if h in self.added}
        wanted = hashes - found.keys()
        for shard in sorted(self.folder.glob("*.safetensors")) if wanted and self.folder.is_dir() else []:
            try:
                with safe_open(str(shard), framework="numpy") as f:
                    table = f.get_tensor("hashes")
                    rows = [i for i, h in enumerate(table) if bytes(h) in wanted]
                    if not rows:
                        continue
                    vectors = f.get_tensor("vectors")
            except (SafetensorError, OSError, KeyError):  # a damaged shard is only lost work: recompute
                continue
            for i in rows:
                h = bytes(table[i])
                found[h] = vectors[i]
                wanted.discard(h)
            if not wanted:
                break
        return found

    def add(self, hashes: list[bytes], vectors: np.ndarray) -> None:
        """Keep new vectors, on disk as one more shard (atomically written), then keep the cache in size."""
        from safetensors.numpy import save

        if not hashes:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        described = self.folder / "cache.json"
        if not described.is_file():  # for a person looking at the cache folder
            write_text_atomic(described, json.dumps(self.describe, indent=2, sort_keys=True) + "\n")
        table = np.frombuffer(b"".join(hashes), dtype=np.uint8).reshape(len(hashes), 32)
        data = save({"hashes": table, "vectors": np.ascontiguousarray(vectors, dtype=np.float32)})
        shard = self.folder / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.safetensors"
        write_bytes_atomic(shard, data)
        for h, v in zip(hashes, vectors, strict=True):
            self.added[h] = v
        prune_cache(self.folder.parent, keep=shard, limit=cache_limit())


def cache_limit() -> int:
    """Bytes the embedding cache may hold ($TUNEFORGE_EMBEDDING_CACHE_GB, default CACHE_LIMIT_GB)."""
    raw = os.environ.get("TUNEFORGE_EMBEDDING_CACHE_GB", "")
    try:
        gb = float(raw) if raw else CACHE_LIMIT_GB
    except ValueError:
        raise TuneforgeError(
            f"TUNEFORGE_EMBEDDING_CACHE_GB is {raw!r}, not a number",
            where="$TUNEFORGE_EMBEDDING_CACHE_GB",
            fix="set it to the gigabytes the embedding cache may use, e.g. 5 (or unset it)",
        ) from None
    return int(gb * 1024**3)


def prune_cache(root: Path, *, keep: Path, limit: int) -> list[Path]:
    """Remove shards until the cache folders under `root` hold at most `limit` bytes; returns what went.

    Folders are taken least recently used first (their cache.json's time, refreshed on every use), the one
    holding `keep` last, and within a folder the oldest shards first; `keep` itself stays. Only shards and
    cache.json files of folders that have a cache.json (the folders EmbeddingCache makes) are counted or
    removed; anything else under `root` is left alone.
    """
    folders = [d for d in root.iterdir() if (d / "cache.json").is_file()] if root.is_dir() else []
    shards = {d: sorted(d.glob("*.safetensors"), key=lambda p: p.stat().st_mtime_ns) for d in folders}
    total = sum(p.stat().st_size for files in shards.values() for p in files)
    removed: list[Path] = []
    order = sorted(folders, key=lambda d: (d == keep.parent, (d / "cache.json").stat().st_mtime_ns))
    for d in order:
        for shard in shards[d]:
            if total <= limit:
                return removed
            if shard == keep:
                continue
            total -= shard.stat().st_size
            shard.unlink(missing_ok=True)
            removed.append(shard)
        if d != keep.parent and not any(d.glob("*.safetensors")):
            (d / "cache.json").unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # not empty: something else lives there; leave it
                d.rmdir()
    return removed


@dataclass
class Embedded:
    vectors: np.ndarray
    computed: int
    """Texts run through the model (the rest came from the cache)."""
    cached: int
    chunks: int
    """Windows the computed texts were read as."""


BLOCK = 2048
"""Texts embedded between two cache writes: a run stopped midway loses at most this many."""


def embed_with_cache(
    texts: list[str],
    cache: EmbeddingCache | None,
    compute: Callable[[list[str], int, int], Pooled],
    block: int = BLOCK,
) -> Embedded:
    """Every text's vector, each distinct text computed at most once and only when the cache lacks it.

    `compute(texts, done, total)` embeds one block of the `total` missing texts, `done` of them already
    embedded; each block goes into the cache as soon as it is computed.
    """
    hashes = [text_hash(t) for t in texts]
    known = cache.lookup(set(hashes)) if cache is not None else {}
    todo: dict[bytes, str] = {}
    for h, t in zip(hashes, texts, strict=True):
        if h not in known and h not in todo:
            todo[h] = t
    found: dict[bytes, np.ndarray] = {}
    chunks = 0
    missing = list(todo)
    for first in range(0, len(missing), block):
        part = missing[first : first + block]
        pooled = compute([todo[h] for h in part], first, len(missing))
        chunks += sum(pooled.chunks)
        if cache is not None:
            cache.add(part, pooled.vectors)
        found.update(zip(part, pooled.vectors, strict=True))
    cached = sum(1 for h in dict.fromkeys(hashes) if h not in todo)
    rows = [found[h] if h in found else known[h] for h in hashes]
    vectors = np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)
    return Embedded(vectors.astype(np.float32), computed=len(todo), cached=cached, chunks=chunks)
