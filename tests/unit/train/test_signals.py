"""SIGTERM/SIGINT to a real `tuneforge train` process: finish the step, checkpoint, exit 3, resume exactly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.train.tiny_runs import (
    assert_same_tensors,
    checkpoint_steps,
    config_dict,
    final_weights,
    make_config,
    records,
)
from tuneforge.artifacts import RunDir
from tuneforge.train import train
from tuneforge.train.checkpoint import PAUSE_ENV

LONGER = {"train.epochs": 4}  # 28 steps: time enough to signal a run that is busy training


def _config_file(tmp_path: Path, model: Path, overrides: dict[str, Any]) -> Path:
    raw = config_dict(tmp_path, model)
    for key, value in overrides.items():
        section, field = key.split(".", 1)
        raw[section][field] = value
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _start(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tuneforge", "train", str(config), *args],
        cwd=config.parent,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(condition: Any, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) first:\n{proc.communicate()[1]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.005)


def _trained_steps(run: RunDir) -> int:
    if not run.metrics_path.is_file():
        return 0
    return sum(1 for line in run.metrics_path.read_text().splitlines() if '"epoch"' in line)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> RunDir:
    tmp = tmp_path_factory.mktemp("reference")
    return train(make_config(tmp, tiny_llama, {**LONGER, "train.save_every": 0}))


def _stop(config: Path, run: RunDir, sig: int) -> tuple[int, str]:
    """Start a run, signal it once it is training, and return the step it stopped after and its stderr."""
    proc = _start(config)
    _wait_for(lambda: _trained_steps(run) >= 2, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    name = signal.Signals(sig).name
    found = re.search(
        rf"error: stopped by {name} after step (\d+); checkpoint step-(\d+) holds step (\d+)", err
    )
    assert found, err
    step = int(found.group(1))
    assert 2 <= step < 28
    assert int(found.group(2)) == int(found.group(3)) == step
    assert f"fix: continue with: tuneforge train {config} --resume" in err
    assert f"{name}: finishing the current step and saving a checkpoint" in err
    assert checkpoint_steps(run)[-1] == step
    assert run.manifest["status"] == "interrupted"
    assert _trained_steps(run) == step  # it stopped right after the step it was in
    return step, err


def test_sigterm_checkpoints_exits_3_and_resume_is_bit_identical(
    tmp_path: Path, tiny_llama: Path, reference: RunDir
) -> None:
    config = _config_file(tmp_path, tiny_llama, LONGER)
    run = RunDir(tmp_path / "run")
    step, _ = _stop(config, run, signal.SIGTERM)

    resumed = _start(config, "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"resuming from {run.checkpoints / f'step-{step:08d}'}" in err
    assert_same_tensors(final_weights(run), final_weights(reference))
    assert records(run) == records(reference)
    assert run.manifest["status"] == "completed"


def test_sigint_is_handled_like_sigterm(tmp_path: Path, tiny_llama: Path) -> None:
    config = _config_file(tmp_path, tiny_llama, LONGER)
    _stop(config, RunDir(tmp_path / "run"), signal.SIGINT)


def test_a_second_signal_stops_at_once_without_a_broken_checkpoint(tmp_path: Path, tiny_llama: Path) -> None:
    config = _config_file(tmp_path, tiny_llama, {})
    run = RunDir(tmp_path / "run")
    proc = _start(config, env={PAUSE_ENV: "6:60"})  # the checkpoint of step 6 takes a minute
    _wait_for(lambda: any(run.checkpoints.glob(".step-00000006.*/weights.safetensors")), proc)
    proc.send_signal(signal.SIGTERM)
    time.sleep(1)  # two separate signals, as from an impatient user
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)

    assert proc.returncode == 130, err
    assert (
        "error: stopped at once by a second signal after step 6; the newest checkpoint is step-00000004"
        in err
    )
    assert checkpoint_steps(run) == [3, 4]  # the half-written step 6 is gone, the complete ones untouched
    assert not [p.name for p in run.checkpoints.iterdir() if p.name.startswith(".")]
    assert run.manifest["status"] == "interrupted"
