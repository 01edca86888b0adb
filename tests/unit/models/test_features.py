"""Frozen-model features for method head: windows over long texts, pooling, and the embedding cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tuneforge.models.features import EmbeddingCache, chunk_ids, embed_with_cache, pooled_embeddings


@pytest.fixture(scope="module")
def bert(tiny_bert: Path):
    from transformers import AutoModel, AutoTokenizer

    return AutoModel.from_pretrained(tiny_bert).eval(), AutoTokenizer.from_pretrained(tiny_bert)


LONG = " ".join(f"word{i % 7} road phone" for i in range(12))


def test_a_long_text_is_read_in_overlapping_windows_that_cover_it_all(bert) -> None:
    _, tok = bert
    content = tok(LONG, add_special_tokens=False)["input_ids"]
    whole = tok(LONG)["input_ids"]
    assert len(whole) > 16
    windows = chunk_ids(tok, LONG, max_length=16, stride=4)
    room = 16 - (len(whole) - len(content))  # tokens of text per window, special tokens around each
    assert all(len(w) <= 16 for w in windows)
    assert all(w[0] == whole[0] and w[-1] == whole[-1] for w in windows)  # [CLS] ... [SEP] in every one
    inner = [w[1:-1] for w in windows]
    assert inner[0] == content[:room]
    step = room - 4
    assert [x for x in inner[1]] == content[step : step + room]  # the second starts 4 tokens back
    assert inner[-1][-1] == content[-1]  # nothing of the end is lost
    assert len(windows) == 1 + -(-(len(content) - room) // step)
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

    def compute(texts: list[str]):
        return pooled_embeddings(model, tok, texts, max_length=16, stride=4, batch_size=4)

    try:
        texts = ["great road", "bad phone", "great road", LONG]
        first = embed_with_cache(texts, EmbeddingCache(tmp_path / "c", {"model": "tiny"}), compute)
        assert (first.computed, first.cached) == (3, 0) and calls
        calls.clear()
        again = embed_with_cache(texts[::-1], EmbeddingCache(tmp_path / "c", {"model": "tiny"}), compute)
        assert calls == [] and (again.computed, again.cached) == (0, 3)
        np.testing.assert_array_equal(again.vectors, first.vectors[::-1])
    finally:
        hook.remove()
    shards = sorted((tmp_path / "c").glob("*"))
    assert [p.suffix for p in shards] == sorted([".json", ".safetensors"])
    data = next(p for p in shards if p.suffix == ".safetensors").read_bytes()
    assert data[8:9] == b"{" and not data.startswith(b"\x80")  # a safetensors header, not a pickle
