"""Export a prepared dataset for other fine-tuning tools: OpenAI chat JSONL or Alpaca JSON.

    openai  chat, instruction, classification → {"messages": [...]} per line (OpenAI supervised fine-tuning)
            preference → {"input": {"messages"}, "preferred_output", "non_preferred_output"} (OpenAI DPO)
    alpaca  instruction, classification → [{"instruction", "input", "output"}, ...]
            chat → the same, with "system" and earlier turns as "history" ([[user, assistant], ...]),
            the extended Alpaca layout LLaMA-Factory reads
            preference → {"instruction", "input", "chosen", "rejected"}

Instructions and classification prompts become conversations the way training sees them: instruction and input
joined by a blank line, and data.prompt_template filled with the text and the label set.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tuneforge.artifacts import SPLITS, DatasetDir, atomic_file
from tuneforge.data.records import prompt_and_answer
from tuneforge.errors import TuneforgeError

TARGETS = ("openai", "alpaca")
Converter = Callable[[dict[str, Any]], dict[str, Any]]


class NotExportable(Exception):
    """A record that the target layout cannot hold (the message says why)."""


def export_dataset(dataset_dir: str | Path, *, to: str, out: str | Path, split: str = "train") -> int:
    """Write one split of a prepared dataset to `out` in the `to` layout; returns the number of examples."""
    if to not in TARGETS:
        raise TuneforgeError(
            f"unknown export target {to!r}", where="--to", fix="use one of: " + ", ".join(TARGETS)
        )
    if split not in SPLITS:
        raise TuneforgeError(
            f"unknown split {split!r}", where="--split", fix="use one of: " + ", ".join(SPLITS)
        )
    ds = DatasetDir.open(dataset_dir)
    manifest = ds.manifest
    convert = _converter(to, ds.format, manifest)
    source = ds.split_path(split)
    if not source.is_file():
        raise TuneforgeError(f"dataset {ds.path} has no {split} split", fix="re-run `tuneforge prepare`")
    target = Path(out)
    if target.is_dir():
        raise TuneforgeError(
            f"{target} is a folder", where="--out", fix="name the file to write, e.g. train.jsonl"
        )
    if ds.path.resolve() in target.resolve().parents:
        raise TuneforgeError(
            f"{target} is inside the dataset {ds.path}; writing there would change the prepared dataset",
            where="--out",
            fix="write the export outside the dataset folder",
        )
    n = 0
    with atomic_file(target, "w") as f:
        if to == "alpaca":
            f.write("[")
        for lineno, record in _records(source):
            try:
                row = convert(record)
            except NotExportable as err:
                raise TuneforgeError(
                    f"cannot export this record to {to}: {err}",
                    where=f"{source}:{lineno}",
                    fix="export to openai instead" if to == "alpaca" else None,
                ) from None
            text = json.dumps(row, ensure_ascii=False)
            if to == "alpaca":
                f.write(("\n  " if n == 0 else ",\n  ") + text)
            else:
                f.write(text + "\n")
            n += 1
        if to == "alpaca":
            f.write("\n]\n" if n else "]\n")
    return n


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """A split's records with their line numbers, read one line at a time."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield lineno, json.loads(line)


def _converter(to: str, fmt: str, manifest: dict[str, Any]) -> Converter:
    labels = list(manifest.get("labels") or [])
    template = str((manifest.get("config") or {}).get("prompt_template") or "{text}")

    def prompt(record: dict[str, Any]) -> tuple[str, str]:
        return prompt_and_answer(record, labels, template)

    if fmt in ("text", "regression"):
        raise TuneforgeError(
            f"a {fmt} dataset has no prompt/answer pairs to export to {to}",
            fix="export chat, instruction, classification or preference datasets",
        )
    if to == "openai":
        if fmt == "chat":
            return lambda r: {"messages": r["messages"]}
        if fmt == "preference":
            return lambda r: {
                "input": {"messages": [{"role": "user", "content": r["prompt"]}]},
                "preferred_output": [{"role": "assistant", "content": r["chosen"]}],
                "non_preferred_output": [{"role": "assistant", "content": r["rejected"]}],
            }
        return lambda r: _messages(*prompt(r))
    if fmt == "chat":
        return lambda r: _alpaca_chat(r["messages"])
    if fmt == "preference":
        return lambda r: {
            "instruction": r["prompt"],
            "input": "",
            "chosen": r["chosen"],
            "rejected": r["rejected"],
        }
    if fmt == "instruction":
        return lambda r: {"instruction": r["instruction"], "input": r["input"], "output": r["output"]}
    return lambda r: _alpaca(*prompt(r))


def _alpaca(instruction: str, output: str) -> dict[str, Any]:
    return {"instruction": instruction, "input": "", "output": output}


def _messages(user: str, assistant: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def _alpaca_chat(messages: list[dict[str, str]]) -> dict[str, Any]:
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    turns = messages[1:] if system is not None else messages
    roles = [m["role"] for m in turns]
    if len(turns) % 2 or roles != ["user", "assistant"] * (len(turns) // 2):
        raise NotExportable(
            "Alpaca needs user/assistant turns in strict alternation, ending with the assistant"
        )
    pairs = [[turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns), 2)]
    row: dict[str, Any] = {"instruction": pairs[-1][0], "input": "", "output": pairs[-1][1]}
    if system is not None:
        row["system"] = system
    if len(pairs) > 1:
        row["history"] = pairs[:-1]
    return row
