"""Records → token examples for each task, with the causal-LM loss only on what the assistant says.

An example is a dict: `input_ids` (list[int]), and either `labels` (list[int], -100 where no loss) for
causal-lm or `label` (int class id / float target) for the heads. A preference record becomes a pair
`{"chosen": example, "rejected": example}` of two such causal-LM examples sharing one prompt. An example cut
to fit model.max_length says how in `truncated`: "text" (a text, or the text inside a classification prompt,
was cut as data.truncation says), "prompt" (a preference prompt was cut so both answers fit), "turns" (a
conversation ends after the last assistant turn that fits) or "answer" (not even the first answer fits, so it
is cut: the one case where the model learns a partial answer).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, overload

from tuneforge.data.chat import no_chat_template, to_messages
from tuneforge.errors import TuneforgeError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE = -100
Example = dict[str, Any]


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
        raise no_chat_template()
    spans = _assistant_spans(tok, messages)
    if spans is None:
        return _encode_chat_by_prefix_tokens(tok, messages, max_length)
    text, char_spans = spans
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    full = [int(i) for i in enc["input_ids"]]
    offsets = enc["offset_mapping"]
    labels = [IGNORE] * len(full)
    token_spans = []
    for lo, hi in char_spans:
        inside = [t for t, (a, b) in enumerate(offsets) if a < hi and b > lo]
        if any(offsets[t][0] < lo or offsets[t][1] > hi for t in inside):
            raise _not_extending()  # a token straddles the edge of the answer
        for t in inside:
            labels[t] = full[t]
        if inside:
            token_spans.append((inside[0], inside[-1] + 1))
    return _fit_turns(full, labels, token_spans, max_length)


def _fit_turns(full: list[int], labels: list[int], spans: list[tuple[int, int]], max_length: int) -> Example:
    """Cut an over-long conversation after the last assistant turn that ends within max_length.

    Only when not even the first answer fits is it cut inside the answer, and the example says so.
    """
    if len(full) <= max_length:
        return {"input_ids": full, "labels": labels}
    fits = [end for _, end in spans if end <= max_length]
    cut, how = (fits[-1], "turns") if fits else (max_length, "answer" if spans else "turns")
    return {"input_ids": full[:cut], "labels": labels[:cut], "truncated": how}


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
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tok, messages[:i], True)
        upto = _render(tok, messages[: i + 1], False)
        start, end = len(before), len(upto)
        if full[:start] != before or full[:end] != upto or start > end:
            raise _not_extending()
        labels[start:end] = full[start:end]
        if end > start:
            spans.append((start, end))
    return _fit_turns(full, labels, spans, max_length)


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


def _kept_counts(budget: int, truncation: str) -> tuple[int, int]:
    """(tokens kept from the start, tokens kept from the end) of a text cut to `budget` tokens.

    head-tail keeps a quarter of the budget from the start and the rest from the end: the split Sun et al.
    (2019, "How to Fine-Tune BERT for Text Classification") found best for long documents.
    """
    budget = max(budget, 0)
    if truncation == "tail":
        return 0, budget
    if truncation == "head-tail":
        return budget // 4, budget - budget // 4
    return budget, 0


def _cut_ids(ids: list[int], budget: int, truncation: str) -> list[int]:
    head, tail = _kept_counts(budget, truncation)
    return ids[:head] + (ids[len(ids) - tail :] if tail else [])


def encode_text(
    tok: PreTrainedTokenizerBase, text: str, max_length: int, truncation: str = "head"
) -> tuple[list[int], bool]:
    """A head task's input: the text with the tokenizer's special tokens, cut to max_length; (ids, cut?).

    transformers truncates only from one side, so head-tail is done here: the special tokens the tokenizer
    adds around the text ([CLS] ... [SEP], BOS ...) stay, and the text's own tokens are cut in between.
    """
    ids = [int(i) for i in tok(text)["input_ids"]]
    if len(ids) <= max_length:
        return ids, False
    content = [int(i) for i in tok(text, add_special_tokens=False)["input_ids"]]
    n = len(content)
    start = next((p for p in range(len(ids) - n + 1) if ids[p : p + n] == content), None)
    if start is None:  # the tokenizer does more than wrap the text: let it truncate its own way
        return [int(i) for i in tok(text, truncation=True, max_length=max_length)["input_ids"]], True
    special = len(ids) - n
    return ids[:start] + _cut_ids(content, max_length - special, truncation) + ids[start + n :], True


def _cut_text(tok: PreTrainedTokenizerBase, text: str, keep: int, truncation: str) -> str:
    """`text` cut to about `keep` of its tokens at token boundaries (head, tail, or head and tail)."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=bool(getattr(tok, "is_fast", False)))
    ids = list(enc["input_ids"])
    if keep >= len(ids):
        return text
    head, tail = _kept_counts(keep, truncation)
    if "offset_mapping" in enc:
        offsets = enc["offset_mapping"]
        left = text[: offsets[head - 1][1]] if head else ""
        right = text[offsets[len(ids) - tail][0] :] if tail else ""
    else:
        left = str(tok.decode(ids[:head])) if head else ""
        right = str(tok.decode(ids[len(ids) - tail :])) if tail else ""
    joined = not left or not right or left[-1].isspace() or right[0].isspace()
    return left + right if joined else f"{left} {right}"


def _cut_to_fit(
    tok: PreTrainedTokenizerBase,
    text: str,
    build: Callable[[str, int], list[Example]],
    max_length: int,
    truncation: str,
) -> tuple[list[Example], str | None]:
    """`build(text, limit)`'s examples, `text` cut (as `truncation` says) until the longest fits max_length.

    Returns the examples and None (they fit as they are), "cut" (the text was cut) or "empty" (nothing of
    the text fits: built from an empty text with limit=max_length, so what is still too long is cut by
    `build` itself). Re-tokenizing a cut text can merge tokens differently at the cut, so the cut is repeated
    with the remaining overflow until it fits.
    """
    unlimited = 2**62
    examples = build(text, unlimited)
    over = max(len(e["input_ids"]) for e in examples) - max_length
    if over <= 0:
        return examples, None
    keep = len(tok(text, add_special_tokens=False)["input_ids"]) - over
    for _ in range(8):
        if keep <= 0:
            break
        examples = build(_cut_text(tok, text, keep, truncation), unlimited)
        over = max(len(e["input_ids"]) for e in examples) - max_length
        if over <= 0:
            return examples, "cut"
        keep -= over
    return build("", max_length), "empty"


def encode_classification_prompt(
    tok: PreTrainedTokenizerBase,
    text: str,
    label: str,
    *,
    labels: list[str],
    template: str,
    max_length: int,
    truncation: str = "head",
    shots: Sequence[dict[str, str]] = (),
) -> Example:
    """A classification record as a prompt and its label for a causal LM, fitted into max_length.

    What is cut is the text inside the prompt (as `truncation` says), never the template or the answer.
    `shots`: example exchanges put before the question (few-shot prompting); only the question's own answer
    is a target, never theirs.
    """

    def build(t: str, limit: int) -> list[Example]:
        messages = [*shots, *to_messages({"text": t, "label": label}, labels, template)]
        return [only_last_answer(encode_chat(tok, messages, limit))]

    [example], how = _cut_to_fit(tok, text, build, max_length, truncation)
    if how is None or "truncated" in example:  # "truncated" here: not even the answer fits, and is cut
        return example
    return {**example, "truncated": "text"}


def only_last_answer(example: Example) -> Example:
    """The example with targets on its last assistant turn only (a few-shot prompt's examples are context)."""
    labels = example["labels"]
    end = next((t + 1 for t in range(len(labels) - 1, -1, -1) if labels[t] != IGNORE), 0)
    start = next((t + 1 for t in range(end - 1, -1, -1) if labels[t] == IGNORE), 0)
    return {**example, "labels": [IGNORE] * start + labels[start:]}


def encode_preference(
    tok: PreTrainedTokenizerBase,
    prompt: str,
    chosen: str,
    rejected: str,
    *,
    max_length: int,
    truncation: str = "head",
) -> Example:
    """A preference record as two conversations (prompt + chosen, prompt + rejected) fitted into max_length.

    Each is encoded as chat SFT is (the chat template; labels on the answer and its end of turn only), so
    DPO scores exactly the tokens SFT would teach. The prompt is cut first (as `truncation` says), the same
    cut for both so they share one prompt, until the longer answer fits; only when no prompt leaves room is
    an answer itself cut.
    """

    def build(p: str, limit: int) -> list[Example]:
        return [
            encode_chat(tok, [{"role": "user", "content": p}, {"role": "assistant", "content": a}], limit)
            for a in (chosen, rejected)
        ]

    (good, bad), how = _cut_to_fit(tok, prompt, build, max_length, truncation)
    pair: Example = {"chosen": good, "rejected": bad}
    if "truncated" in good or "truncated" in bad:
        pair["truncated"] = "answer"
    elif how is not None:
        pair["truncated"] = "prompt"
    return pair


def encoder(
    tok: PreTrainedTokenizerBase,
    *,
    task: str,
    fmt: str,
    labels: list[str],
    max_length: int,
    template: str,
    truncation: str = "head",
) -> Callable[[dict[str, Any]], Example]:
    """The function that encodes one supervised record (every task and format except packed text).

    `truncation` (data.truncation): which part of an over-long text is kept: head, tail or head-tail.
    """

    def encode(r: dict[str, Any]) -> Example:
        if task == "causal-lm":
            if fmt == "text":
                return documents([r["text"]], tok, max_length)[0]
            if fmt == "classification":
                return encode_classification_prompt(
                    tok,
                    r["text"],
                    str(r["label"]),
                    labels=labels,
                    template=template,
                    max_length=max_length,
                    truncation=truncation,
                )
            if fmt == "preference":
                return encode_preference(
                    tok,
                    r["prompt"],
                    r["chosen"],
                    r["rejected"],
                    max_length=max_length,
                    truncation=truncation,
                )
            return encode_chat(tok, to_messages(r, labels, template), max_length)
        ids, cut = encode_text(tok, r["text"], max_length, truncation)
        label = labels.index(str(r["label"])) if task == "classification" else float(r["label"])
        return {"input_ids": ids, "label": label, **({"truncated": "text"} if cut else {})}

    return encode


def has_targets(example: Example) -> bool:
    """False for a causal-LM example whose every label is masked (nothing to learn from it).

    A preference pair needs targets on both sides: DPO compares the two answers.
    """
    if "chosen" in example:
        return has_targets(example["chosen"]) and has_targets(example["rejected"])
    return "labels" not in example or any(x != IGNORE for x in example["labels"])


def example_length(example: Example) -> int:
    """Tokens of an example (a preference pair: its longer side, the width it pads a batch to)."""
    if "chosen" in example:
        return max(len(example["chosen"]["input_ids"]), len(example["rejected"]["input_ids"]))
    return len(example["input_ids"])


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
    truncation: str = "head",
) -> tuple[list[Example], int]:
    """Encode a split; returns the examples and how many had nothing to learn (all masked) and were dropped.

    `packing` (text format only): pack documents into full blocks, or keep one example per document.
    """
    if task == "causal-lm" and fmt == "text" and packing:
        return pack_text([r["text"] for r in records], tok, max_length), 0
    encode = encoder(
        tok,
        task=task,
        fmt=fmt,
        labels=labels,
        max_length=max_length,
        template=template,
        truncation=truncation,
    )
    examples = [encode(r) for r in records]
    kept = [e for e in examples if has_targets(e)]
    return kept, len(examples) - len(kept)


class LazyExamples(Sequence[Example]):
    """A split's examples, each encoded the first time a batch asks for it and then kept.

    A run touches only the examples its steps reach (a 1M-row dataset trained for 2,000 steps of 8 encodes
    16k), and each process of a multi-process run encodes only its own share. Examples with nothing to learn
    stay in place (they add no loss; their batch slot is wasted) and are counted in `no_targets`:
    `tuneforge prepare` already drops such rows, so they appear only when model.max_length is below the
    data.max_tokens the dataset was prepared with. `truncated` counts the examples met that were cut, by how.
    """

    def __init__(self, records: list[dict[str, Any]], encode: Callable[[dict[str, Any]], Example]) -> None:
        self.records = records
        self.encode = encode
        self.cache: dict[int, Example] = {}
        self.no_targets = 0
        self.truncated: Counter[str] = Counter()

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
            if "truncated" in example:
                self.truncated[example["truncated"]] += 1
        return example


def _document_ids(tok: PreTrainedTokenizerBase, text: str) -> list[int]:
    """A document's tokens followed by EOS, so the model learns where documents end."""
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    return ids + ([tok.eos_token_id] if tok.eos_token_id is not None else [])


def documents(texts: list[str], tok: PreTrainedTokenizerBase, max_length: int) -> list[Example]:
    """Continued pre-training without packing: one example per document, cut at max_length."""
    out = []
    for t in texts:
        ids = _document_ids(tok, t)
        cut = {"truncated": "text"} if len(ids) > max_length else {}
        out.append({"input_ids": ids[:max_length], "labels": ids[:max_length], **cut})
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
