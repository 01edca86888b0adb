"""Annotation: projects, one row at a time with the keyboard, agreement, disagreements, exports.

Storage, assignment, disagreements and exports are the data stage's (data/annotation.py); agreement is the
evaluation stage's (evaluation/agreement.py). These routes only read forms and pick templates.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from tuneforge.artifacts import SPLITS
from tuneforge.data import annotation, prelabels
from tuneforge.errors import TuneforgeError
from tuneforge.ui import prelabel, security
from tuneforge.workspace import find_artifacts

router = APIRouter()
UNCERTAIN = "uncertain"  # the label page's order: lowest model confidence first
EXPORT_DIR = "annotations"  # workspace/annotations/<project>/: the exported raw file and its prepared dataset


def _project(request: Request, pid: Any) -> annotation.Project:
    from tuneforge.ui.app import NotFound

    store: annotation.AnnotationStore = request.app.state.ui.annotations
    project = store.project(int(pid)) if str(pid).isdigit() else None
    if project is None:
        raise NotFound(f"there is no annotation project {str(pid)[:40]!r}")
    return project


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "project"


def _agreement(store: annotation.AnnotationStore, project: annotation.Project) -> dict[str, Any] | None:
    from tuneforge.evaluation.agreement import agreement

    by = store.labels_by_annotator(project.id)
    if project.free_text or len(by) < 2:
        return None
    try:
        return agreement(by)
    except ValueError as err:  # krippendorff: a single label used by everybody has no alpha
        return {"raters": len(by), "note": str(err)}


@router.get("/annotate", response_class=HTMLResponse)
def projects(request: Request, error: str = "", file: str = "") -> Response:
    ui = request.app.state.ui
    store = ui.annotations
    rows = [(p, store.progress(p)) for p in store.projects()]
    datasets = [
        (ui.rel(f.path), s)
        for f in find_artifacts(ui.workspace)
        if f.kind == "dataset"
        for s in SPLITS
        if (f.path / f"{s}.jsonl").is_file()
    ]
    return ui.page(
        request,
        "annotate.html",
        projects=rows,
        datasets=datasets,
        runs=prelabel.classification_runs(ui.workspace),
        error=error,
        file=file,  # just uploaded: the new-project form starts from it
    )


@router.post("/annotate/new")
async def new_project(request: Request) -> Response:
    form = await security.checked_form(request)
    return await run_in_threadpool(_new, request, form)  # reads a whole split or file


def _new(request: Request, form: dict[str, str]) -> Response:
    ui = request.app.state.ui
    try:
        k = int(form.get("k") or "1")
    except ValueError:
        raise TuneforgeError("annotators per row must be a whole number", where="k") from None
    labels = annotation.parse_labels(form.get("labels", ""))
    if form.get("file"):
        path = ui.folder(form["file"])
        if not path.is_file():
            raise TuneforgeError(f"{form['file']} is not a file in the workspace", where="file")
        rows, source = annotation.rows_from_file(path), ui.rel(path)
    else:
        rel, _, split = form.get("dataset", "").rpartition(":")
        ds = ui.dataset(rel)
        if split not in SPLITS:
            raise TuneforgeError(f"unknown split {split!r}", where="dataset")
        rows, source = annotation.rows_from_dataset(ds.path, split), f"{ui.rel(ds.path)} ({split})"
    runner = form.get("prelabel_run", "")
    if runner:  # refused before the project exists, so a wrong pick leaves nothing half made
        prelabel.check_run(ui, labels, runner)
    pid = ui.annotations.create(form.get("name", ""), rows, labels=labels, k=k, source=source)
    if runner:
        project = ui.annotations.project(pid)
        assert project is not None
        prelabel.start_job(ui, project, runner)
    return RedirectResponse(f"/annotate/project?id={pid}", status_code=303)


@router.post("/annotate/import")
async def import_ls(request: Request) -> Response:
    form = await security.checked_form(request)
    return await run_in_threadpool(_import, request, form)


def _import(request: Request, form: dict[str, str]) -> Response:
    ui = request.app.state.ui
    path = ui.folder(form.get("file"))
    if not path.is_file():
        raise TuneforgeError(f"{form.get('file')} is not a file in the workspace", where="file")
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TuneforgeError(f"{ui.rel(path)} is not JSON: {err}", where="file") from None
    k = int(form["k"]) if form.get("k", "").isdigit() else 1
    pid = ui.annotations.import_label_studio(form.get("name", ""), tasks, k=k, source=ui.rel(path))
    return RedirectResponse(f"/annotate/project?id={pid}", status_code=303)


@router.get("/annotate/project", response_class=HTMLResponse)
def project_page(request: Request, id: str = "", message: str = "") -> Response:
    ui = request.app.state.ui
    project = _project(request, id)
    store = ui.annotations
    return ui.page(
        request,
        "annotate_project.html",
        project=project,
        progress=store.progress(project),
        agreement=_agreement(store, project),
        disagreements=len(store.disagreements(project.id)),
        message=message,
        job=prelabels.job(store, project.id),
        job_running=prelabel.running(store, project.id),
        runs=prelabel.classification_runs(ui.workspace) if project.labels else [],
    )


@router.get("/annotate/label", response_class=HTMLResponse)
def label_page(
    request: Request, id: str = "", annotator: str = "", row: str = "", order: str = ""
) -> Response:
    from tuneforge.ui.app import NotFound

    ui = request.app.state.ui
    project = _project(request, id)
    store = ui.annotations
    annotator = annotator.strip()[:100]
    idx: int | None = None
    if row:
        idx = int(row) if row.isdigit() else -1
        if store.item(project.id, idx) is None:
            raise NotFound(f"project {project.name} has no row {row[:20]!r}")
    elif annotator:
        idx = store.next_item(project.id, annotator, project.k, uncertain_first=order == UNCERTAIN)
    item = store.item(project.id, idx) if idx is not None else None
    mine = store.labels(project.id).get(idx, {}).get(annotator) if idx is not None else None
    return ui.page(
        request,
        "annotate_label.html",
        project=project,
        annotator=annotator,
        idx=idx,
        text=item[0] if item else None,
        mine=mine,
        progress=store.progress(project),
        order=UNCERTAIN if order == UNCERTAIN else "",
        model=prelabels.prelabel(store, project.id, idx) if idx is not None else None,
        job=prelabels.job(store, project.id),
    )


@router.post("/annotate/label")
async def label(request: Request) -> Response:
    form = await security.checked_form(request)
    return await run_in_threadpool(_label, request, form)  # a synced SQLite write


def _label(request: Request, form: dict[str, str]) -> Response:
    ui = request.app.state.ui
    project = _project(request, form.get("id"))
    store: annotation.AnnotationStore = ui.annotations
    annotator, action = form.get("annotator", "").strip(), form.get("action", "label")
    query: dict[str, Any] = {"id": project.id, "annotator": annotator}
    if form.get("order") == UNCERTAIN:
        query["order"] = UNCERTAIN
    if action == "undo":
        undone = store.undo(project.id, annotator)
        if undone is not None:
            query["row"] = undone
    else:
        idx = form.get("idx", "")
        if not idx.isdigit():
            raise TuneforgeError(f"row {idx[:20]!r} is not a row number", where="idx")
        store.save(project, int(idx), annotator, form.get("value", ""), skipped=action == "skip")
    return RedirectResponse(f"/annotate/label?{urlencode(query)}", status_code=303)


@router.get("/annotate/disagreements", response_class=HTMLResponse)
def disagreements(request: Request, id: str = "") -> Response:
    ui = request.app.state.ui
    project = _project(request, id)
    return ui.page(
        request,
        "annotate_disagreements.html",
        project=project,
        rows=ui.annotations.disagreements(project.id),
    )


@router.post("/annotate/resolve")
async def resolve(request: Request) -> Response:
    form = await security.checked_form(request)
    ui = request.app.state.ui
    project = _project(request, form.get("id"))
    idx = form.get("idx", "")
    if not idx.isdigit():
        raise TuneforgeError(f"row {idx[:20]!r} is not a row number", where="idx")
    by = form.get("by", "") or (request.state.user or "")
    await run_in_threadpool(ui.annotations.resolve, project, int(idx), form.get("value", ""), by)
    return RedirectResponse(f"/annotate/disagreements?id={project.id}", status_code=303)


@router.post("/annotate/export")
async def export(request: Request) -> Response:
    form = await security.checked_form(request)
    return await run_in_threadpool(_export, request, form)  # `prepare` takes seconds


def _export(request: Request, form: dict[str, str]) -> Response:
    ui = request.app.state.ui
    project = _project(request, form.get("id"))
    folder: Path = ui.workspace / EXPORT_DIR / f"{project.id}-{_slug(project.name)}"
    raw, fmt, n = ui.annotations.export_raw(project, folder / "labelled.jsonl")
    command = f"`tuneforge prepare CONFIG data.path={ui.rel(raw)} data.format={fmt}`"
    message = f"{n} labelled rows written to {ui.rel(raw)}"
    try:
        ds = annotation.prepare_export(raw, fmt, folder / "dataset")
    except TuneforgeError as err:  # too few rows yet, say: the raw file stays, prepare it later
        message += f". Not prepared yet: {err.what}. Prepare it later with {command}."
    else:
        message += f" and prepared as the dataset {ui.rel(ds.path)} (as {command} would)."
    return RedirectResponse(
        f"/annotate/project?{urlencode({'id': project.id, 'message': message})}", status_code=303
    )


@router.get("/annotate/label-studio")
def label_studio(request: Request, id: str = "") -> Response:
    ui = request.app.state.ui
    project = _project(request, id)
    return JSONResponse(
        ui.annotations.label_studio(project),
        headers={"Content-Disposition": f'attachment; filename="{_slug(project.name)}-label-studio.json"'},
    )
