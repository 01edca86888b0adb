"""GPU paths of packing and target-only loss: flash-attention varlen rows and Liger's fused linear CE.

Skipped without CUDA (and each without its package). Run with `pytest -m gpu tests/gpu`. Tolerances are
bf16-sized: the point is that the packed / fused result is the per-example / full-logits one.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.unit.models.test_packing import examples, plain_loss
from tuneforge.models import lm_loss
from tuneforge.models.collate import collate
from tuneforge.models.packing import cannot_pack, enable_packed_attention, forward_kwargs, pack

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def load(path: Path, attn: str) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation=attn)
    return model.cuda().eval()


def to_cuda(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="needs flash-attn")
def test_flash_attention_varlen_row_equals_examples_one_by_one(tiny_llama: Path) -> None:
    model = load(tiny_llama, "flash_attention_2")
    assert cannot_pack(model, "causal-lm") is None
    enable_packed_attention(model)
    assert (
        model.config._attn_implementation == "flash_attention_2"
    )  # kept: its varlen kernel reads cu_seq_lens
    exs = examples()
    with torch.no_grad():
        one_by_one = sum(float(plain_loss(model, to_cuda(collate([e], 0)))) for e in exs)
        packed = lm_loss.summed_target_loss(model, to_cuda(pack(exs)))
    assert packed is not None
    assert float(packed) == pytest.approx(one_by_one, rel=2e-2)


def test_per_example_sdpa_on_cuda_equals_examples_one_by_one(tiny_llama: Path) -> None:
    model = load(tiny_llama, "sdpa")
    enable_packed_attention(model)
    exs = examples()
    with torch.no_grad():
        one_by_one = sum(float(plain_loss(model, to_cuda(collate([e], 0)))) for e in exs)
        packed = model(**forward_kwargs(to_cuda(pack(exs)))).logits
    assert packed.shape[1] == sum(len(e["input_ids"]) for e in exs)
    got = lm_loss.summed_target_loss(model, to_cuda(pack(exs)))
    assert got is not None and float(got) == pytest.approx(one_by_one, rel=2e-2)


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is None, reason="needs liger-kernel")
def test_liger_fused_linear_cross_entropy_equals_full_logits(tiny_llama: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).cuda().eval()
    batch = to_cuda(collate(examples(), 0))
    fused = lm_loss.summed_target_loss(model, batch)
    assert fused is not None
    head = model.get_output_embeddings()
    picked = lm_loss.target_hidden(model, batch)
    assert picked is not None
    assert lm_loss._liger_loss(head, picked[0], picked[1]) is not None  # the fused path was taken
    fused.backward()
    fused_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    full = plain_loss(model, batch)
    full.backward()
    assert float(fused) == pytest.approx(float(full), rel=1e-4)
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(fused_grads[name], p.grad, rtol=1e-3, atol=1e-5, msg=name)
