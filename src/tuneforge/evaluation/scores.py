"""Per-example raw scores (label log-likelihoods, head logits, answer losses) that metrics and tests share.

`model_eval.py` decides (argmax); this module keeps the numbers behind each decision, which the calibration,
the bootstrap intervals and the paired tests need.
"""

from __future__ import annotations

from typing import Any

import torch

from tuneforge.evaluation.predict import _can_share_prompt, _sequence_logprobs, _shared_prompt_logprobs
from tuneforge.models.collate import collate
from tuneforge.models.encode import IGNORE, encode_classification_prompt, encode_text


def label_logprobs(
    model: Any,
    tok: Any,
    texts: list[str],
    labels: list[str],
    template: str,
    max_length: int,
    batch_size: int,
    truncation: str = "head",
) -> list[list[float]]:
    """(N, K) log-likelihood of each label's whole answer after each prompt (the label-scoring rule).

    An over-long text is cut the way training cut it (data.truncation), never the label being scored.
    """
    examples = [
        encode_classification_prompt(
            tok, t, label, labels=labels, template=template, max_length=max_length, truncation=truncation
        )
        for t in texts
        for label in labels
    ]
    k = len(labels)
    if _can_share_prompt(model):
        flat = _shared_prompt_logprobs(model, examples, k, int(tok.pad_token_id), batch_size)
    else:
        flat = _sequence_logprobs(model, examples, int(tok.pad_token_id), batch_size)
    return [flat[i * k : (i + 1) * k] for i in range(len(texts))]


@torch.no_grad()
def head_logits(
    model: Any, tok: Any, texts: list[str], max_length: int, batch_size: int, truncation: str = "head"
) -> list[list[float]]:
    """(N, C) logits of a sequence-classification or regression head (C = 1 for regression).

    A head run's model (method head) reads whole texts itself, in the windows it was trained on.
    """
    if hasattr(model, "text_logits"):
        return model.text_logits(texts, batch_size)  # type: ignore[no-any-return]
    model.eval()
    out: list[list[float]] = []
    for start in range(0, len(texts), batch_size):
        enc = [
            {"input_ids": encode_text(tok, t, max_length, truncation)[0], "label": 0}
            for t in texts[start : start + batch_size]
        ]
        batch = collate(enc, int(tok.pad_token_id))
        logits = model(
            input_ids=batch["input_ids"].to(model.device),
            attention_mask=batch["attention_mask"].to(model.device),
        ).logits  # (B, C)
        out.extend(logits.float().tolist())
    return out


def example_losses(
    model: Any, examples: list[dict[str, Any]], pad_id: int, batch_size: int
) -> tuple[list[float], list[int]]:
    """Each example's summed target-token loss and its number of target tokens (for per-example CIs)."""
    logp = _sequence_logprobs(model, examples, pad_id, batch_size)
    counts = [sum(1 for x in e["labels"][1:] if x != IGNORE) for e in examples]
    return [-v for v in logp], counts
