"""Annotation projects: rows to label (from a prepared split or a raw file), labels by several annotators,
the next row for an annotator, disagreements and their resolution, and exports (a raw file `prepare` reads,
Label Studio JSON), all kept in one SQLite file (WAL).

Every label is its own transaction with synchronous=FULL, so it survives the process dying the moment after.
A label's key is (project, row, annotator): an annotator can only replace their own label, never another's.
Agreement is not computed here: the evaluation stage's functions take `labels_by_annotator()`'s mapping.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneforge.artifacts import DatasetDir, write_text_atomic
from tuneforge.config import DataConfig
from tuneforge.errors import TuneforgeError

MAX_LABELS = 9  # one key (1–9) each
MAX_ROWS = 100_000
EXPORT_MARKER = ".tuneforge-annotation"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ann_projects (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    labels TEXT NOT NULL,          -- JSON list; [] = free-text answers
    k INTEGER NOT NULL,            -- annotators per row
    source TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ann_items (
    project INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    text TEXT NOT NULL,
    record TEXT NOT NULL,          -- the source row as JSON
    PRIMARY KEY (project, idx)
);
CREATE TABLE IF NOT EXISTS ann_labels (
    project INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    annotator TEXT NOT NULL,
    value TEXT NOT NULL,           -- '' when skipped
    skipped INTEGER NOT NULL,
    saved TEXT NOT NULL,
    PRIMARY KEY (project, idx, annotator)
);
CREATE TABLE IF NOT EXISTS ann_resolved (
    project INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    value TEXT NOT NULL,
    by TEXT NOT NULL,
    saved TEXT NOT NULL,
    PRIMARY KEY (project, idx)
);
CREATE TABLE IF NOT EXISTS ann_prelabel_runs (  -- the run whose predictions a project shows: prelabels.py
    project INTEGER PRIMARY KEY,
    run TEXT NOT NULL,
    total INTEGER NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    started TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ann_prelabels (
    project INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    run TEXT NOT NULL,
    label TEXT NOT NULL,
    confidence REAL NOT NULL,
    PRIMARY KEY (project, idx)
);
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Project:
    id: int
    name: str
    labels: list[str]
    k: int
    source: str

    @property
    def free_text(self) -> bool:
        return not self.labels


def item_text(record: dict[str, Any]) -> str:
    """What an annotator reads: the text, the prompt, or the conversation so far (the column names the
    data stage's format detection knows, records.NAMES)."""
    from tuneforge.data.records import NAMES

    for key in NAMES["text"] + NAMES["instruction"]:
        if isinstance(record.get(key), str):
            return str(record[key])
    messages = record.get("messages")
    if isinstance(messages, list):
        return "\n".join(
            f"{m.get('role', '?')}: {m.get('content', '')}" for m in messages if isinstance(m, dict)
        )
    return json.dumps(record, ensure_ascii=False)


def rows_from_dataset(path: Path, split: str) -> list[dict[str, Any]]:
    """A prepared dataset's split, as its records."""
    ds = DatasetDir.open(path)
    if not ds.split_path(split).is_file():
        raise TuneforgeError(f"dataset {path} has no {split} split", where="split")
    return ds.records(split)[:MAX_ROWS]


def rows_from_file(path: Path, cfg: DataConfig | None = None) -> list[dict[str, Any]]:
    """A raw file through the data stage's own readers; rows a reader rejects are left out."""
    from tuneforge.data.sources import read_rows

    cfg = cfg or DataConfig(path=str(path), max_rows=MAX_ROWS)
    return [row.fields for row in read_rows(path, cfg) if row.problem is None and row.fields]


def parse_labels(text: str) -> list[str]:
    """'pos, neg , neutral' → ['pos', 'neg', 'neutral'] (empty: free-text answers)."""
    labels = [x.strip() for x in text.replace("\n", ",").split(",") if x.strip()]
    if len(labels) > MAX_LABELS:
        raise TuneforgeError(
            f"{len(labels)} labels given; at most {MAX_LABELS} (one key 1–9 each)", where="labels"
        )
    if len(set(labels)) != len(labels):
        raise TuneforgeError("a label is given twice", where="labels", fix="list each label once")
    return labels


class AnnotationStore:
    """The projects, rows and labels in the SQLite file at `path` (shared with the UI's other state)."""

    def __init__(self, path: Path) -> None:
        self.path = path
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

    # Projects -----------------------------------------------------------------------------------------
    def create(self, name: str, rows: list[dict[str, Any]], *, labels: list[str], k: int, source: str) -> int:
        name = name.strip()
        if not name:
            raise TuneforgeError("the project needs a name", where="name")
        if not 1 <= k <= 20:
            raise TuneforgeError(f"annotators per row must be 1–20, not {k}", where="k")
        if not rows:
            raise TuneforgeError(f"{source} has no rows to annotate", where="source")
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                cur = db.execute(
                    "INSERT INTO ann_projects (name, labels, k, source, created) VALUES (?,?,?,?,?)",
                    (name, json.dumps(labels), k, source, _now()),
                )
            except sqlite3.IntegrityError:
                db.execute("ROLLBACK")
                raise TuneforgeError(
                    f"a project named {name!r} exists already", where="name", fix="pick another name"
                ) from None
            pid = int(cur.lastrowid or 0)
            db.executemany(
                "INSERT INTO ann_items VALUES (?,?,?,?)",
                (
                    (pid, i, item_text(r), json.dumps(r, ensure_ascii=False, default=str))
                    for i, r in enumerate(rows)
                ),
            )
            db.execute("COMMIT")
        return pid

    def projects(self) -> list[Project]:
        with self.connect() as db:
            rows = db.execute("SELECT id, name, labels, k, source FROM ann_projects ORDER BY id").fetchall()
        return [Project(i, n, json.loads(lab), k, s) for i, n, lab, k, s in rows]

    def project(self, pid: int) -> Project | None:
        return next((p for p in self.projects() if p.id == pid), None)

    def size(self, pid: int) -> int:
        with self.connect() as db:
            return int(db.execute("SELECT count(*) FROM ann_items WHERE project=?", (pid,)).fetchone()[0])

    def item(self, pid: int, idx: int) -> tuple[str, dict[str, Any]] | None:
        with self.connect() as db:
            row = db.execute(
                "SELECT text, record FROM ann_items WHERE project=? AND idx=?", (pid, idx)
            ).fetchone()
        return (row[0], json.loads(row[1])) if row else None

    # Labelling ----------------------------------------------------------------------------------------
    def next_item(self, pid: int, annotator: str, k: int, *, uncertain_first: bool = False) -> int | None:
        """The first row this annotator has not labelled or skipped that still needs labels (fewer than k).

        `uncertain_first`: the one whose model pre-label is least confident first (active learning: the
        labels the model learns most from), rows without a pre-label after, each in row order.
        """
        order = (
            "(SELECT p.confidence FROM ann_prelabels p WHERE p.project=i.project AND p.idx=i.idx) "
            "ASC NULLS LAST, i.idx"
            if uncertain_first
            else "i.idx"
        )
        with self.connect() as db:
            row = db.execute(
                "SELECT i.idx FROM ann_items i WHERE i.project=? "
                "AND NOT EXISTS (SELECT 1 FROM ann_labels l WHERE l.project=i.project AND l.idx=i.idx "
                "  AND l.annotator=?) "
                "AND (SELECT count(*) FROM ann_labels l WHERE l.project=i.project AND l.idx=i.idx "
                "  AND l.skipped=0) < ? "
                f"ORDER BY {order} LIMIT 1",
                (pid, annotator, k),
            ).fetchone()
        return int(row[0]) if row else None

    def save(self, project: Project, idx: int, annotator: str, value: str, *, skipped: bool = False) -> None:
        """One annotator's label (or skip) of one row, replacing only that annotator's own earlier one."""
        annotator = annotator.strip()
        if not annotator or len(annotator) > 100:
            raise TuneforgeError("an annotator name (1–100 characters) is needed", where="annotator")
        if skipped:
            value = ""
        elif project.labels and value not in project.labels:
            raise TuneforgeError(
                f"{value!r} is not a label of {project.name}", fix="one of: " + ", ".join(project.labels)
            )
        elif not project.labels and not value.strip():
            raise TuneforgeError("the answer is empty", where="answer", fix="write an answer, or skip")
        if self.item(project.id, idx) is None:
            raise TuneforgeError(f"project {project.name} has no row {idx}")
        with self.connect() as db:
            # REPLACE deletes and inserts, so the new label gets the highest rowid: undo takes that one.
            db.execute(
                "INSERT OR REPLACE INTO ann_labels VALUES (?,?,?,?,?,?)",
                (project.id, idx, annotator, value, int(skipped), _now()),
            )

    def undo(self, pid: int, annotator: str) -> int | None:
        """Forget this annotator's latest label or skip; the row it was on (None when there was none)."""
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(
                "SELECT rowid, idx FROM ann_labels WHERE project=? AND annotator=? "
                "ORDER BY rowid DESC LIMIT 1",
                (pid, annotator.strip()),
            ).fetchone()
            if row:
                db.execute("DELETE FROM ann_labels WHERE rowid=?", (row[0],))
            db.execute("COMMIT")
        return int(row[1]) if row else None

    def labels(self, pid: int) -> dict[int, dict[str, str]]:
        """row → {annotator: label} (skips left out)."""
        out: dict[int, dict[str, str]] = {}
        with self.connect() as db:
            for idx, who, value in db.execute(
                "SELECT idx, annotator, value FROM ann_labels WHERE project=? AND skipped=0 ORDER BY idx",
                (pid,),
            ):
                out.setdefault(int(idx), {})[who] = value
        return out

    def labels_by_annotator(self, pid: int) -> dict[str, dict[str, str]]:
        """{annotator: {row: label}}: the shape evaluation.agreement.agreement takes."""
        out: dict[str, dict[str, str]] = {}
        for idx, by in self.labels(pid).items():
            for who, value in by.items():
                out.setdefault(who, {})[str(idx)] = value
        return out

    def progress(self, project: Project) -> dict[str, Any]:
        labels = self.labels(project.id)
        per: Counter[str] = Counter(who for by in labels.values() for who in by)
        return {
            "rows": self.size(project.id),
            "complete": sum(1 for by in labels.values() if len(by) >= project.k),
            "per_annotator": dict(sorted(per.items())),
        }

    # Disagreements ------------------------------------------------------------------------------------
    def resolved(self, pid: int) -> dict[int, str]:
        with self.connect() as db:
            return {
                int(i): v
                for i, v in db.execute("SELECT idx, value FROM ann_resolved WHERE project=?", (pid,))
            }

    def disagreements(self, pid: int) -> list[tuple[int, str, dict[str, str]]]:
        """Rows whose annotators gave different labels and nobody resolved yet: (row, text, {who: label})."""
        done = self.resolved(pid)
        out = []
        for idx, by in self.labels(pid).items():
            if len(set(by.values())) > 1 and idx not in done:
                got = self.item(pid, idx)
                out.append((idx, got[0] if got else "", by))
        return out

    def resolve(self, project: Project, idx: int, value: str, by: str) -> None:
        if project.labels and value not in project.labels:
            raise TuneforgeError(f"{value!r} is not a label of {project.name}")
        if self.item(project.id, idx) is None:
            raise TuneforgeError(f"project {project.name} has no row {idx}")
        with self.connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO ann_resolved VALUES (?,?,?,?,?)",
                (project.id, idx, value, by.strip()[:100], _now()),
            )

    def final(self, pid: int) -> dict[int, str]:
        """Each labelled row's label: the resolution, else the single most given label (a tie: left out)."""
        done = self.resolved(pid)
        out = {}
        for idx, by in self.labels(pid).items():
            if idx in done:
                out[idx] = done[idx]
                continue
            counts = Counter(by.values()).most_common()
            if len(counts) == 1 or counts[0][1] > counts[1][1]:
                out[idx] = counts[0][0]
        return dict(sorted(out.items()))

    # Exports ------------------------------------------------------------------------------------------
    def export_raw(self, project: Project, path: Path) -> tuple[Path, str, int]:
        """The finally labelled rows as JSONL `prepare` reads; the file, its data format and its row count.

        Labels → {"text", "label"} (classification); answers to a conversation → its messages plus the
        answer (chat); answers to a text → {"prompt", "response"} (instruction).
        """
        rows: list[dict[str, Any]] = []
        fmt = "classification"
        for idx, value in self.final(project.id).items():
            got = self.item(project.id, idx)
            assert got is not None  # a label's row exists: both are written by this class only
            text, record = got
            if project.labels:
                rows.append({"text": text, "label": value})
            elif isinstance(record.get("messages"), list):
                fmt = "chat"
                messages = [m for m in record["messages"] if isinstance(m, dict)]
                if messages and messages[-1].get("role") == "assistant":
                    messages = messages[:-1]  # the answer written here replaces the old one
                rows.append({"messages": [*messages, {"role": "assistant", "content": value}]})
            else:
                fmt = "instruction"
                rows.append({"prompt": text, "response": value})
        if not rows:
            raise TuneforgeError(
                f"project {project.name} has no labelled rows to export", fix="label some rows first"
            )
        marker = path.parent / EXPORT_MARKER  # an earlier export of ours may be replaced, a user's file not
        if path.exists() and not marker.is_file():
            raise TuneforgeError(
                f"{path} exists and was not written by an annotation export", fix="move it away, then export"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        return path, fmt, len(rows)

    def label_studio(self, project: Project) -> list[dict[str, Any]]:
        """The project as Label Studio's JSON export: a task per row, an annotation per annotator."""
        labels = self.labels(project.id)
        tasks = []
        for idx in range(self.size(project.id)):
            got = self.item(project.id, idx)
            assert got is not None
            annotations = [
                {
                    "completed_by": {"email": who},
                    "result": [_ls_result(project, value)],
                }
                for who, value in sorted(labels.get(idx, {}).items())
            ]
            tasks.append({"id": idx + 1, "data": {"text": got[0]}, "annotations": annotations})
        return tasks

    def import_label_studio(self, name: str, tasks: Any, *, k: int, source: str) -> int:
        """A Label Studio JSON export (choices or textarea results) as a new project with its labels."""
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise TuneforgeError(
                f"{source} is not a Label Studio export (a JSON list of tasks)",
                fix="export the project from Label Studio as JSON",
            )
        rows, found, labels = [], [], []
        for t in tasks:
            data = t.get("data") if isinstance(t.get("data"), dict) else {}
            rows.append(data if "text" in data else {"text": next(iter(data.values()), "")} if data else {})
            got = {}
            for a in t.get("annotations") or []:
                if not isinstance(a, dict) or a.get("was_cancelled"):
                    continue
                by = a.get("completed_by")
                who = by.get("email") or by.get("username") if isinstance(by, dict) else f"user {by}"
                for r in a.get("result") or []:
                    value = (r.get("value") or {}) if isinstance(r, dict) else {}
                    picked = (value.get("choices") or value.get("labels") or value.get("text") or [None])[0]
                    if picked is not None:
                        got[str(who)] = str(picked)
                        if r.get("type") != "textarea" and picked not in labels:
                            labels.append(str(picked))
            found.append(got)
        if len(labels) > MAX_LABELS:
            raise TuneforgeError(f"{source} uses {len(labels)} labels; at most {MAX_LABELS}")
        pid = self.create(name, rows, labels=labels, k=k, source=source)
        project = self.project(pid)
        assert project is not None
        for idx, got in enumerate(found):
            for who, value in got.items():
                if project.labels or value.strip():
                    self.save(project, idx, who, value)
        return pid


def _ls_result(project: Project, value: str) -> dict[str, Any]:
    if project.labels:
        return {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [value]}}
    return {"from_name": "answer", "to_name": "text", "type": "textarea", "value": {"text": [value]}}


def prepare_export(raw: Path, fmt: str, output_dir: Path) -> DatasetDir:
    """The exported raw file through the data stage's own `prepare` (the same as `tuneforge prepare`)."""
    from tuneforge.data.prepare import prepare_dataset

    cfg = DataConfig(path=str(raw), format=fmt, output_dir=str(output_dir))  # type: ignore[arg-type]
    return prepare_dataset(cfg)
