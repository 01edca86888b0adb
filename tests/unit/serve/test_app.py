"""The HTTP app over a stand-in engine (no model): what fails closed, what is refused, what is logged.

The real server is driven as a process in tests/integration/test_serve.py; these are the cases that need a
fault no tiny model produces on demand (an engine that raises, a keys file or log file that vanishes).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.unit.serve.app_state import app_state
from tuneforge.config import ServeConfig
from tuneforge.models.generate import Generation, GenerationSettings, StepEvent
from tuneforge.serve.app import create_app
from tuneforge.serve.engine import ServedModel
from tuneforge.serve.keys import KeyFile
from tuneforge.serve.metrics import ServerMetrics, served_runs
from tuneforge.serve.store import RequestLog, database_url, read_table


class FakeEngine:
    """Echoes the prompt's characters; a prompt holding "boom" raises inside the engine."""

    def __init__(self) -> None:
        self.models = {
            "echo": ServedModel("echo", "generate"),
            "heads": ServedModel("heads", "classify", labels=["no", "yes"]),
            "score": ServedModel("score", "classify"),
        }

    def encode_chat(self, model: str, messages: list[dict[str, str]]) -> list[int]:
        return [ord(c) for m in messages for c in m["content"]]

    def encode_text(self, model: str, text: str) -> list[int]:
        return [ord(c) for c in text.strip()]

    def context_length(self, model: str) -> int:
        return 1000

    def queue_depth(self) -> int:
        return 0

    async def generate(self, model: str, prompt: list[int], settings: GenerationSettings) -> Generation:
        text = "".join(map(chr, prompt))
        if "boom" in text:
            raise RuntimeError("the engine failed this request")
        return Generation(prompt[:2], text[:2], "length", len(prompt), 2)

    async def stream(
        self, model: str, prompt: list[int], settings: GenerationSettings
    ) -> AsyncIterator[StepEvent]:
        yield StepEvent(0, "a", 97)
        if "boom" in "".join(map(chr, prompt)):
            raise RuntimeError("the engine failed this request")
        yield StepEvent(0, "b", 98, Generation([97, 98], "ab", "length", len(prompt), 2))

    async def classify(self, model: str, texts: list[str]) -> list[dict[str, float]]:
        if model == "score":  # a regression head
            return [{"value": 0.5} for _ in texts]
        return [{"no": 0.25, "yes": 0.75} for _ in texts]

    def close(self) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[dict[str, Any]]:
    keys = KeyFile(tmp_path / "keys.json")
    alice, bob, carol = keys.create("alice"), keys.create("bob"), keys.create("carol", reviewer=True)
    url = database_url(str(tmp_path / "log.sqlite"))
    log = RequestLog(url)
    engine = FakeEngine()
    metrics = ServerMetrics(lambda: 0.0)
    metrics.watch_log(log)
    metrics.watch_drift(lambda: served_runs(state.engine.models))
    state = app_state(engine, keys, cfg=ServeConfig(max_body_bytes=20_000), log=log, metrics=metrics)
    asgi, _ = create_app(state)
    with TestClient(asgi, raise_server_exceptions=False) as client:
        yield {
            "client": client,
            "keys": keys,
            "alice": {"Authorization": f"Bearer {alice}"},
            "bob": {"Authorization": f"Bearer {bob}"},
            "carol": {"Authorization": f"Bearer {carol}"},
            "log": log,
            "url": url,
            "path": tmp_path,
            "engine": engine,
        }
    log.close()


def _rows(served: dict[str, Any], n: int, table: str = "requests") -> list[dict[str, Any]]:
    """The log's rows once the writer has written at least n of them."""
    for _ in range(1000):  # up to 20 s on a loaded machine
        rows = read_table(served["url"], table)
        if len(rows) >= n:
            return rows
        time.sleep(0.02)
    raise AssertionError(f"fewer than {n} rows: {rows}")


def _chat(content: str, **kw: Any) -> dict[str, Any]:
    return {"model": "echo", "messages": [{"role": "user", "content": content}], **kw}


def test_authentication_fails_closed_when_the_keys_file_goes(served: dict[str, Any]) -> None:
    client, alice, path = served["client"], served["alice"], served["keys"].path
    lower = "bearer" + alice["Authorization"][len("Bearer") :]  # the scheme is case-insensitive (RFC 7235)
    assert client.get("/v1/models", headers={"Authorization": lower}).status_code == 200
    saved = path.read_bytes()
    path.unlink()  # moved or deleted while serving: nobody gets in, not even without a key
    for headers in ({}, alice):
        r = client.get("/v1/models", headers=headers)
        assert r.status_code == 503 and r.json()["error"]["code"] == "keys_unavailable", r.text
    assert client.get("/ready").status_code == 503
    path.write_text("{not json")
    assert client.post("/v1/chat/completions", json=_chat("hi")).status_code == 503
    path.write_text('{"keys": []}')  # readable, and no key at all: everyone is refused, never let in
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers=alice).status_code == 401
    path.write_bytes(saved)
    assert client.get("/v1/models", headers=alice).status_code == 200
    assert client.get("/v1/models").status_code == 401
    assert client.get("/ready").status_code == 200


def test_a_failing_request_gets_a_500_body_and_a_row(served: dict[str, Any]) -> None:
    client, alice = served["client"], served["alice"]
    r = client.post("/v1/chat/completions", json=_chat("boom"), headers=alice)
    assert r.status_code == 500 and r.json()["error"] == {
        "message": "internal error: RuntimeError",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }
    streamed = client.post("/v1/chat/completions", json=_chat("boom", stream=True), headers=alice)
    events = [json.loads(x[6:]) for x in streamed.text.split("\n\n") if x.startswith("data: {")]
    assert events[-1]["error"]["code"] == "internal_error" and "[DONE]" not in streamed.text
    ok = client.post("/v1/chat/completions", json=_chat("fine"), headers=alice)
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "fi"
    rows = _rows(served, 3)
    assert [(r["status"], r["stream"], r["error"]) for r in rows] == [
        (500, False, "internal error: RuntimeError"),
        (500, True, "internal error: RuntimeError"),
        (200, False, None),
    ]


def test_feedback_on_ones_own_answers_or_as_a_reviewer_and_again_replaces(served: dict[str, Any]) -> None:
    client, alice, bob, carol = served["client"], served["alice"], served["bob"], served["carol"]
    rid = client.post("/v1/chat/completions", json=_chat("hello"), headers=alice).json()["id"]
    refused = client.post("/v1/chat/completions", json={"model": "nope", "messages": []}, headers=alice)
    assert refused.status_code == 422
    internal = _rows(served, 2)[1]["id"]
    assert internal.startswith("err-")

    def give(headers: dict[str, str], request_id: str, comment: str = "x" * 9000, **kw: Any) -> Any:
        body = {"request_id": request_id, "rating": 1, "comment": comment, **kw}
        return client.post("/v1/feedback", json=body, headers=headers)

    theirs = give(bob, rid)
    assert theirs.status_code == 403 and theirs.json()["error"] == {
        "message": f"request {rid!r} was made with another API key; feedback comes from the key that asked, "
        "or a reviewer key",
        "type": "invalid_request_error",
        "param": None,
        "code": "not_your_request",
    }
    assert give(bob, internal).status_code == 404
    assert give(alice, internal).json()["error"]["code"] == "request_not_found"
    assert give(carol, internal).json()["error"]["code"] == "request_not_found"  # reviewers too
    assert give(carol, "chatcmpl-never").json()["error"]["code"] == "request_not_found"
    assert give(alice, rid, "first").status_code == 200
    again = [give(alice, rid, f"again {i}").status_code for i in range(20)]  # each replaces the last
    assert again == [200] * 20
    assert give(carol, rid, "reviewed", correction="hello to you").status_code == 200
    served["log"].close()  # every queued row written
    fb = read_table(served["url"], "feedback")
    assert [(f["request_id"], f["key_name"], f["comment"], f["correction"]) for f in fb] == [
        (rid, "alice", "again 19", None),
        (rid, "carol", "reviewed", '"hello to you"'),
    ]


def test_a_correction_must_fit_the_request_it_rates(served: dict[str, Any]) -> None:
    client, alice = served["client"], served["alice"]
    chat_id = client.post("/v1/chat/completions", json=_chat("hello"), headers=alice).json()["id"]
    one = client.post("/v1/classify", json={"model": "heads", "input": "fine"}, headers=alice).json()["id"]
    two = client.post("/v1/classify", json={"model": "heads", "input": ["a", "b"]}, headers=alice).json()[
        "id"
    ]
    value = client.post("/v1/classify", json={"model": "score", "input": "x"}, headers=alice).json()["id"]

    def correct(request_id: str, correction: Any) -> Any:
        body = {"request_id": request_id, "rating": -1, "correction": correction}
        return client.post("/v1/feedback", json=body, headers=alice)

    refused = [
        (one, "maybe", "correction: 'maybe' is not one of the model's labels: 'no', 'yes'"),
        (one, 1, "correction: 1.0 is not one of the model's labels: 'no', 'yes'"),
        (one, ["no", "yes"], "correction: the request classified 1 inputs; send one correction per input"),
        (two, "no", "correction: the request classified 2 inputs; send a list with one item per input"),
        (two, [None, None], "correction: the list corrects nothing (every item is null)"),
        (
            value,
            "3.5",
            "correction: the model predicts a number, so a corrected value is a number, not '3.5'",
        ),
        (chat_id, 2, "correction: a corrected answer is its text (a non-empty string)"),
        (chat_id, ["a"], "correction: a corrected answer is its text (a non-empty string)"),
        (chat_id, " ", "correction: a corrected answer is its text (a non-empty string)"),
    ]
    for rid, correction, message in refused:
        r = correct(rid, correction)
        assert r.status_code == 422 and r.json()["error"]["message"] == message, (correction, r.text)
        assert r.json()["error"]["code"] == "invalid_correction"
    for rid, correction in [
        (one, "yes"),
        (two, [None, "yes"]),
        (value, 3.5),
        (chat_id, "Hi! How can I help?"),
    ]:
        assert correct(rid, correction).status_code == 200, correction
    served["log"].close()
    fb = {f["request_id"]: f["correction"] for f in read_table(served["url"], "feedback")}
    assert fb == {one: '"yes"', two: '[null, "yes"]', value: "3.5", chat_id: '"Hi! How can I help?"'}


def test_malformed_bodies_get_openai_errors_and_rows(served: dict[str, Any]) -> None:
    client, alice = served["client"], served["alice"]
    json_type = {**alice, "content-type": "application/json"}
    cases = [  # (body, status, message)
        (b'{"model": "echo", "prompt": "\xff\xfe"}', 400, "the request body is not valid UTF-8"),
        (b'{"model": "echo", "prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "nested too deeply"),
        (
            b'{"model": "echo", "prompt": "\\ud800"}',
            422,
            "prompt: Value error, the text holds a lone surrogate",
        ),
        (
            b'{"model": "echo", "prompt": "ok", "stop": ["\\udfff"]}',
            422,
            "Value error, the text holds a lone",
        ),
    ]
    for body, status, message in cases:
        r = client.post("/v1/completions", content=body, headers=json_type)
        assert r.status_code == status, (body[:60], r.text)
        assert (
            message in r.json()["error"]["message"] and r.json()["error"]["type"] == "invalid_request_error"
        )
    nul = client.post("/v1/completions", json={"model": "echo", "prompt": "a\x00\u202eb"}, headers=alice)
    assert nul.status_code == 200 and nul.json()["choices"][0]["text"] == "a\x00"
    empty = client.post("/v1/classify", json={"model": "heads", "input": ["fine", "  "]}, headers=alice)
    assert (
        empty.status_code == 400 and empty.json()["error"]["message"] == "input 1 is empty (it has no tokens)"
    )

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap is found while the body streams in
        yield b'{"model": "echo", "prompt": "'
        for _ in range(10):
            yield b"x" * 3000
        yield b'"}'

    chunked = client.post("/v1/completions", content=chunks(), headers=json_type)
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "request_too_large"
    rows = _rows(served, 7)
    assert [(r["status"], r["error"].split(":")[0] if r["error"] else None) for r in rows] == [
        (400, "invalid_request"),
        (400, "invalid_request"),
        (422, "invalid_request"),
        (422, "invalid_request"),
        (200, None),
        (400, "empty_input"),
        (413, "request_too_large"),
    ]


def test_a_deleted_log_is_reopened_and_a_foreign_one_refuses(served: dict[str, Any]) -> None:
    client, alice, log = served["client"], served["alice"], served["log"]
    db = served["path"] / "log.sqlite"
    assert client.post("/v1/chat/completions", json=_chat("one"), headers=alice).status_code == 200
    _rows(served, 1)
    db.unlink()
    for _ in range(400):  # the idle writer checks its file every second
        if log.reopened:
            break
        time.sleep(0.05)
    assert log.reopened == 1 and log.problem is None and db.is_file()
    assert client.get("/ready").json()["request_log"] == {"rows_dropped": 0, "reopened": 1}
    assert client.post("/v1/chat/completions", json=_chat("two"), headers=alice).status_code == 200
    assert [json.loads(r["response"]) for r in _rows(served, 1)] == [["tw"]]  # the new file has the new row
    db.unlink()
    db.write_text("notes of my own\n")  # not ours: never written into
    for _ in range(400):
        if log.problem:
            break
        time.sleep(0.05)
    assert log.problem is not None and "is not a tuneforge request log" in log.problem
    assert client.get("/ready").status_code == 503
    refused = client.post("/v1/chat/completions", json=_chat("three"), headers=alice)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "log_unavailable"
    metrics = client.get("/metrics", headers=alice).text
    assert "tuneforge_request_log_up 0.0" in metrics and "tuneforge_request_log_reopened 1.0" in metrics
    assert db.read_text() == "notes of my own\n"


def test_metrics_expose_the_drift_scores_of_the_latest_monitor_report(served: dict[str, Any]) -> None:
    import os

    from tuneforge.artifacts import RunDir

    run = served["path"] / "run"
    served["engine"].models["heads"].run = RunDir(run)
    client, alice = served["client"], served["alice"]
    assert "tuneforge_drift_score{" not in client.get("/metrics", headers=alice).text  # no report yet

    def report(window: str, auc: float, drift: bool | None, mtime: int) -> None:
        folder = run / "monitor" / window
        folder.mkdir(parents=True, exist_ok=True)
        tests = {
            "embedding_drift": {"statistic": auc, "p_value": 0.01, "drift": drift},
            "label_drift": {"statistic": None, "p_value": None, "drift": None},  # not enough data
        }
        body = {"tests": tests, "window": {"until": "2026-12-02T00:00:00+00:00"}, "alerts": [{}] * drift}
        (folder / "report.json").write_text(json.dumps(body))
        os.utime(folder / "report.json", (mtime, mtime))

    report("2026-12-01T0000Z_2026-12-02T0000Z", 0.97, True, 1_000)
    report("2026-11-30T0000Z_2026-12-01T0000Z", 0.51, False, 500)  # older: not the latest
    text = client.get("/metrics", headers=alice).text
    lines = [line for line in text.splitlines() if line.startswith(("tuneforge_drift", "tuneforge_monitor"))]
    assert lines == [
        'tuneforge_drift_score{model="heads",test="embedding_drift"} 0.97',
        'tuneforge_drift_p_value{model="heads",test="embedding_drift"} 0.01',
        'tuneforge_drift_alert{model="heads",test="embedding_drift"} 1.0',
        'tuneforge_monitor_window_end_seconds{model="heads"} 1.7961696e+09',
        'tuneforge_monitor_alerts{model="heads"} 1.0',
    ]
    report("2026-12-01T0000Z_2026-12-02T0000Z", 0.6, False, 2_000)  # judged again: re-read
    text = client.get("/metrics", headers=alice).text
    assert 'tuneforge_drift_score{model="heads",test="embedding_drift"} 0.6' in text
    assert 'tuneforge_drift_alert{model="heads",test="embedding_drift"} 0.0' in text
