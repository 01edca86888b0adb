"""The run report and model card on hand-made run directories: what a reader sees, against the inputs."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tuneforge.artifacts import atomic_dir, check_replaceable, write_json_atomic
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation.calibration import calibration
from tuneforge.evaluation.metrics import classification_metrics
from tuneforge.evaluation.report import write_report
from tuneforge.evaluation.report.render import num, with_ci
from tuneforge.evaluation.stats import compare, sig

LABELS = ["negative", "neutral", "positive"]


def make_run(
    root: Path, fmt: str, result: dict[str, Any], rows: list[dict[str, Any]], **manifest: Any
) -> Path:
    run = root / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model:\n  name: base\n")
    write_json_atomic(
        run / "manifest.json",
        {
            "kind": "tuneforge.run",
            "status": "completed",
            "base_model": "some/base",
            "task": "causal-lm",
            "method": "lora",
            "step": 4,
            "parameters": {"trainable": 10, "total": 100},
            "dataset": {"path": str(root / "missing-ds")},
            **manifest,
        },
    )
    metrics = [{"step": s, "loss": 3.0 - 0.5 * s} for s in (1, 2, 3, 4)] + [
        {"step": 4, "split": "validation"}
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (run / "eval").mkdir()
    write_json_atomic(run / "eval" / "test.json", {"split": "test", "n": len(rows), "format": fmt, **result})
    (run / "eval" / "test.predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


@pytest.fixture
def classification_run(tmp_path: Path) -> Path:
    gold = ["negative", "negative", "neutral", "positive", "positive", "positive"]
    tuned = ["negative", "neutral", "neutral", "positive", "positive", "negative"]
    base = ["negative", "<unparseable>", "<unparseable>", "positive", "<unparseable>", "neutral"]
    t_ok = [float(p == g) for p, g in zip(tuned, gold, strict=True)]
    b_ok = [float(p == g) for p, g in zip(base, gold, strict=True)]
    c = compare("accuracy", t_ok, b_ok, n_boot=200, correct=True)
    rows = [
        {
            "id": i,
            "input": f"text {i}",
            "reference": g,
            "tuned": t,
            "base": b,
            "scores": {"tuned": {"correct": tc}, "base": {"correct": bc}},
        }
        for i, (g, t, b, tc, bc) in enumerate(zip(gold, tuned, base, t_ok, b_ok, strict=True))
    ]
    result = {
        "tuned": classification_metrics(gold, tuned, LABELS),
        "base": {**classification_metrics(gold, base, LABELS), "unparseable_rate": 0.5},
        "ci": {"tuned": {"accuracy": c["tuned"]}, "base": {"accuracy": c["base"]}},
        "paired": {"accuracy": {**c["paired"], "verdict": c["verdict"]}},
        "bootstrap": {"resamples": 200, "seed": 0},
        "guard": {"checked": True, "how": "adapter on vs off", "max_abs_logit_diff": 0.5},
    }
    result["tuned"]["unparseable_rate"] = 0.0
    probs = np.asarray(
        [[0.9, 0.05, 0.05], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1]] + [[0.1, 0.1, 0.8]] * 2 + [[0.5, 0.3, 0.2]]
    )
    result["tuned"]["reliability"] = calibration(probs, [LABELS.index(g) for g in gold])["bins"]
    result["baselines"] = {
        "majority": {
            "metrics": {"accuracy": 0.5},
            "ci": {"accuracy": {"value": 0.5, "lo": 0.125, "hi": 0.875}},
            "vs_tuned": {"verdict": "no evidence of a difference in accuracy"},
        }
    }
    return make_run(tmp_path, "classification", result, rows)


def test_classification_report_shows_what_the_eval_json_holds(classification_run: Path) -> None:
    html = write_report(classification_run).read_text()
    md = (classification_run / "report.md").read_text()
    result = json.loads((classification_run / "eval" / "test.json").read_text())

    # the answer first: the headline metric with its interval and the paired verdict
    summary = md.split("\n## Data\n")[0]
    ci = result["ci"]["tuned"]["accuracy"]
    assert f"accuracy tuned {with_ci(result['tuned']['accuracy'], ci)}" in summary
    assert result["paired"]["accuracy"]["verdict"] in summary
    # every metric row says which way is better and on what scale
    acc = [with_ci(result[side]["accuracy"], result["ci"][side]["accuracy"]) for side in ("base", "tuned")]
    assert (
        f"| accuracy | {acc[0]} | {acc[1]} | 0.5 [0.125, 0.875] | higher | share of examples right, 0-1 |"
        in md
    )
    # calibration: per (lo, hi] bin of the predicted label's probability, how many and how many right (by hand
    # from the six rows: 0.9 right, 0.6 wrong, 0.7 right, 0.8 right twice, 0.5 wrong)
    for bin_, n, conf, right in (
        ("(0.4, 0.5]", 1, 0.5, 0),
        ("(0.5, 0.6]", 1, 0.6, 0),
        ("(0.6, 0.7]", 1, 0.7, 1),
    ):
        assert f"| tuned | {bin_} | {n} | {conf} | {right} |" in md
    assert "| tuned | (0.7, 0.8] | 2 | 0.8 | 1 |" in md and "| tuned | (0.8, 0.9] | 1 | 0.9 | 1 |" in md
    assert "alt='reliability diagram'" in html
    assert "| unparseable_rate | 0.5 | 0 |  | lower | share of answers naming no label |" in md
    # the paired test as a row: difference tuned - base with its interval, p, the test, who is better
    p = result["paired"]["accuracy"]
    diff = f"{sig(p['diff'], True)} [{sig(p['lo'], True)}, {sig(p['hi'], True)}]"
    who = "tuned is better" if p["verdict"].startswith("tuned is better") else "no evidence of a difference"
    assert f"| accuracy | {diff} | {num(p['p_value'])} | paired-bootstrap | {who} |" in md
    # the base's answers that named no label: a column of their own, counted from the rows
    rows = [json.loads(line) for line in (classification_run / "eval" / "test.predictions.jsonl").open()]
    for label in LABELS:
        ours = [r for r in rows if r["reference"] == label]
        named = [r["base"] for r in ours if r["base"] != "<unparseable>"]
        cells = [str(sum(p == c for p in named)) for c in LABELS]
        none = len(ours) - len(named)
        assert f"| gold {label} | {' | '.join(cells)} | {none} |" in md
    assert "| base: gold \\ predicted | negative | neutral | positive | no label |" in md
    assert "| tuned: gold \\ predicted | negative | neutral | positive |\n" in md  # no empty column
    # the examples where the two differ most come first, with their score either way
    # rows 2 and 4 turned right (gap 1 + 0.5 for a different answer), 1 and 5 changed but stayed wrong (0.5),
    # 0 and 3 are the same answer (0: not shown)
    evaluation = md.split("\n## Evaluation (test)\n")[1]
    shown = [
        line.split(" | ")[0][2:]
        for line in evaluation.splitlines()
        if line.startswith("| ") and "| text " in line
    ]
    assert shown == ["2", "4", "1", "5"]
    assert "| 2 | text 2 | neutral | &lt;unparseable&gt; | neutral | 0 → 1 |" in md
    # the summary shows the first three of them right under the verdicts
    head = [line.split(" | ")[0][2:] for line in summary.splitlines() if "| text " in line]
    assert head == ["2", "4", "1"]
    # what is missing says how to add it
    assert "per-group results (data.group_column or eval.group_columns)" in md
    assert "calibration (ECE, Brier): it needs label probabilities (eval.decision: score)" in md
    assert "LLM judge" not in md  # classification answers are not judged
    # self-contained, phone-ready, no empty header row on key/value tables
    assert "http://" not in html and "https://" not in html and "<th></th>" not in html
    assert "name='viewport'" in html and "data:image/png;base64," in html
    # at 390 px the verdicts are cards (checked in headless Chromium: no table scrolled, the page 375 px wide)
    assert "<table class='cards'><thead><tr><th>metric</th><th>difference [95% CI]</th>" in html
    assert "<table class='cards'><thead><tr><th>metric</th><th>base</th><th>tuned</th>" in html
    assert (
        "nav{font-size:14px;display:flex;flex-wrap:wrap" in html
    )  # one unbreakable line of links was 834 px
    # the validation record without a loss is skipped, so no validation curve is claimed
    assert "train loss 2.5 → 1; no validation loss was logged" in md


def test_chat_report_units_perplexity_interval_and_control_characters(tmp_path: Path) -> None:
    loss_ci = {"value": 2.0, "lo": 1.5, "hi": 2.5}
    rows = [
        {
            "id": i,
            "input": f"question {i}",
            "reference": "the answer",
            "tuned": "the answer" if i else "bad\x19out",
            "scores": {"tuned": {"token_f1": float(i > 0)}},
        }
        for i in range(3)
    ]
    result = {
        "tuned": {"loss": 2.0, "perplexity": math.exp(2.0), "token_f1": 2 / 3},
        "ci": {"tuned": {"loss": loss_ci}},
        "bootstrap": {"resamples": 100, "seed": 0},
        "guard": {"checked": False, "reason": "no base"},
    }
    run = make_run(tmp_path, "chat", result, rows)
    html = write_report(run).read_text()
    md = (run / "report.md").read_text()
    ppl = with_ci(math.exp(2.0), {"lo": math.exp(1.5), "hi": math.exp(2.5)})
    assert f"| perplexity | {ppl} | lower | exp(loss) |" in md
    assert "| loss | 2 [1.5, 2.5] | lower | cross-entropy, nats per target token |" in md
    # no base: the tuned answers are shown anyway; a control character is made visible, not a box
    assert "The tuned model's answers on the first 3 examples (the base was not evaluated):" in md
    assert "| 0 | question 0 | the answer | bad\\x19out |" in md and "bad\\x19out" in html
    assert "\x19" not in html
    assert "the base model (`tuneforge evaluate RUN --compare-base`, or eval.compare_base: true)" in md
    assert "an LLM judge (eval.judge)" in md


def _final(run: Path, files: dict[str, str]) -> Path:
    with atomic_dir(run / "final", kind="tuneforge.final") as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text)
    return run / "final"


def test_model_card_metadata_is_a_valid_hub_card_with_the_eval_numbers(tmp_path: Path) -> None:
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import eval_results_to_model_index

    rows = [{"id": 0, "input": "q", "reference": "a", "tuned": "a", "scores": {"tuned": {"token_f1": 1.0}}}]
    result = {
        "tuned": {"loss": 1.25, "perplexity": math.exp(1.25), "token_f1": 1.0, "rougeL": 0.5, "chrf": 40.0},
        "ci": {},
        "guard": {"checked": True},
    }
    run = make_run(tmp_path, "chat", result, rows, base_model="builtin:smollm2-135m-instruct")
    config = json.dumps({"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"})
    final = _final(run, {"adapter_config.json": config})
    (run / "config.yaml").write_text(
        "model: {max_length: 128}\nmethod: {name: lora, r: 8, alpha: 16}\n"
        "train: {max_steps: 4, batch_size: 2, learning_rate: 2.0e-4, seed: 7}\n"
    )
    write_report(run)
    card = ModelCard.load(final / "README.md")
    # how it was made: the data, the method's settings and the hyperparameters of config.yaml
    assert "- method: lora (r 8, alpha 16)\n- model: task causal-lm, max_length 128\n" in card.text
    assert (
        "- training: max_steps 4, batch_size 2, learning_rate 0.0002, seed 7; 4 optimizer steps" in card.text
    )
    assert "Fine-tuned from `HuggingFaceTB/SmolLM2-135M-Instruct` with lora" in card.text
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "text-generation"
    assert card.data.license is None and card.data.datasets is None  # never guessed
    by_name = {e.metric_name: e for e in card.data.eval_results}
    assert by_name["Token F1 (SQuAD)"].metric_type == "f1" and by_name["Token F1 (SQuAD)"].metric_value == 1.0
    assert by_name["ROUGE-L"].metric_type == "rouge" and by_name["ROUGE-L"].metric_value == 0.5
    assert by_name["Perplexity"].metric_value == pytest.approx(math.exp(1.25))
    assert {e.dataset_split for e in card.data.eval_results} == {"test"}
    # the code loads the built-in base the way tuneforge resolves it (no download); AutoPeft is the online way
    assert (
        "base = AutoModelForCausalLM.from_pretrained(resolve('builtin:smollm2-135m-instruct'))\n"
        "model = PeftModel.from_pretrained(base, 'path/to/final')\n" in card.text
    )
    assert (
        "Online, `AutoPeftModelForCausalLM.from_pretrained('path/to/final')` also works: it downloads the "
        "base `HuggingFaceTB/SmolLM2-135M-Instruct` from the Hub." in card.text
    )
    # the metadata round-trips through the Hub's own model-index writer unchanged
    index = eval_results_to_model_index("run", card.data.eval_results)
    assert card.data.to_dict()["model-index"] == index
    # the card is named in final/'s marker, so training may replace final/ later
    assert "README.md" in json.loads((final / ".tuneforge").read_text())["entries"]
    check_replaceable(final, "tuneforge.final")


def test_a_local_base_is_not_written_as_base_model_and_a_foreign_readme_still_blocks(tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    base = tmp_path / "my-model"
    base.mkdir()
    rows = [{"id": 0, "input": "q", "reference": "a", "tuned": "a", "scores": {"tuned": {"correct": 1.0}}}]
    run = make_run(
        tmp_path,
        "classification",
        {"tuned": {"accuracy": 1.0}, "guard": {}},
        rows,
        base_model=str(base),
        saves_adapter=False,
        task="classification",
    )
    final = _final(run, {"config.json": "{}"})
    write_report(run)
    card = ModelCard.load(final / "README.md")
    assert card.data.base_model is None and card.data.library_name == "transformers"
    assert f"The base `{base}` is a local folder, so the metadata names no base_model." in card.text
    check_replaceable(final, "tuneforge.final")
    # the marker is what makes the difference: a file written beside it without the API stays foreign
    (final / "notes.txt").write_text("mine")
    with pytest.raises(TuneforgeError, match=r"holds files tuneforge did not write \(notes\.txt\)"):
        check_replaceable(final, "tuneforge.final")


def test_loss_png_and_the_report_plot_the_same_series(tmp_path: Path) -> None:
    from tuneforge.train.plot import loss_series, plot_loss

    metrics = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}, {"step": 2, "split": "validation"}]
    metrics.append({"step": 2, "split": "validation", "loss": 1.5})
    assert loss_series(metrics) == ([(1, 2.0), (2, 1.0)], [(2, 1.5)])
    out = plot_loss(metrics, tmp_path / "loss.png")
    assert out is not None and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_loss([{"step": 1, "split": "validation", "loss": 1.0}], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_answers_are_shown_even_when_base_and_tuned_never_differ(tmp_path: Path) -> None:
    rows = [
        {
            "id": i,
            "input": f"q{i}",
            "reference": "r",
            "tuned": "same",
            "base": "same",
            "scores": {"tuned": {"token_f1": 0.0}, "base": {"token_f1": 0.0}},
        }
        for i in range(12)
    ]
    run = make_run(
        tmp_path, "chat", {"tuned": {"token_f1": 0.0}, "base": {"token_f1": 0.0}, "guard": {}}, rows
    )
    write_report(run)
    md = (run / "report.md").read_text()
    assert "Base and tuned scored alike on every example; the first 10 side by side:" in md
    assert "| 9 | q9 | r | same | same |" in md and "| 10 | q10 |" not in md


def test_regression_examples_print_predicted_values_at_three_digits(tmp_path: Path) -> None:
    rows = [
        {
            "id": 0,
            "input": "t",
            "reference": 5.0,
            "base": -0.023314306512475014,
            "tuned": 0.07355169951915741,
            "scores": {"tuned": {"abs_error": 4.926448300480843}, "base": {"abs_error": 5.023314306512475}},
        }
    ]
    result = {"tuned": {"mse": 24.27}, "base": {"mse": 25.23}, "guard": {}}
    run = make_run(tmp_path, "regression", result, rows, task="regression")
    write_report(run)
    md = (run / "report.md").read_text()
    assert "| 0 | t | 5 | -0.0233 | 0.0736 | 5.02 → 4.93 |" in md
    assert "| mse | 25.2 | 24.3 | lower | mean squared error, label units squared |" in md


def test_a_run_that_did_not_finish_and_was_not_evaluated_says_so(tmp_path: Path) -> None:
    run = make_run(tmp_path, "chat", {"tuned": {}, "guard": {}}, [], status="failed")
    for p in (run / "eval").iterdir():
        p.unlink()
    write_report(run)
    md = (run / "report.md").read_text()
    assert "- Not evaluated yet: run `tuneforge evaluate RUN` for the numbers." in md
    assert "- The run's status is failed: it did not finish" in md
    assert "\n## Evaluation" not in md and not (run / "final").exists()  # no card for a run without final/


def test_the_report_does_not_load_torch(classification_run: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from tuneforge.evaluation.report import write_report; "
        f"write_report({str(classification_run)!r}); "
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"  # train/plot.py draws the curve without train/'s torch imports


def test_report_md_carries_no_raw_html_or_links_from_data(tmp_path: Path) -> None:
    """Issue 19: labels with `<img onerror>` reached report.md as raw HTML; escape it as report.html does."""
    evil = "<img src=x onerror=alert(1)>"
    rows = [
        {
            "id": 0,
            "input": f"q {evil}",
            "reference": "![pixel](http://tracker.example/p.png)",
            "tuned": "<script>alert(2)</script> & more",
            "base": "a",
            "scores": {"tuned": {"token_f1": 1.0}, "base": {"token_f1": 0.0}},
        }
    ]
    labels = [evil, "ok"]
    result = {"tuned": {"token_f1": 1.0}, "base": {"token_f1": 0.0}, "labels": labels, "guard": {}}
    run = make_run(tmp_path, "chat", result, rows, base_model=f"base {evil}")
    (run / "config.yaml").write_text("data:\n  labels: ['```', '<b>x</b>']\n```\n<script>alert(3)</script>\n")
    write_report(run)
    md = (run / "report.md").read_text()
    outside_code = re.sub(r"(?s)\n(`{3,})\n.*?\n\1\n", "\n", md)
    assert "<" not in outside_code and "](" not in outside_code
    assert (
        "&lt;img src=x onerror=alert(1)&gt;" in md
        and "&lt;script&gt;alert(2)&lt;/script&gt; &amp; more" in md
    )
    assert "!\\[pixel]\\(http://tracker.example/p.png)" not in md  # the link syntax is broken at `](`
    assert "![pixel]\\(http://tracker.example/p.png)" in md
    # the config stays verbatim in a fence longer than any backtick run it holds
    assert "\n````\ndata:\n  labels: ['```', '<b>x</b>']\n```\n<script>alert(3)</script>\n````\n" in md
