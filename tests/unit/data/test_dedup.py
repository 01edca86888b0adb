"""Exact and near duplicates: planted pairs are found, distinct texts are kept, clusters are whole."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from tuneforge.data import near_dup
from tuneforge.data.dedup import exact_duplicates, normalize_for_matching, normalized_key
from tuneforge.data.near_dup import MinHasher, NearDuplicateIndex, connected_clusters, lsh_params


def test_exact_duplicates_ignore_case_punctuation_and_spacing() -> None:
    texts = ["Great phone!", "great   phone", "GREAT, phone.", "great phones", "Ｇｒｅａｔ phone"]
    assert exact_duplicates(texts) == [None, 0, 0, None, 0]
    assert normalize_for_matching("  Don't_STOP—me now!! ") == "don t stop me now"
    assert normalized_key("a b") == normalized_key("A-B") != normalized_key("ab")


def corpus(n: int, planted: int, seed: int = 0) -> tuple[list[str], set[tuple[int, int]]]:
    """`n` random 80-word texts plus `planted` copies with one word replaced (Jaccard 75/81 ≈ 0.93)."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(5000)]
    texts = [" ".join(rng.choices(vocab, k=80)) for _ in range(n)]
    pairs = set()
    for src in rng.sample(range(n), planted):
        words = texts[src].split()
        words[rng.randrange(80)] = "changed"
        pairs.add((src, len(texts)))
        texts.append(" ".join(words).upper() + "!")  # case and punctuation do not matter
    return texts, pairs


def near_pairs(texts: list[str], threshold: float = 0.8, batch: int = 256) -> set[tuple[int, int]]:
    index = NearDuplicateIndex(threshold)
    for lo in range(0, len(texts), batch):
        index.add([normalize_for_matching(t) for t in texts[lo : lo + batch]])
    return {(int(a), int(b)) for a, b in index.match().pairs}


def test_planted_near_duplicates_are_found_and_distinct_texts_kept() -> None:
    texts, planted = corpus(2000, 100)
    assert near_pairs(texts) == planted


def test_the_threshold_decides() -> None:
    words = [f"w{i}" for i in range(20)]
    a = " ".join(words)
    b = " ".join([*words[:10], "x", *words[11:]])  # 18 shingles, 15 shared: Jaccard 15/21 ≈ 0.71
    assert near_pairs([a, b], threshold=0.6) == {(0, 1)}
    assert near_pairs([a, b], threshold=0.8) == set()


def test_signature_agreement_estimates_jaccard() -> None:
    words = [f"w{i}" for i in range(202)]
    a, b = " ".join(words[:152]), " ".join(words[50:])  # 100 shared of 200 shingles: Jaccard 0.5
    sig = MinHasher().signatures([a, b])
    assert sig.shape == (2, 128) and sig.dtype == np.uint32
    assert abs((sig[0] == sig[1]).mean() - 0.5) < 0.1


def test_short_and_empty_texts() -> None:
    sig = MinHasher().signatures(["hello world", "hello world", "hello there", "", "   "])
    assert (sig[0] == sig[1]).all() and (sig[0] != sig[2]).any()
    assert (sig[3] == np.iinfo(np.uint32).max).all() and (sig[4] == np.iinfo(np.uint32).max).all()
    # Texts without words never match each other.
    assert near_pairs(["hello world", "hello world", "", "", "!!"]) == {(0, 1)}


def test_signatures_do_not_depend_on_batching(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [normalize_for_matching(t) for t in corpus(40, 5)[0]] + ["a", "", "b c"]
    whole = MinHasher().signatures(texts)
    monkeypatch.setattr(near_dup, "_MAX_HASH_ELEMENTS", 128 * 7)  # chunks of 7 shingles cut texts apart
    assert np.array_equal(MinHasher().signatures(texts), whole)
    assert np.array_equal(
        np.concatenate([MinHasher().signatures(texts[i : i + 3]) for i in range(0, 48, 3)]), whole
    )


def test_banding_matches_datasketch_when_weighted_like_it() -> None:
    from datasketch.lsh import _optimal_param

    for threshold in (0.5, 0.7, 0.8, 0.9):
        assert lsh_params(threshold, 128, missed_weight=0.5) == _optimal_param(threshold, 128, 0.5, 0.5)
    assert lsh_params(0.8, 128) == (16, 8)


def test_clusters_are_connected_components_named_by_their_lowest_index() -> None:
    cluster = connected_clusters(6, np.array([[4, 5], [1, 4], [0, 2]]))
    assert cluster.tolist() == [0, 1, 0, 3, 1, 1]
    result = near_dup.NearDuplicates(pairs=np.empty((0, 2), np.int64), cluster=cluster)
    assert result.clusters() == [[1, 4, 5], [0, 2]]


def test_a_chain_of_edits_is_one_cluster_and_include_limits_matching() -> None:
    rng = random.Random(1)
    words = [f"w{rng.randrange(10**6)}" for _ in range(100)]
    chain = [" ".join(words)]
    for k in range(1, 4):
        words[k * 20] = f"edit{k}"
        chain.append(" ".join(words))
    texts = [*chain, "something else entirely here"]
    index = NearDuplicateIndex(0.8)
    index.add(texts)
    result = index.match()
    assert result.cluster.tolist() == [0, 0, 0, 0, 4]
    assert result.clusters() == [[0, 1, 2, 3]]
    only = index.match(include=np.array([True, False, True, True, True]))
    assert {tuple(p) for p in only.pairs.tolist()} <= {(0, 2), (0, 3), (2, 3)}
    assert only.cluster[1] == 1


def test_disk_backed_index_matches_in_memory_and_cleans_up(tmp_path: Path) -> None:
    texts, planted = corpus(300, 20, seed=3)
    norm = [normalize_for_matching(t) for t in texts]
    disk = NearDuplicateIndex(0.8, workdir=tmp_path)
    for lo in range(0, len(norm), 64):
        disk.add(norm[lo : lo + 64])
    assert len(list(tmp_path.iterdir())) == 1
    pairs = {(int(a), int(b)) for a, b in disk.match().pairs}
    disk.close()
    assert pairs == planted == near_pairs(texts)
    assert list(tmp_path.iterdir()) == []
