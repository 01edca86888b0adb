"""Runs: the list (sortable, filterable) and one run (live curves, config, evaluation, report)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from tuneforge.artifacts import RunDir
from tuneforge.errors import TuneforgeError
from tuneforge.train.watch import last_record, metrics_so_far, run_state
from tuneforge.ui import security
from tuneforge.ui.charts import training_charts
from tuneforge.ui.launch import RESUMABLE
from tuneforge.workspace import find_artifacts

router = APIRouter()
SORTS = ("name", "state", "task", "method", "base", "metric", "duration")
POLL_S = 2
HTMX_STOP_POLLING = 286  # htmx stops an `every Ns` trigger when the answer has this status


@dataclass
class RunRow:
    rel: str
    name: str
    state: str
    detail: str
    task: str
    method: str
    base: str
    metric: str  # "accuracy (test)": what `value` is
    value: float | None
    shown: str  # value with its CI, as the report prints it
    duration: float | None


# Headline per run, keyed by its eval files' (name, size, mtime): re-read only when an evaluation changed,
# so a list of 1,000 evaluated runs does not parse 1,000 eval JSONs on every visit.
_HEADLINES: dict[str, tuple[Any, tuple[str, str, float | None]]] = {}


def headline_of(run: RunDir) -> tuple[str, str, float | None]:
    """(metric (split), value [CI], value) of the run's evaluation, test split first; blanks if none."""
    try:
        stamp = tuple(
            sorted(
                (e.name, st.st_size, st.st_mtime_ns)
                for e in os.scandir(run.eval_dir)
                if e.name.endswith(".json") and (st := e.stat())
            )
        )
    except OSError:
        stamp = ()
    cached = _HEADLINES.get(str(run.path))
    if cached and cached[0] == stamp:
        return cached[1]
    out: tuple[str, str, float | None] = ("", "", None)
    if stamp:
        from tuneforge.evaluation.report import eval_results
        from tuneforge.evaluation.report.evaluation import headline_metric, intervals
        from tuneforge.evaluation.report.render import with_ci

        try:
            results = eval_results(run)
        except TuneforgeError:
            results = {}
        split = "test" if "test" in results else next(iter(results), None)
        if split is not None:
            r = results[split]
            metric = headline_metric(r)
            if metric is not None:
                value = r["tuned"][metric]
                out = (f"{metric} ({split})", with_ci(value, intervals(r, "tuned").get(metric)), float(value))
    _HEADLINES[str(run.path)] = (stamp, out)
    return out


def run_rows(workspace: Path) -> list[RunRow]:
    rows = []
    for found in find_artifacts(workspace):
        if found.kind != "run":
            continue
        run = RunDir(found.path)
        state = run_state(run, found.manifest, found.problem)
        m = found.manifest or {}
        duration = m.get("train_time_s") if state.state == "completed" else None
        if duration is None and state.state != "unreadable":
            duration = (last_record(run) or {}).get("time_s")
        metric, shown, value = headline_of(run) if found.manifest else ("", "", None)
        rows.append(
            RunRow(
                rel=found.rel,
                name=found.rel,
                state=state.state,
                detail=state.detail,
                task=str(m.get("task") or ""),
                method=str(m.get("method") or ""),
                base=str(m.get("base_model") or ""),
                metric=metric,
                value=value,
                shown=shown,
                duration=float(duration) if isinstance(duration, int | float) else None,
            )
        )
    return rows


def _sort_key(column: str) -> Any:
    def key(r: RunRow) -> tuple[int, Any]:
        v = {
            "name": r.name,
            "state": r.state,
            "task": r.task,
            "method": r.method,
            "base": r.base,
            "metric": r.value,
            "duration": r.duration,
        }[column]
        missing = v is None or v == "" or (isinstance(v, float) and math.isnan(v))
        return (1, 0) if missing else (0, v)

    return key


@router.get("/", response_class=HTMLResponse)
def runs_list(request: Request, q: str = "", state: str = "", sort: str = "name", desc: int = 0) -> Response:
    ui = request.app.state.ui
    rows = run_rows(ui.workspace)
    states = sorted({r.state for r in rows})
    needle = q.strip().lower()
    shown = [
        r
        for r in rows
        if (not state or r.state == state)
        and (not needle or any(needle in s.lower() for s in (r.name, r.task, r.method, r.base, r.metric)))
    ]
    sort = sort if sort in SORTS else "name"
    missing_last = [r for r in shown if _sort_key(sort)(r)[0] == 1]
    present = sorted(
        (r for r in shown if _sort_key(sort)(r)[0] == 0), key=_sort_key(sort), reverse=bool(desc)
    )
    return ui.page(
        request,
        "runs.html",
        rows=present + missing_last,
        total=len(rows),
        states=states,
        q=q,
        state=state,
        sort=sort,
        desc=bool(desc),
        sorts=SORTS,
    )


def _blocks_or_problem(make: Any) -> tuple[list[Any], str | None]:
    """A stage's report blocks, or what stopped them (a half-written or older file): never a 500."""
    try:
        return make(), None
    except Exception as err:  # files of an older version or edited by hand: the page says what, not a 500
        return [], f"{type(err).__name__}: {err}"


@router.get("/run", response_class=HTMLResponse)
def run_page(request: Request, path: str = "") -> Response:
    ui = request.app.state.ui
    run = ui.run(path)
    state = run_state(run)
    manifest: dict[str, Any] = {}
    if state.state != "unreadable":
        manifest = run.manifest
    from tuneforge.evaluation.report import eval_results
    from tuneforge.evaluation.report.evaluation import evaluation_blocks, headline
    from tuneforge.evaluation.report.run_sections import model_section

    model, model_problem = _blocks_or_problem(lambda: model_section(run)) if manifest else ([], None)
    evaluations = []
    results, eval_problem = _blocks_or_problem(lambda: list(eval_results(run).items()))
    for split, r in results:
        blocks, problem = _blocks_or_problem(lambda r=r: [("p", headline(r)), *evaluation_blocks(run, r)])
        evaluations.append((split, blocks, problem))
    try:
        config = run.config_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        config = None
    return ui.page(
        request,
        "run.html",
        rel=ui.rel(run.path),
        run=run,
        state=state,
        manifest=manifest,
        model=model,
        model_problem=model_problem,
        evaluations=evaluations,
        eval_problem=eval_problem,
        config=config,
        has_report=(run.path / "report.html").is_file(),
        has_human=(run.path / "human-eval" / "key.json").is_file(),
        has_monitor=(run.path / "monitor").is_dir(),
        can_chat=ui.local and state.state == "completed" and manifest.get("task") == "causal-lm",
        resumable=RESUMABLE,
        charts=training_charts(metrics_so_far(run)),
        poll_s=POLL_S,
    )


@router.get("/run/curves", response_class=HTMLResponse)
def run_curves(request: Request, path: str = "") -> Response:
    """The charts alone, polled by the run page while the run trains; the last answer stops the polling."""
    ui = request.app.state.ui
    run = ui.run(path)
    state = run_state(run)
    response = ui.page(
        request,
        "curves.html",
        rel=ui.rel(run.path),
        charts=training_charts(metrics_so_far(run)),
        state=state,
        poll_s=POLL_S,
    )
    if not state.live:
        response.status_code = HTMX_STOP_POLLING
    return response


@router.get("/run/report")
def run_report(request: Request, path: str = "") -> Response:
    """The run's report.html as `tuneforge report` wrote it, sandboxed (it is a file, not our template)."""
    ui = request.app.state.ui
    run = ui.run(path)
    report = ui.folder(f"{ui.rel(run.path)}/report.html")  # a link inside the run must not lead out
    if not report.is_file():
        from tuneforge.ui.app import NotFound

        raise NotFound(f"run {path} has no report yet: run `tuneforge report {run.path}`")
    return FileResponse(
        report, media_type="text/html", headers={"Content-Security-Policy": security.REPORT_CSP}
    )
