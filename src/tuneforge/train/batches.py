"""Data order and batching: a seeded permutation per epoch, so any position in training can be reproduced.

We index examples directly instead of using a DataLoader: the exact position in the data order is then just
(epoch, micro-batch index), which makes exact resume trivial and needs no sampler state.
"""

from __future__ import annotations

from collections.abc import Callable

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


# Global batches whose examples are sorted together by `length_grouped_batches`: large enough to group
# similar lengths, small enough that the data order stays random at the scale of an epoch.
GROUP_WINDOW = 64


def length_grouped_batches(
    order: list[int],
    length: Callable[[int], int],
    batch_size: int,
    window: int,
    *,
    seed: int,
    epoch: int,
    rank: int = 0,
    world: int = 1,
) -> list[list[int]]:
    """The global batches of window `window` (GROUP_WINDOW of them), each holding examples of similar length.

    The window's examples (the same ones `micro_batches` would put there) are sorted by length and cut into
    global batches, whose order is then shuffled: padded batches waste less, and the result is a pure function
    of (seed, epoch, window), so resume stays exact. Only the window asked for is encoded for its lengths.
    Hand-written because transformers' LengthGroupedSampler is a sampler (state in an iterator) and sorts
    "megabatches" of a different shape; here the position must be computable from the step alone.
    """
    step = batch_size * world
    full = len(order) // step
    if full == 0:  # fewer examples than one global batch
        return micro_batches(order, batch_size, rank, world)
    first, last = window * GROUP_WINDOW, min((window + 1) * GROUP_WINDOW, full)
    chunk = sorted(order[first * step : last * step], key=lambda i: (-length(i), i))
    batches = [chunk[i : i + step] for i in range(0, len(chunk), step)]
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7_919 + window + 1)
    return [batches[j][rank::world] for j in torch.randperm(len(batches), generator=g).tolist()]
