"""The training loop: read it top to bottom.

One optimizer step = `gradient_accumulation_steps` micro-batches taken in order from the epoch's seeded
permutation, so the position in the data is a pure function of the step number; that is what makes resume exact.
The loss of a step is the sum of per-target losses over all its micro-batches divided by the step's target count
(tokens for causal-LM), so accumulation gives the same gradient as one big batch.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tuneforge.train.batches import collate, epoch_order, input_positions, micro_batches, target_count
from tuneforge.train.checkpoint import TrainState
from tuneforge.train.encode import IGNORE, Example


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    targets: int
    tokens: int
    skipped: bool


def batch_loss(
    model: Any, batch: dict[str, torch.Tensor], task: str, class_weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss of a micro-batch (divide by the target count to get the mean), and the logits."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    if task == "causal-lm":
        # Position t predicts token t+1.
        shift_logits = input_positions(logits, batch["input_ids"])[:, :-1, :].float()  # (B, T-1, V)
        shift_labels = batch["labels"][:, 1:]  # (B, T-1)
        loss = F.cross_entropy(
            shift_logits.reshape(-1, shift_logits.shape[-1]),
            shift_labels.reshape(-1),
            ignore_index=IGNORE,
            reduction="sum",
        )
    elif task == "classification":
        loss = F.cross_entropy(logits.float(), batch["label"], weight=class_weights, reduction="sum")  # (B, C)
    else:  # regression: (B, 1)
        loss = F.mse_loss(logits.float().squeeze(-1), batch["label"], reduction="sum")
    return loss, logits


class Loop:
    """Holds what every step needs; `step()` runs one optimizer step, `validate()` one validation pass."""

    def __init__(
        self,
        *,
        accelerator: Any,
        model: Any,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        train_examples: list[Example],
        task: str,
        batch_size: int,
        accumulation: int,
        max_grad_norm: float | None,
        seed: int,
        pad_id: int,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        self.acc = accelerator
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.examples = train_examples
        self.task = task
        self.batch_size = batch_size
        self.accumulation = accumulation
        self.max_grad_norm = max_grad_norm
        self.seed = seed
        self.pad_id = pad_id
        self.class_weights = class_weights
        self._order_epoch = -1
        self._batches: list[list[int]] = []
        n_micro = len(micro_batches(list(range(len(train_examples))), batch_size, 0, accelerator.num_processes))
        self.steps_per_epoch = max(1, n_micro // accumulation)

    def _step_batches(self, step: int) -> list[list[int]]:
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch != self._order_epoch:
            order = epoch_order(len(self.examples), self.seed, epoch)
            self._batches = micro_batches(
                order, self.batch_size, self.acc.process_index, self.acc.num_processes
            )
            self._order_epoch = epoch
        return self._batches[k * self.accumulation : (k + 1) * self.accumulation]

    def step(self, state: TrainState) -> StepResult:
        self.model.train()
        device = self.acc.device
        batches = [
            {k: v.to(device) for k, v in collate([self.examples[i] for i in idx], self.pad_id).items()}
            for idx in self._step_batches(state.step)
        ]
        local_targets = sum(target_count(b) for b in batches)
        # Every process divides by the global target count; DDP then averages gradients over processes,
        # so we scale by the process count to get the true global mean.
        global_targets = int(self.acc.reduce(torch.tensor(local_targets, device=device), "sum").item())
        scale = self.acc.num_processes / max(global_targets, 1)
        total = torch.zeros((), device=device)
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1
            ctx = self.acc.no_sync(self.model) if not sync else contextlib.nullcontext()
            with ctx, self.acc.autocast():
                loss_sum, _ = batch_loss(self.model, batch, self.task, self.class_weights)
                self.acc.backward(loss_sum * scale)
            total += loss_sum.detach()
        loss = float(self.acc.reduce(total, "sum").item()) / max(global_targets, 1)
        if self.max_grad_norm is not None:
            grad_norm = float(self.acc.clip_grad_norm_(self.model.parameters(), self.max_grad_norm))
        else:
            grad_norm = _grad_norm(self.model)
        skipped = not (math.isfinite(loss) and math.isfinite(grad_norm))
        if not skipped:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        # Tokens of the whole global batch, so metrics.jsonl reads the same whatever the process count.
        local_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
        tokens = int(self.acc.reduce(torch.tensor(local_tokens, device=device), "sum").item())
        return StepResult(loss=loss, grad_norm=grad_norm, targets=global_targets, tokens=tokens, skipped=skipped)

    @torch.no_grad()
    def validate(self, examples: list[Example], batch_size: int) -> dict[str, float]:
        """Mean validation loss (per target), plus accuracy for classification heads."""
        self.model.eval()
        device = self.acc.device
        loss_sum, targets, correct = 0.0, 0, 0
        rank, world = self.acc.process_index, self.acc.num_processes
        mine = list(range(len(examples)))[rank::world]
        for start in range(0, len(mine), batch_size):
            batch = collate([examples[i] for i in mine[start : start + batch_size]], self.pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            with self.acc.autocast():
                loss, logits = batch_loss(self.model, batch, self.task)
            loss_sum += float(loss)
            if self.task == "classification":
                correct += int((logits.argmax(-1) == batch["label"]).sum())
            targets += target_count(batch)
        totals = self.acc.reduce(torch.tensor([loss_sum, targets, correct], device=device), "sum").tolist()
        metrics = {"loss": totals[0] / max(totals[1], 1)}
        if self.task == "causal-lm":
            metrics["perplexity"] = math.exp(min(metrics["loss"], 50.0))
        if self.task == "classification":
            metrics["accuracy"] = totals[2] / max(len(examples), 1)
        self.model.train()
        return metrics


def _grad_norm(model: Any) -> float:
    norms = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


class Throughput:
    """Tokens per second over the steps run in this process (a resumed run restarts the clock)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.tokens = 0

    def add(self, tokens: int) -> float:
        self.tokens += tokens
        return self.tokens / max(time.perf_counter() - self.start, 1e-9)
