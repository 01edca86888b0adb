"""The adapter-applied guard: "tuned" scores of a model whose adapter did nothing are an error, not a result.

An adapter can load without taking effect (target modules that match nothing, weights saved under other
names, a run that never stepped): the "tuned" numbers are then the base model's. On a probe batch we compare
the tuned model's logits with the same model's logits with the adapter switched off (PEFT's
`disable_adapter`, no second model in memory); a full fine-tune is compared with the base model's logits.
"""

from __future__ import annotations

from typing import Any

import torch

from tuneforge.errors import TuneforgeError
from tuneforge.models.collate import collate

PROBE = 4


def probe_batch(model_inputs: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """The first few encoded examples as one padded batch."""
    rows = [{"input_ids": ids, "labels": list(ids)} for ids in model_inputs[:PROBE]]
    batch = collate(rows, pad_id)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


@torch.no_grad()
def probe_logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    device = model.device
    out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
    mask = batch["attention_mask"].to(device).bool()
    return out.logits[mask].float().cpu() if out.logits.dim() == 3 else out.logits.float().cpu()


def _not_applied(how: str) -> TuneforgeError:
    return TuneforgeError(
        f"the tuned model's outputs equal the base model's on a probe batch ({how}): "
        "the trained adapter or weights did not take effect, so there is no tuned model to score",
        where="final/",
        fix="check that method.target_modules match the model's layer names (final/adapter_config.json) "
        "and that training took steps with a learning rate above 0, then train again",
    )


@torch.no_grad()
def check_adapter_applied(model: Any, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Raise when a PEFT model's logits do not change with its adapter switched off; returns what was seen."""
    if not hasattr(model, "disable_adapter"):
        return {"checked": False, "reason": "not an adapter: compared with the base model when it is loaded"}
    tuned = probe_logits(model, batch)
    with model.disable_adapter():
        base = probe_logits(model, batch)
    diff = float((tuned - base).abs().max()) if tuned.numel() else 0.0
    if diff == 0.0:
        raise _not_applied("adapter on vs off")
    return {
        "checked": True,
        "how": "adapter on vs off",
        "probe_examples": int(batch["input_ids"].shape[0]),
        "max_abs_logit_diff": diff,
    }


def check_differs(tuned: torch.Tensor, base: torch.Tensor) -> dict[str, Any]:
    """The full fine-tune form of the guard: the tuned and base models' probe logits must differ."""
    diff = float((tuned - base).abs().max()) if tuned.shape == base.shape and tuned.numel() else float("inf")
    if diff == 0.0:
        raise _not_applied("tuned vs base weights")
    return {"checked": True, "how": "tuned vs base weights", "max_abs_logit_diff": diff}
