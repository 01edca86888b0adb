"""The accelerator a run trains on: precision, CPU process groups, and the distributed types we support."""

from __future__ import annotations

import os
from typing import Any

from tuneforge.config import RunConfig, TrainConfig
from tuneforge.errors import TuneforgeError


def build_accelerator(cfg: RunConfig) -> Any:
    import torch

    if not torch.cuda.is_available():
        # accelerate imports DeepSpeed when it is installed; tell DeepSpeed it is on the CPU so it does not
        # warn that it had to guess.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from accelerate import Accelerator

    precision = cfg.train.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    if precision != "no" and not torch.cuda.is_available():
        raise TuneforgeError(
            f"mixed precision {precision} needs a GPU",
            where="train.mixed_precision",
            fix="set it to auto or no",
        )
    # `accelerate launch --multi_gpu` and torchrun start several processes but do not tell accelerate to use
    # the CPU; without that it would not form a process group (gloo) on a machine without GPUs.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.train.fsdp_cpu_offload and torch.cuda.is_available() and world > 1:
        _nccl_and_gloo()
    return Accelerator(mixed_precision=precision, cpu=world > 1 and not torch.cuda.is_available())


def _nccl_and_gloo() -> None:
    """One process group over NCCL for GPU tensors and gloo for CPU ones, set up before accelerate's own.

    With FSDP's CPU offload the shards, their gradient norms and gathered checkpoints are CPU tensors, which
    NCCL cannot reduce; accelerate only builds such a group for its own FSDP plugin, which we do not use.
    """
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="cuda:nccl,cpu:gloo")


def check_distributed_type(accelerator: Any) -> None:
    """Refuse accelerate's own FSDP and DeepSpeed modes: tuneforge shards the model itself (`train.fsdp`,
    `train.deepspeed`).

    accelerate's FSDP plugin would wrap the model a second time; its DeepSpeed mode steps the optimizer inside
    `backward`, which bypasses the loop's NaN guard, gradient accumulation and exact-resume checkpoints.
    """
    kind = getattr(accelerator.distributed_type, "value", str(accelerator.distributed_type))
    if kind in ("FSDP", "DEEPSPEED"):
        raise TuneforgeError(
            f"accelerate's {kind} mode is not used by tuneforge, which shards the model itself",
            where="the accelerate config (distributed_type)",
            fix="launch with configs/accelerate/multi-gpu.yaml and set train.deepspeed (a preset such as "
            "zero2 or zero3, or your DeepSpeed JSON) or train.fsdp: true for sharded training",
        )


def set_num_threads(settings: TrainConfig) -> int:
    """Apply `train.num_threads` to torch (models/threads.py); returns the thread count now in use."""
    from tuneforge.models.threads import apply_threads

    return apply_threads(settings.num_threads, "train.num_threads")
