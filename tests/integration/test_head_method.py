"""method.name head: a linear head on a frozen model's embeddings, trained, evaluated, served and exported."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.tiny import sentiment_rows, write_csv
from tuneforge.artifacts import DatasetDir
from tuneforge.config import config_from_dict
from tuneforge.errors import TuneforgeError
from tuneforge.train import train

LONG_TAIL = " ".join(["road phone today order ticket car"] * 8)  # well past max_length 24 tokens


def head_config(root: Path, model: Path, data: Path, out: str, task: str = "classification", **method: Any):
    return config_from_dict(
        {
            "data": {
                "path": str(data),
                "output_dir": str(root / f"{task}.ds"),
                "min_examples": 5,
                "format": task,
            },
            "model": {"name": str(model), "task": task, "max_length": 24},
            "method": {"name": "head", "stride": 4, **method},
            "train": {"output_dir": str(root / out), "progress": False},
            "eval": {"bootstrap": 50, "compare_base": False},
        }
    )


@pytest.fixture
def data(tmp_path: Path) -> Path:
    rows = sentiment_rows(60)
    for r in rows[::5]:
        r["text"] += " " + LONG_TAIL  # some documents longer than one window
    return write_csv(tmp_path / "d.csv", rows)


def test_head_run_trains_evaluates_serves_and_caches(
    tmp_path: Path, tiny_bert: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors import safe_open

    from tuneforge.evaluation import evaluate_run
    from tuneforge.models import features

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    run = train(head_config(tmp_path, tiny_bert, data, "first")).path
    m = json.loads((run / "manifest.json").read_text())
    assert m["status"] == "completed" and m["method"] == "head" and m["saves_adapter"] is False
    head = m["head"]
    emb = head["embeddings"]
    n = m["examples"]["train"] + m["examples"]["validation"]
    assert emb["computed"] == n and emb["cached"] == 0
    assert emb["windows"] > n  # the long documents were read in several windows each
    assert head["estimator"] == "LogisticRegression" and head["chosen_by"] == "validation loss"
    assert [g["value"] for g in head["grid"]] == [0.001, 0.01, 0.1, 1.0, 10.0, 100.0]
    best = min(head["grid"], key=lambda g: g["loss"])
    assert head["regularization"] == {"C": best["value"]} and m["best"]["value"] == best["loss"]
    # The run holds the head and the tokenizer, never the base weights, and no pickle.
    files = sorted(p.name for p in (run / "final").iterdir())
    assert "head.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl", ".pth")) for f in files)
    assert "model.safetensors" not in files
    with safe_open(str(run / "final" / "head.safetensors"), framework="numpy") as f:
        assert sorted(f.keys()) == ["classes", "coef", "intercept"]
        assert f.get_tensor("coef").shape == (3, 32) and list(f.get_tensor("classes")) == [0, 1, 2]
        assert json.loads(f.metadata()["labels"]) == m["labels"]

    # evaluate and serve's classify path give the same labels (the same windows and pooling).
    result = json.loads(evaluate_run(run, report=True).read_text())
    preds = [json.loads(x) for x in (run / "eval" / "test.predictions.jsonl").read_text().splitlines()]
    assert result["tuned"]["accuracy"] == pytest.approx(np.mean([p["tuned"] == p["label"] for p in preds]))
    test = DatasetDir(tmp_path / "classification.ds").records("test")
    assert [str(r["label"]) for r in test] == [p["label"] for p in preds]
    texts = [str(r["text"]) for r in test]
    assert any(len(t.split()) > 24 for t in texts)  # long documents are among them
    served = _classify_through_serve(run, texts)
    assert [max(s, key=s.__getitem__) for s in served] == [p["tuned"] for p in preds]
    report = (run / "report.html").read_text()
    assert "linear head (LogisticRegression, C=" in report and "Values of C tried" in report
    assert "This run is a linear head (`head.safetensors`" in (run / "final" / "README.md").read_text()

    # A second run on the same texts and base model computes no embedding: every text is in the cache.
    calls: list[int] = []
    real = features.pooled_embeddings
    monkeypatch.setattr(features, "pooled_embeddings", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = train(head_config(tmp_path, tiny_bert, data, "second", regularization=[0.5])).path
    emb2 = json.loads((again / "manifest.json").read_text())["head"]["embeddings"]
    assert calls == [] and emb2["computed"] == 0 and emb2["cached"] == n
    assert json.loads((again / "manifest.json").read_text())["head"]["regularization"] == {"C": 0.5}
    # A head run changed nothing in its base: it is no starting point for another run.
    child = head_config(tmp_path, run, data, "child")
    with pytest.raises(TuneforgeError, match="trained only a linear head on a frozen base model") as err:
        train(child)
    assert err.value.fix == f"start from its base model instead: model.name={tiny_bert}"


def _classify_through_serve(run: Path, texts: list[str]) -> list[dict[str, float]]:
    from tuneforge.config import ServeConfig
    from tuneforge.serve.engine import resolve_targets
    from tuneforge.serve.engine_transformers import TransformersEngine

    engine = TransformersEngine(resolve_targets([str(run)]), ServeConfig())
    try:
        return asyncio.run(engine.classify(run.name, texts))
    finally:
        engine.close()


def test_head_on_a_decoder_regression_and_export(tmp_path: Path, tiny_llama: Path, monkeypatch) -> None:
    from tuneforge.evaluation import evaluate_run
    from tuneforge.export.model import export_model
    from tuneforge.models.linear_head import read_head

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    rows = [{"text": r["text"], "label": str(float(i % 5))} for i, r in enumerate(sentiment_rows(40))]
    cfg = head_config(tmp_path, tiny_llama, write_csv(tmp_path / "r.csv", rows), "reg", task="regression")
    run = train(cfg).path
    m = json.loads((run / "manifest.json").read_text())
    assert m["head"]["estimator"] == "Ridge" and set(m["head"]["regularization"]) == {"alpha"}
    result = json.loads(evaluate_run(run, report=False).read_text())
    assert result["tuned"]["mse"] >= 0
    out = export_model(run, tmp_path / "exported")
    assert out["method"] == "head" and out["merged"] is False
    tensors, _ = read_head(tmp_path / "exported")
    own, _ = read_head(run / "final")
    np.testing.assert_array_equal(tensors["coef"], own["coef"])
    assert (tmp_path / "exported" / "model.safetensors").is_file()  # the base, for use without tuneforge
    with pytest.raises(TuneforgeError, match="GGUF cannot hold"):
        export_model(run, tmp_path / "gguf", to="gguf")


def test_head_on_a_generation_task_is_refused_before_anything_loads(tmp_path: Path) -> None:
    cfg = config_from_dict(
        {
            "data": {"path": str(tmp_path / "missing.jsonl")},
            "model": {"name": str(tmp_path / "no-model"), "task": "causal-lm"},
            "method": {"name": "head"},
            "train": {"output_dir": str(tmp_path / "run")},
        }
    )
    with pytest.raises(TuneforgeError) as err:
        train(cfg)
    assert err.value.what == (
        "method head trains a classification or regression head on frozen embeddings; model.task causal-lm "
        "generates text, which a head cannot"
    )
    assert err.value.where == "config key method.name"
    assert not (tmp_path / "run").exists()


def test_the_cli_names_the_config_line_of_a_head_on_a_generation_task(tmp_path: Path, cli) -> None:
    (tmp_path / "run.yaml").write_text(
        "data: {path: missing.jsonl}\nmodel: {name: ./no-model, task: causal-lm}\nmethod:\n  name: head\n"
    )
    out = cli("train", "run.yaml")
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines()[0].endswith(
        "run.yaml:4 (method.name): method head trains a classification or regression head on frozen "
        "embeddings; model.task causal-lm generates text, which a head cannot"
    )
    assert not (tmp_path / "runs").exists()


def test_a_training_split_of_one_label_is_refused_before_the_model_loads(
    tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneforge.models import linear_head

    # Two labels in the data (prepare refuses one), but the data's own split column gives train only one.
    rows = [
        {**r, "split": "train" if r["label"] == "positive" else "test"}
        for r in sentiment_rows(30)
        if r["label"] != "neutral"
    ]
    cfg = head_config(tmp_path, tiny_bert, write_csv(tmp_path / "one.csv", rows), "one")
    cfg.data.split_column = "split"
    monkeypatch.setattr(linear_head, "load_backbone", lambda *a: pytest.fail("the model was loaded"))
    with pytest.raises(TuneforgeError) as err:
        train(cfg)
    assert err.value.what == (
        f"the training split of {tmp_path / 'classification.ds'} holds one label only ('positive'); "
        "a classifier needs examples of two labels or more"
    )
