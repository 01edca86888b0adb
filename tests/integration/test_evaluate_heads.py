"""Evaluating classification and regression heads in process: calibration, baselines, threshold optimizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.eval_invariants import check_numbers
from tests.tiny import sentiment_rows, write_csv, write_jsonl
from tuneforge.config import config_from_dict
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation import evaluate_run
from tuneforge.evaluation.calibration import brier_score, expected_calibration_error
from tuneforge.train import train


def run_config(root: Path, model: Path, data: Path, task: str, **eval_: Any) -> Any:
    return config_from_dict(
        {
            "data": {
                "path": str(data),
                "output_dir": str(root / f"{task}.ds"),
                "min_examples": 5,
                "format": task,
                "group_column": "region" if task == "classification" else None,
            },
            "model": {"name": str(model), "task": task, "max_length": 32},
            "method": {"name": "lora", "r": 4},
            "train": {
                "output_dir": str(root / f"{task}.run"),
                "max_steps": 3,
                "batch_size": 8,
                "learning_rate": 1e-2,
                "eval_every": 0,
                "save_every": 0,
                "progress": False,
            },
            "eval": {"bootstrap": 100, "min_group_size": 3, "compare_base": True, **eval_},
        }
    )


def rows_of(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "eval" / "test.predictions.jsonl").read_text().splitlines()]


def test_binary_head_calibration_and_threshold_optimizer(tmp_path: Path, tiny_bert: Path) -> None:
    rows = [r for r in sentiment_rows(90) if r["label"] != "neutral"]
    for i, r in enumerate(rows):
        r["region"] = "north" if i % 3 else "south"
    cfg = run_config(
        tmp_path,
        tiny_bert,
        write_csv(tmp_path / "d.csv", rows),
        "classification",
        threshold_optimizer="demographic_parity",
    )
    run = train(cfg).path
    result = json.loads(evaluate_run(run, report=False).read_text())
    preds = rows_of(run)
    labels = result["labels"]
    probs = np.array([[r["probabilities"]["tuned"][label] for label in labels] for r in preds])
    gold = [labels.index(r["label"]) for r in preds]
    assert result["tuned"]["ece"] == pytest.approx(expected_calibration_error(probs, gold))
    assert result["tuned"]["brier"] == pytest.approx(brier_score(probs, gold))
    # Brier per example: its mean is the headline, so it has an interval and a paired test; ECE bins first, so
    # its interval resamples examples and brackets the headline value
    per = [r["scores"]["tuned"]["brier"] for r in preds]
    assert per == pytest.approx([brier_score(p[None], [g]) for p, g in zip(probs, gold, strict=True)])
    assert result["ci"]["tuned"]["brier"]["value"] == pytest.approx(result["tuned"]["brier"])
    assert "verdict" in result["paired"]["brier"]
    ece = result["ci"]["tuned"]["ece"]
    assert ece["value"] == pytest.approx(result["tuned"]["ece"]) and ece["lo"] <= ece["value"] <= ece["hi"]
    assert [r["tuned"] for r in preds] == [labels[int(np.argmax(p))] for p in probs]
    post = result["threshold_optimizer"]
    assert post["constraint"] == "demographic_parity" and post["group_column"] == "group"
    assert post["before"]["predictions"] == [labels[int(p[1] > 0.5)] for p in probs]
    assert len(post["after"]["predictions"]) == len(preds)
    # accuracy, macro-F1, ECE, Brier of both sides inside their intervals; every paired row agrees with itself
    # + the majority and TF-IDF baselines: each one's accuracy in its interval, and its test against tuned
    assert check_numbers(result) == 2 * 4 + 4 + 2 * 2
    assert result["few_shot"] == {
        "skipped": "a classification or regression head reads no prompt, so it cannot be shown examples"
    }
    assert not any(name.startswith("few_shot") for name in result["baselines"])


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    root = tmp_path_factory.mktemp("regression")
    data = [{"text": r["text"], "label": float(i % 5)} for i, r in enumerate(sentiment_rows(60))]
    return train(run_config(root, tiny_bert, write_jsonl(root / "d.jsonl", data), "regression")).path


def test_regression_head_with_its_baselines(regression_run: Path) -> None:
    result = json.loads(evaluate_run(regression_run, report=False).read_text())
    preds = rows_of(regression_run)
    errors = [(r["tuned"] - r["label"]) ** 2 for r in preds]
    assert result["tuned"]["mse"] == pytest.approx(np.mean(errors))
    assert result["ci"]["tuned"]["mse"]["value"] == pytest.approx(np.mean(errors))
    assert result["paired"]["mse"]["test"] == "paired-bootstrap"
    assert len({r["baselines"]["mean"] for r in preds}) == 1  # the train mean, the same for every row
    assert set(result["baselines"]) == {"mean", "tfidf_ridge"}
    assert result["baselines"]["tfidf_ridge"]["vs_tuned"]["verdict"]
    assert check_numbers(result) == 2 * 2 + 2 + 2 * 2  # mse, mae (both sides, paired), 2 baselines


def test_threshold_optimizer_needs_a_binary_head_with_groups(regression_run: Path, tmp_path: Path) -> None:
    import shutil

    import yaml

    run = tmp_path / "run"
    shutil.copytree(regression_run, run, ignore=shutil.ignore_patterns("eval"))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["eval"]["threshold_optimizer"] = "equalized_odds"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(
        TuneforgeError, match="the threshold optimizer needs a classification head with two labels"
    ):
        evaluate_run(run, report=False)
    assert not (run / "eval").exists()
