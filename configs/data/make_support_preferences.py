"""Writes support-preferences.jsonl: prompt / chosen / rejected pairs for configs/chat-dpo.yaml.

The prompts and chosen answers are the first turn of support-chat.jsonl's conversations; each rejected answer
is a vague one that names no next step, the behaviour the support assistant should unlearn. Deterministic, so
the committed file is exactly what this script writes:
    python configs/data/make_support_preferences.py
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

VAGUE = [
    "Please check our website.",
    "I cannot help with that.",
    "That sometimes happens. Contact us if it continues.",
    "Try again later.",
    "Have a look at the FAQ.",
]


def _conversations() -> list[dict[str, object]]:
    spec = importlib.util.spec_from_file_location(
        "make_support_chat", Path(__file__).with_name("make_support_chat.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.conversations())


def pairs() -> list[dict[str, str]]:
    rows = []
    for i, conversation in enumerate(_conversations()):
        messages: list[dict[str, str]] = conversation["messages"]  # type: ignore[assignment]
        rows.append(
            {
                "prompt": messages[1]["content"],
                "chosen": messages[2]["content"],
                "rejected": VAGUE[i % len(VAGUE)],
            }
        )
    return rows


if __name__ == "__main__":
    out = Path(__file__).with_name("support-preferences.jsonl")
    out.write_text("".join(json.dumps(r) + "\n" for r in pairs()), encoding="utf-8")
