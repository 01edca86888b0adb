"""Causal-LM loss and log-probabilities without full-vocabulary logits.

A model's forward projects every position through the output layer: a (B, T, V) tensor (49k-word vocabulary:
~200 kB per position in fp32, plus its gradient) that is the biggest of a training step, although chat SFT has
targets on about half the positions and label scoring on a handful. Here the decoder runs alone, the hidden
states of positions with a target are picked, and only those go through the output layer, a chunk at a time
(each chunk recomputed in the backward pass, so at most one chunk of logits exists at once). On CUDA, Liger's
fused linear cross-entropy does the same in one kernel when it is installed.

Models where this would not be exact fall back to the full forward: prompt/prefix tuning (virtual tokens),
models that post-process logits (soft-capping, logit scales), and models wrapped for distribution (DDP, FSDP,
DeepSpeed), whose hooks run only through the wrapper's own forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tuneforge.models.collate import input_positions
from tuneforge.models.encode import IGNORE
from tuneforge.models.packing import forward_kwargs, is_packed

# Positions projected at once: 1024 x 49k fp32 logits is ~200 MB, the size of a few activations.
CHUNK = 1024
# Config fields of models whose forward changes the logits after the output layer.
LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def decoder_and_head(model: Any) -> tuple[Any, torch.nn.Module] | None:
    """The decoder (gives hidden states) and output layer of a causal LM; None where they cannot be used."""
    if (
        isinstance(model, torch.nn.parallel.DistributedDataParallel)
        or type(model).__name__ == "DeepSpeedEngine"
    ):
        return None  # their gradient hooks need their own forward
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    from transformers import PreTrainedModel

    if not isinstance(base, PreTrainedModel) or _distributed(base):
        return None
    if any(getattr(base.config, name, None) not in (None, 1, 1.0) for name in LOGIT_POSTPROCESSING):
        return None
    head = base.get_output_embeddings()
    decoder = getattr(base, base.base_model_prefix, None)
    if head is None or decoder is None or decoder is base:
        return None
    return decoder, head


def _distributed(module: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule) or any(isinstance(m, FSDPModule) for m in module.modules())


def target_hidden(
    model: Any, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.nn.Module] | None:
    """Hidden states of the positions that predict a target (N, D), their targets (N,), rows (N,), head."""
    parts = decoder_and_head(model)
    if parts is None:
        return None
    decoder, head = parts
    hidden = decoder(**forward_kwargs(batch)).last_hidden_state  # (B, T, D)
    labels = batch["labels"][:, 1:]  # (B, T-1): position t predicts token t+1
    taught = labels != IGNORE
    rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(labels)[taught]
    return hidden[:, :-1][taught], labels[taught], rows, head


def _chunk_loss(head: torch.nn.Module, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(h).float(), y, reduction="sum")  # (n, V) for this chunk only


def summed_target_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """Sum of the cross-entropy of every target token, never materialising (B, T, V); None: not possible."""
    picked = target_hidden(model, batch)
    if picked is None:
        return None
    h, y, _, head = picked
    if len(y) == 0:
        return h.sum() * 0.0  # keeps the graph (and DDP's expectations) for a micro-batch without targets
    fused = _liger_loss(head, h, y)
    if fused is not None:
        return fused
    if not torch.is_grad_enabled() or len(y) <= CHUNK:
        return _chunk_loss(head, h, y)
    return sum(
        (
            checkpoint(_chunk_loss, head, h[i : i + CHUNK], y[i : i + CHUNK], use_reentrant=False)
            for i in range(0, len(y), CHUNK)
        ),
        start=torch.zeros((), device=h.device),
    )


def _liger_loss(head: torch.nn.Module, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
    """Liger's fused linear cross-entropy (CUDA, a plain Linear head); None where it does not apply."""
    if h.device.type != "cuda" or type(head) is not torch.nn.Linear:
        return None
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    loss: torch.Tensor = LigerFusedLinearCrossEntropyLoss(reduction="sum")(head.weight, h, y, head.bias)
    return loss


def full_logits_loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed target loss through the model's own forward (every position's logits), and the logits."""
    logits = model(**forward_kwargs(batch)).logits
    shift_logits = input_positions(logits, batch["input_ids"])[:, :-1, :]  # (B, T-1, V)
    shift_labels = batch["labels"][:, 1:]  # (B, T-1)
    taught = shift_labels != IGNORE
    loss = F.cross_entropy(shift_logits[taught].float(), shift_labels[taught], reduction="sum")  # (N, V)
    return loss, logits


def _chunk_logprobs(head: torch.nn.Module | None, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the targets `y` (n,): hidden states (n, D) through `head`, or logits (n, V)."""
    logits = head(x) if head is not None else x  # (n, V) for this chunk only
    return -F.cross_entropy(logits.float(), y, reduction="none")


def example_logprobs(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """Per-example sum of the log-probabilities of its target tokens (E,), differentiable.

    E is the number of rows of a padded batch, or of examples in a packed row (told apart by its
    `cu_seq_lens_q`). Only target positions are projected, a chunk at a time, each chunk recomputed in the
    backward pass, as for `summed_target_loss`.
    """
    labels = batch["labels"][:, 1:]  # (B, T-1): position t predicts token t+1
    taught = labels != IGNORE
    if is_packed(batch):
        bounds = batch["cu_seq_lens_q"].long()  # (E+1,) where each example starts in the row
        # The owner of a target is the example its token (position t+1) lies in.
        tokens = torch.arange(1, labels.shape[1] + 1, device=labels.device).expand_as(labels)[taught]
        owners, n_examples = torch.searchsorted(bounds[1:], tokens, right=True), len(bounds) - 1
    else:
        rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(labels)
        owners, n_examples = rows[taught], labels.shape[0]
    picked = target_hidden(model, batch)
    head: torch.nn.Module | None
    if picked is None:  # prompt/prefix tuning, a distributed wrapper: the model's own forward
        logits = model(**forward_kwargs(batch)).logits
        x, head = input_positions(logits, batch["input_ids"])[:, :-1][taught], None  # (N, V)
    else:
        x, _, _, head = picked  # (N, D)
    y = labels[taught]
    if torch.is_grad_enabled() and len(y) > CHUNK:
        parts = [
            checkpoint(_chunk_logprobs, head, x[i : i + CHUNK], y[i : i + CHUNK], use_reentrant=False)
            for i in range(0, len(y), CHUNK)
        ]
    else:
        parts = [_chunk_logprobs(head, x[i : i + CHUNK], y[i : i + CHUNK]) for i in range(0, len(y), CHUNK)]
    logp = torch.cat(parts) if parts else x.sum() * 0.0 + torch.zeros(0, device=y.device)  # (N,)
    return torch.zeros(n_examples, device=y.device).index_add(0, owners, logp)


@torch.no_grad()
def target_logprobs(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-row sum of the log-probabilities of the target tokens (B,), projecting only target positions."""
    return example_logprobs(model, batch)
