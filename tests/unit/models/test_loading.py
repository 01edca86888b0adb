"""Loading base models: dropout reaches the model when it is built; broken model folders give one error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tuneforge.config import ModelConfig
from tuneforge.models import load_model

LABELS = ["negative", "neutral", "positive"]


def _train_forward(model: Any, seed: int) -> torch.Tensor:
    model.train()
    torch.manual_seed(seed)
    ids = torch.arange(3, 19).reshape(2, 8)  # (B, T)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits  # type: ignore[no-any-return]


def test_dropout_reaches_llama_attention(tiny_llama: Path) -> None:
    # Llama has no nn.Dropout modules: its attention reads config.attention_dropout when it is built.
    plain = load_model(ModelConfig(name=str(tiny_llama)))
    assert torch.equal(_train_forward(plain, 0), _train_forward(plain, 1))  # no dropout by default
    dropped = load_model(ModelConfig(name=str(tiny_llama), dropout=0.5))
    assert dropped.config.attention_dropout == 0.5
    assert not torch.allclose(_train_forward(dropped, 0), _train_forward(dropped, 1))
    dropped.eval()
    with torch.no_grad():
        ids = torch.arange(3, 19).reshape(2, 8)
        assert torch.equal(plain.eval()(input_ids=ids).logits, dropped(input_ids=ids).logits)


@pytest.mark.parametrize("p", [0.0, 0.4])
def test_dropout_reaches_bert(tiny_bert: Path, p: float) -> None:
    model = load_model(ModelConfig(name=str(tiny_bert), task="classification", dropout=p), labels=LABELS)
    assert model.config.hidden_dropout_prob == p
    assert model.config.attention_probs_dropout_prob == p
    same = torch.equal(_train_forward(model, 0), _train_forward(model, 1))
    assert same is (p == 0.0)  # BERT's own default (0.1) would make the two forwards differ
