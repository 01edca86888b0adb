"""Evaluation cuts an over-long input the way training does: the text, never the label being scored."""

from __future__ import annotations

from pathlib import Path

from tests.tiny import LABELS
from tuneforge.config import ModelConfig
from tuneforge.evaluation.scores import head_logits, label_logprobs
from tuneforge.models import load_model, load_tokenizer
from tuneforge.models.encode import encode_text


def test_label_scoring_of_a_long_text_still_scores_every_label(tiny_llama: Path) -> None:
    cfg = ModelConfig(name=str(tiny_llama))
    tok = load_tokenizer(cfg, str(tiny_llama))
    model = load_model(cfg, path=str(tiny_llama), pad_token_id=tok.pad_token_id)
    long_text = " ".join(["great road phone"] * 60)  # far over max_length
    scores = label_logprobs(model, tok, [long_text, "bad car"], list(LABELS), "{text}", 48, 4)
    # A label cut off by truncation would score 0.0 (a sum over no tokens) and tie with the others.
    assert all(s < 0 for row in scores for s in row)
    assert len({round(s, 6) for s in scores[0]}) == len(LABELS)


def test_head_inputs_follow_data_truncation(tiny_bert: Path, monkeypatch) -> None:
    cfg = ModelConfig(name=str(tiny_bert), task="classification")
    tok = load_tokenizer(cfg, str(tiny_bert))
    model = load_model(cfg, labels=list(LABELS), path=str(tiny_bert), pad_token_id=tok.pad_token_id)
    text = "great " * 40 + "refund broken"
    seen: list[list[int]] = []
    real = model.forward

    def record(*args, **kwargs):
        seen.append(kwargs["input_ids"][0].tolist())
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "forward", record)
    head_logits(model, tok, [text], 16, 1, "head-tail")
    assert seen[0] == encode_text(tok, text, 16, "head-tail")[0]
    assert seen[0] != encode_text(tok, text, 16, "head")[0]
