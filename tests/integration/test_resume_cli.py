"""`tuneforge train` stopped for real, then `--resume`: SIGTERM, `kill -9` mid-checkpoint, changed config."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.unit.train.tiny_runs import (
    assert_same_tensors,
    checkpoint_steps,
    config_dict,
    final_weights,
    make_config,
    records,
    stop_with_signal_at,
    uninterrupted,
)
from tuneforge.artifacts import RunDir
from tuneforge.errors import TuneforgeError
from tuneforge.train import train
from tuneforge.train.checkpoint import PAUSE_ENV


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> RunDir:
    return uninterrupted(tmp_path_factory.mktemp("reference"), tiny_llama)


def _config_file(tmp_path: Path, model: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config_dict(tmp_path, model)))
    return path


def test_kill_9_during_a_checkpoint_then_resume_is_bit_identical(
    tmp_path: Path, tiny_llama: Path, reference: RunDir, cli
) -> None:
    config = _config_file(tmp_path, tiny_llama)
    run = RunDir(tmp_path / "run")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuneforge", "train", str(config)],
        cwd=tmp_path,
        env={**os.environ, PAUSE_ENV: "6:120"},  # step 6's checkpoint stops half-written
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not any(run.checkpoints.glob(".step-00000006.*/weights.safetensors")):
        assert proc.poll() is None and time.monotonic() < deadline, (
            "the run never reached step 6's checkpoint"
        )
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL

    assert checkpoint_steps(run) == [3, 4]  # complete ones; step 6 is only a temporary folder
    assert [p.name.split(".")[1] for p in run.checkpoints.iterdir() if p.name.startswith(".")] == [
        "step-00000006"
    ]
    assert [r["step"] for r in run.metrics() if "split" not in r] == [1, 2, 3, 4, 5, 6]

    done = cli("train", str(config), "--resume")  # no manual clean-up
    assert done.returncode == 0, done.stderr
    assert f"resuming from {run.checkpoints / 'step-00000004'}" in done.stderr
    assert_same_tensors(final_weights(run), final_weights(reference))
    assert records(run) == records(reference)  # steps 5 and 6 redone and logged once
    assert not [p for p in run.checkpoints.iterdir() if p.name.startswith(".")]
    assert run.manifest["status"] == "completed"


def test_cli_resume_with_a_changed_config_is_refused(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch, cli
) -> None:
    config = _config_file(tmp_path, tiny_llama)
    stop_with_signal_at(monkeypatch, 2)
    with pytest.raises(TuneforgeError):
        train(make_config(tmp_path, tiny_llama))
    monkeypatch.undo()
    run = RunDir(tmp_path / "run")
    before = sorted(p.name for p in run.path.rglob("*"))

    done = cli("train", str(config), "train.learning_rate=0.001", "train.save_every=5", "--resume")

    assert done.returncode == 2
    assert done.stderr.endswith(
        f"error: {run.config_path}: the config or data differ from what this run started with, so "
        "resuming would not continue the same training:\n"
        "  train.learning_rate: 0.005 -> 0.001\n"
        "  fix: resume with the original config and data, or pass --force to continue with the new ones\n"
    )
    assert sorted(p.name for p in run.path.rglob("*")) == before
    assert "trainable parameters" not in done.stderr  # refused before the model was loaded


def test_sigterm_checkpoints_exits_3_and_resume_is_bit_identical(tmp_path: Path, tiny_llama: Path) -> None:
    """A real signal at a moment the process does not choose: it ends its step, checkpoints and exits 3."""
    longer = {"train.epochs": 4}  # 28 steps: time enough to signal a run that is busy training
    raw = config_dict(tmp_path, tiny_llama)
    raw["train"]["epochs"] = 4
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    run = RunDir(tmp_path / "run")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuneforge", "train", str(config)],
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    # Polled: what is tested is a signal from outside, at whatever point the run is in by then.
    while not (run.metrics_path.is_file() and run.metrics_path.read_text().count('"epoch"') >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, "the run never reached step 2"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)

    assert proc.returncode == 3, err
    found = re.search(
        r"error: stopped by SIGTERM after step (\d+); checkpoint step-(\d+) holds step (\d+)", err
    )
    assert found, err
    step = int(found.group(1))
    assert 2 <= step < 28 and int(found.group(2)) == int(found.group(3)) == step
    assert f"fix: continue with: tuneforge train {config} --resume" in err
    assert "SIGTERM: finishing the current step and saving a checkpoint" in err
    assert checkpoint_steps(run)[-1] == step
    assert run.manifest["status"] == "interrupted"
    assert [r["step"] for r in run.metrics() if "split" not in r] == list(range(1, step + 1))

    cfg = make_config(tmp_path, tiny_llama, longer)
    train(cfg, resume=True)
    reference = train(make_config(tmp_path, tiny_llama, {**longer, "train.save_every": 0}, name="reference"))
    assert_same_tensors(final_weights(run), final_weights(reference))
    assert records(run) == records(reference)
    assert run.manifest["status"] == "completed"
