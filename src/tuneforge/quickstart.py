"""`tuneforge quickstart`: the whole chain on the embedded defaults (demo tweets, SmolLM2-135M, LoRA).

It prepares the data, teaches the model to answer with the sentiment label, and evaluates the tuned model
against the untuned base on the same test examples. The settings are sized to finish in about ten minutes on
two CPU cores; `--fast` runs the same chain on a handful of examples (for tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.artifacts import read_json
from tuneforge.config import RunConfig, config_from_dict, load_config

QUICKSTART: dict[str, Any] = {
    "data": {
        "path": "builtin:demo-tweets",
        "format": "classification",
        "text_column": "text",
        "label_column": "sentiment",
        "on_error": "drop",
        "clean": {"strip_html": True},
    },
    "model": {"name": "builtin:smollm2-135m-instruct", "task": "causal-lm", "max_length": 160},
    "method": {"name": "lora", "r": 16, "alpha": 32, "dropout": 0.05},
    "train": {
        "output_dir": "runs/quickstart",
        "max_steps": 80,
        "batch_size": 8,
        "learning_rate": 4e-4,
        "warmup_ratio": 0.05,
        "weight_decay": 0.01,
        "eval_every": 20,
        "eval_max_examples": 48,
        "save_every": 40,
        "seed": 42,
    },
    "eval": {"split": "test", "max_examples": 200, "batch_size": 24, "compare_base": True},
}

FAST = {
    "train.max_steps": 3,
    "train.eval_every": 2,
    "train.save_every": 2,
    "train.eval_max_examples": 8,
    "eval.max_examples": 12,
}


def quickstart_config(fast: bool, overrides: list[str]) -> RunConfig:
    cfg = config_from_dict(QUICKSTART)
    extra = [f"{k}={v}" for k, v in FAST.items()] if fast else []
    if extra or overrides:
        import tempfile

        import yaml

        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump(cfg.to_dict(), f)
        try:
            cfg, _ = load_config(f.name, extra + overrides)
        finally:
            Path(f.name).unlink()
    return cfg


def run_quickstart(fast: bool = False, overrides: list[str] | None = None) -> dict[str, Any]:
    from tuneforge.evaluation import evaluate_run
    from tuneforge.train import train

    cfg = quickstart_config(fast, overrides or [])
    run = train(cfg, overwrite=True)
    eval_path = evaluate_run(run.path)
    return {"run": run, "eval": read_json(eval_path), "eval_path": eval_path}
