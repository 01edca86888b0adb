"""The playground: a prompt to a run's model through the serving engine, shown as text; local UI only."""

from __future__ import annotations

import asyncio
import html
from pathlib import Path

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
    shown = html.unescape(r.text.split('<div class="text" id="answer">')[1].split("</div>")[0])
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
    assert kinds[-1] == "done" and set(kinds[:-1]) == {"delta"} and len(kinds) >= 2
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
