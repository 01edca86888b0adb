"""Packed rows and target-only projection give the losses, gradients and log-probs of the plain forward."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tuneforge.models import lm_loss as lm_loss_module
from tuneforge.models.collate import collate, target_count, token_count
from tuneforge.models.encode import IGNORE
from tuneforge.models.lm_loss import decoder_and_head, summed_target_loss, target_logprobs
from tuneforge.models.packing import (
    PACKED_ATTENTION,
    cannot_pack,
    enable_packed_attention,
    forward_kwargs,
    pack,
)

LENGTHS = (5, 11, 3, 17, 8)


def examples(seed: int = 0) -> list[dict[str, Any]]:
    """Variable-length examples with targets on the second half of each (like a chat answer)."""
    rng = random.Random(seed)
    out = []
    for n in LENGTHS:
        ids = [rng.randrange(5, 300) for _ in range(n)]
        out.append({"input_ids": ids, "labels": [IGNORE] * (n // 2) + ids[n // 2 :]})
    return out


@pytest.fixture
def model(tiny_llama: Path) -> Any:
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tiny_llama)
    m.eval()  # no dropout: packed and unpacked rows draw different masks
    return m


def plain_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The textbook computation: every position's logits from the model's own forward, CE on targets."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    return F.cross_entropy(logits[:, :-1][labels != IGNORE], labels[labels != IGNORE], reduction="sum")


def grads(model: Any) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def test_pack_is_one_row_without_padding_and_with_restarting_positions() -> None:
    exs = examples()
    batch = pack(exs)
    assert batch["input_ids"].shape == (1, sum(LENGTHS))
    assert batch["cu_seq_lens_q"].tolist() == [0, 5, 16, 19, 36, 44]
    assert batch["position_ids"][0, 14:18].tolist() == [9, 10, 0, 1]  # example 2 starts at position 16
    # The first label of each example is masked: the end of one example never predicts the next one's start.
    assert batch["labels"][0, 16] == IGNORE
    padded = collate(exs, 0)
    assert target_count(batch) == target_count(padded) == sum(n - n // 2 for n in LENGTHS)
    assert token_count(batch) == token_count(padded) == sum(LENGTHS)
    assert forward_kwargs(batch)["use_cache"] is False and "attention_mask" not in forward_kwargs(batch)


def test_packed_row_gives_per_example_losses_and_gradients(model: Any) -> None:
    exs = examples()
    one_by_one, per_example_grads = [], []
    for e in exs:
        loss = plain_loss(model, collate([e], 0))
        loss.backward()
        one_by_one.append(float(loss.detach()))
        per_example_grads.append(grads(model))
    expected_grads = {n: sum(g[n] for g in per_example_grads) for n in per_example_grads[0]}

    enable_packed_attention(model)
    assert model.config._attn_implementation == PACKED_ATTENTION
    batch = pack(exs)
    logits = model(**forward_kwargs(batch)).logits[0, :-1]  # (N-1, V)
    labels = batch["labels"][0, 1:]
    token_losses = F.cross_entropy(logits, labels.clamp(min=0), reduction="none") * (labels != IGNORE)
    edges = batch["cu_seq_lens_q"].tolist()
    packed = [float(token_losses[a : b - 1].sum()) for a, b in itertools.pairwise(edges)]
    assert packed == pytest.approx(one_by_one, rel=1e-5)

    loss = summed_target_loss(model, batch)
    assert loss is not None
    loss.backward()
    got = grads(model)
    assert float(loss) == pytest.approx(sum(one_by_one), rel=1e-5)
    assert sorted(got) == sorted(expected_grads)
    for name, g in got.items():
        torch.testing.assert_close(g, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_attention_never_crosses_examples(model: Any) -> None:
    enable_packed_attention(model)
    exs = examples()
    changed = [dict(e) for e in exs]
    changed[1] = {**exs[1], "input_ids": [7] * len(exs[1]["input_ids"])}  # rewrite example 1 entirely
    with torch.no_grad():
        before = model(**forward_kwargs(pack(exs))).logits[0]
        after = model(**forward_kwargs(pack(changed))).logits[0]
    lo, hi = 5, 16  # example 1's positions
    assert not torch.allclose(before[lo:hi], after[lo:hi])
    torch.testing.assert_close(before[hi:], after[hi:], rtol=0, atol=1e-6)
    torch.testing.assert_close(before[:lo], after[:lo], rtol=0, atol=1e-6)


def test_per_example_attention_equals_transformers_block_diagonal_mask(model: Any) -> None:
    """transformers' own packed path (position ids, no mask, no cache) is exact too: both agree."""
    batch = pack(examples())
    with torch.no_grad():
        block_diagonal = model(**forward_kwargs(batch)).logits  # the model is still plain SDPA here
        enable_packed_attention(model)
        per_example = model(**forward_kwargs(batch)).logits
    torch.testing.assert_close(per_example, block_diagonal, rtol=1e-5, atol=1e-5)


def test_target_only_projection_equals_full_logits_on_target_positions(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = collate(examples(), 0)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    expected = (logp * (labels != IGNORE)).sum(-1)  # (B,)
    torch.testing.assert_close(target_logprobs(model, batch), expected, rtol=1e-5, atol=1e-5)

    full = plain_loss(model, batch)
    full.backward()
    expected_grads = grads(model)
    monkeypatch.setattr(lm_loss_module, "CHUNK", 4)  # several chunks, each recomputed in the backward pass
    chunked = summed_target_loss(model, batch)
    assert chunked is not None
    chunked.backward()
    assert float(chunked) == pytest.approx(float(full), rel=1e-6)
    for name, g in grads(model).items():
        torch.testing.assert_close(g, expected_grads[name], rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(target_logprobs(model, batch), expected, rtol=1e-5, atol=1e-5)


def test_lora_model_projects_through_its_own_layers(model: Any) -> None:
    """A LoRA-wrapped model (lm_head adapted too) scores through the adapted decoder and head."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        model, LoraConfig(r=4, target_modules=["q_proj", "lm_head"], init_lora_weights=False)
    )
    parts = decoder_and_head(peft_model)
    assert parts is not None and type(parts[1]).__name__ == "Linear" and hasattr(parts[1], "lora_A")
    batch = collate(examples(), 0)
    with torch.no_grad():
        logits = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(
        target_logprobs(peft_model, batch), (logp * (labels != IGNORE)).sum(-1), rtol=1e-5, atol=1e-5
    )


def test_packing_is_refused_where_it_would_not_be_exact(model: Any, tiny_bert: Path) -> None:
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

    assert cannot_pack(model, "causal-lm") is None
    assert cannot_pack(model, "classification") == "a classification head reads one position per row"
    prompt = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    assert cannot_pack(prompt, "causal-lm") == "prompt_tuning adds virtual tokens at the start of every row"
    assert decoder_and_head(prompt) is None  # prompt tuning also keeps the full forward for its loss
    prefix = get_peft_model(
        type(model).from_pretrained(model.name_or_path),
        PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2),
    )
    assert cannot_pack(prefix, "causal-lm") == "prefix_tuning adds virtual tokens at the start of every row"
    model.config._attn_implementation = "flex_attention"
    assert cannot_pack(model, "causal-lm") == (
        "attention implementation 'flex_attention' is not known to respect example boundaries"
    )
