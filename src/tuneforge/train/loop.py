"""The training loop: read it top to bottom.

One optimizer step = `gradient_accumulation_steps` micro-batches taken in order from the epoch's seeded
permutation, so the position in the data is a pure function of the step number: that makes resume exact.
The loss of a step is the sum of per-target losses over all its micro-batches divided by the step's target
count (tokens for causal-LM), so accumulation gives the same gradient as one big batch.

A step whose loss or gradient is NaN/inf is skipped: no update, but the step counter, the data position and
the learning-rate schedule still advance, so the learning rate stays a pure function of the step (like the
data position), a run still ends on schedule, and resume stays exact. `train.max_bad_steps` such steps in a
row stop the run. While a streak lasts the weights are those of an earlier step, so nothing is validated or
checkpointed and the newest checkpoint stays the last good one. An update that was applied and left NaN/inf
weights (finite loss and gradient, a step far too large) stops the run at once: nothing of it is saved.

How a step's micro-batches become an update (DDP, FSDP or DeepSpeed) is the `engine.StepEngine`'s business.

Preference data (DPO, `dpo_beta` set): each example is a pair, a micro-batch of P pairs runs as 2P rows
(models/preference.py), its loss counts one term per pair, and every step and validation also reports the
mean chosen/rejected rewards, their margin and the reward accuracy.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from tuneforge.config import TrainConfig
from tuneforge.errors import TuneforgeError
from tuneforge.models.collate import collate, target_count, token_count
from tuneforge.models.encode import Example, example_length
from tuneforge.models.lm_loss import full_logits_loss, summed_target_loss
from tuneforge.models.packing import cannot_pack, enable_packed_attention, pack
from tuneforge.models.preference import STATS, pair_batch, preference_loss, preference_metrics, with_reference
from tuneforge.train.batches import (
    GROUP_WINDOW,
    epoch_order,
    length_grouped_batches,
    micro_batches,
    steps_per_epoch,
)
from tuneforge.train.checkpoint import TrainState
from tuneforge.train.engine import StepEngine

# Validation metrics where smaller is better (early stopping and the best checkpoint); any other is maximised.
LOWER_IS_BETTER = frozenset({"loss", "perplexity", "mse", "mae", "rmse"})


class BrokenWeights(TuneforgeError):
    """An applied update left non-finite weights: they cannot be trained on or saved."""


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    targets: int
    tokens: int
    skipped: bool
    """No update was applied (NaN/inf, or the fp16 grad scaler backed off)."""
    bad: bool
    """The loss or gradient was NaN/inf: counts towards train.max_bad_steps."""
    broke_weights: bool = False
    """The update left NaN/inf weights although loss and gradient were finite: the run stops."""
    extra: dict[str, float] = field(default_factory=dict)
    """Further per-step metrics (DPO: rewards, margin, accuracy)."""


def batch_loss(
    model: Any, batch: dict[str, torch.Tensor], task: str, class_weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Summed loss of a micro-batch (divide by the target count to get the mean), and the head's logits.

    Causal LMs project only the positions that have a target through the output layer (models/lm_loss.py),
    so no logits come back for them; a padded or a packed batch gives the same loss per target token.
    """
    if task == "causal-lm":
        loss = summed_target_loss(model, batch)
        if loss is None:  # prompt/prefix tuning, a distributed wrapper: the model's own forward
            loss, _ = full_logits_loss(model, batch)
        return loss, None
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    if task == "classification":
        loss = F.cross_entropy(
            logits.float(), batch["label"], weight=class_weights, reduction="sum"
        )  # (B, C)
    else:  # regression: (B, 1)
        loss = F.mse_loss(logits.float().squeeze(-1), batch["label"], reduction="sum")
    return loss, logits


def validation_metrics(task: str, preference: bool = False) -> tuple[str, ...]:
    """The metrics `Loop.validate()` returns for a task (what train.metric_for_best may name)."""
    if preference:
        return ("loss", "reward_margin", "reward_accuracy", "reward_chosen", "reward_rejected")
    extra = {"causal-lm": ("perplexity",), "classification": ("accuracy",)}.get(task, ())
    return ("loss", *extra)


class Loop:
    """Holds what every step needs; `step()` runs one optimizer step, `validate()` one validation pass."""

    def __init__(
        self,
        *,
        accelerator: Any,
        model: Any,
        engine: StepEngine,
        scheduler: Any,
        train_examples: Sequence[Example],
        task: str,
        batch_size: int,
        accumulation: int,
        seed: int,
        pad_id: int,
        class_weights: torch.Tensor | None = None,
        pack_examples: bool = False,
        group_by_length: bool = False,
        dpo_beta: float | None = None,
        reference_tables: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.acc = accelerator
        self.model = model
        self.engine = engine
        self.scheduler = scheduler
        self.examples = train_examples
        self.task = task
        self.batch_size = batch_size
        self.accumulation = accumulation
        self.seed = seed
        self.pad_id = pad_id
        self.class_weights = class_weights
        self.dpo_beta = dpo_beta
        # DPO of a full fine-tune: the reference log-probs of every pair, per split (train/reference.py).
        self.reference_tables = reference_tables
        self._order_epoch = -1
        self.group_by_length = group_by_length
        self._windows: dict[tuple[int, int], list[list[int]]] = {}
        # Packing (train.pack_examples) where it is exact for this model; `packing_off` says why it is not.
        unwrapped = accelerator.unwrap_model(model)
        self.reference = unwrapped  # DPO: the same model, its adapter switched off for the reference
        self.packing_off = cannot_pack(unwrapped, task) if pack_examples else "train.pack_examples is false"
        self.packing = self.packing_off is None
        if self.packing:
            enable_packed_attention(unwrapped)
        self._batches: list[list[int]] = []
        self.steps_per_epoch = steps_per_epoch(
            len(train_examples), batch_size, accumulation, accelerator.num_processes
        )

    def _step_batches(self, step: int) -> list[list[int]]:
        epoch, k = divmod(step, self.steps_per_epoch)
        rank, world = self.acc.process_index, self.acc.num_processes
        if epoch != self._order_epoch:
            self._order = epoch_order(len(self.examples), self.seed, epoch)
            self._batches = micro_batches(self._order, self.batch_size, rank, world)
            self._order_epoch = epoch
        wanted = range(k * self.accumulation, (k + 1) * self.accumulation)
        if not self.group_by_length:
            return [self._batches[i] for i in wanted]
        out = []
        for i in wanted:
            window, j = divmod(i, GROUP_WINDOW)
            if (epoch, window) not in self._windows:
                self._windows = {
                    (epoch, window): length_grouped_batches(
                        self._order,
                        lambda x: example_length(self.examples[x]),
                        self.batch_size,
                        window,
                        seed=self.seed,
                        epoch=epoch,
                        rank=rank,
                        world=world,
                    )
                }
            out.append(self._windows[(epoch, window)][j])
        return out

    def micro_batch(
        self, examples: list[Example], split: str = "", indices: list[int] | None = None
    ) -> dict[str, Any]:
        """The model inputs of a micro-batch on the device: one packed row, or right-padded rows.

        With fixed DPO reference tables, `indices` (the examples' positions in `split`) pick their rows.
        """
        if self.dpo_beta is not None:
            batch = pair_batch(examples, self.pad_id, self.packing)
            if self.reference_tables is not None and indices is not None:
                batch = with_reference(batch, self.reference_tables[split], indices)
        else:
            batch = pack(examples) if self.packing else collate(examples, self.pad_id)
        return {k: v.to(self.acc.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def step(self, state: TrainState) -> StepResult:
        self.model.train()
        device = self.acc.device
        batches = [
            self.micro_batch([self.examples[i] for i in idx], "train", idx)
            for idx in self._step_batches(state.step)
        ]
        local_targets = sum(target_count(b) for b in batches)
        # Every process divides by the global target count; DDP (and ZeRO) then average gradients over
        # processes, so we scale by the process count to get the true global mean.
        global_targets = int(self.acc.reduce(torch.tensor(local_targets, device=device), "sum").item())
        scale = self.acc.num_processes / max(global_targets, 1)
        total = torch.zeros(1 + len(STATS), device=device)  # loss sum, then DPO's STATS sums
        for i, batch in enumerate(batches):
            with self.engine.no_sync(last=i == len(batches) - 1), self.acc.autocast():
                loss_sum, stats = self.loss(batch)
                self.engine.backward(loss_sum * scale)
            total[0] += loss_sum.detach()
            if stats is not None:
                total[1:] += stats
        sums = self.acc.reduce(total, "sum").tolist()
        loss = sums[0] / max(global_targets, 1)
        extra = {}
        if self.dpo_beta is not None:
            extra = preference_metrics(sums[0], sums[1:], global_targets)
            del extra["loss"]
        update = self.engine.update(loss)
        self.scheduler.step()  # even after a skip: see the module docstring
        # Tokens of the whole global batch, so metrics.jsonl reads the same whatever the process count.
        local_tokens = sum(token_count(b) for b in batches)
        tokens = int(self.acc.reduce(torch.tensor(local_tokens, device=device), "sum").item())
        return StepResult(
            loss=loss,
            grad_norm=update.grad_norm,
            targets=global_targets,
            tokens=tokens,
            skipped=update.skipped,
            bad=update.bad,
            broke_weights=update.broke_weights,
            extra=extra,
        )

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Summed loss of a training micro-batch, and (DPO) its reward sums."""
        if self.dpo_beta is not None:
            return preference_loss(self.model, self.reference, batch, self.dpo_beta)
        return batch_loss(self.model, batch, self.task, self.class_weights)[0], None

    def agree(self, flag: bool) -> bool:
        """True on every process when it is true on any (so all processes stop at the same step)."""
        if self.acc.num_processes == 1:
            return flag
        return bool(self.acc.reduce(torch.tensor(int(flag), device=self.acc.device), "sum").item() > 0)

    @torch.no_grad()
    def validate(self, examples: list[Example], batch_size: int) -> dict[str, float]:
        """Mean validation loss (per target), plus accuracy for classification heads (DPO: rewards)."""
        self.model.eval()
        device = self.acc.device
        loss_sum, targets, correct = 0.0, 0, 0
        pair_stats = torch.zeros(len(STATS), device=device)
        rank, world = self.acc.process_index, self.acc.num_processes
        mine = list(range(len(examples)))[rank::world]
        # Every process runs the same number of forward passes (an FSDP forward is collective): a process
        # with fewer examples runs its last batch again and does not count it.
        rounds = math.ceil(math.ceil(len(examples) / world) / batch_size)
        for r in range(rounds):
            part = mine[r * batch_size : (r + 1) * batch_size]
            used = part or mine[-batch_size:] or [0]
            batch = self.micro_batch([examples[i] for i in used], "validation", used)
            with self.acc.autocast():
                if self.dpo_beta is not None:
                    loss, stats = preference_loss(self.model, self.reference, batch, self.dpo_beta)
                    logits = None
                else:
                    loss, logits = batch_loss(self.model, batch, self.task)
            if not part:
                continue
            loss_sum += float(loss)
            if self.dpo_beta is not None:
                pair_stats += stats
            if self.task == "classification":
                assert logits is not None
                correct += int((logits.argmax(-1) == batch["label"]).sum())
            targets += target_count(batch)
        totals = self.acc.reduce(torch.tensor([loss_sum, targets, correct], device=device), "sum").tolist()
        metrics = {"loss": totals[0] / max(totals[1], 1)}
        if self.dpo_beta is not None:
            stats_sums = self.acc.reduce(pair_stats, "sum").tolist()
            self.model.train()
            return preference_metrics(totals[0], stats_sums, int(totals[1]))
        if self.task == "causal-lm":
            metrics["perplexity"] = math.exp(min(metrics["loss"], 50.0))
        if self.task == "classification":
            metrics["accuracy"] = totals[2] / max(len(examples), 1)
        self.model.train()
        return metrics


class Throughput:
    """Tokens per second over the steps run in this process (a resumed run restarts the clock)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.tokens = 0

    def add(self, tokens: int) -> float:
        self.tokens += tokens
        return self.rate()

    def rate(self) -> float:
        return self.tokens / max(time.perf_counter() - self.start, 1e-9)


class StopSignals:
    """SIGTERM/SIGINT ask the loop to finish its step, checkpoint and stop; a second one stops at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        # Python lets only the main thread install handlers; elsewhere (a search running trials in threads)
        # the run simply keeps the default behaviour.
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        print(
            f"\n{signal.Signals(signum).name}: finishing the current step and saving a checkpoint "
            "(send it again to stop at once, without a checkpoint)",
            file=sys.stderr,
            flush=True,
        )

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


@dataclass
class Outcome:
    reason: str
    """completed, stopped-early, time-budget or interrupted."""
    signal: int | None
    tokens_per_s: float


def fit(
    loop: Loop,
    state: TrainState,
    *,
    settings: TrainConfig,
    total_steps: int,
    val_examples: list[Example],
    log: Callable[[dict[str, Any]], None],
    save: Callable[[TrainState], None],
    progress: Any,
    stop: StopSignals,
    where: Callable[[str], str],
    on_validation: Callable[[int, dict[str, float]], None] | None = None,
) -> Outcome:
    """Train from `state.step` to `total_steps` (or an early stop or a signal); validate and checkpoint."""
    speed = Throughput()
    started = time.perf_counter() - state.elapsed_s
    while state.step < total_steps and not state.stopped_early:
        result = loop.step(state)
        state.step += 1
        state.tokens += result.tokens
        state.elapsed_s = time.perf_counter() - started
        state.skipped_steps += int(result.skipped)
        state.bad_steps = state.bad_steps + 1 if result.bad else 0
        tps = speed.add(result.tokens)
        lr = loop.scheduler.get_last_lr()[0]
        log(
            {
                "step": state.step,
                "epoch": round(state.step / loop.steps_per_epoch, 4),
                "loss": result.loss,
                "lr": lr,
                "grad_norm": result.grad_norm,
                "tokens": state.tokens,
                "tokens_per_s": round(tps, 1),
                "time_s": round(state.elapsed_s, 2),
                "skipped": result.skipped,
                **result.extra,
            }
        )
        progress.update(state.step, loss=result.loss, lr=lr, tps=tps)
        if result.broke_weights:
            raise BrokenWeights(
                f"the update of step {state.step} made the weights NaN/inf although its loss and gradient "
                "were finite (a step far too large); nothing of it is saved",
                where=where("train.learning_rate"),
                fix="lower train.learning_rate (or set train.max_grad_norm) and start again, or resume from "
                "the last good checkpoint with --resume --force",
            )
        if state.bad_steps >= settings.max_bad_steps:
            raise TuneforgeError(
                f"{state.bad_steps} optimizer steps in a row had a NaN/inf loss or gradient "
                f"(steps {state.step - state.bad_steps + 1}-{state.step}); the run stops here and its newest "
                "checkpoint is the last good one",
                where=where("train.max_bad_steps"),
                fix="lower train.learning_rate, set train.max_grad_norm, or check the data of these steps",
            )

        last = state.step == total_steps
        if state.bad_steps == 0:
            if val_examples and ((settings.eval_every and state.step % settings.eval_every == 0) or last):
                _validate(loop, state, settings, val_examples, log, save, on_validation)
            # An early stop is saved too, so that a later --resume does not train on.
            if (settings.save_every and state.step % settings.save_every == 0) or last or state.stopped_early:
                save(state)
        # Checked after validation and saving, so a signal that arrives during either is honoured right away.
        if loop.agree(stop.received is not None) and not last:
            if state.bad_steps == 0:
                save(state)  # once per step: a no-op when this step is already saved
            return Outcome("interrupted", stop.received, speed.rate())
        # The budget ends a run as early stopping does: validated at this step, saved, the best kept.
        budget = settings.time_budget
        if budget is not None and not last and loop.agree(state.elapsed_s >= budget):
            if state.bad_steps == 0:
                if val_examples and not (settings.eval_every and state.step % settings.eval_every == 0):
                    _validate(loop, state, settings, val_examples, log, save, on_validation)
                save(state)
            return Outcome("time-budget", None, speed.rate())
    early = state.stopped_early and state.step < total_steps
    return Outcome("stopped-early" if early else "completed", None, speed.rate())


def _validate(
    loop: Loop,
    state: TrainState,
    settings: TrainConfig,
    val_examples: list[Example],
    log: Callable[[dict[str, Any]], None],
    save: Callable[[TrainState], None],
    on_validation: Callable[[int, dict[str, float]], None] | None,
) -> None:
    """One validation pass: log it, track the best (checkpointing it), and decide on early stopping."""
    metrics = loop.validate(val_examples, settings.batch_size)
    log({"step": state.step, "split": "validation", **metrics})
    if on_validation is not None:
        on_validation(state.step, metrics)
    value = metrics[settings.metric_for_best]
    if state.best_value is None:
        gain = math.inf if math.isfinite(value) else -math.inf
    elif settings.metric_for_best in LOWER_IS_BETTER:
        gain = state.best_value - value
    else:
        gain = value - state.best_value
    improved = gain > settings.early_stopping_min_delta  # NaN never improves
    if improved:
        state.best_value, state.best_step, state.evals_without_improvement = value, state.step, 0
    else:
        state.evals_without_improvement += 1
    patience = settings.early_stopping_patience
    state.stopped_early = patience is not None and state.evals_without_improvement >= patience
    if improved:
        save(state)  # after every field of this step is final: the best checkpoint is also a resume point
