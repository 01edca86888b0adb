"""Token lengths as the model will see them (whitespace words when no model is given), and their stats.

A causal LM sees a supervised record as a conversation rendered by its chat template (a default system
prompt included), a classification record through data.prompt_template; a classification or regression head
sees the text with the tokenizer's special tokens; a text document is followed by EOS. `LengthMeter` counts
exactly that, so that the length filter and the report agree with what training encodes (a test compares
them token for token with `tuneforge.models.encode`).

The data stage comes before the model stage, so the tokenizer is loaded here directly from a local folder, a
built-in (resolved by `tuneforge.builtin`) or a hub id, never through `tuneforge.models`. A folder with a
`tokenizer.json` is read with the `tokenizers` library alone: the same Rust tokenizer transformers would wrap,
without the seconds that importing transformers costs `tuneforge prepare`.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tuneforge import builtin
from tuneforge.data.chat import (
    folder_chat_template,
    folder_special_tokens,
    no_chat_template,
    template_of,
    to_messages,
)
from tuneforge.data.records import record_text
from tuneforge.errors import TuneforgeError

if TYPE_CHECKING:
    from tuneforge.artifacts import DatasetDir
    from tuneforge.config import ModelConfig


class TokenCounter:
    """Counts texts in tokens and renders conversations; `name` says which tokenizer.

    `chat_template` and `special_tokens` are what the model stage's tokenizer renders a conversation with;
    `eos` is 1 when the tokenizer has an end-of-sequence token (appended to every text document).
    """

    def __init__(
        self,
        name: str = "whitespace",
        tokenizer: Any = None,
        *,
        chat_template: str | None = None,
        special_tokens: dict[str, str] | None = None,
        eos: int = 0,
    ) -> None:
        self.name = name
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.special_tokens = special_tokens or {}
        self.eos = eos
        # The Rust tokenizer behind a fast tokenizer, without the truncation or padding a tokenizer.json may
        # carry (a count capped at 512 would hide exactly the rows that are too long).
        backend = (
            tokenizer if _is_rust_tokenizer(tokenizer) else getattr(tokenizer, "backend_tokenizer", None)
        )
        if backend is not None:
            backend.no_truncation()
            backend.no_padding()
        self.backend = backend
        self._splitter: re.Pattern[str] | bool | None = False  # False: not made yet
        self._segments: dict[str, int] = {}

    def count(self, texts: Sequence[str], *, special_tokens: bool = False) -> list[int]:
        """Tokens per text; `special_tokens`: with what the tokenizer adds around a text ([CLS] ... [SEP])."""
        if self.tokenizer is None:
            return [len(t.split()) for t in texts]
        if not texts:
            return []
        if self.backend is not None:
            encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)  # fast: no offsets
            return [len(e.ids) for e in encode(list(texts), add_special_tokens=special_tokens)]
        ids = self.tokenizer(list(texts), add_special_tokens=special_tokens)["input_ids"]
        return [len(x) for x in ids]

    def count_rendered(self, texts: list[str]) -> list[int]:
        """`count` of chat renderings, without tokenizing their repeated parts again for every row.

        A tokenizer cuts its input at added tokens (<|im_start|> ...) and tokenizes the parts between them
        independently, so a rendering's count is the number of added tokens plus the counts of its parts.
        The parts a template repeats (a default system prompt, role headers, the prompt's instructions, a
        label) are counted once: they are most of a short example's tokens. Lines are parts too where a
        newline stands between two non-space characters, which byte-level BPE pre-tokenizers (GPT-2,
        Llama 3, SmolLM) never merge across. Used only for tokenizers whose added tokens strip no
        whitespace, and checked against whole-text counts on the first rows and on one row of every call:
        a tokenizer that counts otherwise is counted whole.
        """
        if self._splitter is False:
            self._splitter = self._added_token_splitter()
            sample = texts[:32]
            if self._splitter is not None and self._count_by_parts(sample) != self.count(sample):
                self._splitter = None
        if not isinstance(self._splitter, re.Pattern) or not texts:
            return self.count(texts)
        counts = self._count_by_parts(texts)
        if counts[-1:] != self.count(texts[-1:]):
            self._splitter = None
            return self.count(texts)
        return counts

    def _added_token_splitter(self) -> re.Pattern[str] | None:
        added: dict[int, Any] = getattr(self.backend, "get_added_tokens_decoder", dict)()
        if not added or any(t.lstrip or t.rstrip or t.single_word for t in added.values()):
            return None
        contents = sorted({t.content for t in added.values()}, key=len, reverse=True)  # longest match first
        return re.compile("(" + "|".join(re.escape(c) for c in contents) + ")|(?<=\\S\n)(?=\\S)")

    def _count_by_parts(self, texts: list[str]) -> list[int]:
        assert isinstance(self._splitter, re.Pattern)
        split = [self._splitter.split(t) for t in texts]  # [part, added token or None, part, ...]
        seen: dict[str, int] = {}
        for parts in split:
            for part in parts[0::2]:
                if part and part not in self._segments:
                    seen[part] = seen.get(part, 0) + 1
        new = dict(zip(seen, self.count(list(seen)), strict=True))
        for part, n in new.items():
            if seen[part] > 1 and len(self._segments) < 100_000:  # repeated within a batch: a template part
                self._segments[part] = n
        known = {**new, **self._segments}
        return [
            sum(1 for t in parts[1::2] if t is not None) + sum(known[p] for p in parts[0::2] if p)
            for parts in split
        ]

    def render(self, conversations: list[list[dict[str, str]]]) -> list[str]:
        """Conversations as the chat template writes them, with transformers' own Jinja renderer.

        The renderer alone, not a transformers tokenizer: loading one imports torch, which would cost
        `tuneforge prepare` more than measuring the whole dataset.
        """
        if self.chat_template is None:
            raise no_chat_template()
        from transformers.utils.chat_template_utils import render_jinja_template

        # Like tokenizer.apply_chat_template: the named special tokens are the template's variables.
        variables: dict[str, Any] = dict(self.special_tokens)
        out: Any = render_jinja_template(  # annotated as str; returns (rendered, generation indices)
            conversations=conversations, chat_template=self.chat_template, **variables
        )
        return [str(r) for r in out[0]]


def _is_rust_tokenizer(tok: Any) -> bool:
    return type(tok).__module__.startswith("tokenizers")


def token_counter(model: ModelConfig | None, *, download: bool = True) -> TokenCounter:
    """The tokenizer of `model` (built-in, local folder or hub id), or whitespace words without a model.

    `download=False`: a hub id's tokenizer only from the local Hugging Face cache (a TuneforgeError when it
    is not there), so sizing a run never waits on the network.
    """
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
    override = template_of(model.chat_template)
    if local and (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        try:
            tok: Any = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as err:  # the Rust library raises a plain Exception for a malformed file
            raise _load_error(name, location, local, err) from None
        special = folder_special_tokens(folder)
        eos = special.get("eos_token")
        return TokenCounter(
            tokenizer_name(model),
            tok,
            chat_template=override or folder_chat_template(folder),
            special_tokens=special,
            eos=int(eos is not None and tok.token_to_id(eos) is not None),
        )
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(
            str(folder) if local else location,
            revision=None if local else model.revision,
            trust_remote_code=model.trust_remote_code,
            local_files_only=local or not download,
        )
    except (OSError, ValueError) as err:
        raise _load_error(name, location, local, err) from None
    special = dict(tok.special_tokens_map)
    if "pad_token" not in special and (tok.eos_token or tok.unk_token):
        special["pad_token"] = tok.eos_token or tok.unk_token  # as the model stage pads
    own = tok.chat_template if isinstance(tok.chat_template, str) else None
    return TokenCounter(
        tokenizer_name(model),
        tok,
        chat_template=override or own,
        special_tokens=special,
        eos=int(tok.eos_token_id is not None),
    )


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
    """Which tokenizer measures lengths, known without loading it (shown in the report)."""
    if model is None:
        return "whitespace"
    return model.name if model.revision is None else f"{model.name}@{model.revision}"


def measure_key(model: ModelConfig | None) -> str:
    """Everything lengths depend on, known without loading the tokenizer (part of the input fingerprint)."""
    if model is None:
        return "whitespace"
    return f"{tokenizer_name(model)} task={model.task} chat_template={model.chat_template!r}"


CHAT_FORMATS = ("chat", "instruction", "classification", "preference")  # what a causal LM sees as a chat


class LengthMeter:
    """Tokens per record as the model will see them (before any truncation at model.max_length)."""

    def __init__(self, counter: TokenCounter, task: str = "causal-lm", template: str = "{text}") -> None:
        self.counter, self.task, self.template = counter, task, template

    def basis(self, fmt: str | None) -> str:
        """How lengths were counted, in the report's words."""
        if self.counter.tokenizer is None:
            return "whitespace-separated words"
        if self.task != "causal-lm":
            return "text with the tokenizer's special tokens"
        if fmt in CHAT_FORMATS:
            extra = " with data.prompt_template" if fmt == "classification" else ""
            return f"conversation rendered by the chat template{extra}"
        return "text followed by EOS" if self.counter.eos else "text"

    def is_chat(self, fmt: str | None) -> bool:
        return self.task == "causal-lm" and fmt in CHAT_FORMATS

    def lengths(self, records: list[dict[str, Any]], fmt: str, labels: list[str]) -> list[int]:
        """Token counts of `records`; `labels` fill {labels} of the classification prompt.

        A preference pair is as long as its longer side (prompt + chosen, or prompt + rejected).
        """
        if fmt == "preference":
            chosen = self._lengths(records, fmt, labels)
            rejected = self._lengths([{**r, "chosen": r["rejected"]} for r in records], fmt, labels)
            return [max(c, r) for c, r in zip(chosen, rejected, strict=True)]
        return self._lengths(records, fmt, labels)

    def _lengths(self, records: list[dict[str, Any]], fmt: str, labels: list[str]) -> list[int]:
        if self.counter.tokenizer is None:
            return self.counter.count([record_text(r) for r in records])
        if self.is_chat(fmt):
            if self.counter.chat_template is None:
                raise TuneforgeError(
                    f"the tokenizer has no chat template, and a causal LM learns every {fmt} record as a "
                    "conversation",
                    where="model.chat_template",
                    fix="set model.chat_template to a Jinja template or the name chatml (or model.task to "
                    "classification or regression, to train a head)",
                )
            return self.conversation_lengths([to_messages(r, labels, self.template) for r in records])
        texts = [str(r["text"]) if "text" in r else record_text(r) for r in records]
        if self.task != "causal-lm":
            return self.counter.count(texts, special_tokens=True)
        return [n + self.counter.eos for n in self.counter.count(texts)]

    def conversation_lengths(self, conversations: list[list[dict[str, str]]]) -> list[int]:
        if self.counter.tokenizer is None:
            return [sum(len(m["content"].split()) for m in c) for c in conversations]
        if not conversations:
            return []
        return self.counter.count_rendered(self.counter.render(conversations))


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


SIZING_SAMPLE = 20_000
"""Rows per split measured when a dataset's lengths were counted for another model (a sample beyond)."""


def lengths_for_model(dataset: DatasetDir, model: ModelConfig, prompt_template: str) -> dict[str, Any]:
    """The dataset's manifest with its token lengths as `model` sees them, for sizing a run.

    A prepared dataset can be trained with another model than the one it was prepared for (data.path naming
    the folder): its lengths were counted with that model's tokenizer and basis (a chat rendering with a
    system prompt, say, where a head reads the bare text), which would size the estimate, the time budget
    and the default model.max_length wrongly (3.4x over, seen). Those runs get the lengths measured again
    here, in memory, on every row of each split or a seeded sample of SIZING_SAMPLE rows (the count and
    total scaled to the whole split); the dataset's manifest on disk is never rewritten. A dataset measured
    for this model (same tokenizer, task, chat template and prompt template) is returned as it is.
    """
    manifest = dataset.manifest
    lengths = manifest.get("token_lengths") or {}
    fmt = manifest.get("format")
    if not fmt or not lengths or _measured_for(manifest, model, prompt_template):
        return manifest
    key = (str(dataset.path.resolve()), manifest.get("fingerprint"), measure_key(model), prompt_template)
    if key not in _REMEASURED:  # train sizes a run several times (defaults, budget, the time line)
        try:
            _REMEASURED[key] = _remeasure(dataset, manifest, model, prompt_template)
        except TuneforgeError:
            # No tokenizer on this machine (a hub model not downloaded yet): sized with the lengths as
            # prepared, as before; `estimate` must not wait on the network for them.
            return manifest
    return {**manifest, "token_lengths": _REMEASURED[key]}


_REMEASURED: dict[tuple[str, Any, str, str], dict[str, Any]] = {}


def sample_jsonl(path: Path, size: int, seed: int = 0) -> tuple[int, list[dict[str, Any]]]:
    """(rows in the file, a seeded uniform sample of at most `size` of them), reading one line at a time.

    Reservoir sampling (Algorithm R): a split of millions of rows is sized in the memory of `size` records,
    where reading it whole first would hold them all. Blank lines are skipped, as `read_jsonl` does.
    """
    rng = random.Random(seed)
    sample: list[dict[str, Any]] = []
    rows = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            rows += 1
            slot = rows - 1 if rows <= size else rng.randrange(rows)
            if slot >= size:
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                raise TuneforgeError(
                    "not a readable JSON line", where=f"{path}:{lineno}", fix="prepare the dataset again"
                ) from None
            if rows <= size:
                sample.append(record)
            else:
                sample[slot] = record
    return rows, sample


def _remeasure(
    dataset: DatasetDir, manifest: dict[str, Any], model: ModelConfig, prompt_template: str
) -> dict[str, Any]:
    lengths, fmt = manifest["token_lengths"], str(manifest["format"])
    meter = LengthMeter(token_counter(model, download=False), model.task, prompt_template)
    labels = [str(x) for x in manifest.get("labels") or []]
    stats: dict[str, Any] = {}
    for split in ("train", "validation", "test"):
        path = dataset.split_path(split)
        if not path.is_file():
            continue
        rows, records = sample_jsonl(path, SIZING_SAMPLE)
        measured = length_stats(np.array(meter.lengths(records, fmt, labels), dtype=np.int64))
        if rows > len(records):
            measured.update(count=rows, total=round(float(measured["mean"]) * rows))
        stats[split] = measured
    # What was counted for the other model and is not measured again here goes, rather than mislead.
    kept = {
        k: v
        for k, v in lengths.items()
        if k not in ("all", "cut_when_encoded", "train", "validation", "test")
    }
    return {
        **kept,
        "tokenizer": meter.counter.name,
        "measured_as": meter.basis(fmt),
        "measured_for": measure_key(model),
        "remeasured_from": lengths.get("tokenizer"),
        **stats,
    }


def _measured_for(manifest: dict[str, Any], model: ModelConfig, prompt_template: str) -> bool:
    """Whether prepare counted the lengths as `model` sees them (datasets from before `measured_for` was
    recorded: the same tokenizer, and special tokens counted exactly when a head reads them)."""
    lengths = manifest.get("token_lengths") or {}
    chat_classification = model.task == "causal-lm" and manifest.get("format") == "classification"
    if chat_classification and (manifest.get("config") or {}).get("prompt_template") != prompt_template:
        return False
    if "measured_for" in lengths:
        return bool(lengths["measured_for"] == measure_key(model))
    head_basis = str(lengths.get("measured_as") or "").startswith("text with the tokenizer's special tokens")
    return lengths.get("tokenizer") == tokenizer_name(model) and head_basis == (model.task != "causal-lm")
