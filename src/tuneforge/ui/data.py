"""Data: the prepared datasets of the workspace, a dataset's own report, its rows (paged, searchable) per
split and its rejected rows with their reasons."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from tuneforge.artifacts import SPLITS
from tuneforge.data.browse import jsonl_page
from tuneforge.ui import security
from tuneforge.workspace import find_artifacts

router = APIRouter()
PAGE = 50
REJECTED = "rejected"


@router.get("/datasets", response_class=HTMLResponse)
def datasets(request: Request) -> Response:
    ui = request.app.state.ui
    found = [f for f in find_artifacts(ui.workspace) if f.kind == "dataset"]
    return ui.page(request, "datasets.html", datasets=found)


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=1)


@router.get("/dataset", response_class=HTMLResponse)
def dataset(request: Request, path: str = "", split: str = "train", q: str = "", start: int = 0) -> Response:
    ui = request.app.state.ui
    ds = ui.dataset(path)
    manifest = ds.manifest
    files = {s: ds.split_path(s) for s in SPLITS} | {REJECTED: ds.path / "rejected.jsonl"}
    present = [s for s, p in files.items() if p.is_file()]
    if split not in files:
        from tuneforge.ui.app import NotFound

        raise NotFound(f"unknown split {split!r}: one of {', '.join(files)}")
    page = jsonl_page(files[split], query=q, start=max(start, 0), limit=PAGE) if split in present else None
    columns: list[str] = []
    rows: list[tuple[int, dict[str, str]]] = []
    for lineno, value in page.rows if page else []:
        record = value if isinstance(value, dict) else {"(line)": value}
        columns += [k for k in record if k not in columns]
        rows.append((lineno, {k: _cell(v) for k, v in record.items()}))
    if split == REJECTED:  # the reason first: it is why the row is here
        columns = [c for c in ("problem", "message", "where") if c in columns] + [
            c for c in columns if c not in ("problem", "message", "where")
        ]
    return ui.page(
        request,
        "dataset.html",
        rel=ui.rel(ds.path),
        manifest=manifest,
        splits=list(files),
        present=present,
        split=split,
        q=q,
        page=page,
        columns=columns,
        rows=rows,
        size=PAGE,
        has_report=(ds.path / "report.html").is_file(),
    )


@router.get("/dataset/report")
def dataset_report(request: Request, path: str = "") -> Response:
    """The data stage's own report.html, sandboxed (a file the stage wrote, shown as it is)."""
    ui = request.app.state.ui
    ds = ui.dataset(path)
    report = ui.folder(f"{ui.rel(ds.path)}/report.html")
    if not report.is_file():
        from tuneforge.ui.app import NotFound

        raise NotFound(f"dataset {path} has no report.html")
    return FileResponse(
        report, media_type="text/html", headers={"Content-Security-Policy": security.REPORT_CSP}
    )
