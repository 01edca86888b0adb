"""The OpenAI-compatible wire format: every request and response model, the one API error and its body.

Following vLLM's `entrypoints/openai/protocol.py`: routes (app.py) and the answer's logic (answer.py) build
bodies from these models, so the JSON a client sees is declared in one place.
Chat templates come from the model folder only: no request field can supply one (template injection).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from tuneforge.serve.validation import Text

# --- requests

Stop = Text | Annotated[list[Text], Field(max_length=4)] | None


class GenerationRequest(BaseModel):
    """What chat and text completions share."""

    # Unknown OpenAI parameters (logprobs, penalties, user...) are accepted and ignored, as clients send them.
    model_config = ConfigDict(extra="ignore")

    model: Text
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=8)
    stop: Stop = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart]


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(GenerationRequest):
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=16)]


class ClassifyRequest(BaseModel):
    model: Text
    input: Text | Annotated[list[Text], Field(min_length=1, max_length=64)]


Correction = Annotated[Text, Field(max_length=10_000)] | Annotated[float, Field(allow_inf_nan=False)]


class FeedbackRequest(BaseModel):
    request_id: Text = Field(min_length=1, max_length=64)
    rating: int = Field(ge=-1, le=5)
    """-1/1 for thumbs down/up, or a 1-5 scale; 0 for a comment without a rating."""
    comment: Text | None = Field(None, max_length=10_000)
    correction: Correction | Annotated[list[Correction | None], Field(min_length=1, max_length=64)] | None = (
        None
    )
    """The right answer (chat, completions: its text) or label / value (classify: one, or one per input,
    null for an input that was right); checked against the request it rates."""


# --- responses


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    """A text completion's choice, whole or as a stream chunk's piece."""

    index: int
    text: str
    finish_reason: str | None
    logprobs: None = None


class ChatChoice(BaseModel):
    index: int
    message: dict[str, str]
    finish_reason: str | None
    logprobs: None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: dict[str, str]
    """{} when a choice ends, {"content": ...} for a piece, the role with empty content first."""
    finish_reason: str | None
    logprobs: None = None


Choice = CompletionChoice | ChatChoice | ChatChunkChoice


class GenerationResponse(BaseModel):
    """A whole answer or one server-sent chunk (`chat.completion[.chunk]`, `text_completion`)."""

    id: str
    object: str
    created: int
    model: str
    system_fingerprint: None = None
    choices: list[Choice]
    usage: Usage | None = None
    """On a whole answer, and on the last chunk when the client asked for it; otherwise absent."""

    def json_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude={"usage"} if self.usage is None else None)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tuneforge"
    kind: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Classification(BaseModel):
    """One input's answer: label and probabilities for a labelled head, else a value (regression)."""

    index: int
    label: str | None = None
    probabilities: dict[str, float] | None = None
    value: float | None = None


class ClassifyResponse(BaseModel):
    id: str
    object: Literal["classification"] = "classification"
    model: str
    data: list[Classification]

    def json_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class StatusResponse(BaseModel):
    """/health, /v1/feedback."""

    status: str


class RequestLogHealth(BaseModel):
    rows_dropped: int
    reopened: int


class RegistryHealth(BaseModel):
    name: str
    version: int
    """The registry version new requests get."""
    problem: str | None = None
    """Why the champion pointer cannot be followed (the version above goes on serving); absent while all is
    well."""
    shadow_version: int | None = None
    """serve.shadow: the version answering a sample of requests too (absent without one)."""


class ReadyResponse(BaseModel):
    status: Literal["ready"] = "ready"
    models: list[str]
    request_log: RequestLogHealth | None = None
    """Absent while logging is off."""
    registry: RegistryHealth | None = None
    """Absent unless a registry's champion is served."""

    def json_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


# --- errors


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error envelope, so clients' own error handling understands ours."""

    error: ErrorInfo


def error_kind(status: int) -> str:
    return "server_error" if status >= 500 else "invalid_request_error"


def error_body(
    message: str, *, status: int, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """The one error body every refusal and failure answers with (JSON, a stream's last event, the 413)."""
    info = ErrorInfo(message=message, type=error_kind(status), param=param, code=code)
    return ErrorResponse(error=info).model_dump()


class APIError(Exception):
    """Any request the API refuses or fails (4xx/5xx); the app turns it into `error_body`."""

    def __init__(
        self, status: int, message: str, *, code: str, retry_after: int | None = None, logged: bool = False
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.retry_after = status, message, code, retry_after
        self.logged = logged
        """True when the request's own row (with its timings) is already in the request log."""

    def response(self) -> JSONResponse:
        resp = JSONResponse(
            error_body(self.message, status=self.status, code=self.code), status_code=self.status
        )
        if self.retry_after is not None:
            resp.headers["Retry-After"] = str(self.retry_after)
        return resp


def error_response(status: int, message: str, *, code: str) -> JSONResponse:
    return JSONResponse(error_body(message, status=status, code=code), status_code=status)
