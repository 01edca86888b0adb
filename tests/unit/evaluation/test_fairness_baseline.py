"""Fairlearn group tables against a direct computation; the classical baselines on a separable split."""

from __future__ import annotations

import numpy as np
import pytest

from tests.tiny import sentiment_rows
from tuneforge.evaluation.baseline import baselines
from tuneforge.evaluation.fairness import group_report, widened_gaps

LABELS = ["no", "yes"]


def synthetic(seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    rng = np.random.default_rng(seed)
    groups = ["a"] * 40 + ["b"] * 30 + ["tiny"] * 3
    gold = [LABELS[int(x)] for x in rng.integers(0, 2, len(groups))]
    pred = [
        g if rng.random() < (0.9 if grp == "a" else 0.6) else LABELS[1 - LABELS.index(g)]
        for g, grp in zip(gold, groups, strict=True)
    ]
    return groups, gold, pred


def test_group_report_matches_a_direct_computation() -> None:
    groups, gold, pred = synthetic()
    correct = [float(g == p) for g, p in zip(gold, pred, strict=True)]
    rep = group_report(groups, {"accuracy": correct}, y_true=gold, y_pred=pred, labels=LABELS, n_boot=50)
    assert rep["too_small"] == ["tiny"] and rep["counts"]["tiny"] == 3
    acc = {g: np.mean([c for c, x in zip(correct, groups, strict=True) if x == g]) for g in ("a", "b")}
    m = rep["metrics"]["accuracy"]
    assert set(m["by_group"]) == {"a", "b"}  # the tiny group is not ranked
    assert m["by_group"]["a"]["value"] == pytest.approx(acc["a"])
    assert m["gap"] == pytest.approx(abs(acc["a"] - acc["b"]))
    assert m["ratio"] == pytest.approx(min(acc.values()) / max(acc.values()))
    assert m["by_group"]["a"]["lo"] <= acc["a"] <= m["by_group"]["a"]["hi"]
    # demographic parity: selection rate of "yes" per group
    sel = {g: np.mean([p == "yes" for p, x in zip(pred, groups, strict=True) if x == g]) for g in ("a", "b")}
    dp = rep["parity"]["yes"]["demographic_parity_difference"]
    assert dp == pytest.approx(abs(sel["a"] - sel["b"]))
    assert list(rep["parity"]) == ["yes"]  # binary: one positive label, not one-vs-rest


def test_widened_gap_warns() -> None:
    groups, _, _ = synthetic()
    fair = [1.0] * len(groups)
    unfair = [1.0 if g == "a" else 0.5 for g in groups]
    base = group_report(groups, {"token_f1": fair}, n_boot=0)
    tuned = group_report(groups, {"token_f1": unfair}, n_boot=0)
    assert widened_gaps(base, tuned) == ["tuning widened the token_f1 gap between groups from 0 to 0.5"]
    assert widened_gaps(tuned, base) == []


def test_one_group_is_nothing_to_compare() -> None:
    rep = group_report(["a"] * 20, {"x": [1.0] * 20})
    assert rep["metrics"] == {} and "nothing to compare" in rep["note"]


def test_baselines_on_a_keyword_task() -> None:
    rows = sentiment_rows(120)
    train, test = rows[:90], [*rows[90:], rows[0] | {"label": "negative"}]
    out = baselines("classification", train, test, ["negative", "neutral", "positive"])
    majority = out["majority"]["metrics"]
    # DummyClassifier(most_frequent) breaks the 30/30/30 tie by the sorted first label
    assert out["majority"]["predictions"] == ["negative"] * len(test)
    assert majority["accuracy"] == pytest.approx(sum(r["label"] == "negative" for r in test) / len(test))
    assert out["tfidf_logreg"]["metrics"]["accuracy"] >= 0.9
    reg = baselines(
        "regression",
        [{"text": f"w{i % 2}", "label": float(i % 2)} for i in range(20)],
        [{"text": "w1", "label": 1.0}, {"text": "w0", "label": 0.0}],
        [],
    )
    assert reg["mean"]["predictions"] == [0.5, 0.5]
    assert reg["tfidf_ridge"]["metrics"]["mae"] < 0.5
    assert baselines("chat", rows, rows, []) == {}
