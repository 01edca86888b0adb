"""Request limits: body size (before parsing), token counts, per-key concurrency, a bounded queue, timeouts.

Everything here answers with a 4xx a client can act on, before the model spends time on the request.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tuneforge.serve.protocol import APIError, error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


TOO_LARGE = "tuneforge.body_too_large"
"""Scope key set once a streamed body passed the limit: the app's own answer to it is replaced by the 413."""


class BodySizeLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, by its Content-Length or while it streams in.

    Runs before FastAPI reads the body, so a multi-megabyte prompt is never parsed nor tokenized.
    `on_refused(scope)` is told of each refusal (the request log and metrics).
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, on_refused: Callable[[Scope], None] | None = None
    ) -> None:
        self.app, self.max_bytes, self.on_refused = app, max_bytes, on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(scope, send)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                scope[TOO_LARGE] = True
                raise _BodyTooLarge
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            # A chunked body (no Content-Length) over the limit: FastAPI turns the error raised while it reads
            # the body into its own 400; that answer is dropped and the 413 below goes out instead.
            if scope.get(TOO_LARGE) and not started:
                return
            started = True
            await send(message)

        with contextlib.suppress(_BodyTooLarge):
            await self.app(scope, counted, guarded)
        if scope.get(TOO_LARGE) and not started:
            await self._refuse(scope, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        if self.on_refused is not None:
            self.on_refused(scope)
        await _too_large(send, self.max_bytes)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send: Send, limit: int) -> None:
    import json

    message = f"request body is larger than {limit} bytes (serve.max_body_bytes)"
    body = json.dumps(error_body(message, status=413, code="request_too_large")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Admission:
    """At most `max_queue` requests in the server and `per_key` per API key; beyond that 429 + Retry-After."""

    def __init__(self, max_queue: int, per_key: int, retry_after: int = 1) -> None:
        self.max_queue, self.per_key, self.retry_after = max_queue, per_key, retry_after
        self.lock = threading.Lock()
        self.total = 0
        self.by_key: Counter[str] = Counter()

    def enter(self, key: str) -> None:
        with self.lock:
            if self.total >= self.max_queue:
                raise APIError(
                    429, "the server is busy; retry shortly", code="queue_full", retry_after=self.retry_after
                )
            if self.by_key[key] >= self.per_key:
                raise APIError(
                    429,
                    f"too many concurrent requests for this key (at most {self.per_key})",
                    code="too_many_concurrent_requests",
                    retry_after=self.retry_after,
                )
            self.total += 1
            self.by_key[key] += 1

    def leave(self, key: str) -> None:
        with self.lock:
            self.total -= 1
            self.by_key[key] -= 1

    def admit(self, key: str) -> Admitted:
        """`enter` now; `leave` when the place's `with` block ends (or its stream, once passed on)."""
        self.enter(key)
        return Admitted(self, key)


class Admitted:
    """One admitted request's place, given back exactly once: every route holds it in a `with` block."""

    def __init__(self, admission: Admission, key: str) -> None:
        self.admission, self.key = admission, key
        self.held, self.passed_on = True, False

    def pass_on(self) -> Admitted:
        """Keep the place past the `with` block: a streamed answer releases it when its stream ends."""
        self.passed_on = True
        return self

    def release(self) -> None:
        if self.held:
            self.held = False
            self.admission.leave(self.key)

    def __enter__(self) -> Admitted:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.passed_on:
            self.release()


def check_tokens(
    prompt_tokens: int, max_new: int, *, max_prompt: int, max_new_allowed: int, context: int
) -> None:
    """400 for a prompt or an answer length the deployment does not allow."""
    if prompt_tokens > max_prompt:
        raise APIError(
            400,
            f"the prompt has {prompt_tokens} tokens; this server accepts at most {max_prompt}",
            code="context_length_exceeded",
        )
    if max_new > max_new_allowed:
        raise APIError(
            400, f"max_tokens is {max_new}; this server allows at most {max_new_allowed}", code="max_tokens"
        )
    if context and prompt_tokens + 1 > context:
        raise APIError(
            400,
            f"the prompt has {prompt_tokens} tokens; the model's context is {context}",
            code="context_length_exceeded",
        )
