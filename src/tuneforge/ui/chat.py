"""Who answers the playground: the serving stage's engine in this process (its answers and ratings written to
a request log through the serving stage's own `RequestLog`), or a running `tuneforge serve` (`--server URL`:
its OpenAI-compatible stream, and ratings through its `POST /v1/feedback`).

Either way a rating lands in the one feedback table `tuneforge feedback export` and `tuneforge monitor` read.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from tuneforge.errors import TuneforgeError

KEY_NAME = "ui:local"
"""The key name the playground's requests and ratings carry in an in-process log (no API key is involved)."""
MOST_ENGINES = 2
"""Engines kept loaded at once: side by side needs two, and each holds a whole model in memory."""


@dataclass(frozen=True)
class Target:
    """One model the playground talks to: `load` is what the serving stage loads (a run or a base model
    folder), `name` the served name a request picks (what `tuneforge serve` would call it)."""

    load: str
    name: str


class Chat(Protocol):
    def stream(
        self, target: Target, messages: list[dict[str, str]], settings: Any
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """("start", {id, model}), ("delta", {text}) events, then ("done", {...}) or ("error", {message})."""
        ...

    async def rate(self, request_id: str, rating: int, correction: str | None) -> None: ...
    def where(self) -> str: ...
    def close(self) -> None: ...


class EnginePool:
    """At most `most` engines loaded; the least recently used idle one makes room for a new one."""

    def __init__(self, most: int = MOST_ENGINES) -> None:
        self.most = most
        self.engines: OrderedDict[str, Any] = OrderedDict()
        self.users: Counter[str] = Counter()
        self.lock = threading.Lock()

    def acquire(self, load: str) -> Any:
        """The engine serving `load`, loaded if need be (seconds: call it from a worker thread)."""
        from tuneforge.config import ServeConfig
        from tuneforge.serve.engine import resolve_targets
        from tuneforge.serve.engine_transformers import TransformersEngine

        with self.lock:  # one load at a time: two at once would hold three models in memory for a moment
            if load not in self.engines:
                idle = [k for k in self.engines if self.users[k] == 0]
                while len(self.engines) >= self.most:
                    if not idle:
                        raise TuneforgeError(
                            f"{self.most} models are answering in the playground now; another cannot be "
                            "loaded until one of them finishes",
                            where="playground",
                            fix="wait for the answers on screen to end, then send again",
                        )
                    self.engines.pop(idle.pop(0)).close()
                self.engines[load] = TransformersEngine(resolve_targets([load]), ServeConfig())
            self.engines.move_to_end(load)
            self.users[load] += 1
            return self.engines[load]

    def release(self, load: str) -> None:
        with self.lock:
            self.users[load] -= 1

    def close(self) -> None:
        with self.lock:
            while self.engines:
                self.engines.popitem()[1].close()


class LocalChat:
    """The serving engine in this process; each answer is a `chat` request row in the log at `log_url`
    (written by the serving stage's `RequestLog`, as `tuneforge serve` writes its own), rated there."""

    def __init__(self, log_url: str, shown: str | None = None) -> None:
        self.log_url = log_url
        self.shown = shown
        """How pages name the log (default: its URL, a password hidden)."""
        self.pool = EnginePool()
        self._log: Any = None
        self._log_lock = threading.Lock()

    def where(self) -> str:
        import sqlalchemy as sa

        shown = self.shown or sa.engine.make_url(self.log_url).render_as_string(hide_password=True)
        return f"the request log {shown}"

    def log(self) -> Any:
        """The request log, opened on first use (a UI that never runs the playground opens none)."""
        from tuneforge.serve.store import RequestLog

        with self._log_lock:
            if self._log is None:
                self._log = RequestLog(self.log_url)
            return self._log

    async def stream(
        self, target: Target, messages: list[dict[str, str]], settings: Any
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        from starlette.concurrency import run_in_threadpool

        from tuneforge.serve.recorder import Outcome, since_ms

        log = await run_in_threadpool(self.log)
        engine = await run_in_threadpool(self.pool.acquire, target.load)
        try:
            ids = engine.encode_chat(target.name, messages)
            rid = f"chatcmpl-{uuid.uuid4().hex}"  # the server's id shape: feedback code treats both alike
            log.remember(rid, KEY_NAME, "chat", target.name)  # rateable before its row is written
            start, ttft, done, error = time.perf_counter(), None, None, None
            yield "start", {"id": rid, "model": target.name}
            try:
                async for event in engine.stream(target.name, ids, settings):
                    if event.error is not None:
                        error = str(event.error)
                        yield "error", {"message": error}
                        return
                    if event.delta:
                        ttft = ttft if ttft is not None else since_ms(start)
                        yield "delta", {"text": event.delta}
                    if event.done is not None:
                        done = event.done
                        yield "done", _usage(done.prompt_tokens, done.completion_tokens, done.finish_reason)
            finally:  # the row is written whatever ended the answer (a closed page included)
                status = 200 if done is not None else 500 if error else 499
                outcome = Outcome(
                    id=rid,
                    key_name=KEY_NAME,
                    model=target.name,
                    endpoint="chat",
                    status=status,
                    error=error or (None if done is not None else "the page closed before the answer ended"),
                    finish_reason=done.finish_reason if done else None,
                    prompt_tokens=len(ids),
                    completion_tokens=done.completion_tokens if done else None,
                    latency_ms=since_ms(start),
                    ttft_ms=ttft,
                    stream=True,
                    prompt=json.dumps(messages, ensure_ascii=False),
                    response=json.dumps([done.text], ensure_ascii=False) if done else None,
                )
                log.log_request(**asdict(outcome))
        finally:
            self.pool.release(target.load)

    async def rate(self, request_id: str, rating: int, correction: str | None) -> None:
        from starlette.concurrency import run_in_threadpool

        await run_in_threadpool(self._rate, request_id, rating, correction)

    def _rate(self, request_id: str, rating: int, correction: str | None) -> None:
        """The serving stage's feedback rules: an answer this log holds, asked by the playground, a correction
        that fits its endpoint; a second rating of one answer replaces the first."""
        from tuneforge.serve.validation import correction_problem, may_give_feedback

        log = self.log()
        found = log.find_request(request_id)
        if found is None:
            raise TuneforgeError(f"{self.where()} cannot be read right now", where="--log", fix="try again")
        seen = found[1]
        if seen is None or not may_give_feedback(KEY_NAME, seen.key_name):
            raise TuneforgeError(
                f"no playground answer with id {request_id!r} in {self.where()}", where="rating"
            )
        stored = None
        if correction:
            problem = correction_problem(correction, seen.endpoint, None, None)
            if problem is not None:
                raise TuneforgeError(problem, where="rating")
            stored = log.correction_json(correction, seen.endpoint)
        log.log_feedback(request_id=request_id, key_name=KEY_NAME, rating=rating, correction=stored)

    def close(self) -> None:
        self.pool.close()
        if self._log is not None:
            self._log.close()  # what is queued is written


class RemoteChat:
    """A running `tuneforge serve` at `url`: the same answers any OpenAI client gets, rated through its own
    `POST /v1/feedback` (so its key rules apply: the key that asked rates)."""

    def __init__(self, url: str, key: str | None, transport: Any = None) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.transport = transport  # tests: the server's app in this process (httpx.ASGITransport)

    def _client(self) -> Any:
        import httpx

        return httpx.AsyncClient(
            base_url=self.url, headers=self.headers, timeout=300, transport=self.transport
        )

    def where(self) -> str:
        return f"the server {self.url}"

    async def stream(
        self, target: Target, messages: list[dict[str, str]], settings: Any
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        import httpx

        body = {
            "model": target.name,
            "messages": messages,
            "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature,
            "seed": settings.seed,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        finish = None
        try:
            async with (
                self._client() as client,
                client.stream("POST", "/v1/chat/completions", json=body) as r,
            ):
                if r.status_code != 200:
                    yield "error", {"message": _server_says(self.url, r.status_code, await r.aread())}
                    return
                started = False
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line.removeprefix("data: "))
                    if "error" in chunk:
                        yield "error", {"message": f"{self.url}: {chunk['error'].get('message')}"}
                        return
                    if not started:
                        started = True
                        yield "start", {"id": chunk["id"], "model": target.name}
                    for choice in chunk.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            yield "delta", {"text": text}
                        finish = choice.get("finish_reason") or finish
                    usage = chunk.get("usage")
                    if usage:
                        yield "done", _usage(usage["prompt_tokens"], usage["completion_tokens"], finish)
        except httpx.HTTPError as err:
            yield "error", {"message": f"cannot reach {self.url} ({type(err).__name__}: {err})"}

    async def rate(self, request_id: str, rating: int, correction: str | None) -> None:
        import httpx

        body: dict[str, Any] = {"request_id": request_id, "rating": rating}
        if correction:
            body["correction"] = correction
        try:
            async with self._client() as client:
                r = await client.post("/v1/feedback", json=body)
        except httpx.HTTPError as err:
            raise TuneforgeError(f"cannot reach {self.url} ({err})", where="--server") from None
        if r.status_code != 200:
            raise TuneforgeError(_server_says(self.url, r.status_code, r.content), where="--server")
        if r.json().get("status") != "recorded":  # a server with logging off keeps no feedback
            raise TuneforgeError(
                f"{self.url} did not record the rating: {r.json().get('status')}",
                where="--server",
                fix="start the server with a request log (serve.log_db)",
            )

    def close(self) -> None:
        pass


def _usage(prompt_tokens: int, completion_tokens: int, finish_reason: str | None) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "finish_reason": finish_reason,
    }


def _server_says(url: str, status: int, content: bytes) -> str:
    """The server's own error message (its one error body), else the status and the start of what it sent."""
    try:
        message = json.loads(content)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = content[:300].decode("utf-8", "replace")
    return f"{url} answered {status}: {message}"
