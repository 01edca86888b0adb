"""One request's answer: its OpenAI-shaped bodies (JSON, server-sent event chunks), metrics and log row."""

from __future__ import annotations

import asyncio
import json
import time
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuneforge.models.generate import Generation, GenerationSettings, StepEvent
from tuneforge.serve.protocol import (
    ChatChoice,
    ChatChunkChoice,
    Choice,
    CompletionChoice,
    GenerationResponse,
    Usage,
    error_body,
)

if TYPE_CHECKING:
    from tuneforge.serve.app import AppState


@dataclass
class Answer:
    """One generation request in flight: its response shapes and its log row."""

    state: AppState
    endpoint: str
    model: str
    rid: str
    key: str
    start: float
    prompt_tokens: int
    n: int
    prompt_text: str
    ttft: float | None = None

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
        self, prompt: list[int], settings: list[GenerationSettings], usage: bool
    ) -> AsyncIterator[str]:
        engine, state = self.state.engine, self.state
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
            state.admission.leave(self.key)
            self.finish(status, [gens[i] for i in sorted(gens)], error=error, stream=True)

    def finish(
        self, status: int, gens: list[Generation], *, error: str | None = None, stream: bool = False
    ) -> None:
        state = self.state
        latency = time.perf_counter() - self.start
        m = state.metrics
        m.requests.labels(self.endpoint, self.model, str(status)).inc()
        m.latency.labels(self.endpoint).observe(latency)
        if status >= 400:
            m.errors.labels(str(status)).inc()
        completion = sum(g.completion_tokens for g in gens)
        m.tokens.labels(self.model, "prompt").inc(self.prompt_tokens)
        m.tokens.labels(self.model, "completion").inc(completion)
        if self.ttft is not None:
            m.ttft.observe(self.ttft)
        if state.log is not None:
            state.log.log_request(
                id=self.rid,
                key_name=self.key,
                model=self.model,
                endpoint=self.endpoint,
                status=status,
                finish_reason=",".join(g.finish_reason for g in gens) or None,
                prompt_tokens=self.prompt_tokens,
                completion_tokens=completion,
                latency_ms=latency * 1000,
                ttft_ms=None if self.ttft is None else self.ttft * 1000,
                stream=stream,
                prompt=self.prompt_text,
                response=json.dumps([g.text for g in gens], ensure_ascii=False),
                error=error,
            )


def sse_event(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def record_answer(
    state: AppState, rid: str, key: str, model: str, endpoint: str, status: int, start: float, **row: Any
) -> None:
    state.metrics.requests.labels(endpoint, model, str(status)).inc()
    state.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
    if state.log is not None:
        state.log.log_request(
            id=rid,
            key_name=key,
            model=model,
            endpoint=endpoint,
            status=status,
            latency_ms=(time.perf_counter() - start) * 1000,
            **row,
        )
