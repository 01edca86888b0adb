"""Generation metrics against hand-computed values and sacrebleu's own corpus functions."""

from __future__ import annotations

import pytest
import sacrebleu

from tuneforge.evaluation.text_metrics import (
    corpus_scores,
    exact_match,
    normalize_answer,
    per_example_scores,
    token_f1,
)


def test_squad_normalisation_and_exact_match() -> None:
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert exact_match("The cat!", "cat") == 1.0
    assert exact_match("cats", "cat") == 0.0


def test_token_f1_by_hand() -> None:
    # pred → "cat sat" (2 tokens), ref → "cat sat down" (3): P = 1, R = 2/3, F1 = 0.8
    assert token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("", "") == 1.0
    assert token_f1("the", "cat") == 0.0  # only an article: empty after normalisation


def test_per_example_scores_by_hand() -> None:
    row = per_example_scores(["the cat sat"], ["the cat sat down"])[0]
    assert row["rouge1"] == pytest.approx(2 * 1 * 0.75 / 1.75)  # P = 3/3, R = 3/4
    assert row["rouge2"] == pytest.approx(0.8)  # bigrams: P = 2/2, R = 2/3
    assert row["rougeL"] == pytest.approx(2 * 1 * 0.75 / 1.75)
    assert row["ter"] == pytest.approx(100 * 1 / 4)  # one insertion over four reference words
    assert row["length_ratio"] == pytest.approx(3 / 4)
    same = per_example_scores(["a b c d e"], ["a b c d e"])[0]
    assert same["bleu"] == pytest.approx(100.0)
    assert same["chrf"] == pytest.approx(100.0)
    assert same["ter"] == 0.0


def test_corpus_scores_are_sacrebleus_corpus_scores() -> None:
    preds = ["the quick brown fox jumps", "hello there world", "a completely different answer"]
    refs = ["the quick brown fox jumped", "hello world", "the answer is four"]
    scores = corpus_scores(preds, refs)
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score)
    assert scores["ter"] == pytest.approx(sacrebleu.corpus_ter(preds, [refs]).score)
    per = per_example_scores(preds, refs)
    assert scores["token_f1"] == pytest.approx(sum(r["token_f1"] for r in per) / 3)
    assert scores["length_ratio"] == pytest.approx(12 / 11)  # 5+3+4 answer words over 5+2+4
    assert scores["mean_answer_words"] == pytest.approx(4.0)


@pytest.mark.slow
def test_semantic_similarity_with_the_builtin_minilm() -> None:
    from tuneforge.evaluation.text_metrics import semantic_similarity

    refs = ["The cat sits on the mat.", "The cat sits on the mat.", "The cat sits on the mat."]
    preds = [
        "The cat sits on the mat.",
        "A cat is sitting on a mat.",
        "Quarterly revenue rose by four percent.",
    ]
    same, paraphrase, unrelated = semantic_similarity(preds, refs)
    assert same == pytest.approx(1.0, abs=1e-5)
    assert paraphrase > 0.7 > unrelated
