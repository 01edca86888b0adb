"""Playground: send a prompt to a run's model and read its answer, through the serving stage's own engine
(`TransformersEngine`, in this process: the same prompt encoding and decoding `tuneforge serve` uses).

Only while the UI is local (no login keys): a page that runs any text through a model for whoever reaches it
is not something to open to a network. One run's engine is kept loaded; picking another run replaces it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from tuneforge.errors import TuneforgeError
from tuneforge.ui import security

router = APIRouter()
MAX_NEW_TOKENS = 512
_LOADED: dict[str, Any] = {}  # {"run": path, "engine": engine, "name": served name}: one at a time
_LOCK = threading.Lock()


def _engine(run: Any) -> tuple[Any, str]:
    """The run's generation engine, loaded once (a classification run is refused: it has nothing to say)."""
    from tuneforge.config import ServeConfig
    from tuneforge.serve.engine import resolve_targets
    from tuneforge.serve.engine_transformers import TransformersEngine

    with _LOCK:
        if _LOADED.get("run") == str(run.path):
            return _LOADED["engine"], _LOADED["name"]
        served = resolve_targets([str(run.path)])
        if served[0].kind != "generate":
            raise TuneforgeError(
                f"run {run.path.name} is a {served[0].config.model.task if served[0].config else ''} run: "
                "the playground talks to runs that generate text (model.task: causal-lm)",
                where="run",
                fix="pick a chat or instruction run",
            )
        if "engine" in _LOADED:
            _LOADED.pop("engine").close()
        engine = TransformersEngine(served, ServeConfig())
        _LOADED.update(run=str(run.path), engine=engine, name=served[0].name)
        return engine, served[0].name


def _refuse_remote(request: Request) -> None:
    if not request.app.state.ui.local:
        raise TuneforgeError(
            "the playground is only served while the UI is local (started without --keys)",
            where="--keys",
            fix="run `tuneforge ui` on this machine without --keys to use the playground",
        )


def _settings(form: dict[str, str]) -> Any:
    from tuneforge.models.generate import GenerationSettings

    try:
        tokens, temperature = int(form.get("max_new_tokens") or 64), float(form.get("temperature") or 0)
    except ValueError:
        raise TuneforgeError("max new tokens and temperature must be numbers", where="settings") from None
    if not 1 <= tokens <= MAX_NEW_TOKENS or not 0 <= temperature <= 2:
        raise TuneforgeError(
            f"max new tokens must be 1–{MAX_NEW_TOKENS} and temperature 0–2", where="settings"
        )
    return GenerationSettings(max_new_tokens=tokens, temperature=temperature, seed=0)


@router.get("/playground", response_class=HTMLResponse)
def playground_page(request: Request, path: str = "") -> Response:
    _refuse_remote(request)
    ui = request.app.state.ui
    run = ui.run(path)
    return ui.page(request, "playground.html", rel=ui.rel(run.path), form={}, answer=None)


async def _ask(request: Request) -> tuple[Any, dict[str, str], Any, str, list[int], Any]:
    """(run, form, engine, served name, prompt ids, settings) of a checked playground POST."""
    form = await security.checked_form(request)
    _refuse_remote(request)
    ui = request.app.state.ui
    run = ui.run(form.get("path"))
    prompt = form.get("prompt", "").strip()
    if not prompt:
        raise TuneforgeError("the prompt is empty", where="prompt")
    settings = _settings(form)
    engine, name = await run_in_threadpool(_engine, run)  # loading a model takes seconds
    ids = engine.encode_chat(name, [{"role": "user", "content": prompt}])
    return run, form, engine, name, ids, settings


@router.post("/playground", response_class=HTMLResponse)
async def playground_answer(request: Request) -> Response:
    run, form, engine, name, ids, settings = await _ask(request)
    answer = await engine.generate(name, ids, settings)
    ui = request.app.state.ui
    return ui.page(request, "playground.html", rel=ui.rel(run.path), form=form, answer=answer)


def _event(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


@router.post("/playground/stream")
async def playground_stream(request: Request) -> Response:
    """The answer as server-sent events while the engine's `stream` produces it: `delta` events (text, control
    characters shown as \\xNN as the page shows them), then `done` (token counts, finish reason) or `error`.
    A refused request (bad settings, no CSRF token) is the same error page as the form's."""
    from tuneforge.evaluation.report.render import visible

    _, _, engine, name, ids, settings = await _ask(request)

    async def events() -> AsyncIterator[str]:
        try:
            async for event in engine.stream(name, ids, settings):
                if event.error is not None:
                    yield _event("error", {"message": str(event.error)})
                    return
                if event.delta:
                    yield _event("delta", {"text": visible(event.delta)})
                if event.done is not None:
                    done = event.done
                    yield _event(
                        "done",
                        {
                            "prompt_tokens": done.prompt_tokens,
                            "completion_tokens": done.completion_tokens,
                            "finish_reason": done.finish_reason,
                        },
                    )
        except TuneforgeError as err:
            yield _event("error", {"message": err.render()})

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
