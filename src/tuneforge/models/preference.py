"""DPO (Rafailov et al. 2023, "Direct Preference Optimization"): preference pairs → loss, rewards and margins.

The reference policy is the same model with its adapter switched off (peft's `disable_adapter()`), so no
second model is held in memory (a run started from an SFT adapter run switches to a frozen copy of that
adapter instead: models/lineage.py); its log-probabilities are taken in eval mode (no dropout), without
gradient, in the same micro-batch as the policy's, so a step is a pure function of its batch and resume stays
exact. A model without an adapter (full fine-tuning) has nothing to switch off: its reference log-probs
are taken once, before the first update, for every pair (`reference_table`), and travel with each batch.

Written by hand rather than taken from TRL: our own loop owns batching, packing and exact resume, and the loss
itself is a few lines. The formulation is TRL's `sigmoid` loss: summed completion log-probabilities, loss
-log σ(β((π_c - ref_c) - (π_r - ref_r))), implicit rewards β(π - ref) per answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from tuneforge.models.collate import collate
from tuneforge.models.encode import Example
from tuneforge.models.lineage import reference_model
from tuneforge.models.lm_loss import example_logprobs
from tuneforge.models.packing import pack

# The per-pair sums a micro-batch contributes (added over micro-batches and processes, then divided by the
# number of pairs): chosen reward, rejected reward, pairs whose chosen reward is the higher.
STATS = ("reward_chosen", "reward_rejected", "reward_accuracy")


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss (P,), and the (detached) implicit rewards of the chosen and rejected answers (P,)."""
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(chosen - rejected), chosen.detach(), rejected.detach()


def pair_batch(pairs: list[Example], pad_id: int, packed: bool) -> dict[str, Any]:
    """A micro-batch of P pairs as 2P examples, chosen ones first: one packed row, or 2P right-padded rows."""
    rows = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    batch: dict[str, Any] = pack(rows) if packed else collate(rows, pad_id)
    batch["pairs"] = len(pairs)
    return batch


def reference_logprobs(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """Summed target log-probabilities (2P,) under the reference: the model, adapter off, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), reference_model(model):
            return example_logprobs(model, batch)
    finally:
        model.train(was_training)


@torch.no_grad()
def reference_table(
    model: Any, pairs: Sequence[Example], pad_id: int, batch_size: int, device: Any
) -> torch.Tensor:
    """Summed target log-probabilities (N, 2) of every pair's chosen and rejected answer, in eval mode.

    For a model without an adapter, before training changes it: then the model itself is the reference.
    """
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(pairs), batch_size):
        batch = pair_batch(list(pairs[i : i + batch_size]), pad_id, packed=False)
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        logp = example_logprobs(model, batch)  # (2P,)
        out.append(torch.stack([logp[: batch["pairs"]], logp[batch["pairs"] :]], dim=1))  # (P, 2)
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros((0, 2), device=device)


def with_reference(batch: dict[str, Any], table: torch.Tensor, indices: list[int]) -> dict[str, Any]:
    """`batch` (pairs `indices`) carrying its rows of a `reference_table`, ordered as its rows (2P,)."""
    rows = table[indices]  # (P, 2)
    return {**batch, "reference": torch.cat([rows[:, 0], rows[:, 1]])}


def preference_loss(
    model: Any, reference: Any, batch: dict[str, Any], beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed DPO loss of a micro-batch of pairs, and its STATS sums (3,).

    `model` is what trains (possibly wrapped for distribution); `reference` is the same model unwrapped,
    whose adapter can be switched off.
    """
    ref = batch["reference"] if "reference" in batch else reference_logprobs(reference, batch)  # (2P,)
    policy = example_logprobs(model, batch)  # (2P,)
    p = int(batch["pairs"])
    losses, chosen, rejected = dpo_loss(policy[:p], policy[p:], ref[:p], ref[p:], beta)
    stats = torch.stack([chosen.sum(), rejected.sum(), (chosen > rejected).float().sum()])
    return losses.sum(), stats


def preference_metrics(loss_sum: float, stats: list[float], pairs: int) -> dict[str, float]:
    """Mean loss, rewards, margin and accuracy per pair from the sums of a step or a validation pass."""
    n = max(pairs, 1)
    out = {"loss": loss_sum / n, **{name: value / n for name, value in zip(STATS, stats, strict=True)}}
    out["reward_margin"] = out["reward_chosen"] - out["reward_rejected"]
    return out
