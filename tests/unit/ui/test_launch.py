"""Upload a raw file, prepare it, start and stop a training run from the UI (routes, the test client)."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from tests.tiny import sentiment_rows
from tests.unit.ui.test_routes import csrf
from tuneforge.artifacts import DatasetDir, RunDir
from tuneforge.ui import upload
from tuneforge.ui.app import create_app


def reviews_csv(n: int = 60) -> bytes:
    rows = sentiment_rows(n)
    lines = ["text,label"] + [f'"{r["text"]}",{r["label"]}' for r in rows]
    return ("\n".join(lines) + "\n").encode()


def send(c: TestClient, name: str, body: bytes, then: str = "prepare", token: str | None = "") -> object:
    data = {"then": then} | ({"csrf_token": token or csrf(c)} if token is not None else {})
    return c.post(
        "/upload", data=data, files={"file": (name, io.BytesIO(body), "text/csv")}, follow_redirects=False
    )


def test_an_upload_lands_under_a_new_safe_name_and_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "uploads").mkdir()
    theirs = tmp_path / "uploads" / "reviews.csv"
    theirs.write_bytes(b"not tuneforge's file\n")
    c = TestClient(create_app(tmp_path))
    body = reviews_csv()
    r = send(c, "reviews.csv", body)
    assert r.status_code == 303 and r.headers["location"] == "/prepare?file=uploads%2Freviews-2.csv"
    assert (tmp_path / "uploads" / "reviews-2.csv").read_bytes() == body
    assert theirs.read_bytes() == b"not tuneforge's file\n"
    r = send(c, "../../Évil name.csv", b"a,b\n1,2\n")  # a folder in the name is dropped, odd letters too
    assert r.headers["location"] == "/prepare?file=uploads%2Fvil-name.csv"
    assert (tmp_path / "uploads" / "vil-name.csv").read_bytes() == b"a,b\n1,2\n"
    assert send(c, "..csv", b"x\n").headers["location"] == "/prepare?file=uploads%2Fupload.csv"
    r = send(c, "run.sh", b"rm -rf /\n")
    assert r.status_code == 400 and "&#39;run.sh&#39; is not a data file this page takes" in r.text
    assert sorted(p.name for p in (tmp_path / "uploads").iterdir()) == [
        "reviews-2.csv",
        "reviews.csv",
        "upload.csv",
        "vil-name.csv",
    ]


def test_an_upload_needs_the_csrf_token_and_fits_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = TestClient(create_app(tmp_path))
    for token in (None, "wrong"):
        r = send(c, "a.csv", b"a\n1\n", token=token)
        assert r.status_code == 403 and "missing or wrong CSRF token" in r.text
    monkeypatch.setattr(upload, "MAX_UPLOAD_BYTES", 100)
    r = send(c, "big.csv", b"x" * 200)  # under the Content-Length slack: counted while copied
    assert r.status_code == 400 and "the file is larger than 0 MiB" in r.text
    r = send(c, "huge.csv", b"x" * 70_000)  # refused from its Content-Length, before it is read
    assert r.status_code == 413
    assert send(c, "empty.csv", b"").status_code == 400
    assert not (tmp_path / "uploads").exists() or list((tmp_path / "uploads").iterdir()) == []


def test_prepare_an_upload_shows_the_data_stage_errors_then_makes_the_dataset(tmp_path: Path) -> None:
    c = TestClient(create_app(tmp_path))
    send(c, "reviews.csv", reviews_csv())
    r = c.get("/prepare", follow_redirects=False)  # no file named: to the page with the upload form
    assert r.status_code == 303 and r.headers["location"] == "/datasets"
    page = c.get("/prepare", params={"file": "uploads/reviews.csv"})
    assert page.status_code == 200 and "text,label" in page.text and 'value="datasets/reviews"' in page.text
    form = {"csrf_token": csrf(c), "file": "uploads/reviews.csv", "output": "datasets/reviews"}
    r = c.post("/prepare", data=form | {"format": "chat"})
    assert r.status_code == 400 and "data.messages_column" in r.text
    r = c.post("/prepare", data=form | {"format": "classification", "output": "../outside"})
    assert (
        r.status_code == 400 and "output: &#39;../outside&#39; is not a path inside the workspace" in r.text
    )
    r = c.post(
        "/prepare", data=form | {"format": "classification", "label_column": "label"}, follow_redirects=False
    )
    assert r.status_code == 303 and r.headers["location"] == "/dataset?path=datasets%2Freviews"
    manifest = DatasetDir(tmp_path / "datasets" / "reviews").manifest
    assert manifest["format"] == "classification" and sum(manifest["splits"].values()) == 60
    assert manifest["labels"] == ["negative", "neutral", "positive"]


def test_an_upload_for_annotation_fills_the_new_project_form(tmp_path: Path) -> None:
    c = TestClient(create_app(tmp_path))
    r = send(c, "to label.jsonl", b'{"text": "good"}\n{"text": "bad"}\n', then="annotate")
    assert r.headers["location"] == "/annotate?file=uploads%2Fto-label.jsonl"
    page = c.get(r.headers["location"]).text
    assert 'name="file" placeholder="raw/reviews.csv" value="uploads/to-label.jsonl"' in page
    r = c.post(
        "/annotate/new",
        data={"csrf_token": csrf(c), "name": "p", "file": "uploads/to-label.jsonl", "labels": "pos, neg"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    project = create_app(tmp_path).state.ui.annotations.projects()[0]
    assert project.source == "uploads/to-label.jsonl"


def wait_for(check, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.2)


def new_form(c: TestClient, model: Path, **kw: str) -> dict[str, str]:
    return {
        "csrf_token": csrf(c),
        "name": "ui-run",
        "dataset": "data/chat",
        "model": str(model),
        "method": "lora",
        "max_length": "64",
        "batch_size": "4",
    } | kw


def test_a_run_slow_to_start_says_where_to_watch_it_instead_of_a_missing_page(
    real_workspace: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneforge.ui import launch

    monkeypatch.setattr(launch, "START_WAIT_S", 0)  # the form stops waiting before any child is that quick
    c = TestClient(create_app(real_workspace))
    form = new_form(c, tiny_llama, name="slow", action="start", max_steps="2", eval_every="0")
    r = c.post("/new", data=form, follow_redirects=False)
    assert r.status_code == 202
    assert "The run is still starting after 0 s" in r.text and "its output is in configs/slow.log" in r.text
    assert 'id="start" disabled' in r.text  # the obvious second click is off in the page itself
    run = RunDir(real_workspace / "runs" / "slow")  # it went on in the background, and its page appears
    wait_for(lambda: RunDir.is_run(run.path) and run.manifest.get("status") == "completed")
    assert c.get("/run", params={"path": "runs/slow"}).status_code == 200
    r = c.post("/new", data=form, follow_redirects=False)  # its claim ended with it: the folder refuses now
    assert r.status_code == 400 and "there is already a run at runs/slow" in r.text


# A stand-in trainer that starts in no time: a `made*` run makes its folder at once; every run waits for
# ./go (30 s at most), then fails as a trainer that cannot load its model.
STAND_IN = """name=$(basename "$1" .yaml)
case $name in made*) mkdir -p "runs/$name" && : > "runs/$name/config.yaml";; esac
for i in $(seq 600); do [ -e go ] && break; sleep 0.05; done
echo "cannot load the model of $name"; exit 3
"""


def test_a_second_start_while_the_first_is_starting_is_refused_and_a_failed_start_frees_the_name(
    real_workspace: Path, tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneforge.ui import launch

    script = tmp_path / "trainer.sh"
    script.write_text(STAND_IN)
    monkeypatch.setattr(launch, "TRAIN_COMMAND", ["/bin/sh", str(script)])
    monkeypatch.setattr(launch, "START_WAIT_S", 0)
    c = TestClient(create_app(real_workspace))
    form = new_form(c, tiny_llama, name="early", action="start")
    try:
        assert c.post("/new", data=form, follow_redirects=False).status_code == 202
        # A double submit, a second tab, a curl: refused while the first child has made no folder
        r = c.post("/new", data=form, follow_redirects=False)
        assert r.status_code == 409, r.text
        assert "name: runs/early is still starting: a start from this UI " in r.text  # then "0 s ago" or so
        assert (
            " s ago has not made its run folder yet (its output: configs/early.log)\n"
            "  fix: wait until it appears under Runs (its log says what it is doing), or pick another name"
        ) in r.text
        assert sorted(p.name for p in (real_workspace / "configs").iterdir()) == ["early.log", "early.yaml"]

        # Once the folder exists the claim is over (the child still runs): the folder refuses a start
        made = new_form(c, tiny_llama, name="made", action="start")
        # 202 (still starting) or, when the stand-in made its folder before the first look, 303 to its page
        assert c.post("/new", data=made, follow_redirects=False).status_code in (202, 303)
        wait_for(lambda: (real_workspace / "runs" / "made" / "config.yaml").is_file(), timeout=30)
        r = c.post("/new", data=made, follow_redirects=False)
        assert r.status_code == 400 and "there is already a run at runs/made" in r.text

        # Resume: the same claim on the run's folder, until the new trainer holds the run
        manifest = real_workspace / "runs" / "chat" / "manifest.json"
        manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"status": "interrupted"}))
        resume = {"csrf_token": csrf(c), "path": "runs/chat"}
        assert c.post("/run/resume", data=resume, follow_redirects=False).status_code == 303
        r = c.post("/run/resume", data=resume, follow_redirects=False)
        assert r.status_code == 409 and "<h1>Still starting</h1>" in r.text, r.text
        assert "path: runs/chat is still starting: a start from this UI " in r.text
        assert "fix: wait until its page shows it training" in r.text
    finally:
        (real_workspace / "go").touch()
    # The child that died before making its folder freed the name: the retry starts (and says why it stopped)
    monkeypatch.setattr(launch, "START_WAIT_S", 30)
    wait_for(lambda: "cannot load" in (real_workspace / "configs" / "early.log").read_text(), timeout=30)
    answers = []  # the reaper sees the exit a moment after the log line: 409 until then

    def retried() -> bool:
        answers.append(c.post("/new", data=form, follow_redirects=False))
        return answers[-1].status_code != 409

    wait_for(retried, timeout=30)
    assert answers[-1].status_code == 400, answers[-1].text
    assert "stopped before the run started (exit 3):\ncannot load the model of early-2" in answers[-1].text
    assert not (real_workspace / "runs" / "early").exists()
    wait_for(lambda: "cannot load" in (real_workspace / "configs" / "chat.log").read_text(), timeout=30)
    assert (real_workspace / "configs" / "chat.log").read_text().count("cannot load") == 1  # one child


def test_new_run_estimates_refuses_what_the_config_refuses_and_starts_then_stops(
    real_workspace: Path, tiny_llama: Path
) -> None:
    c = TestClient(create_app(real_workspace))
    page = c.get("/new").text
    assert '<option value="builtin:smollm2-135m-instruct">' in page and "<option >data/chat</option>" in page
    r = c.post("/new", data=new_form(c, tiny_llama, action="estimate"))
    assert r.status_code == 200, r.text
    assert "parameters train; micro-batch 4 x" in r.text and "peak" in r.text
    assert (
        "defaults for causal LM, 29 examples: train.epochs=3" in r.text
    )  # the recipe's, as train fills them
    assert not (real_workspace / "configs").exists()  # an estimate writes nothing
    r = c.post("/new", data=new_form(c, tiny_llama, batch_size="0", action="start"))
    assert (
        r.status_code == 400
        and "config key train.batch_size: Input should be greater than or equal to 1" in r.text
    )
    r = c.post("/new", data=new_form(c, tiny_llama, method="nope", action="start"))
    assert r.status_code == 400 and "method.name" in r.text
    r = c.post("/new", data=new_form(c, tiny_llama, name="chat", action="start"))
    assert r.status_code == 400 and "there is already a run at runs/chat" in r.text
    assert not (real_workspace / "configs").exists()

    form = new_form(c, tiny_llama, action="start", max_steps="100000", eval_every="0", time_budget="5m")
    r = c.post("/new", data=form, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/run?path=runs%2Fui-run"
    written = yaml.safe_load((real_workspace / "configs" / "ui-run.yaml").read_text())
    assert written["train"] == {
        "output_dir": str(real_workspace / "runs" / "ui-run"),
        "time_budget": "5m",
        "max_steps": "100000",
        "batch_size": "4",
        "eval_every": "0",
    }
    run = RunDir(real_workspace / "runs" / "ui-run")
    wait_for(lambda: run.metrics_path.is_file() and run.metrics_path.read_text().count("\n") >= 2)
    page = c.get("/run", params={"path": "runs/ui-run"}).text
    assert "<b>training</b>" in page and 'id="stop"' in page
    r = c.post("/run/stop", data={"csrf_token": csrf(c), "path": "runs/ui-run"}, follow_redirects=False)
    assert r.status_code == 303
    wait_for(lambda: json.loads(run.manifest_path.read_text()).get("status") == "interrupted")
    log = (real_workspace / "configs" / "ui-run.log").read_text()
    assert "SIGTERM: finishing the current step and saving a checkpoint" in log
    r = c.post("/run/stop", data={"csrf_token": csrf(c), "path": "runs/ui-run"})
    assert r.status_code == 400 and "run runs/ui-run is not training now" in r.text

    # Resume: the trainer's own --resume, from the checkpoint the SIGTERM saved
    from tuneforge.train.watch import metrics_so_far

    stopped = json.loads(run.manifest_path.read_text())["step"]
    page = c.get("/run", params={"path": "runs/ui-run"}).text
    assert 'id="resume"' in page and 'id="stop"' not in page
    r = c.post("/run/resume", data={"csrf_token": csrf(c), "path": "runs/ui-run"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/run?path=runs%2Fui-run"
    assert "<b>training</b>" in c.get("/run", params={"path": "runs/ui-run"}).text
    wait_for(lambda: any(m.get("step", 0) > stopped for m in metrics_so_far(run)))
    log = (real_workspace / "configs" / "ui-run.log").read_text()
    assert f"resuming from {run.checkpoints}" in log
    r = c.post("/run/stop", data={"csrf_token": csrf(c), "path": "runs/ui-run"}, follow_redirects=False)
    wait_for(lambda: json.loads(run.manifest_path.read_text()).get("status") == "interrupted")
    r = c.post("/run/resume", data={"csrf_token": csrf(c), "path": "runs/chat"})
    assert r.status_code == 400 and (
        "run runs/chat is completed: only an interrupted run (stopped by a signal) or a crashed one" in r.text
    )
