"""How one optimizer step turns micro-batch losses into an update: a `StepEngine` per way of training.

`TorchEngine` serves single-process, DDP and FSDP runs (accelerate's backward, torch's optimizer);
`zero.ZeroEngine` serves DeepSpeed, whose engine reduces, clips, checks and steps itself. The loop sees only
this Protocol, as checkpoints see only `checkpoint.TrainingState`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from tuneforge.train.sharding import as_float


@dataclass(frozen=True)
class Update:
    grad_norm: float
    """Before clipping; NaN/inf when the gradient was."""
    skipped: bool
    """No update was applied (NaN/inf, or the fp16 grad scaler backed off)."""
    bad: bool
    """The loss or gradient was NaN/inf: counts towards train.max_bad_steps."""
    broke_weights: bool = False
    """The update was applied and left NaN/inf weights (a finite step far too large): the run cannot go on."""


class StepEngine(Protocol):
    """Backward per micro-batch, then one update per optimizer step."""

    def backward(self, loss: torch.Tensor) -> None: ...

    def no_sync(self, last: bool) -> AbstractContextManager[Any]:
        """The context of one micro-batch's forward and backward: no gradient sync unless it is the `last`."""
        ...

    def update(self, loss: float) -> Update:
        """Clip, check and apply the accumulated gradient (or skip it), then zero it."""
        ...


def weights_finite(params: Iterable[torch.Tensor]) -> bool:
    """Whether every value of `params` is finite: one fused norm and one sync (NaN/inf propagate into it).

    A norm past float32's range also reads as not finite; weights that large are broken all the same.
    """
    tensors = [p.detach() for p in params]
    if not tensors:
        return True
    with torch.no_grad():
        return math.isfinite(as_float(torch.nn.utils.get_total_norm(tensors)))


class TorchEngine:
    """accelerate's backward (DDP gradient sync on the last micro-batch only) and a torch optimizer."""

    def __init__(
        self, accelerator: Any, model: Any, optimizer: torch.optim.Optimizer, max_grad_norm: float | None
    ) -> None:
        self.acc = accelerator
        self.model = model
        self.optimizer = optimizer
        self.max_grad_norm = max_grad_norm

    def backward(self, loss: torch.Tensor) -> None:
        self.acc.backward(loss)

    def no_sync(self, last: bool) -> AbstractContextManager[Any]:
        # DDP reduces gradients after the last micro-batch only.
        return contextlib.nullcontext() if last else self.acc.no_sync(self.model)

    def update(self, loss: float) -> Update:
        if self.max_grad_norm is not None:
            grad_norm = as_float(self.acc.clip_grad_norm_(self.model.parameters(), self.max_grad_norm))
        else:
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            grad_norm = as_float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
        overflow = False
        try:
            if getattr(self.acc, "scaler", None) is None:
                bad = not (math.isfinite(loss) and math.isfinite(grad_norm))
                if not bad:
                    self.optimizer.step()
                skipped = bad
            else:
                # fp16: the grad scaler skips updates with inf/NaN gradients itself and lowers its scale;
                # skipping the call would keep the scale too high forever. Overflowing gradients are its
                # normal business, so only a non-finite loss counts as a bad step.
                self.optimizer.step()
                skipped = bool(self.acc.optimizer_step_was_skipped)
                bad = not math.isfinite(loss)
        except RuntimeError as err:
            # A step size past float32's range (a learning rate of 1e300): torch refuses it half-way through
            # the parameters, so the weights are no longer those of any step.
            if "without overflow" not in str(err):
                raise
            overflow, skipped, bad = True, False, False
        self.optimizer.zero_grad(set_to_none=True)
        # Only the trainable parameters can change; every process holds the same ones (or its shard of
        # them, whose norm `as_float` reduces), so all processes reach the same verdict.
        broke = overflow or (
            not skipped and not weights_finite(p for p in self.model.parameters() if p.requires_grad)
        )
        return Update(grad_norm, skipped, bad, broke)
