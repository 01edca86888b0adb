"""Frozen-model features for method head: windows over long texts, pooling, and the embedding cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tuneforge.models.features import EmbeddingCache, chunk_ids, embed_with_cache, pooled_embeddings


@pytest.fixture(scope="module")
def bert(tiny_bert: Path):
    from transformers import AutoModel, AutoTokenizer

    return AutoModel.from_pretrained(tiny_bert).eval(), AutoTokenizer.from_pretrained(tiny_bert)


LONG = " ".join(f"word{i % 7} road phone" for i in range(6))  # 60 tokens


class WithSpecials:
    """The tiny tokenizer adding [CLS]=1 ... [SEP]=2 around a text, as BERT's does."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok

    def __call__(self, text: str, add_special_tokens: bool = True, **_: Any) -> dict[str, list[int]]:
        ids = list(self.tok(text, add_special_tokens=False)["input_ids"])
        return {"input_ids": [1, *ids, 2] if add_special_tokens else ids}


def test_a_long_text_is_read_in_overlapping_windows_that_cover_it_all(bert) -> None:
    tok = WithSpecials(bert[1])
    content = tok(LONG, add_special_tokens=False)["input_ids"]
    assert len(content) == 60
    windows = chunk_ids(tok, LONG, max_length=16, stride=4)
    # 14 text tokens per window between [CLS] and [SEP]; each starts 10 after the last (4 shared)
    assert windows == [[1, *content[s : s + 14], 2] for s in (0, 10, 20, 30, 40, 50)]
    assert chunk_ids(tok, LONG, max_length=16, stride=0)[1] == [1, *content[14:28], 2]
    assert chunk_ids(tok, "great road", max_length=16, stride=4) == [tok("great road")["input_ids"]]


def test_a_long_text_contributes_every_window_to_its_vector(bert) -> None:
    import torch

    model, tok = bert
    windows = chunk_ids(tok, LONG, max_length=16, stride=4)
    assert len(windows) >= 3
    pooled = pooled_embeddings(model, tok, [LONG, "great road"], max_length=16, stride=4, batch_size=2)
    assert pooled.chunks == [len(windows), 1]
    with torch.no_grad():
        sums = [model(input_ids=torch.tensor([w])).last_hidden_state[0].sum(0) for w in windows]
    expected = (torch.stack(sums).sum(0) / sum(len(w) for w in windows)).numpy()
    np.testing.assert_allclose(pooled.vectors[0], expected, rtol=1e-4, atol=1e-5)
    cut = pooled_embeddings(model, tok, [LONG], max_length=16, stride=4, batch_size=8)
    np.testing.assert_allclose(cut.vectors[0], pooled.vectors[0], rtol=1e-4, atol=1e-5)  # batching aside


def test_the_cache_computes_each_text_once_and_is_safetensors(bert, tmp_path: Path) -> None:
    model, tok = bert
    calls: list[int] = []
    hook = model.register_forward_hook(lambda m, i, o: calls.append(1))

    blocks: list[tuple[int, int, int]] = []

    def compute(texts: list[str], done: int, total: int):
        blocks.append((len(texts), done, total))
        return pooled_embeddings(model, tok, texts, max_length=16, stride=4, batch_size=4)

    try:
        texts = ["great road", "bad phone", "great road", LONG]
        first = embed_with_cache(texts, EmbeddingCache(tmp_path / "c", {"model": "tiny"}), compute, block=2)
        assert (first.computed, first.cached) == (3, 0) and calls
        assert blocks == [(2, 0, 3), (1, 2, 3)]  # each block cached as soon as it is computed
        calls.clear()
        again = embed_with_cache(texts[::-1], EmbeddingCache(tmp_path / "c", {"model": "tiny"}), compute)
        assert calls == [] and (again.computed, again.cached) == (0, 3)
        np.testing.assert_array_equal(again.vectors, first.vectors[::-1])
    finally:
        hook.remove()
    shards = sorted((tmp_path / "c").glob("*"))
    assert sorted(p.suffix for p in shards) == [".json", ".safetensors", ".safetensors"]
    data = next(p for p in shards if p.suffix == ".safetensors").read_bytes()
    assert data[8:9] == b"{" and not data.startswith(b"\x80")  # a safetensors header, not a pickle


def test_the_cache_stays_under_its_limit_least_recently_used_first_and_touches_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from tuneforge.errors import TuneforgeError
    from tuneforge.models.features import cache_limit, prune_cache, text_hash

    root = tmp_path / "embeddings"
    vectors = np.ones((50, 64), dtype=np.float32)  # about 13 kB a shard

    def fill(name: str, texts: list[str]) -> EmbeddingCache:
        cache = EmbeddingCache(root / name, {"model": name})
        cache.add([text_hash(t) for t in texts], vectors[: len(texts)])
        return cache

    monkeypatch.setenv("TUNEFORGE_EMBEDDING_CACHE_GB", "1")
    old = fill("old", [f"old {i}" for i in range(50)])
    fill("recent", [f"recent {i}" for i in range(50)])
    (root / "old" / "notes.txt").write_text("mine")  # not the cache's: never removed
    (root / "README").write_text("mine")
    shard = next((root / "old").glob("*.safetensors")).stat().st_size
    # Only what is asked for is read, from disk (a new cache object holds nothing in memory).
    assert set(EmbeddingCache(root / "old", {}).lookup({text_hash("old 3"), text_hash("x")})) == {
        text_hash("old 3")
    }
    assert old.lookup({text_hash("recent 1")}) == {}
    os.utime(root / "old" / "cache.json", (1, 1))  # used long ago (opening a cache marks it used)

    # A third folder's write over the limit: the folder used longest ago goes first, then nothing more.
    monkeypatch.setenv("TUNEFORGE_EMBEDDING_CACHE_GB", str(2.5 * shard / 1024**3))
    newest = fill("newest", [f"new {i}" for i in range(50)])
    assert not list((root / "old").glob("*.safetensors")) and not (root / "old" / "cache.json").exists()
    assert (root / "old" / "notes.txt").read_text() == "mine" and (root / "README").read_text() == "mine"
    assert len(list((root / "recent").glob("*.safetensors"))) == 1
    assert EmbeddingCache(root / "old", {}).lookup({text_hash("old 3")}) == {}
    assert text_hash("new 7") in EmbeddingCache(root / "newest", {}).lookup({text_hash("new 7")})

    # At a limit of nothing, every other folder goes and, in the folder in use, all but the newest shard.
    newest.add([text_hash("newer")], vectors[:1])
    first, keep = sorted((root / "newest").glob("*.safetensors"), key=lambda p: p.stat().st_mtime_ns)
    recent = next((root / "recent").glob("*.safetensors"))
    assert prune_cache(root, keep=keep, limit=0) == [recent, first]
    assert list((root / "newest").glob("*.safetensors")) == [keep] and not (root / "recent").exists()

    monkeypatch.setenv("TUNEFORGE_EMBEDDING_CACHE_GB", "lots")
    with pytest.raises(TuneforgeError, match="TUNEFORGE_EMBEDDING_CACHE_GB is 'lots'"):
        cache_limit()
