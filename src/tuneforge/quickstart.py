"""`tuneforge quickstart`: the whole chain on the embedded defaults (demo tweets, SmolLM2-135M, LoRA).

It prepares the data, teaches the model to answer with the sentiment label, and evaluates the tuned model
against the untuned base and the classical baselines on the same test examples.
The settings are sized to finish in about five minutes on two CPU cores; `--fast` runs the same chain on a
handful of examples (for tests).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
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
    # Sized for five minutes on two CPU cores (README, quickstart): 32 steps of 8 at a high LoRA learning
    # rate reach nearly what 80 steps at 4e-4 did (+0.45 macro-F1 over the base against +0.48; 24 steps:
    # +0.26); the few-shot pass (45 s; the untuned base prompted with training examples, weaker than
    # zero-shot for this small model) is left to `tuneforge evaluate runs/quickstart eval.few_shot=auto`.
    "train": {
        "output_dir": "runs/quickstart",
        "max_steps": 32,
        "batch_size": 8,
        "learning_rate": 1e-3,
        "warmup_ratio": 0.05,
        "weight_decay": 0.01,
        "eval_every": 16,
        "eval_max_examples": 32,
        "save_every": 16,
        "seed": 42,
    },
    "eval": {
        "split": "test",
        "max_examples": 200,
        "batch_size": 24,
        "compare_base": True,
        "few_shot": 0,
    },
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


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _took(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def expected_seconds(cfg: RunConfig, step_s: float) -> tuple[float, float]:
    """(training, evaluation) wall time from the estimate's seconds per training step.

    Evaluation is forward passes only: about a third of a training step's work per example (forward and
    backward cost about three forwards; the frozen base's backward is cheaper under LoRA, so this is rough).
    It covers the validations during training and, on the test examples, the tuned and base models and the
    base prompted with examples (eval.few_shot): its examples are a prefix run once for all questions
    (evaluation/scores.py), so it costs about what the zero-shot base does (measured: 1.08 times).
    """
    t = cfg.train
    steps = t.max_steps or 0
    validations = (steps // t.eval_every if t.eval_every else 0) + 1
    passes = 2 + (cfg.eval.compare_base and cfg.eval.few_shot != 0)
    examples = validations * (t.eval_max_examples or 0) + passes * (cfg.eval.max_examples or 0)
    return step_s * steps, step_s / max(t.batch_size, 1) / 3 * examples


def run_quickstart(
    fast: bool = False, overrides: list[str] | None = None, *, say: Callable[[str], None] = _say
) -> dict[str, Any]:
    """The chain in four stages, each with one line when it ends, and a time estimate before the training."""
    from tuneforge import builtin
    from tuneforge.data import prepare_dataset
    from tuneforge.evaluation import evaluate_run
    from tuneforge.models.estimate import check_fits, fmt_seconds
    from tuneforge.train import train

    cfg = quickstart_config(fast, overrides or [])
    took: dict[str, float] = {}
    start = time.monotonic()
    say(
        f"quickstart: {cfg.data.path} -> {cfg.model.name} + {cfg.method.name} for {cfg.train.max_steps} "
        f"steps -> base vs tuned on {cfg.eval.max_examples} test examples"
    )
    if builtin.is_builtin(cfg.model.name):  # converted once into the user cache; later runs find it
        builtin.resolve(cfg.model.name.removeprefix(builtin.PREFIX))
    took["model"] = time.monotonic() - start
    say(f"[1/4] model ready ({_took(took['model'])})")

    mark = time.monotonic()
    dataset = prepare_dataset(cfg.data, model=cfg.model)
    took["data"] = time.monotonic() - mark
    rows = sum(dataset.manifest.get("splits", {}).values())
    say(f"[2/4] data: {rows:,} examples in {dataset.path} ({_took(took['data'])})")

    est = check_fits(cfg, dataset.manifest, where="quickstart", measure_flops=True)
    if est is not None:
        train_s, eval_s = expected_seconds(cfg, est.step_s)
        say(
            f"estimated time on {est.device.name}: about {fmt_seconds(train_s + eval_s)} more "
            f"({fmt_seconds(train_s)} training, {fmt_seconds(eval_s)} evaluating; rough, from FLOPs and "
            "this machine's measured throughput)"
        )
    mark = time.monotonic()
    run = train(cfg, overwrite=True)
    took["train"] = time.monotonic() - mark
    say(f"[3/4] trained: {run.final} ({_took(took['train'])})")

    mark = time.monotonic()
    eval_path = evaluate_run(run.path)
    took["evaluate"] = time.monotonic() - mark
    which = "tuned, base and few-shot base" if cfg.eval.few_shot != 0 else "tuned and base"
    say(f"[4/4] evaluated {which}: {eval_path} ({_took(took['evaluate'])})")
    total = time.monotonic() - start
    say(f"quickstart took {_took(total)}: " + " · ".join(f"{k} {_took(v)}" for k, v in took.items()))
    return {"run": run, "eval": read_json(eval_path), "eval_path": eval_path, "seconds": took}
