"""LLM-as-judge against a real (tiny) HTTP endpoint: verdicts, both orders, errors counted, dead endpoints."""

from __future__ import annotations

import socket

import pytest

from tests.unit.evaluation.judge_stub import judge_server
from tuneforge.config import JudgeConfig
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation.judge import judge_rows, summary_lines

ROWS = [
    {"id": 0, "input": "q0", "reference": "r", "tuned": "GOOD answer", "base": "meh"},
    {"id": 1, "input": "q1", "reference": "r", "tuned": "GOOD too", "base": "meh"},
    {"id": 2, "input": "q2", "reference": "r", "tuned": "meh", "base": "GOOD one"},
    {"id": 3, "input": "q3", "reference": "r", "tuned": "meh", "base": "also meh"},
    {"id": 4, "input": "q4", "reference": "r", "tuned": "GARBAGE", "base": "meh"},
]


def test_single_and_pairwise_verdicts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUDGE_KEY", "sekret")
    with judge_server() as stub:
        cfg = JudgeConfig(base_url=stub["url"], model="stub", api_key_env="JUDGE_KEY")
        summary, verdicts = judge_rows(cfg, ROWS)
    assert stub["requests"] == 5 * 4 and set(stub["auth"]) == {"Bearer sekret"}
    assert stub["max_tokens"] == [256] * 20  # eval.judge.max_tokens, on every request
    assert [v["single"] for v in verdicts] == [
        {"tuned": 9.0, "base": 2.0},
        {"tuned": 9.0, "base": 2.0},
        {"tuned": 2.0, "base": 9.0},
        {"tuned": 2.0, "base": 2.0},
        {"tuned": None, "base": 2.0},
    ]
    # the position-biased [[A]] [[A]] on row 3 is a tie; row 4 (GARBAGE) still gets a pairwise verdict
    assert [v["pairwise"]["outcome"] for v in verdicts] == ["win", "win", "loss", "tie", "tie"]
    assert summary["errors"] == 1 and summary["examples_with_errors"] == 1
    assert "no verdict" in summary["first_error"]
    assert summary["single_tuned"]["value"] == pytest.approx((9 + 9 + 2 + 2) / 4)
    assert summary["pairwise"]["win"]["value"] == pytest.approx(2 / 5)
    assert summary["pairwise"]["order_consistent_rate"] == pytest.approx(3 / 5)
    assert "sekret" not in repr(summary) + repr(verdicts)


def test_a_dead_endpoint_is_counted_not_raised() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    cfg = JudgeConfig(base_url=f"http://127.0.0.1:{port}/v1", model="stub", timeout_s=5)
    summary, verdicts = judge_rows(cfg, ROWS)
    assert summary["examples_with_errors"] == 5
    assert summary["errors"] == 5 * 4
    assert sum("connection" in e for v in verdicts for e in v["errors"]) == 3  # then the rest is skipped
    assert "pairwise" not in summary and "single_tuned" not in summary


def test_a_missing_key_or_rubric_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(TuneforgeError, match="NO_SUCH_KEY is not set"):
        judge_rows(JudgeConfig(base_url="http://x/v1", model="m", api_key_env="NO_SUCH_KEY"), ROWS)
    with pytest.raises(TuneforgeError, match=r"unknown rubric 'nope\.txt'"):
        judge_rows(JudgeConfig(base_url="http://x/v1", model="m", rubric="nope.txt"), ROWS)


def test_the_summary_a_terminal_prints_when_every_request_succeeds() -> None:
    with judge_server() as stub:
        cfg = JudgeConfig(base_url=stub["url"], model="stub", max_tokens=40)
        summary, _ = judge_rows(cfg, ROWS)
    assert set(stub["max_tokens"]) == {40}
    lines = summary_lines(summary)
    assert lines[0] == (
        "judge stub (helpfulness rubric): 5 examples, 1 with failures "
        "(1 failed requests or answers without a verdict)"
    )
    assert lines[1].startswith("  rating 1-10, tuned: 5.5 [")
    assert lines[3].startswith("  no evidence of a difference in judge_rating")
    assert lines[4].startswith("  pairwise, tuned vs base: win 0.4 [")
    assert lines[4].endswith("; verdicts that survive swapping the order: 60%")
    assert lines[5] == "  first error: no verdict in the judge's answer: 'I would rather not say.'"


def test_a_judge_whose_every_reply_is_cut_off_fails_per_example_and_says_so() -> None:
    """Issue 19: a cut-off JSON reply aborted the whole evaluation, losing every generated answer."""
    with judge_server("cut") as stub:
        cfg = JudgeConfig(base_url=stub["url"], model="stub")
        summary, verdicts = judge_rows(cfg, ROWS)
    assert stub["requests"] == 5 * 4  # a malformed reply is not a dead endpoint: every request is tried
    assert summary["examples_with_errors"] == 5 and summary["errors"] == 20
    assert all(e.startswith("malformed reply: ") for v in verdicts for e in v["errors"])
    lines = summary_lines(summary)
    assert lines[0] == (
        "judge stub (helpfulness rubric): 5 examples, 5 with failures "
        "(20 failed requests or answers without a verdict)"
    )
    assert lines[1] == "  every example failed: no judge verdict in this evaluation"
    assert lines[2].startswith("  first error: malformed reply: ")


def test_timeout_s_is_a_deadline_for_the_whole_request() -> None:
    """Issue 19: a judge sending a byte a second held each request ~20 s at timeout_s=3."""
    import time

    with judge_server("drip") as stub:
        cfg = JudgeConfig(base_url=stub["url"], model="stub", timeout_s=0.5)
        start = time.monotonic()
        summary, verdicts = judge_rows(cfg, ROWS)
        took = time.monotonic() - start
    assert took < 5  # three timed-out requests, then the endpoint counts as down (a drip takes ~40 s)
    errors = [e for v in verdicts for e in v["errors"]]
    assert errors[:3] == ["timeout: no complete answer within 0.5 s"] * 3
    assert summary["errors"] == 20 and stub["requests"] == 3
