"""Frozen-model features for `method.name: head`: chunked, mean-pooled text embeddings and their cache.

A text longer than `max_length` is not cut: it is split into windows of `max_length` tokens (the tokenizer's
special tokens around each) overlapping by `stride`, each window is mean-pooled over its tokens, and the
text's vector is the token-weighted mean of its windows. Training and every later use (evaluate, serve) go
through `pooled_embeddings`, so a head sees the same features everywhere.

The cache holds vectors by text hash under a key of everything that changes them (the base model's weights,
dtype, max_length, stride): safetensors shards, never pickles, each written atomically, so a killed run leaves
the cache readable and the next run computes only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.artifacts import write_bytes_atomic, write_text_atomic

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


class EmbeddingCache:
    """Vectors by text hash in `folder` (one safetensors shard per run that computed something new)."""

    def __init__(self, folder: Path, describe: dict[str, Any]) -> None:
        self.folder, self.describe = folder, describe
        self.vectors: dict[bytes, np.ndarray] = {}
        for shard in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
            self._read(shard)

    def _read(self, shard: Path) -> None:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            tensors = load_file(str(shard))
        except (SafetensorError, OSError):  # a damaged shard is only lost work: recompute its texts
            return
        for h, v in zip(tensors["hashes"], tensors["vectors"], strict=True):
            self.vectors[bytes(h)] = v

    def add(self, hashes: list[bytes], vectors: np.ndarray) -> None:
        """Keep new vectors, on disk as one more shard (atomically written)."""
        from safetensors.numpy import save

        if not hashes:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        described = self.folder / "cache.json"
        if not described.is_file():  # for a person looking at the cache folder
            write_text_atomic(described, json.dumps(self.describe, indent=2, sort_keys=True) + "\n")
        table = np.frombuffer(b"".join(hashes), dtype=np.uint8).reshape(len(hashes), 32)
        data = save({"hashes": table, "vectors": np.ascontiguousarray(vectors, dtype=np.float32)})
        write_bytes_atomic(self.folder / f"{uuid.uuid4().hex}.safetensors", data)
        for h, v in zip(hashes, vectors, strict=True):
            self.vectors[h] = v


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
    known = cache.vectors if cache is not None else {}
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
