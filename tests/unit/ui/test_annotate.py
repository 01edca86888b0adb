"""The annotation pages through FastAPI's test client: a project from a prepared split, two annotators with
k=2, agreement and disagreements, exports, bad ids, paths outside the workspace, concurrent labels."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.tiny import write_jsonl
from tests.unit.ui.test_routes import csrf
from tuneforge.ui.app import create_app


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with a prepared classification dataset of 20 rows (one hostile) and a raw CSV."""
    from tuneforge.config import DataConfig
    from tuneforge.data.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("ann") / "ws"
    root.mkdir()
    rows = [{"text": f"review number {i}", "label": "pos" if i % 2 else "neg"} for i in range(19)]
    rows.append({"text": "<script>alert(1)</script> {{7*7}}", "label": "neg"})
    write_jsonl(root / "raw.jsonl", rows)
    prepare_dataset(
        DataConfig(
            path=str(root / "raw.jsonl"), output_dir=str(root / "data" / "reviews"), splits=(1.0, 0.0, 0.0)
        )
    )
    (root / "more.csv").write_text("review,stars\ngreat,5\nawful,1\n")
    return root


@pytest.fixture
def ws(prepared: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(prepared, tmp_path / "ws"))


def new_project(c: TestClient, token: str, **form: str) -> int:
    r = c.post(
        "/annotate/new",
        data={
            "csrf_token": token,
            "name": "reviews",
            "dataset": "data/reviews:train",
            "labels": "pos, neg",
            "k": "2",
        }
        | form,
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    return int(r.headers["location"].rsplit("=", 1)[1])


def label(c: TestClient, token: str, pid: int, who: str, idx: int, value: str, action: str = "label") -> None:
    r = c.post(
        "/annotate/label",
        data={
            "csrf_token": token,
            "id": str(pid),
            "annotator": who,
            "idx": str(idx),
            "value": value,
            "action": action,
        },
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text


def shown_row(c: TestClient, pid: int, who: str) -> int:
    page = c.get("/annotate/label", params={"id": pid, "annotator": who}).text
    return int(page.split('name="idx" value="')[1].split('"')[0])


def test_two_annotators_label_agree_resolve_and_export(ws: Path) -> None:
    c = TestClient(create_app(ws))
    token = csrf(c)
    pid = new_project(c, token)
    page = c.get("/annotate/label", params={"id": pid, "annotator": "ann"}).text
    assert 'data-key="1">pos <kbd>1</kbd>' in page and 'data-key="2">neg <kbd>2</kbd>' in page
    # 10 rows each, table [[4, 1], [1, 4]]: kappa 0.6
    a = ["pos"] * 5 + ["neg"] * 5
    b = ["pos"] * 4 + ["neg"] + ["pos"] + ["neg"] * 4
    for i in range(10):
        for who, said in (("ann", a), ("bob", b)):
            idx = shown_row(c, pid, who)
            assert idx == i
            label(c, token, pid, who, idx, said[i])
    # carol (k=2) is not given the rows ann and bob finished
    assert shown_row(c, pid, "carol") == 10
    page = c.get("/annotate/project", params={"id": pid}).text
    assert "<td>0.6</td>" in page and "<td>0.62</td>" in page and "2 disagreements to resolve" in page
    assert "10 / 20</span> rows complete" in page
    dis = c.get("/annotate/disagreements", params={"id": pid}).text
    assert '<section class="disagreement" id="row-4">' in dis and "<b>ann</b>: pos; <b>bob</b>: neg" in dis
    for idx in (4, 5):
        r = c.post(
            "/annotate/resolve",
            data={"csrf_token": token, "id": str(pid), "idx": str(idx), "value": "neg", "by": "lead"},
            follow_redirects=False,
        )
        assert r.status_code == 303
    assert "None left" in c.get("/annotate/disagreements", params={"id": pid}).text
    r = c.post("/annotate/export", data={"csrf_token": token, "id": str(pid)})
    assert r.status_code == 200
    assert (
        f"10 labelled rows written to annotations/{pid}-reviews/labelled.jsonl and prepared as the dataset"
        in r.text
    )
    raw = ws / "annotations" / f"{pid}-reviews" / "labelled.jsonl"
    got = [json.loads(x) for x in raw.read_text().splitlines()]
    assert [g["label"] for g in got] == ["pos"] * 4 + ["neg"] * 6
    manifest = json.loads((raw.parent / "dataset" / "manifest.json").read_text())
    assert manifest["kind"] == "tuneforge.dataset" and manifest["format"] == "classification"
    ls = c.get("/annotate/label-studio", params={"id": pid})
    assert ls.headers["content-disposition"] == 'attachment; filename="reviews-label-studio.json"'
    tasks = ls.json()
    assert len(tasks) == 20 and len(tasks[0]["annotations"]) == 2
    # and back in: the same labels under a new project
    (ws / "ls.json").write_text(ls.text)
    r = c.post(
        "/annotate/import",
        data={"csrf_token": token, "name": "again", "file": "ls.json", "k": "2"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    again = int(r.headers["location"].rsplit("=", 1)[1])
    assert "<td>0.6</td>" in c.get("/annotate/project", params={"id": again}).text


def test_skip_and_undo_by_keypress_fields(ws: Path) -> None:
    c = TestClient(create_app(ws))
    token = csrf(c)
    pid = new_project(c, token, k="1")
    label(c, token, pid, "ann", 0, "", action="skip")
    assert shown_row(c, pid, "ann") == 1
    label(c, token, pid, "ann", 1, "pos")
    r = c.post(
        "/annotate/label",
        data={"csrf_token": token, "id": str(pid), "annotator": "ann", "action": "undo"},
        follow_redirects=False,
    )
    assert r.headers["location"] == f"/annotate/label?id={pid}&annotator=ann&row=1"
    assert shown_row(c, pid, "ann") == 1


def test_bad_ids_labels_and_paths_get_a_page_that_says_so(ws: Path) -> None:
    c = TestClient(create_app(ws))
    token = csrf(c)
    pid = new_project(c, token)
    for params in ({"id": "99"}, {"id": "x"}, {"id": ""}):
        r = c.get("/annotate/project", params=params)
        assert r.status_code == 404 and "there is no annotation project" in r.text
    r = c.get("/annotate/label", params={"id": pid, "annotator": "ann", "row": "999"})
    assert r.status_code == 404 and "project reviews has no row &#39;999&#39;" in r.text
    r = c.post(
        "/annotate/label",
        data={"csrf_token": token, "id": str(pid), "annotator": "ann", "idx": "0", "value": "maybe"},
    )
    assert r.status_code == 400 and "&#39;maybe&#39; is not a label of reviews" in r.text
    r = c.post(
        "/annotate/label",
        data={"csrf_token": token, "id": str(pid), "annotator": "", "idx": "0", "value": "pos"},
    )
    assert r.status_code == 400 and "an annotator name (1–100 characters) is needed" in r.text
    r = c.post("/annotate/new", data={"csrf_token": token, "name": "x", "file": "../../etc/passwd"})
    assert r.status_code == 404
    r = c.post(
        "/annotate/new", data={"csrf_token": token, "name": "reviews", "dataset": "data/reviews:train"}
    )
    assert r.status_code == 400 and "a project named &#39;reviews&#39; exists already" in r.text
    r = c.post("/annotate/export", data={"id": str(pid)})
    assert r.status_code == 403 and "missing or wrong CSRF token" in r.text


def test_a_raw_file_and_a_hostile_row_show_as_text(ws: Path) -> None:
    c = TestClient(create_app(ws))
    token = csrf(c)
    pid = new_project(c, token, name="csv", file="more.csv", dataset="", labels="", k="1")
    page = c.get("/annotate/label", params={"id": pid, "annotator": "ann"}).text
    assert '<div class="text" id="row-text">great</div>' in page and '<textarea name="value"' in page
    hostile = new_project(c, token, name="h")
    rows = [t["data"]["text"] for t in c.get("/annotate/label-studio", params={"id": hostile}).json()]
    idx = rows.index("<script>alert(1)</script> {{7*7}}")
    page = c.get("/annotate/label", params={"id": hostile, "annotator": "a", "row": idx}).text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; {{7*7}}" in page and "<script>alert" not in page


def test_two_annotators_labelling_at_once_never_overwrite_each_other(ws: Path) -> None:
    app = create_app(ws)
    c = TestClient(app)
    token = csrf(c)
    pid = new_project(c, token)

    def work(who: str, value: str) -> None:
        mine = TestClient(app, cookies=c.cookies)
        for i in range(20):
            label(mine, token, pid, who, i, value)

    threads = [threading.Thread(target=work, args=a) for a in (("ann", "pos"), ("bob", "neg"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    labels = app.state.ui.annotations.labels(pid)
    assert labels == {i: {"ann": "pos", "bob": "neg"} for i in range(20)}
