"""Agreement statistics against textbook examples."""

from __future__ import annotations

import numpy as np
import pytest

from tuneforge.evaluation.agreement import agreement, cohen_kappa, krippendorff_alpha


def test_cohen_kappa_wikipedia_example() -> None:
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 → p_o = 0.7, p_e = 0.5, κ = 0.4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_krippendorff_alpha_by_hand() -> None:
    # items (a,a) (a,b) (b,b) (b,b): D_o = 2/8, D_e = 2·3·5/(8·7), α = 1 − D_o/D_e = 16/30
    assert krippendorff_alpha([["a", "a", "b", "b"], ["a", "b", "b", "b"]]) == pytest.approx(16 / 30)


def test_krippendorff_alpha_textbook_with_missing_values() -> None:
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 3 observers, 15 units, gaps.
    n = None
    data = [
        [n, n, n, n, n, 3, 4, 1, 2, 1, 1, 3, 3, n, 3],
        [1, n, 2, 1, 3, 3, 4, 3, n, n, n, n, n, n, n],
        [n, n, 2, 1, 3, 4, 4, n, 2, 1, 1, 3, 3, n, 4],
    ]
    assert krippendorff_alpha(data) == pytest.approx(0.691, abs=5e-4)
    assert krippendorff_alpha(data, level="interval") == pytest.approx(0.811, abs=5e-4)


def test_agreement_picks_the_statistic_by_rater_count() -> None:
    two = agreement({"r1": {"1": "A", "2": "B", "3": "A"}, "r2": {"1": "A", "2": "B", "3": "B"}})
    assert two["cohen_kappa"] == pytest.approx(cohen_kappa("ABA", "ABB"))
    three = agreement({f"r{k}": {"1": "A", "2": "B"} for k in range(3)})
    assert "cohen_kappa" not in three and three["krippendorff_alpha"] == pytest.approx(1.0)
    assert not np.isnan(two["krippendorff_alpha"])
