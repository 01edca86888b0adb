"""Helpers for the training-loop tests: a tiny run config, a stop at a given step, results to compare."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.tiny import sentiment_rows, write_csv
from tuneforge.artifacts import RunDir
from tuneforge.config import RunConfig, config_from_dict

# Fields of a metrics record that measure the wall clock, so they differ between two identical runs.
CLOCK_FIELDS = ("tokens_per_s", "time_s")


def config_dict(tmp_path: Path, model: Path, *, name: str = "run", rows: int = 40) -> dict[str, Any]:
    """A causal-LM LoRA run on the tiny Llama: 28 training examples, 7 steps per epoch, 2 epochs."""
    data = tmp_path / "data.csv"
    if not data.exists():
        write_csv(data, sentiment_rows(rows))
    return {
        "data": {
            "path": str(data),
            "format": "classification",
            "output_dir": str(tmp_path / "dataset"),
            "min_examples": 5,
            "prompt_template": "{text}",
        },
        "model": {"name": str(model), "max_length": 64},
        "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.1},
        "train": {
            "output_dir": str(tmp_path / name),
            "epochs": 2,
            "batch_size": 2,
            "gradient_accumulation_steps": 2,
            "learning_rate": 5e-3,
            "weight_decay": 0.01,
            "warmup_steps": 2,
            "eval_every": 4,
            "save_every": 3,
            "keep_checkpoints": 2,
            "seed": 7,
            "progress": False,
        },
    }


def make_config(tmp_path: Path, model: Path, overrides: dict[str, Any] | None = None, **kw: Any) -> RunConfig:
    raw = config_dict(tmp_path, model, **kw)
    for key, value in (overrides or {}).items():
        if "." not in key:  # a whole section
            raw[key] = value
            continue
        section, field = key.split(".", 1)
        raw.setdefault(section, {})[field] = value
    return config_from_dict(raw)


def stop_with_signal_at(monkeypatch: pytest.MonkeyPatch, step: int, sig: int = signal.SIGTERM) -> None:
    """Send this process a real signal while optimizer step `step` runs (as a scheduler or Ctrl-C would)."""
    from tuneforge.train.loop import Loop

    real_step = Loop.step

    def step_then_signal(self: Loop, state: Any) -> Any:
        if state.step + 1 == step:
            os.kill(os.getpid(), sig)
        return real_step(self, state)

    monkeypatch.setattr(Loop, "step", step_then_signal)


def interrupted_at(cfg: RunConfig, monkeypatch: pytest.MonkeyPatch, step: int) -> RunDir:
    """Run `cfg` until a SIGTERM during step `step` stops it; the run directory it leaves behind."""
    from tuneforge.errors import TuneforgeError
    from tuneforge.train import train

    stop_with_signal_at(monkeypatch, step)
    with pytest.raises(TuneforgeError):
        train(cfg)
    monkeypatch.undo()
    return RunDir(Path(cfg.train.output_dir))


def uninterrupted(tmp: Path, model: Path) -> RunDir:
    """The reference LoRA run: uninterrupted, saving only at the end (checkpoints must not change results)."""
    from tuneforge.train import train

    return train(make_config(tmp, model, {"train.save_every": 0}))


def final_weights(run: RunDir) -> dict[str, torch.Tensor]:
    files = sorted(run.final.glob("*.safetensors"))
    assert files, f"no weights in {run.final}"
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def records(run: RunDir) -> list[dict[str, Any]]:
    """metrics.jsonl without the wall-clock fields."""
    return [{k: v for k, v in r.items() if k not in CLOCK_FIELDS} for r in run.metrics()]


def checkpoint_steps(run: RunDir) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in run.checkpoints.glob("step-*"))


def read_state(checkpoint: Path) -> dict[str, Any]:
    return dict(json.loads((checkpoint / "state.json").read_text())["train"])
