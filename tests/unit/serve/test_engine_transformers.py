"""The transformers engine behind the HTTP app, over a scripted model: what a client sees of an answer that a
byte-level tokenizer ends in the middle of a character (the tiny random model writes no emoji on demand)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.scripted import ScriptedLM
from tests.tiny import TOKENIZER
from tests.unit.serve.app_state import app_state
from tuneforge.config import ServeConfig
from tuneforge.serve.app import create_app
from tuneforge.serve.engine import ServedModel
from tuneforge.serve.engine_transformers import TransformersEngine
from tuneforge.serve.keys import KeyFile


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A server whose model "emoji" answers "ok 🙂" then EOS (the emoji is 4 tokens: one per byte)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    script = [*tok("ok 🙂")["input_ids"], tok.eos_token_id]

    def load(engine: TransformersEngine, served: list[ServedModel]) -> None:
        engine._add(ServedModel("emoji", "generate"), ScriptedLM(script, len(tok)).eval(), tok)

    monkeypatch.setattr(TransformersEngine, "_load", load)
    engine = TransformersEngine([], ServeConfig())
    keys = KeyFile(tmp_path / "keys.json")
    key = keys.create("alice")
    state = app_state(engine, keys)
    asgi, _ = create_app(state)
    try:
        with TestClient(asgi) as client:
            yield {"client": client, "auth": {"Authorization": f"Bearer {key}"}}
    finally:
        engine.close()


def _completion(served: dict[str, Any], max_tokens: int, *, stream: bool) -> tuple[list[str], str | None]:
    """The answer's text parts (one, or each streamed delta) and its finish_reason."""
    body = {"model": "emoji", "prompt": "hi", "max_tokens": max_tokens, "stream": stream}
    response = served["client"].post("/v1/completions", json=body, headers=served["auth"])
    assert response.status_code == 200, response.text
    if not stream:
        choice = response.json()["choices"][0]
        return [choice["text"]], choice["finish_reason"]
    events = [line[len("data: ") :] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    choices = [json.loads(e)["choices"][0] for e in events[:-1]]
    return [c["text"] for c in choices], choices[-1]["finish_reason"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(
    ("max_tokens", "text", "reason"),
    [(5, "ok ", "length"), (6, "ok ", "length"), (7, "ok 🙂", "length"), (8, "ok 🙂", "stop")],
)
def test_max_tokens_inside_an_emoji_never_shows_a_replacement_character(
    served: dict[str, Any], stream: bool, max_tokens: int, text: str, reason: str
) -> None:
    parts, finish = _completion(served, max_tokens, stream=stream)
    assert ("".join(parts), finish) == (text, reason)
    assert all("\ufffd" not in p for p in parts)
