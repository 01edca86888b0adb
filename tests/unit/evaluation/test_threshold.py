"""ThresholdOptimizer on synthetic scores: a group scored too low gets its own threshold, parity improves."""

from __future__ import annotations

import numpy as np
import pytest

from tuneforge.evaluation.threshold import threshold_optimized

LABELS = ["no", "yes"]


def scored(n: int, seed: int) -> tuple[list[float], list[str], list[str]]:
    rng = np.random.default_rng(seed)
    groups = ["a" if i % 2 else "b" for i in range(n)]
    gold = [LABELS[int(x)] for x in rng.integers(0, 2, n)]
    # a calibrated-looking score for group a; group b's scores are squashed below 0.5 (never selected)
    p = [float(np.clip((0.75 if y == "yes" else 0.25) + rng.normal(0, 0.1), 0, 1)) for y in gold]
    p = [x * 0.6 if g == "b" else x for x, g in zip(p, groups, strict=True)]
    return p, gold, groups


def test_threshold_optimizer_closes_the_selection_gap() -> None:
    out = threshold_optimized("demographic_parity", LABELS, scored(400, 0), scored(400, 1), min_group_size=10)
    before, after = out["before"], out["after"]
    test_p, gold, groups = scored(400, 1)
    assert before["predictions"] == ["yes" if x > 0.5 else "no" for x in test_p]
    dp_before = before["groups"]["parity"]["yes"]["demographic_parity_difference"]
    dp_after = after["groups"]["parity"]["yes"]["demographic_parity_difference"]
    sel_b = np.mean([p == "yes" for p, g in zip(before["predictions"], groups, strict=True) if g == "b"])
    assert sel_b < 0.1 and dp_before > 0.3  # group b is almost never selected by the 0.5 threshold
    assert dp_after < 0.1
    assert after["accuracy"] > before["accuracy"]
    assert after["accuracy"] == pytest.approx(
        np.mean([p == y for p, y in zip(after["predictions"], gold, strict=True)])
    )
