"""The playground: a prompt to a run's model (or two side by side) through the serving engine or a running
server, shown as text, each answer rated into the serving stage's feedback table; local UI only."""

from __future__ import annotations

import asyncio
import html
from pathlib import Path

import pytest

from tests.unit.ui.test_routes import client, csrf


def test_a_prompt_gets_the_serving_engines_answer(real_workspace: Path) -> None:
    from tuneforge.config import ServeConfig
    from tuneforge.models.generate import GenerationSettings
    from tuneforge.serve.engine import resolve_targets
    from tuneforge.serve.engine_transformers import TransformersEngine

    run = real_workspace / "runs" / "chat"
    c = client(real_workspace)
    token = csrf(c)
    assert 'href="/playground?path=runs/chat">Playground</a>' in c.get("/run?path=runs/chat").text
    assert '<textarea name="prompt"' in c.get("/playground?path=runs/chat").text
    prompt = "say red <b>{{7*7}}</b>"
    form = {"csrf_token": token, "path": "runs/chat", "prompt": prompt, "max_new_tokens": "6"}
    r = c.post("/playground", data=form)
    assert r.status_code == 200
    shown = html.unescape(r.text.split('<div class="text answer-text">')[1].split("</div>")[0])
    engine = TransformersEngine(resolve_targets([str(run)]), ServeConfig())
    try:
        ids = engine.encode_chat("chat", [{"role": "user", "content": prompt}])
        want = asyncio.run(engine.generate("chat", ids, GenerationSettings(max_new_tokens=6, seed=0)))
    finally:
        engine.close()
    from tuneforge.evaluation.report.render import visible

    assert shown == visible(want.text)
    assert f"{want.completion_tokens} tokens after a {len(ids)}-token prompt" in r.text
    assert prompt not in r.text  # the prompt is escaped where it is shown again
    assert "say red &lt;b&gt;{{7*7}}&lt;/b&gt;</textarea>" in r.text


def test_bad_settings_a_missing_token_and_a_remote_ui_are_refused(real_workspace: Path) -> None:
    c = client(real_workspace)
    token = csrf(c)
    base = {"csrf_token": token, "path": "runs/chat", "prompt": "hi"}
    assert c.post("/playground", data={k: v for k, v in base.items() if k != "csrf_token"}).status_code == 403
    too_many = c.post("/playground", data=base | {"max_new_tokens": "100000"})
    assert too_many.status_code == 400 and "max new tokens must be 1–512 and temperature 0–2" in too_many.text
    empty = c.post("/playground", data=base | {"prompt": "  "})
    assert empty.status_code == 400 and "the prompt is empty" in empty.text
    assert c.post("/playground", data=base | {"path": "../.."}).status_code == 404
    from tuneforge.ui.app import create_app

    app = create_app(real_workspace)
    app.state.ui.local = False
    from fastapi.testclient import TestClient

    r = TestClient(app).get("/playground?path=runs/chat")
    assert r.status_code == 400
    assert "the playground is only served while the UI is local (started without --keys)" in r.text
    assert 'href="/playground' not in TestClient(app).get("/run?path=runs/chat").text


def test_the_answer_streams_as_server_sent_events(real_workspace: Path) -> None:
    import json

    from tuneforge.config import ServeConfig
    from tuneforge.evaluation.report.render import visible
    from tuneforge.models.generate import GenerationSettings
    from tuneforge.serve.engine import resolve_targets
    from tuneforge.serve.engine_transformers import TransformersEngine

    c = client(real_workspace)
    form = {"csrf_token": csrf(c), "path": "runs/chat", "prompt": "say blue", "max_new_tokens": "6"}
    r = c.post("/playground/stream", data=form)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [
        (
            block.split("\n")[0].removeprefix("event: "),
            json.loads(block.split("\n")[1].removeprefix("data: ")),
        )
        for block in r.text.strip().split("\n\n")
    ]
    kinds = [k for k, _ in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and set(kinds[1:-1]) == {"delta"} and len(kinds) >= 3
    assert events[0][1]["model"] == "chat" and events[0][1]["label"] == "runs/chat"
    assert events[0][1]["id"].startswith("chatcmpl-")
    engine = TransformersEngine(resolve_targets([str(real_workspace / "runs" / "chat")]), ServeConfig())
    try:
        ids = engine.encode_chat("chat", [{"role": "user", "content": "say blue"}])
        want = asyncio.run(engine.generate("chat", ids, GenerationSettings(max_new_tokens=6, seed=0)))
    finally:
        engine.close()
    assert "".join(d["text"] for k, d in events if k == "delta") == visible(want.text)
    assert events[-1][1] == {
        "prompt_tokens": len(ids),
        "completion_tokens": want.completion_tokens,
        "finish_reason": want.finish_reason,
    }
    refused = c.post("/playground/stream", data=form | {"max_new_tokens": "0"})
    assert refused.status_code == 400 and "max new tokens must be 1–512" in refused.text
    assert (
        c.post("/playground/stream", data={k: v for k, v in form.items() if k != "csrf_token"}).status_code
        == 403
    )


def _events(text: str) -> list[tuple[str, dict]]:  # type: ignore[type-arg]
    import json

    return [
        (b.split("\n")[0].removeprefix("event: "), json.loads(b.split("\n")[1].removeprefix("data: ")))
        for b in text.strip().split("\n\n")
    ]


JSON = {"Accept": "application/json"}


def test_a_rating_lands_in_the_serving_stages_feedback_table(real_workspace: Path) -> None:
    import json
    from datetime import UTC, datetime, timedelta

    from tuneforge.monitor.feedback import export_feedback
    from tuneforge.serve.store import database_url, read_table

    c = client(real_workspace)
    token = csrf(c)
    form = {"csrf_token": token, "path": "runs/chat", "prompt": "say red", "max_new_tokens": "4"}
    events = _events(c.post("/playground/stream", data=form).text)
    rid, done = events[0][1]["id"], events[-1][1]
    rate = {"csrf_token": token, "request_id": rid}
    r = c.post("/playground/rate", data=rate | {"rating": "good"}, headers=JSON)
    log = real_workspace / "tuneforge-ui.sqlite3"
    into = "the request log tuneforge-ui.sqlite3 (in the workspace)"
    assert r.json() == {"saved": "good", "corrected": False, "into": into}
    # a second rating of the same answer replaces the first (the server's rule: one row per request and key)
    r = c.post("/playground/rate", data=rate | {"rating": "bad", "correction": " red red ok "}, headers=JSON)
    assert r.json()["corrected"] is True
    r = c.post("/playground/rate", data=rate | {"rating": "meh"}, headers=JSON)
    assert r.status_code == 400 and "a rating is good or bad" in r.json()["error"]
    r = c.post("/playground/rate", data=rate | {"rating": "bad", "request_id": "chatcmpl-nope"}, headers=JSON)
    assert r.status_code == 400 and "no playground answer with id 'chatcmpl-nope'" in r.json()["error"]
    assert c.post("/playground/rate", data={"request_id": rid, "rating": "good"}).status_code == 403
    page = c.post("/playground/rate", data=rate | {"rating": "bad", "correction": "red red ok"})  # no JS
    assert page.status_code == 200 and "Rated bad with a correction, into the request log" in page.text
    c.app.state.chat.close()  # type: ignore[attr-defined]  # writes what the log's queue holds

    url = database_url(str(log))
    [row] = read_table(url, "requests")
    assert {k: row[k] for k in ("id", "key_name", "model", "endpoint", "status", "stream")} == {
        "id": rid,
        "key_name": "ui:local",
        "model": "chat",
        "endpoint": "chat",
        "status": 200,
        "stream": True,
    }
    assert json.loads(row["prompt"]) == [{"role": "user", "content": "say red"}]
    from tuneforge.evaluation.report.render import visible

    [said] = json.loads(row["response"])
    assert visible(said) == "".join(d["text"] for k, d in events if k == "delta")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        done["prompt_tokens"],
        done["completion_tokens"],
    )
    [fb] = read_table(url, "feedback")
    assert (fb["request_id"], fb["key_name"], fb["rating"], json.loads(fb["correction"])) == (
        rid,
        "ui:local",
        -1,
        "red red ok",
    )
    # the monitor stage reads it like a server's log: the correction becomes a chat example
    now = datetime.now(UTC)
    export_feedback(str(log), real_workspace / "fb", now - timedelta(hours=1), now + timedelta(hours=1))
    assert json.loads((real_workspace / "fb" / "chat.jsonl").read_text()) == {
        "messages": [{"role": "user", "content": "say red"}, {"role": "assistant", "content": "red red ok"}]
    }


def test_side_by_side_the_run_and_its_base_share_one_engine(real_workspace: Path) -> None:
    from tuneforge.models.generate import GenerationSettings
    from tuneforge.serve.store import database_url, read_table

    c = client(real_workspace)
    page = c.get("/playground?path=runs/chat").text
    assert '<option value="base:runs/chat" >its base model</option>' in page
    form = {"csrf_token": csrf(c), "path": "runs/chat", "prompt": "say blue", "max_new_tokens": "5"}
    r = c.post("/playground", data=form | {"other": "base:runs/chat"})  # without JavaScript: whole answers
    assert r.status_code == 200, r.text
    chat = c.app.state.chat  # type: ignore[attr-defined]
    [(load, engine)] = chat.pool.engines.items()  # the adapter off is the base: one model in memory
    assert load == str(real_workspace / "runs" / "chat")
    base = next(name for name in engine.models if name != "chat")
    labels = [html.unescape(h.split("</h3>")[0]) for h in r.text.split("<h3>")[1:3]]
    assert labels == ["runs/chat", f"base model {base}"]
    shown = [html.unescape(t.split("</div>")[0]) for t in r.text.split('<div class="text answer-text">')[1:3]]
    from tuneforge.evaluation.report.render import visible

    settings = GenerationSettings(max_new_tokens=5, seed=0)
    ids = engine.encode_chat("chat", [{"role": "user", "content": "say blue"}])
    want = [asyncio.run(engine.generate(name, ids, settings)).text for name in ("chat", base)]
    assert shown == [visible(w) for w in want]
    assert r.text.count('name="request_id" value="chatcmpl-') == 2  # each side rateable
    refused = c.post("/playground", data=form | {"other": "base:../.."})
    assert refused.status_code == 404
    chat.close()
    rows = read_table(database_url(str(real_workspace / "tuneforge-ui.sqlite3")), "requests")
    assert sorted(r["model"] for r in rows) == sorted(["chat", base])


def test_at_most_two_engines_stay_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    from tuneforge.errors import TuneforgeError
    from tuneforge.ui.chat import EnginePool

    closed: list[str] = []

    class Loaded:
        def __init__(self, served: str, cfg: object) -> None:
            self.name = served

        def close(self) -> None:
            closed.append(self.name)

    monkeypatch.setattr("tuneforge.serve.engine.resolve_targets", lambda targets: targets[0])
    monkeypatch.setattr("tuneforge.serve.engine_transformers.TransformersEngine", Loaded)
    pool = EnginePool()
    a, _ = pool.acquire("a"), pool.acquire("b")
    with pytest.raises(TuneforgeError, match="2 models are answering in the playground now"):
        pool.acquire("c")
    pool.release("a")
    assert pool.acquire("a") is a and closed == []  # still loaded: no second load
    pool.release("a")
    pool.acquire("c")  # "b" still answers: the idle "a" makes room
    assert closed == ["a"] and list(pool.engines) == ["b", "c"]
    pool.release("b"), pool.release("c")
    pool.acquire("a")  # the least recently used idle one goes
    assert closed == ["a", "b"] and list(pool.engines) == ["c", "a"]


def test_with_server_the_playground_asks_it_and_rates_through_its_feedback_route(
    real_workspace: Path, tmp_path: Path
) -> None:
    """`tuneforge ui --server URL`: the serving app (a stand-in engine, in this process) answers and keeps the
    rating in its own log, under the key the UI asked with."""
    import httpx

    from tests.unit.serve.app_state import app_state
    from tests.unit.serve.test_app import FakeEngine
    from tuneforge.serve.app import create_app as serve_app
    from tuneforge.serve.engine import ServedModel
    from tuneforge.serve.keys import KeyFile
    from tuneforge.serve.store import RequestLog, database_url, read_table
    from tuneforge.ui.chat import RemoteChat

    keys = KeyFile(tmp_path / "keys.json")
    alice, bob = keys.create("alice"), keys.create("bob")
    url = database_url(str(tmp_path / "log.sqlite"))
    log = RequestLog(url)
    engine = FakeEngine()
    engine.models["chat"] = ServedModel("chat", "generate")  # the run's served name
    state = app_state(engine, keys, log=log)
    asgi, _ = serve_app(state)
    c = client(real_workspace, server="http://serve")
    app = c.app
    app.state.chat = RemoteChat("http://serve", alice, transport=httpx.ASGITransport(asgi))  # type: ignore[attr-defined]
    assert "Answers from the server http://serve" in c.get("/playground?path=runs/chat").text
    token = csrf(c)
    form = {"csrf_token": token, "path": "runs/chat", "prompt": "say red", "max_new_tokens": "4"}
    events = _events(c.post("/playground/stream", data=form).text)
    rid = events[0][1]["id"]
    assert events == [
        ("start", {"id": rid, "model": "chat", "label": "runs/chat"}),
        ("delta", {"text": "a"}),
        ("delta", {"text": "b"}),
        ("done", {"prompt_tokens": 7, "completion_tokens": 2, "finish_reason": "length"}),
    ]
    rate = {"csrf_token": token, "request_id": rid, "rating": "bad", "correction": "red"}
    r = c.post("/playground/rate", data=rate, headers=JSON)
    assert r.json() == {"saved": "bad", "corrected": True, "into": "the server http://serve"}
    # the server's own rules apply: another key may not rate alice's answer
    app.state.chat = RemoteChat("http://serve", bob, transport=httpx.ASGITransport(asgi))  # type: ignore[attr-defined]
    r = c.post("/playground/rate", data=rate, headers=JSON)
    assert r.status_code == 400 and r.json()["error"] == (
        f"--server: http://serve answered 403: request {rid!r} was made with another API key; feedback "
        "comes from the key that asked, or a reviewer key"
    )
    events = _events(c.post("/playground/stream", data=form | {"prompt": "boom"}).text)
    assert events[-1][0] == "error" and "internal error: RuntimeError" in events[-1][1]["message"]
    log.close()
    [fb] = read_table(url, "feedback")
    assert (fb["request_id"], fb["key_name"], fb["rating"], fb["correction"]) == (rid, "alice", -1, '"red"')
    rows = [(r["id"] == rid, r["key_name"], r["status"]) for r in read_table(url, "requests")]
    assert rows == [
        (True, "alice", 200),
        (False, "bob", 403),
        (False, "bob", 500),
    ]  # the refusal is logged too


def test_ui_options_server_must_be_a_url_and_log_is_for_the_engine_in_this_process(tmp_path: Path) -> None:
    from tuneforge.errors import TuneforgeError
    from tuneforge.ui.app import create_app, serve_ui

    with pytest.raises(TuneforgeError, match="--server localhost:8000 is not a URL"):
        serve_ui(tmp_path, host="127.0.0.1", port=0, keys_file=None, server="localhost:8000")
    with pytest.raises(TuneforgeError, match="--log is where the playground in this process writes"):
        serve_ui(tmp_path, host="127.0.0.1", port=0, keys_file=None, server="http://x", log="a.sqlite")
    chat = create_app(tmp_path, log=str(tmp_path / "deployment.sqlite")).state.chat
    assert chat.where() == f"the request log sqlite:///{tmp_path / 'deployment.sqlite'}"
    assert not (tmp_path / "deployment.sqlite").exists()  # opened on the first answer, not before
