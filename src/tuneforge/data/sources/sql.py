"""A SQL query on a database: SQLite (`sqlite:///path.db` with any `+driver`, or a .db/.sqlite file) through
the standard library, any other SQLAlchemy URL (postgresql://, mysql://, ...) through SQLAlchemy. Rows are
fetched in batches.

Reading never changes the database: data.query must be one read-only SELECT (`sql_readonly`), SQLite is opened
read-only with an authorizer that allows only reads, other databases run in a read-only transaction where they
have one, and every transaction is rolled back. Without data.query, a database holding exactly one table is
read whole.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tuneforge.config import DataConfig
from tuneforge.data.sources.base import BATCH_ROWS, RawRow
from tuneforge.data.sources.sql_readonly import check_read_only, dialect_of
from tuneforge.errors import TuneforgeError

SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Every SQLite URL, whatever SQLAlchemy driver it names (sqlite+pysqlite://, ...), takes the read-only path.
_SQLITE_URL = re.compile(r"^sqlite(?:\+[A-Za-z0-9_]+)?:///([^?]+)", re.IGNORECASE)
# Statements that make the rest of a transaction read-only, per SQLAlchemy dialect; the others rely on the
# query check and the rollback.
READ_ONLY_TRANSACTION = {
    "postgresql": "SET TRANSACTION READ ONLY",
    "mysql": "SET TRANSACTION READ ONLY",
    "mariadb": "SET TRANSACTION READ ONLY",
    "oracle": "SET TRANSACTION READ ONLY",
}


def is_database_url(location: str) -> bool:
    """A URL with a scheme other than http(s)/file, e.g. sqlite:///x.db or postgresql://host/db."""
    return bool(_URL.match(location)) and not location.lower().startswith(("http://", "https://", "file://"))


def sqlite_file(location: str) -> Path | None:
    """The database file a plain sqlite URL or file path names (None for server databases)."""
    m = _SQLITE_URL.match(location)
    if m:
        return Path(m.group(1))
    if not _URL.match(location) and Path(location).suffix.lower() in SQLITE_SUFFIXES:
        return Path(location)
    return None


def display_url(location: str) -> str:
    """The URL as shown in messages and the manifest: never with its password."""
    if sqlite_file(location) is not None or not is_database_url(location):
        return location
    try:
        from sqlalchemy.engine import make_url

        return str(make_url(location).render_as_string(hide_password=True))
    except Exception:  # an unparsable URL must still never leak a password into a message
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", location)


def read(location: str, cfg: DataConfig) -> Iterator[RawRow]:
    file = sqlite_file(location)
    scheme = "sqlite" if file is not None else location.split(":", 1)[0]
    if cfg.query is not None:
        check_read_only(cfg.query, dialect_of(scheme))
    if file is not None:
        yield from _read_sqlite(file, location, cfg)
    else:
        yield from _read_sqlalchemy(location, cfg)


_SQLITE_READS = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    sqlite3.SQLITE_RECURSIVE,
}


def _only_reads(action: int, *_: object) -> int:
    """SQLite authorizer: reading is allowed; writing, ATTACH, PRAGMA and schema changes are denied."""
    return sqlite3.SQLITE_OK if action in _SQLITE_READS else sqlite3.SQLITE_DENY


def _read_sqlite(file: Path, location: str, cfg: DataConfig) -> Iterator[RawRow]:
    # Read-only URI mode: connecting never creates or alters the user's database file; the authorizer refuses
    # every statement that is not a read (ATTACH included, which could create a file).
    con = sqlite3.connect(f"file:{quote(str(file.resolve()))}?mode=ro", uri=True)
    con.set_authorizer(_only_reads)
    try:
        try:
            tables = [
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
            ]
            cursor = con.execute(_query(cfg, tables, location))
        except sqlite3.Error as err:
            raise TuneforgeError(f"the query failed on {location}: {err}", where="data.query") from None
        columns = [d[0] for d in cursor.description or ()]
        yield from _rows(location, columns, iter(lambda: cursor.fetchmany(BATCH_ROWS), []))
    finally:
        con.rollback()
        con.close()


def _read_sqlalchemy(location: str, cfg: DataConfig) -> Iterator[RawRow]:
    try:
        import sqlalchemy as sa
    except ImportError:
        raise TuneforgeError(
            "reading this database needs SQLAlchemy", where="data.path", fix="pip install 'tuneforge[sql]'"
        ) from None
    shown = display_url(location)
    try:
        engine = sa.create_engine(location)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as err:
        raise TuneforgeError(
            f"cannot open {shown}: {err}",
            where="data.path",
            fix="check the URL, and install the database driver (e.g. psycopg for postgresql://)",
        ) from None
    try:
        with engine.connect() as conn:
            try:
                read_only = READ_ONLY_TRANSACTION.get(engine.dialect.name)
                if read_only:
                    conn.execute(sa.text(read_only))
                tables = sa.inspect(conn).get_table_names() if not cfg.query else []
                query = sa.text(_query(cfg, tables, shown))
                result = conn.execution_options(stream_results=True).execute(query)
                columns = list(result.keys())
                yield from _rows(shown, columns, (list(part) for part in result.partitions(BATCH_ROWS)))
            finally:
                conn.rollback()  # whatever the query did (it should have done nothing) is undone
    except sa.exc.SQLAlchemyError as err:
        raise TuneforgeError(
            f"the query failed on {shown}: {err.__class__.__name__}: {err}", where="data.query"
        ) from None
    finally:
        engine.dispose()


def _query(cfg: DataConfig, tables: list[str], shown: str) -> str:
    if cfg.query:
        return cfg.query
    if len(tables) == 1:
        quoted = tables[0].replace('"', '""')  # a table name is data too: it must not end the identifier
        return f'SELECT * FROM "{quoted}"'
    raise TuneforgeError(
        f"{shown} has {len(tables)} tables ({', '.join(tables) or 'none'}); which rows should be read?",
        where="data.query",
        fix='set data.query, e.g. "SELECT text, label FROM reviews"',
    )


def _rows(shown: str, columns: list[str], batches: Iterator[list[Any]]) -> Iterator[RawRow]:
    n = 0
    for batch in batches:
        for values in batch:
            n += 1
            where = f"{shown} row {n}"
            fields: dict[str, Any] = {}
            problem = None
            for col, value in zip(columns, values, strict=True):
                fields[col], bad = _python_value(value)
                if bad and problem is None:
                    problem = ("encoding", f"column {col!r} holds bytes that are not valid utf-8")
            yield RawRow(fields, where, problem)


def _python_value(value: Any) -> tuple[Any, bool]:
    """Database values as JSON-friendly Python values (numbers, strings); the flag marks undecodable bytes."""
    if isinstance(value, Decimal):
        return (int(value) if value == value.to_integral_value() else float(value)), False
    if isinstance(value, dt.date | dt.time):
        return value.isoformat(), False
    if isinstance(value, bytes | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8"), False
        except UnicodeDecodeError:
            return raw.decode("utf-8", errors="replace"), True
    return value, False
