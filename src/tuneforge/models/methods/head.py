"""Head only: a linear head on a frozen model's pooled embeddings (feature extraction); the base is unchanged.

The cheapest way to fine-tune, and strong for topic-like classification: every text goes through the frozen
model once (long texts in overlapping windows, mean-pooled; vectors cached by text hash, so a second run with
other head settings computes nothing), then scikit-learn fits the head in seconds. The run saves only the head
(`final/head.safetensors`) and refers to the base model; train/head.py runs it instead of the step loop.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat

from tuneforge.errors import TuneforgeError
from tuneforge.models.shape import HEAD_NAMES

SAVES_ADAPTER = False
FROZEN_FEATURES = True
"""train/ fits this method's head on cached embeddings (train/head.py) instead of running the step loop."""
NOT_SHARDABLE: str | None = "the head trains on one process from embeddings; the frozen base is only read"
"""Why train.fsdp and ZeRO stage 3 cannot split its weights over processes (None: they can)."""
NOT_DEEPSPEED: str | None = "nothing trains by gradient steps: the head is fitted by scikit-learn"
"""Why it cannot train under train.deepspeed at all (None: it can)."""

DEFAULT_GRID = [0.001, 0.01, 0.1, 1.0, 10.0, 100.0]


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    stride: int = Field(64, ge=0)
    """Tokens shared by consecutive windows of a text longer than model.max_length (each window is pooled)."""
    regularization: list[PositiveFloat] = Field(default_factory=lambda: list(DEFAULT_GRID), min_length=1)
    """Values tried on the validation split: C of the logistic regression (classification: larger fits the
    training data closer) or alpha of the ridge regression (regression: larger regularises more)."""
    batch_size: int = Field(32, ge=1)
    """Windows per forward pass while embedding (no gradients: larger than a training batch fits)."""
    max_train_examples: int | None = Field(None, ge=1)
    """Training texts to embed: a sample of this many, seeded by train.seed (None: all). train.time_budget
    (or, on CPU, the half-hour the defaults aim for) sets it when embedding every text would not fit."""
    cache: bool = True
    """Keep the embeddings in the user cache (by text hash), so a later run on the same texts and base
    model computes none again."""


def check(options: Options, task: str) -> None:
    """A head classifies or regresses: a generation task is refused before anything loads."""
    if task not in ("classification", "regression"):
        raise TuneforgeError(
            f"method head trains a classification or regression head on frozen embeddings; model.task {task} "
            "generates text, which a head cannot",
            where="method.name",
            fix="use method.name=lora (or full) for causal-lm, or model.task=classification/regression with "
            "a labelled dataset",
        )


def apply(model: Any, options: Options, task: str) -> Any:
    """Only the task head counts as trainable (what estimates and parameter counts report)."""
    for name, p in model.named_parameters():
        p.requires_grad_(any(part in HEAD_NAMES for part in name.split(".")))
    return model
