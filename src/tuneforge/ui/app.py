"""`tuneforge ui`: the FastAPI app. Routes live in runs.py, data.py, annotate.py and rating.py; this file
wires them, the login, the templates and the error pages.

Every number a page shows comes from a stage function or a file a stage wrote: the routes only find the
artifact (artifacts.py's contracts, workspace.py) and hand it to the stage's own reader.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.middleware.trustedhost import TrustedHostMiddleware

from tuneforge.artifacts import DatasetDir, RunDir
from tuneforge.data.annotation import AnnotationStore
from tuneforge.errors import TuneforgeError
from tuneforge.serve.keys import KeyChecker, KeyFile
from tuneforge.serve.store import database_url
from tuneforge.ui import security
from tuneforge.ui.chat import Chat, LocalChat, RemoteChat
from tuneforge.ui.state import UiState
from tuneforge.workspace import resolve_inside

HERE = Path(__file__).parent
LOCAL_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


class NotFound(Exception):
    """A page for something that is not there (an unknown run, a path outside the workspace)."""


class Ui:
    """What every route shares: the workspace, the UI's SQLite state, the templates."""

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace.resolve()
        self.local = True
        self.state = UiState(self.workspace)
        self.annotations = AnnotationStore(self.state.path)  # the data stage's tables, in the same file
        self.env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
        )
        from tuneforge.evaluation.report.render import num, visible

        self.env.filters["num"] = num
        self.env.filters["visible"] = visible  # control characters (a tiny model emits them) as \xNN
        self.env.filters["rel"] = lambda p: self.rel(Path(p))
        from tuneforge.ui.upload import MAX_UPLOAD_BYTES, SUFFIXES

        self.env.globals.update(suffixes=SUFFIXES, max_mb=MAX_UPLOAD_BYTES // 2**20)  # the upload forms
        from tuneforge.ui.launch import Launches

        self.launches = Launches(self.rel)  # the training runs this UI is starting now

    def rel(self, path: Path) -> str:
        return path.resolve().relative_to(self.workspace).as_posix() or "."

    def page(self, request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(
            request=request,
            csrf=security.csrf_token(request),
            user=getattr(request.state, "user", None),
            workspace=self.workspace,
            **ctx,
        )
        return HTMLResponse(html, status_code=status)

    def folder(self, rel: str | None) -> Path:
        if not rel:
            raise NotFound("no path given")
        try:
            return resolve_inside(self.workspace, rel)
        except TuneforgeError as err:
            raise NotFound(err.what) from None

    def run(self, rel: str | None) -> RunDir:
        path = self.folder(rel)
        if not RunDir.is_run(path) and not (path / "config.yaml").is_file():
            raise NotFound(f"there is no run at {rel!r} in this workspace")
        return RunDir(path)

    def dataset(self, rel: str | None) -> DatasetDir:
        path = self.folder(rel)
        if not DatasetDir.is_dataset(path):
            raise NotFound(f"there is no prepared dataset at {rel!r} in this workspace")
        return DatasetDir(path)


def create_app(
    workspace: str | Path,
    *,
    keys_file: str | Path | None = None,
    allowed_hosts: list[str] | None = None,
    server: str | None = None,
    server_key: str | None = None,
    log: str | None = None,
) -> FastAPI:
    """The UI over `workspace`; with `keys_file`, every page needs a login with one of its keys.

    The playground asks `server` (a running `tuneforge serve`) when given, else the serving engine in this
    process, whose answers and ratings go to the request log `log` (a SQLAlchemy URL or a SQLite path;
    default: the UI's own SQLite file in the workspace).
    """
    from tuneforge.ui import (
        annotate,
        compare,
        data,
        launch,
        monitor,
        playground,
        prelabel,
        rating,
        runs,
        upload,
    )

    ui = Ui(Path(workspace))
    ui.local = keys_file is None  # the playground runs only then (playground.py)
    keys = KeyChecker(KeyFile(keys_file)) if keys_file else None
    chat: Chat
    if server:
        chat = RemoteChat(server, server_key)
    elif log:
        chat = LocalChat(database_url(log))
    else:  # the UI's own state file: its tables and the serving stage's live side by side
        chat = LocalChat(database_url(str(ui.state.path)), shown=f"{ui.state.path.name} (in the workspace)")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        chat.close()  # the playground's log writes what it still holds

    app = FastAPI(title="tuneforge", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.ui = ui
    app.state.chat = chat
    app.state.remote = server is not None
    app.middleware("http")(security.middleware(keys, ui.state.session_key))
    # Bound to localhost, only requests naming localhost are served: a web page that rebinds its own DNS
    # name to 127.0.0.1 cannot read the UI.
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or ["*"])
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    for module in (runs, launch, compare, monitor, playground, data, upload, annotate, prelabel, rating):
        app.include_router(module.router)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, err: NotFound) -> Response:
        return ui.page(request, "error.html", status=404, title="Not found", message=str(err))

    @app.exception_handler(security.CsrfError)
    async def csrf(request: Request, err: security.CsrfError) -> Response:
        return ui.page(request, "error.html", status=403, title="Refused", message=str(err))

    @app.exception_handler(launch.AlreadyStarting)
    async def already_starting(request: Request, err: launch.AlreadyStarting) -> Response:
        return ui.page(request, "error.html", status=409, title="Still starting", message=err.render())

    @app.exception_handler(TuneforgeError)
    async def user_error(request: Request, err: TuneforgeError) -> Response:
        return ui.page(request, "error.html", status=400, title="Cannot do that", message=err.render())

    @app.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request) -> Response:
        return ui.page(request, "login.html", needed=keys is not None)

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await security.checked_form(request)
        name = keys.name_of("Bearer " + form.get("key", "")) if keys else None
        if name is None:
            return ui.page(request, "login.html", status=401, needed=keys is not None, failed=True)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            security.SESSION_COOKIE,
            ui.state.new_session(name),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        await security.checked_form(request)
        token = request.cookies.get(security.SESSION_COOKIE)
        if token:
            ui.state.end_session(token)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(security.SESSION_COOKIE)
        return response

    return app


def serve_ui(
    workspace: Path,
    *,
    host: str,
    port: int,
    keys_file: Path | None,
    server: str | None = None,
    server_key: str | None = None,
    log: str | None = None,
) -> None:
    """Serve the UI with uvicorn; beyond localhost only with the serving stage's keys."""
    import uvicorn

    from tuneforge.serve.server import bind, is_local

    if not workspace.is_dir():
        raise TuneforgeError(f"workspace {workspace} is not a folder", where="--workspace")
    local = is_local(host)
    if not local and (keys_file is None or not KeyChecker(KeyFile(keys_file)).active):
        raise TuneforgeError(
            f"binding {host} makes the UI reachable from other machines, which needs login keys",
            where="--host",
            fix="create one with `tuneforge keys create NAME --keys FILE` and pass --keys FILE, "
            "or leave --host at 127.0.0.1",
        )
    if server is not None and not server.startswith(("http://", "https://")):
        raise TuneforgeError(
            f"--server {server} is not a URL", where="--server", fix="pass e.g. http://127.0.0.1:8000"
        )
    if server is not None and log is not None:
        raise TuneforgeError(
            "--log is where the playground in this process writes; with --server the server's own log keeps "
            "the answers and ratings",
            where="--log",
            fix="drop --log (or --server)",
        )
    app = create_app(
        workspace,
        keys_file=keys_file,
        allowed_hosts=LOCAL_HOSTS if local else None,
        server=server,
        server_key=server_key,
        log=log,
    )
    sock = bind(host, port)  # a taken port is one clear error line, before anything else starts
    import threading

    from tuneforge.data.browse import warm_up
    from tuneforge.ui.runs import run_rows

    # Read every manifest and evaluation once in the background, so the first visit finds them cached.
    threading.Thread(target=run_rows, args=(workspace.resolve(),), daemon=True).start()
    threading.Thread(target=warm_up, daemon=True).start()
    print(f"tuneforge ui: http://{host}:{port}/  (workspace {workspace.resolve()})", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
