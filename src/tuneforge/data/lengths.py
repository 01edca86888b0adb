"""Token lengths with the chosen model's tokenizer (whitespace words when no model is given), and their stats.

The data stage comes before the model stage, so the tokenizer is loaded here directly from a local folder, a
built-in (resolved by `tuneforge.builtin`) or a hub id, never through `tuneforge.models`. A folder with a
`tokenizer.json` is read with the `tokenizers` library alone: the same Rust tokenizer transformers would wrap,
without the seconds that importing transformers costs `tuneforge prepare`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tuneforge import builtin
from tuneforge.errors import TuneforgeError

if TYPE_CHECKING:
    from tuneforge.config import ModelConfig

_WORD = re.compile(r"\S+")


class TokenCounter:
    """Counts and cuts texts in tokens; `name` says which tokenizer (part of the dataset fingerprint)."""

    def __init__(self, name: str = "whitespace", tokenizer: Any = None) -> None:
        self.name = name
        self.tokenizer = tokenizer
        # The Rust tokenizer behind a fast tokenizer, without the truncation or padding a tokenizer.json may
        # carry (a count capped at 512 would hide exactly the rows that are too long).
        backend = (
            tokenizer if _is_rust_tokenizer(tokenizer) else getattr(tokenizer, "backend_tokenizer", None)
        )
        if backend is not None:
            backend.no_truncation()
            backend.no_padding()
        self.backend = backend

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text, without special tokens or a chat template (the content itself)."""
        if self.tokenizer is None:
            return [len(t.split()) for t in texts]
        if not texts:
            return []
        if self.backend is not None:
            encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)  # fast: no offsets
            return [len(e.ids) for e in encode(list(texts), add_special_tokens=False)]
        return [len(x) for x in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix of `text` that has at most `max_tokens` tokens, cut at a token boundary."""
        if self.tokenizer is None:
            words = list(_WORD.finditer(text))
            return text if len(words) <= max_tokens else text[: words[max_tokens - 1].end()]
        if self.backend is not None:
            offsets = self.backend.encode(text, add_special_tokens=False).offsets
            return text if len(offsets) <= max_tokens else text[: offsets[max_tokens - 1][1]]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= max_tokens else str(self.tokenizer.decode(ids[:max_tokens]))


def _is_rust_tokenizer(tok: Any) -> bool:
    return type(tok).__module__.startswith("tokenizers")


def token_counter(model: ModelConfig | None) -> TokenCounter:
    """The tokenizer of `model` (built-in, local folder or hub id), or whitespace words without a model."""
    if model is None:
        return TokenCounter()
    name = model.name
    location = str(builtin.resolve(name, weights=False)) if builtin.is_builtin(name) else name
    local = Path(location).expanduser().is_dir()
    if not local and name.startswith(("/", "./", "../", "~")):
        raise TuneforgeError(
            f"model folder {location} does not exist",
            where="model.name",
            fix="pass a Hugging Face model folder",
        )
    folder = Path(location).expanduser()
    if local and (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        try:
            tok: Any = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as err:  # the Rust library raises a plain Exception for a malformed file
            raise _load_error(name, location, local, err) from None
        return TokenCounter(tokenizer_name(model), tok)
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(
            str(folder) if local else location,
            revision=None if local else model.revision,
            trust_remote_code=model.trust_remote_code,
            local_files_only=local,
        )
    except (OSError, ValueError) as err:
        raise _load_error(name, location, local, err) from None
    return TokenCounter(tokenizer_name(model), tok)


def _load_error(name: str, location: str, local: bool, err: Exception) -> TuneforgeError:
    what = f"a tokenizer from {location}" if local else f"{name!r} from the Hugging Face hub"
    return TuneforgeError(
        f"could not load {what} ({type(err).__name__}: {str(err)[:200]}); its tokenizer measures the token "
        "lengths of the data",
        where="model.name",
        fix="check the id and your network; offline, download the model once and pass its local folder "
        "(or use builtin:smollm2-135m-instruct / builtin:minilm-l6)",
    )


def tokenizer_name(model: ModelConfig | None) -> str:
    """Which tokenizer measures lengths, known without loading it (part of the input fingerprint)."""
    if model is None:
        return "whitespace"
    return model.name if model.revision is None else f"{model.name}@{model.revision}"


def length_stats(lengths: np.ndarray) -> dict[str, float | int]:
    """count, total, min, mean, percentiles and max of token lengths (empty: count 0)."""
    if not len(lengths):
        return {"count": 0}
    p50, p90, p95, p99 = np.percentile(lengths, [50, 90, 95, 99], method="lower")
    return {
        "count": len(lengths),
        "total": int(lengths.sum()),
        "min": int(lengths.min()),
        "mean": round(float(lengths.mean()), 2),
        "p50": int(p50),
        "p90": int(p90),
        "p95": int(p95),
        "p99": int(p99),
        "max": int(lengths.max()),
    }
