"""Playground: send a prompt to a run's model, or to two models side by side (the run and its base model, or
two runs), read the answers as they stream, and rate each one (good / bad, a corrected answer).

Who answers is `chat.py`'s: the serving stage's engine in this process, or a running `tuneforge serve`
(`tuneforge ui --server URL`). A rating lands in the serving stage's feedback table either way.

Only while the UI is local (no login keys): a page that runs any text through a model for whoever reaches it
is not something to open to a network.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from tuneforge.errors import TuneforgeError
from tuneforge.ui import security
from tuneforge.ui.chat import Chat, Target

router = APIRouter()
MAX_NEW_TOKENS = 512
BASE = "base:"
"""A target naming a run's base model: `base:runs/chat`."""
RATINGS = {"good": 1, "bad": -1}
"""The buttons → the feedback table's rating (the server's thumbs up / down)."""


def _chat(request: Request) -> Chat:
    chat: Chat = request.app.state.chat
    return chat


def _target(request: Request, spec: str) -> tuple[Target, str]:
    """(what answers, its label) of `runs/x` (the run's tuned model) or `base:runs/x` (the model it tuned)."""
    from tuneforge.models.loading import run_base_path
    from tuneforge.models.runs import PROMPT_LEARNING
    from tuneforge.serve.engine import base_model_name, resolve_targets

    ui = request.app.state.ui
    run = ui.run(spec.removeprefix(BASE))
    served = resolve_targets([str(run.path)])[0]  # refuses a run that has not finished, as `serve` does
    if served.kind != "generate":
        raise TuneforgeError(
            f"run {run.path.name} is a {served.config.model.task if served.config else ''} run: "
            "the playground talks to runs that generate text (model.task: causal-lm)",
            where="run",
            fix="pick a chat or instruction run",
        )
    if not spec.startswith(BASE):
        return Target(str(run.path), served.name), ui.rel(run.path)
    name = base_model_name(served)
    if served.adapter is not None and served.method not in PROMPT_LEARNING:
        # The run's engine serves its base under that name (the adapter off): one model in memory for both.
        return Target(str(run.path), name), f"base model {name}"
    load = run_base_path(run.manifest)
    if not request.app.state.remote:
        name = resolve_targets([load])[0].name  # what the engine calls a plain model folder
    return Target(load, name), f"base model {name}"


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


def _partners(request: Request, rel: str) -> list[tuple[str, str]]:
    """(target, label) of what the run can be compared with: its base model, every other finished chat run."""
    from tuneforge.ui.runs import run_rows

    ui = request.app.state.ui
    others = [
        (r.rel, r.rel)
        for r in run_rows(ui.workspace)
        if r.rel != rel and r.state == "completed" and r.task == "causal-lm"
    ]
    return [(BASE + rel, "its base model"), *sorted(others)]


def _page(request: Request, rel: str, form: dict[str, str], answers: list[dict[str, Any]]) -> Response:
    ui = request.app.state.ui
    return ui.page(
        request,
        "playground.html",
        rel=rel,
        form=form,
        answers=answers,
        partners=_partners(request, rel),
        where=_chat(request).where(),
        remote=request.app.state.remote,
    )


@router.get("/playground", response_class=HTMLResponse)
def playground_page(request: Request, path: str = "", other: str = "") -> Response:
    _refuse_remote(request)
    ui = request.app.state.ui
    rel = ui.rel(ui.run(path).path)
    return _page(request, rel, {"other": other}, [])


async def _ask(request: Request) -> tuple[str, dict[str, str], list[dict[str, str]], Any]:
    """(run, form, chat messages, settings) of a checked playground POST."""
    form = await security.checked_form(request)
    _refuse_remote(request)
    ui = request.app.state.ui
    rel = ui.rel(ui.run(form.get("path")).path)
    prompt = form.get("prompt", "").strip()
    if not prompt:
        raise TuneforgeError("the prompt is empty", where="prompt")
    return rel, form, [{"role": "user", "content": prompt}], _settings(form)


@router.post("/playground", response_class=HTMLResponse)
async def playground_answer(request: Request) -> Response:
    """Without JavaScript: the whole answers, one side after the other, on a new page."""
    rel, form, messages, settings = await _ask(request)
    specs = [spec for spec in (rel, form.get("other", "")) if spec]
    targets = [await run_in_threadpool(_target, request, spec) for spec in specs]  # both checked first
    answers = []
    for spec, (target, label) in zip(specs, targets, strict=True):
        answer: dict[str, Any] = {"label": label, "target": spec, "text": ""}
        async for kind, data in _chat(request).stream(target, messages, settings):
            if kind == "start":
                answer["id"] = data["id"]
            elif kind == "delta":
                answer["text"] += data["text"]
            else:
                answer[kind] = data
        answers.append(answer)
    return _page(request, rel, form, answers)


def _event(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


@router.post("/playground/stream")
async def playground_stream(request: Request) -> Response:
    """One side's answer as server-sent events while it is produced: `start` (the request id a rating
    names, the model's label), `delta` events (text, control characters shown as \\xNN as the page shows
    them), then `done` (token counts, finish reason) or `error`. A refused request (bad settings, no CSRF
    token) is the same error page as the form's."""
    from tuneforge.evaluation.report.render import visible

    rel, form, messages, settings = await _ask(request)
    target, label = await run_in_threadpool(_target, request, form.get("target") or rel)
    chat = _chat(request)

    async def events() -> AsyncIterator[str]:
        try:
            async for kind, data in chat.stream(target, messages, settings):
                if kind == "delta":
                    data = {"text": visible(data["text"])}
                elif kind == "start":
                    data = data | {"label": label}  # the heading the page's form post would show
                yield _event(kind, data)
        except TuneforgeError as err:
            yield _event("error", {"message": err.render()})

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.post("/playground/rate")
async def playground_rate(request: Request) -> Response:
    """A rating (and corrected answer) of one answer, into the feedback table; JSON for the page's script,
    a page without JavaScript."""
    form = await security.checked_form(request)
    _refuse_remote(request)
    wants_json = "application/json" in request.headers.get("accept", "")
    try:
        rating = RATINGS.get(form.get("rating", ""))
        if rating is None:
            raise TuneforgeError("a rating is good or bad", where="rating")
        request_id = form.get("request_id", "")
        correction = form.get("correction", "").strip() or None
        chat = _chat(request)
        await chat.rate(request_id, rating, correction)
    except TuneforgeError as err:
        if wants_json:
            return JSONResponse({"error": err.render()}, status_code=400)
        raise
    saved = {"saved": form["rating"], "corrected": correction is not None, "into": chat.where()}
    if wants_json:
        return JSONResponse(saved)
    ui = request.app.state.ui
    message = f"Rated {saved['saved']}{' with a correction' if correction else ''}, into {saved['into']}."
    return ui.page(request, "error.html", title="Rating saved", message=message, notice=True)
