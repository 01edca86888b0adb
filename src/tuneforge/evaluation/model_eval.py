"""One model on one list of records: metrics, per-example predictions and per-example scores, per format.

Base and tuned go through this same function with the same settings, so their numbers compare row by row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tuneforge.config import RunConfig
from tuneforge.data.records import parse_label
from tuneforge.evaluation.calibration import calibration, softmax
from tuneforge.evaluation.metrics import classification_metrics, loss_metrics, regression_metrics
from tuneforge.evaluation.scores import example_losses, head_logits, label_logprobs
from tuneforge.models.encode import encode_prompt, encoder, has_targets, pack_text, to_messages

Progress = Callable[[int, int], None]


@dataclass
class ModelEval:
    """What evaluating one model produced."""

    metrics: dict[str, Any]
    predictions: list[Any] = field(default_factory=list)
    """Per record: the predicted label / value / generated answer (empty for packed text)."""
    per_example: dict[str, list[float]] = field(default_factory=dict)
    """Per record, each per-example score (correct, squared_error, loss, bleu, token_f1, ...)."""
    probs: list[list[float]] | None = None
    label_predictions: list[str] = field(default_factory=list)
    """Classification: the label predicted per record ("<unparseable>": a generated answer named none)."""
    target_tokens: list[int] = field(default_factory=list)
    """Language models: target tokens per record (the weights of the per-token loss)."""


def prompt_and_reference(record: dict[str, Any], labels: list[str], template: str) -> tuple[list[Any], str]:
    """The conversation up to the last assistant turn, and that turn's text (the reference answer)."""
    messages = to_messages(record, labels, template)
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    reference = messages[last]["content"] if last < len(messages) else ""
    return messages[:last], str(reference)


def generation_settings(cfg: RunConfig) -> Any:
    from tuneforge.models.generate import GenerationSettings

    e = cfg.eval
    return GenerationSettings(
        max_new_tokens=e.max_new_tokens,
        temperature=e.temperature,
        top_p=e.top_p,
        stop=list(e.stop),
        seed=e.seed,
    )


def generate_answers(
    model: Any,
    tok: Any,
    records: list[dict[str, Any]],
    cfg: RunConfig,
    labels: list[str],
    on_progress: Progress | None = None,
    shots: Sequence[dict[str, str]] = (),
) -> tuple[list[str], list[str]]:
    """Each record's generated answer and its reference, with the shared generation engine.

    Classification (decision: generate) and chat/instruction evaluation both go through here, so a label is
    parsed from exactly the answer a chat run would be scored on. Prompts are cut from the left to fit.
    `shots`: example exchanges put before each question (the few-shot baseline).
    """
    from tuneforge.models.generate import generate

    pairs = [prompt_and_reference(r, labels, cfg.data.prompt_template) for r in records]
    room = max(cfg.model.max_length - cfg.eval.max_new_tokens, 1)
    ids = [encode_prompt(tok, with_shots(prompt, shots))[-room:] for prompt, _ in pairs]
    out = generate(
        model, tok, ids, generation_settings(cfg), batch_size=cfg.eval.batch_size, on_progress=on_progress
    )
    return [g.text.strip() for g in out], [ref for _, ref in pairs]


def with_shots(prompt: list[dict[str, str]], shots: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """The question's conversation with example exchanges before it (after its system message, if any)."""
    if not shots:
        return prompt
    system = prompt[:1] if prompt and prompt[0]["role"] == "system" else []
    return [*system, *shots, *prompt[len(system) :]]


def label_probabilities(
    model: Any,
    tok: Any,
    texts: list[str],
    cfg: RunConfig,
    labels: list[str],
    shots: Sequence[dict[str, str]] = (),
) -> list[list[float]] | None:
    """(N, K) probability of each label per text: the head's softmax, or label scoring's (eval.decision:
    score) for a language model; None when a language model decides by generating (no probabilities)."""
    bs, max_len = cfg.eval.batch_size, cfg.model.max_length
    if cfg.model.task == "classification":
        return softmax(head_logits(model, tok, texts, max_len, bs, cfg.data.truncation)).tolist()
    if cfg.eval.decision == "score":
        scores = label_logprobs(
            model, tok, texts, labels, cfg.data.prompt_template, max_len, bs, cfg.data.truncation, shots
        )
        return softmax(scores).tolist()
    return None


def classify(
    model: Any,
    tok: Any,
    records: list[dict[str, Any]],
    cfg: RunConfig,
    labels: list[str],
    progress: Progress | None,
    shots: Sequence[dict[str, str]] = (),
) -> ModelEval:
    """Classification by a head or a language model's decision rule (eval.decision), optionally few-shot."""
    texts = [str(r.get("text", "")) for r in records]
    gold = [str(r["label"]) for r in records]
    extra: dict[str, Any] = {}
    probs = label_probabilities(model, tok, texts, cfg, labels, shots)
    if probs is not None:
        pred: list[Any] = [labels[max(range(len(labels)), key=row.__getitem__)] for row in probs]
        outputs = None
    else:
        outputs, _ = generate_answers(model, tok, records, cfg, labels, progress, shots)
        pred = [parse_label(o, labels) for o in outputs]
        extra["unparseable_rate"] = sum(p is None for p in pred) / max(len(pred), 1)
    decided = [p if p is not None else "<unparseable>" for p in pred]
    metrics = classification_metrics(gold, decided, labels)
    metrics.update(extra)
    if probs is not None and records:
        cal = calibration(np.asarray(probs), [labels.index(g) for g in gold])
        metrics.update(ece=cal["ece"], brier=cal["brier"], reliability=cal["bins"])
    shown = outputs if outputs is not None else pred
    per = {"correct": [float(p == g) for p, g in zip(pred, gold, strict=True)]}
    if probs is not None and records:
        # Brier is a mean over examples, so its per-example terms give it an interval and a paired test too.
        onehot = np.eye(len(labels))[[labels.index(g) for g in gold]]
        per["brier"] = ((np.asarray(probs) - onehot) ** 2).sum(axis=1).tolist()
    return ModelEval(metrics, shown, per, probs, decided)


def _regress(model: Any, tok: Any, records: list[dict[str, Any]], cfg: RunConfig) -> ModelEval:
    texts = [str(r.get("text", "")) for r in records]
    values = [
        row[0]
        for row in head_logits(
            model, tok, texts, cfg.model.max_length, cfg.eval.batch_size, cfg.data.truncation
        )
    ]
    gold = [float(r["label"]) for r in records]
    per = {
        "squared_error": [(v - g) ** 2 for v, g in zip(values, gold, strict=True)],
        "abs_error": [abs(v - g) for v, g in zip(values, gold, strict=True)],
    }
    return ModelEval(regression_metrics(gold, values), values, per)


def _language_model(
    model: Any,
    tok: Any,
    records: list[dict[str, Any]],
    cfg: RunConfig,
    fmt: str,
    labels: list[str],
    progress: Progress | None,
) -> ModelEval:
    """Loss and perplexity per target token; for chat/instruction also generated answers and their scores."""
    pad, bs, max_len = int(tok.pad_token_id), cfg.eval.batch_size, cfg.model.max_length
    if fmt == "text":  # packed into full blocks, as in training
        examples = pack_text([r["text"] for r in records], tok, max_len)
        losses, counts = example_losses(model, examples, pad, bs)
        return ModelEval(loss_metrics(losses, counts))
    encode = encoder(
        tok, task="causal-lm", fmt=fmt, labels=labels, max_length=max_len, template=cfg.data.prompt_template
    )
    examples = [encode(r) for r in records]
    kept = [i for i, e in enumerate(examples) if has_targets(e)]
    kept_losses, kept_counts = example_losses(model, [examples[i] for i in kept], pad, bs)
    losses, counts = [math.nan] * len(records), [0] * len(records)
    for i, loss, count in zip(kept, kept_losses, kept_counts, strict=True):
        losses[i], counts[i] = loss, count
    metrics = loss_metrics(kept_losses, kept_counts)
    per = {"loss": [loss / c if c else math.nan for loss, c in zip(losses, counts, strict=True)]}
    out = ModelEval(metrics, [], per, target_tokens=counts)
    if fmt in ("chat", "instruction") and cfg.eval.generate:
        answered = answer_scores(model, tok, records, cfg, labels, progress)
        metrics.update(answered.metrics)
        per.update(answered.per_example)
        out.predictions = answered.predictions
    return out


def answer_scores(
    model: Any,
    tok: Any,
    records: list[dict[str, Any]],
    cfg: RunConfig,
    labels: list[str],
    progress: Progress | None,
    shots: Sequence[dict[str, str]] = (),
) -> ModelEval:
    """Chat/instruction: generated answers and their scores against the references (optionally few-shot)."""
    from tuneforge.evaluation.text_metrics import PER_EXAMPLE, corpus_scores, per_example_scores

    answers, refs = generate_answers(model, tok, records, cfg, labels, progress, shots)
    metrics = corpus_scores(answers, refs)
    scores = per_example_scores(answers, refs)
    per = {name: [row[name] for row in scores] for name in PER_EXAMPLE}
    if cfg.eval.semantic_similarity:
        from tuneforge.evaluation.text_metrics import semantic_similarity

        per["semantic_similarity"] = semantic_similarity(answers, refs)
        metrics["semantic_similarity"] = sum(per["semantic_similarity"]) / max(len(answers), 1)
    return ModelEval(metrics, answers, per)


def evaluate_model(
    model: Any,
    tok: Any,
    records: list[dict[str, Any]],
    cfg: RunConfig,
    fmt: str,
    labels: list[str],
    progress: Progress | None = None,
) -> ModelEval:
    """Metrics, predictions and per-example scores of one model on one list of records."""
    if fmt == "classification" and cfg.model.task in ("classification", "causal-lm"):
        return classify(model, tok, records, cfg, labels, progress)
    if fmt == "regression":
        return _regress(model, tok, records, cfg)
    if fmt == "preference" and cfg.model.task == "causal-lm":
        return _preferences(model, tok, records, cfg)
    return _language_model(model, tok, records, cfg, fmt, labels, progress)


def _preferences(model: Any, tok: Any, records: list[dict[str, Any]], cfg: RunConfig) -> ModelEval:
    """Preference pairs (a DPO run): how often the model finds the chosen answer the more likely one.

    Any model gets `accuracy` and `logp_margin` from the mean log-probability per answer token (summed, a long
    chosen answer would lose to a short rejected one whatever the model prefers), so base and tuned compare
    row by row; a model with an adapter also gets DPO's reward metrics against its adapter-off reference.
    """
    import torch

    from tuneforge.models.encode import IGNORE, encode_preference
    from tuneforge.models.lm_loss import example_logprobs
    from tuneforge.models.preference import pair_batch, preference_metrics, reference_logprobs

    pairs = [
        encode_preference(
            tok,
            r["prompt"],
            r["chosen"],
            r["rejected"],
            max_length=cfg.model.max_length,
            truncation=cfg.data.truncation,
        )
        for r in records
    ]
    has_reference = hasattr(model, "disable_adapter")
    model.eval()
    margins: list[float] = []
    rewards: list[tuple[float, float]] = []
    for i in range(0, len(pairs), cfg.eval.batch_size):
        part = pairs[i : i + cfg.eval.batch_size]
        batch = pair_batch(part, int(tok.pad_token_id), packed=False)
        batch = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        p = batch["pairs"]
        with torch.no_grad():
            logp = example_logprobs(model, batch)  # (2P,) summed over each answer's tokens
        tokens = [
            max(sum(y != IGNORE for y in e[side]["labels"][1:]), 1)
            for side in ("chosen", "rejected")
            for e in part
        ]
        mean = logp.cpu() / torch.tensor(tokens, dtype=torch.float32)
        margins += (mean[:p] - mean[p:]).tolist()
        if has_reference:
            reward = (cfg.train.dpo_beta * (logp - reference_logprobs(model, batch))).tolist()
            rewards += list(zip(reward[:p], reward[p:], strict=True))
    correct = [float(m > 0) for m in margins]
    n = len(pairs)
    metrics: dict[str, Any] = {
        "accuracy": sum(correct) / max(n, 1),
        "logp_margin": sum(margins) / max(n, 1),
        "pairs": n,
    }
    if has_reference:
        sums = [sum(c for c, _ in rewards), sum(r for _, r in rewards), sum(float(c > r) for c, r in rewards)]
        metrics.update({k: v for k, v in preference_metrics(0.0, sums, n).items() if k != "loss"})
    return ModelEval(metrics, [], {"correct": correct, "logp_margin": margins})
