"""ECE and Brier on a hand-computed example."""

from __future__ import annotations

import numpy as np
import pytest

from tuneforge.evaluation.calibration import brier_score, calibration, expected_calibration_error, softmax

PROBS = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
GOLD = [0, 1, 1, 1]


def test_ece_by_hand() -> None:
    # one example per bin: ¼ (|1 − .9| + |0 − .6| + |1 − .7| + |1 − .8|)
    assert expected_calibration_error(PROBS, GOLD) == pytest.approx(0.3)
    # two bins: (0.5, 1] holds all four, accuracy 3/4, confidence 0.75
    assert expected_calibration_error(PROBS, GOLD, n_bins=2) == pytest.approx(0.0)


def test_brier_by_hand() -> None:
    assert brier_score(PROBS, GOLD) == pytest.approx((0.02 + 0.72 + 0.18 + 0.08) / 4)
    assert brier_score(np.eye(3), [0, 1, 2]) == 0.0


def test_reliability_bins_and_softmax() -> None:
    bins = calibration(PROBS, GOLD)["bins"]
    assert [b["n"] for b in bins] == [0, 0, 0, 0, 0, 1, 1, 1, 1, 0]
    assert bins[5]["accuracy"] == 0.0 and bins[5]["confidence"] == pytest.approx(0.6)
    p = softmax([[0.0, np.log(3.0)], [-1000.0, -1000.0]])
    assert p == pytest.approx(np.array([[0.25, 0.75], [0.5, 0.5]]))
