"""The training progress bar (step, loss, learning rate, tokens/s, memory, ETA; drawn by rich), memory use."""

from __future__ import annotations

import sys
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def peak_memory_bytes() -> int:
    """Peak accelerator memory allocated by torch on CUDA, else the peak resident memory of this process."""
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


class TrainProgress:
    def __init__(self, total: int, start: int, *, enabled: bool) -> None:
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[tps]} tok/s"
                "  mem {task.fields[mem]}"
            ),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            disable=not enabled,
        )
        self.task = self.progress.add_task(
            "train", total=total, completed=start, loss="-", lr="-", tps="-", mem="-"
        )

    def __enter__(self) -> TrainProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def update(self, step: int, *, loss: float, lr: float, tps: float) -> None:
        if not self.enabled:
            return
        mem = f"{peak_memory_bytes() / 2**30:.2f} GiB"
        self.progress.update(
            self.task, completed=step, loss=f"{loss:.4f}", lr=f"{lr:.2e}", tps=f"{tps:,.0f}", mem=mem
        )
