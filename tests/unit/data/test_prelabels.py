"""Pre-labels of an annotation project: kept per project for one run at a time, and the "uncertain first"
order (lowest model confidence first, rows without a pre-label last)."""

from __future__ import annotations

from pathlib import Path

from tuneforge.data import prelabels
from tuneforge.data.annotation import AnnotationStore


def _project(tmp_path: Path, n: int = 5) -> tuple[AnnotationStore, int]:
    store = AnnotationStore(tmp_path / "state.sqlite3")
    rows = [{"text": f"row {i}"} for i in range(n)]
    return store, store.create("p", rows, labels=["a", "b"], k=1, source="test")


def test_uncertain_first_orders_by_confidence_and_skips_what_the_annotator_did(tmp_path: Path) -> None:
    store, pid = _project(tmp_path)
    project = store.project(pid)
    assert project is not None
    assert store.next_item(pid, "ann", 1, uncertain_first=True) == 0  # no pre-labels yet: row order
    job = prelabels.start(store, pid, "runs/r")
    assert (job.total, job.done, job.finished) == (5, 0, False)
    assert prelabels.save(store, pid, "runs/r", [(0, "a", 0.9), (1, "b", 0.55), (2, "a", 0.7)])
    assert prelabels.job(store, pid) == prelabels.PreLabelJob("runs/r", 5, 3, "")
    assert prelabels.prelabel(store, pid, 1) == ("b", 0.55)
    assert prelabels.prelabel(store, pid, 4) is None
    order = []
    for _ in range(5):
        idx = store.next_item(pid, "ann", 1, uncertain_first=True)
        assert idx is not None
        order.append(idx)
        store.save(project, idx, "ann", "a")
    assert order == [1, 2, 0, 3, 4]  # 0.55, 0.7, 0.9, then the rows without a pre-label
    assert store.next_item(pid, "ann", 1, uncertain_first=True) is None
    assert prelabels.texts(store, pid)[:2] == [(0, "row 0"), (1, "row 1")]


def test_another_run_replaces_the_pre_labels_and_a_stale_job_writes_nothing(tmp_path: Path) -> None:
    store, pid = _project(tmp_path)
    prelabels.start(store, pid, "runs/old")
    assert prelabels.save(store, pid, "runs/old", [(0, "a", 0.6)])
    prelabels.start(store, pid, "runs/new")
    assert prelabels.prelabel(store, pid, 0) is None  # the old run's pre-labels are gone
    assert not prelabels.save(store, pid, "runs/old", [(1, "a", 0.1)])  # its job is stale now
    assert prelabels.job(store, pid) == prelabels.PreLabelJob("runs/new", 5, 0, "")
    prelabels.fail(store, pid, "runs/old", "ignored: not the project's run")
    prelabels.fail(store, pid, "runs/new", "CUDA out of memory")
    job = prelabels.job(store, pid)
    assert job is not None and job.error == "CUDA out of memory" and job.finished
    other_store, other = store, store.create("q", [{"text": "x"}], labels=["a"], k=1, source="t")
    assert prelabels.job(other_store, other) is None
