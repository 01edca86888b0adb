"""Model pre-labels: a finished classification run's predicted label and its confidence for unlabelled texts.

The probabilities are `model_eval.label_probabilities`, the ones `tuneforge evaluate` decides with, so a
pre-label is what the run's evaluation would have predicted for that text. A language model that decides by
generating has no probabilities; its pre-labels use label scoring (eval.decision: score) instead.
Annotation sorts by the confidence ("uncertain first": active learning).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.artifacts import RunDir
from tuneforge.errors import TuneforgeError

CHUNK = 64  # texts per call: the caller saves each chunk, so a long job shows progress and loses little


@dataclass(frozen=True)
class PreLabel:
    label: str
    confidence: float  # the predicted label's probability
    probabilities: dict[str, float]


def classification_labels(run: RunDir) -> list[str]:
    """The labels a finished classification run predicts, or a TuneforgeError saying why it cannot."""
    manifest = run.manifest
    labels = [str(x) for x in manifest.get("labels") or []]
    fmt = (manifest.get("dataset") or {}).get("format")
    if not labels or (manifest.get("task") != "classification" and fmt != "classification"):
        raise TuneforgeError(
            f"run {run.path} is not a classification run (it has no labels to predict)",
            where="run",
            fix="pick a run trained on a classification dataset",
        )
    if manifest.get("status") != "completed":
        raise TuneforgeError(
            f"run {run.path} has not finished training (status: {manifest.get('status', 'unknown')})",
            where="run",
            fix="pick a completed run",
        )
    return labels


def prelabel_chunks(run_dir: str | Path, texts: list[str], chunk: int = CHUNK) -> Iterator[list[PreLabel]]:
    """The run's pre-labels of `texts`, `chunk` at a time, in order (the model is loaded once)."""
    from tuneforge.config import with_overrides
    from tuneforge.evaluation.model_eval import label_probabilities
    from tuneforge.models.runs import load_tuned, run_config

    run = RunDir.open(run_dir)
    labels = classification_labels(run)
    cfg = run_config(run)
    if cfg.model.task != "classification" and cfg.eval.decision != "score":
        cfg = with_overrides(cfg, ["eval.decision=score"], sections=("eval",), command="pre-labelling")
    model, tok = load_tuned(run, cfg)
    for start in range(0, len(texts), chunk):
        probs = label_probabilities(model, tok, texts[start : start + chunk], cfg, labels)
        assert probs is not None  # a head, or label scoring (set above)
        yield [_prelabel(labels, row) for row in probs]


def predict_labels(
    run_dir: str | Path, texts: list[str], on_chunk: Callable[[int, list[PreLabel]], Any] | None = None
) -> list[PreLabel]:
    """Every text's pre-label; `on_chunk(first_index, prelabels)` after each chunk (to save as it goes)."""
    out: list[PreLabel] = []
    for got in prelabel_chunks(run_dir, texts):
        if on_chunk is not None:
            on_chunk(len(out), got)
        out += got
    return out


def _prelabel(labels: list[str], probs: list[float]) -> PreLabel:
    best = max(range(len(labels)), key=probs.__getitem__)
    return PreLabel(labels[best], float(probs[best]), dict(zip(labels, map(float, probs), strict=True)))
