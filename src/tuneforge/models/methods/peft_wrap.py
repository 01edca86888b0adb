"""What the PEFT-based approaches share: the PEFT task type of a task, and wrapping with clear errors."""

from __future__ import annotations

from typing import Any

from tuneforge.errors import TuneforgeError

# Both head tasks use PEFT's SEQ_CLS type: it puts the head (`classifier` / `score`) into modules_to_save, so
# the freshly initialised head trains with the adapter and is saved inside it.
TASK_TYPES = {"causal-lm": "CAUSAL_LM", "classification": "SEQ_CLS", "regression": "SEQ_CLS"}

PROMPT_LEARNING_NOT_SHARDABLE = (
    "PEFT computes its saved weights from the live module, which sharding leaves split; its few "
    "thousand trainable parameters gain nothing from sharding"
)
"""Why prompt and prefix tuning (virtual tokens) cannot be sharded by train.fsdp or ZeRO stage 3."""


def task_type(task: str) -> str:
    return TASK_TYPES[task]


def wrap(model: Any, peft_config: Any, method: str) -> Any:
    """`get_peft_model`, with PEFT's complaints about the model (no matching layers, ...) as user errors."""
    from peft import get_peft_model

    try:
        return get_peft_model(model, peft_config)
    except ValueError as err:
        arch = type(model).__name__
        raise TuneforgeError(
            f"{method} cannot be applied to {arch}: {err}",
            where="method.target_modules" if "target" in str(err).lower() else "method.name",
            fix="set method.target_modules to layer names of this model (see `model.named_modules()`), "
            "or choose another method",
        ) from None


def pools_last_token(model: Any) -> bool:
    """True for classification heads that read each row's last real token (decoders, whose head is `score`).

    Encoder heads (`classifier`) read the first position instead; transformers names the two kinds this way.
    """
    return hasattr(model, "score") and not hasattr(model, "classifier")
