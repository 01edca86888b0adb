"""The few-shot baseline's prompts: examples from train only, balanced over labels, k fitted to the context,
and only the question's own answer scored."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.tiny import LABELS, sentiment_rows
from tuneforge.config import ModelConfig, RunConfig
from tuneforge.evaluation.few_shot import AUTO_CAP, choose_shots, skip_reason
from tuneforge.evaluation.scores import MIN_SHARED_PREFIX, _common_prefix, _sequence_logprobs, label_logprobs
from tuneforge.models import load_model, load_tokenizer
from tuneforge.models.encode import IGNORE, encode_classification_prompt

TEMPLATE = "Classify as one of {labels}: {text}"


def _cfg(model: Path, max_length: int, few_shot: int | str = "auto", seed: int = 0) -> RunConfig:
    return RunConfig.model_validate(
        {
            "model": {"name": str(model), "task": "causal-lm", "max_length": max_length},
            "data": {"prompt_template": TEMPLATE},
            "eval": {"few_shot": few_shot, "seed": seed},
        }
    )


@pytest.fixture(scope="module")
def tok(tiny_llama: Path) -> Any:
    return load_tokenizer(ModelConfig(name=str(tiny_llama)), str(tiny_llama))


def _split() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    rows = sentiment_rows(60)
    return rows[:45], [{**r, "text": "test " + r["text"]} for r in rows[45:]]


def _fits(tok: Any, cfg: RunConfig, shots: list[dict[str, str]], test: list[dict[str, str]]) -> bool:
    """Whether every test question with these examples and any label fits uncut (what scoring will build)."""
    for r in test:
        for label in LABELS:
            e = encode_classification_prompt(
                tok,
                r["text"],
                label,
                labels=list(LABELS),
                template=TEMPLATE,
                max_length=cfg.model.max_length,
                shots=shots,
            )
            if "truncated" in e:
                return False
    return True


def test_examples_come_from_train_only_balanced_and_seeded(tok: Any, tiny_llama: Path) -> None:
    train, test = _split()
    cfg = _cfg(tiny_llama, 4096)
    shots = choose_shots(tok, train, test, cfg, "classification", list(LABELS))
    # auto: the cap (8) rounded down to as many of each of the 3 labels
    assert len(shots.train_rows) == 6 and AUTO_CAP == 8
    assert shots.how == "the auto cap 8, rounded down to 6 for as many examples of each label"
    assert Counter(train[i]["label"] for i in shots.train_rows) == {label: 2 for label in LABELS}
    users = [m["content"] for m in shots.messages if m["role"] == "user"]
    answers = [m["content"] for m in shots.messages if m["role"] == "assistant"]
    assert users == [
        TEMPLATE.format(labels=", ".join(LABELS), text=train[i]["text"]) for i in shots.train_rows
    ]
    assert answers == [train[i]["label"] for i in shots.train_rows]
    test_texts = {r["text"] for r in test}
    assert not any(t in u for u in users for t in test_texts)  # no evaluated row in any prompt
    again = choose_shots(tok, train, test, cfg, "classification", list(LABELS))
    assert again.train_rows == shots.train_rows  # a fixed seed: the same examples every time
    other = choose_shots(tok, train, test, _cfg(tiny_llama, 4096, seed=1), "classification", list(LABELS))
    assert other.train_rows != shots.train_rows
    exact = choose_shots(tok, train, test, _cfg(tiny_llama, 4096, few_shot=4), "classification", list(LABELS))
    assert len(exact.train_rows) == 4 and exact.how == "eval.few_shot"  # a number is taken as asked


def test_k_is_what_fits_the_context_and_a_long_example_reduces_it(tok: Any, tiny_llama: Path) -> None:
    train, test = _split()
    cfg = _cfg(tiny_llama, 200, few_shot=8)
    short = choose_shots(tok, train, test, cfg, "classification", list(LABELS))
    k = len(short.train_rows)
    assert 0 < k < 8 and short.how == "what fits model.max_length 200 beside the longest input"
    assert _fits(tok, cfg, short.messages, test)
    # one more example (the next in the seeded order) would cut the longest question
    more = choose_shots(
        tok, train, test, _cfg(tiny_llama, 4096, few_shot=k + 1), "classification", list(LABELS)
    )
    assert set(short.train_rows) < set(more.train_rows) and not _fits(tok, cfg, more.messages, test)
    # the same train split with one of the chosen examples made long: fewer examples fit
    first = short.train_rows[0]
    longer = [dict(r) for r in train]
    longer[first]["text"] = " ".join(["great road phone"] * 12)
    cut = choose_shots(tok, longer, test, cfg, "classification", list(LABELS))
    assert len(cut.train_rows) < k and _fits(tok, cfg, cut.messages, test)


@pytest.fixture(scope="module")
def model(tok: Any, tiny_llama: Path) -> Any:
    return load_model(ModelConfig(name=str(tiny_llama)), path=str(tiny_llama), pad_token_id=tok.pad_token_id)


def test_only_the_questions_answer_is_scored(tok: Any, model: Any, tiny_llama: Path) -> None:
    train, test = _split()
    shots = choose_shots(tok, train, test, _cfg(tiny_llama, 4096), "classification", list(LABELS)).messages
    texts = [r["text"] for r in test[:3]]
    kwargs: dict[str, Any] = {"labels": list(LABELS), "template": TEMPLATE, "max_length": 4096}
    zero = encode_classification_prompt(tok, texts[0], "positive", **kwargs)
    few = encode_classification_prompt(tok, texts[0], "positive", shots=shots, **kwargs)
    targets = [x for x in few["labels"] if x != IGNORE]
    assert targets == [x for x in zero["labels"] if x != IGNORE]  # the examples' answers are context only
    assert few["input_ids"][-len(zero["input_ids"]) :] == zero["input_ids"][-len(zero["input_ids"]) :]
    assert len(few["input_ids"]) > len(zero["input_ids"]) + 6 * 5
    # shared-prompt scoring with the examples equals scoring each whole sequence
    scores = label_logprobs(model, tok, texts, list(LABELS), TEMPLATE, 4096, 2, shots=shots)
    plain = [
        encode_classification_prompt(tok, t, label, shots=shots, **kwargs) for t in texts for label in LABELS
    ]
    flat = _sequence_logprobs(model, plain, int(tok.pad_token_id), 2)
    assert [s for row in scores for s in row] == pytest.approx(flat, abs=1e-4)
    # ... with the examples run once for all questions (a KV cache copied per batch), not once per question
    prompts = [
        e["input_ids"][: e["labels"].index(next(x for x in e["labels"] if x != IGNORE))] for e in plain
    ]
    shared = _common_prefix(prompts)
    assert shared >= MIN_SHARED_PREFIX and shared > len(few["input_ids"]) - len(zero["input_ids"])


def test_heads_and_other_data_skip_it_with_a_reason(tiny_llama: Path) -> None:
    cfg = _cfg(tiny_llama, 128)
    assert skip_reason(cfg, "classification", "test", compare=True) is None
    assert skip_reason(cfg, "classification", "test", compare=False) == (
        "it prompts the base model: run `tuneforge evaluate RUN --compare-base`"
    )
    assert skip_reason(cfg, "classification", "train", compare=True) == (
        "the evaluated split is train, where its examples come from"
    )
    head = cfg.model_copy(update={"model": cfg.model.model_copy(update={"task": "classification"})})
    assert skip_reason(head, "classification", "test", compare=True) == (
        "a classification or regression head reads no prompt, so it cannot be shown examples"
    )
    off = _cfg(tiny_llama, 128, few_shot=0)
    assert (
        skip_reason(off, "chat", "test", compare=True)
        == "turned off (eval.few_shot: 0; eval.few_shot=auto adds it)"
    )


def test_no_example_fitting_skips_it_with_the_reason(tok: Any, tiny_llama: Path) -> None:
    from tuneforge.evaluation.few_shot import few_shot_baseline

    train, test = _split()
    cfg = _cfg(tiny_llama, 40)  # the longest question alone nearly fills it
    about, result = few_shot_baseline(None, tok, train, test, cfg, "classification", list(LABELS), print)
    assert result is None and about["k"] == 0 and about["train_rows"] == []
    assert about["skipped"] == "no train example fits model.max_length 40 beside the longest input"


def test_the_window_is_the_models_context_not_the_training_max_length(
    tok: Any, model: Any, tiny_llama: Path
) -> None:
    import numpy as np

    from tuneforge.evaluation.few_shot import few_shot_baseline, model_context, prompt_window

    cfg = _cfg(tiny_llama, 40)  # the training length: no example fits beside the longest question
    assert model_context(model) == 256
    assert prompt_window(cfg, 256) == (256, "the model's context of 256 tokens")
    assert prompt_window(cfg, 8192) == (1024, "1024 tokens of the model's 8192-token context")
    assert prompt_window(cfg, 32) == prompt_window(cfg, None) == (40, "model.max_length 40")
    train, test = _split()
    test = test[:4]
    about, result = few_shot_baseline(model, tok, train, test, cfg, "classification", list(LABELS), _quiet)
    window = (256, "the model's context of 256 tokens")
    shots = choose_shots(tok, train, test, cfg, "classification", list(LABELS), window)
    assert about["prompt_tokens"] == 256 and about["k"] == len(shots.train_rows) == 3
    assert about["train_rows"] == shots.train_rows and about["name"] == "few_shot_k3"
    assert result is not None and _fits(tok, _cfg(tiny_llama, 256), shots.messages, test)
    # scored uncut in the window (at model.max_length 40 every prompt would have been cut)
    texts = [r["text"] for r in test]
    scores = np.asarray(
        label_logprobs(model, tok, texts, list(LABELS), TEMPLATE, 256, 2, shots=shots.messages)
    )
    expected = np.exp(scores - scores.max(axis=1, keepdims=True))
    assert np.asarray(result.probs) == pytest.approx(expected / expected.sum(axis=1, keepdims=True), abs=1e-5)


def _quiet(name: str) -> None:
    return None
