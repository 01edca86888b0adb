"""Whether the model's confidence can be trusted: expected calibration error and the Brier score.

Probabilities come from a classification head's softmax, or for label scoring on a causal LM from the softmax
over the labels' answer log-likelihoods. ECE is hand-written (equal-width bins, a few numpy lines; sklearn has
only the reliability curve); the multi-class Brier score is the mean squared distance to the one-hot gold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def softmax(scores: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by each row's max so large log-likelihood gaps do not overflow."""
    x = np.asarray(scores, dtype=float)  # (N, K)
    x = x - x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def _bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins (lo, hi]; rounded first, so 0.6 · 10 = 6.000000000000001 stays in (0.5, 0.6]."""
    return np.clip(np.ceil(np.round(conf * n_bins, 9)).astype(int) - 1, 0, n_bins - 1)


def expected_calibration_error(
    probs: np.ndarray, gold: Sequence[int] | np.ndarray, n_bins: int = 10
) -> float:
    """Σ_bins (|bin| / N) · |accuracy(bin) − mean confidence(bin)| over the top-class confidence."""
    p = np.asarray(probs, dtype=float)
    y = np.asarray(gold)
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    correct = (pred == y).astype(float)
    idx = _bin_index(conf, n_bins)
    ece = 0.0
    for b in range(n_bins):
        inside = idx == b
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return float(ece)


def brier_score(probs: np.ndarray, gold: Sequence[int] | np.ndarray) -> float:
    """Mean over examples of Σ_k (p_k − 1[k = gold])² (0 is perfect, 2 the worst)."""
    p = np.asarray(probs, dtype=float)
    onehot = np.eye(p.shape[1])[np.asarray(gold)]
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def calibration(probs: np.ndarray, gold: Sequence[int] | np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """ECE, Brier and the reliability table (per bin: count, accuracy, mean confidence) for the report."""
    p = np.asarray(probs, dtype=float)
    y = np.asarray(gold)
    conf, correct = p.max(axis=1), (p.argmax(axis=1) == y)
    idx = _bin_index(conf, n_bins)
    bins = [
        {
            "lo": b / n_bins,
            "hi": (b + 1) / n_bins,
            "n": int((idx == b).sum()),
            "accuracy": float(correct[idx == b].mean()) if (idx == b).any() else None,
            "confidence": float(conf[idx == b].mean()) if (idx == b).any() else None,
        }
        for b in range(n_bins)
    ]
    return {
        "ece": expected_calibration_error(p, y, n_bins),
        "brier": brier_score(p, y),
        "bins": bins,
    }
