"""More flows in a real browser (Chromium through Playwright, as test_browser.py): compare runs picked
on the runs page, label with model pre-labels in "uncertain first" order, read a run's monitor report.
Each saves screenshots at desktop and phone width into $TUNEFORGE_UI_SCREENSHOTS (else a temporary folder)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.unit.ui.browsing import REASON, SIZES, serve
from tests.unit.ui.test_compare import workspace as compare_workspace
from tests.unit.ui.test_monitor_pages import WINDOW

pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def _both(page, folder: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    page.set_viewport_size(SIZES["desktop"])
    page.screenshot(path=str(folder / f"{name}-desktop.png"), full_page=True)
    page.set_viewport_size(SIZES["phone"])
    page.screenshot(path=str(folder / f"{name}-phone.png"), full_page=True)
    page.set_viewport_size(SIZES["desktop"])


def test_pick_two_runs_and_compare_them(tmp_path: Path, browser, shots: Path) -> None:
    from playwright.sync_api import expect

    ws = compare_workspace(tmp_path / "ws")
    with serve(ws) as url:
        page = browser.new_page(viewport=SIZES["desktop"])
        page.goto(url + "/")
        page.check("input[name=run][value='runs/a']")
        page.check("input[name=run][value='runs/b']")
        _both(page, shots, "runs-picked")
        page.click("text=Compare selected")
        expect(page.locator("h1")).to_have_text("Compare 2 runs")
        assert page.url == f"{url}/compare?run=runs%2Fa&run=runs%2Fb"
        curves = page.locator("figure.chart").first.locator("polyline")
        assert [curves.nth(i).get_attribute("data-name") for i in range(curves.count())] == [
            "runs/a",
            "runs/b",
        ]
        assert page.locator("#metrics tr.headline").inner_text().split("\t") == [
            "accuracy (headline)",
            "0.8 [0.6, 0.95]",
            "0.7 [0.5, 0.85]",
        ]
        assert page.locator("#config-diff tbody tr").count() == 2  # method.r and train.seed
        _both(page, shots, "compare")
        page.close()


def test_label_uncertain_rows_first_with_the_models_pre_labels(
    classifier_ws: Path, browser, shots: Path
) -> None:
    from playwright.sync_api import expect

    from tests.tiny import sentiment_rows

    texts = [r["text"] for r in sentiment_rows(12, seed=5)]
    (classifier_ws / "new.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    with serve(classifier_ws) as url:
        page = browser.new_page(viewport=SIZES["desktop"])
        page.goto(f"{url}/annotate")
        page.fill("form[action='/annotate/new'] input[name=name]", "sentiment")
        page.fill("form[action='/annotate/new'] input[name=file]", "new.jsonl")
        page.fill("input[name=labels]", "negative, neutral, positive")
        page.select_option("select[name=prelabel_run]", "runs/sentiment")
        page.click("text=Create")
        # the job runs in the background; the project page polls until every row is predicted
        expect(page.locator("#prelabelled")).to_have_text("12 / 12", timeout=60000)
        expect(page.locator("#prelabels .live")).to_have_count(0)
        _both(page, shots, "prelabel-project")
        page.fill("input[name=annotator]", "ann")
        page.select_option("select[name=order]", "uncertain")
        page.click("text=Start labelling")
        seen = []
        for _ in range(3):
            expect(page.locator("#confidence")).to_be_visible()
            seen.append(float(page.locator("#confidence").inner_text()))
            label = page.locator("#prelabel").inner_text()
            assert page.locator("button.suggested").inner_text().startswith(label)
            if len(seen) == 2:
                _both(page, shots, "prelabel-label")
            row = page.locator("h2").inner_text()
            page.locator(".text").click()
            page.keyboard.press("1")
            expect(page.locator("h2")).not_to_have_text(row)
        assert seen == sorted(seen)  # least confident first
        page.close()


def test_read_a_runs_monitor_report(monitored: Path, browser, shots: Path) -> None:
    from playwright.sync_api import expect

    with serve(monitored) as url:
        page = browser.new_page(viewport=SIZES["desktop"])
        page.goto(f"{url}/run?path=run")
        page.click("text=Monitor reports")
        expect(page.locator("#windows")).to_contain_text("1 alert embedding_drift")
        _both(page, shots, "monitor-list")
        page.click(f"text={WINDOW}")
        expect(page.locator("#alerts")).to_contain_text("ALERT prompt embeddings drifted [embedding_drift]")
        expect(page.locator("h2", has_text="Drift tests")).to_be_visible()
        _both(page, shots, "monitor-window")
        page.click("text=report.html")
        expect(page.locator("h1")).to_contain_text("Monitor report")
        page.close()


def test_a_long_row_label_of_the_monitor_report_wraps_inside_its_cell(
    tmp_path: Path, browser, shots: Path
) -> None:
    """ "accuracy on corrected labels (...)" ran past its cell into the value beside it (report.html)."""
    from tuneforge.evaluation.report.render import to_html
    from tuneforge.monitor.report import service_blocks

    service = {
        "error_rate": 0.0,
        "statuses": {"200": 4},
        "feedback": 4,
        "mean_rating": 2.5,
        "accuracy_on_corrected_labels": 0.75,
        "rated_labels": 4,
        "per_day": [],
        "latency_ms": {},
        "ttft_ms": {"n": 0},
    }
    report = tmp_path / "report.html"
    report.write_text(to_html("Monitor report", [("Quality and service", service_blocks(service))]))
    page = browser.new_page(viewport=SIZES["desktop"])
    page.goto(report.as_uri())
    for size in ("desktop", "phone"):
        page.set_viewport_size(SIZES[size])
        page.screenshot(path=str(shots / f"monitor-report-labels-{size}.png"), full_page=True)
        cells = page.eval_on_selector_all(
            "tbody th", "ths => ths.map(th => [th.textContent, th.scrollWidth, th.clientWidth])"
        )
        assert cells[-1][0].startswith("accuracy on corrected labels")
        assert [c for c in cells if c[1] > c[2]] == [], size
    page.close()


def test_ask_a_run_and_its_base_side_by_side_and_rate_the_answers(
    real_workspace: Path, browser, shots: Path
) -> None:
    from playwright.sync_api import expect

    from tuneforge.serve.store import database_url, read_table

    with serve(real_workspace) as url:
        page = browser.new_page(viewport=SIZES["desktop"])
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(f"{url}/run?path=runs/chat")
        page.click("text=Playground")
        page.fill("textarea[name=prompt]", "say red <script>alert(1)</script>")
        page.fill("input[name=max_new_tokens]", "8")
        page.select_option("select[name=other]", "base:runs/chat")
        page.click("text=Send")
        sides = page.locator("#answers section.answer")
        expect(sides).to_have_count(2)
        # streamed into this page (server-sent events), both sides, not a new page from the form post
        for i in range(2):
            expect(sides.nth(i).locator(".answer-info")).to_contain_text("(streamed)", timeout=60000)
        assert page.url == f"{url}/playground?path=runs/chat"
        assert page.locator("textarea[name=prompt]").input_value() == "say red <script>alert(1)</script>"
        assert sides.nth(0).locator("h3").inner_text() == "runs/chat"
        assert sides.nth(1).locator("h3").inner_text().startswith("base model ")
        ids = [sides.nth(i).locator("input[name=request_id]").input_value() for i in range(2)]
        sides.nth(0).locator("button[value=good]").click()
        expect(sides.nth(0).locator(".rated")).to_have_text("saved: good")
        sides.nth(1).locator("summary").click()
        sides.nth(1).locator("textarea[name=correction]").fill("red red ok")
        sides.nth(1).locator("button[value=bad]").click()
        expect(sides.nth(1).locator(".rated")).to_have_text("saved: bad, with the correction")
        assert dialogs == []
        _both(page, shots, "playground")
        page.close()
        # the serving stage's feedback table in the UI's SQLite file (its writer thread writes in a moment)
        log = database_url(str(real_workspace / "tuneforge-ui.sqlite3"))
        for _ in range(100):
            rows = read_table(log, "feedback")
            if len(rows) == 2:
                break
            time.sleep(0.1)
        got = sorted((r["request_id"], r["key_name"], r["rating"], r["correction"]) for r in rows)
        assert got == sorted([(ids[0], "ui:local", 1, None), (ids[1], "ui:local", -1, '"red red ok"')])
        asked = {r["id"]: (r["model"], r["status"], r["key_name"]) for r in read_table(log, "requests")}
        assert asked[ids[0]] == ("chat", 200, "ui:local") and asked[ids[1]][1:] == (200, "ui:local")
