"""data.query must be one read-only query: checked with a real SQL parser (sqlglot) before any connection.

This is the first of three locks; the connection itself is read-only where the driver has such a mode (SQLite
`mode=ro` plus an authorizer, PostgreSQL/MySQL/Oracle `SET TRANSACTION READ ONLY`) and every transaction is
rolled back, so a statement the parser misjudges still cannot change the database.
"""

from __future__ import annotations

import logging

from tuneforge.errors import TuneforgeError

# SQLAlchemy dialect (URL scheme before any "+driver") -> sqlglot dialect; others parse as generic SQL.
DIALECTS = {
    "sqlite": "sqlite",
    "postgresql": "postgres",
    "postgres": "postgres",
    "mysql": "mysql",
    "mariadb": "mysql",
    "mssql": "tsql",
    "oracle": "oracle",
    "duckdb": "duckdb",
    "snowflake": "snowflake",
    "bigquery": "bigquery",
    "redshift": "redshift",
    "trino": "trino",
    "clickhouse": "clickhouse",
}
# Functions with side effects that a SELECT can call. A blocklist is never complete (that is what the
# read-only transaction is for); these are the well-known ones, refused with a clear message up front.
SIDE_EFFECT_FUNCTIONS = {
    "load_extension",
    "lo_import",
    "lo_export",
    "lo_unlink",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "set_config",
    "dblink_exec",
    "nextval",
    "setval",
    "sys_exec",
    "sys_eval",
}
FIX = 'write one SELECT (or WITH ... SELECT) that only reads, e.g. "SELECT text, label FROM reviews"'


def dialect_of(url_scheme: str) -> str | None:
    return DIALECTS.get(url_scheme.split("+", 1)[0].lower())


def check_read_only(query: str, dialect: str | None) -> None:
    """Raise unless `query` is exactly one SELECT or set operation (UNION, ...) that writes nothing."""
    import sqlglot
    from sqlglot import expressions as exp
    from sqlglot.errors import SqlglotError

    logger = logging.getLogger("sqlglot")
    level = logger.level
    logger.setLevel(logging.ERROR)  # its "falling back to a Command" warning; a Command is refused below
    try:
        statements = [s for s in sqlglot.parse(query, read=dialect) if s is not None]
    except SqlglotError as err:
        raise TuneforgeError(
            f"data.query cannot be checked as a read-only query: {str(err).splitlines()[0]}",
            where="data.query",
            fix=FIX,
        ) from None
    finally:
        logger.setLevel(level)
    if len(statements) != 1:
        raise TuneforgeError(
            f"data.query holds {len(statements)} statements; exactly one read-only query is allowed",
            where="data.query",
            fix=FIX,
        )
    (root,) = statements
    while isinstance(root, exp.Subquery):
        root = root.this
    writes = (
        exp.Insert,
        exp.Update,
        exp.Delete,
        exp.Merge,
        exp.Drop,
        exp.Create,
        exp.Alter,
        exp.TruncateTable,
        exp.Command,
        exp.Pragma,
        exp.Attach,
        exp.Detach,
        exp.Set,
        exp.Transaction,
        exp.Commit,
        exp.Rollback,
        exp.Use,
        exp.Copy,
        exp.LoadData,
        exp.Into,
        exp.Lock,
    )
    found: object = next((n for n in root.walk() if isinstance(n, writes)), None)
    if found is None and not isinstance(root, exp.Select | exp.SetOperation):
        found = root
    if found is not None:
        raise TuneforgeError(
            f"data.query must be one read-only SELECT, but it contains {_name(found)}; the query was not run",
            where="data.query",
            fix=FIX,
        )
    for fn in root.find_all(exp.Func):
        name = (fn.name if isinstance(fn, exp.Anonymous) else fn.sql_name()).lower()
        if name in SIDE_EFFECT_FUNCTIONS:
            raise TuneforgeError(
                f"data.query calls {name}(), which changes the database or the server; the query was not run",
                where="data.query",
                fix=FIX,
            )


def _name(node: object) -> str:
    """What a statement is, in SQL words: `DROP`, `SELECT ... INTO`, `PRAGMA`, ..."""
    from sqlglot import expressions as exp

    if isinstance(node, exp.Command):
        return str(node.this).upper()
    if isinstance(node, exp.Into):
        return "SELECT ... INTO (which creates a table)"
    if isinstance(node, exp.Lock):
        return "a locking clause (FOR UPDATE / FOR SHARE)"
    words = {
        exp.TruncateTable: "TRUNCATE",
        exp.LoadData: "LOAD DATA",
        exp.Transaction: "BEGIN",
    }
    return next((w for t, w in words.items() if isinstance(node, t)), type(node).__name__.upper())
