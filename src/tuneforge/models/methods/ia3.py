"""IA³ (PEFT): learned vectors that rescale attention keys/values and feed-forward activations."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from tuneforge.models.methods.peft_wrap import task_type, wrap

SAVES_ADAPTER = True
NOT_SHARDABLE: str | None = None
"""Why train.fsdp and ZeRO stage 3 cannot split its weights over processes (None: they can)."""
NOT_DEEPSPEED: str | None = None
"""Why it cannot train under train.deepspeed at all (None: it can)."""


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    target_modules: list[str] | None = None
    """Layers rescaled by IA³ (default: PEFT's choice for the architecture, e.g. k/v/down projections)."""
    feedforward_modules: list[str] | None = None
    """The subset of target_modules that are feed-forward layers (their input is scaled, not their output)."""

    @model_validator(mode="after")
    def _feedforward_within_targets(self) -> Options:
        if (self.target_modules is None) != (self.feedforward_modules is None):
            raise ValueError(
                "set target_modules and feedforward_modules together (or neither, for the defaults)"
            )
        if self.target_modules is not None and self.feedforward_modules is not None:
            extra = sorted(set(self.feedforward_modules) - set(self.target_modules))
            if extra:
                raise ValueError(f"feedforward_modules {extra} are not in target_modules")
        return self


def apply(model: Any, options: Options, task: str) -> Any:
    from peft import IA3Config

    config = IA3Config(
        target_modules=options.target_modules,
        feedforward_modules=options.feedforward_modules,
        task_type=task_type(task),
    )
    return wrap(model, config, "ia3")
