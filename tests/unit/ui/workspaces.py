"""Workspaces for the UI tests: one real chat run (trained, evaluated, reported, sheets exported) and
hand-made runs in every state a reader can meet (training, crashed, half-written)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.tiny import write_jsonl

CONFIG = """\
data: {{path: {root}/chat.jsonl, output_dir: {root}/data/chat}}
model: {{name: {model}, task: causal-lm, max_length: 96}}
method: {{name: lora, r: 4}}
train: {{output_dir: {root}/runs/chat, max_steps: 3, batch_size: 4, learning_rate: 1.0e-2, eval_every: 2,
        save_every: 0, progress: false}}
eval: {{max_examples: 6, bootstrap: 100, max_new_tokens: 6, compare_base: true}}
"""


def real_chat_run(root: Path, model: Path) -> Path:
    """root/runs/chat: trained 3 steps on the tiny Llama, evaluated against its base, reported, 2 sheets."""
    from tuneforge.config import load_config
    from tuneforge.evaluation import evaluate_run
    from tuneforge.evaluation.human import export_sheets
    from tuneforge.train import train

    colours = ["red", "blue", "green", "amber", "violet"]
    rows = [{"prompt": f"say {c} {i}", "response": f"{c} {c} ok"} for i, c in enumerate(colours * 8)]
    rows.append({"prompt": "<script>alert(1)</script> {{7*7}}", "response": "<b>bold</b> {{7*7}}"})
    write_jsonl(root / "chat.jsonl", rows)
    (root / "run.yaml").write_text(CONFIG.format(root=root, model=model))
    cfg, source = load_config(root / "run.yaml")
    run = train(cfg, source).path
    evaluate_run(run, report=True)
    export_sheets(run, raters=2, seed=3)
    return run


def fake_run(
    folder: Path,
    *,
    status: str = "completed",
    metrics: list[dict[str, Any]] | None = None,
    pid: int | None = None,
    manifest: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
) -> Path:
    """A run directory as the train stage leaves it, without training (lists and states only)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text("model: {name: tiny}\n")
    m = {
        "kind": "tuneforge.run",
        "status": status,
        "task": "classification",
        "method": "lora",
        "base_model": "tiny-bert",
        "step": len(metrics or []),
    } | (manifest or {})
    (folder / "manifest.json").write_text(json.dumps(m))
    if metrics is not None:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    if pid is not None:
        (folder / "train.lock").write_text(f"{pid}\n")
    if evaluation is not None:
        (folder / "eval").mkdir(exist_ok=True)
        (folder / "eval" / f"{evaluation['split']}.json").write_text(json.dumps(evaluation))
    return folder


def step(i: int, loss: float) -> dict[str, Any]:
    return {"step": i, "loss": loss, "lr": 1e-3, "tokens_per_s": 100.0 + i, "time_s": float(i)}


def dead_pid() -> int:
    """A PID no process has now (the highest allowed one, checked)."""
    pid = int(Path("/proc/sys/kernel/pid_max").read_text()) - 1
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


CLASSIFIER = """\
data: {{path: {root}/reviews.csv, output_dir: {root}/data/reviews}}
model: {{name: {model}, task: classification, max_length: 32}}
method: {{name: full}}
train: {{output_dir: {root}/runs/sentiment, max_steps: 4, batch_size: 8, learning_rate: 1.0e-3, eval_every: 0,
        save_every: 0, progress: false}}
eval: {{max_examples: 8, bootstrap: 50, compare_base: false, baseline: false}}
"""


def real_classification_run(root: Path, model: Path) -> Path:
    """root/runs/sentiment: the tiny BERT trained 4 steps on the keyword sentiment rows (3 labels)."""
    from tests.tiny import sentiment_rows, write_csv
    from tuneforge.config import load_config
    from tuneforge.train import train

    write_csv(root / "reviews.csv", sentiment_rows(60))
    (root / "classifier.yaml").write_text(CLASSIFIER.format(root=root, model=model))
    cfg, source = load_config(root / "classifier.yaml")
    return train(cfg, source).path
