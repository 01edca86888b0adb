"""Learning-rate schedules (warmup then cosine/linear/constant/restarts) from transformers' own builders."""

from __future__ import annotations

import math

import torch

from tuneforge.config import TrainConfig

SCHEDULES = {
    "cosine": "cosine",
    "linear": "linear",
    "constant": "constant_with_warmup",
    "cosine-with-restarts": "cosine_with_restarts",
}


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    if cfg.warmup_steps is not None:
        return min(cfg.warmup_steps, total_steps)
    return math.ceil(cfg.warmup_ratio * total_steps)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    from transformers import get_scheduler

    kwargs = {"num_cycles": cfg.num_cycles} if cfg.scheduler == "cosine-with-restarts" else None
    return get_scheduler(  # type: ignore[no-any-return]
        SCHEDULES[cfg.scheduler],
        optimizer,
        num_warmup_steps=warmup_steps(cfg, total_steps),
        num_training_steps=total_steps,
        scheduler_specific_kwargs=kwargs,
    )
