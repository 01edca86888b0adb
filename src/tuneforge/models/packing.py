"""Padding-free packing: a micro-batch's causal-LM examples as one row, attention never crossing examples.

The examples are concatenated whole (never cut) by transformers' `DataCollatorWithFlattening`: position ids
restart at 0 for every example, the first label of each example is masked (so the last token of one example
never predicts the first token of the next), and `cu_seq_lens_*` mark where each example starts. No padding
token is computed, and the loss per target token is the one of the padded batch.

Attention is kept inside each example in one of two ways:
- flash-attention (`attn_implementation=flash_attention_2/3`, CUDA): transformers runs its varlen kernel from
  the `cu_seq_lens_*` arguments;
- anything else: the model's attention is switched to `PACKED_ATTENTION` below, which runs SDPA once per
  example. transformers' own packed path (position ids + no attention mask) builds a block-diagonal mask over
  the whole row and still computes every cross-example score, which is slower on CPU (measured in
  bench/train_speed.py), and it only applies when the model runs without a KV cache: with the default
  `use_cache=True` its mask silently lets examples see each other. So packed forwards always pass
  `use_cache=False` as well.

Packing is a pure function of the micro-batch, so resume stays exact.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from tuneforge.models.encode import IGNORE, Example

PACKED_ATTENTION = "tuneforge_packed"
# Attention implementations that read cu_seq_lens themselves (transformers' varlen path).
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "flash_attention_4")
# Keys of a packed batch that go to the model's forward as keyword arguments.
FORWARD_KEYS = ("position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def pack(examples: list[Example]) -> dict[str, torch.Tensor]:
    """One (1, N) row: input_ids, labels, position_ids and the flash-attention boundaries of each example."""
    from transformers import DataCollatorWithFlattening

    flat = DataCollatorWithFlattening(return_flash_attn_kwargs=True, separator_id=IGNORE)
    batch = flat([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples], "pt")
    out = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    # max_length_* are plain ints in the collator's output; flash-attention wants them as ints too.
    out["max_length_q"] = out["max_length_k"] = int(batch["max_length_q"])  # type: ignore[assignment]
    return out


def is_packed(batch: dict[str, Any]) -> bool:
    return "cu_seq_lens_q" in batch


def forward_kwargs(batch: dict[str, Any]) -> dict[str, Any]:
    """The model arguments of a padded or a packed batch (packed: no attention mask and no KV cache)."""
    if is_packed(batch):
        return {"input_ids": batch["input_ids"], "use_cache": False} | {k: batch[k] for k in FORWARD_KEYS}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def cannot_pack(model: Any, task: str) -> str | None:
    """Why this model cannot train on packed rows exactly (None: it can).

    Prompt and prefix tuning add virtual tokens or cached keys that every example must see at its own start;
    classification/regression heads pool one position per row; other attention implementations (eager with
    relative biases, flex) may not honour per-example boundaries.
    """
    if task != "causal-lm":
        return f"a {task} head reads one position per row"
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return f"{peft_config.peft_type.value.lower()} adds virtual tokens at the start of every row"
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    if impl not in ("sdpa", "eager", PACKED_ATTENTION, *VARLEN_ATTENTION):
        return f"attention implementation {impl!r} is not known to respect example boundaries"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        # transformers' masks measure sliding windows in row positions; per-example SDPA would drop them.
        return "the model uses sliding-window attention"
    return None


def enable_packed_attention(model: Any) -> None:
    """Switch an SDPA/eager model to per-example attention (flash-attention models keep their varlen kernel).

    Unpacked batches (validation, generation) still run plain SDPA with the usual mask, so the switch can stay
    for the life of the model; the implementation name is not saved into config.json by transformers.
    """
    config = model.config
    if config._attn_implementation in (*VARLEN_ATTENTION, PACKED_ATTENTION):
        return
    _register()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.set_attn_implementation(PACKED_ATTENTION)


_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, per_example_attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
    _registered = True


def per_example_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA run separately (causal) on each example of a packed row; plain SDPA for any other batch.

    Hand-written because transformers offers per-example attention only through flash-attention's varlen
    kernel (CUDA); on CPU its packed path computes the whole row's scores under a block-diagonal mask.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.pop("cu_seq_lens_q", None)
    for name in ("cu_seq_lens_k", "max_length_q", "max_length_k"):
        kwargs.pop(name, None)
    if bounds is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    edges = [int(x) for x in bounds.tolist()]
    parts = [
        # (1, H, L, D) slices of one example; no mask, so SDPA applies its own causal mask.
        sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None, **kwargs)[0]
        for a, b in itertools.pairwise(edges)
        if b > a
    ]
    return torch.cat(parts, dim=1), None  # (1, N, H, D)
