"""AdamW (or 8-bit AdamW on GPU) with weight decay only where it belongs, and balanced class weights."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tuneforge.config import RunConfig
from tuneforge.errors import TuneforgeError


def build_optimizer(model: Any, cfg: RunConfig) -> Any:
    import torch

    decay: list[Any] = []
    no_decay: list[Any] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # Biases, norms and embeddings-like 1-D tensors are not decayed (standard AdamW practice).
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.train.optimizer == "adamw-8bit":
        if not torch.cuda.is_available():
            raise TuneforgeError("adamw-8bit needs a CUDA GPU", where="train.optimizer", fix="use adamw")
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise TuneforgeError(
                "adamw-8bit needs bitsandbytes", fix="pip install 'tuneforge[gpu]'"
            ) from None
        return bnb.optim.AdamW8bit(groups, lr=cfg.train.learning_rate)
    return torch.optim.AdamW(groups, lr=cfg.train.learning_rate)


def balanced_class_weights(records: list[dict[str, Any]], labels: list[str]) -> Any:
    """Balanced weights: total / (classes x count of the class), from the records' labels."""
    import torch

    n = len(labels)
    counts = Counter(labels.index(str(r["label"])) for r in records)
    total = sum(counts.values())
    return torch.tensor(
        [total / (n * counts[i]) if counts[i] else 0.0 for i in range(n)], dtype=torch.float32
    )
