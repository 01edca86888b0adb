"""The promotion rule: better by retrain.metric, by at least min_gain, at significance alpha."""

from __future__ import annotations

from typing import Any

import pytest

from tuneforge.config import config_from_dict
from tuneforge.errors import TuneforgeError
from tuneforge.retrain.compare import decide


def result(metric: str, champion: float, challenger: float, p: float) -> dict[str, Any]:
    diff = challenger - champion
    test = {"diff": diff, "lo": diff - 0.05, "hi": diff + 0.05, "p_value": p, "n": 80}
    return {"champion": {metric: champion}, "challenger": {metric: challenger}, "paired": {metric: test}}


def decision(r: dict[str, Any], **retrain: Any) -> tuple[bool, str]:
    d = decide(r, config_from_dict({"retrain": retrain}))
    return d.promote, d.reason


def test_each_reason_to_keep_the_champion_and_the_one_to_promote() -> None:
    assert decision(result("accuracy", 0.8, 0.9, 0.01)) == (
        True,
        "the challenger is better: accuracy 0.9 (challenger) vs 0.8 (champion), gain 0.1 ≥ retrain.min_gain "
        "0, p = 0.01 < retrain.alpha 0.05",
    )
    assert decision(result("accuracy", 0.8, 0.75, 0.01)) == (
        False,
        "the challenger is not better: accuracy 0.75 (challenger) vs 0.8 (champion)",
    )
    assert decision(result("accuracy", 0.8, 0.9, 0.01), min_gain=0.2) == (
        False,
        "the gain in accuracy, 0.1, is below retrain.min_gain 0.2 "
        "(accuracy 0.9 (challenger) vs 0.8 (champion))",
    )
    assert decision(result("accuracy", 0.8, 0.9, 0.03), alpha=0.01) == (
        False,
        "the gain is not significant: accuracy 0.9 (challenger) vs 0.8 (champion), "
        "p = 0.03 ≥ retrain.alpha 0.01",
    )


def test_lower_is_better_metrics_and_the_metric_named() -> None:
    r = {**result("loss", 2.0, 1.5, 0.001)}
    r["champion"]["accuracy"] = r["challenger"]["accuracy"] = 0.5  # the headline, were none named
    promote, reason = decision(r, metric="loss")
    assert promote and reason.startswith(
        "the challenger is better: loss 1.5 (challenger) vs 2 (champion), gain 0.5"
    )
    assert decision(result("loss", 1.5, 2.0, 0.001))[0] is False
    with pytest.raises(
        TuneforgeError, match=r"the paired test has no metric 'bleu' for this evaluation \(it has: loss\)"
    ):
        decide(result("loss", 1.5, 2.0, 0.001), config_from_dict({"retrain": {"metric": "bleu"}}))
    with pytest.raises(TuneforgeError, match="length_ratio has no better direction"):
        decide(
            result("length_ratio", 1.0, 1.1, 0.001), config_from_dict({"retrain": {"metric": "length_ratio"}})
        )


def with_live(r: dict[str, Any], live: dict[str, Any] | None) -> dict[str, Any]:
    return {**r, "live": None if live is None else {**live, "n": 80, "judged": True}}


def test_the_live_held_out_data_can_veto_a_promotion_but_never_make_one() -> None:
    frozen_better = result("accuracy", 0.8, 0.9, 0.01)
    # Significantly worse on live data: kept, and the reason says both sides.
    d = decide(with_live(frozen_better, result("accuracy", 0.7, 0.5, 0.02)), config_from_dict({}))
    assert (d.promote, d.live["blocks"], d.live["n"]) == (False, True, 80)  # type: ignore[index]
    assert d.reason == (
        "the challenger is better on the frozen test split (accuracy 0.9 (challenger) vs 0.8 (champion)) but "
        "significantly worse on the live held-out data: champion is better in accuracy by 0.2 [0.15, 0.25], "
        "p = 0.02"
    )
    # Worse on live data but not significantly: promoted; the live verdict says the data cannot tell.
    d = decide(with_live(frozen_better, result("accuracy", 0.7, 0.65, 0.3)), config_from_dict({}))
    assert d.promote and not d.live["blocks"]  # type: ignore[index]
    assert d.live["verdict"].startswith("no evidence of a difference in accuracy")  # type: ignore[index]
    # Better on live data alone never promotes.
    frozen_worse = result("accuracy", 0.8, 0.75, 0.01)
    assert (
        decide(with_live(frozen_worse, result("accuracy", 0.5, 0.9, 0.01)), config_from_dict({})).promote
        is False
    )
    # Too few held-out examples: said so, and the frozen test split alone decides.
    few = {**frozen_better, "live": {"n": 7, "judged": False, "reason": "not enough data (n = 7, need ≥ 30)"}}
    d = decide(few, config_from_dict({}))
    assert d.promote and d.live == {
        "n": 7,
        "judged": False,
        "verdict": "not enough data (n = 7, need ≥ 30)",
        "blocks": False,
    }
    assert decide(frozen_better, config_from_dict({})).live is None  # no live corrections at all
