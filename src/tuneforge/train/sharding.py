"""FSDP: shard a model's parameters, gradients and optimizer state over the processes (`train.fsdp`).

We apply torch's FSDP2 (`fully_shard`) ourselves, the way torchtitan does, not through accelerate's FSDP
plugin: accelerate shards only on GPUs, while `fully_shard` runs the same code over gloo on CPU, so the
sharded path is tested on any machine. Each transformer block (the model's `_no_split_modules`) is one unit,
gathered just before it runs and freed after; the root unit holds the rest (embeddings, tied LM head, heads).
accelerate still launches the processes and provides autocast and the reductions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

from tuneforge.config import RunConfig
from tuneforge.errors import TuneforgeError

M = TypeVar("M", bound=torch.nn.Module)


def not_shardable(method_name: str) -> str | None:
    """Why a method's weights cannot be split over processes, as its own file declares (None: they can)."""
    from tuneforge.models.methods import METHODS

    module = METHODS.get(method_name)
    return getattr(module, "NOT_SHARDABLE", None) if module is not None else None


def check_fsdp(cfg: RunConfig, processes: int, where: Callable[[str], str]) -> None:
    """Refuse what FSDP cannot do here, before anything is loaded."""
    if not cfg.train.fsdp:
        if cfg.train.fsdp_cpu_offload:
            raise TuneforgeError(
                "train.fsdp_cpu_offload offloads FSDP shards, and train.fsdp is off",
                where=where("train.fsdp_cpu_offload"),
                fix="set train.fsdp: true as well, or unset train.fsdp_cpu_offload",
            )
        return
    if processes < 2:
        raise TuneforgeError(
            "train.fsdp shards the model over several processes, and this run has one",
            where=where("train.fsdp"),
            fix="launch with: accelerate launch --config_file configs/accelerate/multi-gpu.yaml "
            "-m tuneforge train CONFIG (or set train.fsdp: false)",
        )
    reason = not_shardable(cfg.method.name)
    if reason is not None:
        raise TuneforgeError(
            f"method {cfg.method.name} cannot train with train.fsdp: {reason}",
            where=where("train.fsdp"),
            fix="set train.fsdp: false (each process then holds a full copy, as DDP does)",
        )
    if cfg.train.mixed_precision == "fp16":
        raise TuneforgeError(
            "fp16 with train.fsdp is not supported (its gradient scaler does not handle sharded gradients)",
            where=where("train.mixed_precision"),
            fix="use bf16 (or auto)",
        )


def block_classes(model: Any) -> set[str]:
    """Class names of the model's transformer blocks: the units FSDP gathers one at a time."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(getattr(base, "_no_split_modules", None) or ())


def shard_model(model: M, *, bf16: bool, cpu_offload: bool) -> M:
    """Shard `model` in place over all processes; build the optimizer afterwards (it needs the shards)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    options: dict[str, Any] = {
        # Gather weights in bf16 under bf16 training, but reduce gradients in fp32 so no precision is lost.
        "mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if bf16
        else MixedPrecisionPolicy(),
        "offload_policy": CPUOffloadPolicy() if cpu_offload else OffloadPolicy(),
    }
    blocks = block_classes(model)
    for module in list(model.modules()):
        if module is not model and type(module).__name__ in blocks:
            fully_shard(module, **options)
    fully_shard(model, **options)
    return model


def shard_from_main(model: M, *, bf16: bool, cpu_offload: bool, device: Any, is_main: bool) -> M:
    """Shard a model that only the main process loaded (the others built it empty, on the meta device).

    Each process then holds its shard and nothing more, instead of every process first loading the whole
    model into CPU memory. The main process's weights (adapter initialisation included) reach all shards.
    """
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    whole = dict(model.state_dict()) if is_main else {}  # plain tensors, captured before sharding
    shard_model(model, bf16=bf16, cpu_offload=cpu_offload)
    if not is_main:
        model.to_empty(device="cpu" if cpu_offload else device)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, whole, options=options)
    # Non-persistent buffers (rotary frequencies) are in no state dict, and FSDP does not shard buffers: send
    # them whole, and keep them on the compute device (the empty ones were made on the shards' device).
    for module in model.modules():
        for name, buffer in list(module.named_buffers(recurse=False)):
            on_device = buffer.to(device)
            dist.broadcast(on_device, src=0)
            setattr(module, name, on_device)
    return model


def is_sharded(model: Any) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def as_float(value: Any) -> float:
    """A norm or loss as a Python float; a sharded (DTensor) one is first reduced over the processes."""
    from torch.distributed.tensor import DTensor

    return float(value.full_tensor() if isinstance(value, DTensor) else value)
