"""The accelerator a run trains on: precision, CPU process groups, and the distributed types we support."""

from __future__ import annotations

import os
from typing import Any

from tuneforge.config import RunConfig
from tuneforge.errors import TuneforgeError


def build_accelerator(cfg: RunConfig) -> Any:
    import torch
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
    return Accelerator(mixed_precision=precision, cpu=world > 1 and not torch.cuda.is_available())


def check_distributed_type(accelerator: Any) -> None:
    """Refuse FSDP and DeepSpeed, whose sharded optimizer state our checkpoints cannot hold yet.

    Checkpoints save the optimizer from the main process in safetensors (no pickle), which is exact for DDP
    (every process holds the same state) and wrong for sharded state: resume would silently differ.
    """
    kind = getattr(accelerator.distributed_type, "value", str(accelerator.distributed_type))
    if kind in ("FSDP", "DEEPSPEED"):
        raise TuneforgeError(
            f"{kind} training is not supported yet: tuneforge's exact-resume checkpoints cannot hold a "
            "sharded optimizer state",
            where="the accelerate config (distributed_type)",
            fix="launch with configs/accelerate/ddp.yaml (LoRA and QLoRA of models up to ~13B fit one GPU "
            "per process)",
        )
