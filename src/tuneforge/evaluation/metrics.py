"""Metrics from predictions: classification (accuracy, macro-F1, per class, confusion), regression, and a
language model's loss per target token with its perplexity (computed here only)."""

from __future__ import annotations

import math
from typing import Any


def classification_metrics(gold: list[str], pred: list[str], labels: list[str]) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    p, r, f, support = precision_recall_fscore_support(gold, pred, labels=labels, zero_division=0)
    return {
        "n": len(gold),
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_f1": float(f1_score(gold, pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(gold, pred, labels=labels, average="weighted", zero_division=0)),
        "per_class": {
            label: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "confusion_matrix": {
            "labels": labels,
            "rows_gold_cols_pred": confusion_matrix(gold, pred, labels=labels).tolist(),
        },
    }


def regression_metrics(gold: list[float], pred: list[float]) -> dict[str, Any]:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    mse = float(mean_squared_error(gold, pred))
    out: dict[str, Any] = {
        "n": len(gold),
        "mse": mse,
        "rmse": math.sqrt(mse),
        "mae": float(mean_absolute_error(gold, pred)),
        "r2": float(r2_score(gold, pred)) if len(gold) > 1 else float("nan"),
    }
    return out


def perplexity(loss: float) -> float:
    """exp of a loss per token, capped so that a diverged model's loss prints a number rather than inf."""
    return math.exp(min(loss, 50.0))


def loss_metrics(losses: list[float], counts: list[int]) -> dict[str, Any]:
    """Loss per target token (from each example's summed loss and its target tokens) and its perplexity."""
    n = sum(counts)
    loss = sum(losses) / max(n, 1)
    return {"loss": loss, "perplexity": perplexity(loss), "target_tokens": n}
