"""Token examples → tensors: right-padded micro-batches, target counts, and the logits of input positions.

Shared by training, evaluation and serving, so it lives with the model stage rather than in `train/`.
"""

from __future__ import annotations

from typing import Any

import torch

from tuneforge.models.encode import IGNORE, Example


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch: input_ids/attention_mask (B, T), and labels (B, T) or (B,)."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    out: dict[str, Any] = {}
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"], dtype=torch.long)
        mask[i, :n] = 1
    out["input_ids"], out["attention_mask"] = ids, mask
    if "labels" in examples[0]:
        labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
        for i, e in enumerate(examples):
            labels[i, : len(e["labels"])] = torch.tensor(e["labels"], dtype=torch.long)
        out["labels"] = labels
    else:
        dtype = torch.float32 if isinstance(examples[0]["label"], float) else torch.long
        out["label"] = torch.tensor([e["label"] for e in examples], dtype=dtype)
    return out


def target_count(batch: dict[str, Any]) -> int:
    """How many loss terms a micro-batch contributes: predicted tokens for causal-LM, rows for heads, and
    pairs for preference (DPO) batches, whose loss is one term per pair."""
    if "pairs" in batch:
        return int(batch["pairs"])
    if "labels" in batch:
        return int((batch["labels"][:, 1:] != IGNORE).sum())
    return int(batch["label"].shape[0])


def token_count(batch: dict[str, torch.Tensor]) -> int:
    """Real (non-padding) tokens of a padded or a packed micro-batch."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())


def input_positions(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """The LM logits of the input's own positions: (B, P+T, V) → (B, T, V).

    Prompt tuning prepends P learned virtual tokens inside the model, so its logits start with P extra
    positions that predict nothing in the input; other models return exactly T positions, kept as they are.
    """
    return logits[:, logits.shape[1] - input_ids.shape[1] :]
