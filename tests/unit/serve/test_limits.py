"""Limits: the body cap holds for chunked bodies without Content-Length; admission counts per key."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tuneforge.serve.limits import Admission, BodySizeLimit
from tuneforge.serve.protocol import APIError as LimitError


def _call(app: Any, chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    queue = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]

    async def receive() -> dict[str, Any]:
        return queue.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "headers": headers}, receive, send))
    return sent


async def _reads_everything(scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_body_cap_by_header_and_while_streaming() -> None:
    app = BodySizeLimit(_reads_everything, max_bytes=100)
    assert _call(app, [b"x" * 50], [(b"content-length", b"50")])[0]["status"] == 200
    assert _call(app, [b"x" * 500], [(b"content-length", b"500")])[0]["status"] == 413
    chunked = _call(app, [b"x" * 60, b"x" * 60, b"x" * 60], [])  # no Content-Length: counted as it arrives
    assert chunked[0]["status"] == 413 and b"request_too_large" in chunked[1]["body"]


def test_admission_limits_per_key_and_in_total() -> None:
    a = Admission(max_queue=3, per_key=2)
    a.enter("alice")
    a.enter("alice")
    with pytest.raises(LimitError) as err:
        a.enter("alice")
    assert (err.value.status, err.value.code, err.value.retry_after) == (
        429,
        "too_many_concurrent_requests",
        1,
    )
    a.enter("bob")
    with pytest.raises(LimitError, match="busy"):
        a.enter("carol")
    a.leave("alice")
    a.enter("carol")
    assert a.total == 3 and a.by_key["alice"] == 1


async def _turns_read_errors_into_400(scope: Any, receive: Any, send: Any) -> None:
    """What FastAPI does with an error raised while it reads the body: its own 400."""
    try:
        while (await receive()).get("more_body"):
            pass
        status = 200
    except Exception:
        status = 400
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"parse error"})


def test_a_chunked_body_over_the_cap_is_413_even_when_the_app_answers_first() -> None:
    refused: list[Any] = []
    app = BodySizeLimit(_turns_read_errors_into_400, max_bytes=100, on_refused=refused.append)
    sent = _call(app, [b"x" * 60, b"x" * 60], [])
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [413]
    assert b"request_too_large" in sent[1]["body"] and len(refused) == 1
    assert _call(app, [b"x" * 60], [])[0]["status"] == 200
