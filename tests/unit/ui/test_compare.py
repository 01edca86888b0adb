"""The compare page: 2–4 runs' curves overlaid, the config keys that differ, and their metrics with CIs."""

from __future__ import annotations

import re
from pathlib import Path

from tests.unit.ui.test_routes import client
from tests.unit.ui.workspaces import fake_run, step
from tuneforge.ui.compare import differing_keys


def _evaluation(acc: float, lo: float, hi: float) -> dict:
    return {
        "split": "test",
        "n": 20,
        "tuned": {"accuracy": acc, "macro_f1": acc - 0.1},
        "ci": {"tuned": {"accuracy": {"value": acc, "lo": lo, "hi": hi}}},
    }


def workspace(root: Path) -> Path:
    a = fake_run(
        root / "runs" / "a",
        metrics=[
            step(1, 2.0),
            step(2, 1.5),
            {"step": 2, "split": "validation", "loss": 1.7, "accuracy": 0.6},
        ],
        evaluation=_evaluation(0.8, 0.6, 0.95),
    )
    (a / "config.yaml").write_text(
        "model: {name: tiny}\nmethod: {name: lora, r: 8}\ntrain: {learning_rate: 0.001}\n"
    )
    b = fake_run(
        root / "runs" / "b",
        metrics=[step(1, 2.2), step(2, 1.9), step(3, 1.4)],
        evaluation=_evaluation(0.7, 0.5, 0.85),
    )
    (b / "config.yaml").write_text(
        "model: {name: tiny}\nmethod: {name: lora, r: 16}\ntrain: {learning_rate: 0.001, seed: 3}\n"
    )
    fake_run(root / "runs" / "c")  # not evaluated, no metrics
    return root


def test_differing_keys_lists_only_what_differs_with_every_runs_value() -> None:
    a = {"model": {"name": "tiny"}, "method": {"name": "lora", "r": 8}, "train": {"lr": 0.001}}
    b = {"model": {"name": "tiny"}, "method": {"name": "lora", "r": 16}, "train": {"lr": 0.001, "seed": 3}}
    c = {"model": {"name": "other"}, "method": {"name": "lora", "r": 8}, "train": {"lr": 0.001}}
    assert differing_keys([a, b, c]) == [
        ("method.r", ["8", "16", "8"]),
        ("model.name", ["tiny", "tiny", "other"]),
        ("train.seed", ["(not set)", "3", "(not set)"]),
    ]
    assert differing_keys([a, None]) == []  # nothing to compare a missing config.yaml with
    assert differing_keys([a, {}]) == [
        ("method.name", ["lora", "(not set)"]),
        ("method.r", ["8", "(not set)"]),
        ("model.name", ["tiny", "(not set)"]),
        ("train.lr", ["0.001", "(not set)"]),
    ]
    assert differing_keys([a, a]) == []
    assert differing_keys([{"x": [1, 2]}, {"x": [1, 3]}]) == [("x", ["[1, 2]", "[1, 3]"])]


def test_compare_page_overlays_curves_diffs_configs_and_tables_metrics(tmp_path: Path) -> None:
    c = client(workspace(tmp_path))
    runs = c.get("/").text
    assert re.findall(r'name="run" value="([^"]+)"', runs) == ["runs/a", "runs/b", "runs/c"]
    assert '<form method="get" action="/compare" id="compare">' in runs
    page = c.get("/compare?run=runs/a&run=runs/b&run=runs/c")
    assert page.status_code == 200
    text = page.text
    # one curve per run in each chart, named by the run, a run keeping its colour across charts
    train = re.search(r'aria-label="training loss">(.*?)</svg>', text, re.S).group(1)
    assert re.findall(r'stroke="(#\w+)" stroke-width="1.6" data-name="([^"]+)" data-n="(\d+)"', train) == [
        ("#1f77b4", "runs/a", "2"),
        ("#ff7f0e", "runs/b", "3"),
    ]
    val = re.search(r'aria-label="validation loss">(.*?)</svg>', text, re.S).group(1)
    assert re.findall(r'data-name="([^"]+)" data-n="(\d+)"', val) == [("runs/a", "1")]
    assert 'aria-label="validation accuracy"' in text
    diff = re.search(r'<table id="config-diff".*?</table>', text, re.S).group(0)
    cells = re.findall(r"<code>([^<]*)</code>", diff)
    assert cells == [
        "method.name",
        "lora",
        "lora",
        "(not set)",
        "method.r",
        "8",
        "16",
        "(not set)",
        "train.learning_rate",
        "0.001",
        "0.001",
        "(not set)",
        "train.seed",
        "(not set)",
        "3",
        "(not set)",
    ]
    metrics = re.search(r'<table id="metrics".*?</table>', text, re.S).group(0)
    assert "0.8 [0.6, 0.95]" in metrics and "0.7 [0.5, 0.85]" in metrics
    assert "test (20 examples)" in metrics and "not evaluated" in metrics
    assert '<tr class="headline"><th>accuracy <span class="muted">(headline)</span>' in metrics


def test_compare_refuses_too_few_or_too_many_runs_and_unknown_ones(tmp_path: Path) -> None:
    c = client(workspace(tmp_path))
    one = c.get("/compare?run=runs/a&run=runs/a")  # the same run twice is one run
    assert one.status_code == 400
    assert "compare needs 2 to 4 runs, 1 were picked" in one.text
    five = c.get("/compare?" + "&".join(f"run=runs/{x}" for x in "abcde"))
    assert five.status_code == 400 and "5 were picked" in five.text
    assert c.get("/compare?run=runs/a&run=../../etc").status_code == 404
    assert c.get("/compare?run=runs/a&run=runs/nope").status_code == 404
