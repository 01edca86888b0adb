"""`requests.model_version`: which registry version answered, added to a log written before it existed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from tuneforge.serve.store import RequestLog, database_url, read_table, requests_table


def _old_log(url: str) -> None:
    """A log as servers before `model_version` wrote it, with one row."""
    old = sa.MetaData()
    table = sa.Table(
        "requests", old, *(c._copy() for c in requests_table.columns if c.name != "model_version")
    )
    sa.Table(
        "feedback",
        old,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_name", sa.String(200)),
        sa.Column("rating", sa.Integer),
        sa.Column("comment", sa.Text),
    )
    engine = sa.create_engine(url)
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert().values(id="old", time=datetime(2026, 1, 1, tzinfo=UTC), status=200))
    engine.dispose()


def _columns(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        return [c["name"] for c in sa.inspect(engine).get_columns("requests")]
    finally:
        engine.dispose()


def _upgrade_and_write(url: str) -> None:
    _old_log(url)
    assert "model_version" not in _columns(url)
    assert read_table(url)[0]["id"] == "old"  # an old log stays readable before it is upgraded
    log = RequestLog(url)
    log.log_request(id="new", key_name="alice", model="support", endpoint="chat", status=200, model_version=2)
    log.close()
    RequestLog(url).close()  # opening an upgraded log again changes nothing
    assert _columns(url)[-1] == "model_version"
    rows = read_table(url)
    assert [(r["id"], r["model"], r["model_version"]) for r in rows] == [
        ("old", None, None),
        ("new", "support", 2),
    ]


def test_an_old_sqlite_log_gains_the_column_and_keeps_its_rows(tmp_path: Path) -> None:
    _upgrade_and_write(database_url(str(tmp_path / "log.sqlite")))


def test_an_old_postgresql_log_gains_the_column_and_keeps_its_rows(postgres: str) -> None:
    _upgrade_and_write(postgres)
