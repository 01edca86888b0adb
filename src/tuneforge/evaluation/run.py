"""`tuneforge evaluate`: a run (and optionally its untuned base) → metrics in RUN_DIR/eval/<split>.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.artifacts import SPLITS, DatasetDir, RunDir, write_json_atomic, write_jsonl
from tuneforge.config import RunConfig, with_overrides
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation.metrics import classification_metrics, regression_metrics
from tuneforge.evaluation.predict import head_predictions, lm_loss, score_labels
from tuneforge.models import load_model, load_tokenizer
from tuneforge.models.encode import encode_for_task
from tuneforge.models.loading import load_adapter, run_base_path
from tuneforge.train import reload_config


def load_tuned(run: RunDir, cfg: RunConfig) -> tuple[Any, Any]:
    """The trained model of a run: base + PEFT adapter, or the full fine-tuned folder."""
    manifest = run.manifest
    if manifest.get("status") != "completed" or not run.final.is_dir():
        raise TuneforgeError(
            f"run {run.path} has not finished training (status: {manifest.get('status', 'unknown')})",
            fix=f"finish it with: tuneforge train {run.config_path} --resume",
        )
    tok = load_tokenizer(cfg.model, str(run.final))
    labels = list(manifest.get("labels") or [])
    if manifest.get("saves_adapter", True):
        base = load_model(
            cfg.model, labels=labels, path=run_base_path(manifest), pad_token_id=tok.pad_token_id
        )
        model: Any = load_adapter(base, run.final)
    else:
        model = load_model(cfg.model, labels=labels, path=str(run.final), pad_token_id=tok.pad_token_id)
    return model, tok


def load_base(run: RunDir, cfg: RunConfig) -> tuple[Any, Any]:
    manifest = run.manifest
    path = run_base_path(manifest)
    tok = load_tokenizer(cfg.model, path)
    labels = list(manifest.get("labels") or [])
    return load_model(cfg.model, labels=labels, path=path, pad_token_id=tok.pad_token_id), tok


def evaluate_model(
    model: Any, tok: Any, records: list[dict[str, Any]], cfg: RunConfig, fmt: str, labels: list[str]
) -> tuple[dict[str, Any], list[Any]]:
    """Metrics and per-example predictions of one model on one list of records."""
    task, bs, max_len = cfg.model.task, cfg.eval.batch_size, cfg.model.max_length
    texts = [str(r.get("text", "")) for r in records]
    if fmt == "classification" and task in ("classification", "causal-lm"):
        if task == "classification":
            ids = head_predictions(model, tok, texts, max_len, bs)
        else:
            ids = score_labels(model, tok, texts, labels, cfg.data.prompt_template, max_len, bs)
        pred = [labels[i] for i in ids]
        return classification_metrics([str(r["label"]) for r in records], pred, labels), pred
    if fmt == "regression":
        values = head_predictions(model, tok, texts, max_len, bs)
        return regression_metrics([float(r["label"]) for r in records], values), values
    examples, _ = encode_for_task(
        records, tok, task=task, fmt=fmt, labels=labels, max_length=max_len, template=cfg.data.prompt_template
    )
    return lm_loss(model, examples, int(tok.pad_token_id), bs), []


def evaluate_run(
    run_dir: str | Path,
    *,
    split: str | None = None,
    compare_base: bool | None = None,
    max_examples: int | None = None,
    overrides: list[str] | None = None,
) -> Path:
    """Evaluate a finished run on a split; returns the path of the written eval JSON.

    `overrides` (`eval.key=value`) apply on top of the config the run was trained with.
    """
    run = RunDir.open(run_dir)
    cfg = with_overrides(reload_config(run), overrides or [], sections=("eval",), command="evaluate")
    split = split or cfg.eval.split
    if split not in SPLITS:  # it names a file: only the dataset's own splits
        raise TuneforgeError(
            f"unknown split {split!r}", where="--split", fix="use one of: " + ", ".join(SPLITS)
        )
    compare = cfg.eval.compare_base if compare_base is None else compare_base
    limit = max_examples or cfg.eval.max_examples
    dataset = DatasetDir.open(run.manifest.get("dataset", {}).get("path", cfg.data.path or ""))
    run.check_split_files(dataset)  # the data the run trained on, not a re-split under the same path
    records = dataset.records(split)[:limit]
    fmt, labels = dataset.format, dataset.labels
    result: dict[str, Any] = {
        "split": split,
        "n": len(records),
        "task": cfg.model.task,
        "format": fmt,
        "labels": labels,
        "run": str(run.path),
    }
    from transformers import set_seed

    # A classification head of the untuned base starts random; seeding makes its baseline reproducible.
    set_seed(cfg.train.seed)
    model, tok = load_tuned(run, cfg)
    result["tuned"], tuned_pred = evaluate_model(model, tok, records, cfg, fmt, labels)
    del model
    base_pred: list[Any] = []
    if compare:
        set_seed(cfg.train.seed)
        base, btok = load_base(run, cfg)
        result["base"], base_pred = evaluate_model(base, btok, records, cfg, fmt, labels)
    out = run.eval_dir / f"{split}.json"
    write_json_atomic(out, result)
    if tuned_pred:
        rows = []
        for i, r in enumerate(records):
            row = {**r, "tuned": tuned_pred[i]}
            if base_pred:
                row["base"] = base_pred[i]
            rows.append(row)
        tmp = run.eval_dir / f".{split}.predictions.jsonl.tmp"
        write_jsonl(tmp, rows)
        tmp.replace(run.eval_dir / f"{split}.predictions.jsonl")
    return out
