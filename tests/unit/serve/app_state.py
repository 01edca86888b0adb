"""An `AppState` for tests that drive the HTTP app (a stand-in or real engine, no server process)."""

from __future__ import annotations

from typing import Any

from tuneforge.config import ServeConfig
from tuneforge.serve.keys import KeyChecker, KeyFile
from tuneforge.serve.limits import Admission
from tuneforge.serve.metrics import ServerMetrics
from tuneforge.serve.state import AppState


def app_state(engine: Any, keys: KeyFile, **fields: Any) -> AppState:
    """The server's state around `engine`: default serve settings, no request log, 8 running and 4 queued,
    metrics on a frozen clock; `fields` replace any of them (log=, cfg=, admission=, registry=, ...)."""
    defaults: dict[str, Any] = {
        "cfg": ServeConfig(),
        "log": None,
        "admission": Admission(8, 4),
        "metrics": ServerMetrics(lambda: 0.0),
    }
    return AppState(engine=engine, keys=KeyChecker(keys), **(defaults | fields))
