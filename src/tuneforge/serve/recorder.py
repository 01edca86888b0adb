"""The one place a request's outcome is recorded: its Prometheus metrics and its request-log row.

Answers (chat, completions, classify) and refusals (any 4xx/5xx before an answer started) both end here, so
what `/metrics` counts and what the log holds cannot drift apart.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from tuneforge.serve.state import AppState
from tuneforge.serve.validation import INTERNAL_PREFIX

ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completion",
    "/v1/classify": "classify",
    "/v1/feedback": "feedback",
    "/v1/models": "models",
}
"""Route → the endpoint name the request log and metrics use for it."""


@dataclass
class Outcome:
    """One request's log row; the fields an answer does not have stay None."""

    id: str
    key_name: str | None
    model: str | None
    endpoint: str
    status: int
    error: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    stream: bool | None = None
    prompt: str | None = None
    response: str | None = None
    model_version: int | None = None
    """The registry version that answered (None: not served from a registry, or refused before an answer)."""


def record(state: AppState, outcome: Outcome, *, log_row: bool = True) -> None:
    """Count `outcome` in the metrics and queue its log row.

    An answer (it has a latency) counts as a request with its latency; its tokens and time to first token
    count when it has them; every status of 400 and over counts as an error.
    """
    m, o = state.metrics, outcome
    if o.latency_ms is not None:
        assert o.model is not None
        m.requests.labels(o.endpoint, o.model, str(o.status)).inc()
        m.latency.labels(o.endpoint).observe(o.latency_ms / 1000)
    if o.status >= 400:
        m.errors.labels(str(o.status)).inc()
    if o.prompt_tokens is not None:
        assert o.model is not None
        m.tokens.labels(o.model, "prompt").inc(o.prompt_tokens)
        m.tokens.labels(o.model, "completion").inc(o.completion_tokens or 0)
    if o.ttft_ms is not None:
        m.ttft.observe(o.ttft_ms / 1000)
    if state.log is not None and log_row:
        state.log.log_request(**asdict(o))


def record_shadow(state: AppState, row: dict[str, Any]) -> None:
    """A challenger's answer (serve.shadow): its own metric and log table, never the user's traffic."""
    state.metrics.shadow.labels(str(row["status"])).inc()
    if state.log is not None:
        state.log.log_shadow(**row)


def since_ms(start: float) -> float:
    """Milliseconds from `start` (a `time.perf_counter()` reading) to now."""
    return (time.perf_counter() - start) * 1000


def record_refusal(
    state: AppState, path: str, authorization: str | None, status: int, reason: str, model: str | None
) -> None:
    """A refused request, with what is known of it: its key's name (never the key itself), its model."""
    logged = state.log is not None and path.startswith("/v1/")
    keys = state.keys
    key_name = None
    if logged:
        key_name = keys.name_of(authorization) or (None if keys.required or keys.problem else "anonymous")
    outcome = Outcome(
        id=f"{INTERNAL_PREFIX}{uuid.uuid4().hex}",
        key_name=key_name,
        model=model,
        endpoint=ENDPOINTS.get(path, path[:64]),
        status=status,
        error=reason,
    )
    record(state, outcome, log_row=logged)
