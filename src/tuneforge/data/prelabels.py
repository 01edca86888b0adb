"""Model pre-labels of an annotation project: which run predicts its rows, how far that got, and each row's
predicted label and confidence, kept in the annotation SQLite file next to the labels.

The predictions themselves are the evaluation stage's (`evaluation.prelabel`, a later stage): whoever runs
that job (the UI, in a background thread) hands each chunk here. Writes check that the project still shows
the same run, so a job for a run that was replaced meanwhile writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from tuneforge.data.annotation import AnnotationStore


@dataclass(frozen=True)
class PreLabelJob:
    run: str  # as the caller named it (the UI: relative to its workspace)
    total: int
    done: int
    error: str

    @property
    def finished(self) -> bool:
        return bool(self.error) or self.done >= self.total


def start(store: AnnotationStore, pid: int, run: str) -> PreLabelJob:
    """Make `run` the project's pre-labeller: its earlier pre-labels (of any run) are dropped."""
    with store.connect() as db:
        db.execute("BEGIN IMMEDIATE")
        total = int(db.execute("SELECT count(*) FROM ann_items WHERE project=?", (pid,)).fetchone()[0])
        db.execute("DELETE FROM ann_prelabels WHERE project=?", (pid,))
        db.execute(
            "INSERT OR REPLACE INTO ann_prelabel_runs VALUES (?,?,?,?,?)",
            (pid, run, total, "", datetime.now(UTC).isoformat(timespec="seconds")),
        )
        db.execute("COMMIT")
    return PreLabelJob(run, total, 0, "")


def job(store: AnnotationStore, pid: int) -> PreLabelJob | None:
    """The project's pre-labelling run and its progress; None when it has none."""
    with store.connect() as db:
        row = db.execute(
            "SELECT run, total, error, (SELECT count(*) FROM ann_prelabels p WHERE p.project=r.project "
            "AND p.run=r.run) FROM ann_prelabel_runs r WHERE project=?",
            (pid,),
        ).fetchone()
    return PreLabelJob(row[0], int(row[1]), int(row[3]), row[2]) if row else None


def save(store: AnnotationStore, pid: int, run: str, rows: Iterable[tuple[int, str, float]]) -> bool:
    """(row, label, confidence) of `run`; False (nothing written) when the project moved to another run."""
    with store.connect() as db:
        db.execute("BEGIN IMMEDIATE")
        current = db.execute("SELECT run FROM ann_prelabel_runs WHERE project=?", (pid,)).fetchone()
        if current is None or current[0] != run:
            db.execute("ROLLBACK")
            return False
        db.executemany(
            "INSERT OR REPLACE INTO ann_prelabels VALUES (?,?,?,?,?)",
            ((pid, idx, run, label, float(conf)) for idx, label, conf in rows),
        )
        db.execute("COMMIT")
    return True


def fail(store: AnnotationStore, pid: int, run: str, error: str) -> None:
    """Record why the job for `run` stopped (shown on the project page)."""
    with store.connect() as db:
        db.execute("UPDATE ann_prelabel_runs SET error=? WHERE project=? AND run=?", (error[:2000], pid, run))


def prelabel(store: AnnotationStore, pid: int, idx: int) -> tuple[str, float] | None:
    """One row's (label, confidence) from the project's current run."""
    with store.connect() as db:
        row = db.execute(
            "SELECT p.label, p.confidence FROM ann_prelabels p JOIN ann_prelabel_runs r "
            "ON r.project=p.project AND r.run=p.run WHERE p.project=? AND p.idx=?",
            (pid, idx),
        ).fetchone()
    return (row[0], float(row[1])) if row else None


def texts(store: AnnotationStore, pid: int) -> list[tuple[int, str]]:
    """(row, the text an annotator reads) of every row: what the model pre-labels."""
    with store.connect() as db:
        return [
            (int(i), t)
            for i, t in db.execute("SELECT idx, text FROM ann_items WHERE project=? ORDER BY idx", (pid,))
        ]
