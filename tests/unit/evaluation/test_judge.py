"""LLM-as-judge against a real (tiny) HTTP endpoint: verdicts, both orders, errors counted, dead endpoints."""

from __future__ import annotations

import socket

import pytest

from tests.unit.evaluation.judge_stub import judge_server
from tuneforge.config import JudgeConfig
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation.judge import judge_rows

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
