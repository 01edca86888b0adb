"""`tuneforge train`: dataset + model + method → a run directory (weights, metrics, checkpoints)."""

from __future__ import annotations

import math
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tuneforge import __version__
from tuneforge.artifacts import DatasetDir, RunDir, atomic_dir
from tuneforge.config import ConfigSource, RunConfig, config_from_dict
from tuneforge.data import prepare_dataset
from tuneforge.errors import TuneforgeError
from tuneforge.models import load_model, load_tokenizer, resolve_method, resolve_model_path
from tuneforge.models.methods import count_parameters, describe_parameters
from tuneforge.train.devices import build_accelerator, check_distributed_type
from tuneforge.train.optimizer import balanced_class_weights, build_optimizer
from tuneforge.train.resume import check_resume, check_same_position, open_run_dir
from tuneforge.train.sharding import check_fsdp

EXIT_INTERRUPTED = 3


class Interrupted(TuneforgeError):
    """A signal stopped the run after a step and a checkpoint: `--resume` continues it."""

    exit_code = EXIT_INTERRUPTED


class StoppedAtOnce(Interrupted):
    """A second signal stopped the run without waiting for a checkpoint (the exit code of Ctrl-C)."""

    exit_code = 130


def _newest_checkpoint(latest: Path | None, step: int) -> str:
    from tuneforge.train.checkpoint import checkpoint_name

    if latest is None:
        return "there is no checkpoint yet (--resume starts from the beginning)"
    if latest.name == checkpoint_name(step):
        return f"checkpoint {latest.name} holds step {step}"
    return f"the newest checkpoint is {latest.name}"


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

    from tuneforge.models.encode import LazyExamples, encode_for_task, encoder, has_targets
    from tuneforge.train.checkpoint import (
        Checkpointer,
        TorchState,
        TrainingState,
        TrainState,
        checkpoint_name,
        load_weights,
        restore_rng,
    )
    from tuneforge.train.loop import Loop, StopSignals, fit
    from tuneforge.train.plot import plot_loss
    from tuneforge.train.progress import TrainProgress, peak_memory_bytes
    from tuneforge.train.schedule import build_scheduler
    from tuneforge.train.sharding import is_sharded, shard_from_main
    from tuneforge.train.tracking import Trackers, check_sinks, environment, truncate_metrics
    from tuneforge.train.zero import (
        ZeroState,
        ZeroStep,
        check_installed,
        deepspeed_config,
        ensure_process_group,
        initialize,
    )

    source = source or ConfigSource(None)
    check_sinks(list(cfg.train.log_to))
    # Validate the method (and whether it can run here) before anything is loaded or written.
    method, options = resolve_method(cfg.method, source, task=cfg.model.task)
    accelerator = build_accelerator(cfg)
    check_distributed_type(accelerator)
    check_fsdp(cfg, accelerator.num_processes, source.where)
    ds = None
    if cfg.train.deepspeed is not None:
        ds = deepspeed_config(
            cfg,
            processes=accelerator.num_processes,
            precision=accelerator.mixed_precision,
            where=source.where,
        )
        check_installed()
    # The main process prepares (or finds) the dataset first; the others then reuse it instead of racing it.
    with accelerator.main_process_first():
        dataset = prepare_dataset(cfg.data, model=cfg.model)
    set_seed(cfg.train.seed)
    task, fmt, labels = cfg.model.task, dataset.format, dataset.labels
    _check_task_fits(task, fmt)
    _check_validation_settings(cfg, source, has_validation=bool(dataset.records("validation")))
    fingerprint = dataset.manifest.get("fingerprint")
    if resume:  # refuse a changed config now, not after loading the model
        check_resume(RunDir(Path(cfg.train.output_dir)), cfg, fingerprint, force)

    model_path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(cfg.model, model_path)
    model = load_model(
        cfg.model,
        labels=labels,
        path=model_path,
        pad_token_id=tokenizer.pad_token_id,
        method=cfg.method,
        empty=cfg.train.fsdp and not accelerator.is_main_process,  # FSDP: only the main process loads
    )
    model = method.apply(model, options, task)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    trainable, total = count_parameters(model)
    if accelerator.is_main_process:
        print(describe_parameters(trainable, total), file=sys.stderr, flush=True)

    encode: dict[str, Any] = {
        "tok": tokenizer,
        "task": task,
        "fmt": fmt,
        "labels": labels,
        "max_length": cfg.model.max_length,
        "template": cfg.data.prompt_template,
    }
    train_records = dataset.records("train")
    train_examples: Sequence[Any]
    if task == "causal-lm" and fmt == "text" and cfg.train.packing:
        train_examples, _ = encode_for_task(train_records, **encode)  # packing needs the whole stream
    else:
        train_examples = LazyExamples(train_records, encoder(**encode))
        probe = [train_examples[i] for i in range(min(len(train_examples), 64))]
        if probe and not any(has_targets(e) for e in probe):
            raise TuneforgeError(
                f"none of the first {len(probe)} training examples has a target token within "
                f"model.max_length={cfg.model.max_length} (the answer is cut off)",
                where=source.where("model.max_length"),
                fix="raise model.max_length, or shorten the prompts",
            )
    val_records = dataset.records("validation")[: cfg.train.eval_max_examples]
    val_examples, _ = encode_for_task(val_records, **encode, packing=cfg.train.packing)

    # The run directory is created only once data, model and method are known to be good, so a typo in the
    # config never leaves a half-made run behind that blocks the next attempt.
    with accelerator.main_process_first():
        # Only the main process checks and creates the run directory: the others would find its files and
        # refuse.
        main_opens = accelerator.is_main_process
        run = (
            open_run_dir(cfg, resume, force, overwrite, fingerprint)
            if main_opens
            else RunDir(Path(cfg.train.output_dir))
        )

    zero = None
    if ds is not None:
        # DeepSpeed replaces DDP: its engine partitions the optimizer built here; the scheduler stays ours.
        ensure_process_group()
        optimizer = build_optimizer(model, cfg)
        model = initialize(model, optimizer, ds)
        zero = ZeroStep(model)
    elif cfg.train.fsdp:
        # FSDP replaces DDP: shard first, then build the optimizer over the shards.
        model = shard_from_main(
            model,
            bf16=accelerator.mixed_precision == "bf16",
            cpu_offload=cfg.train.fsdp_cpu_offload,
            device=accelerator.device,
            is_main=accelerator.is_main_process,
        )
        optimizer = accelerator.prepare(build_optimizer(model, cfg))
    else:
        model, optimizer = accelerator.prepare(model, build_optimizer(model, cfg))
    weights = None
    if task == "classification" and cfg.train.class_weights == "balanced":
        weights = balanced_class_weights(train_records, labels).to(accelerator.device)
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
        zero=zero,
        pack_examples=cfg.train.pack_examples,
        group_by_length=cfg.train.group_by_length,
    )
    total_steps = cfg.train.max_steps or math.ceil(cfg.train.epochs * loop.steps_per_epoch)
    scheduler = build_scheduler(optimizer, cfg.train, total_steps)
    loop.scheduler = scheduler

    full_weights = not getattr(method, "SAVES_ADAPTER", True)
    unwrapped = accelerator.unwrap_model(model)
    training: TrainingState = (
        ZeroState(model, is_main=accelerator.is_main_process)
        if ds is not None
        else TorchState(unwrapped, getattr(optimizer, "optimizer", optimizer))  # torch's, not accelerate's
    )
    checkpoints = Checkpointer(
        run.checkpoints,
        training=training,
        scheduler=scheduler,
        full_weights=full_weights,
        keep=cfg.train.keep_checkpoints,
        scaler=getattr(accelerator, "scaler", None),
        is_main=accelerator.is_main_process,
        barrier=accelerator.wait_for_everyone,
    )
    state = (checkpoints.resume() if resume else None) or TrainState()
    check_same_position(state, loop, force)
    main = accelerator.is_main_process
    if main and checkpoints.resumed_from is not None:
        print(f"resuming from {checkpoints.resumed_from}", file=sys.stderr, flush=True)
    manifest: dict[str, Any] = {
        "kind": RunDir.KIND,
        "status": "running",
        "tuneforge_version": __version__,
        "base_model": cfg.model.name,
        "base_model_path": model_path,
        "task": task,
        "method": cfg.method.name,
        "dataset": {"path": str(dataset.path.resolve()), "fingerprint": fingerprint, "format": fmt},
        "labels": labels,
        "parameters": {"trainable": trainable, "total": total},
        "examples": {
            "train": len(train_examples),
            "validation": len(val_examples),
        },
        # FSDP or DeepSpeed: parameters, gradients and/or optimizer state are split over the processes.
        "sharded": is_sharded(unwrapped) or ds is not None,
        "deepspeed": ds,
        "total_steps": total_steps,
        "steps_per_epoch": loop.steps_per_epoch,
        "seed": cfg.train.seed,
        "config_fingerprint": cfg.fingerprint(),
        "environment": environment(accelerator, cfg.train.seed),
        "resumed_from_step": state.step if resume else None,
    }
    if main:
        truncate_metrics(run.metrics_path, state.step)
        run.update_manifest(**manifest)

    trackers = Trackers(
        run.path,
        list(cfg.train.log_to),
        config=cfg.to_dict(),
        enabled=main,
        resume_step=state.step if resume else None,
    )
    if checkpoints.resumed_from is not None:
        # Last, right before the loop, so nothing shifts the random streams.
        restore_rng(checkpoints.resumed_from, accelerator.process_index)
    try:
        with (
            StopSignals() as stop,
            TrainProgress(total_steps, state.step, enabled=cfg.train.progress and main) as bar,
        ):
            outcome = fit(
                loop,
                state,
                settings=cfg.train,
                total_steps=total_steps,
                val_examples=val_examples,
                log=trackers.log,
                save=checkpoints.save,
                progress=bar,
                stop=stop,
                where=source.where,
                on_validation=on_validation,
            )
        if outcome.signal is not None:
            raise Interrupted(
                f"stopped by {signal.Signals(outcome.signal).name} after step {state.step}; "
                + _newest_checkpoint(checkpoints.latest(), state.step),
                fix=f"continue with: tuneforge train {source.path or run.config_path} --resume",
            )
    except KeyboardInterrupt:
        # A second signal: stop at once. A checkpoint being written is abandoned (its temporary folder goes).
        err = StoppedAtOnce(
            f"stopped at once by a second signal after step {state.step}; "
            + _newest_checkpoint(checkpoints.latest(), state.step),
            fix=f"continue with: tuneforge train {source.path or run.config_path} --resume",
        )
        if main:
            run.update_manifest(status="interrupted", step=state.step, error=str(err)[:500])
        raise err from None
    except BaseException as err:
        if main:
            status = "interrupted" if isinstance(err, Interrupted) else "failed"
            run.update_manifest(status=status, step=state.step, error=str(err)[:500])
        raise
    finally:
        trackers.close()

    best = state.best_step
    if best is not None and best != state.step:
        load_weights(run.checkpoints / checkpoint_name(best), training)  # rotation always keeps the best
    # A sharded model is gathered by every process; the main one saves it.
    whole = training.final_state(adapter_only=not full_weights)
    # Each process's peak (they differ under FSDP, where only the main process loads the whole model).
    peak = torch.tensor([peak_memory_bytes()], device=accelerator.device)
    peaks = [int(x) for x in accelerator.gather(peak)]
    if main:
        with atomic_dir(run.final) as tmp:
            unwrapped.save_pretrained(tmp, state_dict=whole, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        plot_loss(run.metrics(), run.path / "loss.png")
        run.update_manifest(
            status="completed",
            step=state.step,
            stopped_early=outcome.reason == "stopped-early",
            best={"metric": cfg.train.metric_for_best, "value": state.best_value, "step": best},
            final=str(run.final),
            saves_adapter=not full_weights,
            tokens=state.tokens,
            tokens_per_s=round(outcome.tokens_per_s, 1),
            skipped_steps=state.skipped_steps,
            # Examples the run met whose answer the chat template pushed past model.max_length.
            train_no_targets_seen=getattr(train_examples, "no_targets", 0),
            peak_memory_bytes=max(peaks),
            peak_memory_bytes_per_process=peaks,
            train_time_s=round(state.elapsed_s, 2),
        )
    accelerator.wait_for_everyone()
    return run


def _check_validation_settings(cfg: RunConfig, source: ConfigSource, *, has_validation: bool) -> None:
    from tuneforge.train.loop import validation_metrics

    names = validation_metrics(cfg.model.task)
    if cfg.train.metric_for_best not in names:
        raise TuneforgeError(
            f"validation of a {cfg.model.task} model has no metric {cfg.train.metric_for_best!r}",
            where=source.where("train.metric_for_best"),
            fix="choose one of: " + ", ".join(names),
        )
    if cfg.train.early_stopping_patience is not None and not has_validation:
        raise TuneforgeError(
            "early stopping needs validation examples, and the dataset has none",
            where=source.where("train.early_stopping_patience"),
            fix="give data.splits a validation fraction, or unset train.early_stopping_patience",
        )


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


def reload_config(run: RunDir) -> RunConfig:
    """The resolved config a run was trained with."""
    import yaml

    return config_from_dict(
        yaml.safe_load(run.config_path.read_text(encoding="utf-8")), ConfigSource(run.config_path)
    )


__all__ = ["EXIT_INTERRUPTED", "DatasetDir", "reload_config", "train"]
