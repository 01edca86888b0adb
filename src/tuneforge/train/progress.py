"""The training progress (a rich bar, or plain lines where there is no terminal), time left, memory use."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from rich import get_console
from rich.console import Console, RenderableType
from rich.progress import Progress, ProgressBar, ProgressColumn, Task
from rich.table import Table
from rich.text import Text

from tuneforge.models.estimate import fmt_duration


def peak_memory_bytes() -> int:
    """Peak accelerator memory allocated by torch on CUDA, else the peak resident memory of this process."""
    import torch

    from tuneforge.models.estimate import resident_peak_bytes

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return resident_peak_bytes()


def _clock(seconds: float | None) -> str:
    return "-:--:--" if seconds is None else str(timedelta(seconds=int(seconds)))


class TrainLine(ProgressColumn):
    """The whole line, laid out for the terminal's width: steps, ETA and loss always, the bar and the other
    numbers as they fit.

    rich's own columns shrink together when the line is too wide, which at 80 columns cut the step count and
    the ETA to "1…" and "0:0…"; here the least useful parts go first instead.
    """

    MIN_BAR, MAX_BAR = 10, 40

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def render(self, task: Task) -> RenderableType:
        f = task.fields
        total = int(task.total or 0)
        must = f"{int(task.completed)}/{total} eta {_clock(task.time_remaining)} loss {f['loss']}"
        optional = [f"lr {f['lr']}", f"{f['tps']} tok/s", f"mem {f['mem']}", _clock(task.elapsed)]
        room = self.console.width - len("train ") - len(must) - 1  # rich may need the last column
        shown = []
        for part in optional:
            if room - (len(part) + 1) < self.MIN_BAR + 1:
                break
            shown.append(part)
            room -= len(part) + 1
        text = Text(" ".join([must, *shown]), no_wrap=True, overflow="ellipsis")
        line = Table.grid(padding=(0, 1))
        line.add_row(
            Text("train", style="bold"),
            *(
                []
                if room < self.MIN_BAR + 1
                else [
                    ProgressBar(total=task.total, completed=task.completed, width=min(room - 1, self.MAX_BAR))
                ]
            ),
            text,
        )
        return line


def remaining_line(seconds_per_step: float, steps_left: int, budget_s: float | None) -> str:
    """What the measured speed means for the rest of the run, and how to make it fit half an hour."""
    left = seconds_per_step * steps_left
    about = fmt_duration(left)
    line = f"measured {seconds_per_step:.3g} s/step: about {about} for the {steps_left:,} steps left"
    if budget_s is not None and left > budget_s:
        line += f"; train.time_budget stops it after about {int(budget_s / seconds_per_step):,} of them"
    elif budget_s is None and left > HALF_HOUR:
        line += "; train.time_budget=30m to fit half an hour (the best checkpoint is kept)"
    return line


HALF_HOUR = 1800.0
MEASURED_STEPS = 3
"""Steps timed (after the first, which warms up) before the remaining time is re-estimated."""


class TrainProgress:
    """The bar on a terminal; elsewhere (stderr to a file, a CI log) a plain line every `every_s` seconds.
    Both re-estimate the remaining time once the first steps are measured."""

    def __init__(
        self,
        total: int,
        start: int,
        *,
        enabled: bool,
        console: Console | None = None,
        clock: Callable[[], float] | None = None,
        every_s: float = 60.0,
        budget_s: float | None = None,
    ) -> None:
        self.enabled = enabled
        self.console = console or get_console()  # rich's default, as the other progress bars use
        self.plain = enabled and not self.console.is_terminal
        self.total, self.every_s, self.budget_s = total, every_s, budget_s
        self.clock = clock or time.monotonic
        self.first: tuple[int, float] | None = None  # (step, time) once the first step ended
        self.measured = False
        self.last_line = self.clock()
        self.progress = Progress(
            TrainLine(self.console),
            console=self.console,
            disable=not enabled or self.plain,
            get_time=clock,
            # The ETA comes from the steps of the last 5 minutes (rich's default, 30 s, has no estimate at
            # all while a step takes longer than that).
            speed_estimate_period=300,
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
        now = self.clock()
        if self.first is None:
            self.first = (step, now)
        elif not self.measured and step - self.first[0] >= MEASURED_STEPS:
            self.measured = True
            per_step = (now - self.first[1]) / (step - self.first[0])
            if step < self.total:
                _say(remaining_line(per_step, self.total - step, self.budget_s))
        if self.plain:
            if now - self.last_line >= self.every_s or step == self.total:
                self.last_line = now
                left = self._eta(step, now)
                eta = f" eta {fmt_duration(left)}" if left is not None else ""
                _say(f"step {step}/{self.total} loss {loss:.4f} lr {lr:.2e} {tps:,.0f} tok/s{eta}")
            return
        mem = f"{peak_memory_bytes() / 2**30:.2f} GiB"
        self.progress.update(
            self.task, completed=step, loss=f"{loss:.4f}", lr=f"{lr:.2e}", tps=f"{tps:,.0f}", mem=mem
        )

    def _eta(self, step: int, now: float) -> float | None:
        if self.first is None or step <= self.first[0]:
            return None
        return (now - self.first[1]) / (step - self.first[0]) * (self.total - step)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
