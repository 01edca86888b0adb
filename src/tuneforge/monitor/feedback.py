"""`tuneforge feedback export`: corrections (and, asked for, answers rated good) in the log → raw data files.

The files are raw sources like any other: they become training data only through `tuneforge prepare`
(validation, cleaning, PII redaction, dedup, the leakage check against a frozen test split), never directly.
Feedback rows are read by time window in SQL pages (`monitor.log.window_rows`); each page's requests are
fetched by id, so neither table is ever read whole. One file per record format, in the shapes the data stage
reads: classify → `{"text", "label"}`, chat → `{"messages": [...]}`, completions → `{"prompt", "response"}`.

Two keys (the asker and a reviewer) may both correct one request; both rows are written, and `prepare`
decides: disagreeing labels are a label conflict (dropped by default), equal ones a duplicate.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tuneforge.artifacts import atomic_dir, write_json_atomic
from tuneforge.errors import TuneforgeError
from tuneforge.monitor.log import ID_CHUNK, in_chunks, log_label, requests_by_id, utc, window_rows
from tuneforge.serve.store import database_url, feedback_table

KIND = "tuneforge.feedback-export"
PAGE = ID_CHUNK
"""Feedback rows per query (their requests are then fetched by id, one IN list per page)."""
FILES = {"classify": "classify.jsonl", "chat": "chat.jsonl", "completion": "completion.jsonl"}
"""Endpoint → the raw data file its examples go to (one record format per file)."""


@dataclass
class Export:
    """What an export took, as export.json records it."""

    log: str
    since: datetime
    until: datetime
    min_rating: int
    include_good: bool
    split: str | None
    feedback_rows: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    """Examples written per file."""
    skipped: Counter[str] = field(default_factory=Counter)
    """Feedback rows (or classify items) left out, by reason."""

    def manifest(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "log": self.log,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "min_rating": self.min_rating,
            "include_good": self.include_good,
            "split": self.split,
            "feedback_rows": self.feedback_rows,
            "files": {name: n for name, n in sorted(self.counts.items())},
            "skipped": dict(sorted(self.skipped.items())),
        }


def resolve_log(deployment_or_log: str) -> str:
    """A log to read: a URL as it is; a run dir or serve config → its serve.log_db; else a SQLite file."""
    if "://" in deployment_or_log:
        return deployment_or_log
    path = Path(deployment_or_log).expanduser()
    config = None
    if path.is_dir() and (path / "config.yaml").is_file():
        config = path / "config.yaml"
    elif path.is_file() and path.suffix in (".yaml", ".yml"):
        config = path
    if config is not None:
        from tuneforge.config import load_config

        cfg, _ = load_config(config)
        if cfg.serve.log_db is None:
            raise TuneforgeError(
                f"{config} turns the request log off (serve.log_db: null), so there is no feedback to export",
                where="serve.log_db",
                fix="pass the log itself: its SQLite file or database URL",
            )
        deployment_or_log = cfg.serve.log_db
        if "://" in deployment_or_log:
            return deployment_or_log
        path = Path(deployment_or_log).expanduser()
    if not path.is_file():  # SQLite would create an empty database at a wrong path
        raise TuneforgeError(
            f"the request log {path} does not exist",
            where="DEPLOYMENT_OR_LOG",
            fix="pass the serve config or run dir the server used, or its serve.log_db file or URL "
            "(a relative serve.log_db is relative to the folder the server was started in)",
        )
    return str(path)


def export_feedback(
    deployment_or_log: str,
    out: Path,
    since: datetime,
    until: datetime,
    *,
    min_rating: int = 1,
    include_good: bool = False,
    split: str | None = None,
    page: int = PAGE,
) -> Export:
    """Write the window's corrections (and good answers) into `out`, a new folder or an earlier export.

    Args:
        min_rating: with `include_good`, an answer without a correction counts as good at this rating or
            above (1: a thumbs up; 4 on a 1-5 scale).
        split: a `split` field for every row (train, validation, test), to combine the file with a frozen
            test split under data.split_column; None: no such field, `prepare` splits.
    """
    log = resolve_log(deployment_or_log)
    result = Export(log_label(log), utc(since), utc(until), min_rating, include_good, split)
    engine = _engine(log)
    try:
        with atomic_dir(out, kind=KIND) as tmp:
            files: dict[str, Any] = {}
            try:
                for kind, example in _examples(engine, result, page):
                    name = FILES[kind]
                    if name not in files:
                        files[name] = (tmp / name).open("w", encoding="utf-8")
                    if split is not None:
                        example["split"] = split
                    files[name].write(json.dumps(example, ensure_ascii=False) + "\n")
                    result.counts[name] += 1
            finally:
                for f in files.values():
                    f.close()
            write_json_atomic(tmp / "export.json", result.manifest())
    except sa.exc.OperationalError as err:
        raise TuneforgeError(
            f"cannot read the request log {result.log!r}: {str(err.orig).strip()}",
            where="DEPLOYMENT_OR_LOG",
            fix="check that the database is running and reachable, and the URL, user and password",
        ) from None
    finally:
        engine.dispose()
    return result


def _engine(log: str) -> sa.Engine:
    try:
        engine = sa.create_engine(database_url(log))
        tables = set(sa.inspect(engine).get_table_names())
    except (sa.exc.SQLAlchemyError, ModuleNotFoundError) as err:
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        raise TuneforgeError(
            f"cannot open the request log {log_label(log)!r} ({reason})",
            where="DEPLOYMENT_OR_LOG",
            fix="pass the serve.log_db the server wrote: a SQLite file or a SQLAlchemy URL (postgresql://...)",
        ) from None
    if not {"requests", "feedback"} <= tables:
        engine.dispose()
        raise TuneforgeError(
            f"{log_label(log)} holds no request log (no `requests` and `feedback` tables)",
            where="DEPLOYMENT_OR_LOG",
            fix="pass the serve.log_db file or URL that `tuneforge serve` writes",
        )
    return engine


def _examples(engine: sa.Engine, result: Export, page: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """(endpoint, raw example) for each usable feedback row of the window, oldest feedback first."""
    have = {c["name"] for c in sa.inspect(engine).get_columns("feedback")}
    cols = ["request_id", "rating"] + (["correction"] if "correction" in have else [])  # an older log
    rows = window_rows(engine, feedback_table, result.since, result.until, cols, page=page)
    for chunk in in_chunks(rows, min(page, ID_CHUNK)):
        columns = ["endpoint", "status", "prompt", "response"]
        requests = requests_by_id(engine, [r["request_id"] for r in chunk], columns)
        for fb in chunk:
            result.feedback_rows += 1
            req = requests.get(fb["request_id"])
            if req is None or req["status"] != 200:
                result.skipped["request_not_answered"] += 1
                continue
            if req["prompt"] is None:
                result.skipped["text_not_logged"] += 1
                continue
            correction = _json(fb.get("correction"))
            if correction is None and not (result.include_good and (fb["rating"] or 0) >= result.min_rating):
                result.skipped["no_correction" if not result.include_good else "not_rated_good"] += 1
                continue
            examples = list(_make(req, correction, result))
            if not examples:
                continue
            for example in examples:
                yield req["endpoint"], example


def _json(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _make(req: dict[str, Any], correction: Any, result: Export) -> Iterator[dict[str, Any]]:
    """The raw examples one rated request gives: its input with the corrected (or the good) answer."""
    endpoint, prompt, response = req["endpoint"], req["prompt"], _json(req["response"])
    if endpoint == "classify":
        texts = _json(prompt)
        if not isinstance(texts, list):
            result.skipped["text_not_readable"] += 1
            return
        if correction is not None:
            fixed = correction if isinstance(correction, list) else [correction]
        else:  # rated good: the model's own labels (or values)
            fixed = [_predicted(item) for item in (response if isinstance(response, list) else [])]
        if len(fixed) != len(texts):
            result.skipped["corrections_do_not_match_inputs"] += 1
            return
        for text, label in zip(texts, fixed, strict=True):
            if label is not None:
                yield {"text": str(text), "label": label}
        return
    answer = correction if isinstance(correction, str) else None
    if answer is None:  # rated good: the first choice's text
        answer = (
            response[0] if isinstance(response, list) and response and isinstance(response[0], str) else None
        )
    if answer is None or not answer.strip():
        result.skipped["no_answer_text"] += 1
        return
    if endpoint == "completion":
        yield {"prompt": prompt, "response": answer}
        return
    messages = _json(prompt)
    if endpoint != "chat" or not isinstance(messages, list):
        result.skipped["text_not_readable"] += 1
        return
    yield {"messages": [*messages, {"role": "assistant", "content": answer}]}


def _predicted(item: Any) -> Any:
    if not isinstance(item, dict):
        return None
    return item.get("label", item.get("value"))
