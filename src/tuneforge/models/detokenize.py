"""Answer text from generated token ids, without a last character whose bytes have not all been generated.

A byte-level tokenizer can spread one character over several tokens (an emoji's four bytes over two to four),
and `tokenizer.decode` shows the bytes so far as U+FFFD. An answer cut by max_tokens between them would end
in that U+FFFD, and a stream would send it; the character is held back instead, as vLLM's detokenizer does.

Why by hand: tokenizers' `DecodeStream` (what vLLM steps) holds back every trailing U+FFFD, so an invalid
byte or a U+FFFD the model wrote at the very end is lost too, and neither tokenizers nor transformers hand out
a token's bytes. For byte-level vocabularies they are read off transformers' own byte alphabet and Python's
UTF-8 decoder says whether they end in an unfinished character.
"""

from __future__ import annotations

import codecs
from typing import Any

REPLACEMENT = "\ufffd"
LONGEST_UNFINISHED = 3
"""Bytes an unfinished UTF-8 character can hold (a character has at most four)."""


class Detokenizer:
    """A tokenizer's `decode` of an answer's ids, and how much of that text is settled."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.byte_of = _byte_level_alphabet(tokenizer)

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def settled(self, ids: list[int], text: str) -> str:
        """`text` (the decode of `ids`) without the U+FFFD that stands for an unfinished last character."""
        if not text.endswith(REPLACEMENT):
            return text
        if self.byte_of is None:
            # No token bytes to read: an unfinished character, an invalid byte and a U+FFFD the model wrote
            # all decode to U+FFFD, so all trailing ones are held back (the rule of tokenizers' DecodeStream,
            # which vLLM steps): the cost is that one ending a whole answer is dropped.
            return text.rstrip(REPLACEMENT)
        tail = self._tail_bytes(ids)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        decoder.decode(tail, final=False)
        pending, _ = decoder.getstate()  # the bytes of an unfinished last character, if any
        # The byte-level decoder decodes all bytes at once, lossily: an unfinished end is one U+FFFD.
        return text[:-1] if pending else text

    def _tail_bytes(self, ids: list[int]) -> bytes:
        """The bytes of the last tokens decode shows, enough to hold an unfinished character whole."""
        assert self.byte_of is not None
        # A few more ids than bytes needed: special tokens among them (skipped, as decode skips them) still
        # leave enough.
        tokens = self.tokenizer.convert_ids_to_tokens(
            ids[-4 * LONGEST_UNFINISHED :], skip_special_tokens=True
        )
        tail = b""
        for token in reversed(tokens):
            tail = _token_bytes(token, self.byte_of) + tail
            if len(tail) > LONGEST_UNFINISHED:
                break
        return tail


def _byte_level_alphabet(tokenizer: Any) -> dict[str, int] | None:
    """Byte of each character of a byte-level BPE vocabulary (GPT-2's scheme: SmolLM2, Llama 3, Qwen), or None
    for a tokenizer that spells bytes otherwise (SentencePiece's <0xNN> byte fallback) or not at all."""
    from tokenizers import decoders
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not isinstance(getattr(backend, "decoder", None), decoders.ByteLevel):
        return None
    return {char: byte for byte, char in bytes_to_unicode().items()}


def _token_bytes(token: str, byte_of: dict[str, int]) -> bytes:
    """A token's bytes; an added token outside the byte alphabet is its UTF-8, as tokenizers decodes it."""
    if all(c in byte_of for c in token):
        return bytes(byte_of[c] for c in token)
    return token.encode()
