"""The real `tuneforge` command end to end on the tiny Llama: prepare, train, evaluate, interrupt, resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import run_cli
from tests.tiny import sentiment_rows, write_csv

CONFIG = """\
data:
  path: data.csv
  output_dir: ds
model:
  name: {model}
  task: causal-lm
  max_length: 128
method:
  name: lora
  r: 4
  alpha: 8
  dropout: 0.1
train:
  output_dir: run
  max_steps: 6
  batch_size: 4
  learning_rate: 1.0e-2
  eval_every: 3
  save_every: 3
  progress: false
  pack_examples: false
eval:
  max_examples: 12
"""

# Losses of the first six steps of the run above (CPU, seed 42), from `metrics.jsonl`. They change only
# if the data order, tokenization, loss masking, initialisation or optimizer step changes. Recorded on padded
# batches (train.pack_examples: false): a packed row draws other LoRA dropout masks.
EXPECTED_LOSSES = [
    5.9088999430338545,
    5.914786394904642,
    5.88840077718099,
    5.800235523897059,
    5.7435769473805145,
    5.725053787231445,
]


@pytest.fixture
def project(tmp_path: Path, tiny_llama: Path) -> Path:
    write_csv(tmp_path / "data.csv", sentiment_rows(90))
    (tmp_path / "run.yaml").write_text(CONFIG.format(model=tiny_llama))
    return tmp_path


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> tuple[Path, str]:
    """The project after `tuneforge train run.yaml`, trained once for the module (its stderr beside it):
    `test_prepare_train_evaluate` checks that training; the refusal tests each get a copy."""
    folder = tmp_path_factory.mktemp("trained")
    write_csv(folder / "data.csv", sentiment_rows(90))
    (folder / "run.yaml").write_text(CONFIG.format(model=tiny_llama))
    r = run_cli("train", "run.yaml", cwd=folder)
    assert r.returncode == 0, r.stderr
    return folder, r.stderr


@pytest.fixture
def trained(trained_once: tuple[Path, str], tmp_path: Path) -> Path:
    """A copy of the trained project of its own (the run records its paths relative to the project)."""
    copy = tmp_path / "project"
    shutil.copytree(trained_once[0], copy)
    return copy


def losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "split" not in r]


def test_prepare_train_evaluate(project: Path, trained: Path, cli) -> None:
    r = cli("prepare", "run.yaml")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((project / "ds" / "manifest.json").read_text())
    assert manifest["format"] == "classification"
    assert manifest["labels"] == ["negative", "neutral", "positive"]
    assert manifest["splits"] == {"train": 63, "validation": 15, "test": 12}
    for split in ("train", "validation", "test"):
        assert (project / "ds" / f"{split}.jsonl").is_file()
    # `train` prepared the same dataset itself (the module's trained project, from the same config)
    assert (trained / "ds" / "train.jsonl").read_bytes() == (project / "ds" / "train.jsonl").read_bytes()

    project = trained
    run = project / "run"
    assert losses(run) == pytest.approx(EXPECTED_LOSSES, rel=1e-6)
    assert (run / "final" / "adapter_config.json").is_file()
    assert (run / "final" / "adapter_model.safetensors").is_file()
    saved = (run / "config.yaml").read_text()
    assert "learning_rate: 0.01" in saved and "dropout: 0.1" in saved
    m = json.loads((run / "manifest.json").read_text())
    assert m["status"] == "completed" and m["step"] == 6
    assert 0 < m["parameters"]["trainable"] < m["parameters"]["total"]

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(m["base_model_path"])
    tuned = PeftModel.from_pretrained(base, str(run / "final"))  # the standard PEFT format loads as is
    assert any("lora_A" in n for n, _ in tuned.named_parameters())

    r = run_cli("evaluate", "run", "--compare-base", cwd=project)
    assert r.returncode == 0, r.stderr
    result = json.loads((run / "eval" / "test.json").read_text())
    assert result["n"] == 12
    for side in ("tuned", "base"):
        metrics = result[side]
        assert set(metrics["per_class"]) == {"negative", "neutral", "positive"}
        assert sum(sum(row) for row in metrics["confusion_matrix"]["rows_gold_cols_pred"]) == 12
        correct = sum(metrics["confusion_matrix"]["rows_gold_cols_pred"][i][i] for i in range(3))
        assert metrics["accuracy"] == pytest.approx(correct / 12)
    preds = (run / "eval" / "test.predictions.jsonl").read_text().splitlines()
    assert len(preds) == 12 and {"tuned", "base", "label"} <= set(json.loads(preds[0]))

    # From another directory, by the run's path: the same result (the run finds its dataset and base model).
    elsewhere = project / "elsewhere"
    elsewhere.mkdir()
    r = run_cli("evaluate", str(run), cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert json.loads((run / "eval" / "test.json").read_text())["tuned"] == result["tuned"]


def test_sigterm_then_resume_matches_an_uninterrupted_run(project: Path, cli) -> None:
    # Long enough that the signal lands mid-run: it is sent once 8 rows are logged, 30 or more steps early.
    long = ["train.max_steps=40", "train.save_every=5", "train.eval_every=20"]
    assert cli("train", "run.yaml", *long, "train.output_dir=straight").returncode == 0

    proc = subprocess.Popen(
        [sys.executable, "-m", "tuneforge", "train", "run.yaml", *long],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    metrics = project / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.is_file() or len(metrics.read_text().splitlines()) < 8):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert "stopped by SIGTERM after step" in err and "--resume" in err
    assert json.loads((project / "run" / "manifest.json").read_text())["status"] == "interrupted"

    r = cli("train", "run.yaml", *long, "--resume")
    assert r.returncode == 0, r.stderr
    a = load_file(str(project / "straight" / "final" / "adapter_model.safetensors"))
    b = load_file(str(project / "run" / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a)
    assert losses(project / "run") == losses(project / "straight")


def test_resume_refuses_a_changed_config(trained: Path) -> None:
    r = run_cli("train", "run.yaml", "train.learning_rate=0.5", "--resume", cwd=trained)
    assert r.returncode == 2
    assert "train.learning_rate: 0.01 -> 0.5" in r.stderr
    assert "Traceback" not in r.stderr


def test_train_refuses_to_overwrite_a_run(trained: Path) -> None:
    r = run_cli("train", "run.yaml", cwd=trained)
    assert r.returncode == 2
    assert "run already holds a run" in r.stderr and "--resume" in r.stderr


def test_a_workspace_moved_whole_still_finds_its_dataset(tmp_path: Path, tiny_llama: Path) -> None:
    """Runs record their dataset's absolute path and its path relative to the run: a project folder moved
    (or copied to another machine) whole evaluates and monitors against its own copy of the data (still
    checked against the recorded split hashes: tests/unit/train/test_trust.py)."""
    from tuneforge.artifacts import RunDir
    from tuneforge.monitor.reference import load_reference

    before = tmp_path / "before"
    before.mkdir()
    write_csv(before / "data.csv", sentiment_rows(90))
    (before / "run.yaml").write_text(CONFIG.format(model=tiny_llama))
    r = run_cli(
        "train", "run.yaml", "train.max_steps=2", "train.warmup_steps=0", "train.eval_every=0", cwd=before
    )
    assert r.returncode == 0, r.stderr
    after = before.rename(tmp_path / "after")
    recorded = json.loads((after / "run" / "manifest.json").read_text())["dataset"]
    assert recorded["relative_path"] == "../ds" and not Path(recorded["path"]).exists()

    assert RunDir(after / "run").dataset_path() == str((after / "ds").resolve())
    r = run_cli("evaluate", "run", cwd=after)
    assert r.returncode == 0, r.stderr
    assert json.loads((after / "run" / "eval" / "test.json").read_text())["n"] == 12
    assert load_reference(RunDir(after / "run"), max_reference=100).dataset == (after / "ds").resolve()

    # A run trained before runs recorded the relative path: the stale absolute one is named, not "prepare".
    manifest = json.loads((after / "run" / "manifest.json").read_text())
    del manifest["dataset"]["relative_path"]
    (after / "run" / "manifest.json").write_text(json.dumps(manifest))
    r = run_cli("evaluate", "run", cwd=after)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert (
        f"the dataset folder that run run trained on, {recorded['path']}, is gone: the run or its" in r.stderr
    )
    assert (
        "fix: point at the prepared dataset where it is now: tuneforge evaluate run data.path=DIR" in r.stderr
    )
    r = run_cli("evaluate", "run", "data.path=ds", "eval.max_examples=5", cwd=after)
    assert r.returncode == 0, r.stderr
    assert json.loads((after / "run" / "eval" / "test-first5.json").read_text())["n"] == 5
    # and the report it wrote describes that dataset, saying why it is not the recorded one
    data = (after / "run" / "report.md").read_text().split("\n## Data\n")[1].split("\n## ")[0]
    assert f"Prepared dataset {(after / 'ds').resolve()} (the dataset folder that run run trained on" in data
    assert "this is the folder the evaluation was pointed at" in data and "nothing to say" not in data
