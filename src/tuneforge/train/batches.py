"""Data order and batching: a seeded permutation per epoch, so any position in training can be reproduced.

We index examples directly instead of using a DataLoader: the exact position in the data order is then just
(epoch, micro-batch index), which makes exact resume trivial and needs no sampler state.
"""

from __future__ import annotations

import torch


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def micro_batches(order: list[int], batch_size: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Global batches of `batch_size * world` examples; each process takes its own strided share."""
    step = batch_size * world
    batches = [order[i : i + step] for i in range(0, len(order) - step + 1, step)]
    if not batches and order:  # fewer examples than one global batch: still train on them
        batches = [order]
    return [b[rank::world] for b in batches]


def steps_per_epoch(n: int, batch_size: int, accumulation: int, world: int = 1) -> int:
    """Optimizer steps in one pass over `n` examples (a partial step at the end of an epoch is dropped)."""
    return max(1, len(micro_batches(list(range(n)), batch_size, 0, world)) // accumulation)
