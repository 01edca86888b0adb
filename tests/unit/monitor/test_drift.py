"""The drift tests on vectors and counts: found where planted, silent (at the stated rate) where not."""

from __future__ import annotations

from collections import Counter

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from tuneforge.monitor.drift import (
    _auc,
    categorical_drift,
    domain_classifier,
    farthest_inputs,
    mmd_test,
    numeric_drift,
)

KW = {"need": 100, "alpha": 0.05}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _clouds(seed: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Reference and live 'embeddings' (unit vectors, 16-d); live moved along one direction by `shift`."""
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(200, 16)) + 2.0
    live = rng.normal(size=(120, 16)) + 2.0
    live[:, 0] += shift
    return _unit(ref), _unit(live)


def test_embedding_drift_false_alarm_rate_over_20_seeds_is_at_most_10_percent() -> None:
    clf = [domain_classifier(*_clouds(s, 0.0), permutations=99, min_auc=0.5, **KW) for s in range(20)]
    mmd = [mmd_test(*_clouds(s, 0.0), permutations=99, **KW) for s in range(20)]
    assert sum(bool(r.drift) for r in clf) <= 2
    assert sum(bool(r.drift) for r in mmd) <= 2
    # The p-values are those of a valid test: spread over (0, 1], not piled near 0 or 1.
    assert 0.25 < float(np.median([r.p_value for r in clf])) < 0.75


def test_embedding_drift_is_found_on_a_planted_shift() -> None:
    for seed in range(5):
        ref, live = _clouds(seed, 1.5)
        clf = domain_classifier(ref, live, permutations=99, min_auc=0.55, **KW)
        mmd = mmd_test(ref, live, permutations=99, **KW)
        assert clf.drift and clf.p_value == 0.01 and clf.statistic is not None and clf.statistic > 0.7
        assert mmd.drift and mmd.p_value == 0.01


def test_the_vectorised_auc_is_sklearns() -> None:
    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=(40, 4)), 1)  # ties included
    labels = (rng.random((40, 4)) > 0.4).astype(float)
    expected = [roc_auc_score(labels[:, i], scores[:, i]) for i in range(4)]
    assert np.allclose(_auc(scores, labels, rankdata), expected)


def test_label_drift_on_a_changed_class_mix_small_and_large_samples() -> None:
    ref = Counter({"a": 300, "b": 300, "c": 300})
    changed = categorical_drift("labels", ref, Counter({"a": 150, "b": 30, "c": 20}), **KW)
    assert changed.test == "chi-squared" and changed.drift is True
    assert changed.p_value is not None and changed.p_value < 1e-20
    same = categorical_drift("labels", ref, Counter({"a": 70, "b": 64, "c": 66}), **KW)
    assert same.drift is False and same.p_value is not None and same.p_value > 0.5
    big = categorical_drift("labels", ref, Counter({"a": 1500, "b": 300, "c": 200}), **KW)
    assert big.test == "Jensen-Shannon distance (base 2)" and big.drift is True and big.p_value is None
    assert (
        round(big.statistic or 0, 4) == 0.3645
    )  # sqrt of the JS divergence of (1/3, 1/3, 1/3) and (.75, .15, .1), by hand
    # A label the training data never had counts as part of the mix.
    new = categorical_drift("labels", ref, Counter({"a": 60, "b": 60, "c": 60, "spam": 40}), **KW)
    assert new.drift is True


def test_a_too_small_sample_is_not_enough_data_never_no_drift() -> None:
    r = numeric_drift("prompt length", [1.0] * 500, [2.0] * 12, **KW)
    assert r.drift is None and r.p_value is None
    assert r.verdict == "not enough data (n = 12, need ≥ 100)"
    assert r.to_dict()["verdict"] == "not enough data (n = 12, need ≥ 100)"
    ref, live = _clouds(0, 3.0)
    assert domain_classifier(ref, live[:50], permutations=99, min_auc=0.5, **KW).verdict == (
        "not enough data (n = 50, need ≥ 100)"
    )


def test_numeric_drift_switches_to_an_effect_size_above_1000_values() -> None:
    rng = np.random.default_rng(0)
    ref = list(rng.normal(10, 2, 800))
    small = numeric_drift("len", ref, list(rng.normal(12, 2, 300)), **KW)
    assert small.test == "two-sample Kolmogorov-Smirnov" and small.drift is True
    tiny_shift = numeric_drift("len", ref, list(rng.normal(10.05, 2, 5000)), **KW)
    assert tiny_shift.test == "Wasserstein distance / reference std" and tiny_shift.drift is False


def test_the_farthest_live_input_is_shown_beside_its_nearest_training_input() -> None:
    ref = _unit(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    live = _unit(np.array([[0.9, 0.1, 0.0], [0.0, 0.1, 1.0], [0.1, 0.9, 0.0]]))
    rows = farthest_inputs(ref, live, ["order", "refund"], ["order?", "football", "refund!"], k=2)
    assert [(r["live"], r["nearest_training"]) for r in rows] == [("football", "refund"), ("order?", "order")]
    assert round(rows[0]["similarity"], 4) == 0.0995
