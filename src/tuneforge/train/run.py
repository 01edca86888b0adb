"""`tuneforge train`: dataset + model + method → a run directory (adapter or weights, metrics, checkpoints)."""

from __future__ import annotations

import math
import os
import platform
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge import __version__
from tuneforge.artifacts import DatasetDir, RunDir, atomic_dir, write_text_atomic
from tuneforge.config import ConfigSource, RunConfig, config_from_dict
from tuneforge.data import prepare_dataset
from tuneforge.errors import TuneforgeError
from tuneforge.models import load_model, load_tokenizer, resolve_method, resolve_model_path
from tuneforge.models.methods import count_parameters, describe_parameters

EXIT_INTERRUPTED = 3
# Keys that may differ on --resume: they change how long or how visibly a run goes on, not what it computes.
RESUMABLE_CHANGES = (
    "train.max_steps",
    "train.epochs",
    "train.progress",
    "train.log_to",
    "train.save_every",
    "train.keep_checkpoints",
    "eval.",
    "serve.",
    "tune.",
)


class Interrupted(TuneforgeError):
    exit_code = EXIT_INTERRUPTED


def config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    diffs: list[tuple[str, Any, Any]] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append((f"{prefix}{key}", a, b))
    return diffs


def _check_resume(run: RunDir, cfg: RunConfig, force: bool) -> None:
    import yaml

    old = yaml.safe_load(run.config_path.read_text(encoding="utf-8"))
    diffs = [d for d in config_diff(old, cfg.to_dict()) if not d[0].startswith(RESUMABLE_CHANGES)]
    if diffs and not force:
        lines = "\n  ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs)
        raise TuneforgeError(
            f"the config differs from the one this run started with:\n  {lines}",
            where=str(run.config_path),
            fix="resume with the original config, or pass --force to continue with the new one",
        )


def _open_run_dir(cfg: RunConfig, resume: bool, force: bool, overwrite: bool) -> RunDir:
    path = Path(cfg.train.output_dir)
    run = RunDir(path)
    if overwrite and not resume and path.exists():
        if not run.config_path.is_file():
            raise TuneforgeError(
                f"{path} is not a tuneforge run directory; refusing to delete it",
                where="train.output_dir",
                fix="choose another train.output_dir",
            )
        shutil.rmtree(path)
    if resume:
        if not run.config_path.is_file():
            raise TuneforgeError(f"there is no run to resume in {path}", where="train.output_dir")
        _check_resume(run, cfg, force)
    elif path.exists() and any(path.iterdir()):
        raise TuneforgeError(
            f"{path} already holds a run",
            where="train.output_dir",
            fix="pass --resume to continue it, --overwrite to start over, or choose another train.output_dir",
        )
    path.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run.config_path, cfg.to_yaml())
    return run


def _accelerator(cfg: RunConfig) -> Any:
    import torch
    from accelerate import Accelerator

    precision = cfg.train.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    if precision != "no" and not torch.cuda.is_available():
        raise TuneforgeError(
            f"mixed precision {precision} needs a GPU", where="train.mixed_precision", fix="set it to auto or no"
        )
    # `accelerate launch --multi_gpu` and torchrun start several processes but do not tell accelerate to use the
    # CPU; without that it would not form a process group (gloo) on a machine without GPUs.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Accelerator(mixed_precision=precision, cpu=world > 1 and not torch.cuda.is_available())


def _optimizer(model: Any, cfg: RunConfig) -> Any:
    import torch

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # Biases, norms and embeddings-like 1-D tensors are not decayed (standard AdamW practice).
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.train.optimizer == "adamw-8bit":
        if not torch.cuda.is_available():
            raise TuneforgeError("adamw-8bit needs a CUDA GPU", where="train.optimizer", fix="use adamw")
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise TuneforgeError("adamw-8bit needs bitsandbytes", fix="pip install 'tuneforge[gpu]'") from None
        return bnb.optim.AdamW8bit(groups, lr=cfg.train.learning_rate)
    return torch.optim.AdamW(groups, lr=cfg.train.learning_rate)


def _class_weights(examples: list[dict[str, Any]], n: int) -> Any:
    import torch

    counts = Counter(int(e["label"]) for e in examples)
    total = sum(counts.values())
    return torch.tensor([total / (n * counts[i]) if counts[i] else 0.0 for i in range(n)], dtype=torch.float32)


class _StopSignals:
    """SIGTERM/SIGINT set a flag; the loop finishes its step, checkpoints and exits with EXIT_INTERRUPTED."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.received = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def train(
    cfg: RunConfig,
    source: ConfigSource | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    overwrite: bool = False,
    on_validation: Callable[[int, dict[str, float]], None] | None = None,
) -> RunDir:
    """Run (or resume) training as the config says and return the run directory.

    `on_validation(step, metrics)` is called after every validation; an exception it raises (a hyperparameter
    search pruning the trial) stops the run like any other error.
    """
    import torch
    from accelerate.utils import set_seed

    from tuneforge.train.checkpoint import (
        TrainState,
        complete_checkpoints,
        load_checkpoint,
        load_weights,
        rotate,
        save_checkpoint,
    )
    from tuneforge.train.encode import encode_for_task
    from tuneforge.train.loop import Loop, Throughput
    from tuneforge.train.plot import plot_loss
    from tuneforge.train.progress import TrainProgress
    from tuneforge.train.schedule import build_scheduler
    from tuneforge.train.tracking import Trackers, truncate_metrics

    source = source or ConfigSource(None)
    # Validate the method (and whether it can run here) before anything is loaded or written.
    method, options = resolve_method(cfg.method, source, task=cfg.model.task)
    accelerator = _accelerator(cfg)
    # The main process prepares (or finds) the dataset first; the others then reuse it instead of racing it.
    with accelerator.main_process_first():
        dataset = prepare_dataset(cfg.data, model=cfg.model)
    set_seed(cfg.train.seed)
    task, fmt, labels = cfg.model.task, dataset.format, dataset.labels
    _check_task_fits(task, fmt)

    model_path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(cfg.model, model_path)
    model = load_model(
        cfg.model, labels=labels, path=model_path, pad_token_id=tokenizer.pad_token_id, method=cfg.method
    )
    model = method.apply(model, options, task)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    trainable, total = count_parameters(model)
    if accelerator.is_main_process:
        print(describe_parameters(trainable, total), file=sys.stderr, flush=True)
    # The run directory is created only once data, model and method are known to be good, so a typo in the
    # config never leaves a half-made run behind that blocks the next attempt.
    with accelerator.main_process_first():
        # Only the main process checks and creates the run directory: the others would find its files and refuse.
        main_opens = accelerator.is_main_process
        run = _open_run_dir(cfg, resume, force, overwrite) if main_opens else RunDir(Path(cfg.train.output_dir))

    encode = {
        "tok": tokenizer,
        "task": task,
        "fmt": fmt,
        "labels": labels,
        "max_length": cfg.model.max_length,
        "template": cfg.data.prompt_template,
        "packing": cfg.train.packing,
    }
    train_examples, train_empty = encode_for_task(dataset.records("train"), **encode)
    val_records = dataset.records("validation")[: cfg.train.eval_max_examples]
    val_examples, _ = encode_for_task(val_records, **encode)
    if not train_examples:
        raise TuneforgeError(
            f"none of the {train_empty} training examples has a target token within model.max_length="
            f"{cfg.model.max_length} (the answer is cut off)",
            where=source.where("model.max_length"),
            fix="raise model.max_length, or shorten the prompts",
        )

    optimizer = _optimizer(model, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    weights = None
    if task == "classification" and cfg.train.class_weights == "balanced":
        weights = _class_weights(train_examples, len(labels)).to(accelerator.device)
    loop = Loop(
        accelerator=accelerator,
        model=model,
        optimizer=optimizer,
        scheduler=None,
        train_examples=train_examples,
        task=task,
        batch_size=cfg.train.batch_size,
        accumulation=cfg.train.gradient_accumulation_steps,
        max_grad_norm=cfg.train.max_grad_norm,
        seed=cfg.train.seed,
        pad_id=int(tokenizer.pad_token_id),
        class_weights=weights,
    )
    total_steps = cfg.train.max_steps or math.ceil(cfg.train.epochs * loop.steps_per_epoch)
    scheduler = build_scheduler(optimizer, cfg.train, total_steps)
    loop.scheduler = scheduler

    state = TrainState()
    ckpts = complete_checkpoints(run.checkpoints)
    if resume and ckpts:
        state = load_checkpoint(ckpts[-1], model=accelerator.unwrap_model(model), optimizer=optimizer,
                                scheduler=scheduler)
    main = accelerator.is_main_process
    if main:
        truncate_metrics(run.metrics_path, state.step)
    full_weights = not getattr(method, "SAVES_ADAPTER", True)
    manifest: dict[str, Any] = {
        "kind": RunDir.KIND,
        "status": "running",
        "tuneforge_version": __version__,
        "base_model": cfg.model.name,
        "base_model_path": model_path,
        "task": task,
        "method": cfg.method.name,
        "dataset": {"path": str(dataset.path), "fingerprint": dataset.manifest.get("fingerprint"), "format": fmt},
        "labels": labels,
        "parameters": {"trainable": trainable, "total": total},
        "examples": {"train": len(train_examples), "validation": len(val_examples), "train_no_targets": train_empty},
        "total_steps": total_steps,
        "steps_per_epoch": loop.steps_per_epoch,
        "config_fingerprint": cfg.fingerprint(),
        "environment": _environment(accelerator),
    }
    if main:
        run.update_manifest(**manifest)

    saved_at = [state.step if resume and ckpts else -1]

    def checkpoint() -> None:
        if saved_at[0] == state.step:
            return
        saved_at[0] = state.step
        accelerator.wait_for_everyone()
        if main:
            save_checkpoint(run.checkpoints, model=accelerator.unwrap_model(model), optimizer=optimizer,
                            scheduler=scheduler, state=state, full_weights=full_weights)
            rotate(run.checkpoints, cfg.train.keep_checkpoints, state.best_step)

    def validate() -> bool:
        """Validate, log, track the best; True when early stopping says stop."""
        metrics = loop.validate(val_examples, cfg.train.batch_size) if val_examples else {}
        if not metrics:
            return False
        trackers.log({"step": state.step, "split": "validation", **metrics})
        if on_validation is not None:
            on_validation(state.step, metrics)
        value = metrics.get(cfg.train.metric_for_best)
        if value is None:
            raise TuneforgeError(
                f"validation has no metric {cfg.train.metric_for_best!r} (it has {sorted(metrics)})",
                where=source.where("train.metric_for_best"),
            )
        lower_is_better = cfg.train.metric_for_best in ("loss", "perplexity")
        gain = (state.best_value - value if lower_is_better else value - state.best_value) if (
            state.best_value is not None) else math.inf
        if gain > cfg.train.early_stopping_min_delta:
            state.best_value, state.best_step, state.evals_without_improvement = value, state.step, 0
            checkpoint()
        else:
            state.evals_without_improvement += 1
        patience = cfg.train.early_stopping_patience
        return patience is not None and state.evals_without_improvement >= patience

    trackers = Trackers(run.path, list(cfg.train.log_to), config=cfg.to_dict(), enabled=main)
    speed = Throughput()
    started = time.perf_counter() - state.elapsed_s
    stopped_early = False
    try:
        with _StopSignals() as stop, TrainProgress(total_steps, state.step, enabled=cfg.train.progress and main) as bar:
            while state.step < total_steps:
                result = loop.step(state)
                state.step += 1
                state.tokens += result.tokens
                state.elapsed_s = time.perf_counter() - started
                if result.skipped:
                    state.bad_steps += 1
                    state.skipped_steps += 1
                    if state.bad_steps >= cfg.train.max_bad_steps:
                        raise TuneforgeError(
                            f"{state.bad_steps} optimizer steps in a row had a NaN/inf loss or gradient "
                            f"(last at step {state.step}); the last good checkpoint is kept",
                            where=source.where("train.learning_rate"),
                            fix="lower the learning rate, enable gradient clipping, or check the data",
                        )
                else:
                    state.bad_steps = 0
                tps = speed.add(result.tokens)
                lr = scheduler.get_last_lr()[0]
                trackers.log({"step": state.step, "epoch": round(state.step / loop.steps_per_epoch, 4),
                              "loss": result.loss, "lr": lr, "grad_norm": result.grad_norm,
                              "tokens": state.tokens, "tokens_per_s": round(tps, 1),
                              "time_s": round(state.elapsed_s, 2), "skipped": result.skipped})
                bar.update(state.step, loss=result.loss, lr=lr, tps=tps)
                last = state.step == total_steps
                if (cfg.train.eval_every and state.step % cfg.train.eval_every == 0) or last:
                    stopped_early = validate() and not last
                if (cfg.train.save_every and state.step % cfg.train.save_every == 0) or last or stopped_early:
                    checkpoint()
                if stop.received is not None and not last:
                    checkpoint()
                    raise Interrupted(
                        f"stopped by signal {signal.Signals(stop.received).name} after step {state.step}; "
                        "a checkpoint was saved",
                        fix=f"continue with: tuneforge train {run.config_path} --resume",
                    )
                if stopped_early:
                    break
    except BaseException as err:
        if main:
            status = "interrupted" if isinstance(err, Interrupted) else "failed"
            run.update_manifest(status=status, step=state.step, error=str(err)[:500])
        raise
    finally:
        trackers.close()

    unwrapped = accelerator.unwrap_model(model)
    best = state.best_step
    if best is not None and best != state.step:
        best_dir = run.checkpoints / f"step-{best:08d}"
        if best_dir.is_dir():
            load_weights(best_dir, unwrapped)
    if main:
        with atomic_dir(run.final) as tmp:
            unwrapped.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        plot_loss(run.metrics(), run.path / "loss.png")
        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else _peak_rss()
        run.update_manifest(
            status="completed",
            step=state.step,
            stopped_early=stopped_early,
            best={"metric": cfg.train.metric_for_best, "value": state.best_value, "step": best},
            final=str(run.final),
            saves_adapter=not full_weights,
            tokens=state.tokens,
            tokens_per_s=round(speed.tokens / max(time.perf_counter() - speed.start, 1e-9), 1),
            skipped_steps=state.skipped_steps,
            peak_memory_bytes=peak,
            train_time_s=round(state.elapsed_s, 2),
        )
    accelerator.wait_for_everyone()
    return run


def _check_task_fits(task: str, fmt: str) -> None:
    ok = {
        "causal-lm": ("text", "instruction", "chat", "classification", "preference"),
        "classification": ("classification",),
        "regression": ("regression",),
    }
    if fmt not in ok[task]:
        raise TuneforgeError(
            f"model.task {task} cannot learn from {fmt} records",
            where="model.task",
            fix=f"use a dataset of format {' or '.join(ok[task])}, or another task",
        )


def _peak_rss() -> int:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _environment(accelerator: Any) -> dict[str, Any]:
    import peft
    import torch
    import transformers

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "platform": platform.platform(),
        "device": str(accelerator.device),
        "processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def reload_config(run: RunDir) -> RunConfig:
    """The resolved config a run was trained with."""
    import yaml

    return config_from_dict(yaml.safe_load(run.config_path.read_text(encoding="utf-8")), ConfigSource(run.config_path))


__all__ = ["EXIT_INTERRUPTED", "DatasetDir", "reload_config", "train"]
