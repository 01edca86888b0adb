"""Fine-tuning approaches. Adding one = one file with `Options` and `apply()` + one line in `METHODS`."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ValidationError

from tuneforge.config import ConfigSource, MethodConfig
from tuneforge.errors import TuneforgeError
from tuneforge.models.methods import full, lora

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class Method(Protocol):
    Options: type[BaseModel]

    def apply(self, model: PreTrainedModel, options: Any, task: str) -> Any: ...


METHODS: dict[str, ModuleType] = {
    "full": full,
    "lora": lora,
}


def resolve_method(cfg: MethodConfig, source: ConfigSource | None = None) -> tuple[ModuleType, BaseModel]:
    """Find the method and validate its options, with errors naming `method.<key>` and the config line."""
    source = source or ConfigSource(None)
    module = METHODS.get(cfg.name)
    if module is None:
        raise TuneforgeError(
            f"unknown method {cfg.name!r}",
            where=source.where("method.name"),
            fix="choose one of: " + ", ".join(METHODS),
        )
    try:
        options = module.Options.model_validate(cfg.options())
    except ValidationError as err:
        lines = []
        for e in err.errors():
            key = "method." + ".".join(str(p) for p in e["loc"])
            msg = f"unknown option for {cfg.name}" if e["type"] == "extra_forbidden" else e["msg"]
            lines.append(f"{source.where(key)}: {msg}")
        raise TuneforgeError(
            "invalid method options:\n  " + "\n  ".join(lines),
            fix=f"options of {cfg.name}: " + ", ".join(module.Options.model_fields),
        ) from None
    return module, options


def apply_method(model: PreTrainedModel, cfg: MethodConfig, task: str) -> Any:
    module, options = resolve_method(cfg)
    return module.apply(model, options, task)


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
