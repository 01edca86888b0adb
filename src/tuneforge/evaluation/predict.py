"""Predictions from a base or tuned model: class heads, label scoring for causal LMs, and loss/perplexity."""

from __future__ import annotations

import math
from typing import Any

import torch

from tuneforge.train.batches import collate, input_positions
from tuneforge.train.encode import IGNORE, encode_chat, to_messages


@torch.no_grad()
def head_predictions(model: Any, tok: Any, texts: list[str], max_length: int, batch_size: int) -> list[Any]:
    """Class ids (classification) or values (regression) from a sequence-classification head."""
    model.eval()
    out: list[Any] = []
    for start in range(0, len(texts), batch_size):
        enc = [
            {"input_ids": tok(t, truncation=True, max_length=max_length)["input_ids"], "label": 0}
            for t in texts[start : start + batch_size]
        ]
        batch = collate(enc, int(tok.pad_token_id))
        logits = model(
            input_ids=batch["input_ids"].to(model.device),
            attention_mask=batch["attention_mask"].to(model.device),
        ).logits  # (B, C)
        if logits.shape[-1] == 1:
            out.extend(logits.squeeze(-1).float().tolist())
        else:
            out.extend(logits.argmax(-1).tolist())
    return out


@torch.no_grad()
def _sequence_logprobs(
    model: Any, examples: list[dict[str, Any]], pad_id: int, batch_size: int
) -> list[float]:
    """Sum of log-probabilities of each example's target tokens (labels != IGNORE)."""
    model.eval()
    scores: list[float] = []
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size], pad_id)
        ids, mask = batch["input_ids"].to(model.device), batch["attention_mask"].to(model.device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        logits = input_positions(logits, ids)[:, :-1].float()  # (B, T-1, V)
        labels = batch["labels"][:, 1:].to(model.device)  # (B, T-1)
        logp = torch.log_softmax(logits, dim=-1)
        picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T-1)
        picked = picked * (labels != IGNORE)
        scores.extend(picked.sum(-1).tolist())
    return scores


def score_labels(
    model: Any, tok: Any, texts: list[str], labels: list[str], template: str, max_length: int, batch_size: int
) -> list[int]:
    """Generative classification: the label whose whole answer (label + end of turn) is most likely wins.

    Scoring every label is more robust than parsing free generation (an untuned model may ramble), and it is
    the same decision rule for the base and the tuned model, so the comparison is fair.
    """
    examples = [
        encode_chat(tok, to_messages({"text": t, "label": label}, labels, template), max_length)
        for t in texts
        for label in labels
    ]
    scores = _sequence_logprobs(model, examples, int(tok.pad_token_id), batch_size)
    k = len(labels)
    return [max(range(k), key=lambda j: scores[i * k + j]) for i in range(len(texts))]


def lm_loss(model: Any, examples: list[dict[str, Any]], pad_id: int, batch_size: int) -> dict[str, float]:
    """Mean loss per target token and perplexity over supervised examples."""
    total = -sum(_sequence_logprobs(model, examples, pad_id, batch_size))
    n = sum(sum(1 for x in e["labels"][1:] if x != IGNORE) for e in examples)
    loss = total / max(n, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "target_tokens": n}
