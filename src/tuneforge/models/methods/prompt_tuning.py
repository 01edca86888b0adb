"""Prompt tuning (PEFT): learned virtual-token embeddings prepended to every input; the model stays frozen."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tuneforge.errors import TuneforgeError
from tuneforge.models.methods.peft_wrap import (
    PROMPT_LEARNING_NOT_SHARDABLE,
    pools_last_token,
    task_type,
    wrap,
)

SAVES_ADAPTER = True
NOT_SHARDABLE: str | None = PROMPT_LEARNING_NOT_SHARDABLE
"""Why train.fsdp and ZeRO stage 3 cannot split its weights over processes (None: they can)."""
NOT_DEEPSPEED: str | None = None
"""Why it cannot train under train.deepspeed at all (None: it can)."""


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    num_virtual_tokens: int = Field(20, ge=1)
    """Learned tokens put in front of every input."""
    init: Literal["random", "text", "vocab"] = "random"
    """Start from random vectors, from the embeddings of init_text, or from random vocabulary embeddings."""
    init_text: str | None = None
    """Text whose token embeddings initialise the prompt (init: text), e.g. 'Classify the sentiment:'."""

    @model_validator(mode="after")
    def _text_for_text_init(self) -> Options:
        if (self.init == "text") != (self.init_text is not None):
            raise ValueError("init_text is required with init: text, and only used with it")
        return self


INITS = {"random": "RANDOM", "text": "TEXT", "vocab": "SAMPLE_VOCAB"}


def apply(model: Any, options: Options, task: str) -> Any:
    from peft import PromptTuningConfig

    if task != "causal-lm" and pools_last_token(model):
        # PEFT feeds prompt-tuned models embeddings instead of token ids, and decoder heads (`score`) find
        # each row's last real token from the ids; without them they read the padding of shorter rows.
        raise TuneforgeError(
            f"prompt-tuning cannot train a {task} head on the decoder {type(model).__name__}: "
            "the head would read padding instead of each text's last token",
            where="method.name",
            fix="use lora, dora or ia3 for decoder heads "
            "(prompt-tuning works for causal-lm and for encoder heads)",
        )
    config = PromptTuningConfig(
        num_virtual_tokens=options.num_virtual_tokens,
        prompt_tuning_init=INITS[options.init],
        prompt_tuning_init_text=options.init_text,
        tokenizer_name_or_path=model.name_or_path if options.init == "text" else None,
        task_type=task_type(task),
    )
    return wrap(model, config, "prompt-tuning")
