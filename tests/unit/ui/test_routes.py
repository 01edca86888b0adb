"""Every route of `tuneforge ui` through FastAPI's test client: what a user sees, bad ids, paths that try to
leave the workspace, missing CSRF tokens, login, runs in every state, and human A/B rating end to end."""

from __future__ import annotations

import html
import json
import os
import re
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.unit.ui.workspaces import dead_pid, fake_run, step
from tuneforge.errors import TuneforgeError
from tuneforge.ui.app import LOCAL_HOSTS, create_app, serve_ui


def client(workspace: Path, **kw) -> TestClient:
    return TestClient(create_app(workspace, **kw))


def csrf(c: TestClient) -> str:
    """The form token a page hands out (and the cookie it set)."""
    page = c.get("/login").text
    return json.loads(html.unescape(re.search(r"hx-headers='([^']+)'", page).group(1)))["X-CSRF-Token"]


def all_routes(routes: list) -> list:
    """The app's routes, those of included routers too (FastAPI wraps those)."""
    out = []
    for r in routes:
        inner = getattr(r, "original_router", None)
        out += all_routes(inner.routes) if inner is not None else [r]
    return out


def states_workspace(root: Path) -> Path:
    fake_run(
        root / "a-done",
        metrics=[step(1, 2.0), step(2, 1.5)],
        manifest={"train_time_s": 30.0},
        evaluation={
            "split": "test",
            "n": 10,
            "tuned": {"accuracy": 0.8},
            "ci": {"tuned": {"accuracy": {"value": 0.8, "lo": 0.5, "hi": 1.0}}},
        },
    )
    fake_run(
        root / "b-live",
        status="running",
        metrics=[step(1, 3.0)],
        pid=os.getpid(),
        manifest={"method": "full"},
    )
    fake_run(
        root / "nested" / "c-crashed", status="running", metrics=[step(1, 3.0), step(2, 2.5)], pid=dead_pid()
    )
    fake_run(
        root / "d-failed", status="failed", manifest={"error": "CUDA out of memory", "task": "causal-lm"}
    )
    broken = fake_run(root / "e-broken")
    (broken / "manifest.json").write_text('{"kind": "tuneforge.run", "sta')  # cut short
    (root / "notes").mkdir()
    (root / "notes" / "manifest.json").write_text('{"kind": "something else"}')
    return root


def test_runs_list_shows_every_state_and_sorts_and_filters(tmp_path: Path) -> None:
    c = client(states_workspace(tmp_path))
    page = c.get("/").text
    names = re.findall(r'<a href="/run\?path=([^"]+)">', page)
    assert names == ["a-done", "b-live", "d-failed", "e-broken", "nested/c-crashed"]
    states = re.findall(r'<span class="state (\w+)"', page)
    assert states == ["completed", "training", "failed", "unreadable", "crashed"]
    assert '0.8 [0.5, 1] <span class="muted">accuracy (test)</span>' in page
    assert "30 s" in page  # a finished run's train_time_s; a crashed one's last logged time_s:
    assert re.search(r'c-crashed</a>.*?duration">2 s<', page, re.S)
    by_duration = re.findall(r'<a href="/run\?path=([^"]+)">', c.get("/?sort=duration&desc=1").text)
    assert by_duration == ["a-done", "nested/c-crashed", "b-live", "d-failed", "e-broken"]  # blanks last
    assert re.findall(r'path=([^"]+)">', c.get("/?q=FULL").text) == ["b-live"]
    assert re.findall(r'path=([^"]+)">', c.get("/?state=crashed").text) == ["nested/c-crashed"]
    assert c.get("/?sort=nonsense").status_code == 200


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("a-done", "finished training"),
        ("b-live", "training now"),
        ("nested/c-crashed", "ended without recording how"),
        ("d-failed", "stopped by an error: CUDA out of memory"),
        ("e-broken", "its manifest is damaged"),
    ],
)
def test_a_run_page_in_every_state_says_so_and_never_fails(tmp_path: Path, path: str, says: str) -> None:
    c = client(states_workspace(tmp_path))
    r = c.get("/run", params={"path": path})
    assert r.status_code == 200
    assert says in r.text


def test_live_curves_poll_while_training_and_stop_after(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "r", status="running", metrics=[step(1, 3.0), step(2, 2.0)], pid=os.getpid())
    c = client(tmp_path)
    page = c.get("/run", params={"path": "r"}).text
    assert 'hx-get="/run/curves?path=r" hx-trigger="every 2s"' in page
    r = c.get("/run/curves", params={"path": "r"})
    assert r.status_code == 200 and 'data-name="train loss" data-n="2"' in r.text
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps(step(3, 1.0)) + "\n")
        f.write('{"step": 4, "lo')  # being written right now: left out, not an error
    r = c.get("/run/curves", params={"path": "r"})
    assert 'data-name="train loss" data-n="3"' in r.text and "<b>1</b>" in r.text
    manifest = json.loads((run / "manifest.json").read_text()) | {"status": "completed"}
    (run / "manifest.json").write_text(json.dumps(manifest))
    r = c.get("/run/curves", params={"path": "r"})
    assert r.status_code == 286  # htmx stops polling on this status
    assert "hx-trigger" not in r.text


BAD_PATHS = [
    "",
    "nope",
    "../outside",
    "/etc",
    "a/../../outside",
    "..",
    "link-out",
    "%2e%2e/outside",
    "x\x00y",
]


@pytest.mark.parametrize("bad", BAD_PATHS)
@pytest.mark.parametrize(
    "route",
    ["/run", "/run/curves", "/run/report", "/dataset", "/dataset/report", "/human/run", "/human/rate"],
)
def test_paths_cannot_leave_the_workspace_or_name_nothing(tmp_path: Path, bad: str, route: str) -> None:
    outside = tmp_path / "outside"
    fake_run(outside)  # a real run, but not in the workspace
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "link-out").symlink_to(outside)
    r = client(ws).get(route, params={"path": bad, "sheet": "rater-1"})
    assert r.status_code == 404, r.text
    assert "Not found" in r.text


def test_unknown_split_sheet_and_row_are_404(real_workspace: Path) -> None:
    c = client(real_workspace)
    assert c.get("/dataset", params={"path": "data/chat", "split": "../manifest"}).status_code == 404
    for sheet in ("../key", "rater-9", "key"):
        assert c.get("/human/rate", params={"path": "runs/chat", "sheet": sheet}).status_code == 404
    r = c.get("/human/rate", params={"path": "runs/chat", "sheet": "rater-1", "row": "999"})
    assert r.status_code == 404 and "no row '999' in sheet rater-1" in html.unescape(r.text)
    assert (
        c.get("/run/report", params={"path": "runs/chat"})
        .headers["content-security-policy"]
        .startswith("sandbox")
    )


def test_a_hostile_dataset_row_shows_as_text(real_workspace: Path) -> None:
    c = client(real_workspace)
    r = c.get("/dataset", params={"path": "data/chat", "split": "test", "q": "SCRIPT"})
    assert "rows 1–1 of 1 matching “SCRIPT” (6 in all)" in r.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; {{7*7}}" in r.text
    assert "&lt;b&gt;bold&lt;/b&gt; {{7*7}}" in r.text
    assert "<script>alert" not in r.text and "49" not in r.text
    run_page = c.get("/run", params={"path": "runs/chat"}).text  # the examples table shows the prompt too
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in run_page and "<script>alert" not in run_page


def test_the_run_page_shows_the_evaluation_files(real_workspace: Path) -> None:
    from tuneforge.artifacts import RunDir
    from tuneforge.evaluation.report import eval_results
    from tuneforge.evaluation.report.evaluation import headline

    c = client(real_workspace)
    page = c.get("/run", params={"path": "runs/chat"}).text
    result = eval_results(RunDir(real_workspace / "runs" / "chat"))["test"]
    assert headline(result) in html.unescape(page)
    assert "Paired tests, base vs tuned on the same examples" in page
    assert 'href="/run/report?path=runs/chat"' in page
    assert 'data-name="train loss" data-n="3"' in page and 'data-name="validation loss"' in page
    assert "hx-trigger" not in page  # a finished run is not polled


def test_every_post_needs_the_csrf_token(real_workspace: Path) -> None:
    app = create_app(real_workspace)
    posts = sorted(r.path for r in all_routes(app.routes) if "POST" in (getattr(r, "methods", None) or ()))
    assert posts == [
        "/annotate/export",
        "/annotate/import",
        "/annotate/label",
        "/annotate/new",
        "/annotate/prelabel",
        "/annotate/resolve",
        "/human/import",
        "/human/rate",
        "/login",
        "/logout",
        "/new",
        "/playground",
        "/playground/rate",
        "/playground/stream",
        "/prepare",
        "/run/resume",
        "/run/stop",
        "/upload",
    ]
    c = TestClient(app)
    token = csrf(c)
    form = {"path": "runs/chat", "sheet": "rater-1", "row_id": "0", "preference": "1"}
    for path in posts:
        for sent in ({}, {"csrf_token": "wrong"}):
            r = c.post(path, data=form | sent, follow_redirects=False)
            assert r.status_code == 403 and "missing or wrong CSRF token" in r.text, path
    fresh = TestClient(app)  # the right token but no cookie (another site's form): refused too
    assert fresh.post("/human/rate", data=form | {"csrf_token": token}).status_code == 403
    r = c.post("/human/rate", data=form, headers={"X-CSRF-Token": token}, follow_redirects=False)
    assert r.status_code == 303


def test_two_raters_rate_blind_and_the_results_are_human_eval_imports(real_workspace: Path) -> None:
    run = real_workspace / "runs" / "chat"
    key = json.loads((run / "human-eval" / "key.json").read_text())["sheets"]
    c = client(real_workspace)
    token = csrf(c)
    # Rater 1 always picks the tuned answer, rater 2 always the base one: tuned wins exactly half.
    for sheet, pick in (("rater-1", "tuned"), ("rater-2", "base")):
        for row_id, side in key[sheet].items():
            page = c.get("/human/rate", params={"path": "runs/chat", "sheet": sheet}).text
            assert f'name="row_id" value="{row_id}"' in page
            assert "tuned" not in page.lower() and "base" not in re.sub(r"data-\w+", "", page).lower()
            pref = "1" if side["answer_1"] == pick else "2"
            r = c.post(
                "/human/rate",
                data={
                    "path": "runs/chat",
                    "sheet": sheet,
                    "row_id": row_id,
                    "preference": pref,
                    "rater": sheet,
                    "csrf_token": token,
                },
                follow_redirects=False,
            )
            assert r.status_code == 303
    done = c.get("/human/rate", params={"path": "runs/chat", "sheet": "rater-2"}).text
    assert f"All {len(key['rater-2'])} pairs of rater-2 are rated" in done
    # A restarted UI finds every rating (they live in the workspace's SQLite file).
    c2 = client(real_workspace)
    assert (
        f"{len(key['rater-1'])} / {len(key['rater-1'])}"
        in c2.get("/human/run", params={"path": "runs/chat"}).text
    )
    r = c2.post("/human/import", data={"path": "runs/chat", "csrf_token": csrf(c2)})
    assert r.status_code == 200
    human = json.loads((run / "eval" / "human.json").read_text())
    assert human["overall"]["win"]["value"] == 0.5 and human["overall"]["n"] == 2 * len(key["rater-1"])
    assert human["per_rater"]["rater-1"]["win"] == len(key["rater-1"])
    assert "win 0.5 [" not in r.text and ">0.5 [" in r.text  # the report's table, with its interval


def test_rating_outside_the_scale_or_row_is_refused(real_workspace: Path) -> None:
    c = client(real_workspace)
    token = csrf(c)
    for row_id, pref in (("0", "3"), ("999", "1")):
        r = c.post(
            "/human/rate",
            data={
                "path": "runs/chat",
                "sheet": "rater-1",
                "row_id": row_id,
                "preference": pref,
                "csrf_token": token,
            },
        )
        said = html.unescape(r.text)
        assert r.status_code == 400 and f"row '{row_id}' of sheet rater-1 cannot be rated '{pref}'" in said


def test_concurrent_ratings_all_land(tmp_path: Path) -> None:
    from tuneforge.ui.state import UiState

    state = UiState(tmp_path)

    def rate(sheet: str) -> None:
        for i in range(40):
            state.save_rating("export", "run", sheet, str(i), "tie", "", sheet)

    threads = [threading.Thread(target=rate, args=(f"rater-{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = UiState(tmp_path).ratings("export")
    assert len(got) == 160 and got[("rater-3", "39")]["rater"] == "rater-3"
    import sqlite3

    assert sqlite3.connect(tmp_path / "tuneforge-ui.sqlite3").execute("PRAGMA journal_mode").fetchone() == (
        "wal",
    )


def test_login_with_a_serving_key(tmp_path: Path) -> None:
    from tuneforge.serve.keys import KeyFile

    keys = tmp_path / "keys.json"
    plain = KeyFile(keys).create("alice")
    ws = tmp_path / "ws"
    ws.mkdir()
    c = client(ws, keys_file=keys)
    r = c.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert c.get("/static/ui.css").status_code == 200
    token = csrf(c)
    bad = c.post("/login", data={"key": "tf-wrong", "csrf_token": token}, follow_redirects=False)
    assert bad.status_code == 401 and "That key is unknown or revoked." in bad.text
    ok = c.post("/login", data={"key": plain, "csrf_token": token}, follow_redirects=False)
    assert ok.status_code == 303
    cookie = ok.headers["set-cookie"]
    assert "tf_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    page = c.get("/")
    assert page.status_code == 200 and "<span>alice</span>" in page.text
    KeyFile(keys).revoke("alice")  # the session stays; a new login with the revoked key does not
    assert (
        TestClient(c.app)
        .post("/login", data={"key": plain, "csrf_token": token}, cookies={"tf_csrf": token})
        .status_code
        == 401
    )
    c.post("/logout", data={"csrf_token": token})
    assert c.get("/", follow_redirects=False).status_code == 303


def test_bound_to_localhost_only_localhost_names_are_served(tmp_path: Path) -> None:
    c = TestClient(create_app(tmp_path, allowed_hosts=LOCAL_HOSTS), base_url="http://127.0.0.1:7860")
    assert c.get("/").status_code == 200
    assert c.get("/", headers={"host": "evil.example:7860"}).status_code == 400  # DNS rebinding


def test_binding_beyond_localhost_needs_keys(tmp_path: Path) -> None:
    with pytest.raises(TuneforgeError) as err:
        serve_ui(tmp_path, host="0.0.0.0", port=0, keys_file=None)
    assert (
        err.value.what == "binding 0.0.0.0 makes the UI reachable from other machines, which needs login keys"
    )
    assert err.value.fix.startswith("create one with `tuneforge keys create NAME --keys FILE`")


def test_every_page_of_a_real_workspace_answers(real_workspace: Path) -> None:
    app = create_app(real_workspace)
    pid = app.state.ui.annotations.create(
        "colours", [{"text": "red"}, {"text": "<b>{{7*7}}</b>"}], labels=["warm", "cold"], k=2, source="x"
    )
    app.state.ui.annotations.save(app.state.ui.annotations.project(pid), 1, "ann", "cold")
    gets = sorted(r.path for r in all_routes(app.routes) if "GET" in (getattr(r, "methods", None) or ()))
    pages = {
        "/": "runs/chat",
        "/datasets": "data/chat",
        "/dataset": "train 29, validation 6, test 6; 41 read, 0 rejected",
        "/dataset/report": "<h1",
        "/annotate": "colours",
        "/annotate/project": "0 / 2</span> rows complete",
        "/annotate/label": 'value="warm" data-key="1"',
        "/annotate/disagreements": "None left",
        "/annotate/label-studio": '"choices":["cold"]',
        "/human": "runs/chat",
        "/human/run": "rater-2",
        "/human/rate": "A is better",
        "/login": "No login is needed",
        "/run": "finished training",
        "/run/curves": "train loss",
        "/run/report": "Fine-tuning report: chat",
        "/run/monitor": "No monitor report yet",
        "/playground": '<textarea name="prompt"',
        "/new": "<option selected>data/chat</option>",
    }
    # pages that need more than one run, a monitored run or an upload: test_compare.py,
    # test_monitor_pages.py, test_launch.py
    elsewhere = ["/compare", "/prepare", "/run/monitor/report", "/run/monitor/window"]
    assert gets == sorted([*pages, *elsewhere])
    c = TestClient(app)
    for path, shows in pages.items():
        params = {"path": "data/chat" if "dataset" in path else "runs/chat", "sheet": "rater-1"}
        params |= {"id": str(pid), "annotator": "bob", "dataset": "data/chat"}
        r = c.get(path, params=params)
        assert r.status_code == (286 if path == "/run/curves" else 200), path
        assert shows in r.text, path
    empty = c.get("/dataset", params={"path": "data/chat", "split": "rejected"})
    assert empty.status_code == 200 and "This dataset has no rejected file." in empty.text


def test_files_of_another_shape_get_a_page_that_says_so(tmp_path: Path) -> None:
    run = fake_run(
        tmp_path / "odd",
        metrics=[step(1, 2.0), {"step": "two", "loss": "low"}, {"step": 3, "loss": None}, step(4, 1.0)],
        evaluation={"split": "test", "n": 3, "tuned": {"accuracy": "high"}, "ci": []},
    )
    (run / "eval" / "validation.json").write_text('{"split": "validation", "tuned": {}}')  # no n
    (run / "manifest.json").write_text(
        json.dumps(json.loads((run / "manifest.json").read_text()) | {"parameters": "many"})
    )
    r = client(tmp_path).get("/run", params={"path": "odd"})
    assert r.status_code == 200
    assert 'data-name="train loss" data-n="2"' in r.text  # the two well-formed records
    assert "This evaluation cannot be shown: KeyError: &#39;n&#39;" in r.text
    assert client(tmp_path).get("/").status_code == 200


def test_rejected_rows_show_their_reason_first(tmp_path: Path) -> None:
    ds = tmp_path / "data"
    ds.mkdir()
    (ds / "manifest.json").write_text(json.dumps({"kind": "tuneforge.dataset", "format": "classification"}))
    (ds / "train.jsonl").write_text(json.dumps({"text": "ok", "label": "a"}) + "\n")
    entry = {"where": "raw.csv:7", "problem": "too_short", "message": "2 characters", "row": {"text": "hi"}}
    (ds / "rejected.jsonl").write_text(json.dumps(entry) + "\n")
    r = client(tmp_path).get("/dataset", params={"path": "data", "split": "rejected"})
    headers = re.findall(r"<th>([^<]+)</th>", r.text)
    assert headers == ["line", "problem", "message", "where", "row"]
    assert '<div class="cell">too_short</div>' in r.text and "raw.csv:7" in r.text
