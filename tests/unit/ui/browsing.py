"""What the browser tests share: Debian's Chromium (or why there is none), the real `tuneforge ui` process."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = next(
    (p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).exists()), None
)
SIZES = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}


def _skip_reason() -> str | None:
    if CHROMIUM is None:
        return "no Chromium: apt-get install -y chromium"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "no Playwright for Python: pip install playwright"
    return None


REASON = _skip_reason()
if REASON:
    print(f"\nbrowser tests skipped: {REASON}", file=sys.stderr)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(workspace: Path, *, kill: bool = False) -> Iterator[str]:
    """The real command in its own process, until SIGTERM (SIGKILL with `kill`: the server dies)."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuneforge", "ui", "--workspace", str(workspace), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/login", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    raise AssertionError(proc.stdout.read() if proc.stdout else "the UI exited") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.kill() if kill else proc.terminate()
        proc.wait(timeout=20)
