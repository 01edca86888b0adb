"""DoRA (PEFT): LoRA with the weight split into magnitude and direction; the same options as LoRA."""

from __future__ import annotations

from typing import Any

from tuneforge.models.methods import lora
from tuneforge.models.methods.peft_wrap import wrap

SAVES_ADAPTER = True
NOT_SHARDABLE: str | None = None
"""Why train.fsdp and ZeRO stage 3 cannot split its weights over processes (None: they can)."""
NOT_DEEPSPEED: str | None = None
"""Why it cannot train under train.deepspeed at all (None: it can)."""


class Options(lora.Options):
    pass


def apply(model: Any, options: Options, task: str) -> Any:
    return wrap(model, lora.peft_config(options, task, use_dora=True), "dora")
