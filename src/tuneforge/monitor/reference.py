"""The reference live traffic is compared with: the run's training split, found through its manifests."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.artifacts import RunDir


@dataclass
class Reference:
    """Inputs, outputs and labels of the training split (inputs and answers sampled with a fixed seed)."""

    dataset: Path
    format: str
    task: str
    labels: list[str]
    inputs: list[str]
    train_size: int
    label_counts: Counter[str] = field(default_factory=Counter)
    values: list[float] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    held_out: list[str] = field(default_factory=list)
    """Validation inputs: how often text unseen in training turns up in data of the same distribution."""


def input_text(record: dict[str, Any]) -> str:
    """What a request would send for this record: the text, the instruction and input, the user's turns."""
    if "messages" in record:
        return "\n".join(m["content"] for m in record["messages"] if m.get("role") != "assistant")
    if "instruction" in record:
        return record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
    if "prompt" in record:
        return str(record["prompt"])
    return str(record["text"])


def _request_text(run: RunDir, fmt: str, task: str, labels: list[str]) -> Callable[[dict[str, Any]], str]:
    """How a request for a record reads: a language model that learned classification records was asked
    (and is asked live) with data.prompt_template filled in, not the bare text; everything else as input_text.
    Compared with the bare texts, a deployment's every prompt looked like drift (domain classifier AUC 1 on
    in-distribution traffic)."""
    if task != "causal-lm" or fmt != "classification":
        return input_text
    from tuneforge.data.records import prompt_and_answer
    from tuneforge.train import reload_config

    template = reload_config(run).data.prompt_template
    return lambda record: prompt_and_answer(record, labels, template)[0]


def answer_text(record: dict[str, Any]) -> str | None:
    """The answer a generator was taught for this record (None for classification and plain text)."""
    if "messages" in record:
        said = [m["content"] for m in record["messages"] if m.get("role") == "assistant"]
        return said[-1] if said else None
    if "output" in record:
        return str(record["output"])
    if "chosen" in record:
        return str(record["chosen"])
    return None


def _sample(items: list[Any], n: int, seed: int) -> list[Any]:
    return items if len(items) <= n else random.Random(seed).sample(items, n)


def load_reference(run: RunDir, max_reference: int, data_path: str | None = None) -> Reference:
    """The training split of the dataset the run trained on (refused when its files changed since), found
    where its manifest says or at `data_path`."""
    manifest = run.manifest
    dataset = run.open_dataset(data_path, point="add --set data.path=DIR to the tuneforge monitor command")
    run.check_split_files(dataset)
    train = dataset.records("train")
    labels = list(manifest.get("labels") or dataset.labels)
    task = str(manifest.get("task") or "causal-lm")
    request = _request_text(run, dataset.format, task, labels)
    ref = Reference(
        dataset=dataset.path,
        format=dataset.format,
        task=task,
        labels=labels,
        inputs=_sample([request(r) for r in train], max_reference, seed=0),
        train_size=len(train),
    )
    if dataset.format == "classification":
        ref.label_counts = Counter(str(r["label"]) for r in train)
    elif dataset.format == "regression":
        ref.values = [float(r["label"]) for r in train]
    if task == "causal-lm" and dataset.format == "classification":  # it learned to answer with the label
        answers = [str(r["label"]) for r in train]
    else:
        answers = [a for a in (answer_text(r) for r in train) if a is not None]
    ref.answers = _sample(answers, max_reference, seed=1)
    if dataset.split_path("validation").is_file():
        held = [request(r) for r in dataset.records("validation")]
        ref.held_out = _sample(held, max_reference, seed=2)
    return ref
