"""Model pre-labels in annotation: pick a finished classification run, its predictions fill in the background.

The predictions are the evaluation stage's (`evaluation.prelabel.predict_labels`: the probabilities its
`evaluate` decides with); where they are kept and the "uncertain first" order are the data stage's
(`data.prelabels`, `AnnotationStore.next_item`). This module only starts the job, in a thread of the UI
process: it loads one model and writes each chunk of predictions as it goes, so the page shows progress and a
restart keeps what was done (the page then offers to run it again).
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from tuneforge.data import annotation, prelabels
from tuneforge.errors import TuneforgeError
from tuneforge.ui import security
from tuneforge.workspace import find_artifacts

router = APIRouter()
_JOBS: dict[tuple[str, int], threading.Thread] = {}  # (SQLite file, project) → its running job
_LOCK = threading.Lock()


class _Replaced(Exception):
    """The project was given another run while this job ran: stop quietly."""


def classification_runs(workspace: Any) -> list[str]:
    """The workspace's finished classification runs (relative paths): those that can pre-label."""
    from tuneforge.artifacts import RunDir
    from tuneforge.evaluation.prelabel import classification_labels

    out = []
    for f in find_artifacts(workspace):
        if f.kind == "run" and f.manifest and f.problem is None:
            try:
                classification_labels(RunDir(f.path))
            except TuneforgeError:
                continue
            out.append(f.rel)
    return out


def running(store: annotation.AnnotationStore, pid: int) -> bool:
    thread = _JOBS.get((str(store.path), pid))
    return thread is not None and thread.is_alive()


def _work(store: annotation.AnnotationStore, pid: int, rel: str, run_path: str) -> None:
    from tuneforge.evaluation.prelabel import predict_labels

    rows = prelabels.texts(store, pid)

    def keep(first: int, got: list[Any]) -> None:
        chunk = [(rows[first + j][0], p.label, p.confidence) for j, p in enumerate(got)]
        if not prelabels.save(store, pid, rel, chunk):
            raise _Replaced

    try:
        predict_labels(run_path, [text for _, text in rows], on_chunk=keep)
    except _Replaced:
        pass
    except TuneforgeError as err:
        prelabels.fail(store, pid, rel, err.render())
    except Exception as err:  # a model that fails to load or run: the page says so, the UI stays up
        prelabels.fail(store, pid, rel, f"{type(err).__name__}: {err}")


def check_run(ui: Any, labels: list[str], rel: str) -> Any:
    """The run at `rel`, once it is a finished classification run predicting only labels in `labels`."""
    if not labels:
        raise TuneforgeError(
            "a project of free-text answers has nothing to pre-label: pre-labels need a label set",
            where="run",
        )
    run = ui.run(rel)
    from tuneforge.evaluation.prelabel import classification_labels

    predicts = classification_labels(run)
    unknown = [x for x in predicts if x not in labels]
    if unknown:
        raise TuneforgeError(
            f"run {ui.rel(run.path)} predicts {', '.join(predicts)}, and the project has no label "
            f"{', '.join(unknown)}",
            where="run",
            fix="pick a run trained on the same labels, or give the project the run's labels",
        )
    return run


def start_job(ui: Any, project: annotation.Project, rel: str) -> None:
    """Make the run at `rel` the project's pre-labeller and start predicting its rows in the background."""
    run = check_run(ui, project.labels, rel)
    store = ui.annotations
    key = (str(store.path), project.id)
    with _LOCK:
        if running(store, project.id):
            raise TuneforgeError(
                "pre-labelling is running already for this project", fix="wait until it is done"
            )
        prelabels.start(store, project.id, ui.rel(run.path))
        thread = threading.Thread(
            target=_work, args=(store, project.id, ui.rel(run.path), str(run.path)), daemon=True
        )
        _JOBS[key] = thread
        thread.start()


@router.post("/annotate/prelabel")
async def prelabel(request: Request) -> Response:
    form = await security.checked_form(request)
    from tuneforge.ui.annotate import _project

    ui = request.app.state.ui
    project = _project(request, form.get("id"))
    await run_in_threadpool(start_job, ui, project, form.get("run", ""))
    return RedirectResponse(f"/annotate/project?id={project.id}", status_code=303)
