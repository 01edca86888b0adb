"""A throwaway PostgreSQL server for tests (Debian's `postgresql` binaries; skipped where missing)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Start a server on a Unix socket in a temporary folder; yields its SQLAlchemy URL (psycopg 3)."""
    pg_ctl, initdb = shutil.which("pg_ctl"), shutil.which("initdb")
    if not pg_ctl or not initdb:
        pytest.skip("PostgreSQL binaries (pg_ctl, initdb) are not installed")
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="tf-pg-"))
    root.chmod(0o777)
    data = root / "data"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        [*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], check=True, capture_output=True
    )
    opts = f"-p {port} -k {root} -c listen_addresses=''"
    subprocess.run(
        [*as_user, pg_ctl, "-D", str(data), "-o", opts, "-w", "start", "-l", str(root / "log")],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@/postgres?host={root}&port={port}"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
