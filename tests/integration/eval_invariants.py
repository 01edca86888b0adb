"""What every evaluation must satisfy, whatever its task: each printed number inside its own interval, and
each paired verdict agreeing with its interval (issue 21). Shared by the chat, classification and regression
evaluation tests."""

from __future__ import annotations

from typing import Any

import pytest

from tuneforge.evaluation.report.evaluation import SHOWN, intervals

#: Table metrics that carry no interval (a ratio of label counts, a rate of parse failures, R²).
NO_INTERVAL = frozenset({"weighted_f1", "unparseable_rate", "r2"})


def _inside(value: float, ci: dict[str, Any], what: str) -> None:
    tol = 1e-9 * max(1.0, abs(value))
    assert ci["lo"] - tol <= value <= ci["hi"] + tol, f"{what}: {value} outside [{ci['lo']}, {ci['hi']}]"


def check_numbers(result: dict[str, Any]) -> int:
    """Assert the invariants on one eval JSON; returns how many numbers and rows were checked."""
    checked = 0
    for side in ("tuned", "base"):
        metrics = result.get(side)
        if metrics is None:
            continue
        shown = intervals(result, side)
        for metric in SHOWN:
            if metric not in metrics or metric in NO_INTERVAL or metrics[metric] is None:
                continue
            assert metric in shown, f"{side} {metric} is printed without an interval"
            _inside(float(metrics[metric]), shown[metric], f"{side} {metric}")
            if "value" in shown[metric]:
                assert shown[metric]["value"] == pytest.approx(metrics[metric]), f"{side} {metric}"
            checked += 1
        for metric, ci in result.get("ci", {}).get(side, {}).items():
            if ci.get("lo") is not None:
                _inside(float(ci["value"]), ci, f"{side} {metric} (ci)")
    for name, b in result.get("baselines", {}).items():  # a baseline's cell is its number and its interval
        for metric, ci in b.get("ci", {}).items():
            assert metric in b["metrics"], f"baseline {name}: an interval of {metric} without its number"
            assert ci["value"] == pytest.approx(b["metrics"][metric]), f"baseline {name} {metric}"
            _inside(float(b["metrics"][metric]), ci, f"baseline {name} {metric}")
            checked += 1
    tests = dict(result.get("paired", {}))
    tests.update(
        {f"baseline {k}": b["vs_tuned"] for k, b in result.get("baselines", {}).items() if "vs_tuned" in b}
    )
    for metric, p in tests.items():
        if p.get("lo") is None:
            continue
        excludes = p["lo"] > 0 or p["hi"] < 0
        assert (p["p_value"] < 0.05) == excludes, f"{metric}: p = {p['p_value']}, [{p['lo']}, {p['hi']}]"
        no_evidence = p["verdict"].startswith("no evidence of a difference")
        assert no_evidence != excludes, f"{metric}: {p['verdict']}"
        _inside(float(p["diff"]), p, f"{metric} difference")
        if metric in result.get("tuned", {}) and result.get("base"):
            assert p["diff"] == pytest.approx(result["tuned"][metric] - result["base"][metric]), metric
        if "metric" in p:  # a baseline's test: tuned - baseline on the metric it names
            b = result["baselines"][metric.removeprefix("baseline ")]
            assert p["diff"] == pytest.approx(result["tuned"][p["metric"]] - b["metrics"][p["metric"]]), (
                metric
            )
        checked += 1
    return checked
