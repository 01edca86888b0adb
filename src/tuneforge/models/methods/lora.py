"""LoRA (PEFT): low-rank adapters on the linear layers; task heads train with them and are saved alongside."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SAVES_ADAPTER = True


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"
    use_dora: bool = False
    use_rslora: bool = False


TASK_TYPES = {"causal-lm": "CAUSAL_LM", "classification": "SEQ_CLS", "regression": "SEQ_CLS"}


def peft_config(options: Options, task: str) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=options.target_modules,
        use_dora=options.use_dora,
        use_rslora=options.use_rslora,
        task_type=TASK_TYPES[task],
    )


def apply(model: Any, options: Options, task: str) -> Any:
    from peft import get_peft_model

    return get_peft_model(model, peft_config(options, task))
