"""An engine's whole answer is its stream drained: the last event's generation, or the engine's own error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tuneforge.models.generate import Generation, StepEvent
from tuneforge.serve.engine import finished


async def _events(done: bool) -> AsyncIterator[StepEvent]:
    yield StepEvent(0, "a", 97)
    if done:
        yield StepEvent(0, "b", 98, Generation([97, 98], "ab", "stop", 3, 2))


def test_the_whole_answer_is_the_last_event() -> None:
    assert asyncio.run(finished(_events(True), "cut")) == Generation([97, 98], "ab", "stop", 3, 2)


def test_a_stream_that_ends_early_raises_the_engines_message() -> None:
    with pytest.raises(RuntimeError, match=r"^vLLM ended the request without a final output$"):
        asyncio.run(finished(_events(False), "vLLM ended the request without a final output"))
