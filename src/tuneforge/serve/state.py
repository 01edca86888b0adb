"""What the routes share: engine, config, keys, request log, admission and metrics of one server."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tuneforge.config import ServeConfig
from tuneforge.serve.engine import Engine, ServedModel
from tuneforge.serve.keys import KeyChecker
from tuneforge.serve.limits import Admission
from tuneforge.serve.metrics import ServerMetrics
from tuneforge.serve.protocol import APIError
from tuneforge.serve.store import RequestLog


@dataclass
class AppState:
    engine: Engine
    cfg: ServeConfig
    keys: KeyChecker
    log: RequestLog | None
    admission: Admission
    metrics: ServerMetrics
    shutting_down: bool = False
    started: float = field(default_factory=time.time)

    def require_log_writable(self) -> None:
        """Refuse work whose log row would be lost (the log file is gone and cannot be reopened)."""
        if self.log is not None and self.log.problem is not None:
            raise APIError(
                503,
                "the request log cannot be written; requests are refused until it can (see the server log)",
                code="log_unavailable",
            )

    def model(self, name: str, kind: str) -> ServedModel:
        """The served model a request names, of the kind its route answers with (404 / 400 otherwise)."""
        model = self.engine.models.get(name)
        if model is None:
            raise APIError(
                404, f"The model '{name}' does not exist; see GET /v1/models", code="model_not_found"
            )
        if model.kind != kind:
            what = "generation" if kind == "generate" else "classification"
            raise APIError(
                400, f"model '{name}' is a {model.kind} model, not a {what} model", code="wrong_model_kind"
            )
        return model
