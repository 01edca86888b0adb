"""Sentence embeddings for drift (mean-pooled, unit length), cached by text hash so a daily run embeds only
new traffic.

The cache is a SQLite file (RUN/monitor/embeddings.sqlite): each batch is one transaction, so a killed run
leaves it consistent, and its key includes the encoder, so changing monitor.embedding_model never mixes
vectors of two models. Each vector records the day it was last used; after every run the ones unused for
KEEP_DAYS go, then the least recently used beyond MAX_VECTORS, so a daily monitor's cache stays bounded.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge import builtin
from tuneforge.errors import TuneforgeError

BATCH = 64


def encoder_path(name: str) -> Path:
    """A local encoder folder for monitor.embedding_model (a built-in or a folder)."""
    if builtin.is_builtin(name):
        return builtin.resolve(name)
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise TuneforgeError(
            f"{name!r} is neither a built-in encoder nor a local model folder (no config.json)",
            where="monitor.embedding_model",
            fix="use builtin:minilm-l6 (the default) or the path of a Hugging Face encoder folder",
        )
    return path


def _model_key(path: Path) -> str:
    weights = sorted(path.glob("*.safetensors"))
    stamp = "|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in weights)
    return hashlib.sha256(f"{path.resolve()}|{stamp}".encode()).hexdigest()[:16]


KEEP_DAYS = 60
"""Vectors no monitor run used for this many days are dropped (the training sample is used by every run)."""
MAX_VECTORS = 300_000
"""At most this many vectors stay (about 460 MB at MiniLM's 384 dimensions), least recently used out first."""


def _today() -> int:
    return int(time.time() // 86_400)


class Embedder:
    """Embed texts with one encoder, through the cache."""

    def __init__(self, name: str, cache: Path | None) -> None:
        self.path = encoder_path(name)
        self.key = _model_key(self.path)
        self.cache = cache
        self.model: Any = None
        self.tok: Any = None
        self.computed = 0

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        # A safetensors-only load: a folder holding only a pickle is refused rather than unpickled.
        self.tok = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path, use_safetensors=True).eval()

    def _encode(self, texts: list[str]) -> np.ndarray:
        import torch

        if self.model is None:
            self._load()
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), BATCH):
                enc = self.tok(
                    texts[i : i + BATCH], padding=True, truncation=True, max_length=256, return_tensors="pt"
                )
                hidden = self.model(**enc).last_hidden_state  # (B, T, D)
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, D)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).float().numpy())
        self.computed += len(texts)
        return np.vstack(out)

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), D) unit vectors; texts seen before come from the cache."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        hashes = [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts]
        found: dict[str, np.ndarray] = {}
        conn = self._open()
        try:
            if conn is not None:
                unique = list(dict.fromkeys(hashes))
                for i in range(0, len(unique), 500):  # under SQLite's bound-parameter limit
                    chunk = unique[i : i + 500]
                    marks = ",".join("?" * len(chunk))
                    rows = conn.execute(
                        f"SELECT hash, vector FROM vectors WHERE model = ? AND hash IN ({marks})",
                        [self.key, *chunk],
                    )
                    found.update((h, np.frombuffer(v, dtype=np.float32)) for h, v in rows)
                    with conn:  # used today: kept longest
                        conn.execute(
                            f"UPDATE vectors SET used = ? WHERE model = ? AND hash IN ({marks})",
                            [_today(), self.key, *chunk],
                        )
            todo = [i for i, h in enumerate(hashes) if h not in found]
            todo = list({hashes[i]: i for i in todo}.values())  # each new text once
            if todo:
                vectors = self._encode([texts[i] for i in todo])
                new = {hashes[i]: v for i, v in zip(todo, vectors, strict=True)}
                found.update(new)
                if conn is not None:
                    with conn:
                        conn.executemany(
                            "INSERT OR REPLACE INTO vectors (model, hash, vector, used) VALUES (?, ?, ?, ?)",
                            [(self.key, h, v.astype(np.float32).tobytes(), _today()) for h, v in new.items()],
                        )
            if conn is not None:
                _prune(conn)
        finally:
            if conn is not None:
                conn.close()
        return np.vstack([found[h] for h in hashes]).astype(np.float32)

    def _open(self) -> sqlite3.Connection | None:
        if self.cache is None:
            return None
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.cache)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS vectors "
            "(model TEXT, hash TEXT, vector BLOB, used INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (model, hash))"
        )
        columns = {row[1] for row in conn.execute("PRAGMA table_info(vectors)")}
        if "used" not in columns:  # a cache from before `used`: its vectors count as used today
            with conn:
                conn.execute(f"ALTER TABLE vectors ADD COLUMN used INTEGER NOT NULL DEFAULT {_today()}")
        return conn


def _prune(conn: sqlite3.Connection) -> None:
    """Drop the vectors unused for KEEP_DAYS, then the least recently used beyond MAX_VECTORS."""
    with conn:
        conn.execute("DELETE FROM vectors WHERE used < ?", (_today() - KEEP_DAYS,))
        (count,) = conn.execute("SELECT COUNT(*) FROM vectors").fetchone()
        if count > MAX_VECTORS:
            conn.execute(
                "DELETE FROM vectors WHERE rowid IN (SELECT rowid FROM vectors ORDER BY used LIMIT ?)",
                (count - MAX_VECTORS,),
            )
