"""Defaults that fit the user's time: how many steps (and which method) a run gets so its estimate fits.

A user who sets `train.time_budget` (or leaves the length of a CPU run to the defaults) gets a run sized to
finish in that time, from the same estimate `tuneforge estimate` prints: the steps the task-aware recipe
chose are cut to what fits, validation is spaced so a few still happen, and a fully fine-tuned encoder that
would not see one epoch in time switches to LoRA (on CPU a LoRA step costs well under a full one); a `head`
run, which has no steps, embeds a seeded sample of the training texts that fits (fit_head_budget). What the
defaults chose, and why, is printed at the start of the run. The budget stops the run anyway if the estimate
was optimistic (train/loop.py); this module only sizes it.

Without a budget on a GPU nothing changes: those runs keep the recipe's epochs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tuneforge.models.estimate import fmt_duration

CPU_AIM_S = 1800.0
"""What a CPU run's defaults aim for when the user gave neither a budget nor a length."""
OVERHEAD = 0.1
"""Share of the budget kept for validation, checkpoints and start-up."""
LENGTH_KEYS = ("train.max_steps", "train.epochs")


@dataclass
class Fit:
    """Settings to add to the run's defaults so it fits `budget_s`, and the sentence that says why."""

    budget_s: float
    settings: dict[str, Any] = field(default_factory=dict)
    line: str = ""


def fit_budget(
    *,
    budget_s: float | None,
    cuda: bool,
    given: set[str],
    planned_steps: int,
    steps_per_epoch: int,
    eval_every: int,
    method: str,
    step_s: Callable[[str], float | None],
    can_switch_to_lora: bool,
) -> Fit | None:
    """The steps (and method) that fit, or None when the run fits already or is not the defaults' to size.

    `step_s(method)` is the estimate's seconds per step for a method (None when the model cannot be sized
    offline). A user who set the run's length (train.max_steps or train.epochs) keeps it: the budget then
    only stops the run (the start-up line says how far it will get).
    """
    aim = budget_s
    if aim is None:
        if cuda:
            return None
        aim = CPU_AIM_S
    if any(k in given for k in LENGTH_KEYS) or planned_steps <= 0:
        return None
    per_step = step_s(method)
    if per_step is None or per_step <= 0:
        return None
    usable = aim * (1 - OVERHEAD)
    if planned_steps * per_step <= usable:
        return None
    settings: dict[str, Any] = {}
    why = (
        f"{planned_steps:,} steps would take about {fmt_duration(planned_steps * per_step)} "
        f"(estimated {per_step:.3g} s/step)"
    )
    fits = max(1, math.floor(usable / per_step))
    if fits < steps_per_epoch and method == "full" and can_switch_to_lora and "method.name" not in given:
        lora = step_s("lora")
        if lora is not None and 0 < lora < per_step:
            settings["method.name"] = "lora"
            per_step = lora
            fits = min(planned_steps, max(1, math.floor(usable / per_step)))
            why += f"; LoRA at {per_step:.3g} s/step gets further in that time than full fine-tuning"
    settings["train.max_steps"] = fits
    if eval_every > fits // 2 and "train.eval_every" not in given:
        settings["train.eval_every"] = max(1, fits // 4)  # a few validations still pick the best checkpoint
    epochs = fits / steps_per_epoch if steps_per_epoch else 0.0
    source = "train.time_budget" if budget_s is not None else "on CPU the defaults aim for it"
    line = (
        f"time: {why}; {fits:,} steps ({epochs:.2g} epochs) fit {fmt_duration(aim)} ({source}; set "
        "train.time_budget, train.max_steps or train.epochs to choose)"
    )
    return Fit(aim, settings, line)


HEAD_FIT_S = 0.9
"""Seconds of one scikit-learn head fit on 2,000 texts x 384 dimensions (measured on 2 shared CPU cores,
train/head.py); a fit scales about linearly with both, and method.regularization tries one fit per value."""
MIN_HEAD_EXAMPLES = 50
"""The fewest training texts a budget cuts a head run to: below that a head is noise, so the run is left to
every text (the start-up line says it will not fit)."""


def head_fit_seconds(rows: int, width: int, grid: int) -> float:
    """Rough seconds to fit the head's grid on `rows` embeddings of `width` dimensions."""
    return grid * HEAD_FIT_S * (rows / 2000) * (width / 384)


def fit_head_budget(
    *,
    budget_s: float | None,
    cuda: bool,
    given: set[str],
    embed_s: float | None,
    train_rows: int,
    val_rows: int,
    width: int,
    grid: int,
) -> Fit | None:
    """Method head: the training texts to embed so that embedding them once (+ the head's fits) fits, or None
    when every text fits or it is not the defaults' to size.

    A head run has no steps: its cost is one forward pass over each training and validation text
    (`embed_s`, the estimate for all of them), then seconds of scikit-learn. What the budget can cut is the
    number of training texts embedded (method.max_train_examples, a seeded sample; validation keeps its
    train.eval_max_examples).
    """
    aim = budget_s
    if aim is None:
        if cuda:
            return None
        aim = CPU_AIM_S
    if "method.max_train_examples" in given or not embed_s or embed_s <= 0 or train_rows <= 0:
        return None
    per_text = embed_s / (train_rows + val_rows)
    usable = aim * (1 - OVERHEAD)
    whole = embed_s + head_fit_seconds(train_rows, width, grid)
    if whole <= usable:
        return None
    # Solve n * per_text + fit(n) = usable - validation's share; fit(n) is linear in n too.
    per_row = per_text + head_fit_seconds(1, width, grid)
    fits = math.floor((usable - val_rows * per_text) / per_row)
    source = "train.time_budget" if budget_s is not None else "on CPU the defaults aim for it"
    why = (
        f"embedding all {train_rows:,} training texts would take about {fmt_duration(whole)} "
        f"(estimated {per_text:.3g} s/text, head fits included)"
    )
    if fits < MIN_HEAD_EXAMPLES:
        line = (
            f"time: {why}; fewer than {MIN_HEAD_EXAMPLES} texts would fit {fmt_duration(aim)} ({source}), so "
            "every text is embedded, past the budget; a smaller model (tuneforge recommend) fits it"
        )
        return Fit(aim, {}, line)
    line = (
        f"time: {why}; a seeded sample of {fits:,} training texts fits {fmt_duration(aim)} ({source}; set "
        "train.time_budget or method.max_train_examples to choose)"
    )
    return Fit(aim, {"method.max_train_examples": fits}, line)
