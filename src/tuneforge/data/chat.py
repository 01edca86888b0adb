"""Records as the conversation a chat model learns from, and where a tokenizer keeps its chat template.

The data stage measures and cuts conversations as the model will see them, and the model stage encodes them;
both take the messages and the named templates from here, so the two can never disagree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneforge.data.records import prompt_and_answer
from tuneforge.errors import TuneforgeError

CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
NAMED_TEMPLATES = {"chatml": CHATML}
# The named special tokens transformers passes to a chat template (`special_tokens_map`).
SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


def to_messages(record: dict[str, Any], labels: list[str], template: str) -> list[dict[str, str]]:
    """Any supervised record as a conversation (the shape a chat model learns from)."""
    if "messages" in record:
        return list(record["messages"])
    user, answer = prompt_and_answer(record, labels, template)
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def assistant_ends(messages: list[dict[str, str]]) -> list[int]:
    """Every k whose prefix messages[:k] ends with an assistant turn (where a conversation may end)."""
    return [i + 1 for i, m in enumerate(messages) if m["role"] == "assistant"]


def template_of(chat_template: str | None) -> str | None:
    """model.chat_template resolved: a named template's Jinja source, or the value itself."""
    return NAMED_TEMPLATES.get(chat_template, chat_template) if chat_template else None


def folder_chat_template(folder: Path) -> str | None:
    """The chat template a tokenizer folder ships, looked up where transformers saves it."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = _read_json(folder / "tokenizer_config.json")
    value = config.get("chat_template") or _read_json(folder / "chat_template.json").get("chat_template")
    if isinstance(value, list):  # several named templates: the default one is what a plain call uses
        value = next((t.get("template") for t in value if t.get("name") == "default"), None)
    return value if isinstance(value, str) else None


def folder_special_tokens(folder: Path) -> dict[str, str]:
    """The named special tokens of a tokenizer folder, as a chat template sees them."""
    found: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        config = _read_json(folder / name)
        for key in SPECIAL_TOKEN_NAMES:
            value = config.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                found[key] = value
    if "pad_token" not in found and (found.get("eos_token") or found.get("unk_token")):
        # The model stage pads with EOS (or UNK) when a tokenizer has no pad token.
        found["pad_token"] = found.get("eos_token") or found["unk_token"]
    return found


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # the tokenizer load reports a broken folder; here it only means "no template found"
    return value if isinstance(value, dict) else {}


def no_chat_template() -> TuneforgeError:
    return TuneforgeError(
        "the tokenizer has no chat template",
        where="model.chat_template",
        fix="set model.chat_template to a Jinja template or the name chatml",
    )
