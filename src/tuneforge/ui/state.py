"""The UI's own state: one SQLite file in the workspace (WAL), opened per request.

Ratings are written on the click that made them, in their own transaction with synchronous=FULL, so a rating
survives the browser or the server dying the moment after. Two raters write different rows (their sheets), and
SQLite serialises the writes, so nobody overwrites anybody.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

DB_NAME = "tuneforge-ui.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ratings (
    export TEXT NOT NULL,       -- sha256 of the human-eval key.json the sheet belongs to
    run TEXT NOT NULL,          -- the run, relative to the workspace
    sheet TEXT NOT NULL,
    row_id TEXT NOT NULL,
    preference TEXT NOT NULL,
    comment TEXT NOT NULL DEFAULT '',
    rater TEXT NOT NULL DEFAULT '',
    saved TEXT NOT NULL,
    PRIMARY KEY (export, sheet, row_id)
);
CREATE TABLE IF NOT EXISTS sessions (
    token_sha256 TEXT PRIMARY KEY,
    key_name TEXT NOT NULL,
    created TEXT NOT NULL
);
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class UiState:
    def __init__(self, workspace: Path) -> None:
        self.path = workspace / DB_NAME
        with self.connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=10000")
            yield db
        finally:
            db.close()

    # Human A/B ratings -------------------------------------------------------------------------------
    def save_rating(
        self, export: str, run: str, sheet: str, row_id: str, preference: str, comment: str, rater: str
    ) -> None:
        with self.connect() as db:
            db.execute(
                "INSERT INTO ratings VALUES (?,?,?,?,?,?,?,?) "
                "ON CONFLICT(export, sheet, row_id) DO UPDATE SET "
                "preference=excluded.preference, comment=excluded.comment, rater=excluded.rater, "
                "saved=excluded.saved",
                (export, run, sheet, row_id, preference, comment, rater, _now()),
            )

    def ratings(self, export: str, sheet: str | None = None) -> dict[tuple[str, str], dict[str, str]]:
        """(sheet, row_id) → preference, comment, rater of one export's ratings."""
        sql = "SELECT sheet, row_id, preference, comment, rater FROM ratings WHERE export = ?"
        args: tuple[str, ...] = (export,)
        if sheet is not None:
            sql, args = sql + " AND sheet = ?", (export, sheet)
        with self.connect() as db:
            return {
                (s, r): {"preference": p, "comment": c, "rater": who}
                for s, r, p, c, who in db.execute(sql, args)
            }

    # Login sessions (only when the UI is reachable beyond this machine) -------------------------------
    def new_session(self, key_name: str) -> str:
        token = secrets.token_urlsafe(32)
        with self.connect() as db:
            db.execute("INSERT INTO sessions VALUES (?,?,?)", (_sha(token), key_name, _now()))
        return token

    def session_key(self, token: str) -> str | None:
        with self.connect() as db:
            row = db.execute(
                "SELECT key_name FROM sessions WHERE token_sha256 = ?", (_sha(token),)
            ).fetchone()
        return row[0] if row else None

    def end_session(self, token: str) -> None:
        with self.connect() as db:
            db.execute("DELETE FROM sessions WHERE token_sha256 = ?", (_sha(token),))


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
