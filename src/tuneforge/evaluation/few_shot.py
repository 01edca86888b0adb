"""The few-shot baseline: was fine-tuning worth it, against the base model prompted with k examples?

The untuned base is prompted with k example exchanges drawn (with eval.seed) from the **train** split only,
so no evaluated row is ever in a prompt, and decides the way the zero-shot base does: label scoring (or a
parsed generated answer, eval.decision) for classification, generated answers for chat/instruction. k is
eval.few_shot, or under `auto` as many as fit the prompt window beside the evaluated split's longest input (at
most AUTO_CAP); classification examples are drawn round-robin over the labels, so k is balanced.

The window is the model's own context (max_position_embeddings) up to WINDOW_CAP tokens, not
model.max_length: that is sized for training, where the quickstart's 160 tokens leave no room for even one
example beside its longest tweet. The examples are one prefix shared by every prompt, which label scoring
runs once (evaluation/scores.py), so a longer window costs little on top of the zero-shot pass.
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
WINDOW_CAP = 1024
"""The most tokens a few-shot prompt may use: the examples' KV cache is copied for every batch, and
generation (eval.decision: generate) reruns them per question, so a CPU pays for each one."""
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
        return "turned off (eval.few_shot: 0; eval.few_shot=auto adds it)"
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


def prompt_window(cfg: RunConfig, context: int | None) -> tuple[int, str]:
    """(tokens, what they are) a few-shot prompt may use: the model's context up to WINDOW_CAP, never less
    than model.max_length. `context` is the model's max_position_embeddings (None: unknown)."""
    max_len = cfg.model.max_length
    if context is None or min(context, WINDOW_CAP) <= max_len:
        return max_len, f"model.max_length {max_len}"
    if context <= WINDOW_CAP:
        return context, f"the model's context of {context} tokens"
    return WINDOW_CAP, f"{WINDOW_CAP} tokens of the model's {context}-token context"


def model_context(model: Any) -> int | None:
    """The longest input a loaded model's positions allow (None: its config does not say)."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
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
    window: tuple[int, str] | None = None,
) -> Shots:
    """The examples for every prompt of this evaluation: k fits the window beside the longest input.

    `window`: (tokens, what they are) from prompt_window; model.max_length when not given.
    """
    template = cfg.data.prompt_template
    max_len, window_is = window or (cfg.model.max_length, f"model.max_length {cfg.model.max_length}")
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
        how = f"what fits {window_is} beside the longest input"
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
    window = prompt_window(cfg, model_context(model))
    shots = choose_shots(tok, train, records, cfg, fmt, labels, window)
    k = len(shots.train_rows)
    about: dict[str, Any] = {
        "k": k,
        "k_chosen": shots.how,
        "prompt_tokens": window[0],
        "setting": cfg.eval.few_shot,
        "drawn_from": "train",
        "seed": cfg.eval.seed,
        "train_rows": shots.train_rows,
    }
    if k == 0:
        about["skipped"] = (
            f"no train example fits {window[1]} beside the longest input"
            if train
            else "the train split holds no example to show"
        )
        return about, None
    about["name"] = f"few_shot_k{k}"
    shown = progress(about["name"])
    # Scoring and generation cut prompts to model.max_length: here the window is the limit instead.
    widened = cfg.model_copy(update={"model": cfg.model.model_copy(update={"max_length": window[0]})})
    if fmt == "classification":
        result = classify(model, tok, records, widened, labels, shown, shots.messages)
    else:
        result = answer_scores(model, tok, records, widened, labels, shown, shots.messages)
    about["seconds"] = round(time.perf_counter() - start, 2)
    return about, result
