"""`method.name: head`: embed every text once with the frozen base (cached), then fit a linear head.

The head is scikit-learn's LogisticRegression (classification) or Ridge (regression) on standardised
embeddings, rather than a torch layer trained by steps: both solvers are exact and converge in seconds on a
CPU, they are well tested, and their one knob (C, or alpha) is chosen on the validation split by
train.metric_for_best, which is what validation and early stopping amount to for a head. The fitted
standardisation is folded into the weights, so the saved head is one linear map:
logits = x @ coef.T + intercept.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge import __version__, builtin
from tuneforge.artifacts import DatasetDir, RunDir, atomic_dir
from tuneforge.config import ConfigSource, RunConfig
from tuneforge.errors import TuneforgeError
from tuneforge.models.estimate import fmt_seconds

PROGRESS_EVERY_S = 30.0
UNSEEN = -1e4
"""Intercept of a label the training split never shows: its probability is ~0, never NaN."""


def check_head_run(cfg: RunConfig, source: ConfigSource, processes: int) -> None:
    """What a head run cannot do, refused before anything loads."""
    for key, on in (
        ("train.fsdp", cfg.train.fsdp),
        ("train.deepspeed", cfg.train.deepspeed is not None),
        ("train.init_from", cfg.train.init_from is not None),
    ):
        if on:
            raise TuneforgeError(
                f"method head fits its head on one process from a frozen base model; {key} does not apply",
                where=source.where(key),
                fix=f"unset {key} (to start from another run's weights, use method lora or full)",
            )
    if processes > 1:
        raise TuneforgeError(
            f"method head runs in one process, and this launch started {processes}",
            where=source.where("method.name"),
            fix="run `tuneforge train` without accelerate launch / torchrun",
        )


def sample_train(records: list[dict[str, Any]], size: int | None, seed: int) -> list[dict[str, Any]]:
    """method.max_train_examples of the training records, a seeded sample kept in split order (None: all).

    A sample rather than the first N: a split written in source order (one class after another in a
    folder-per-class corpus) would otherwise lose whole labels.
    """
    if size is None or size >= len(records):
        return records
    import random

    keep = sorted(random.Random(seed).sample(range(len(records)), size))
    return [records[i] for i in keep]


@dataclass
class HeadFit:
    coef: np.ndarray
    intercept: np.ndarray
    classes: list[int]
    value: float
    """The chosen C (classification) or alpha (regression)."""
    grid: list[dict[str, float]] = field(default_factory=list)
    """Each value tried and its validation metrics."""
    metric: str = "loss"
    best: float | None = None
    train_metrics: dict[str, float] = field(default_factory=dict)


def _metrics(task: str, y: np.ndarray, scores: np.ndarray, classes: list[int]) -> dict[str, float]:
    """The step loop's validation metrics (train/loop.py): loss (cross-entropy or squared error), accuracy."""
    if task == "regression":
        return {"loss": float(np.mean((scores - y) ** 2))}
    from sklearn.metrics import log_loss

    pred = np.asarray(classes)[scores.argmax(axis=1)]
    return {"loss": float(log_loss(y, scores, labels=classes)), "accuracy": float(np.mean(pred == y))}


def fit_head(
    task: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray | None,
    y_val: np.ndarray | None,
    *,
    num_labels: int,
    grid: list[float],
    metric: str,
    class_weight: str | None,
    seed: int,
    threads: int | None = None,
) -> HeadFit:
    """Fit one head per grid value on the training split, keep the one best on validation (lower loss, higher
    accuracy); without validation examples the middle of the grid (1.0 in the default grid).

    `threads` caps the BLAS threads of the solver: the run's own thread count (train.num_threads). Left to
    itself, BLAS started a thread per core beside a busy machine and made each fit ~20 times slower
    (measured: 20 s against 0.9 s for 2,000 x 384 on 2 shared cores).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        from sklearn.linear_model import LogisticRegression, Ridge
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(x_train)
        xt = scaler.transform(x_train)
        xv = scaler.transform(x_val) if x_val is not None and len(x_val) else None

        def fit(value: float) -> Any:
            if task == "regression":
                return Ridge(alpha=value).fit(xt, y_train)
            return LogisticRegression(
                C=value, max_iter=2000, class_weight=class_weight, random_state=seed
            ).fit(xt, y_train)

        def scores(est: Any, x: np.ndarray) -> np.ndarray:
            return est.predict(x) if task == "regression" else est.predict_proba(x)

        classes = [0] if task == "regression" else sorted(int(c) for c in np.unique(y_train))
        lower_is_better = metric == "loss"
        tried: list[dict[str, float]] = []
        best_est, best_value, best_score = None, None, None
        if xv is None or y_val is None:
            candidates = [1.0 if 1.0 in grid else sorted(grid)[len(grid) // 2]]
        else:
            candidates = list(grid)
        for value in candidates:
            est = fit(value)
            if xv is None or y_val is None:
                best_est, best_value = est, value
                break
            found = _metrics(task, y_val, scores(est, xv), classes)
            tried.append({"value": value, **found})
            score = found[metric]
            better = best_score is None or (score < best_score if lower_is_better else score > best_score)
            if better:
                best_est, best_value, best_score = est, value, score
        assert best_est is not None and best_value is not None
        coef, intercept = _as_label_rows(task, best_est, classes, num_labels)
        # Fold the standardisation in:
        # (x - mean) / scale @ W.T + b == x @ (W / scale).T + (b - W @ (mean / scale)).
        scale = scaler.scale_.astype(np.float64)
        mean = scaler.mean_.astype(np.float64)
        folded = coef / scale
        intercept = intercept - coef @ (mean / scale)
        if task != "regression":
            seen = set(classes)
            intercept = np.where([i in seen for i in range(num_labels)], intercept, UNSEEN)
        return HeadFit(
            coef=folded.astype(np.float32),
            intercept=intercept.astype(np.float32),
            classes=list(range(num_labels)) if task != "regression" else [0],
            value=float(best_value),
            grid=tried,
            metric=metric,
            best=best_score,
            train_metrics=_metrics(task, y_train, scores(best_est, xt), classes),
        )


def _as_label_rows(task: str, est: Any, classes: list[int], num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """(K, D) weights and (K,) biases with one row per label of the dataset, in its order.

    Binary logistic regression keeps one row (the second class against the first): as rows [0, w] the
    softmax of the two logits is the same sigmoid. Labels the training split lacks get a zero row.
    """
    coef = np.atleast_2d(np.asarray(est.coef_, dtype=np.float64))
    intercept = np.atleast_1d(np.asarray(est.intercept_, dtype=np.float64))
    if task == "regression":
        return coef.reshape(1, -1), intercept.reshape(1)
    out = np.zeros((num_labels, coef.shape[1]))
    bias = np.zeros(num_labels)
    if len(classes) == 2:
        out[classes[1]], bias[classes[1]] = coef[0], intercept[0]
    else:
        for row, label in enumerate(classes):
            out[label], bias[label] = coef[row], intercept[row]
    return out, bias


class _EmbedProgress:
    """Plain lines while the base model reads the texts (it can take minutes on a CPU), every 30 s."""

    def __init__(self, what: str, enabled: bool) -> None:
        self.what, self.enabled = what, enabled
        self.start = self.last = time.perf_counter()

    def __call__(self, texts_done: float, total: int) -> None:
        now = time.perf_counter()
        if not self.enabled or now - self.last < PROGRESS_EVERY_S or texts_done >= total:
            return
        self.last = now
        rate = texts_done / max(now - self.start, 1e-9)
        eta = fmt_seconds((total - texts_done) / rate) if rate > 0 else "?"
        print(
            f"embedding {self.what}: {int(texts_done):,} of {total:,} texts, {rate:.1f} texts/s, "
            f"about {eta} left",
            file=sys.stderr,
            flush=True,
        )


def train_head(
    cfg: RunConfig,
    source: ConfigSource,
    plan: Any,
    dataset: DatasetDir,
    split_files: dict[str, str],
    *,
    estimate: Any,
    resume: bool,
    force: bool,
    overwrite: bool,
) -> RunDir:
    """The head run, start to finish: a run directory with final/head.safetensors and its manifest."""
    import torch

    from tuneforge.models import load_tokenizer, resolve_model_path
    from tuneforge.models.features import EmbeddingCache, embed_with_cache, model_key, pooled_embeddings
    from tuneforge.models.linear_head import load_backbone, save_head
    from tuneforge.models.loading import pick_dtype
    from tuneforge.train.progress import peak_memory_bytes
    from tuneforge.train.resume import open_run_dir
    from tuneforge.train.tracking import environment

    check_head_run(cfg, source, plan.accelerator.num_processes)
    options, task, labels = plan.options, cfg.model.task, list(dataset.labels or [])
    train_records = sample_train(dataset.records("train"), options.max_train_examples, cfg.train.seed)
    val_records = dataset.records("validation")[: cfg.train.eval_max_examples]
    _check_labels(task, train_records, dataset.path)
    model_path = resolve_model_path(cfg.model)
    tok = load_tokenizer(cfg.model, model_path)
    started = time.perf_counter()
    backbone = load_backbone(cfg.model, model_path)
    run, lock = open_run_dir(cfg, resume, force, overwrite, dataset.manifest.get("fingerprint"), split_files)
    try:
        if plan.defaults_line:
            print(plan.defaults_line, file=sys.stderr, flush=True)
        total = sum(p.numel() for p in backbone.parameters())
        width = int(getattr(backbone.config, "hidden_size", 0) or 0)
        n_labels = len(labels) if task == "classification" else 1
        if estimate is not None and estimate.steps_per_epoch:
            print(
                f"estimated time: about {fmt_seconds(estimate.epoch_s)} to embed "
                f"{len(train_records) + len(val_records):,} texts once on {estimate.device.name}, then "
                "seconds to fit the head (rough: FLOPs / measured throughput; cached texts cost nothing)",
                file=sys.stderr,
                flush=True,
            )
        run.update_manifest(
            kind=RunDir.KIND,
            status="running",
            error=None,
            tuneforge_version=__version__,
            base_model=cfg.model.name,
            base_model_path=model_path,
            task=task,
            method="head",
            objective="supervised",
            dataset={
                **run.dataset_location(dataset),
                "fingerprint": dataset.manifest.get("fingerprint"),
                "format": dataset.format,
                "files": split_files,
            },
            labels=dataset.labels,
            parameters={"trainable": n_labels * (width + 1), "total": total + n_labels * (width + 1)},
            examples={"train": len(train_records), "validation": len(val_records)},
            sharded=False,
            deepspeed=None,
            total_steps=0,
            steps_per_epoch=0,
            seed=cfg.train.seed,
            config_fingerprint=cfg.fingerprint(),
            defaults=plan.defaults,
            environment=environment(plan.accelerator, cfg.train.seed),
            resumed_from_step=None,
            parent=None,
        )
        cache = None
        if options.cache:
            key = model_key(
                model_path,
                name=cfg.model.name,
                revision=cfg.model.revision,
                dtype=str(pick_dtype(cfg.model)),
                max_length=cfg.model.max_length,
                stride=options.stride,
            )
            describe = {"model": cfg.model.name, "path": model_path, "max_length": cfg.model.max_length}
            cache = EmbeddingCache(
                builtin.cache_dir() / "embeddings" / key, describe | {"stride": options.stride}
            )

        def embed(records: list[dict[str, Any]], what: str) -> Any:
            progress = _EmbedProgress(what, cfg.train.progress)

            def compute(texts: list[str], done: int, total: int) -> Any:
                def windows_read(read: int, windows: int) -> None:
                    progress(done + len(texts) * read / max(windows, 1), total)

                return pooled_embeddings(
                    backbone,
                    tok,
                    texts,
                    max_length=cfg.model.max_length,
                    stride=options.stride,
                    batch_size=options.batch_size,
                    on_batch=windows_read,
                )

            return embed_with_cache([str(r.get("text", "")) for r in records], cache, compute)

        embed_started = time.perf_counter()
        xt = embed(train_records, "the training split")
        xv = embed(val_records, "the validation split") if val_records else None
        embed_s = time.perf_counter() - embed_started
        y_train, y_val = _targets(task, train_records, labels), _targets(task, val_records, labels)
        fit_started = time.perf_counter()
        fitted = fit_head(
            task,
            xt.vectors,
            y_train,
            xv.vectors if xv is not None else None,
            y_val if xv is not None else None,
            num_labels=n_labels,
            grid=list(options.regularization),
            metric=cfg.train.metric_for_best,
            class_weight="balanced" if cfg.train.class_weights == "balanced" else None,
            seed=cfg.train.seed,
            threads=torch.get_num_threads(),  # what train.num_threads chose for this run
        )
        fit_s = time.perf_counter() - fit_started
        with atomic_dir(run.final, kind="tuneforge.final") as tmp:
            save_head(
                tmp,
                fitted.coef,
                fitted.intercept,
                fitted.classes,
                task=task,
                labels=labels,
                max_length=cfg.model.max_length,
                stride=options.stride,
            )
            tok.save_pretrained(tmp)  # a few files; the base model's weights stay where they are
        knob = "alpha" if task == "regression" else "C"
        computed = xt.computed + (xv.computed if xv is not None else 0)
        cached = xt.cached + (xv.cached if xv is not None else 0)
        elapsed = time.perf_counter() - started
        run.update_manifest(
            status="completed",
            error=None,
            step=0,
            stopped_early=False,
            stop_reason=None,
            best={"metric": cfg.train.metric_for_best, "value": fitted.best, "step": None},
            final=str(run.final),
            saves_adapter=False,
            head={
                "file": "final/head.safetensors",
                "estimator": "Ridge" if task == "regression" else "LogisticRegression",
                "regularization": {knob: fitted.value},
                # How the value was chosen: each value tried on the validation split, or none (no split).
                "chosen_by": (
                    f"validation {fitted.metric}" if fitted.grid else "no validation split: the default"
                ),
                "grid": fitted.grid,
                "train_metrics": fitted.train_metrics,
                "class_weight": cfg.train.class_weights,
                "pooling": {"rule": "mean over tokens, long texts in windows", "stride": options.stride},
                "embeddings": {
                    "dim": int(xt.vectors.shape[1]) if xt.vectors.size else width,
                    "computed": computed,
                    "cached": cached,
                    "windows": xt.chunks + (xv.chunks if xv is not None else 0),
                    "cache": str(cache.folder) if cache is not None else None,
                    "seconds": round(embed_s, 2),
                },
                "fit_seconds": round(fit_s, 2),
            },
            tokens=None,
            tokens_per_s=None,
            skipped_steps=0,
            peak_memory_bytes=peak_memory_bytes(),
            peak_memory_bytes_per_process=[peak_memory_bytes()],
            train_time_s=round(elapsed, 2),
        )
        print(_done_line(fitted, knob, computed, cached, elapsed), file=sys.stderr, flush=True)
    except BaseException as err:
        if RunDir.is_run(run.path):
            run.update_manifest(status="failed", step=0, error=str(err)[:500])
        raise
    finally:
        lock.release(remove=True)
    return run


def _done_line(fitted: HeadFit, knob: str, computed: int, cached: int, elapsed: float) -> str:
    chosen = f"{knob}={fitted.value:g}"
    if fitted.grid:
        chosen += f" (best validation {fitted.metric} {fitted.best:.4g} of {len(fitted.grid)} tried)"
    return (
        f"head fitted: {chosen}; {computed:,} texts embedded, {cached:,} from the cache; "
        f"{fmt_seconds(elapsed)} in all"
    )


def _check_labels(task: str, records: list[dict[str, Any]], dataset: Path) -> None:
    """A classifier needs two labels among its training examples (scikit-learn would fail deep inside)."""
    seen = sorted({str(r["label"]) for r in records}) if task == "classification" else []
    if task == "classification" and len(seen) < 2:
        held = f"one label only ({seen[0]!r})" if seen else "no example"
        raise TuneforgeError(
            f"the training split of {dataset} holds {held}; "
            "a classifier needs examples of two labels or more",
            where="data.path",
            fix="check data.label_column and how the rows were chosen (data.max_rows keeps a file's first "
            "rows, which may all share one label)",
        )


def _targets(task: str, records: list[dict[str, Any]], labels: list[str]) -> np.ndarray:
    if task == "regression":
        return np.asarray([float(r["label"]) for r in records], dtype=np.float64)
    index = {label: i for i, label in enumerate(labels)}
    return np.asarray([index[str(r["label"])] for r in records], dtype=np.int64)
