"""Chat and text completions: limits, encoding, generation (whole or streamed), bodies, metrics, log row."""

from __future__ import annotations

import asyncio
import json
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse

from tuneforge.models.generate import Generation, GenerationSettings, StepEvent
from tuneforge.serve.limits import Admitted, check_tokens
from tuneforge.serve.protocol import (
    APIError,
    ChatChoice,
    ChatChunkChoice,
    Choice,
    CompletionChoice,
    GenerationRequest,
    GenerationResponse,
    Usage,
    error_body,
)
from tuneforge.serve.recorder import Outcome, record, since_ms
from tuneforge.serve.state import AppState, Lease
from tuneforge.serve.validation import stop_strings


@dataclass
class Answer:
    """One generation request in flight: its response shapes and its log row."""

    state: AppState
    lease: Lease
    """The engine (and registry version) this answer comes from, from its first token to its last."""
    endpoint: str
    model: str
    rid: str
    key: str
    start: float
    prompt_tokens: int
    n: int
    prompt_text: str
    ttft: float | None = None
    shadow: Callable[[str], None] | None = None
    """serve.shadow: starts the challenger on this request once the champion has answered it."""

    def _choice(self, i: int, text: str | None, reason: str | None, *, delta: bool) -> Choice:
        if self.endpoint == "completion":
            return CompletionChoice(index=i, text=text or "", finish_reason=reason)
        if delta:
            return ChatChunkChoice(
                index=i, delta={} if text is None else {"content": text}, finish_reason=reason
            )
        return ChatChoice(index=i, message={"role": "assistant", "content": text or ""}, finish_reason=reason)

    def _envelope(self, choices: list[Choice], *, chunk: bool, usage: Usage | None = None) -> dict[str, Any]:
        obj = "chat.completion" if self.endpoint == "chat" else "text_completion"
        return GenerationResponse(
            id=self.rid,
            object=obj + (".chunk" if chunk and self.endpoint == "chat" else ""),
            created=int(time.time()),
            model=self.model,
            choices=choices,
            usage=usage,
        ).json_dict()

    def _usage(self, gens: list[Generation]) -> Usage:
        done = sum(g.completion_tokens for g in gens)
        return Usage(
            prompt_tokens=self.prompt_tokens, completion_tokens=done, total_tokens=self.prompt_tokens + done
        )

    def body(self, gens: list[Generation]) -> dict[str, Any]:
        choices = [self._choice(i, g.text, g.finish_reason, delta=False) for i, g in enumerate(gens)]
        return self._envelope(choices, chunk=False, usage=self._usage(gens))

    async def sse(
        self, prompt: list[int], settings: list[GenerationSettings], usage: bool, place: Admitted
    ) -> AsyncIterator[str]:
        """The answer as server-sent events; `place` (its admission) and the lease are released when the
        stream ends."""
        engine, state = self.lease.engine, self.state
        merged: asyncio.Queue[tuple[int, StepEvent | BaseException | None]] = asyncio.Queue()

        async def pump(i: int, s: GenerationSettings) -> None:
            try:
                async for event in engine.stream(self.model, prompt, s):
                    await merged.put((i, event))
            except Exception as err:
                await merged.put((i, err))

        tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(settings)]
        gens: dict[int, Generation] = {}
        status, error = 200, None
        try:
            if self.endpoint == "chat":
                first: list[Choice] = [
                    ChatChunkChoice(index=i, delta={"role": "assistant", "content": ""}, finish_reason=None)
                    for i in range(self.n)
                ]
                yield sse_event(self._envelope(first, chunk=True))
            async with asyncio.timeout(state.cfg.request_timeout_s):
                while len(gens) < self.n:
                    i, item = await merged.get()
                    if isinstance(item, BaseException):
                        raise item
                    assert item is not None
                    if self.ttft is None:
                        self.ttft = time.perf_counter() - self.start
                    if item.delta:
                        yield sse_event(
                            self._envelope([self._choice(i, item.delta, None, delta=True)], chunk=True)
                        )
                    if item.done is not None:
                        gens[i] = item.done
                        end = self._choice(
                            i, None if self.endpoint == "chat" else "", item.done.finish_reason, delta=True
                        )
                        yield sse_event(self._envelope([end], chunk=True))
            if usage:
                yield sse_event(self._envelope([], chunk=True, usage=self._usage(list(gens.values()))))
            yield "data: [DONE]\n\n"
        except TimeoutError:
            status, error = 504, "timeout"
            yield sse_event(error_body("the answer took too long", status=504, code="timeout"))
        except asyncio.CancelledError:
            status, error = 499, "client disconnected"
            raise
        except Exception as err:  # this answer's own failure (the engine fails a row alone): logged as a 500
            traceback.print_exception(err)
            status, error = 500, f"internal error: {type(err).__name__}"
            yield sse_event(error_body(error, status=500, code="internal_error"))
        finally:
            for t in tasks:
                t.cancel()
            place.release()
            self.lease.release()
            self.finish(status, [gens[i] for i in sorted(gens)], error=error, stream=True)

    def finish(
        self, status: int, gens: list[Generation], *, error: str | None = None, stream: bool = False
    ) -> None:
        outcome = Outcome(
            id=self.rid,
            key_name=self.key,
            model=self.model,
            endpoint=self.endpoint,
            status=status,
            finish_reason=",".join(g.finish_reason for g in gens) or None,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=sum(g.completion_tokens for g in gens),
            latency_ms=since_ms(self.start),
            ttft_ms=None if self.ttft is None else self.ttft * 1000,
            stream=stream,
            prompt=self.prompt_text,
            response=json.dumps([g.text for g in gens], ensure_ascii=False),
            error=error,
            model_version=self.lease.version,
        )
        record(self.state, outcome)
        if status == 200 and self.shadow is not None:
            self.shadow(self.rid)


def sse_event(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def answer(
    state: AppState,
    endpoint: str,
    body: GenerationRequest,
    key: str,
    max_new: int,
    encode: Any,
    text: str,
    receive: Callable[[], Awaitable[Any]],
) -> Response:
    """Common path of chat and completions: limits, encoding, generation (streamed or not), logging.

    `receive` is the request's ASGI receive: with the body read, it returns only when the client goes away.
    """
    state.require_log_writable()
    lease = state.lease()  # the whole answer from one engine, even if a new champion is switched in meanwhile
    try:
        return await _answer_on(lease, state, endpoint, body, key, max_new, encode, text, receive)
    finally:
        if not lease.passed_on:
            lease.release()


async def _answer_on(
    lease: Lease,
    state: AppState,
    endpoint: str,
    body: GenerationRequest,
    key: str,
    max_new: int,
    encode: Any,
    text: str,
    receive: Callable[[], Awaitable[Any]],
) -> Response:
    engine = lease.engine
    state.model(body.model, "generate", engine)
    cfg = state.cfg
    if max_new > cfg.max_new_tokens:
        check_tokens(
            0, max_new, max_prompt=cfg.max_prompt_tokens, max_new_allowed=cfg.max_new_tokens, context=0
        )
    with state.admission.admit(key) as place:
        start = time.perf_counter()
        prompt: list[int] = await asyncio.to_thread(encode, engine)
        if not prompt:
            raise APIError(400, "the prompt is empty (it has no tokens)", code="empty_prompt")
        check_tokens(
            len(prompt),
            max_new,
            max_prompt=cfg.max_prompt_tokens,
            max_new_allowed=cfg.max_new_tokens,
            context=engine.context_length(body.model),
        )
        stops = stop_strings(body.stop)
        settings = [
            GenerationSettings(
                max_new, body.temperature, body.top_p, stops, None if body.seed is None else body.seed + i
            )
            for i in range(body.n)
        ]
        rid = f"{'chatcmpl' if endpoint == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        run = Answer(state, lease, endpoint, body.model, rid, key, start, len(prompt), body.n, text)
        if state.shadow is not None:
            run.shadow = state.shadow.follow(
                state,
                answering=lease.version,
                endpoint=endpoint,
                model=body.model,
                encode=encode,
                settings=settings,
            )
        if state.log is not None:
            # A stream shows its id (for feedback) before its row is logged.
            state.log.remember(rid, key, endpoint, body.model)
        if body.stream:
            usage = bool((body.stream_options or {}).get("include_usage"))
            stream = run.sse(prompt, settings, usage, place.pass_on())
            lease.pass_on()
            return StreamingResponse(stream, media_type="text/event-stream")
        return await _whole(run, prompt, settings, receive)


async def _whole(
    run: Answer,
    prompt: list[int],
    settings: list[GenerationSettings],
    receive: Callable[[], Awaitable[Any]],
) -> Response:
    """A non-streamed answer: generation raced against the client going away and the request timeout."""
    cfg = run.state.cfg
    generation: asyncio.Future[list[Generation]] = asyncio.ensure_future(
        asyncio.gather(*(run.lease.engine.generate(run.model, prompt, s) for s in settings))
    )
    gone: asyncio.Future[None] = asyncio.ensure_future(_client_gone(receive))
    first: list[asyncio.Future[Any]] = [generation, gone]
    try:
        async with asyncio.timeout(cfg.request_timeout_s):
            await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        if not generation.done():  # the client went away: its answers stop at the engine's next step
            generation.cancel()
            run.finish(499, [], error="client disconnected")
            return Response(status_code=499)  # nobody reads it; uvicorn drops it
        gens = generation.result()
    except TimeoutError:
        generation.cancel()
        run.finish(504, [], error="timeout")
        raise APIError(
            504, f"the answer took longer than {cfg.request_timeout_s:g} s", code="timeout", logged=True
        ) from None
    except asyncio.CancelledError:  # the server's shutdown grace ran out: still one row in the log
        generation.cancel()
        run.finish(499, [], error="cancelled")
        raise
    except Exception as err:  # this request's own failure (the engine fails a row alone): 500 with its row
        generation.cancel()
        traceback.print_exception(err)
        message = f"internal error: {type(err).__name__}"
        run.finish(500, [], error=message)
        raise APIError(500, message, code="internal_error", logged=True) from None
    finally:
        gone.cancel()
    run.finish(200, gens)
    return JSONResponse(run.body(gens))


async def _client_gone(receive: Callable[[], Awaitable[Any]]) -> None:
    """Returns once the client has disconnected (Starlette does not stop a plain response's handler)."""
    while (await receive())["type"] != "http.disconnect":
        pass
