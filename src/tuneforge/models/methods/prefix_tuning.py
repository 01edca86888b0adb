"""Prefix tuning (PEFT): learned key/value vectors prepended in each attention layer; the model is frozen."""

from __future__ import annotations

import inspect
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tuneforge.errors import TuneforgeError
from tuneforge.models.methods.peft_wrap import PROMPT_LEARNING_NOT_SHARDABLE, task_type, wrap

SAVES_ADAPTER = True
NOT_SHARDABLE: str | None = PROMPT_LEARNING_NOT_SHARDABLE
"""Why train.fsdp and ZeRO stage 3 cannot split its weights over processes (None: they can)."""
NOT_DEEPSPEED: str | None = None
"""Why it cannot train under train.deepspeed at all (None: it can)."""


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    num_virtual_tokens: int = Field(20, ge=1)
    """Learned key/value positions per layer."""
    projection: bool = False
    """Reparameterise the prefix through a small MLP (more stable training, more weights while training)."""
    projection_hidden_size: int | None = Field(None, ge=1)
    """Hidden size of that MLP (default: the model's hidden size); only with projection: true."""

    @model_validator(mode="after")
    def _hidden_size_needs_projection(self) -> Options:
        if self.projection_hidden_size is not None and not self.projection:
            raise ValueError("projection_hidden_size is only used with projection: true")
        return self


def takes_prefix(model: Any) -> bool:
    """Whether PEFT can hand this head model its prefix (the test PEFT makes itself).

    PEFT passes the prefix as `past_key_values` to the head model's or its backbone's forward, and only when
    that forward names the argument.
    """
    if "past_key_values" in inspect.signature(model.forward).parameters:
        return True
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    return backbone is not None and "past_key_values" in inspect.signature(backbone.forward).parameters


def apply(model: Any, options: Options, task: str) -> Any:
    from peft import PrefixTuningConfig

    if task != "causal-lm" and not takes_prefix(model):
        import peft
        import transformers

        raise TuneforgeError(
            f"prefix-tuning cannot train a {task} head on {type(model).__name__} with transformers "
            f"{transformers.__version__} and peft {peft.__version__}: the model takes no `past_key_values`, "
            "which is how PEFT passes the prefix to head models",
            where="method.name",
            fix="use lora, dora or ia3 for heads (or prompt-tuning on an encoder); "
            "prefix-tuning works for causal-lm",
        )
    hidden = options.projection_hidden_size or model.config.hidden_size
    config = PrefixTuningConfig(
        num_virtual_tokens=options.num_virtual_tokens,
        prefix_projection=options.projection,
        encoder_hidden_size=hidden,
        task_type=task_type(task),
    )
    return wrap(model, config, "prefix-tuning")
