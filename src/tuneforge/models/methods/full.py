"""Full fine-tuning: every weight trains; the result is saved as a safetensors model folder."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

SAVES_ADAPTER = False


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


def apply(model: Any, options: Options, task: str) -> Any:
    for p in model.parameters():
        p.requires_grad_(True)
    return model
