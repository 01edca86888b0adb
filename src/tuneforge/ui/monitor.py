"""A run's monitor reports: the windows `tuneforge monitor` judged (RUN/monitor/<window>/report.json), and one
window's drift tests, alerts and traffic as the monitor stage's own report sections, with its report.html."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from tuneforge.artifacts import RunDir
from tuneforge.ui import security

router = APIRouter()
FOLDER = "monitor"


@dataclass
class Window:
    name: str
    report: dict[str, Any] | None  # None: report.json unreadable
    problem: str
    has_html: bool


def _read(folder: Path) -> Window:
    try:
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        if not isinstance(report, dict) or "window" not in report:
            raise ValueError("not a monitor report (no window)")
        return Window(folder.name, report, "", (folder / "report.html").is_file())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return Window(folder.name, None, f"{type(err).__name__}: {err}", (folder / "report.html").is_file())


def windows(run: RunDir) -> list[Window]:
    """The run's judged windows, newest first (a window's name starts with its start time)."""
    root = run.path / FOLDER
    if not root.is_dir():
        return []
    found = [d for d in root.iterdir() if d.is_dir() and (d / "report.json").is_file()]
    return [_read(d) for d in sorted(found, key=lambda d: d.name, reverse=True)]


def _window(request: Request, path: str, window: str) -> tuple[Any, RunDir, Path]:
    from tuneforge.ui.app import NotFound

    ui = request.app.state.ui
    run = ui.run(path)
    folder = ui.folder(f"{ui.rel(run.path)}/{FOLDER}/{window}") if window else None
    if folder is None or folder.parent != run.path / FOLDER or not (folder / "report.json").is_file():
        raise NotFound(f"run {ui.rel(run.path)} has no monitor report {window[:80]!r}")
    return ui, run, folder


@router.get("/run/monitor", response_class=HTMLResponse)
def monitor_list(request: Request, path: str = "") -> Response:
    ui = request.app.state.ui
    run = ui.run(path)
    return ui.page(request, "monitor.html", rel=ui.rel(run.path), run=run, windows=windows(run))


@router.get("/run/monitor/window", response_class=HTMLResponse)
def monitor_window(request: Request, path: str = "", window: str = "") -> Response:
    from tuneforge.monitor.report import build_sections
    from tuneforge.monitor.run import alert_heading

    ui, run, folder = _window(request, path, window)
    got = _read(folder)
    sections: list[Any] = []
    alerts: list[tuple[str, str]] = []  # (heading, message), as `tuneforge monitor --check` prints them
    problem = got.problem
    if got.report is not None:
        try:
            # Tables with a header become cards: a phone then reads each test's verdict without scrolling.
            sections = [
                (title, [("cards", c) if k == "table" and c[0] else (k, c) for k, c in items])
                for title, items in build_sections(got.report)
            ]
            alerts = [(alert_heading(a), str(a["message"])) for a in got.report.get("alerts") or []]
        except (AttributeError, KeyError, TypeError, ValueError) as err:  # an older report: say so, not a 500
            problem = f"this report.json cannot be shown ({type(err).__name__}: {err})"
    return ui.page(
        request,
        "monitor_window.html",
        rel=ui.rel(run.path),
        window=got,
        sections=sections,
        problem=problem,
        alerts=alerts,
    )


@router.get("/run/monitor/report")
def monitor_report(request: Request, path: str = "", window: str = "") -> Response:
    """The window's report.html as `tuneforge monitor` wrote it, sandboxed."""
    from tuneforge.ui.app import NotFound

    ui, run, folder = _window(request, path, window)
    report = ui.folder(f"{ui.rel(folder)}/report.html")
    if not report.is_file():
        raise NotFound(f"window {window} of {ui.rel(run.path)} has no report.html")
    return FileResponse(
        report, media_type="text/html", headers={"Content-Security-Policy": security.REPORT_CSP}
    )
