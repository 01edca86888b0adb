"""Login with a serving key (only when bound beyond localhost), CSRF tokens on every form, safe headers.

Written by hand because it is small and the libraries for it (starlette-csrf, fastapi-csrf-protect) would be
new dependencies: a double-submit token (a random cookie that every form and HTMX request must echo), checked
with a constant-time compare on every state-changing request.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

from fastapi import Request, Response
from fastapi.responses import PlainTextResponse, RedirectResponse

from tuneforge.serve.keys import KeyChecker

CSRF_COOKIE = "tf_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SESSION_COOKIE = "tf_session"
OPEN_PATHS = ("/login", "/static/")

# The UI's own pages run only the vendored scripts; evaluation plots are data: URIs.
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Reports written by the stages are shown as they are, in a sandbox: no script, no form, no request out.
REPORT_CSP = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"


class CsrfError(Exception):
    pass


async def checked_form(request: Request) -> dict[str, str]:
    """The urlencoded form of a POST, once its CSRF token matched the cookie (else CsrfError → 403).

    Parsed with the standard library: the UI's forms are all urlencoded, so python-multipart is not needed.
    """
    body = (await request.body()).decode("utf-8", "replace")
    form = {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}
    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD, "")
    if not cookie or not sent or not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise CsrfError("missing or wrong CSRF token: reload the page and try again")
    return form


def csrf_token(request: Request) -> str:
    """The token for this browser's forms (a new one is set as a cookie by the middleware)."""
    token = str(request.cookies.get(CSRF_COOKIE) or getattr(request.state, "new_csrf", "") or "")
    if not token:
        token = request.state.new_csrf = secrets.token_urlsafe(32)
    return token


def middleware(
    keys: KeyChecker | None, sessions: Callable[[str], str | None]
) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    """Login gate (when `keys` is set), CSRF cookie, and the security headers of every response."""

    async def handle(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request.state.user = None
        if keys is not None and not request.url.path.startswith(OPEN_PATHS):
            token = request.cookies.get(SESSION_COOKIE)
            request.state.user = sessions(token) if token else None
            if request.state.user is None:
                if request.method == "GET":
                    return RedirectResponse("/login", status_code=303)
                return PlainTextResponse("log in first", status_code=401)
        response = await call_next(request)
        new = getattr(request.state, "new_csrf", None)
        if new and not request.cookies.get(CSRF_COOKIE):
            response.set_cookie(
                CSRF_COOKIE, new, httponly=True, samesite="strict", secure=request.url.scheme == "https"
            )
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        if not request.url.path.startswith("/static/"):  # pages change as runs train; assets do not
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    return handle
