"""Records → token examples: the assistant-only loss mask token by token, chat templates, packing, heads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.tiny import TOKENIZER
from tuneforge.config import ModelConfig
from tuneforge.errors import TuneforgeError
from tuneforge.models import load_tokenizer
from tuneforge.models.collate import input_positions
from tuneforge.models.encode import IGNORE, encode_chat, encode_for_task, pack_text

X = IGNORE
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hello"},
    {"role": "assistant", "content": "good"},
    {"role": "user", "content": "how are you?"},
    {"role": "assistant", "content": "fine"},
]


@pytest.fixture(scope="module")
def tok():  # type: ignore[no-untyped-def]
    return load_tokenizer(ModelConfig(name=str(TOKENIZER)))


@pytest.fixture
def bare_tokenizer(tmp_path: Path) -> Path:
    """The tiny tokenizer without its chat template."""
    out = shutil.copytree(TOKENIZER, tmp_path / "bare")
    (out / "chat_template.jinja").unlink()
    return out


def test_multi_turn_loss_mask_token_by_token(tok) -> None:  # type: ignore[no-untyped-def]
    ex = encode_chat(tok, CONVERSATION, max_length=256)
    rows = [(tok.decode([i]), label) for i, label in zip(ex["input_ids"], ex["labels"], strict=True)]
    # Token pieces of the tiny BPE (tests/assets/make_tiny_tokenizer.py); the label is the token id where the
    # model is taught (both assistant answers + their end of turn), IGNORE everywhere else.
    s, e, nl = "<|im_start|>", "<|im_end|>", "\n"
    assert rows == [
        (s, X), ("s", X), ("yst", X), ("em", X), (nl, X), ("B", X), ("e", X), (" b", X), ("r", X), ("i", X),
        ("e", X), ("f", X), (".", X), (e, X), (nl, X),
        (s, X), ("user", X), (nl, X), ("he", X), ("ll", X), ("o", X), (e, X), (nl, X),
        (s, X), ("as", X), ("s", X), ("is", X), ("tan", X), ("t", X), (nl, X),
        ("g", 74), ("ood", 301), (e, 2), (nl, 202),
        (s, X), ("user", X), (nl, X), ("ho", X), ("w", X), (" a", X), ("re", X), (" ", X), ("you", X),
        ("?", X), (e, X), (nl, X),
        (s, X), ("as", X), ("s", X), ("is", X), ("tan", X), ("t", X), (nl, X),
        ("f", 73), ("ine", 347), (e, 2), (nl, 202),
    ]  # fmt: skip
    taught = [i for i, label in zip(ex["input_ids"], ex["labels"], strict=True) if label != IGNORE]
    assert [label for label in ex["labels"] if label != IGNORE] == taught


def test_truncation_keeps_the_mask_aligned(tok) -> None:  # type: ignore[no-untyped-def]
    full = encode_chat(tok, CONVERSATION, max_length=256)
    cut = encode_chat(tok, CONVERSATION, max_length=33)
    assert cut["input_ids"] == full["input_ids"][:33]
    assert cut["labels"] == full["labels"][:33]
    assert cut["labels"][-3:] == [74, 301, 2]


def test_named_chat_template_for_a_tokenizer_without_one(bare_tokenizer: Path, tok) -> None:  # type: ignore[no-untyped-def]
    bare = load_tokenizer(ModelConfig(name=str(bare_tokenizer)))
    assert not bare.chat_template
    with pytest.raises(TuneforgeError) as err:
        encode_chat(bare, CONVERSATION, 256)
    assert str(err.value) == (
        "model.chat_template: the tokenizer has no chat template\n"
        "  fix: set model.chat_template to a Jinja template or the name chatml"
    )
    named = load_tokenizer(ModelConfig(name=str(bare_tokenizer), chat_template="chatml"))
    assert encode_chat(named, CONVERSATION, 256) == encode_chat(tok, CONVERSATION, 256)


def test_custom_jinja_template(bare_tokenizer: Path) -> None:
    template = (
        "{% for m in messages %}{{ m['role'] }}:\n{{ m['content'] }}<|im_end|>{% endfor %}"
        "{% if add_generation_prompt %}assistant:\n{% endif %}"
    )
    custom = load_tokenizer(ModelConfig(name=str(bare_tokenizer), chat_template=template))
    ex = encode_chat(
        custom, [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "good"}], 64
    )
    taught = [i for i, label in zip(ex["input_ids"], ex["labels"], strict=True) if label != IGNORE]
    assert custom.decode(taught) == "good<|im_end|>"


@pytest.mark.parametrize(
    "template",
    [
        # The last message renders differently from the same message followed by others.
        "{% for m in messages %}{{ m['content'] }}"
        "{% if loop.last %}<|im_end|>{% else %} | {% endif %}{% endfor %}"
        "{% if add_generation_prompt %}=> {% endif %}",
        # The generation prompt ends in a space that BPE merges into the answer's first token (" good"), so
        # the prompt's tokens are not a prefix of the conversation's: the answer's start cannot be found.
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|im_end|>{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}",
    ],
    ids=["last-message-differs", "prompt-merges-into-answer"],
)
def test_template_whose_renderings_do_not_extend_each_other_is_refused(
    bare_tokenizer: Path, template: str
) -> None:
    odd = load_tokenizer(ModelConfig(name=str(bare_tokenizer), chat_template=template))
    with pytest.raises(TuneforgeError, match="renders a conversation differently from its own prefixes"):
        encode_chat(odd, CONVERSATION[1:3], 64)


def _encode(tok, records, task: str, fmt: str, max_length: int = 64, **kw):  # type: ignore[no-untyped-def]
    return encode_for_task(
        records,
        tok,
        task=task,
        fmt=fmt,
        labels=["neg", "pos"],
        max_length=max_length,
        template="{text}",
        **kw,
    )


def test_text_is_packed_into_full_blocks_with_eos_between_documents(tok) -> None:  # type: ignore[no-untyped-def]
    docs = ["hello world", "the quick brown fox", "good"]
    ids = [tok(d, add_special_tokens=False)["input_ids"] for d in docs]
    stream = ids[0] + [2] + ids[1] + [2] + ids[2] + [2]
    assert len(stream) == 21
    examples, dropped = _encode(tok, [{"text": d} for d in docs], "causal-lm", "text", max_length=8)
    assert dropped == 0
    # 21 tokens → two full blocks of 8; the 5-token tail is dropped rather than padded.
    assert [e["input_ids"] for e in examples] == [stream[:8], stream[8:16]]
    assert all(e["labels"] == e["input_ids"] for e in examples)
    assert pack_text(docs, tok, 64) == [{"input_ids": stream, "labels": stream}]  # shorter than one block


def test_text_without_packing_is_one_example_per_document(tok) -> None:  # type: ignore[no-untyped-def]
    docs = ["hello world", "the quick brown fox"]
    examples, _ = _encode(tok, [{"text": d} for d in docs], "causal-lm", "text", max_length=7, packing=False)
    first = tok(docs[0], add_special_tokens=False)["input_ids"] + [2]
    second = tok(docs[1], add_special_tokens=False)["input_ids"][:7]  # cut before its EOS
    assert [e["input_ids"] for e in examples] == [first, second]


def test_head_tasks_encode_text_and_label(tok) -> None:  # type: ignore[no-untyped-def]
    cls, _ = _encode(
        tok,
        [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}],
        "classification",
        "classification",
    )
    assert cls == [{"input_ids": [74, 301], "label": 1}, {"input_ids": tok("bad")["input_ids"], "label": 0}]
    reg, _ = _encode(tok, [{"text": "good", "label": 2.5}], "regression", "regression")
    assert reg == [{"input_ids": [74, 301], "label": 2.5}]


def test_classification_records_become_a_conversation_for_causal_lm(tok) -> None:  # type: ignore[no-untyped-def]
    examples, dropped = _encode(tok, [{"text": "good", "label": "pos"}], "causal-lm", "classification")
    assert dropped == 0
    taught = [
        i for i, label in zip(examples[0]["input_ids"], examples[0]["labels"], strict=True) if label != X
    ]
    assert tok.decode(taught) == "pos<|im_end|>\n"


def test_examples_whose_answer_is_cut_off_are_counted_and_dropped(tok) -> None:  # type: ignore[no-untyped-def]
    records = [
        {"instruction": "hello " * 20, "input": "", "output": "good"},
        {"instruction": "hi", "output": "ok"},
    ]
    examples, dropped = _encode(tok, records, "causal-lm", "instruction", max_length=20)
    assert (len(examples), dropped) == (1, 1)


def test_input_positions_drops_virtual_token_logits() -> None:
    ids = torch.zeros((2, 3), dtype=torch.long)
    logits = torch.arange(2 * 5 * 4, dtype=torch.float32).reshape(2, 5, 4)  # 2 virtual + 3 real positions
    assert torch.equal(input_positions(logits, ids), logits[:, 2:])
    assert input_positions(logits[:, 2:], ids).shape == (2, 3, 4)


def test_offset_path_equals_tokenizing_every_prefix(tok) -> None:  # type: ignore[no-untyped-def]
    from tuneforge.models.encode import _encode_chat_by_prefix_tokens

    conversations = [
        CONVERSATION,
        CONVERSATION[1:3],
        [{"role": "user", "content": "a  b\n\nc"}, {"role": "assistant", "content": " spaced  answer \n"}],
    ]
    for messages in conversations:
        for max_length in (256, 20):
            fast = encode_chat(tok, messages, max_length)
            assert fast == _encode_chat_by_prefix_tokens(tok, messages, max_length)
            assert max_length == 20 or any(label != IGNORE for label in fast["labels"])


def test_lazy_examples_encode_on_first_use_and_count_cut_off_answers(tok) -> None:  # type: ignore[no-untyped-def]
    from tuneforge.models.encode import LazyExamples, encoder

    records = [
        {"instruction": "hi", "output": "ok"},
        {"instruction": "hello " * 20, "input": "", "output": "good"},  # answer beyond max_length
        {"instruction": "yo", "output": "fine"},
    ]
    calls: list[str] = []
    encode = encoder(tok, task="causal-lm", fmt="instruction", labels=[], max_length=20, template="")

    def counting(record):  # type: ignore[no-untyped-def]
        calls.append(record["instruction"])
        return encode(record)

    lazy = LazyExamples(records, counting)
    assert len(lazy) == 3 and calls == []
    assert lazy[2] == encode(records[2]) and calls == ["yo"]
    assert lazy[2] is lazy[2] and calls == ["yo"]  # kept, not encoded again
    assert lazy.no_targets == 0
    lazy[1]
    assert lazy.no_targets == 1
    eager, dropped = _encode(tok, records, "causal-lm", "instruction", max_length=20)
    assert dropped == 1 and eager == [lazy[0], lazy[2]]


def test_a_conversation_too_long_ends_after_the_last_answer_that_fits(tok) -> None:  # type: ignore[no-untyped-def]
    full = encode_chat(tok, CONVERSATION, max_length=256)
    first_answer_end = 34  # "... good<|im_end|>\n" (see the token table above)
    for max_length in (34, 40, len(full["input_ids"]) - 1):
        cut = encode_chat(tok, CONVERSATION, max_length)
        assert cut["input_ids"] == full["input_ids"][:first_answer_end]
        assert cut["labels"] == full["labels"][:first_answer_end] and cut["truncated"] == "turns"
    assert "truncated" not in full
    assert encode_chat(tok, CONVERSATION, 33)["truncated"] == "answer"  # not even the first answer fits


def test_head_task_truncation_keeps_the_special_tokens_and_head_tail_keeps_both_ends(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, processors

    from tuneforge.models.encode import encode_text

    folder = shutil.copytree(TOKENIZER, tmp_path / "wrapped")
    rust = Tokenizer.from_file(str(folder / "tokenizer.json"))
    rust.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A <|im_end|>", special_tokens=[("<|im_start|>", 1), ("<|im_end|>", 2)]
    )
    rust.save(str(folder / "tokenizer.json"))
    wrapped = load_tokenizer(ModelConfig(name=str(folder)))
    text = "the quick brown fox jumps over the lazy dog 0123456789 and the service was terrible"
    content = wrapped(text, add_special_tokens=False)["input_ids"]
    assert len(content) > 20
    head, cut = encode_text(wrapped, text, 18, "head")
    assert cut and head == wrapped(text, truncation=True, max_length=18)["input_ids"]  # as transformers cuts
    both, _ = encode_text(wrapped, text, 18, "head-tail")
    assert both == [1, *content[:4], *content[-12:], 2]  # a quarter of the 16-token budget from the start
    tail, _ = encode_text(wrapped, text, 18, "tail")
    assert tail == [1, *content[-16:], 2]
    assert encode_text(wrapped, "good", 18, "head-tail") == (wrapped("good")["input_ids"], False)


@pytest.mark.parametrize("truncation", ["head", "head-tail"])
def test_a_long_classification_prompt_loses_text_never_the_answer(tok, truncation: str) -> None:  # type: ignore[no-untyped-def]
    from tuneforge.models.encode import encoder

    template = "Classify: {labels}.\nText: {text}\nAnswer."
    words = [f"w{k}" for k in range(40)]
    record = {"text": " ".join(words), "label": "pos"}
    encode = encoder(
        tok, task="causal-lm", fmt="classification", labels=["neg", "pos"], max_length=48, template=template,
        truncation=truncation,
    )  # fmt: skip
    ex = encode(record)
    assert len(ex["input_ids"]) <= 48 and ex["truncated"] == "text"
    answer = [i for i, label in zip(ex["input_ids"], ex["labels"], strict=True) if label != IGNORE]
    assert tok.decode(answer) == "pos<|im_end|>\n"
    prompt = tok.decode(ex["input_ids"])
    assert "Classify: neg, pos.\nText: w0 w" in prompt and "\nAnswer.<|im_end|>" in prompt
    assert "  " not in prompt
    assert ("w39\nAnswer." in prompt) == (truncation == "head-tail")
    roomy = encoder(tok, task="causal-lm", fmt="classification", labels=["neg", "pos"], max_length=256,
                    template=template)(record)  # fmt: skip
    assert "truncated" not in roomy and len(roomy["input_ids"]) > 48


def test_lazy_examples_count_what_was_cut_and_how(tok) -> None:  # type: ignore[no-untyped-def]
    from tuneforge.models.encode import LazyExamples, encoder

    records = [{"messages": CONVERSATION}, {"messages": CONVERSATION[1:3]}, {"messages": CONVERSATION}]
    lazy = LazyExamples(
        records, encoder(tok, task="causal-lm", fmt="chat", labels=[], max_length=40, template="")
    )
    lazy[0:3]
    lazy[0]  # met again: counted once
    assert lazy.truncated == {"turns": 2}
