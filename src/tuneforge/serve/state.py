"""What the routes share: engine, config, keys, request log, admission and metrics of one server.

A registry's server (`serve registry:NAME`) switches `engine` to a new champion while it runs: each request
takes a `Lease` on the engine it starts with and finishes there, and an engine switched out is closed once its
last lease is given back.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tuneforge.config import ServeConfig
from tuneforge.serve.engine import Engine, ServedModel
from tuneforge.serve.keys import KeyChecker
from tuneforge.serve.limits import Admission
from tuneforge.serve.metrics import ServerMetrics
from tuneforge.serve.protocol import APIError
from tuneforge.serve.store import RequestLog

if TYPE_CHECKING:
    from tuneforge.serve.shadow import Shadow


class Lease:
    """One request's hold on the engine (and registry version) it started with, given back exactly once.

    Given back by `release()`, or when the lease is garbage (a stream that never started still frees it).
    """

    def __init__(self, state: AppState, engine: Engine, version: int | None) -> None:
        self.engine, self.version = engine, version
        self.passed_on = False
        self._state = state
        self._garbage = weakref.finalize(self, _release_later, state, engine)
        self._garbage.atexit = False

    def pass_on(self) -> None:
        """Keep the lease past the route: a streamed answer releases it when its stream ends."""
        self.passed_on = True

    def release(self) -> None:
        if self._garbage.detach() is not None:  # the first call only
            self._state._release(self.engine)


def _release_later(state: AppState, engine: Engine) -> None:
    """A lease collected as garbage: released on a thread of its own, since the collector may have run
    inside the state's lock."""
    threading.Thread(target=state._release, args=(engine,), name="lease-release", daemon=True).start()


@dataclass
class AppState:
    engine: Engine
    """The engine new requests get."""
    cfg: ServeConfig
    keys: KeyChecker
    log: RequestLog | None
    admission: Admission
    metrics: ServerMetrics
    shutting_down: bool = False
    started: float = field(default_factory=time.time)
    registry: str | None = None
    """The registry whose champion is served (None: fixed runs or models)."""
    version: int | None = None
    """The registry version `engine` serves."""
    registry_problem: str | None = None
    """Why the champion pointer cannot be followed right now (the current version goes on serving)."""
    shadow: Shadow | None = None
    """serve.shadow: the challenger answering a sample of requests too."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _leases: dict[int, int] = field(default_factory=dict, repr=False)
    """id(engine) -> requests in flight on it."""
    _retired: dict[int, tuple[Engine, int | None]] = field(default_factory=dict, repr=False)
    """Engines switched out that still have requests in flight, with their version."""

    def lease(self) -> Lease:
        """The current engine, held until the request gives it back."""
        with self._lock:
            engine, version = self.engine, self.version
            self._leases[id(engine)] = self._leases.get(id(engine), 0) + 1
        return Lease(self, engine, version)

    def switch(self, engine: Engine, version: int | None) -> None:
        """New requests go to `engine`; the old one is closed when its requests in flight have finished."""
        with self._lock:
            old, old_version = self.engine, self.version
            self.engine, self.version = engine, version
            if self._leases.get(id(old)):
                self._retired[id(old)] = (old, old_version)
                return
        _close(old, old_version)

    def _release(self, engine: Engine) -> None:
        with self._lock:
            left = self._leases.get(id(engine), 0) - 1
            if left > 0:
                self._leases[id(engine)] = left
                return
            self._leases.pop(id(engine), None)
            retired = self._retired.pop(id(engine), None)
        if retired is not None:
            _close(*retired)

    def in_flight(self) -> dict[int | None, int]:
        """Requests in flight per registry version (an old version's until they have finished)."""
        with self._lock:
            out = {self.version: self._leases.get(id(self.engine), 0)}
            for key, (_, version) in self._retired.items():
                out[version] = self._leases.get(key, 0)
        return out

    def queue_depth(self) -> int:
        with self._lock:
            engines = [self.engine, *(e for e, _ in self._retired.values())]
        return sum(e.queue_depth() for e in engines)

    def require_log_writable(self) -> None:
        """Refuse work whose log row would be lost (the log file is gone and cannot be reopened)."""
        if self.log is not None and self.log.problem is not None:
            raise APIError(
                503,
                "the request log cannot be written; requests are refused until it can (see the server log)",
                code="log_unavailable",
            )

    def model(self, name: str, kind: str, engine: Engine | None = None) -> ServedModel:
        """The served model a request names, of the kind its route answers with (404 / 400 otherwise)."""
        model = (engine or self.engine).models.get(name)
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


def _close(engine: Engine, version: int | None) -> None:
    """Close a switched-out engine off the caller's thread (the event loop must not wait for it), then free
    its memory (on a GPU, the cached blocks too: the next version may need them)."""
    held = [engine]

    def close() -> None:
        held.pop().close()
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        if version is not None:
            say(f"version {version} finished its last request in flight and was unloaded")

    threading.Thread(target=close, name="engine-close", daemon=True).start()


def say(line: str) -> None:
    """A line in the server's log (stderr)."""
    print(f"tuneforge serve: {line}", file=sys.stderr, flush=True)
