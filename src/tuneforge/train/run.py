"""`tuneforge train`: dataset + model + method → a run directory (weights, metrics, checkpoints).

`train()` is the recipe, read top to bottom; its steps live in `setup.py` (plan, inputs, model, distribution),
`loop.py` (the steps) and `checkpoint.py`.
"""

from __future__ import annotations

import contextlib
import errno
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tuneforge import __version__
from tuneforge.artifacts import DatasetDir, RunDir, RunLock, atomic_dir
from tuneforge.config import ConfigSource, RunConfig, config_from_dict
from tuneforge.data.lengths import lengths_for_model
from tuneforge.errors import DiskFull, TuneforgeError
from tuneforge.models.estimate import check_fits, time_line
from tuneforge.models.lineage import Parent, drop_reference, start_from_run
from tuneforge.models.loading import portable_adapter_config
from tuneforge.train import setup
from tuneforge.train.resume import check_output_dir, check_resume, check_same_position, open_run_dir

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
    memory_check: bool = True,
    on_validation: Callable[[int, dict[str, float]], None] | None = None,
) -> RunDir:
    """Run (or resume) training as the config says and return the run directory.

    `on_validation(step, metrics)` is called after every validation; an exception it raises (a hyperparameter
    search pruning the trial) stops the run like any other error.
    """
    from tuneforge.train.checkpoint import Checkpointer, TrainState, restore_rng
    from tuneforge.train.loop import StopSignals, fit
    from tuneforge.train.progress import TrainProgress

    source = source or ConfigSource(None)
    # 1. Everything a config can get wrong is refused before anything is loaded or written.
    # A run as the starting point (DPO on top of SFT): from here on the config names the model it loads.
    cfg, source, parent = start_from_run(cfg, source)
    plan = setup.plan(cfg, source)
    dataset = setup.load_dataset(cfg, source, plan.accelerator)
    cfg, plan = setup.apply_defaults(
        cfg, source, plan, dataset, resume=resume
    )  # the keys the user left unset
    estimate = None
    if memory_check:  # refuse, with the numbers, a run estimated not to fit (models/estimate.py)
        estimate = check_fits(
            cfg,
            lengths_for_model(dataset, cfg.model, cfg.data.prompt_template),  # as this model sees them
            processes=plan.accelerator.num_processes,
            measure_flops=plan.is_main,
        )
    split_files = dataset.verified_split_hashes()
    # An output folder that may not be used, or a changed config or dataset: refused before the model loads.
    # Only by the main process: it creates the folder, which another process checking later would then find.
    if plan.is_main:
        check_output_dir(cfg, resume, overwrite)
    if resume:
        check_resume(
            RunDir(Path(cfg.train.output_dir)), cfg, dataset.manifest.get("fingerprint"), force, split_files
        )
    if getattr(
        plan.method, "FROZEN_FEATURES", False
    ):  # method head: embed once, fit the head (train/head.py)
        from tuneforge.train.head import train_head

        return train_head(
            cfg,
            source,
            plan,
            dataset,
            split_files,
            estimate=estimate,
            resume=resume,
            force=force,
            overwrite=overwrite,
        )
    # 2. Model and examples; the run directory exists only once they are known to be good.
    preference = setup.is_preference(cfg, dataset.format)
    model = setup.load_trainable_model(cfg, plan, dataset.labels, parent, preference=preference)
    examples = setup.encode_examples(cfg, source, dataset, model.tokenizer)
    run, lock = _open_run(cfg, plan, resume, force, overwrite, dataset, split_files)
    if plan.defaults_line:  # only now: every refusal above prints its error first
        print(plan.defaults_line, file=sys.stderr, flush=True)
    state, checkpoints = TrainState(), None
    try:
        # 3. Distribution, optimizer and schedule, loop, checkpoints.
        dist = setup.distribute(cfg, plan, model.model)
        acc, main = plan.accelerator, plan.is_main
        references = None
        if plan.full_weights and setup.is_preference(cfg, dataset.format):  # DPO with nothing to switch off
            from tuneforge.train.reference import fixed_reference

            references = fixed_reference(
                run,
                dist.unwrapped,
                {"train": examples.train, "validation": examples.validation},
                pad_id=int(model.tokenizer.pad_token_id),
                batch_size=cfg.train.batch_size,
                accelerator=acc,
                resume=resume,
            )
        loop, scheduler, total_steps = setup.build_loop(
            cfg, plan, dist, examples, dataset, model.tokenizer, references
        )
        checkpoints = Checkpointer.for_run(run, dist.training, scheduler, cfg.train, plan.full_weights, acc)
        state = (checkpoints.resume() if resume else None) or TrainState()
        check_same_position(state, loop, force)
        if main and checkpoints.resumed_from is not None:
            print(f"resuming from {checkpoints.resumed_from}", file=sys.stderr, flush=True)
        if main and estimate is not None and state.step < total_steps:
            stops_early = cfg.train.early_stopping_patience is not None and bool(cfg.train.eval_every)
            print(
                time_line(estimate, total_steps - state.step, early_stopping=stops_early),
                file=sys.stderr,
                flush=True,
            )
        # 4. The loop, with trackers and signals.
        with _start_records(
            run,
            cfg,
            plan,
            dist,
            model,
            dataset,
            examples,
            split_files,
            state,
            resume,
            total_steps,
            loop.steps_per_epoch,
            parent,
        ) as trackers:
            if checkpoints.resumed_from is not None:
                # Last, right before the loop, so nothing shifts the random streams.
                restore_rng(checkpoints.resumed_from, acc.process_index)
            with (
                StopSignals() as stop,
                TrainProgress(
                    total_steps,
                    state.step,
                    enabled=cfg.train.progress and main,
                    budget_s=cfg.train.time_budget,
                ) as bar,
            ):
                outcome = fit(
                    loop,
                    state,
                    settings=cfg.train,
                    total_steps=total_steps,
                    val_examples=examples.validation,
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
        # 5. The final weights (the best checkpoint's when it is not the last step), and the manifest.
        _finish(run, cfg, plan, dist, model.tokenizer, state, outcome, examples.train)
    except BaseException as err:
        stopped = _stopped(err, run, state, checkpoints, source, is_main=plan.is_main)
        if stopped is err:
            raise
        raise stopped from None
    finally:
        if lock is not None:
            lock.release(remove=True)
    plan.accelerator.wait_for_everyone()
    return run


def _open_run(
    cfg: RunConfig,
    plan: setup.Plan,
    resume: bool,
    force: bool,
    overwrite: bool,
    dataset: DatasetDir,
    split_files: dict[str, str],
) -> tuple[RunDir, RunLock | None]:
    """Only the main process checks, creates and locks the run directory (the others would find its files)."""
    with plan.accelerator.main_process_first():
        if not plan.is_main:
            return RunDir(Path(cfg.train.output_dir)), None
        return open_run_dir(cfg, resume, force, overwrite, dataset.manifest.get("fingerprint"), split_files)


@contextlib.contextmanager
def _start_records(
    run: RunDir,
    cfg: RunConfig,
    plan: setup.Plan,
    dist: setup.Distributed,
    model: setup.Trainable,
    dataset: DatasetDir,
    examples: setup.Examples,
    split_files: dict[str, str],
    state: Any,
    resume: bool,
    total_steps: int,
    steps_per_epoch: int,
    parent: Parent | None,
) -> Iterator[Any]:
    """Mark the run running in its manifest and open its metrics sinks for the loop."""
    from tuneforge.train.sharding import is_sharded
    from tuneforge.train.tracking import Trackers, environment, truncate_metrics

    if plan.is_main:
        truncate_metrics(run.metrics_path, state.step)
        run.update_manifest(
            kind=RunDir.KIND,
            status="running",
            error=None,  # a resumed run's earlier stop is history now
            tuneforge_version=__version__,
            base_model=cfg.model.name,
            base_model_path=model.path,
            task=cfg.model.task,
            method=cfg.method.name,
            # How the run learns: DPO on preference pairs, or the supervised loss of its task.
            objective="dpo" if setup.is_preference(cfg, dataset.format) else "supervised",
            dataset={
                **run.dataset_location(dataset),
                "fingerprint": dataset.manifest.get("fingerprint"),
                "format": dataset.format,
                "files": split_files,  # what --resume and evaluate check the split files against
            },
            labels=dataset.labels,
            parameters=model.parameters,
            examples={"train": len(examples.train), "validation": len(examples.validation)},
            # FSDP or DeepSpeed: parameters, gradients and/or optimizer state are split over the processes.
            sharded=is_sharded(dist.unwrapped) or plan.deepspeed is not None,
            deepspeed=plan.deepspeed,
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            seed=cfg.train.seed,
            config_fingerprint=cfg.fingerprint(),
            defaults=plan.defaults,  # what --resume applies again, rather than deriving them anew
            environment=environment(plan.accelerator, cfg.train.seed),
            resumed_from_step=state.step if resume else None,
            # The run this one started from (its result, method and dataset), or None: the lineage.
            parent=parent.lineage() if parent is not None else None,
        )
    trackers = Trackers(
        run.path,
        list(cfg.train.log_to),
        config=cfg.to_dict(),
        enabled=plan.is_main,
        resume_step=state.step if resume else None,
    )
    try:
        yield trackers
    finally:
        trackers.close()


def _finish(
    run: RunDir,
    cfg: RunConfig,
    plan: setup.Plan,
    dist: setup.Distributed,
    tokenizer: Any,
    state: Any,
    outcome: Any,
    train_examples: Any,
) -> None:
    """Write final/ (never with NaN/inf weights) and mark the run completed."""
    import torch

    from tuneforge.train.checkpoint import check_finite, checkpoint_name, load_weights
    from tuneforge.train.plot import plot_loss
    from tuneforge.train.progress import peak_memory_bytes

    best = state.best_step
    if best is not None and best != state.step:
        load_weights(run.checkpoints / checkpoint_name(best), dist.training)  # rotation always keeps the best
    # A sharded model is gathered by every process; the main one saves it.
    whole = dist.training.final_state(adapter_only=not plan.full_weights)
    # Each process's peak (they differ under FSDP, where only the main process loads the whole model).
    acc = plan.accelerator
    peaks = [int(x) for x in acc.gather(torch.tensor([peak_memory_bytes()], device=acc.device))]
    if not plan.is_main:
        return
    trained = [p for p in dist.unwrapped.parameters() if p.requires_grad]
    check_finite(list(whole.values()) if whole is not None else trained, what="the final weights")
    drop_reference(dist.unwrapped)  # DPO's frozen copy of a parent adapter is not part of the result
    with atomic_dir(run.final, kind="tuneforge.final") as tmp:
        dist.unwrapped.save_pretrained(tmp, state_dict=whole, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        portable_adapter_config(tmp, cfg.model)
    plot_loss(run.metrics(), run.path / "loss.png")
    run.update_manifest(
        status="completed",
        error=None,
        step=state.step,
        stopped_early=outcome.reason in ("stopped-early", "time-budget"),
        # Why the run ended before its last planned step, if it did.
        stop_reason={"stopped-early": "early-stopping", "time-budget": "time-budget"}.get(outcome.reason),
        best={"metric": cfg.train.metric_for_best, "value": state.best_value, "step": best},
        final=str(run.final),
        saves_adapter=not plan.full_weights,
        tokens=state.tokens,
        tokens_per_s=round(outcome.tokens_per_s, 1),
        skipped_steps=state.skipped_steps,
        # Examples the run met whose answer the chat template pushed past model.max_length.
        train_no_targets_seen=getattr(train_examples, "no_targets", 0),
        # Examples the run met that were cut to fit model.max_length, by how (models/encode.py).
        train_truncated_seen=dict(getattr(train_examples, "truncated", {})),
        peak_memory_bytes=max(peaks),
        peak_memory_bytes_per_process=peaks,
        train_time_s=round(state.elapsed_s, 2),
    )


def _stopped(
    err: BaseException, run: RunDir, state: Any, checkpoints: Any, source: ConfigSource, *, is_main: bool
) -> BaseException:
    """Record how the run ended in its manifest (it never stays `running`); the exception to raise.

    A second signal, a full disk and weights an update broke become one clear line naming the newest
    checkpoint; other errors pass through unchanged (internal bugs keep their traceback).
    """
    from tuneforge.train.loop import BrokenWeights

    latest = _newest_checkpoint(checkpoints.latest() if checkpoints is not None else None, state.step)
    resume = f"continue with: tuneforge train {source.path or run.config_path} --resume"
    out: BaseException = err
    if isinstance(err, KeyboardInterrupt):
        # A second signal: stop at once. A checkpoint being written is abandoned (its temporary folder goes).
        out = StoppedAtOnce(
            f"stopped at once by a second signal after step {state.step}; {latest}", fix=resume
        )
    elif _disk_full(err):
        written = getattr(err, "filename", None) or run.path
        out = TuneforgeError(
            f"no space left on the device while writing {written} after step {state.step}; {latest}",
            where="train.output_dir",
            fix="free disk space (or lower train.keep_checkpoints), then " + resume,
        )
    elif isinstance(err, BrokenWeights):
        out = TuneforgeError(f"{err.what}; {latest}", where=err.where, fix=err.fix)
    if is_main and RunDir.is_run(run.path):
        status = "interrupted" if isinstance(out, Interrupted) else "failed"
        with contextlib.suppress(OSError):  # a full disk may refuse this too; the message still goes out
            run.update_manifest(status=status, step=state.step, error=str(out)[:500])
    return out


def _disk_full(err: BaseException) -> bool:
    if isinstance(err, DiskFull):  # artifacts.atomic_dir already discarded the half-written folder
        return True
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    # safetensors' writer (Rust) reports the OS error inside its own exception type.
    return type(err).__name__ == "SafetensorError" and ("code: 28" in str(err) or "StorageFull" in str(err))


def reload_config(run: RunDir) -> RunConfig:
    """The resolved config a run was trained with."""
    import yaml

    return config_from_dict(
        yaml.safe_load(run.config_path.read_text(encoding="utf-8")), ConfigSource(run.config_path)
    )


__all__ = ["EXIT_INTERRUPTED", "DatasetDir", "reload_config", "train"]
