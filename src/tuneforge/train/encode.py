"""Records → token examples for each task, with the causal-LM loss only on what the assistant says.

An example is a dict: `input_ids` (list[int]), and either `labels` (list[int], -100 where no loss) for causal-lm
or `label` (int class id / float target) for the heads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuneforge.errors import TuneforgeError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE = -100
Example = dict[str, Any]


def classification_prompt(text: str, labels: list[str], template: str) -> str:
    return template.format(text=text, labels=", ".join(labels))


def to_messages(record: dict[str, Any], labels: list[str], template: str) -> list[dict[str, str]]:
    """Any supervised record as a conversation (the shape a chat model learns from)."""
    if "messages" in record:
        return list(record["messages"])
    if "instruction" in record:
        user = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        return [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
    if "label" in record:
        prompt = classification_prompt(record["text"], labels, template)
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(record["label"])}]
    if "prompt" in record:
        return [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["chosen"]}]
    raise TuneforgeError("records of this dataset cannot be turned into a conversation", where="data.format")


def _render(tok: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # newer transformers return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def encode_chat(tok: PreTrainedTokenizerBase, messages: list[dict[str, str]], max_length: int) -> Example:
    """Tokenize a conversation with the chat template; loss on every assistant turn (and its end-of-turn token).

    Assistant spans are found by rendering growing prefixes of the conversation: the tokens that rendering
    message i adds after the generation prompt of messages[:i] are what the assistant says. This works with any
    template whose renderings extend each other, which we check rather than assume.
    """
    if not tok.chat_template:
        raise TuneforgeError(
            "the tokenizer has no chat template",
            where="model.chat_template",
            fix="set model.chat_template to a Jinja template or the name chatml",
        )
    full = _render(tok, messages, False)
    labels = [IGNORE] * len(full)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(_render(tok, messages[:i], True))
        prefix = _render(tok, messages[: i + 1], False)
        end = len(prefix)
        if full[:end] != prefix:
            raise TuneforgeError(
                "the chat template renders a conversation differently from its own prefixes, so the assistant's "
                "tokens cannot be located",
                where="model.chat_template",
                fix="use a template whose renderings of growing conversations extend each other (e.g. chatml)",
            )
        labels[start:end] = full[start:end]
    return {"input_ids": full[:max_length], "labels": labels[:max_length]}


def encode_prompt(tok: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    """The tokens a model sees before it answers (for generation and label scoring)."""
    return _render(tok, messages, True)


def encode_for_task(
    records: list[dict[str, Any]],
    tok: PreTrainedTokenizerBase,
    *,
    task: str,
    fmt: str,
    labels: list[str],
    max_length: int,
    template: str,
) -> tuple[list[Example], int]:
    """Encode a split; returns the examples and how many had nothing to learn (all masked) and were dropped."""
    examples: list[Example] = []
    empty = 0
    if task == "causal-lm" and fmt == "text":
        return pack_text([r["text"] for r in records], tok, max_length), 0
    for r in records:
        if task == "causal-lm":
            ex = encode_chat(tok, to_messages(r, labels, template), max_length)
            if all(x == IGNORE for x in ex["labels"]):
                empty += 1
                continue
        else:
            ids = tok(r["text"], truncation=True, max_length=max_length)["input_ids"]
            if task == "classification":
                ex = {"input_ids": list(ids), "label": labels.index(str(r["label"]))}
            else:
                ex = {"input_ids": list(ids), "label": float(r["label"])}
        examples.append(ex)
    return examples, empty


def pack_text(texts: list[str], tok: PreTrainedTokenizerBase, block: int) -> list[Example]:
    """Continued pre-training: concatenate documents (EOS between them) and cut into full blocks."""
    stream: list[int] = []
    eos = tok.eos_token_id
    for t in texts:
        stream.extend(tok(t, add_special_tokens=False)["input_ids"])
        if eos is not None:
            stream.append(eos)
    blocks = [stream[i : i + block] for i in range(0, len(stream) - block + 1, block)]
    if not blocks and stream:
        blocks = [stream]
    return [{"input_ids": b, "labels": list(b)} for b in blocks]
