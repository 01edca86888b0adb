"""Model pre-labels in annotation: a finished classification run predicts each row (the evaluation stage's
probabilities, in a background job), the label page shows the label and confidence, and "uncertain first"
hands out the least confident row first."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.unit.ui.test_routes import client, csrf
from tests.unit.ui.workspaces import fake_run
from tuneforge.data import prelabels
from tuneforge.errors import TuneforgeError


def test_predict_labels_are_what_evaluate_predicts(classifier_ws: Path) -> None:
    from tuneforge.evaluation import evaluate_run
    from tuneforge.evaluation.prelabel import predict_labels

    run = classifier_ws / "runs" / "sentiment"
    evaluate_run(run, report=False)
    rows = [json.loads(x) for x in next((run / "eval").glob("*.predictions.jsonl")).read_text().splitlines()]
    chunks: list[tuple[int, int]] = []
    got = predict_labels(run, [r["input"] for r in rows], on_chunk=lambda i, c: chunks.append((i, len(c))))
    assert chunks == [(0, 8)]
    for g, r in zip(got, rows, strict=True):
        probs = r["probabilities"]["tuned"]
        assert g.label == r["tuned"] == max(probs, key=probs.get)
        assert g.confidence == pytest.approx(max(probs.values()), abs=1e-6)
        assert g.probabilities == pytest.approx(probs, abs=1e-6)


def test_only_a_finished_classification_run_can_pre_label(tmp_path: Path) -> None:
    from tuneforge.artifacts import RunDir
    from tuneforge.evaluation.prelabel import classification_labels

    chat = fake_run(tmp_path / "chat", manifest={"task": "causal-lm", "labels": []})
    with pytest.raises(TuneforgeError) as err:
        classification_labels(RunDir(chat))
    assert err.value.what == f"run {chat} is not a classification run (it has no labels to predict)"
    live = fake_run(tmp_path / "live", status="running", manifest={"labels": ["a", "b"]})
    with pytest.raises(TuneforgeError) as err:
        classification_labels(RunDir(live))
    assert err.value.what == f"run {live} has not finished training (status: running)"
    done = fake_run(tmp_path / "done", manifest={"labels": ["a", "b"]})
    assert classification_labels(RunDir(done)) == ["a", "b"]


def _wait(store, pid: int) -> prelabels.PreLabelJob:  # type: ignore[no-untyped-def]
    for _ in range(600):
        job = prelabels.job(store, pid)
        if job is not None and job.finished:
            return job
        time.sleep(0.1)
    raise AssertionError(f"pre-labelling did not finish: {prelabels.job(store, pid)}")


def test_a_project_with_pre_labels_shows_them_and_hands_out_uncertain_rows_first(classifier_ws: Path) -> None:
    from tests.tiny import sentiment_rows
    from tuneforge.evaluation.prelabel import predict_labels

    c = client(classifier_ws)
    token = csrf(c)
    page = c.get("/annotate").text
    assert re.findall(r'<option value="(runs/[^"]+)">', page) == ["runs/sentiment"]
    texts = [r["text"] for r in sentiment_rows(12, seed=5)]
    (classifier_ws / "new.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    form = {"csrf_token": token, "name": "s", "file": "new.jsonl", "k": "1"}
    wrong = c.post("/annotate/new", data=form | {"labels": "good, bad", "prelabel_run": "runs/sentiment"})
    assert wrong.status_code == 400
    assert (
        "run runs/sentiment predicts negative, neutral, positive, and the project has no label" in wrong.text
    )
    assert c.get("/annotate").text.count("/annotate/project?id=") == 0  # refused before it was made
    made = c.post(
        "/annotate/new",
        data=form | {"labels": "negative, neutral, positive", "prelabel_run": "runs/sentiment"},
        follow_redirects=False,
    )
    assert made.status_code == 303 and made.headers["location"] == "/annotate/project?id=1"
    store = c.app.state.ui.annotations  # type: ignore[attr-defined]
    assert _wait(store, 1) == prelabels.PreLabelJob("runs/sentiment", 12, 12, "")
    want = predict_labels(classifier_ws / "runs" / "sentiment", texts)
    project = c.get("/annotate/project?id=1").text
    assert '<span id="prelabelled">12 / 12</span>' in project
    assert '<option value="uncertain">' in project
    first = min(range(12), key=lambda i: (want[i].confidence, i))
    label = c.get("/annotate/label?id=1&annotator=ann&order=uncertain").text
    assert f"<h2>Row {first + 1} of 12" in label  # counted from 1, as people count
    assert f'<b id="prelabel">{want[first].label}</b>' in label
    assert f'<b id="confidence">{want[first].confidence:.2f}</b>' in label
    assert '<input type="hidden" name="order" value="uncertain">' in label
    saved = c.post(
        "/annotate/label",
        data={
            "csrf_token": token,
            "id": "1",
            "annotator": "ann",
            "idx": str(first),
            "value": "neutral",
            "order": "uncertain",
        },
        follow_redirects=False,
    )
    assert saved.headers["location"] == "/annotate/label?id=1&annotator=ann&order=uncertain"
    second = sorted(range(12), key=lambda i: (want[i].confidence, i))[1]
    assert f"<h2>Row {second + 1} of 12" in c.get(saved.headers["location"]).text
    assert "<h2>Row 1 of 12" in c.get("/annotate/label?id=1&annotator=other").text  # row order without it


def test_pre_labelling_refuses_free_text_projects_and_needs_csrf(classifier_ws: Path) -> None:
    c = client(classifier_ws)
    token = csrf(c)
    (classifier_ws / "new.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
    c.post("/annotate/new", data={"csrf_token": token, "name": "free", "file": "new.jsonl", "labels": ""})
    no_token = c.post("/annotate/prelabel", data={"id": "1", "run": "runs/sentiment"})
    assert no_token.status_code == 403
    free = c.post("/annotate/prelabel", data={"csrf_token": token, "id": "1", "run": "runs/sentiment"})
    assert free.status_code == 400
    assert "a project of free-text answers has nothing to pre-label" in free.text
    bad = c.post("/annotate/prelabel", data={"csrf_token": token, "id": "1", "run": "../../etc"})
    assert bad.status_code in (400, 404)
