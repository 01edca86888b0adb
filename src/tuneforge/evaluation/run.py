"""`tuneforge evaluate`: a run (and optionally its untuned base) → RUN/eval/<name>.json and its predictions.

The name is the split, or `<split>-first<N>` for the first N examples only (evals.py), so a short evaluation
never replaces a full one.

The JSON holds each model's metrics, bootstrap intervals, the paired base-vs-tuned tests with a verdict, the
classical baselines and the few-shot base (few_shot.py), calibration and per-group tables; predictions.jsonl
holds the rows behind every number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.artifacts import SPLITS, DatasetDir, RunDir, atomic_file, write_json_atomic
from tuneforge.config import RunConfig, dataset_override, with_overrides
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation.baseline import compare_baselines
from tuneforge.evaluation.evals import clean, evaluation_name, evaluation_path, predictions_path
from tuneforge.evaluation.fairness import fairness_section
from tuneforge.evaluation.few_shot import few_shot_baseline, skip_reason
from tuneforge.evaluation.guard import check_adapter_applied, check_differs, probe_batch, probe_logits
from tuneforge.evaluation.intervals import intervals_and_tests
from tuneforge.evaluation.model_eval import ModelEval, evaluate_model, prompt_and_reference
from tuneforge.models.encode import encoder, pack_text
from tuneforge.models.runs import check_finished, load_base, load_tuned
from tuneforge.models.threads import apply_threads
from tuneforge.train import reload_config


def load_reference(run: RunDir, cfg: RunConfig) -> tuple[Any, Any]:
    """A whole-model DPO run's reference: its parent SFT run's model (merged adapter or whole), or its base.

    A full-weight parent is already this run's base; an adapter parent's model is its base + adapter.
    """
    parent = run.manifest.get("parent") or {}
    if parent.get("saves_adapter") and RunDir.is_run(Path(parent["run"])):
        parent_run = RunDir(Path(parent["run"]))
        return load_tuned(parent_run, reload_config(parent_run))
    return load_base(run, cfg)


def _probe_inputs(
    tok: Any, records: list[dict[str, Any]], cfg: RunConfig, fmt: str, labels: list[str]
) -> Any:
    head = records[:4]
    if cfg.model.task == "causal-lm" and fmt == "text":
        ids = [e["input_ids"] for e in pack_text([r["text"] for r in head], tok, cfg.model.max_length)]
    elif cfg.model.task == "causal-lm":
        encode = encoder(
            tok,
            task="causal-lm",
            fmt=fmt,
            labels=labels,
            max_length=cfg.model.max_length,
            template=cfg.data.prompt_template,
        )
        # A preference pair probes with its chosen side.
        ids = [(e.get("chosen") or e)["input_ids"] for e in map(encode, head)]
    else:
        ids = [
            list(tok(str(r.get("text", "")), truncation=True, max_length=cfg.model.max_length)["input_ids"])
            for r in head
        ]
    return probe_batch(ids, int(tok.pad_token_id))


def _progress(label: str) -> Any:
    """A stderr progress callback for generation (silent when stderr is not a terminal)."""
    import sys

    if not sys.stderr.isatty():
        return None

    def report(done: int, total: int) -> None:
        print(
            f"\r{label}: {done}/{total} answers",
            end="" if done < total else "\n",
            file=sys.stderr,
            flush=True,
        )

    return report


def group_columns(records: list[dict[str, Any]], cfg: RunConfig) -> dict[str, list[str]]:
    """Group value per record for each grouping: data.group_column's `group` field and eval.group_columns."""
    names = (["group"] if any("group" in r for r in records) else []) + list(cfg.eval.group_columns)
    out = {}
    for name in dict.fromkeys(names):
        missing = [i for i, r in enumerate(records) if r.get(name) is None]
        if name != "group" and len(missing) == len(records):
            raise TuneforgeError(
                f"no record of the split has a field '{name}'",
                where="eval.group_columns",
                fix="name fields the prepared records carry (set data.group_column to keep a column)",
            )
        out[name] = [str(r.get(name, "(missing)")) for r in records]
    return out


def _check_threshold_optimizer(cfg: RunConfig, labels: list[str], groups: dict[str, list[str]]) -> None:
    if cfg.eval.threshold_optimizer == "off":
        return
    if cfg.model.task != "classification" or len(labels) != 2 or not groups:
        raise TuneforgeError(
            "the threshold optimizer needs a classification head with two labels and a group column "
            f"(this run: task {cfg.model.task}, {len(labels)} labels, "
            f"{'groups ' + ', '.join(groups) if groups else 'no groups'})",
            where="eval.threshold_optimizer",
            fix="set it to off, or give a binary classification head data.group_column or eval.group_columns",
        )


def _threshold_optimizer(
    cfg: RunConfig,
    dataset: DatasetDir,
    model: Any,
    tok: Any,
    labels: list[str],
    records: list[dict[str, Any]],
    tuned: ModelEval,
    groups: dict[str, list[str]],
) -> dict[str, Any] | None:
    """Per-group thresholds fitted on the validation split, applied to the evaluated split (opt-in)."""
    if cfg.eval.threshold_optimizer == "off" or tuned.probs is None:
        return None
    from tuneforge.evaluation.calibration import softmax
    from tuneforge.evaluation.scores import head_logits
    from tuneforge.evaluation.threshold import threshold_optimized

    column = next(iter(groups))
    val = dataset.records("validation")
    texts = [str(r.get("text", "")) for r in val]
    val_p = softmax(
        head_logits(model, tok, texts, cfg.model.max_length, cfg.eval.batch_size, cfg.data.truncation)
    )[:, 1].tolist()
    val_groups = [str(r.get(column, "(missing)")) for r in val]
    test_p = [row[1] for row in tuned.probs]
    gold_val, gold_test = [str(r["label"]) for r in val], [str(r["label"]) for r in records]
    out = threshold_optimized(
        cfg.eval.threshold_optimizer,
        labels,
        (val_p, gold_val, val_groups),
        (test_p, gold_test, groups[column]),
        min_group_size=cfg.eval.min_group_size,
        seed=cfg.eval.seed,
    )
    out["group_column"] = column
    return out


def _rows(
    records: list[dict[str, Any]],
    cfg: RunConfig,
    fmt: str,
    labels: list[str],
    tuned: ModelEval,
    base: ModelEval | None,
    baselines: dict[str, Any],
) -> list[dict[str, Any]]:
    rows = []
    for i, r in enumerate(records):
        if fmt in ("classification", "regression"):
            inp, ref = str(r.get("text", "")), r.get("label")
        else:
            prompt, ref = prompt_and_reference(r, labels, cfg.data.prompt_template)
            inp = prompt[-1]["content"] if prompt else ""
        # The whole record goes under "record": its own fields (an instruction's "input") keep their names.
        row: dict[str, Any] = {"id": i, "input": inp, "reference": ref}
        row.update({k: r[k] for k in ("label", "group") if k in r})
        row["tuned"] = tuned.predictions[i] if tuned.predictions else None
        scores = {"tuned": {k: v[i] for k, v in tuned.per_example.items()}}
        if base is not None:
            row["base"] = base.predictions[i] if base.predictions else None
            scores["base"] = {k: v[i] for k, v in base.per_example.items()}
        if baselines:
            row["baselines"] = {name: b["predictions"][i] for name, b in baselines.items()}
        row["scores"] = scores
        if tuned.probs is not None:
            probs = {"tuned": dict(zip(labels, tuned.probs[i], strict=True))}
            if base is not None and base.probs is not None:
                probs["base"] = dict(zip(labels, base.probs[i], strict=True))
            row["probabilities"] = probs
        row["record"] = r
        rows.append(row)
    return rows


def evaluate_run(
    run_dir: str | Path,
    *,
    split: str | None = None,
    compare_base: bool | None = None,
    max_examples: int | None = None,
    overrides: list[str] | None = None,
    report: bool = True,
) -> Path:
    """Evaluate a finished run on a split; returns the path of the written eval JSON.

    `overrides` (`eval.key=value`) apply on top of the config the run was trained with; `data.path=DIR`
    points at the run's prepared dataset where it is now.
    """
    import json

    run = RunDir.open(run_dir)
    pointed, overrides = dataset_override(overrides)
    cfg = with_overrides(reload_config(run), overrides, sections=("eval",), command="evaluate")
    split = split or cfg.eval.split
    if split not in SPLITS:  # it names a file: only the dataset's own splits
        raise TuneforgeError(
            f"unknown split {split!r}", where="--split", fix="use one of: " + ", ".join(SPLITS)
        )
    check_finished(run)
    apply_threads(cfg.eval.num_threads, "eval.num_threads")
    compare = cfg.eval.compare_base if compare_base is None else compare_base
    limit = max_examples or cfg.eval.max_examples
    # A run whose manifest names no dataset is evaluated on its config's data.path, as it trained.
    given = pointed or (None if run.dataset_path() else cfg.data.path)
    dataset = run.open_dataset(given, point=f"tuneforge evaluate {run.path} data.path=DIR")
    run.check_split_files(dataset)  # the data the run trained on, not a re-split under the same path
    everything = dataset.records(split)
    records = everything[:limit]
    name = evaluation_name(split, limit, len(everything))
    fmt, labels = dataset.format, dataset.labels
    if not records and fmt == "preference":  # e.g. human-eval import keeps every pair in train when few
        raise TuneforgeError(
            f"the {split} split of {dataset.path} holds no preference pairs",
            where="--split",
            fix="evaluate a split that has pairs (--split train shows how well the run fits them), "
            "or prepare the pairs with a test fraction in data.splits",
        )
    groups = group_columns(records, cfg)
    _check_threshold_optimizer(cfg, labels, groups)
    if cfg.eval.judge is not None:  # a missing key or rubric is an error before any model is loaded
        from tuneforge.evaluation.judge import api_key, rubric_text

        api_key(cfg.eval.judge)
        rubric_text(cfg.eval.judge.rubric)
    from transformers import set_seed

    from tuneforge.evaluation.baseline import baselines as fit_baselines

    baselines: dict[str, dict[str, Any]] = {}
    if cfg.eval.baseline and fmt in ("classification", "regression") and split != "train":
        baselines = fit_baselines(fmt, dataset.records("train"), records, labels)
    # A classification head of the untuned base starts random; seeding makes its baseline reproducible.
    set_seed(cfg.train.seed)
    model, tok = load_tuned(run, cfg)
    probe = _probe_inputs(tok, records, cfg, fmt, labels) if records else None
    guard: dict[str, Any] = {"checked": False, "reason": "no examples"}
    tuned_probe = None
    if probe is not None:
        guard = check_adapter_applied(model, probe)
        if not guard["checked"]:
            tuned_probe = probe_logits(model, probe)
    tuned = evaluate_model(model, tok, records, cfg, fmt, labels, _progress("tuned"))
    answers: tuple[dict[str, Any], list[dict[str, Any]]] | None = None
    if run.manifest.get("objective") == "dpo":  # what the pairs cannot show: what DPO did to answers
        from tuneforge.evaluation.answers import evaluate_answers

        answers = evaluate_answers(
            run, cfg, split, limit, model, tok, lambda: load_reference(run, cfg), _progress
        )
    post = (
        _threshold_optimizer(cfg, dataset, model, tok, labels, records, tuned, groups)
        if tuned.probs
        else None
    )
    del model
    base: ModelEval | None = None
    few_shot: dict[str, Any] | None = None
    skip = skip_reason(cfg, fmt, split, compare)
    if skip is not None and (cfg.model.task == "causal-lm" or compare):
        few_shot = {"skipped": skip}
    if compare:
        set_seed(cfg.train.seed)
        base_model, btok = load_base(run, cfg)
        if tuned_probe is not None and probe is not None:
            guard = check_differs(tuned_probe, probe_logits(base_model, probe))
        base = evaluate_model(base_model, btok, records, cfg, fmt, labels, _progress("base"))
        if skip is None and records:
            few_shot, shot_eval = few_shot_baseline(
                base_model, btok, dataset.records("train"), records, cfg, fmt, labels, _progress
            )
            if shot_eval is not None:
                baselines[few_shot["name"]] = {
                    "metrics": shot_eval.metrics,
                    "predictions": shot_eval.predictions,
                    "per_example": shot_eval.per_example,
                }
        del base_model
    result: dict[str, Any] = {
        "evaluation": name,
        "split": split,
        "n": len(records),
        "task": cfg.model.task,
        "format": fmt,
        "labels": labels,
        "run": str(run.path),
        # Where the examples came from (split hashes checked): the report names it when the run's own
        # recorded folder is gone and evaluate was pointed at the data (data.path=DIR).
        "dataset": str(dataset.path.resolve()),
        "tuned": tuned.metrics,
    }
    if base is not None:
        result["base"] = base.metrics
    n_boot, seed = cfg.eval.bootstrap, cfg.eval.seed
    gold = [str(r["label"]) for r in records] if fmt == "classification" else None
    evidence = intervals_and_tests(cfg, fmt, labels, records, tuned, base)
    evidence["baselines"] = compare_baselines(fmt, records, tuned, baselines, n_boot, seed)
    evidence["fairness"] = fairness_section(cfg, labels, gold, tuned, base, groups)
    result.update(clean(evidence))
    if few_shot is not None:
        result["few_shot"] = few_shot
    result["guard"] = guard
    if post is not None:
        result["threshold_optimizer"] = post
    rows = _rows(records, cfg, fmt, labels, tuned, base, baselines)
    if cfg.eval.judge is not None and rows and isinstance(rows[0].get("tuned"), str):
        from tuneforge.evaluation.judge import judge_rows

        result["judge"], verdicts = judge_rows(cfg.eval.judge, rows)
        for row, verdict in zip(rows, verdicts, strict=False):
            row["judge"] = verdict
    if answers is not None:
        result["answers"] = clean(answers[0])
        if answers[1]:
            result["answers"]["predictions"] = f"{name}.answers.jsonl"
            with atomic_file(run.eval_dir / f"{name}.answers.jsonl", "w") as f:
                for row in answers[1]:
                    f.write(json.dumps(row, ensure_ascii=False, default=_nan_safe) + "\n")
    out = evaluation_path(run, name)
    with atomic_file(predictions_path(run, name), "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=_nan_safe) + "\n")
    write_json_atomic(out, result)
    if report:
        from tuneforge.evaluation.report import write_report

        write_report(run)
    return out


def _nan_safe(x: Any) -> Any:
    return str(x)
