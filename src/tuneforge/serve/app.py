"""The OpenAI-compatible HTTP app: its routes (the wire format is protocol.py's, the work the engine's)."""

from __future__ import annotations

import asyncio
import json
import time
import traceback
import uuid
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from tuneforge.serve.answer import answer
from tuneforge.serve.limits import TOO_LARGE, BodySizeLimit
from tuneforge.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    Classification,
    ClassifyRequest,
    ClassifyResponse,
    CompletionRequest,
    FeedbackRequest,
    ModelCard,
    ModelList,
    ReadyResponse,
    RegistryHealth,
    RequestLogHealth,
    StatusResponse,
    TextPart,
    error_response,
)
from tuneforge.serve.recorder import Outcome, record, record_refusal, since_ms
from tuneforge.serve.state import AppState
from tuneforge.serve.validation import answer_id, correction_problem, may_give_feedback


def caller(request: Request) -> str:
    """The API key's name (401 without a valid key once keys exist; "anonymous" while there are none).

    Fails closed: while the keys file cannot be read, every request is refused (503, the log says why).
    """
    keys = request.app.state.s.keys
    name: str | None = keys.name_of(request.headers.get("authorization"))
    if keys.problem is not None:
        raise APIError(
            503,
            "the server cannot read its API keys file; requests are refused until it can (see its log)",
            code="keys_unavailable",
        )
    if name is None and keys.required:
        raise APIError(401, "a valid API key is required (Authorization: Bearer KEY)", code="invalid_api_key")
    return name or "anonymous"


Caller = Annotated[str, Depends(caller)]


def _body_error(err: StarletteHTTPException) -> tuple[str, str]:
    """(message, code) of FastAPI's 400 for a body it could not parse, from what made it fail."""
    cause = err.__cause__
    if isinstance(cause, UnicodeError):
        return "the request body is not valid UTF-8", "invalid_request"
    if isinstance(cause, RecursionError):
        return "the request body's JSON is nested too deeply", "invalid_request"
    if cause is not None:
        return f"the request body is not valid JSON ({type(cause).__name__})", "invalid_request"
    return str(err.detail), "invalid_request"


def create_app(state: AppState) -> Any:
    """The FastAPI app wrapped in the body-size guard (which runs before any parsing)."""
    app = FastAPI(title="tuneforge", version="1")
    app.state.s = state

    @app.exception_handler(APIError)
    async def _limit(request: Request, err: APIError) -> JSONResponse:
        if not err.logged:
            await _refused(state, request, err.status, f"{err.code}: {err.message}")
        return err.response()

    @app.exception_handler(Exception)
    async def _bug(request: Request, err: Exception) -> JSONResponse:
        traceback.print_exception(err)  # a bug of ours: the traceback goes to the server's log
        message = f"internal error: {type(err).__name__}"
        # A 500 gets its log row like any other answer.
        await _refused(state, request, 500, f"internal_error: {message}")
        return error_response(500, message, code="internal_error")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> Response:
        """FastAPI's own refusals (a body that is not UTF-8 or nests too deep, an unknown route): OpenAI's
        error body and a log row, like every other refusal."""
        if request.scope.get(TOO_LARGE):  # the body-size guard answers (413) and logs this one
            return Response(status_code=413)
        if err.status_code == 400:
            message, code = _body_error(err)
        else:
            message, code = str(err.detail), str(err.detail).lower().replace(" ", "_")
        # The body is not (valid) JSON, or no route reads it: the model stays unknown.
        await _refused(state, request, err.status_code, f"{code}: {message}", body_read=False)
        resp = error_response(err.status_code, message, code=code)
        for name, value in (err.headers or {}).items():
            resp.headers[name] = value
        return resp

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        # Of a union's branch errors the deepest is the telling one (stop: ["\udfff"] is a list, not a str).
        first: dict[str, Any] = max(err.errors(), key=lambda e: len(e.get("loc", ())), default={})
        # Without pydantic's union-branch tags ("function-after[...]"): the field's path is what helps.
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body" and "[" not in str(x))
        message = f"{where}: {first.get('msg', 'invalid request')}"  # never the input: it may be secret
        await _refused(state, request, 422, f"invalid_request: {message}")
        return error_response(422, message, code="invalid_request")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return StatusResponse(status="ok").model_dump()

    @app.get("/ready")
    async def ready() -> Response:
        if state.shutting_down:
            return error_response(503, "shutting down", code="shutting_down")
        state.keys.refresh()
        if state.keys.problem is not None:  # the reasons (file paths) go to the server log, not to callers
            return error_response(503, "the API keys file cannot be read", code="keys_unavailable")
        body = ReadyResponse(models=list(state.engine.models))
        if state.log is not None:
            if state.log.problem is not None:
                return error_response(503, "the request log cannot be written", code="log_unavailable")
            body.request_log = RequestLogHealth(rows_dropped=state.log.dropped, reopened=state.log.reopened)
        if state.registry is not None and state.version is not None:
            # Still 200 with a problem: the current version goes on answering (a 503 would take every replica
            # of a shared registry out of the load balancer at once).
            body.registry = RegistryHealth(
                name=state.registry,
                version=state.version,
                problem=state.registry_problem,
                shadow_version=state.shadow.version if state.shadow is not None else None,
            )
        return JSONResponse(body.json_dict())

    @app.get("/metrics")
    async def metrics(_: Caller) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return PlainTextResponse(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models(_: Caller) -> dict[str, Any]:
        created = int(state.started)
        data = [ModelCard(id=name, created=created, kind=m.kind) for name, m in state.engine.models.items()]
        return ModelList(data=data).model_dump()

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, key: Caller, request: Request) -> Response:
        messages = [{"role": _role(m.role), "content": _text(m.content)} for m in body.messages]
        max_new = body.max_completion_tokens or body.max_tokens or state.cfg.max_new_tokens
        text = json.dumps(messages, ensure_ascii=False)
        encode = lambda e: e.encode_chat(body.model, messages)  # noqa: E731
        return await answer(state, "chat", body, key, max_new, encode, text, request.receive)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, key: Caller, request: Request) -> Response:
        if isinstance(body.prompt, list) and len(body.prompt) > 1:
            raise APIError(400, "one prompt per request (send several requests)", code="unsupported")
        text = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
        max_new = body.max_tokens or 16  # OpenAI's default for completions
        encode = lambda e: e.encode_text(body.model, text)  # noqa: E731
        return await answer(state, "completion", body, key, max_new, encode, text, request.receive)

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest, key: Caller) -> Response:
        state.require_log_writable()
        lease = state.lease()  # the whole request on one engine, even if a new champion is switched in
        try:
            engine = lease.engine
            model = state.model(body.model, "classify", engine)
            texts = [body.input] if isinstance(body.input, str) else body.input
            with state.admission.admit(key):
                start = time.perf_counter()
                for i, text in enumerate(texts):
                    if not await asyncio.to_thread(engine.encode_text, body.model, text):
                        raise APIError(400, f"input {i} is empty (it has no tokens)", code="empty_input")
                results = await engine.classify(body.model, texts)
        finally:
            lease.release()
        data = [
            Classification(index=i, label=max(probs, key=lambda k: probs[k]), probabilities=probs)
            if model.labels
            else Classification(index=i, value=probs["value"])
            for i, probs in enumerate(results)
        ]
        rid = f"cls-{uuid.uuid4().hex}"
        reply = ClassifyResponse(id=rid, model=body.model, data=data).json_dict()
        outcome = Outcome(
            id=rid,
            key_name=key,
            model=body.model,
            endpoint="classify",
            status=200,
            latency_ms=since_ms(start),
            prompt=json.dumps(texts),
            response=json.dumps(reply["data"]),
            model_version=lease.version,
        )
        record(state, outcome)
        return JSONResponse(reply)

    @app.post("/v1/feedback")
    async def feedback(body: FeedbackRequest, key: Caller) -> dict[str, Any]:
        """Feedback (and a correction) on one's own answers, or any answer for a reviewer key.

        A key rating a request again replaces its earlier feedback: what a key may store is bounded by what
        it may ask (one row per request and key).
        """
        log = state.log
        if log is None:
            return StatusResponse(status="logging is off").model_dump()
        state.require_log_writable()
        unreadable = APIError(503, "the request log cannot be read right now; retry", code="log_unavailable")
        with state.admission.admit(key):  # the per-key limits of every other route
            found = await asyncio.to_thread(log.find_request, body.request_id)
            if found is None:
                raise unreadable
            seen = found[1]
            if seen is None or not answer_id(body.request_id):
                raise APIError(
                    404,
                    f"no request with id {body.request_id!r} was logged by this deployment",
                    code="request_not_found",
                )
            if not may_give_feedback(key, seen.key_name, reviewer=key in state.keys.reviewers):
                raise APIError(
                    403,
                    f"request {body.request_id!r} was made with another API key; feedback comes from the key "
                    "that asked, or a reviewer key",
                    code="not_your_request",
                )
            correction = None
            if body.correction is not None:
                served = state.engine.models.get(seen.model or "")
                labels = None if served is None or served.kind != "classify" else served.labels
                problem = correction_problem(body.correction, seen.endpoint, labels, seen.inputs)
                if problem is not None:
                    raise APIError(422, problem, code="invalid_correction")
                correction = log.correction_json(body.correction, seen.endpoint)
            log.log_feedback(
                request_id=body.request_id,
                key_name=key,
                rating=body.rating,
                comment=body.comment,
                correction=correction,
            )
        return StatusResponse(status="recorded").model_dump()

    def too_large(scope: Any) -> None:
        auth = dict(scope.get("headers") or []).get(b"authorization")
        reason = f"request_too_large: body over {state.cfg.max_body_bytes} bytes"
        # The body is not read, so the model it names stays unknown.
        record_refusal(
            state, scope.get("path", ""), auth.decode("latin-1") if auth else None, 413, reason, None
        )

    return BodySizeLimit(app, state.cfg.max_body_bytes, too_large), app


async def _refused(
    state: AppState, request: Request, status: int, reason: str, *, body_read: bool = True
) -> None:
    """Record a refusal with its key and, where FastAPI read a JSON body, the model it named."""
    model = await _requested_model(request) if body_read else None
    record_refusal(state, request.url.path, request.headers.get("authorization"), status, reason, model)


async def _requested_model(request: Request) -> str | None:
    """The `model` field of a JSON body FastAPI already read (None when it did not parse)."""
    if request.method != "POST":
        return None
    try:
        body = await request.json()  # cached by FastAPI's own read: the body is not received twice
    except Exception:  # not JSON, or not UTF-8: the model stays unknown
        return None
    model = body.get("model") if isinstance(body, dict) else None
    return model[:200] if isinstance(model, str) else None  # the column's width


def _role(role: str) -> str:
    return "system" if role == "developer" else role


def _text(content: str | list[TextPart]) -> str:
    return content if isinstance(content, str) else "".join(p.text for p in content)
