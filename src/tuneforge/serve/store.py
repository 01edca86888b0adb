"""The request and feedback log (SQLAlchemy): the one store the server writes and monitoring / the UI read.

SQLite by default, any SQLAlchemy URL (PostgreSQL for several replicas). Writes go through a bounded queue to
one writer thread, so a slow database never delays a response; `close()` drains the queue (clean shutdown).
A kill -9 loses what is still queued: the writer takes each row as soon as it arrives, so that is the rows of
the last moment. Nothing is lost silently otherwise: a dropped row is counted, and a SQLite file deleted or
replaced under the server, or writes that keep failing, set `problem` (the server's /ready, /metrics and log).
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tuneforge.data.clean import PII_STEPS
from tuneforge.errors import TuneforgeError

metadata = sa.MetaData()
BURST = 500
"""Most rows the writer puts in one transaction."""
CHECK_EVERY_S = 1.0
"""How often an idle writer checks that its SQLite file is still the one on disk."""

requests_table = sa.Table(
    "requests",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("time", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("key_name", sa.String(200)),
    sa.Column("model", sa.String(200), index=True),
    sa.Column("endpoint", sa.String(64)),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("finish_reason", sa.String(16)),
    sa.Column("prompt_tokens", sa.Integer),
    sa.Column("completion_tokens", sa.Integer),
    sa.Column("latency_ms", sa.Float),
    sa.Column("ttft_ms", sa.Float),
    sa.Column("stream", sa.Boolean),
    sa.Column("prompt", sa.Text),
    sa.Column("response", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("model_version", sa.Integer),  # the registry version that answered (serve registry:NAME)
)

feedback_table = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # No foreign key: feedback may arrive while its request row is still in the writer's queue.
    sa.Column("request_id", sa.String(64), nullable=False, index=True),
    sa.Column("time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("key_name", sa.String(200)),
    sa.Column("rating", sa.Integer),
    sa.Column("comment", sa.Text),
    # The corrected answer (chat, completion) or label / value (classify), as JSON; None: none given.
    sa.Column("correction", sa.Text),
    # One row per (request, key): a key rating a request again replaces its row (an upsert on this index).
    sa.Index("feedback_request_key", "request_id", "key_name", unique=True),
)
ADDED_COLUMNS = {"feedback": ["correction"], "requests": ["model_version"]}
"""Columns added since the first release: an older log gets them (ALTER TABLE) when it is opened."""


@dataclass(frozen=True)
class LoggedRequest:
    """What feedback needs to know of a logged request: who asked, where, and how many inputs it had."""

    key_name: str | None
    endpoint: str | None = None
    model: str | None = None
    inputs: int | None = None
    """Texts in a classify request (None: not known, e.g. the log keeps no text)."""


shadow_table = sa.Table(
    "shadow",
    metadata,
    # serve.shadow: a challenger's answer to a live request the champion answered (the user saw only that).
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("shadow_of", sa.String(64), nullable=False, index=True),  # the champion's row in `requests`
    sa.Column("time", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("model", sa.String(200)),
    sa.Column("model_version", sa.Integer),
    sa.Column("endpoint", sa.String(64)),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("finish_reason", sa.String(16)),
    sa.Column("prompt_tokens", sa.Integer),
    sa.Column("completion_tokens", sa.Integer),
    sa.Column("latency_ms", sa.Float),
    sa.Column("response", sa.Text),
    sa.Column("error", sa.Text),
)


def database_url(log_db: str) -> str:
    """A SQLAlchemy URL from serve.log_db: a URL as it is, a plain path as a SQLite file."""
    if "://" in log_db:
        return log_db
    return f"sqlite:///{Path(log_db).expanduser().resolve()}"


def redactor(kinds: list[str]) -> Callable[[str], str]:
    steps = [PII_STEPS[k] for k in kinds]

    def redact(text: str) -> str:
        for step in steps:
            text = step(text)
        return text

    return redact


class RequestLog:
    """Queue-backed writer of request rows and feedback rows."""

    def __init__(
        self, url: str, *, keep_text: bool = True, redact: list[str] | None = None, max_queue: int = 10_000
    ) -> None:
        self.url = url
        self.engine = _open(url)
        self.sqlite_path = _sqlite_path(url)
        self.identity = _identity(self.sqlite_path)
        """(device, inode) of the SQLite file the writer opened: another file at the path is not ours."""
        self.problem: str | None = None
        """Why rows are not being written right now (None while all is well)."""
        self.reopened = 0
        self.keep_text = keep_text
        self.redact = redactor(redact or [])
        self.queue: queue.Queue[tuple[sa.Table, dict[str, Any]] | None] = queue.Queue(max_queue)
        self.dropped = 0
        # Ids this process logged (or is streaming) with the key that asked, so feedback on an answer whose
        # row the writer has not yet written is accepted. Bounded well above the queue plus a write burst (and
        # answers still streaming): an id that has left this memory has also left the queue, so the
        # database answers for it.
        self.recent: OrderedDict[str, LoggedRequest] = OrderedDict()
        self.recent_max = 2 * (max_queue + BURST)
        self.recent_lock = threading.Lock()
        self.thread = threading.Thread(target=self._write_loop, name="request-log", daemon=True)
        self.thread.start()

    def log_request(self, **row: Any) -> None:
        """Queue one request row (never blocks: a full queue drops the row and counts it)."""
        row.setdefault("time", datetime.now(UTC))
        inputs = classify_inputs(row.get("prompt")) if row.get("endpoint") == "classify" else None
        for field in ("prompt", "response"):
            if row.get(field) is not None:
                row[field] = self.redact(row[field]) if self.keep_text else None
        self.remember(row["id"], row.get("key_name"), row.get("endpoint"), row.get("model"), inputs)
        if not self._put(requests_table, row):
            with self.recent_lock:
                self.recent.pop(row["id"], None)

    def remember(
        self,
        request_id: str,
        key_name: str | None = None,
        endpoint: str | None = None,
        model: str | None = None,
        inputs: int | None = None,
    ) -> None:
        """Count an id as logged from now on (a streamed answer shows its id before its row is queued)."""
        seen = LoggedRequest(key_name, endpoint, model, inputs)
        _remember(self.recent, request_id, seen, self.recent_lock, self.recent_max)

    def find_request(self, request_id: str) -> tuple[bool, LoggedRequest | None] | None:
        """(found, who made it and where) for a request this process or the database logged.

        None when the database cannot be read. A row another replica still holds in its queue is not found.
        """
        with self.recent_lock:
            if request_id in self.recent:
                return True, self.recent[request_id]
        t = requests_table
        try:
            with self.engine.connect() as conn:
                query = sa.select(t.c.key_name, t.c.endpoint, t.c.model, t.c.prompt).where(
                    t.c.id == request_id
                )
                found = conn.execute(query).first()
        except sa.exc.SQLAlchemyError:
            return None
        if found is None:
            return False, None
        inputs = classify_inputs(found.prompt) if found.endpoint == "classify" else None
        return True, LoggedRequest(found.key_name, found.endpoint, found.model, inputs)

    def has_request(self, request_id: str) -> bool | None:
        """Whether a request with this id was logged (None when the database cannot be read)."""
        found = self.find_request(request_id)
        return None if found is None else found[0]

    def log_feedback(self, **row: Any) -> None:
        """Queue one feedback row; it replaces the row this key gave on this request before, if any.

        One row per request and key bounds what one key can store by what it may ask (the per-key limits).
        """
        row.setdefault("time", datetime.now(UTC))
        if row.get("comment") is not None:
            row["comment"] = self.redact(row["comment"])
        for field in ("rating", "comment", "correction"):  # a replacement replaces all: none is kept
            row.setdefault(field, None)
        self._put(feedback_table, row)

    def correction_json(self, correction: Any, endpoint: str | None) -> str:
        """A checked correction as the feedback table stores it: JSON, an answer's text redacted like the
        answer it replaces (a label or value is not text anyone wrote)."""
        answer_text = isinstance(correction, str) and endpoint != "classify"
        return json.dumps(self.redact(correction) if answer_text else correction, ensure_ascii=False)

    def log_shadow(self, **row: Any) -> None:
        """Queue a challenger's answer (serve.shadow), its text kept and redacted like a request's."""
        row.setdefault("time", datetime.now(UTC))
        if row.get("response") is not None:
            row["response"] = self.redact(row["response"]) if self.keep_text else None
        self._put(shadow_table, row)

    def _put(self, table: sa.Table, row: dict[str, Any]) -> bool:
        try:
            self.queue.put_nowait((table, {k: _storable(v) for k, v in row.items()}))
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def _write_loop(self) -> None:
        while True:
            try:
                item = self.queue.get(timeout=CHECK_EVERY_S)
            except queue.Empty:
                self._guarded(self._check_file)  # an idle server notices a deleted file too
                continue
            if item is None:
                return
            batch = [item]
            while len(batch) < BURST:  # one transaction per burst, not per row
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._guarded(self._write_checked, batch)
                    return
                batch.append(nxt)
            self._guarded(self._write_checked, batch)

    def _guarded(self, fn: Any, *args: Any) -> None:
        """The writer thread outlives any bug of its own: the rows of that moment are counted as dropped."""
        try:
            fn(*args)
        except Exception as err:
            traceback.print_exc()
            if args:
                self.dropped += len(args[0])
            self._set_problem(f"the request log writer failed ({type(err).__name__})")

    def _write_checked(self, batch: list[tuple[sa.Table, dict[str, Any]]]) -> None:
        self._check_file()
        if self.sqlite_path is not None and self.identity is None:  # no usable file: nowhere to write
            self.dropped += len(batch)
            return
        if self._write(batch):
            self._set_problem(None)
        else:
            self._set_problem(f"writes to the request log {self._shown()} fail")

    def _write(self, batch: list[tuple[sa.Table, dict[str, Any]]]) -> bool:
        """Write a burst; False when the database itself failed (not merely refused a row)."""
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    for table, row in batch:
                        conn.execute(_insert(conn, table, row))
                return True
            except sa.exc.OperationalError:  # a locked SQLite file or a dropped connection: retry briefly
                time.sleep(0.2 * (attempt + 1))
            except sa.exc.SQLAlchemyError:
                # A row the database refuses (a value too long for a PostgreSQL column, a repeated id) takes
                # neither its burst nor the writer thread down with it: rows one by one, refused ones dropped.
                if len(batch) == 1:
                    self.dropped += 1
                    return True
                return all([self._write([one]) for one in batch])
        self.dropped += len(batch)
        return False

    def _check_file(self) -> None:
        """Is the SQLite file the writer opened still the one at its path? If not, reopen the path or stop.

        A deleted (or moved) log is started anew at its path; a file put in its place is written only if it
        is a tuneforge request log itself. Rows never go on into a file nobody can see any more.
        """
        if self.sqlite_path is None:
            return
        now = _identity(self.sqlite_path)
        if now is not None and now == self.identity:
            return
        if self.identity is not None:
            what = "deleted or moved" if now is None else "replaced by another file"
            _say(f"the request log {self.sqlite_path} was {what} while serving")
            self.identity = None
            self.engine.dispose()
        try:
            if now is not None and not {"requests", "feedback"} <= _tables(self.engine):
                self._set_problem(
                    f"{self.sqlite_path} is not a tuneforge request log (it replaced the log while serving); "
                    "rows are not written until it is moved away"
                )
                return
            create_tables(self.engine)
        except sa.exc.SQLAlchemyError as err:
            self._set_problem(f"the request log {self.sqlite_path} cannot be reopened ({_reason(err)})")
            return
        self.identity = _identity(self.sqlite_path)
        self.reopened += 1
        _say(f"the request log {self.sqlite_path} was reopened; rows are written there again")
        self._set_problem(None)

    def _set_problem(self, problem: str | None) -> None:
        if problem != self.problem and problem is not None:
            _say(f"{problem}: /ready answers 503 and requests are refused until it is resolved")
        self.problem = problem

    def _shown(self) -> str:
        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued, then stop the writer."""
        self.queue.put(None)
        self.thread.join(timeout)
        self.engine.dispose()


def _open(url: str) -> sa.Engine:
    """The database with its tables, or one line saying why not (before the server loads any model)."""
    shown = url
    try:
        shown = sa.engine.make_url(url).render_as_string(hide_password=True)
        engine = sa.create_engine(url)
        create_tables(engine)
    except (sa.exc.SQLAlchemyError, ImportError) as err:
        raise TuneforgeError(
            f"cannot open the request log {shown} ({_reason(err)})",
            where="serve.log_db",
            fix="point serve.log_db at a SQLite file in a writable folder or a reachable database URL, or "
            "turn the log off with --set serve.log_db=null",
        ) from None
    return engine


def create_tables(engine: sa.Engine) -> None:
    """The log's tables, and on a log an older tuneforge made, the columns and index added since."""
    for attempt in range(3):
        try:
            _upgrade(engine)
            metadata.create_all(engine)
            return
        except sa.exc.SQLAlchemyError:
            # Replicas starting at once: one that lost a race (a table or column the other just created)
            # finds the work done on another look.
            if attempt == 2:
                raise
            time.sleep(0.1 * (attempt + 1))


def _upgrade(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        old = set(sa.inspect(conn).get_table_names())
        for table_name, added in ADDED_COLUMNS.items():
            if table_name not in old:
                continue
            have = {c["name"] for c in sa.inspect(conn).get_columns(table_name)}
            for name in added:
                if name not in have:  # nullable: the old rows stay as they are
                    kind = metadata.tables[table_name].c[name].type.compile(dialect=conn.dialect)
                    conn.execute(sa.text(f"ALTER TABLE {table_name} ADD COLUMN {name} {kind}"))
        if "feedback" in old:
            indexes = {i["name"] for i in sa.inspect(conn).get_indexes("feedback")}
            if "feedback_request_key" not in indexes:
                # Earlier versions kept the first rating of a pair (a race between replicas could keep two):
                # the newest one is what the replace rule keeps, so older duplicates go before the index.
                f = feedback_table
                newer = f.alias("newer")
                shadowed = sa.exists().where(
                    newer.c.request_id == f.c.request_id,
                    newer.c.key_name == f.c.key_name,
                    newer.c.id > f.c.id,
                )
                conn.execute(f.delete().where(shadowed))
                for index in feedback_table.indexes:  # create_all leaves an existing table's indexes alone
                    index.create(conn, checkfirst=True)


def _insert(conn: sa.Connection, table: sa.Table, row: dict[str, Any]) -> Any:
    """An INSERT; for feedback an upsert on (request, key), so a second rating replaces the first in place."""
    if table is not feedback_table:
        return table.insert().values(**row)
    name = conn.dialect.name
    if name in ("sqlite", "postgresql"):
        from sqlalchemy.dialects import postgresql, sqlite

        dialect_insert = sqlite.insert if name == "sqlite" else postgresql.insert
        stmt = dialect_insert(table).values(**row)
        changed = {k: stmt.excluded[k] for k in row if k not in ("id", "request_id", "key_name")}
        return stmt.on_conflict_do_update(index_elements=["request_id", "key_name"], set_=changed)
    # Other databases: the unique index refuses a second row; delete-then-insert in the burst's transaction.
    f = feedback_table
    conn.execute(f.delete().where(f.c.request_id == row["request_id"], f.c.key_name == row.get("key_name")))
    return table.insert().values(**row)


def classify_inputs(prompt: str | None) -> int | None:
    """How many texts a logged classify request held (its prompt is their JSON list); None if unknown."""
    try:
        texts = json.loads(prompt) if prompt is not None else None
    except ValueError:
        return None
    return len(texts) if isinstance(texts, list) else None


def _tables(engine: sa.Engine) -> set[str]:
    try:
        return set(sa.inspect(engine).get_table_names())
    except sa.exc.SQLAlchemyError:  # not a database at all
        return set()


def _reason(err: BaseException) -> str:
    orig = getattr(err, "orig", None)  # the driver's own message, without SQLAlchemy's SQL echo
    return (str(orig or err).strip().splitlines() or [type(err).__name__])[0]


def _sqlite_path(url: str) -> Path | None:
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).resolve()


def _identity(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _storable(value: Any) -> Any:
    """Text any database keeps: UTF-8 has no lone surrogates, PostgreSQL text no NUL (either lost the row)."""
    if not isinstance(value, str):
        return value
    return value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


def _remember(memory: OrderedDict[Any, Any], key: Any, value: Any, lock: threading.Lock, most: int) -> None:
    with lock:
        memory[key] = value
        memory.move_to_end(key)
        while len(memory) > most:
            memory.popitem(last=False)


def _say(line: str) -> None:
    print(f"tuneforge serve: {line}", file=sys.stderr, flush=True)


def read_table(url: str, table: str = "requests") -> list[dict[str, Any]]:
    """Every row of `requests`, `feedback` or `shadow`, oldest first (for monitoring, the UI and tests)."""
    t = metadata.tables[table]
    engine = sa.create_engine(url)
    try:
        present = {c["name"] for c in sa.inspect(engine).get_columns(table)}  # an older log lacks new ones
        with engine.connect() as conn:
            query = sa.select(*(c for c in t.columns if c.name in present)).order_by(t.c.time)
            return [dict(r) for r in conn.execute(query).mappings()]
    finally:
        engine.dispose()
