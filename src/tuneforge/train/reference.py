"""The DPO reference of a full fine-tune: every pair's log-probabilities, taken once, kept with the run.

A model trained whole has no adapter to switch off, and a second copy of it would double the memory; so before
the first update the model scores every training and validation pair as the reference, and the table is saved
with the run: a resumed run reads it back instead of scoring the pairs again with weights that have moved, so
resume stays exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tuneforge.artifacts import RunDir, atomic_file
from tuneforge.errors import TuneforgeError
from tuneforge.models.preference import reference_table

REFERENCE_FILE = "reference_logprobs.safetensors"


def fixed_reference(
    run: RunDir,
    model: Any,
    splits: dict[str, Any],
    *,
    pad_id: int,
    batch_size: int,
    accelerator: Any,
    resume: bool,
) -> dict[str, torch.Tensor]:
    """{split: (N, 2) chosen/rejected reference log-probs}, computed now (main process) or read on resume.

    `model` must still hold the base weights: this runs before a resumed checkpoint is loaded.
    """
    from safetensors.torch import load_file, save

    path = Path(run.path) / REFERENCE_FILE
    if accelerator.is_main_process and not (resume and path.is_file()):
        tables = {
            name: reference_table(model, pairs, pad_id, batch_size, accelerator.device).cpu().contiguous()
            for name, pairs in splits.items()
        }
        with atomic_file(path) as f:
            f.write(save(tables))
    accelerator.wait_for_everyone()
    tables = load_file(path)
    for name, pairs in splits.items():
        if name not in tables or tables[name].shape != (len(pairs), 2):
            raise TuneforgeError(
                f"{path} does not hold the reference of this run's {len(pairs)} {name} pairs",
                where="train.output_dir",
                fix="start the run again without --resume (it was written by another version or run)",
            )
    return {name: t.to(accelerator.device) for name, t in tables.items()}
