"""`tuneforge ui` in a real browser: Debian's Chromium, headless, driven by Playwright for Python.

Flows: a run's curve grows while metrics are appended (HTMX polling), two raters rate blind (one with the
keyboard, one with the mouse) until the results page shows human-eval's win rate, and an annotator labels 5
rows with the keyboard, the server is killed and restarted, the labels are there and export. Each flow saves
screenshots at desktop and phone width into $TUNEFORGE_UI_SCREENSHOTS (else a temporary folder) for a person
to look at. Skipped, with the reason, only where no Chromium or no Playwright is installed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.unit.ui.browsing import REASON, SIZES, serve
from tests.unit.ui.workspaces import fake_run, step

pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def test_a_training_runs_curve_grows_as_metrics_are_appended(tmp_path: Path, browser, shots: Path) -> None:
    from playwright.sync_api import expect

    ws = tmp_path / "ws"
    run = fake_run(
        ws / "runs" / "live", status="running", metrics=[step(1, 3.0), step(2, 2.6)], pid=os.getpid()
    )
    with serve(ws) as url:
        for name, size in SIZES.items():
            page = browser.new_page(viewport=size)
            page.goto(f"{url}/run?path=runs/live")
            curve = page.locator('polyline[data-name="train loss"]')
            assert curve.get_attribute("data-n") == ("2" if name == "desktop" else "8")
            assert page.locator(".banner b").inner_text() == "training"
            if name == "desktop":
                with open(run / "metrics.jsonl", "a") as f:
                    f.writelines(json.dumps(step(i, 3.0 / i)) + "\n" for i in range(3, 9))
                # polled every 2 s: the new points arrive without a reload
                expect(curve).to_have_attribute("data-n", "8", timeout=15000)
                assert "0.375" in page.locator("#curves figcaption").first.inner_text()
            page.screenshot(path=str(shots / f"run-live-{name}.png"), full_page=True)
            page.close()
        m = json.loads((run / "manifest.json").read_text()) | {"status": "completed"}
        (run / "manifest.json").write_text(json.dumps(m))
        page = browser.new_page()
        page.goto(f"{url}/run?path=runs/live")
        assert page.locator(".live").count() == 0 and page.locator(".banner b").inner_text() == "completed"
        page.close()


def test_two_raters_rate_blind_and_see_the_win_rate(real_workspace: Path, browser, shots: Path) -> None:
    from playwright.sync_api import expect

    from tuneforge.evaluation.report.render import num, with_ci

    run = real_workspace / "runs" / "chat"
    key = json.loads((run / "human-eval" / "key.json").read_text())["sheets"]
    n = len(key["rater-1"])
    with serve(real_workspace) as url:
        # rater-1 prefers the tuned answer every time, with the keyboard; rater-2 with the mouse, only on the
        # first two rows. Each in a browser context of their own (own cookies).
        for sheet, tuned_rows, size in (("rater-1", n, "desktop"), ("rater-2", 2, "phone")):
            context = browser.new_context(viewport=SIZES[size])
            page = context.new_page()
            page.goto(f"{url}/human/run?path=runs/chat")
            page.click(f"text=Rate {sheet}")
            page.fill("input[name=rater]", f"person {sheet}")
            for i in range(n):
                row_id = page.locator("input[name=row_id]").get_attribute("value")
                text = page.locator(".answers").inner_text().lower()
                assert "tuned" not in text and "base" not in text
                if i == 1:
                    page.screenshot(path=str(shots / f"rate-{size}.png"), full_page=True)
                tuned_side = "1" if key[sheet][row_id]["answer_1"] == "tuned" else "2"
                want = tuned_side if i < tuned_rows else ("2" if tuned_side == "1" else "1")
                if sheet == "rater-1":
                    page.locator(".prompt").click()  # out of the name field: keys typed there stay text
                    page.keyboard.press(want)
                else:
                    page.click(f"button[name=preference][value='{want}']")
                expect(page.locator("#progress")).to_have_text(f"{i + 1} / {n}")
            assert page.locator("h1").inner_text() == f"All {n} pairs of {sheet} are rated"
            context.close()
        page = browser.new_page(viewport=SIZES["desktop"])
        page.goto(f"{url}/human/run?path=runs/chat")
        page.click("text=Compute the results from the ratings so far")
        page.wait_for_selector("#results ~ .scroll table")
        human = json.loads((run / "eval" / "human.json").read_text())
        win = (n + 2) / (2 * n)
        assert human["overall"]["win"]["value"] == pytest.approx(win)
        shown = page.locator("#results ~ .scroll table").first.inner_text()
        assert f"win\t{with_ci(human['overall']['win']['value'], human['overall']['win'])}" in shown
        assert num(win) in shown
        page.screenshot(path=str(shots / "human-results-desktop.png"), full_page=True)
        page.set_viewport_size(SIZES["phone"])
        page.screenshot(path=str(shots / "human-results-phone.png"), full_page=True)
        page.close()


def test_search_and_paging_of_a_dataset_and_the_runs_filter(tmp_path: Path, browser, shots: Path) -> None:
    from playwright.sync_api import expect

    ws = tmp_path / "ws"
    ds = ws / "data" / "reviews"
    ds.mkdir(parents=True)
    rows = [
        {
            "text": f"review {i} " + ("<script>alert(1)</script> {{7*7}}" if i == 1234 else "fine"),
            "label": "x",
        }
        for i in range(3000)
    ]
    (ds / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = {"kind": "tuneforge.dataset", "format": "classification", "splits": {"train": 3000}}
    (ds / "manifest.json").write_text(json.dumps(manifest))
    fake_run(ws / "runs" / "alpha", manifest={"method": "lora"})
    fake_run(ws / "runs" / "beta", manifest={"method": "qlora"})
    with serve(ws) as url:
        page = browser.new_page(viewport=SIZES["desktop"])
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(f"{url}/dataset?path=data/reviews")
        expect(page.locator(".pager")).to_contain_text("rows 1–50 of 3000")
        page.click("text=next ›")
        expect(page.locator(".pager")).to_contain_text("rows 51–100 of 3000")
        page.fill("input[name=q]", "SCRIPT>")  # typed, no submit: HTMX asks as you type
        expect(page.locator(".pager")).to_contain_text("rows 1–1 of 1 matching")
        assert "<script>alert(1)</script> {{7*7}}" in page.locator("table.rows").inner_text()
        page.screenshot(path=str(shots / "dataset-search-desktop.png"), full_page=True)
        page.set_viewport_size(SIZES["phone"])
        page.screenshot(path=str(shots / "dataset-search-phone.png"), full_page=True)
        assert dialogs == []  # the row's script never ran
        page.goto(url + "/")
        page.fill("input[name=q]", "qlora")
        expect(page.locator("#runs tbody tr")).to_have_count(1)
        assert page.locator("#runs tbody tr a").inner_text() == "runs/beta"
        page.close()


def test_label_five_rows_with_the_keyboard_kill_restart_and_export(
    tmp_path: Path, browser, shots: Path
) -> None:
    from playwright.sync_api import expect

    ws = tmp_path / "ws"
    ds = ws / "data" / "reviews"
    ds.mkdir(parents=True)
    texts = [f"review {i}: " + ("a long line of text " * (i % 3 * 8) or "short") for i in range(12)]
    texts[2] = "<script>alert(1)</script> {{7*7}}"
    (ds / "train.jsonl").write_text("".join(json.dumps({"text": t, "label": "x"}) + "\n" for t in texts))
    manifest = {"kind": "tuneforge.dataset", "format": "classification", "splits": {"train": 12}}
    (ds / "manifest.json").write_text(json.dumps(manifest))
    with serve(ws, kill=True) as url:
        page = browser.new_page(viewport=SIZES["desktop"])
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(f"{url}/annotate")
        page.fill("form[action='/annotate/new'] input[name=name]", "sentiment")
        page.fill("input[name=labels]", "positive, negative, neutral")
        page.click("text=Create")
        page.fill("input[name=annotator]", "ann")
        page.click("text=Start labelling")
        # 1 / 2 / 3 label, s skips, u undoes the skip: 5 labels, each saved on its key press
        # (each key waits for the row it is meant for: a key applies to the row on screen when pressed)
        for key, row in (("1", 0), ("2", 1), ("s", 2), ("u", 3), ("3", 2), ("1", 3), ("2", 4)):
            expect(page.locator("h2")).to_contain_text(f"Row {row + 1} of 12")
            if row == 2 and key == "3":
                page.screenshot(path=str(shots / "annotate-desktop.png"), full_page=True)
                page.set_viewport_size(SIZES["phone"])
                page.screenshot(path=str(shots / "annotate-phone.png"), full_page=True)
                page.set_viewport_size(SIZES["desktop"])
            page.keyboard.press(key)
        expect(page.locator("h2")).to_contain_text("Row 6 of 12")
        assert dialogs == []
        page.close()
    # the server was killed (SIGKILL) right after the last key press; a new one finds every label
    with serve(ws) as url:
        page = browser.new_page(viewport=SIZES["desktop"])
        page.goto(f"{url}/annotate")
        page.click("text=sentiment")
        expect(page.locator("#complete")).to_have_text("5 / 12")
        page.click("text=Export and prepare as a dataset")
        # 5 rows are too few for `prepare` (it wants 10): the raw file is written, and the page says why
        expect(page.locator(".notice")).to_contain_text(
            "5 labelled rows written to annotations/1-sentiment/labelled.jsonl. Not prepared yet: "
            "only 5 usable examples after cleaning and deduplication (need at least 10); of 5 rows read, "
            "left out: none. Prepare it later with `tuneforge prepare CONFIG "
            "data.path=annotations/1-sentiment/labelled.jsonl data.format=classification`.",
            timeout=20000,
        )
        page.screenshot(path=str(shots / "annotate-project-desktop.png"), full_page=True)
        page.set_viewport_size(SIZES["phone"])
        page.screenshot(path=str(shots / "annotate-project-phone.png"), full_page=True)
        page.close()
    raw = ws / "annotations" / "1-sentiment" / "labelled.jsonl"
    got = [json.loads(line) for line in raw.read_text().splitlines()]
    assert [(g["text"], g["label"]) for g in got] == list(
        zip(texts[:5], ["positive", "negative", "neutral", "positive", "negative"], strict=True)
    )
    assert not (raw.parent / "dataset").exists()
