"""Recommendation rules on synthetic dataset manifests; the written config loads and trains; defaults_for."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tuneforge.config import config_from_dict
from tuneforge.models import recommend as rec
from tuneforge.models.catalog import catalog
from tuneforge.models.estimate import Device, parse_gpu

CPU = Device("test CPU", "cpu", 16 * 2**30, 5e10)


def manifest(fmt: str, rows: int, *, labels: int = 0, p99: int = 100) -> dict:
    lengths = {"count": rows, "total": rows * p99 // 2, "max": p99 + 10, "p90": p99 * 3 // 4, "p99": p99}
    return {
        "format": fmt,
        "labels": [f"label{i}" for i in range(labels)],
        "splits": {"train": rows, "validation": rows // 10, "test": rows // 10},
        "token_lengths": {"train": lengths},
    }


@pytest.fixture(autouse=True)
def small_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rules, not the whole catalog, are under test: a few sizes keep each case to a few estimates."""
    keep = {"smollm2-135m", "qwen2.5-1.5b", "llama-3.1-8b", "minilm-l6", "deberta-v3-base"}
    monkeypatch.setattr(rec, "catalog", lambda: tuple(m for m in catalog() if m.name in keep))


def test_small_classification_set_gets_an_encoder_with_a_head() -> None:
    recs = rec.recommend("ds", manifest("classification", 800, labels=5), CPU)
    first = recs[0]
    assert (first.model, first.method) == ("builtin:minilm-l6", "full")
    assert first.config["model"]["task"] == "classification"
    assert first.config["train"]["learning_rate"] == 5e-5 and first.config["train"]["epochs"] == 10
    assert first.config["train"]["early_stopping_patience"] == 3
    assert first.config["model"]["max_length"] == 128  # p99 100 + [CLS]/[SEP], rounded up to 64
    assert "classification with 5 labels: an encoder with a head" in first.reasons[0]
    # the decoder alternative comes after, and costs far more per step
    assert recs[1].model == "builtin:smollm2-135m-instruct"
    ratio = recs[1].estimate.step_s / first.estimate.step_s
    assert ratio > 4, ratio
    assert (
        first.reasons[-1]
        == f"{ratio:.0f}x less compute per step than builtin:smollm2-135m-instruct with a head"
    )


def test_large_chat_set_on_a_big_gpu_gets_lora_on_a_larger_model() -> None:
    recs = rec.recommend("ds", manifest("chat", 200_000, p99=1000), parse_gpu("H100"))
    first = recs[0]
    assert (first.model, first.method) == ("meta-llama/Llama-3.1-8B-Instruct", "lora")
    assert first.config["method"]["r"] == 16 and first.config["train"]["learning_rate"] == 2e-4
    assert first.config["train"]["epochs"] == 1 and first.config["model"]["max_length"] == 1088
    assert first.estimate.peak <= 0.85 * parse_gpu("H100").memory
    assert any(r.method == "full" for r in recs)  # 200k examples: full fine-tuning of a small model listed


def test_small_gpu_gets_qlora_and_budget_cuts_epochs() -> None:
    recs = rec.recommend("ds", manifest("instruction", 5_000, p99=300), parse_gpu("16GB"))
    assert (recs[0].model, recs[0].method) == ("meta-llama/Llama-3.1-8B-Instruct", "qlora")
    assert any("QLoRA (4-bit base) is what makes 8.0B fit" in r for r in recs[0].reasons)
    assert "5,000 examples: LoRA, not full fine-tuning" in recs[0].reasons[0]
    hours = recs[0].hours
    budget = rec.recommend(
        "ds", manifest("instruction", 5_000, p99=300), parse_gpu("16GB"), budget_hours=hours / 2
    )
    assert budget[0].config["train"]["epochs"] < 3 or budget[0].model != recs[0].model


def test_written_config_loads_and_trains_on_a_tiny_model(tmp_path: Path, tiny_bert: Path, cli) -> None:
    from tests.tiny import sentiment_rows, write_csv

    data = write_csv(tmp_path / "data.csv", sentiment_rows(60))
    prep = {"data": {"path": str(data), "format": "classification", "output_dir": str(tmp_path / "ds")}}
    (tmp_path / "prep.yaml").write_text(yaml.safe_dump({**prep, "model": {"name": str(tiny_bert)}}))
    assert cli("prepare", str(tmp_path / "prep.yaml")).returncode == 0
    done = cli("recommend", str(tmp_path / "ds"), "--device", "cpu", "--out", str(tmp_path / "rec"))
    assert done.returncode == 0, done.stderr
    written = sorted((tmp_path / "rec").glob("*.yaml"))
    assert written[0].name == "1-minilm-l6-full.yaml"
    raw = yaml.safe_load(written[0].read_text())
    cfg = config_from_dict(raw)
    assert cfg.data.path == str(tmp_path / "ds") and cfg.model.task == "classification"
    run = tmp_path / "run"
    trained = cli(
        "train", str(written[0]), f"model.name={tiny_bert}", "train.max_steps=2", f"train.output_dir={run}",
        "train.progress=false",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert (run / "final" / "model.safetensors").is_file()


def test_defaults_for_fill_only_unset_keys() -> None:
    cfg = config_from_dict({"model": {"name": "builtin:minilm-l6", "task": "classification"}})
    m = manifest("classification", 1_500, labels=4)
    chosen = rec.defaults_for(cfg, m, given={"model.name", "model.task", "data.path"})
    assert chosen == {
        "train.epochs": 5,
        "train.learning_rate": 5e-4,
        "train.early_stopping_patience": 3,
        "train.metric_for_best": "accuracy",
        "train.warmup_ratio": 0.06,
        "method.r": 8,
        "method.alpha": 16,
        "model.max_length": 128,
    }
    assert "train.learning_rate" not in rec.defaults_for(cfg, m, given={"train.learning_rate"})
    line = rec.describe_defaults(cfg, m, chosen)
    assert line.startswith("defaults for encoder classification, 1,500 examples: train.epochs=5")
