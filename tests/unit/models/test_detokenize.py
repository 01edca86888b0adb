"""What of a growing answer's text is settled: an unfinished last character is not, any other U+FFFD is."""

from __future__ import annotations

import pytest

from tests.tiny import TOKENIZER
from tuneforge.models.detokenize import Detokenizer


@pytest.fixture(scope="module")
def tiny() -> Detokenizer:
    from transformers import AutoTokenizer

    return Detokenizer(AutoTokenizer.from_pretrained(TOKENIZER))


def _settled(detok: Detokenizer, ids: list[int]) -> str:
    return detok.settled(ids, detok.decode(ids))


def test_an_emoji_shows_only_once_its_last_byte_is_there(tiny: Detokenizer) -> None:
    ids = list(tiny.tokenizer("ok 🙂")["input_ids"])  # the tiny byte-level BPE: one token per byte of 🙂
    assert len(ids) == 7 and tiny.decode(ids[:5]) == "ok \ufffd"
    assert [_settled(tiny, ids[:n]) for n in range(3, 8)] == ["ok ", "ok ", "ok ", "ok ", "ok 🙂"]


def test_a_whole_replacement_character_and_an_invalid_byte_stay(tiny: Detokenizer) -> None:
    whole = list(tiny.tokenizer("a\ufffd")["input_ids"])  # U+FFFD's own three bytes: the model wrote it
    stray = [68, tiny.tokenizer.convert_tokens_to_ids("¦")]  # "a" then 0xA6, a byte no character starts with
    dangling = list(tiny.tokenizer("🙂A🙂")["input_ids"])  # 🙂 whole, A, then 🙂 cut after its lead byte
    assert _settled(tiny, whole) == "a\ufffd"
    assert _settled(tiny, stray) == "a\ufffd"
    assert _settled(tiny, dangling[:6]) == "🙂A"
    assert _settled(tiny, [*dangling[:5], dangling[0], *dangling[5:7]]) == "🙂A\ufffd"  # 0xF0 0xF0 0x9F


def test_special_tokens_between_the_bytes_are_skipped_as_decode_skips_them(tiny: Detokenizer) -> None:
    ids = list(tiny.tokenizer("ok 🙂")["input_ids"])
    eos = tiny.tokenizer.eos_token_id
    assert _settled(tiny, [*ids[:4], eos, eos, eos, eos, ids[4]]) == "ok "


def test_without_a_byte_level_vocabulary_every_trailing_replacement_waits() -> None:
    """SentencePiece's byte fallback spells bytes <0xNN> and decodes an invalid run as one U+FFFD per byte."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "a": 1, **{f"<0x{b:02X}>": 2 + b for b in range(256)}}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    backend.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    detok = Detokenizer(PreTrainedTokenizerFast(tokenizer_object=backend))
    smile = [2 + b for b in "🙂".encode()]
    assert detok.byte_of is None and detok.decode([1, *smile[:2]]) == "a\ufffd\ufffd"
    assert _settled(detok, [1, *smile[:2]]) == "a"
    assert _settled(detok, [1, *smile]) == "a🙂"


@pytest.mark.slow
def test_smollm2_half_an_emoji_is_held_back() -> None:
    """The built-in's vocabulary has " 🙂" whole, and its two halves: an answer may stop between them."""
    from transformers import AutoTokenizer

    from tuneforge import builtin

    tok = AutoTokenizer.from_pretrained(builtin.resolve("builtin:smollm2-135m-instruct"))
    detok = Detokenizer(tok)
    ids = [*tok("Sure")["input_ids"], *tok.convert_tokens_to_ids(["ĠðŁ", "ĻĤ"])]
    assert detok.decode(ids) == "Sure 🙂" and detok.decode(ids[:-1]) == "Sure \ufffd"
    assert _settled(detok, ids[:-1]) == "Sure " and _settled(detok, ids) == "Sure 🙂"
