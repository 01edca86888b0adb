"""A stand-in causal LM that answers a fixed list of tokens: for the outputs no random tiny model gives on
demand (an answer cut in the middle of an emoji's bytes)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch


class ScriptedLM(torch.nn.Module):
    """Whatever the prompt, the next token is the script's next one (one request at a time).

    The "KV cache" it hands back is the number of tokens answered so far, which is all `DecodeBatch` keeps
    between the forwards of a lone row. `prompt_learning=True` makes it look like a prompt-tuned PEFT model,
    answered through its `generate` as PEFT's would be.
    """

    def __init__(self, script: list[int], vocab_size: int, *, prompt_learning: bool = False) -> None:
        super().__init__()
        self.script, self.vocab_size = script, vocab_size
        # The engine reads the model's device off a parameter, and its context length off the config.
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(max_position_embeddings=64)
        if prompt_learning:
            self.active_peft_config = SimpleNamespace(is_prompt_learning=True)

    def forward(
        self, input_ids: torch.Tensor, past_key_values: int | None = None, **_: Any
    ) -> SimpleNamespace:
        answered = past_key_values or 0
        # Every other token impossible: sampling at any temperature picks the scripted one, as greedy does.
        logits = torch.full((*input_ids.shape, self.vocab_size), float("-inf"))  # (B, T, V)
        logits[:, :, self.script[answered]] = 0.0
        return SimpleNamespace(logits=logits, past_key_values=answered + 1)

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, **_: Any) -> torch.Tensor:
        answer = torch.tensor(self.script[:max_new_tokens]).expand(input_ids.shape[0], -1)  # (B, N)
        return torch.cat([input_ids, answer], dim=1)
