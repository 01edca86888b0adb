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
from tuneforge.models.packing import forward_kwargs

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


@torch.no_grad()
def target_logprobs(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-row sum of the log-probabilities of the target tokens (B,), projecting only target positions."""
    n_rows = batch["input_ids"].shape[0]
    picked = target_hidden(model, batch)
    if picked is None:
        logits = model(**forward_kwargs(batch)).logits
        logits = input_positions(logits, batch["input_ids"])[:, :-1]  # (B, T-1, V)
        labels = batch["labels"][:, 1:]  # (B, T-1)
        taught = labels != IGNORE
        rows = torch.arange(n_rows, device=labels.device).unsqueeze(1).expand_as(labels)[taught]
        h_logits, y = logits[taught], labels[taught]
        chunks = [(h_logits, y, rows)]
        project = None
    else:
        h, y, rows, project = picked
        chunks = [(h[i : i + CHUNK], y[i : i + CHUNK], rows[i : i + CHUNK]) for i in range(0, len(y), CHUNK)]
    out = torch.zeros(n_rows, device=batch["input_ids"].device)
    for x, yy, rr in chunks:
        logits = project(x) if project is not None else x  # (n, V)
        logp = torch.log_softmax(logits.float(), dim=-1)
        out.index_add_(0, rr, logp.gather(-1, yy.unsqueeze(-1)).squeeze(-1))
    return out
