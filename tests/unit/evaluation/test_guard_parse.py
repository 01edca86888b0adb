"""The adapter-applied guard on a LoRA that is (not) the identity; parsing labels out of generated answers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tuneforge.config import ModelConfig
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation.guard import check_adapter_applied, check_differs, probe_batch, probe_logits
from tuneforge.evaluation.model_eval import parse_label
from tuneforge.models import load_model, load_tokenizer


def test_guard_catches_an_adapter_that_changes_nothing(tiny_llama: Path) -> None:
    from peft import LoraConfig, get_peft_model

    cfg = ModelConfig(name=str(tiny_llama), task="causal-lm")
    tok = load_tokenizer(cfg)
    model = get_peft_model(
        load_model(cfg, pad_token_id=tok.pad_token_id), LoraConfig(r=4, target_modules="all-linear")
    )
    batch = probe_batch(
        [tok("a b c")["input_ids"], tok("a much longer probe text")["input_ids"]], tok.pad_token_id
    )
    with pytest.raises(TuneforgeError, match=r"probe batch \(adapter on vs off\)"):
        check_adapter_applied(model, batch)  # LoRA starts as the identity (B = 0)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_B" in n).fill_(0.1)
    seen = check_adapter_applied(model, batch)
    assert seen["checked"] and seen["max_abs_logit_diff"] > 0
    logits = probe_logits(model, batch)
    assert logits.shape[0] == int(batch["attention_mask"].sum())  # only real tokens, not padding
    with pytest.raises(TuneforgeError, match="tuned vs base weights"):
        check_differs(logits, logits.clone())


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("Positive.", "positive"),
        ("I think it is negative", "negative"),
        ("very positive!", "very positive"),  # the longer label, not also "positive"
        ("positive or negative", None),
        ("no idea", None),
        ("", None),
    ],
)
def test_parse_label(answer: str, label: str | None) -> None:
    assert parse_label(answer, ["negative", "positive", "very positive"]) == label
