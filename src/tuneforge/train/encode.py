"""Records → token examples for each task, with the causal-LM loss only on what the assistant says.

An example is a dict: `input_ids` (list[int]), and either `labels` (list[int], -100 where no loss) for
causal-lm or `label` (int class id / float target) for the heads.
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
        return [
            {"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["chosen"]},
        ]
    raise TuneforgeError("records of this dataset cannot be turned into a conversation", where="data.format")


def _render(
    tok: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation_prompt: bool
) -> list[int]:
    ids: Any = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
    if hasattr(ids, "keys"):  # newer transformers return a BatchEncoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def encode_chat(tok: PreTrainedTokenizerBase, messages: list[dict[str, str]], max_length: int) -> Example:
    """Tokenize a conversation with the chat template; loss on every assistant turn and nothing else.

    Assistant spans are found by rendering growing prefixes of the conversation: the tokens that rendering
    message i adds after the generation prompt of messages[:i] are what the assistant says, followed by the
    template's end of turn (for ChatML `<|im_end|>` and the newline after it). This works with any template
    whose renderings extend each other, which we check rather than assume.
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
        before = _render(tok, messages[:i], True)
        upto = _render(tok, messages[: i + 1], False)
        start, end = len(before), len(upto)
        if full[:start] != before or full[:end] != upto or start > end:
            raise TuneforgeError(
                "the chat template renders a conversation differently from its own prefixes, "
                "so the assistant's tokens cannot be located",
                where="model.chat_template",
                fix="use a template whose renderings of growing conversations extend each other "
                "(e.g. chatml)",
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
    packing: bool = True,
) -> tuple[list[Example], int]:
    """Encode a split; returns the examples and how many had nothing to learn (all masked) and were dropped.

    `packing` (text format only): pack documents into full blocks, or keep one example per document.
    """
    examples: list[Example] = []
    empty = 0
    if task == "causal-lm" and fmt == "text":
        texts = [r["text"] for r in records]
        return (pack_text(texts, tok, max_length) if packing else documents(texts, tok, max_length)), 0
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


def _document_ids(tok: PreTrainedTokenizerBase, text: str) -> list[int]:
    """A document's tokens followed by EOS, so the model learns where documents end."""
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    return ids + ([tok.eos_token_id] if tok.eos_token_id is not None else [])


def documents(texts: list[str], tok: PreTrainedTokenizerBase, max_length: int) -> list[Example]:
    """Continued pre-training without packing: one example per document, cut at max_length."""
    out = []
    for t in texts:
        ids = _document_ids(tok, t)[:max_length]
        out.append({"input_ids": ids, "labels": list(ids)})
    return out


def pack_text(texts: list[str], tok: PreTrainedTokenizerBase, block: int) -> list[Example]:
    """Continued pre-training: concatenate documents (EOS after each), cut into full blocks of `block` tokens.

    The tail that does not fill a block is dropped (it would be the only padded example); a corpus shorter
    than one block becomes a single short example.
    """
    stream = [i for t in texts for i in _document_ids(tok, t)]
    blocks = [stream[i : i + block] for i in range(0, len(stream) - block + 1, block)]
    if not blocks and stream:
        blocks = [stream]
    return [{"input_ids": b, "labels": list(b)} for b in blocks]
