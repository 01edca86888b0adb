"""Upload a raw data file into the workspace, then prepare it with the data stage's own `prepare`.

The file lands in workspace/uploads/ under a cleaned name that never replaces anything already there (a
taken name gets a -2, -3, ... suffix). Preparing it is `prepare_dataset` with the format and columns the
form names: its errors are shown as the data stage words them.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from tuneforge.errors import TuneforgeError
from tuneforge.ui import security

router = APIRouter()
UPLOADS = "uploads"
DATASETS = "datasets"
MAX_UPLOAD_BYTES = 512 * 2**20
SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".txt")
FORMATS = ("auto", "text", "instruction", "chat", "classification", "regression", "preference")
COLUMNS = (
    "text_column",
    "label_column",
    "prompt_column",
    "response_column",
    "messages_column",
    "chosen_column",
    "rejected_column",
)
_CHUNK = 2**20


def safe_name(filename: str) -> str:
    """The upload's base name with anything but letters, digits, `._-` replaced: no folder, no hidden file."""
    base = re.split(r"[\\/]", filename or "")[-1]
    stem, dot, suffix = base.rpartition(".")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem if dot else base).strip("-.")[:100] or "upload"
    suffix = "." + suffix.lower() if dot else ""
    if suffix not in SUFFIXES:
        raise TuneforgeError(
            f"{base[:100]!r} is not a data file this page takes",
            where="file",
            fix=f"upload one of {', '.join(SUFFIXES)} (other sources: `tuneforge prepare` with data.source)",
        )
    return stem + suffix


def _claim(folder: Path, name: str) -> Path:
    """A new, empty file named `name` (or name-2, name-3, ...) created exclusively: nothing is overwritten."""
    stem, suffix = os.path.splitext(name)
    for n in range(1, 10_000):
        path = folder / (name if n == 1 else f"{stem}-{n}{suffix}")
        try:
            with path.open("xb"):
                return path
        except FileExistsError:
            continue
    raise TuneforgeError(f"too many uploads named {name} in {folder}", where="file")


def _store(ui: Any, upload: UploadFile) -> Path:
    """Copy the spooled upload into uploads/ (a hidden temporary sibling first: a cut copy leaves nothing)."""
    name = safe_name(upload.filename or "")
    folder = ui.workspace / UPLOADS
    folder.mkdir(exist_ok=True)
    tmp = folder / f".upload-{secrets.token_hex(8)}.part"
    size = 0
    try:
        with tmp.open("xb") as out:
            while chunk := upload.file.read(_CHUNK):
                size += len(chunk)
                if size > MAX_UPLOAD_BYTES:
                    raise TuneforgeError(
                        f"the file is larger than {MAX_UPLOAD_BYTES // 2**20} MiB",
                        where="file",
                        fix="prepare large files with `tuneforge prepare CONFIG` instead",
                    )
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if size == 0:
            raise TuneforgeError("the file is empty", where="file")
        target = _claim(folder, name)
        os.replace(tmp, target)  # onto the empty file this upload just claimed, never onto another's
        return target
    finally:
        tmp.unlink(missing_ok=True)


@router.post("/upload")
async def upload(request: Request) -> Response:
    """A multipart form: `file`, `csrf_token`, `then` (prepare | annotate: where to go next)."""
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        return PlainTextResponse("an upload needs a Content-Length", status_code=411)
    if int(length) > MAX_UPLOAD_BYTES + 2**16:  # refused before a byte is read
        return PlainTextResponse(f"the file is larger than {MAX_UPLOAD_BYTES // 2**20} MiB", status_code=413)
    async with request.form(max_files=1, max_fields=10) as form:
        cookie = request.cookies.get(security.CSRF_COOKIE, "")
        sent = request.headers.get(security.CSRF_HEADER) or str(form.get(security.CSRF_FIELD) or "")
        if not cookie or not sent or not hmac.compare_digest(cookie.encode(), sent.encode()):
            raise security.CsrfError("missing or wrong CSRF token: reload the page and try again")
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise TuneforgeError("no file chosen", where="file")
        ui = request.app.state.ui
        path = await run_in_threadpool(_store, ui, file)
    rel = ui.rel(path)
    if form.get("then") == "annotate":
        return RedirectResponse("/annotate?" + urlencode({"file": rel}), status_code=303)
    return RedirectResponse("/prepare?" + urlencode({"file": rel}), status_code=303)


def _head(path: Path, lines: int = 6, limit: int = 4096) -> str | None:
    """The file's first lines as text (what the columns are called), or None for a binary file."""
    if path.suffix == ".parquet":
        return None
    with path.open("rb") as f:
        raw = f.read(limit)
    text = raw.decode("utf-8", "replace")
    return "\n".join(text.splitlines()[:lines])


def _form_page(
    request: Request, rel: str, values: dict[str, str], error: str = "", status: int = 200
) -> Response:
    ui = request.app.state.ui
    path = ui.folder(rel)
    if not path.is_file():
        from tuneforge.ui.app import NotFound

        raise NotFound(f"there is no file {rel!r} in this workspace")
    return ui.page(
        request,
        "prepare.html",
        status=status,
        file=rel,
        head=_head(path),
        values=values,
        formats=FORMATS,
        columns=COLUMNS,
        error=error,
    )


def default_output(rel: str) -> str:
    return f"{DATASETS}/{Path(rel).stem}"


@router.get("/prepare", response_class=HTMLResponse)
def prepare_page(request: Request, file: str = "") -> Response:
    if not file:  # e.g. a bookmark of the form: the datasets page holds the upload that leads here
        return RedirectResponse("/datasets", status_code=303)
    return _form_page(request, file, {"output": default_output(file), "format": "auto", "on_error": "drop"})


@router.post("/prepare")
async def prepare(request: Request) -> Response:
    form = await security.checked_form(request)
    return await run_in_threadpool(_prepare, request, form)  # `prepare` takes seconds


def _prepare(request: Request, form: dict[str, str]) -> Response:
    from tuneforge.config import config_from_dict
    from tuneforge.data.prepare import prepare_dataset
    from tuneforge.ui.app import NotFound

    ui = request.app.state.ui
    rel = form.get("file", "")
    path = ui.folder(rel)
    try:
        out = ui.folder(form.get("output") or default_output(rel))
        data: dict[str, Any] = {
            "path": str(path),
            "format": form.get("format") or "auto",
            "output_dir": str(out),
            "on_error": form.get("on_error") or "drop",
        }
        data |= {c: form[c].strip() for c in COLUMNS if form.get(c, "").strip()}
        cfg = config_from_dict({"data": data}).data
        ds = prepare_dataset(cfg)
    except TuneforgeError as err:
        return _form_page(request, rel, form, error=err.render(), status=400)
    except NotFound as err:  # the output folder named a place outside the workspace
        return _form_page(request, rel, form, error=f"output: {err}", status=400)
    return RedirectResponse("/dataset?" + urlencode({"path": ui.rel(ds.path)}), status_code=303)
