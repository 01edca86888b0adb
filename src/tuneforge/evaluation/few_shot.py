"""The few-shot baseline: was fine-tuning worth it, against the base model prompted with k examples?

The untuned base is prompted with k example exchanges drawn (with eval.seed) from the **train** split only,
so no evaluated row is ever in a prompt, and decides the way the zero-shot base does: label scoring (or a
parsed generated answer, eval.decision) for classification, generated answers for chat/instruction. k is
eval.few_shot, or under `auto` as many as fit model.max_length beside the evaluated split's longest input (at
most AUTO_CAP); classification examples are drawn round-robin over the labels, so k is balanced.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any

from tuneforge.config import RunConfig
from tuneforge.data.chat import to_messages
from tuneforge.evaluation.model_eval import (
    ModelEval,
    Progress,
    answer_scores,
    classify,
    prompt_and_reference,
    with_shots,
)
from tuneforge.models.encode import encode_chat, encode_prompt

#: The most examples `auto` puts in a prompt: past a handful, more examples rarely help a small model and
#: every one lengthens every prompt of the pass.
AUTO_CAP = 8
FORMATS = ("classification", "chat", "instruction")


@dataclass
class Shots:
    """The examples one few-shot prompt holds, and why there are k of them."""

    train_rows: list[int]
    """Row numbers in the train split, in prompt order."""
    messages: list[dict[str, str]]
    how: str


def skip_reason(cfg: RunConfig, fmt: str, split: str, compare: bool) -> str | None:
    """Why this evaluation has no few-shot baseline (None: it has one)."""
    if cfg.eval.few_shot == 0:
        return "turned off (eval.few_shot: 0)"
    if cfg.model.task != "causal-lm":
        return "a classification or regression head reads no prompt, so it cannot be shown examples"
    if fmt not in FORMATS:
        return f"not measured for {fmt} data (classification, chat and instruction data only)"
    if fmt != "classification" and not cfg.eval.generate:
        return "chat/instruction answers are not generated (eval.generate: false)"
    if split == "train":
        return "the evaluated split is train, where its examples come from"
    if not compare:
        return "it prompts the base model: run `tuneforge evaluate RUN --compare-base`"
    return None


def _shot(record: dict[str, Any], labels: list[str], template: str) -> list[dict[str, str]]:
    """A train record as an example exchange (a system message belongs to the question, not the examples)."""
    return [m for m in to_messages(record, labels, template) if m["role"] != "system"]


def candidate_rows(train: list[dict[str, Any]], fmt: str, labels: list[str], seed: int) -> list[int]:
    """Train rows in the order examples are taken: seeded; round-robin over labels for classification."""
    rng = random.Random(seed)
    if fmt != "classification":
        order = list(range(len(train)))
        rng.shuffle(order)
        return order
    by_label = [[i for i, r in enumerate(train) if str(r.get("label")) == label] for label in labels]
    for rows in by_label:
        rng.shuffle(rows)
    return [i for turn in zip_longest(*by_label) for i in turn if i is not None]


def choose_shots(
    tok: Any,
    train: list[dict[str, Any]],
    records: list[dict[str, Any]],
    cfg: RunConfig,
    fmt: str,
    labels: list[str],
) -> Shots:
    """The examples for every prompt of this evaluation: k fits model.max_length beside the longest input."""
    template, max_len = cfg.data.prompt_template, cfg.model.max_length
    prompts = [prompt_and_reference(r, labels, template)[0] for r in records]
    # The examples are one shared prefix, so the input longest alone is the longest with them too.
    longest = max(prompts, key=lambda p: len(encode_prompt(tok, p)))
    scored = fmt == "classification" and cfg.eval.decision == "score"

    def tokens(shots: list[dict[str, str]]) -> int:
        """Tokens the longest question needs with these examples (answer or generation room included)."""
        asked = with_shots(longest, shots)
        if scored:
            whole = [encode_chat(tok, [*asked, {"role": "assistant", "content": a}], 2**62) for a in labels]
            return max(len(e["input_ids"]) for e in whole)
        return len(encode_prompt(tok, asked)) + cfg.eval.max_new_tokens

    auto = cfg.eval.few_shot == "auto"
    cap = AUTO_CAP if auto else int(cfg.eval.few_shot)
    order = candidate_rows(train, fmt, labels, cfg.eval.seed)[:cap]
    k = 0
    for j in range(1, len(order) + 1):
        if tokens([m for i in order[:j] for m in _shot(train[i], labels, template)]) > max_len:
            break  # each example lengthens every prompt: the first that does not fit ends the list
        k = j
    if k < len(order):
        how = f"what fits model.max_length {max_len} beside the longest input"
    elif len(order) < cap:
        how = "every train example"
    else:
        how = f"the auto cap {AUTO_CAP}" if auto else "eval.few_shot"
    n_labels = len(labels)
    if auto and fmt == "classification" and k > n_labels and k % n_labels:
        k -= k % n_labels
        how += f", rounded down to {k} for as many examples of each label"
    rows = order[:k]
    random.Random(cfg.eval.seed).shuffle(rows)  # no fixed label pattern right before the question
    messages = [m for i in rows for m in _shot(train[i], labels, template)]
    return Shots(rows, messages, how)


def few_shot_baseline(
    model: Any,
    tok: Any,
    train: list[dict[str, Any]],
    records: list[dict[str, Any]],
    cfg: RunConfig,
    fmt: str,
    labels: list[str],
    progress: Callable[[str], Progress | None],
) -> tuple[dict[str, Any], ModelEval | None]:
    """What the eval JSON says about the few-shot baseline, and its evaluation (None: no example fits)."""
    start = time.perf_counter()
    shots = choose_shots(tok, train, records, cfg, fmt, labels)
    k = len(shots.train_rows)
    about: dict[str, Any] = {
        "k": k,
        "k_chosen": shots.how,
        "setting": cfg.eval.few_shot,
        "drawn_from": "train",
        "seed": cfg.eval.seed,
        "train_rows": shots.train_rows,
    }
    if k == 0:
        about["skipped"] = (
            f"no train example fits model.max_length {cfg.model.max_length} beside the longest input"
            if train
            else "the train split holds no example to show"
        )
        return about, None
    about["name"] = f"few_shot_k{k}"
    shown = progress(about["name"])
    if fmt == "classification":
        result = classify(model, tok, records, cfg, labels, shown, shots.messages)
    else:
        result = answer_scores(model, tok, records, cfg, labels, shown, shots.messages)
    about["seconds"] = round(time.perf_counter() - start, 2)
    return about, result
