"""Label scoring and metrics: the fast shared-prompt path must score exactly what the full sequences score."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.tiny import LABELS
from tuneforge.config import ModelConfig
from tuneforge.evaluation.metrics import classification_metrics
from tuneforge.evaluation.scores import (
    _can_share_prompt,
    _common_prefix,
    _sequence_logprobs,
    _shared_prompt_logprobs,
    label_logprobs,
)
from tuneforge.models import load_model, load_tokenizer
from tuneforge.models.encode import encode_chat, to_messages

TEMPLATE = "Classify: {labels}\nText: {text}\nAnswer."
TEXTS = ["good", "a much longer text that needs left padding in the batch", "bad day", "ok", "meh meh"]


@pytest.fixture
def llama(tiny_llama: Path) -> tuple[Any, Any]:
    cfg = ModelConfig(name=str(tiny_llama), task="causal-lm")
    tok = load_tokenizer(cfg)
    return load_model(cfg, pad_token_id=tok.pad_token_id), tok


def examples(tok: Any, labels: list[str], max_length: int = 256) -> list[dict[str, Any]]:
    return [
        encode_chat(tok, to_messages({"text": t, "label": label}, labels, TEMPLATE), max_length)
        for t in TEXTS
        for label in labels
    ]


def with_lora(model: Any) -> Any:
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    with torch.no_grad():  # LoRA starts as the identity: make it change the model
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    return peft_model


@pytest.mark.parametrize("adapter", [False, True])
@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_shared_prompt_scores_equal_full_sequence_scores(llama, adapter: bool, batch_size: int) -> None:  # type: ignore[no-untyped-def]
    model, tok = llama
    if adapter:
        model = with_lora(model)
    labels = [*LABELS, "very positive"]  # a multi-token answer too
    exs = examples(tok, labels)
    assert _can_share_prompt(model)
    full = _sequence_logprobs(model, exs, int(tok.pad_token_id), batch_size=64)
    shared = _shared_prompt_logprobs(model, exs, len(labels), int(tok.pad_token_id), batch_size)
    assert shared == pytest.approx(full, abs=1e-4)
    assert len(set(full)) > len(TEXTS)  # the scores differ, so equality means something


def test_scores_come_back_in_input_order_though_batches_run_by_length(llama) -> None:  # type: ignore[no-untyped-def]
    """Batches run in order of length (less padding); each score must still land on its own example."""
    model, tok = llama
    exs = examples(tok, list(LABELS))
    lengths = [len(e["input_ids"]) for e in exs]
    assert lengths != sorted(lengths)  # the order really changes
    pad = int(tok.pad_token_id)
    alone = [_sequence_logprobs(model, [e], pad, batch_size=1)[0] for e in exs]  # one at a time: no order
    assert _sequence_logprobs(model, exs, pad, batch_size=4) == pytest.approx(alone, abs=1e-4)
    assert _shared_prompt_logprobs(model, exs, len(LABELS), pad, batch_size=2) == pytest.approx(
        alone, abs=1e-4
    )


def test_truncated_prompts_fall_back_to_full_sequences(llama) -> None:  # type: ignore[no-untyped-def]
    model, tok = llama
    exs = examples(tok, list(LABELS), max_length=30)  # cuts the longer prompts, answers and all
    full = _sequence_logprobs(model, exs, int(tok.pad_token_id), batch_size=64)
    shared = _shared_prompt_logprobs(model, exs, len(LABELS), int(tok.pad_token_id), batch_size=6)
    assert shared == pytest.approx(full, abs=1e-4)


def test_score_labels_picks_the_most_likely_answer(llama) -> None:  # type: ignore[no-untyped-def]
    model, tok = llama
    labels = list(LABELS)
    full = _sequence_logprobs(model, examples(tok, labels), int(tok.pad_token_id), batch_size=64)
    expected = [max(range(3), key=lambda j: full[i * 3 + j]) for i in range(len(TEXTS))]
    scores = label_logprobs(model, tok, TEXTS, labels, TEMPLATE, 256, batch_size=6)
    assert [max(range(3), key=row.__getitem__) for row in scores] == expected


def test_prompt_learning_methods_do_not_share_a_cache(llama) -> None:  # type: ignore[no-untyped-def]
    from peft import PromptTuningConfig, get_peft_model

    model, _ = llama
    prompt_tuned = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    assert not _can_share_prompt(prompt_tuned)


def test_classification_metrics_by_hand() -> None:
    gold = ["a", "a", "b", "b", "c", "c"]
    pred = ["a", "b", "b", "b", "a", "c"]
    m = classification_metrics(gold, pred, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    # a: P=1/2 R=1/2; b: P=2/3 R=1; c: P=1 R=1/2
    f1 = {"a": 0.5, "b": 0.8, "c": 2 / 3}
    for label, value in f1.items():
        assert m["per_class"][label]["f1"] == pytest.approx(value)
    assert m["macro_f1"] == pytest.approx(sum(f1.values()) / 3)
    assert m["confusion_matrix"]["rows_gold_cols_pred"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_a_common_prefix_leaves_every_prompt_a_token_to_run() -> None:
    assert _common_prefix([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4, 6]]) == 3
    assert _common_prefix([[1, 2, 3], [1, 2, 3]]) == 2  # identical prompts: the last token still runs
    assert _common_prefix([[7, 1], [8, 1]]) == 0 and _common_prefix([]) == 0
