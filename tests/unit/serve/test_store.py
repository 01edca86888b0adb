"""The request log: rows arrive through the writer thread, all of them by close(); SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tuneforge.serve.store import LoggedRequest, RequestLog, database_url, read_table, requests_table


def _fill(log: RequestLog, n: int) -> None:
    for i in range(n):
        log.log_request(
            id=f"r{i}",
            key_name="alice",
            model="support",
            endpoint="chat",
            status=200,
            finish_reason="stop",
            prompt_tokens=i,
            completion_tokens=2 * i,
            latency_ms=1.5,
            prompt=f"mail me at x{i}@example.com",
            response="call +1 415 555 0100",
        )
    log.log_feedback(request_id="r1", key_name="alice", rating=1, comment="reach me at bob@example.com")


def test_every_row_is_written_by_close_with_pii_redacted(tmp_path: Path) -> None:
    url = database_url(str(tmp_path / "log.sqlite"))
    log = RequestLog(url, redact=["email", "phone"])
    _fill(log, 300)
    log.close()
    rows = read_table(url)
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(300)]
    assert rows[7]["prompt_tokens"] == 7 and rows[7]["completion_tokens"] == 14
    assert "@" not in rows[3]["prompt"] and "555" not in rows[3]["response"]
    fb = read_table(url, "feedback")
    assert [(f["request_id"], f["rating"]) for f in fb] == [("r1", 1)] and "@" not in fb[0]["comment"]
    assert log.dropped == 0


def test_text_can_be_left_out_and_a_full_queue_never_blocks(tmp_path: Path) -> None:
    url = database_url(str(tmp_path / "log.sqlite"))
    log = RequestLog(url, keep_text=False, max_queue=1)
    log.queue.put(None)  # the writer stops at once, so the queue fills and stays full
    log.thread.join()
    log.log_request(id="a", status=200, prompt="secret")
    log.log_request(id="b", status=200)  # queue full: dropped and counted, the caller is not held up
    assert log.dropped == 1
    _, row = log.queue.get_nowait()  # type: ignore[misc]
    assert row["prompt"] is None


def _hold_writer(log: RequestLog, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Keep the writer from writing until the event is set: rows stay queued, as under a slow database."""
    release = threading.Event()
    write = log._write

    def held(batch: list) -> None:  # type: ignore[type-arg]
        release.wait(30)
        write(batch)

    monkeypatch.setattr(log, "_write", held)
    return release


def test_an_id_still_queued_is_known_and_later_only_the_database_knows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = database_url(str(tmp_path / "log.sqlite"))
    log = RequestLog(url)
    release = _hold_writer(log, monkeypatch)
    log.log_request(id="chatcmpl-a", status=200)
    log.remember("chatcmpl-streaming")  # a stream's id, shown before its row is queued
    assert read_table(url) == []  # nothing written yet: the database alone would say "unknown"
    assert log.has_request("chatcmpl-a") is True and log.has_request("chatcmpl-streaming") is True
    assert log.has_request("chatcmpl-other") is False
    release.set()
    log.close()
    restarted = RequestLog(url)  # a new process (or another replica): only the database answers
    try:
        assert restarted.has_request("chatcmpl-a") is True
        assert restarted.has_request("chatcmpl-streaming") is False  # never logged
    finally:
        restarted.close()


def test_a_dropped_row_is_not_known(tmp_path: Path) -> None:
    log = RequestLog(database_url(str(tmp_path / "log.sqlite")), max_queue=1)
    log.queue.put(None)  # the writer stops at once, so the queue fills and stays full
    log.thread.join()
    log.log_request(id="kept", status=200)
    log.log_request(id="dropped", status=200)
    assert log.has_request("kept") is True and log.has_request("dropped") is False


def test_a_row_the_database_refuses_loses_only_itself(tmp_path: Path) -> None:
    url = database_url(str(tmp_path / "log.sqlite"))
    log = RequestLog(url)
    now = datetime.now(UTC)
    burst = [(requests_table, {"id": rid, "time": now, "status": 200}) for rid in ("a", "a", "b")]
    log._write(burst)  # one transaction, refused for the repeated id
    log.close()
    assert [r["id"] for r in read_table(url)] == ["a", "b"] and log.dropped == 1


def test_plain_paths_become_sqlite_urls_and_urls_pass_through(tmp_path: Path) -> None:
    assert database_url(str(tmp_path / "x.db")) == f"sqlite:///{tmp_path / 'x.db'}"
    assert database_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"


def test_the_same_store_on_postgresql(postgres: str) -> None:
    log = RequestLog(postgres, redact=["email"])
    _fill(log, 20)
    log.close()
    rows = read_table(postgres)
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(20)] and "@" not in rows[0]["prompt"]
    assert read_table(postgres, "feedback")[0]["rating"] == 1


def test_text_no_database_can_hold_costs_neither_the_row_nor_the_writer(tmp_path: Path) -> None:
    url = database_url(str(tmp_path / "log.sqlite"))
    log = RequestLog(url)
    log.log_request(id="a", status=422, model="m\ud800", prompt="x\x00y", key_name="alice")
    log.log_request(id="b", status=200)
    log.close()
    rows = read_table(url)
    assert [(r["id"], r["model"], r["prompt"]) for r in rows] == [("a", "m?", "x\ufffdy"), ("b", None, None)]
    assert log.dropped == 0 and log.problem is None


def test_an_unusable_log_is_one_line_at_start(tmp_path: Path) -> None:
    from tuneforge.errors import TuneforgeError

    (tmp_path / "not-a-db").write_text("hello\n")
    cases = {
        str(tmp_path / "missing" / "log.sqlite"): "(unable to open database file)",
        str(tmp_path / "not-a-db"): "(file is not a database)",
        "postgresql+nosuchdriver://u:secret@h/db": (
            "(Can't load plugin: sqlalchemy.dialects:postgresql.nosuchdriver)"
        ),
    }
    for log_db, reason in cases.items():
        with pytest.raises(TuneforgeError) as err:
            RequestLog(database_url(log_db))
        assert err.value.where == "serve.log_db" and err.value.what.endswith(reason), err.value.what
        assert "\n" not in err.value.what and "secret" not in err.value.what
    assert (tmp_path / "not-a-db").read_text() == "hello\n"


def test_the_log_knows_who_asked_where_and_a_second_rating_replaces_the_first(tmp_path: Path) -> None:
    url = database_url(str(tmp_path / "log.sqlite"))
    log = RequestLog(url)
    log.log_request(
        id="cls-a", status=200, key_name="alice", endpoint="classify", model="m", prompt='["x", "y"]'
    )
    assert log.find_request("cls-a") == (True, LoggedRequest("alice", "classify", "m", 2))
    assert log.find_request("x") == (False, None)
    log.log_feedback(
        request_id="cls-a", key_name="alice", rating=-1, comment="wrong", correction='["b", null]'
    )
    log.log_feedback(request_id="cls-a", key_name="alice", rating=1)  # replaces: the correction goes too
    log.log_feedback(request_id="cls-a", key_name="bob", rating=-1, correction='["a", null]')
    log.close()
    fb = read_table(url, "feedback")
    assert [(f["key_name"], f["rating"], f["comment"], f["correction"]) for f in fb] == [
        ("alice", 1, None, None),
        ("bob", -1, None, '["a", null]'),
    ]
    restarted = RequestLog(url)  # the database alone remembers who asked, and where
    try:
        assert restarted.find_request("cls-a") == (True, LoggedRequest("alice", "classify", "m", 2))
        restarted.log_feedback(request_id="cls-a", key_name="alice", rating=4, correction='["c", null]')
    finally:
        restarted.close()
    fb = read_table(url, "feedback")
    assert sorted((f["key_name"], f["rating"], f["correction"]) for f in fb) == [
        ("alice", 4, '["c", null]'),
        ("bob", -1, '["a", null]'),
    ]


def _rate_concurrently(url: str) -> None:
    """Two writers (two replicas of a server) and eight threads rate one request 200 times at once."""
    logs = [RequestLog(url), RequestLog(url)]
    start = threading.Barrier(8)

    def rate(i: int) -> None:
        start.wait()
        for j in range(25):
            logs[i % 2].log_feedback(request_id="r1", key_name="alice", rating=1, comment=f"{i}-{j}")

    threads = [threading.Thread(target=rate, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for log in logs:
        log.close()
        assert log.dropped == 0


def test_concurrent_ratings_of_one_request_by_one_key_leave_one_row(tmp_path: Path) -> None:
    url = database_url(str(tmp_path / "log.sqlite"))
    _rate_concurrently(url)
    assert [(f["request_id"], f["key_name"]) for f in read_table(url, "feedback")] == [("r1", "alice")]


def test_concurrent_ratings_leave_one_row_on_postgresql(postgres: str) -> None:
    _rate_concurrently(postgres)
    assert [(f["request_id"], f["key_name"]) for f in read_table(postgres, "feedback")] == [("r1", "alice")]


OLD_FEEDBACK = """CREATE TABLE feedback (
    id INTEGER NOT NULL PRIMARY KEY, request_id VARCHAR(64) NOT NULL, time TIMESTAMP NOT NULL,
    key_name VARCHAR(200), rating INTEGER, comment TEXT)"""


def _old_log(url: str) -> None:
    """A log as the first release wrote it: no `correction` column, no unique (request, key) index."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                OLD_FEEDBACK.replace("INTEGER NOT NULL PRIMARY KEY", "SERIAL PRIMARY KEY")
                if engine.dialect.name == "postgresql"
                else OLD_FEEDBACK
            )
        )
        rows = [("r1", "alice", 1), ("r1", "alice", -1), ("r1", "bob", 1)]  # two of alice: a replica race
        for i, (rid, key, rating) in enumerate(rows):
            conn.execute(
                sa.text("INSERT INTO feedback (request_id, time, key_name, rating) VALUES (:r, :t, :k, :g)"),
                {"r": rid, "t": datetime(2026, 1, 1, 0, i), "k": key, "g": rating},
            )
    engine.dispose()


def _check_upgraded(url: str) -> None:
    log = RequestLog(url)  # adds the column and the index; the newest of alice's two ratings is kept
    log.log_feedback(request_id="r1", key_name="bob", rating=5, correction='"better"')
    log.close()
    fb = read_table(url, "feedback")
    assert sorted((f["key_name"], f["rating"], f["correction"]) for f in fb) == [
        ("alice", -1, None),
        ("bob", 5, '"better"'),
    ]


def test_an_older_sqlite_log_gains_the_correction_column_at_open(tmp_path: Path) -> None:
    url = database_url(str(tmp_path / "old.sqlite"))
    _old_log(url)
    _check_upgraded(url)


def test_an_older_postgresql_log_gains_the_correction_column_at_open(postgres: str) -> None:
    _old_log(postgres)
    _check_upgraded(postgres)


def test_replicas_opening_an_older_log_at_once_all_start(tmp_path: Path) -> None:
    url = database_url(str(tmp_path / "old.sqlite"))
    _old_log(url)
    start, opened, failed = threading.Barrier(4), [], []

    def open_log() -> None:
        start.wait()
        try:
            opened.append(RequestLog(url))
        except Exception as err:  # the upgrade race lost: the test shows which
            failed.append(err)

    threads = [threading.Thread(target=open_log) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for log in opened:
        log.close()
    assert failed == [] and len(opened) == 4
    _check_upgraded(url)
