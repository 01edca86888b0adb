"""Records → token examples for each task, with the causal-LM loss only on what the assistant says.

An example is a dict: `input_ids` (list[int]), and either `labels` (list[int], -100 where no loss) for
causal-lm or `label` (int class id / float target) for the heads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, overload

from tuneforge.data.records import prompt_and_answer
from tuneforge.errors import TuneforgeError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE = -100
Example = dict[str, Any]


def to_messages(record: dict[str, Any], labels: list[str], template: str) -> list[dict[str, str]]:
    """Any supervised record as a conversation (the shape a chat model learns from)."""
    if "messages" in record:
        return list(record["messages"])
    user, answer = prompt_and_answer(record, labels, template)
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def _render(
    tok: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation_prompt: bool
) -> list[int]:
    ids: Any = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
    if hasattr(ids, "keys"):  # newer transformers return a BatchEncoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def encode_chat(tok: PreTrainedTokenizerBase, messages: list[dict[str, str]], max_length: int) -> Example:
    """Tokenize a conversation with the chat template; loss on every assistant turn and nothing else.

    Assistant spans are found by rendering growing prefixes of the conversation: what rendering message i adds
    after the generation prompt of messages[:i] is what the assistant says, followed by the template's end of
    turn (for ChatML `<|im_end|>` and the newline after it). This works with any template whose renderings
    extend each other, which we check rather than assume.

    With a fast tokenizer the renderings are compared as strings and the conversation is tokenized once, the
    spans mapped to tokens through character offsets: about three times faster than tokenizing every prefix,
    which matters when a split has hundreds of thousands of conversations.
    """
    if not tok.chat_template:
        raise TuneforgeError(
            "the tokenizer has no chat template",
            where="model.chat_template",
            fix="set model.chat_template to a Jinja template or the name chatml",
        )
    spans = _assistant_spans(tok, messages)
    if spans is None:
        return _encode_chat_by_prefix_tokens(tok, messages, max_length)
    text, char_spans = spans
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    full = [int(i) for i in enc["input_ids"]]
    offsets = enc["offset_mapping"]
    labels = [IGNORE] * len(full)
    for lo, hi in char_spans:
        inside = [t for t, (a, b) in enumerate(offsets) if a < hi and b > lo]
        if any(offsets[t][0] < lo or offsets[t][1] > hi for t in inside):
            raise _not_extending()  # a token straddles the edge of the answer
        for t in inside:
            labels[t] = full[t]
    return {"input_ids": full[:max_length], "labels": labels[:max_length]}


def _assistant_spans(
    tok: PreTrainedTokenizerBase, messages: list[dict[str, str]]
) -> tuple[str, list[tuple[int, int]]] | None:
    """The rendered conversation and the character spans of its assistant turns (None: slow tokenizer)."""
    if not getattr(tok, "is_fast", False):
        return None
    full = _render_text(tok, messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render_text(tok, messages[:i], True)
        upto = _render_text(tok, messages[: i + 1], False)
        if not (full.startswith(upto) and upto.startswith(before)):
            raise _not_extending()
        spans.append((len(before), len(upto)))
    return full, spans


def _render_text(
    tok: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation_prompt: bool
) -> str:
    return str(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt))


def _encode_chat_by_prefix_tokens(
    tok: PreTrainedTokenizerBase, messages: list[dict[str, str]], max_length: int
) -> Example:
    """`encode_chat` for tokenizers without character offsets: tokenize every prefix and compare ids."""
    full = _render(tok, messages, False)
    labels = [IGNORE] * len(full)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tok, messages[:i], True)
        upto = _render(tok, messages[: i + 1], False)
        start, end = len(before), len(upto)
        if full[:start] != before or full[:end] != upto or start > end:
            raise _not_extending()
        labels[start:end] = full[start:end]
    return {"input_ids": full[:max_length], "labels": labels[:max_length]}


def _not_extending() -> TuneforgeError:
    return TuneforgeError(
        "the chat template renders a conversation differently from its own prefixes, "
        "so the assistant's tokens cannot be located",
        where="model.chat_template",
        fix="use a template whose renderings of growing conversations extend each other (e.g. chatml)",
    )


def encode_prompt(tok: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    """The tokens a model sees before it answers (for generation and label scoring)."""
    return _render(tok, messages, True)


def encoder(
    tok: PreTrainedTokenizerBase,
    *,
    task: str,
    fmt: str,
    labels: list[str],
    max_length: int,
    template: str,
) -> Callable[[dict[str, Any]], Example]:
    """The function that encodes one supervised record (every task and format except packed text)."""

    def encode(r: dict[str, Any]) -> Example:
        if task == "causal-lm":
            if fmt == "text":
                return documents([r["text"]], tok, max_length)[0]
            return encode_chat(tok, to_messages(r, labels, template), max_length)
        ids = list(tok(r["text"], truncation=True, max_length=max_length)["input_ids"])
        if task == "classification":
            return {"input_ids": ids, "label": labels.index(str(r["label"]))}
        return {"input_ids": ids, "label": float(r["label"])}

    return encode


def has_targets(example: Example) -> bool:
    """False for a causal-LM example whose every label is masked (nothing to learn from it)."""
    return "labels" not in example or any(x != IGNORE for x in example["labels"])


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
    if task == "causal-lm" and fmt == "text" and packing:
        return pack_text([r["text"] for r in records], tok, max_length), 0
    encode = encoder(tok, task=task, fmt=fmt, labels=labels, max_length=max_length, template=template)
    examples = [encode(r) for r in records]
    kept = [e for e in examples if has_targets(e)]
    return kept, len(examples) - len(kept)


class LazyExamples(Sequence[Example]):
    """A split's examples, each encoded the first time a batch asks for it and then kept.

    A run touches only the examples its steps reach (a 1M-row dataset trained for 2,000 steps of 8 encodes
    16k), and each process of a multi-process run encodes only its own share. Examples with nothing to learn
    stay in place (they add no loss; their batch slot is wasted) and are counted in `no_targets`:
    `tuneforge prepare` already drops such rows, so they appear only when the chat template pushes an answer
    past model.max_length.
    """

    def __init__(self, records: list[dict[str, Any]], encode: Callable[[dict[str, Any]], Example]) -> None:
        self.records = records
        self.encode = encode
        self.cache: dict[int, Example] = {}
        self.no_targets = 0

    def __len__(self) -> int:
        return len(self.records)

    @overload
    def __getitem__(self, i: int) -> Example: ...
    @overload
    def __getitem__(self, i: slice) -> list[Example]: ...
    def __getitem__(self, i: int | slice) -> Example | list[Example]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        example = self.cache.get(i)
        if example is None:
            example = self.cache[i] = self.encode(self.records[i])
            self.no_targets += not has_targets(example)
        return example


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
