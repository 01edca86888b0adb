"""In a real browser (Chromium through Playwright, as test_browser.py): upload a raw file, prepare it, start a
run on it from the New run page, watch its curve grow, stop it. Saves screenshots at desktop and phone width
into $TUNEFORGE_UI_SCREENSHOTS (else a temporary folder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tiny import write_jsonl
from tests.unit.ui.browsing import REASON, SIZES, serve

pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def _both(page, folder: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    for size in ("phone", "desktop"):
        page.set_viewport_size(SIZES[size])
        page.screenshot(path=str(folder / f"{name}-{size}.png"), full_page=True)


def test_upload_prepare_start_watch_and_stop_a_run(
    tmp_path: Path, tiny_llama: Path, browser, shots: Path
) -> None:
    from playwright.sync_api import expect

    colours = ["red", "blue", "green", "amber", "violet"]
    raw = write_jsonl(
        tmp_path / "my colours.jsonl",
        [{"prompt": f"say {c} {i}", "response": f"{c} {c} ok"} for i, c in enumerate(colours * 8)],
    )
    ws = tmp_path / "ws"
    ws.mkdir()
    with serve(ws) as url:
        page = browser.new_page(viewport=SIZES["desktop"])
        page.goto(url + "/datasets")
        page.set_input_files("input[type=file]", str(raw))
        page.click("button:text('Upload')")
        expect(page.locator("h1")).to_have_text("Prepare uploads/my-colours.jsonl")
        assert (ws / "uploads" / "my-colours.jsonl").read_bytes() == raw.read_bytes()
        page.select_option("select[name=format]", "chat")  # wrong on purpose: the data stage says why
        page.click("button:text('Prepare')")
        expect(page.locator("#prepare-error")).to_contain_text("only 0 usable examples after cleaning")
        page.select_option("select[name=format]", "instruction")
        _both(page, shots, "prepare")
        page.click("button:text('Prepare')")
        expect(page.locator("h1")).to_have_text("Dataset datasets/my-colours")
        page.click("text=Train a model on it")
        page.fill("input[name=name]", "colours")
        page.fill("input[name=model]", str(tiny_llama))
        page.fill("input[name=max_length]", "64")
        page.fill("input[name=batch_size]", "4")
        page.fill("input[name=max_steps]", "100000")
        page.fill("input[name=eval_every]", "0")
        page.fill("input[name=time_budget]", "3m")
        page.click("button:text('Estimate')")
        expect(page.locator("#estimate")).to_contain_text("parameters train; micro-batch 4 x")
        assert not (ws / "configs").exists()
        _both(page, shots, "new-run")
        page.click("#start", no_wait_after=True)  # the answer comes once the trainer made its folder
        expect(page.locator("h1")).to_have_text("Run runs/colours", timeout=60000)
        assert page.url == f"{url}/run?path=runs%2Fcolours"
        curve = page.locator('polyline[data-name="train loss"]')
        expect(curve).to_have_count(1, timeout=60000)  # the first metrics, polled in without a reload
        first = int(curve.get_attribute("data-n") or 0)
        page.wait_for_function(
            "n => +document.querySelector('polyline[data-name=\"train loss\"]').dataset.n > n",
            arg=first,
            timeout=60000,
        )
        page.reload()
        assert page.locator(".banner b").inner_text() == "training"
        _both(page, shots, "run-started")
        page.click("#stop")
        manifest = ws / "runs" / "colours" / "manifest.json"
        for _ in range(300):
            if json.loads(manifest.read_text()).get("status") == "interrupted":
                break
            page.wait_for_timeout(200)
        page.reload()
        assert page.locator(".banner b").inner_text() == "interrupted"
        assert page.locator("#stop").count() == 0
        assert page.locator("#resume").inner_text() == "Resume"  # what it does: test_launch.py
        page.close()
