"""QLoRA: LoRA adapters on a base model loaded in 4-bit NF4 (bitsandbytes); needs a CUDA GPU."""

from __future__ import annotations

from typing import Any, Literal

from tuneforge.errors import TuneforgeError
from tuneforge.models.methods import lora
from tuneforge.models.methods.peft_wrap import wrap

SAVES_ADAPTER = True
NOT_SHARDABLE: str | None = (
    "4-bit weights cannot be sharded this way; QLoRA of a 70B model fits one 80 GB GPU per process"
)
"""Why train.fsdp and ZeRO stage 3 cannot split its weights over processes (None: they can)."""
NOT_DEEPSPEED: str | None = (
    "its 4-bit weights are not DeepSpeed's to manage; QLoRA of a 70B model fits one 80 GB GPU per "
    "process (DDP)"
)
"""Why it cannot train under train.deepspeed at all (None: it can)."""


class Options(lora.Options):
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Dtype the 4-bit weights are dequantised to for each matmul (auto: bfloat16 where the GPU has it)."""
    double_quant: bool = True
    """Also quantise the quantisation constants (saves ~0.4 bits per weight)."""


def check(options: Options, task: str) -> None:
    """QLoRA needs bitsandbytes' CUDA kernels: say so before anything is loaded."""
    import torch

    if not torch.cuda.is_available():
        raise TuneforgeError(
            "qlora needs a CUDA GPU (its 4-bit base runs on bitsandbytes' CUDA kernels) and none is visible",
            where="method.name",
            fix="here use method.name=lora (the same adapters on a full-precision base), or run on a GPU",
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise TuneforgeError(
            "qlora needs the bitsandbytes package, which is not installed",
            where="method.name",
            fix="pip install 'tuneforge[gpu]', or use method.name=lora",
        ) from None


def load_kwargs(options: Options) -> dict[str, Any]:
    """The base model is loaded already quantised to 4-bit NF4, placed on this process's GPU."""
    import torch
    from transformers import BitsAndBytesConfig

    check(options, "")
    if options.compute_dtype == "auto":
        compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        compute = getattr(torch, options.compute_dtype)
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=options.double_quant,
        bnb_4bit_compute_dtype=compute,
    )
    # 4-bit weights cannot be moved after loading, so they are loaded straight onto this process's device.
    return {"quantization_config": quant, "device_map": {"": torch.cuda.current_device()}}


def prepare(model: Any) -> Any:
    """The 4-bit base made ready to train an adapter (also before a parent run's adapter continues)."""
    from peft import prepare_model_for_kbit_training

    # Gradient checkpointing stays under train.gradient_checkpointing rather than being switched on here.
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def apply(model: Any, options: Options, task: str) -> Any:
    return wrap(prepare(model), lora.peft_config(options, task), "qlora")
