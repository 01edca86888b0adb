"""Length-grouped batches: a window's own examples, similar lengths together, a pure function of the step."""

from __future__ import annotations

import itertools
import random
from types import SimpleNamespace
from typing import Any

from tuneforge.train.batches import GROUP_WINDOW, epoch_order, length_grouped_batches, micro_batches
from tuneforge.train.loop import Loop

N = GROUP_WINDOW * 4 * 2 + 5  # two windows and a bit of batch size 4, plus a tail that fills no batch
LENGTHS = [random.Random(i).choice((3, 4, 10, 60, 200)) for i in range(N)]


def padded_width(batches: list[list[int]]) -> int:
    return sum(max(LENGTHS[i] for i in b) * len(b) for b in batches)


def test_a_window_holds_the_plain_windows_examples_sorted_by_length() -> None:
    order = epoch_order(N, seed=3, epoch=0)
    plain = micro_batches(order, 4)
    for window in (0, 1):
        grouped = length_grouped_batches(order, LENGTHS.__getitem__, 4, window, seed=3, epoch=0)
        same = plain[window * GROUP_WINDOW : (window + 1) * GROUP_WINDOW]
        assert len(grouped) == len(same) == GROUP_WINDOW and all(len(b) == 4 for b in grouped)
        assert sorted(i for b in grouped for i in b) == sorted(i for b in same for i in b)
        # Sorted then cut: no batch's length range overlaps another's inside.
        ranges = sorted((min(LENGTHS[i] for i in b), max(LENGTHS[i] for i in b)) for b in grouped)
        assert all(hi <= lo2 for (_, hi), (lo2, _) in itertools.pairwise(ranges))
        assert padded_width(grouped) < padded_width(same)
    again = length_grouped_batches(order, LENGTHS.__getitem__, 4, 1, seed=3, epoch=0)
    assert again == length_grouped_batches(order, LENGTHS.__getitem__, 4, 1, seed=3, epoch=0)
    assert again != length_grouped_batches(order, LENGTHS.__getitem__, 4, 1, seed=4, epoch=0)


def test_processes_split_each_grouped_global_batch() -> None:
    order = epoch_order(N, seed=3, epoch=1)
    whole = length_grouped_batches(order, LENGTHS.__getitem__, 4, 0, seed=3, epoch=1)
    shares = [
        length_grouped_batches(order, LENGTHS.__getitem__, 2, 0, seed=3, epoch=1, rank=r, world=2)
        for r in (0, 1)
    ]
    assert [sorted(a + b) for a, b in zip(*shares, strict=True)] == [sorted(b) for b in whole]


def loop(group: bool) -> Loop:
    accelerator = SimpleNamespace(num_processes=1, process_index=0, unwrap_model=lambda m: m, device="cpu")
    examples: list[Any] = [{"input_ids": [0] * n, "label": 0} for n in LENGTHS]
    return Loop(
        accelerator=accelerator,
        model=None,
        engine=None,  # type: ignore[arg-type]
        scheduler=None,
        train_examples=examples,
        task="classification",
        batch_size=4,
        accumulation=2,
        seed=5,
        pad_id=0,
        group_by_length=group,
    )


def test_the_loop_finds_any_steps_batches_from_the_step_alone() -> None:
    """What resume relies on: step s gets the same batches whether or not the steps before it ran."""
    walked = loop(True)
    steps = [walked._step_batches(s) for s in range(2 * walked.steps_per_epoch)]
    fresh = loop(True)
    assert [fresh._step_batches(s) for s in (70, 3, 40, 3)] == [steps[70], steps[3], steps[40], steps[3]]
    plain = loop(False)
    epoch = slice(0, plain.steps_per_epoch)
    assert sorted(i for s in steps[epoch] for b in s for i in b) == sorted(
        i for s in range(plain.steps_per_epoch) for b in plain._step_batches(s) for i in b
    )
    assert steps[: walked.steps_per_epoch] != steps[walked.steps_per_epoch :]  # each epoch reshuffles
