"""LoRA (PEFT): low-rank adapters on the linear layers; task heads train with them and are saved alongside."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tuneforge.models.methods.peft_wrap import task_type, wrap

SAVES_ADAPTER = True
NOT_SHARDABLE: str | None = None
"""Why train.fsdp and ZeRO stage 3 cannot split its weights over processes (None: they can)."""
NOT_DEEPSPEED: str | None = None
"""Why it cannot train under train.deepspeed at all (None: it can)."""


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    r: int = Field(16, ge=1)
    """Rank of the low-rank update."""
    alpha: float = Field(32, gt=0)
    """Scaling numerator: the update is scaled by alpha / r (alpha / sqrt(r) with use_rslora)."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the adapter's input."""
    target_modules: list[str] | str = "all-linear"
    """Layers that get adapters: all-linear (every linear layer but the output head), or a list of names."""
    use_rslora: bool = False
    """Rank-stabilised scaling alpha / sqrt(r), which keeps high ranks from learning slower."""


def peft_config(options: Options, task: str, *, use_dora: bool = False) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,  # type: ignore[arg-type]  # typed int in PEFT, any number works
        lora_dropout=options.dropout,
        target_modules=options.target_modules,
        use_dora=use_dora,
        use_rslora=options.use_rslora,
        task_type=task_type(task),
    )


def apply(model: Any, options: Options, task: str) -> Any:
    return wrap(model, peft_config(options, task), "lora")
