"""Fine-tuning approaches. Adding one = one file with `Options` and `apply()` + one line in `METHODS`.

Each method file also declares whether its weights can be sharded (`NOT_SHARDABLE`, `NOT_DEEPSPEED`: None,
or the reason why not), so train/ never keeps lists of method names.

A method module may also define two optional hooks:
    check(options, task)    raise a TuneforgeError when the approach cannot run this task on this machine
    load_kwargs(options)    extra `from_pretrained` arguments for the base model (e.g. a quantization_config)
    prepare(model)          what the base needs before any adapter goes on, including a parent run's adapter
                            that continues (QLoRA's k-bit preparation)
"""

from __future__ import annotations

import json
import math
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ValidationError

from tuneforge.config import ConfigSource, MethodConfig, type_name
from tuneforge.errors import TuneforgeError
from tuneforge.models.methods import dora, full, head, ia3, lora, prefix_tuning, prompt_tuning, qlora
from tuneforge.safe_yaml import short_repr

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class Method(Protocol):
    Options: type[BaseModel]
    SAVES_ADAPTER: bool
    NOT_SHARDABLE: str | None
    """Why train.fsdp / ZeRO stage 3 cannot split its weights (None: they can)."""
    NOT_DEEPSPEED: str | None
    """Why it cannot train under train.deepspeed (None: it can)."""

    def apply(self, model: PreTrainedModel, options: Any, task: str) -> Any: ...


METHODS: dict[str, ModuleType] = {
    "full": full,
    "lora": lora,
    "qlora": qlora,
    "dora": dora,
    "prompt-tuning": prompt_tuning,
    "prefix-tuning": prefix_tuning,
    "ia3": ia3,
    "head": head,
}


def resolve_method(
    cfg: MethodConfig, source: ConfigSource | None = None, *, task: str | None = None
) -> tuple[ModuleType, BaseModel]:
    """Find the method and validate its options, with errors naming `method.<key>` and the config line.

    With `task`, also run the method's `check` hook: can it train that task on this machine?
    """
    source = source or ConfigSource(None)
    module = METHODS.get(cfg.name)
    if module is None:
        raise TuneforgeError(
            f"unknown method {cfg.name!r}",
            where=source.where("method.name"),
            fix="choose one of: " + ", ".join(METHODS),
        )
    for key, value in cfg.options().items():
        if isinstance(value, float) and not math.isfinite(value):  # as config sections refuse them
            raise TuneforgeError(
                f"method.{key} is {value}; a number here must be finite",
                where=source.where(f"method.{key}"),
                fix="give a finite number",
            )
    try:
        options = module.Options.model_validate(cfg.options())
    except ValidationError as err:
        lines = []
        for e in err.errors():
            key = "method." + ".".join(str(p) for p in e["loc"]) if e["loc"] else "method"
            if e["type"] == "extra_forbidden":
                msg = f"unknown option for {cfg.name}"
            else:
                msg = e["msg"].removeprefix("Value error, ")
                if e["loc"] and e.get("input") is not None:
                    msg += f" (got {short_repr(e['input'])})"
            lines.append(f"{source.where(key)}: {msg}")
        raise TuneforgeError(
            "invalid method options:\n  " + "\n  ".join(lines),
            fix=f"options of {cfg.name}: " + (", ".join(module.Options.model_fields) or "none"),
        ) from None
    check = getattr(module, "check", None)
    if task is not None and check is not None:
        try:
            check(options, task)
        except TuneforgeError as err:
            if err.where == "method.name":
                err = TuneforgeError(err.what, where=source.where("method.name"), fix=err.fix)
            raise err from None
    return module, options


def option_keys() -> list[tuple[str, str, str, str]]:
    """Every method option as `config-keys` rows (key, type, default, meaning); the key names the methods
    that take it, e.g. `method.r (lora, qlora, dora)`."""
    groups: dict[tuple[str, str, str, str], list[str]] = {}
    for method, module in METHODS.items():
        for name, field in module.Options.model_fields.items():
            default = json.dumps(field.get_default(call_default_factory=True))
            meaning = " ".join((field.description or "").split())
            groups.setdefault((name, type_name(field.annotation), default, meaning), []).append(method)
    return [
        (f"method.{name} ({', '.join(methods)})", kind, default, meaning)
        for (name, kind, default, meaning), methods in groups.items()
    ]


def load_kwargs(cfg: MethodConfig) -> dict[str, Any]:
    """Extra arguments the method needs when the base model is loaded (none for most methods)."""
    module, options = resolve_method(cfg)
    hook = getattr(module, "load_kwargs", None)
    return dict(hook(options)) if hook is not None else {}


def apply_method(model: PreTrainedModel, cfg: MethodConfig, task: str) -> Any:
    module, options = resolve_method(cfg)
    return module.apply(model, options, task)


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts; PEFT's count where it applies (it sizes 4-bit weights right)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
        return int(trainable), int(total)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def describe_parameters(trainable: int, total: int) -> str:
    """One line for the console: how much of the model this run trains."""
    share = 100 * trainable / total if total else 0.0
    return f"trainable parameters: {trainable:,} of {total:,} ({share:.2f}%)"
