"""Opt-in Fairlearn ThresholdOptimizer for binary classification heads, shown beside the plain decision.

Per-group thresholds are fitted on the validation split's head probabilities (so the test split stays
untouched) under a parity constraint, then applied to the test split; both group tables go in the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tuneforge.evaluation.fairness import group_report


def _precomputed_scores() -> Any:
    """A fitted sklearn "estimator" whose input is already the positive class probability (one column)."""
    from sklearn.base import BaseEstimator, ClassifierMixin

    class PrecomputedScores(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
        def fit(self, x: Any, y: Any) -> PrecomputedScores:
            self.classes_ = np.array([0, 1])  # a fitted attribute: sklearn's check_is_fitted looks for one
            return self

        def predict(self, x: Any) -> np.ndarray:
            return (np.asarray(x)[:, 0] > 0.5).astype(int)

        def predict_proba(self, x: Any) -> np.ndarray:
            p = np.asarray(x)[:, 0]
            return np.stack([1 - p, p], axis=1)

    return PrecomputedScores().fit(None, None)


def threshold_optimized(
    constraint: str,
    labels: list[str],
    val: tuple[Sequence[float], Sequence[str], Sequence[str]],
    test: tuple[Sequence[float], Sequence[str], Sequence[str]],
    *,
    min_group_size: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit on validation (P(labels[1]), gold, group); test predictions and group tables, before/after."""
    from fairlearn.postprocessing import ThresholdOptimizer

    def xy(
        part: tuple[Sequence[float], Sequence[str], Sequence[str]],
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        p, gold, groups = part
        return np.asarray(p, dtype=float)[:, None], np.asarray([labels.index(g) for g in gold]), list(groups)

    xv, yv, gv = xy(val)
    xt, yt, gt = xy(test)
    opt = ThresholdOptimizer(
        estimator=_precomputed_scores(), constraints=constraint, prefit=True, predict_method="predict_proba"
    )
    opt.fit(xv, yv, sensitive_features=gv)
    after = np.asarray(opt.predict(xt, sensitive_features=gt, random_state=seed)).astype(int)
    before = (xt[:, 0] > 0.5).astype(int)
    gold = [labels[i] for i in yt]
    out: dict[str, Any] = {"constraint": constraint, "fitted_on": "validation"}
    for name, pred in (("before", before), ("after", after)):
        pred_labels = [labels[i] for i in pred]
        correct = [float(a == b) for a, b in zip(pred_labels, gold, strict=True)]
        out[name] = {
            "accuracy": float(np.mean(correct)) if correct else float("nan"),
            "predictions": pred_labels,
            "groups": group_report(
                gt,
                {"accuracy": correct},
                y_true=gold,
                y_pred=pred_labels,
                labels=labels,
                min_group_size=min_group_size,
                n_boot=0,
            ),
        }
    return out
