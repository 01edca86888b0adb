"""Verdicts of a DPO run's answer metrics: fewer repeat loops is better; length is longer or shorter."""

from __future__ import annotations

from tuneforge.evaluation.answers import _verdict


def test_repetition_verdict_calls_the_model_with_fewer_loops_better() -> None:
    more = {"diff": 0.5, "lo": 0.2, "hi": 0.8, "p_value": 0.01}  # dpo - reference: dpo loops more
    assert (
        _verdict("repetition_rate", more)
        == "reference is better in repetition_rate by 0.5 [0.2, 0.8], p = 0.01"
    )
    fewer = {"diff": -0.5, "lo": -0.8, "hi": -0.2, "p_value": 0.01}
    assert (
        _verdict("repetition_rate", fewer) == "dpo is better in repetition_rate by 0.5 [0.2, 0.8], p = 0.01"
    )
    unclear = {"diff": 0.1, "lo": -0.1, "hi": 0.3, "p_value": 0.5}
    assert _verdict("repetition_rate", unclear) == (
        "no evidence of a difference in repetition_rate (diff +0.1 [-0.1, +0.3], p = 0.5)"
    )


def test_answer_length_verdict_says_longer_or_shorter() -> None:
    longer = {"diff": 3.0, "lo": 1.0, "hi": 5.0, "p_value": 0.01}
    assert _verdict("answer_words", longer) == "dpo answers are longer by 3 words [+1, +5], p = 0.01"
    shorter = {"diff": -2.0, "lo": -3.0, "hi": -1.0, "p_value": 0.02}
    assert _verdict("answer_words", shorter) == "dpo answers are shorter by 2 words [-3, -1], p = 0.02"
