"""More flows in a real browser (Chromium through Playwright, as test_browser.py): compare runs picked
on the runs page, label with model pre-labels in "uncertain first" order, read a run's monitor report.
Each saves screenshots at desktop and phone width into $TUNEFORGE_UI_SCREENSHOTS (else a temporary folder)."""

from __future__ import annotations

import json
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
        expect(page.locator("#alerts")).to_contain_text("ALERT embedding_drift")
        expect(page.locator("h2", has_text="Drift tests")).to_be_visible()
        _both(page, shots, "monitor-window")
        page.click("text=report.html")
        expect(page.locator("h1")).to_contain_text("Monitor report")
        page.close()


def test_ask_a_run_in_the_playground(real_workspace: Path, browser, shots: Path) -> None:
    from playwright.sync_api import expect

    with serve(real_workspace) as url:
        page = browser.new_page(viewport=SIZES["desktop"])
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(f"{url}/run?path=runs/chat")
        page.click("text=Playground")
        page.fill("textarea[name=prompt]", "say red <script>alert(1)</script>")
        page.fill("input[name=max_new_tokens]", "8")
        page.click("text=Send")
        expect(page.locator("#answer")).to_be_visible(timeout=60000)
        assert page.locator("textarea[name=prompt]").input_value() == "say red <script>alert(1)</script>"
        expect(page.locator("#answer ~ p")).to_contain_text("tokens after a")
        # streamed into this page (server-sent events), not a new page from the form post
        expect(page.locator("#answer ~ p")).to_contain_text("(streamed)")
        assert page.url == f"{url}/playground?path=runs/chat"
        assert dialogs == []
        _both(page, shots, "playground")
        page.close()
