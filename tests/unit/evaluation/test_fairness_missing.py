"""No group value is not a group: '', blanks, NaN, None are one "(missing)" group, reported apart."""

from __future__ import annotations

import pytest

from tuneforge.data.records import group_value
from tuneforge.evaluation.fairness import group_report

MISSING = ["", "  ", "NaN", "nan", "None", float("nan"), None]


def test_every_spelling_of_no_value_is_one_missing_group_left_out_of_the_gap() -> None:
    groups = ["a"] * 20 + ["b"] * 20 + [MISSING[i % len(MISSING)] for i in range(14)]
    scores = [1.0] * 20 + [0.8] * 20 + [0.0] * 14  # the missing rows would double the gap if ranked
    rep = group_report(groups, {"accuracy": scores}, n_boot=0)
    assert rep["counts"] == {"a": 20, "b": 20, "(missing)": 14}
    m = rep["metrics"]["accuracy"]
    assert set(m["by_group"]) == {"a", "b"} and m["gap"] == pytest.approx(0.2)
    assert rep["too_small"] == []
    assert rep["missing"] == {"count": 14, "values": {"accuracy": 0.0}}
    assert rep["warnings"] == [
        "14 of 54 examples have no group value ('', blank, NaN or None): reported apart as (missing) "
        "(accuracy 0) and left out of the gaps (eval.rank_missing_group: true ranks them as a group)"
    ]
    ranked = group_report(groups, {"accuracy": scores}, n_boot=0, rank_missing=True)
    assert set(ranked["metrics"]["accuracy"]["by_group"]) == {"a", "b", "(missing)"}
    assert ranked["metrics"]["accuracy"]["gap"] == pytest.approx(1.0) and "missing" not in ranked


def test_group_value_keeps_real_values() -> None:
    assert [group_value(v) for v in MISSING] == ["(missing)"] * len(MISSING)
    assert [group_value(v) for v in (" north ", "NA", 0, "Nancy")] == ["north", "NA", "0", "Nancy"]
