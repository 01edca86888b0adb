"""The request log of one time window, read in SQL pages and folded into what the drift tests need.

The log may be a PostgreSQL table with millions of rows, so nothing here reads a whole table: rows come by
`WHERE time >= since AND time < until`, in pages ordered by (time, id) and continued after the last row seen
(keyset pagination: each page is an index range scan, unlike OFFSET, which rereads every earlier row). Only
numbers (lengths, latencies, counts) are kept for every row; texts are kept as a uniform reservoir sample.
Only `serve.store`'s table definitions are used, never the server itself.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tuneforge.errors import TuneforgeError
from tuneforge.monitor.text import is_refusal
from tuneforge.serve.store import database_url, feedback_table, requests_table, shadow_table

PAGE = 2000
"""Rows fetched per query."""
ID_CHUNK = 500
"""Ids looked up in one IN list (older SQLite allows 999 bound values in a statement)."""
ANSWERED = ("chat", "completion", "classify")
"""Endpoints whose requests carry an input to compare with the training data."""


def utc(t: datetime) -> datetime:
    """An aware UTC datetime (SQLite gives back the naive UTC time the writer stored)."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def window_rows(
    engine: sa.Engine,
    table: sa.Table,
    since: datetime,
    until: datetime,
    columns: list[str],
    *,
    where: Any = None,
    page: int = PAGE,
) -> Iterator[dict[str, Any]]:
    """Rows of `table` with since <= time < until, oldest first, one page per query."""
    t = table
    cols = [t.c[c] for c in dict.fromkeys(["time", "id", *columns])]
    last: tuple[Any, Any] | None = None
    while True:
        q = sa.select(*cols).where(t.c.time >= since, t.c.time < until)
        if where is not None:
            q = q.where(where)
        if last is not None:
            q = q.where(sa.or_(t.c.time > last[0], sa.and_(t.c.time == last[0], t.c.id > last[1])))
        q = q.order_by(t.c.time, t.c.id).limit(page)
        with engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(q).mappings()]
        yield from rows
        if len(rows) < page:
            return
        last = (rows[-1]["time"], rows[-1]["id"])


class Reservoir:
    """A uniform sample of at most `size` items of a stream of unknown length (Vitter's algorithm R)."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size, self.seen = size, 0
        self.items: list[Any] = []
        self.rng = random.Random(seed)

    def add(self, item: Any) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
        else:
            j = self.rng.randrange(self.seen)
            if j < self.size:
                self.items[j] = item


@dataclass
class Traffic:
    """What a window of the log holds, as the monitor's tests read it."""

    since: datetime
    until: datetime
    requests: int = 0
    inputs: Reservoir = field(default_factory=lambda: Reservoir(2000))
    input_count: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    confidences: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    answers: Reservoir = field(default_factory=lambda: Reservoir(2000, seed=1))
    answer_count: int = 0
    empty_answers: int = 0
    refusals: int = 0
    """Answers opening like a refusal (`text.is_refusal`, a heuristic)."""
    finish_reasons: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    endpoints: Counter[str] = field(default_factory=Counter)
    models: Counter[str] = field(default_factory=Counter)
    latency_ms: dict[str, list[float]] = field(default_factory=dict)
    ttft_ms: list[float] = field(default_factory=list)
    per_day: dict[str, Counter[str]] = field(default_factory=dict)
    ratings: dict[str, list[int]] = field(default_factory=dict)
    feedback: int = 0
    rated_labels: int = 0
    """Feedback rows on classify answers (accuracy on corrected labels: 1 - corrected / rated)."""
    corrected_labels: int = 0
    """Those of them that carry a correction."""
    shadow: dict[str, ShadowPairs] = field(default_factory=dict)
    """serve.shadow: champion and shadow answers to the same requests, by shadow model."""


@dataclass
class ShadowPairs:
    """One shadow model's answers beside the champion's, on the requests both answered."""

    rows: int = 0
    """Shadow rows in the window whose champion request is in the log."""
    failed: int = 0
    """Of them, the shadow's failures (no answer to compare)."""
    labels: int = 0
    agreed: int = 0
    """classify: items both labelled, and those given the same label."""
    answers: int = 0
    exact: int = 0
    champion_chars: list[int] = field(default_factory=list)
    shadow_chars: list[int] = field(default_factory=list)
    """Generators: answer pairs, identical ones, and both sides' lengths in characters."""


def _day(t: datetime) -> str:
    return utc(t).strftime("%Y-%m-%d")


def user_side(prompt: str, endpoint: str) -> list[str]:
    """The inputs in a logged prompt: a completion's text, a chat's non-assistant turns, classify's texts."""
    if endpoint == "completion":
        return [prompt]
    try:
        data = json.loads(prompt)
    except ValueError:  # cut or redacted into something that is no longer JSON: the text as it is
        return [prompt]
    if endpoint == "classify" and isinstance(data, list):
        return [str(x) for x in data]
    if isinstance(data, list):
        turns = [m for m in data if isinstance(m, dict)]
        return ["\n".join(str(m.get("content", "")) for m in turns if m.get("role") != "assistant")]
    return [prompt]


def _add_answer(traffic: Traffic, row: dict[str, Any]) -> None:
    try:
        data = json.loads(row["response"]) if row.get("response") else None
    except ValueError:
        data = None
    if row["endpoint"] == "classify":
        for item in data if isinstance(data, list) else []:
            if not isinstance(item, dict):
                continue
            if "label" in item:
                traffic.labels[str(item["label"])] += 1
                probs = item.get("probabilities") or {}
                if probs:
                    traffic.confidences.append(float(max(probs.values())))
            elif isinstance(item.get("value"), int | float):
                traffic.values.append(float(item["value"]))
        return
    for reason in (row.get("finish_reason") or "").split(","):
        if reason:
            traffic.finish_reasons[reason] += 1
    texts = [str(x) for x in data] if isinstance(data, list) else []
    if texts:
        traffic.answer_count += 1
        traffic.empty_answers += not texts[0].strip()
        traffic.refusals += is_refusal(texts[0])
        traffic.answers.add(texts[0])


def read_traffic(
    log: str,
    since: datetime,
    until: datetime,
    *,
    model: str | None = None,
    max_live: int = 2000,
    page: int = PAGE,
) -> Traffic:
    """Fold the window's request and feedback rows into a `Traffic` (the log is only read)."""
    traffic = Traffic(since, until, inputs=Reservoir(max_live), answers=Reservoir(max_live, seed=1))
    if "://" not in log and not Path(log).expanduser().is_file():  # SQLite would create an empty file
        raise TuneforgeError(
            f"the request log {log} does not exist",
            where="--log",
            fix="pass the serve.log_db file the server writes (default serve.sqlite, where it was started)",
        )
    url = database_url(log)
    try:
        engine = sa.create_engine(url)
    except (sa.exc.ArgumentError, ModuleNotFoundError) as err:
        raise TuneforgeError(
            f"cannot open the request log {log_label(log)!r}: {err}",
            where="--log",
            fix="pass the serve.log_db the server wrote: a SQLite file or a SQLAlchemy URL (postgresql://...)",
        ) from None
    cols = [
        "model", "endpoint", "status", "finish_reason", "latency_ms", "ttft_ms", "prompt", "response",
    ]  # fmt: skip
    where = requests_table.c.model == model if model else None
    try:
        if not sa.inspect(engine).has_table(requests_table.name):
            raise TuneforgeError(
                f"{log} holds no request log (no `requests` table)",
                where="--log",
                fix="pass the serve.log_db file or URL that `tuneforge serve` writes",
            )
        for row in window_rows(engine, requests_table, since, until, cols, where=where, page=page):
            _add_request(traffic, row)
        if sa.inspect(engine).has_table(feedback_table.name):
            _add_feedback(traffic, engine, page)
        if sa.inspect(engine).has_table(shadow_table.name):
            _add_shadow(traffic, engine, page, model)
    except sa.exc.OperationalError as err:
        raise TuneforgeError(
            f"cannot read the request log {log_label(log)!r}: {str(err.orig).strip()}",
            where="--log",
            fix="check that the database is running and reachable, and the URL, user and password",
        ) from None
    finally:
        engine.dispose()
    return traffic


def _add_feedback(traffic: Traffic, engine: sa.Engine, page: int) -> None:
    have = {c["name"] for c in sa.inspect(engine).get_columns(feedback_table.name)}
    cols = ["rating", "request_id"] + (["correction"] if "correction" in have else [])  # an older log
    rows = window_rows(engine, feedback_table, traffic.since, traffic.until, cols, page=page)
    for chunk in in_chunks(rows, ID_CHUNK):
        endpoints = requests_by_id(engine, [r["request_id"] for r in chunk], ["endpoint"])
        for row in chunk:
            traffic.feedback += 1
            traffic.per_day.setdefault(_day(row["time"]), Counter())["feedback"] += 1
            if row["rating"]:
                traffic.ratings.setdefault(_day(row["time"]), []).append(int(row["rating"]))
            if endpoints.get(row["request_id"], {}).get("endpoint") == "classify":
                traffic.rated_labels += 1
                traffic.corrected_labels += row.get("correction") is not None


def _answers(response: Any) -> list[Any]:
    try:
        data = json.loads(response) if response else None
    except ValueError:
        return []
    return data if isinstance(data, list) else []


def _add_shadow(traffic: Traffic, engine: sa.Engine, page: int, model: str | None) -> None:
    """Pair each shadow answer in the window with the champion's answer to the same request."""
    cols = ["shadow_of", "model", "model_version", "status", "response"]
    rows = window_rows(engine, shadow_table, traffic.since, traffic.until, cols, page=page)
    for chunk in in_chunks(rows, ID_CHUNK):
        champions = requests_by_id(
            engine, [r["shadow_of"] for r in chunk], ["model", "endpoint", "status", "response"]
        )
        for row in chunk:
            champ = champions.get(row["shadow_of"])
            if champ is None or (model and champ["model"] != model):
                continue
            name = str(row["model"]) + (f" v{row['model_version']}" if row["model_version"] else "")
            pairs = traffic.shadow.setdefault(name, ShadowPairs())
            pairs.rows += 1
            if row["status"] != 200:
                pairs.failed += 1
                continue
            if champ["status"] != 200:
                continue
            ours, theirs = _answers(champ["response"]), _answers(row["response"])
            if champ["endpoint"] == "classify":
                for a, b in zip(ours, theirs, strict=False):
                    if isinstance(a, dict) and isinstance(b, dict) and "label" in a and "label" in b:
                        pairs.labels += 1
                        pairs.agreed += a["label"] == b["label"]
            elif ours and theirs:
                a, b = str(ours[0]), str(theirs[0])
                pairs.answers += 1
                pairs.exact += a == b
                pairs.champion_chars.append(len(a))
                pairs.shadow_chars.append(len(b))


def in_chunks(rows: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    """A stream of rows as lists of at most `size`."""
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def requests_by_id(engine: sa.Engine, ids: list[str], columns: list[str]) -> dict[str, dict[str, Any]]:
    """The `requests` rows of these ids (at most ID_CHUNK of them: one bound value each), by id."""
    t = requests_table
    query = sa.select(t.c.id, *(t.c[c] for c in columns)).where(t.c.id.in_(sorted(set(ids))))
    with engine.connect() as conn:
        return {r["id"]: dict(r) for r in conn.execute(query).mappings()}


def _add_request(traffic: Traffic, row: dict[str, Any]) -> None:
    traffic.requests += 1
    status, endpoint = int(row["status"]), str(row["endpoint"] or "")
    traffic.statuses[status] += 1
    traffic.endpoints[endpoint] += 1
    traffic.models[str(row["model"])] += 1
    day = traffic.per_day.setdefault(_day(row["time"]), Counter())
    day["requests"] += 1
    day["errors"] += is_error(status)
    if row["latency_ms"] is not None:
        traffic.latency_ms.setdefault(endpoint, []).append(float(row["latency_ms"]))
    if row["ttft_ms"] is not None:
        traffic.ttft_ms.append(float(row["ttft_ms"]))
    if status != 200 or endpoint not in ANSWERED:
        return
    day["answered"] += 1
    if row["prompt"] is not None:  # serve.log_text: false keeps no texts
        for text in user_side(str(row["prompt"]), endpoint):
            traffic.input_count += 1
            traffic.inputs.add(text)
    _add_answer(traffic, row)


def log_label(log: str) -> str:
    """The log as the report names it: a URL without its password."""
    if "://" not in log:
        return log
    try:
        return sa.engine.make_url(log).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return log


def is_error(status: int) -> bool:
    """A failure of the service: a server error (5xx) or a request turned away for load (429).

    Other 4xx answers (a bad key, a malformed body) are the caller's mistakes, counted but not alerted on.
    """
    return status >= 500 or status == 429
