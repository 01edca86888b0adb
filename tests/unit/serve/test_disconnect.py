"""A non-streamed answer whose client goes away stops generating (Starlette would let its handler run on)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.unit.serve.app_state import app_state
from tuneforge.models.generate import Generation, GenerationSettings
from tuneforge.serve.answer import answer as _answer
from tuneforge.serve.engine import ServedModel
from tuneforge.serve.keys import KeyFile
from tuneforge.serve.limits import Admission
from tuneforge.serve.protocol import CompletionRequest
from tuneforge.serve.state import AppState


class FakeEngine:
    """Answers at once, or (slow) only when cancelled."""

    def __init__(self, *, slow: bool) -> None:
        self.models = {"m": ServedModel("m", "generate")}
        self.slow = slow
        self.started = asyncio.Event()
        self.cancelled = 0

    def encode_text(self, model: str, text: str) -> list[int]:
        return [1, 2]

    def context_length(self, model: str) -> int:
        return 0

    async def generate(self, model: str, prompt: list[int], settings: GenerationSettings) -> Generation:
        self.started.set()
        if not self.slow:
            return Generation([7], "x", "length", len(prompt), 1)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        raise AssertionError("unreachable")


def _state(engine: FakeEngine, tmp_path: Path) -> AppState:
    return app_state(engine, KeyFile(tmp_path / "keys.json"), admission=Admission(8, 8))


def _ask(state: AppState, engine: FakeEngine, receive: Any) -> Any:
    body = CompletionRequest(model="m", prompt="hi", n=2, max_tokens=4)
    return _answer(state, "completion", body, "alice", 4, lambda e: e.encode_text("m", "hi"), "hi", receive)


def test_a_client_that_leaves_cancels_every_choice_and_frees_its_place(tmp_path: Path) -> None:
    engine = FakeEngine(slow=True)
    state = _state(engine, tmp_path)

    async def receive() -> dict[str, str]:
        await engine.started.wait()  # the client leaves while the answer is being generated
        return {"type": "http.disconnect"}

    async def go() -> Any:
        return await asyncio.wait_for(_ask(state, engine, receive), timeout=10)

    response = asyncio.run(go())
    assert response.status_code == 499 and engine.cancelled == 2
    assert state.admission.total == 0
    counted = {"endpoint": "completion", "model": "m", "status": "499"}
    assert state.metrics.registry.get_sample_value("tuneforge_requests_total", counted) == 1.0


def test_a_client_that_stays_gets_its_answer(tmp_path: Path) -> None:
    engine = FakeEngine(slow=False)
    state = _state(engine, tmp_path)

    async def receive() -> dict[str, str]:
        await asyncio.Event().wait()  # never disconnects
        raise AssertionError("unreachable")

    response = asyncio.run(_ask(state, engine, receive))
    assert response.status_code == 200 and b'"completion_tokens":2' in response.body
    assert state.admission.total == 0
