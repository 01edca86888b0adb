"""Full fine-tuning: every weight trains; the result is saved as a safetensors model folder."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

SAVES_ADAPTER = False
NOT_SHARDABLE: str | None = None
"""Why train.fsdp and ZeRO stage 3 cannot split its weights over processes (None: they can)."""
NOT_DEEPSPEED: str | None = None
"""Why it cannot train under train.deepspeed at all (None: it can)."""


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


def apply(model: Any, options: Options, task: str) -> Any:
    for p in model.parameters():
        p.requires_grad_(True)
    return model
