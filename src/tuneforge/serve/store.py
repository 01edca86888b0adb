"""The request and feedback log (SQLAlchemy): the one store the server writes and monitoring / the UI read.

SQLite by default, any SQLAlchemy URL (PostgreSQL for several replicas). Writes go through a bounded queue to
one writer thread, so a slow database never delays a response; `close()` drains the queue (clean shutdown).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tuneforge.data.clean import PII_STEPS

metadata = sa.MetaData()
BURST = 500
"""Most rows the writer puts in one transaction."""

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
        self.engine = sa.create_engine(url)
        metadata.create_all(self.engine)
        self.keep_text = keep_text
        self.redact = redactor(redact or [])
        self.queue: queue.Queue[tuple[sa.Table, dict[str, Any]] | None] = queue.Queue(max_queue)
        self.dropped = 0
        # Ids this process logged (or is streaming), so feedback on an answer whose row the writer has not yet
        # written is accepted. Bounded well above the queue plus a write burst (with room for answers still
        # streaming): an id that has left this memory has also left the queue, so the database answers for it.
        self.recent: OrderedDict[str, None] = OrderedDict()
        self.recent_max = 2 * (max_queue + BURST)
        self.recent_lock = threading.Lock()
        self.thread = threading.Thread(target=self._write_loop, name="request-log", daemon=True)
        self.thread.start()

    def log_request(self, **row: Any) -> None:
        """Queue one request row (never blocks: a full queue drops the row and counts it)."""
        row.setdefault("time", datetime.now(UTC))
        for field in ("prompt", "response"):
            if row.get(field) is not None:
                row[field] = self.redact(row[field]) if self.keep_text else None
        self.remember(row["id"])
        if not self._put(requests_table, row):
            with self.recent_lock:
                self.recent.pop(row["id"], None)

    def remember(self, request_id: str) -> None:
        """Count an id as logged from now on (a streamed answer shows its id before its row is queued)."""
        with self.recent_lock:
            self.recent[request_id] = None
            self.recent.move_to_end(request_id)
            while len(self.recent) > self.recent_max:
                self.recent.popitem(last=False)

    def has_request(self, request_id: str) -> bool | None:
        """Whether a request with this id was logged: by this process (queued or written), or in the database.

        None when the database cannot be read. A row another replica still holds in its queue is not found.
        """
        with self.recent_lock:
            if request_id in self.recent:
                return True
        t = requests_table
        try:
            with self.engine.connect() as conn:
                found = conn.execute(sa.select(t.c.id).where(t.c.id == request_id)).first()
        except sa.exc.OperationalError:
            return None
        return found is not None

    def log_feedback(self, **row: Any) -> None:
        row.setdefault("time", datetime.now(UTC))
        if row.get("comment") is not None:
            row["comment"] = self.redact(row["comment"])
        self._put(feedback_table, row)

    def _put(self, table: sa.Table, row: dict[str, Any]) -> bool:
        try:
            self.queue.put_nowait((table, row))
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def _write_loop(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < BURST:  # one transaction per burst, not per row
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._write(batch)
                    return
                batch.append(nxt)
            self._write(batch)

    def _write(self, batch: list[tuple[sa.Table, dict[str, Any]]]) -> None:
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    for table, row in batch:
                        conn.execute(table.insert().values(**row))
                return
            except sa.exc.OperationalError:  # a locked SQLite file or a dropped connection: retry briefly
                time.sleep(0.2 * (attempt + 1))
            except sa.exc.SQLAlchemyError:
                # A row the database refuses (a value too long for a PostgreSQL column, a repeated id) takes
                # neither its burst nor the writer thread down with it: rows one by one, refused ones dropped.
                if len(batch) == 1:
                    break
                for one in batch:
                    self._write([one])
                return
        self.dropped += len(batch)

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued, then stop the writer."""
        self.queue.put(None)
        self.thread.join(timeout)
        self.engine.dispose()


def read_table(url: str, table: str = "requests") -> list[dict[str, Any]]:
    """Every row of `requests` or `feedback`, oldest first (for monitoring, the UI and tests)."""
    t = metadata.tables[table]
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(t).order_by(t.c.time)).mappings()]
    finally:
        engine.dispose()
