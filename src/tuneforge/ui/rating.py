"""Human evaluation: blind A/B rating of `human-eval export`'s sheets in the browser, and the results.

The sheets, their key and the results are evaluation/human.py's: a rater sees a sheet's answer_1 / answer_2
(sides already randomised per rater by export, the key never shown); each click is saved in the UI's SQLite
file under the export it belongs to; the results page fills the sheets with those ratings and hands them to
`import_ratings`, the same function `tuneforge human-eval import` calls.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from tuneforge.artifacts import RunDir, read_json, read_jsonl, write_text_atomic
from tuneforge.evaluation import human
from tuneforge.ui import security
from tuneforge.workspace import find_artifacts

router = APIRouter()
# How each rating of human.SCALE is offered; a value added to the scale later shows under its own name.
SAYS = {"1": "A is better", "2": "B is better", "tie": "Tie"}
KEYS = {"1": "1", "2": "2", "tie": "t"}


class Export:
    """A run's exported sheets and key (RUN/human-eval/), identified by the key file's hash."""

    def __init__(self, run: RunDir) -> None:
        from tuneforge.ui.app import NotFound

        self.run = run
        self.dir = run.path / human.HUMAN_DIR
        key_path = self.dir / "key.json"
        if not key_path.is_file():
            raise NotFound(
                f"run {run.path.name} has no exported sheets: run `tuneforge human-eval export {run.path} "
                "--raters 2` first"
            )
        self.id = hashlib.sha256(key_path.read_bytes()).hexdigest()
        self.key = read_json(key_path)
        self.sheets = sorted(self.key.get("sheets") or {})

    def rows(self, sheet: str) -> list[dict[str, Any]]:
        from tuneforge.ui.app import NotFound

        if sheet not in self.sheets:  # the name also picks a file: only the key's own sheet names
            raise NotFound(f"no sheet {sheet!r} in this export (sheets: {', '.join(self.sheets)})")
        return read_jsonl(self.dir / "sheets" / f"{sheet}.jsonl")


@router.get("/human", response_class=HTMLResponse)
def human_runs(request: Request) -> Response:
    ui = request.app.state.ui
    runs = [f for f in find_artifacts(ui.workspace) if f.kind == "run"]
    exported = [f for f in runs if (f.path / human.HUMAN_DIR / "key.json").is_file()]
    return ui.page(request, "human_runs.html", runs=exported)


@router.get("/human/run", response_class=HTMLResponse)
def human_run(request: Request, path: str = "") -> Response:
    return _human_run(request, path, "")


def _human_run(request: Request, path: str, error: str) -> Response:
    ui = request.app.state.ui
    export = Export(ui.run(path))
    rated = ui.state.ratings(export.id)
    progress = [
        (sheet, sum(1 for s, _ in rated if s == sheet), len(export.key["sheets"][sheet]))
        for sheet in export.sheets
    ]
    results, stale = None, False
    human_json = export.run.eval_dir / "human.json"
    if human_json.is_file():
        from tuneforge.evaluation.report.ratings import human_blocks

        try:
            results = human_blocks(read_json(human_json))
        except Exception as err:  # an older or hand-edited file: say so, the page stays up
            error = error or f"{human_json} cannot be shown: {err}"
        stale = human_json.stat().st_mtime < (export.dir / "key.json").stat().st_mtime
    return ui.page(
        request,
        "human_run.html",
        rel=ui.rel(export.run.path),
        export=export,
        progress=progress,
        results=results,
        stale=stale,
        error=error,
    )


@router.get("/human/rate", response_class=HTMLResponse)
def rate_page(request: Request, path: str = "", sheet: str = "", row: str = "", rater: str = "") -> Response:
    ui = request.app.state.ui
    export = Export(ui.run(path))
    rows = export.rows(sheet)
    rated = ui.state.ratings(export.id, sheet)
    ids = [str(r["row_id"]) for r in rows]
    if row and row not in ids:
        from tuneforge.ui.app import NotFound

        raise NotFound(f"no row {row!r} in sheet {sheet}")
    current = row or next((i for i in ids if (sheet, i) not in rated), "")
    pair = rows[ids.index(current)] if current else None
    return ui.page(
        request,
        "rate.html",
        rel=ui.rel(export.run.path),
        sheet=sheet,
        pair=pair,
        ids=ids,
        rated=rated,
        current=current,
        done=sum(1 for i in ids if (sheet, i) in rated),
        rating=rated.get((sheet, current)),
        rater=rater or next((v["rater"] for v in rated.values() if v["rater"]), ""),
        scale=[(v, SAYS.get(v, v), KEYS.get(v, "")) for v in human.SCALE],
    )


@router.post("/human/rate")
async def rate(request: Request) -> Response:
    form = await security.checked_form(request)
    return await run_in_threadpool(_rate, request, form)  # file reads and a synced SQLite write


def _rate(request: Request, form: dict[str, str]) -> Response:
    ui = request.app.state.ui
    export = Export(ui.run(form.get("path")))
    sheet, row_id, preference = form.get("sheet", ""), form.get("row_id", ""), form.get("preference", "")
    ids = {str(r["row_id"]) for r in export.rows(sheet)}
    if row_id not in ids or preference not in human.SCALE:
        from tuneforge.errors import TuneforgeError

        raise TuneforgeError(
            f"row {row_id!r} of sheet {sheet} cannot be rated {preference!r}",
            fix="rate with the page's buttons: " + ", ".join(human.SCALE),
        )
    rater = form.get("rater", "").strip()[:100]
    ui.state.save_rating(
        export.id, ui.rel(export.run.path), sheet, row_id, preference, form.get("comment", "")[:5000], rater
    )
    query = urlencode({"path": ui.rel(export.run.path), "sheet": sheet, "rater": rater})
    return RedirectResponse(f"/human/rate?{query}", status_code=303)


@router.post("/human/import")
async def import_results(request: Request) -> Response:
    """The UI's ratings → filled sheets → `human.import_ratings` (eval/human.json, preference dataset)."""
    form = await security.checked_form(request)
    return await run_in_threadpool(_import, request, form)  # it prepares a dataset: seconds, off the loop


def _import(request: Request, form: dict[str, str]) -> Response:
    ui = request.app.state.ui
    export = Export(ui.run(form.get("path")))
    rated = ui.state.ratings(export.id)
    rel = ui.rel(export.run.path)
    with tempfile.TemporaryDirectory(prefix="tuneforge-ui-sheets-") as tmp:
        paths = []
        for sheet in export.sheets:
            filled = []
            for r in export.rows(sheet):
                got = rated.get((sheet, str(r["row_id"])))
                filled.append(
                    {
                        **r,
                        "preference": got["preference"] if got else "",
                        "comment": got["comment"] if got else "",
                    }
                )
            path = Path(tmp) / f"{sheet}.jsonl"
            write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in filled))
            paths.append(path)
        from tuneforge.errors import TuneforgeError

        try:
            human.import_ratings(export.run.path, paths)
        except TuneforgeError as err:
            return _human_run(request, rel, err.render())
    return RedirectResponse(f"/human/run?{urlencode({'path': rel})}#results", status_code=303)
