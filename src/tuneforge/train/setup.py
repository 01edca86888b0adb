"""The steps `train()` is made of, in the order it calls them: plan, inputs, model, examples, distribution.

Each step takes flat arguments and returns what the next needs, like torchtune's recipe setup functions, so
`run.train` reads as the recipe and each step can be read (and tested) on its own.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from tuneforge.artifacts import DatasetDir, RunDir
from tuneforge.config import ConfigSource, RunConfig
from tuneforge.data import prepare_dataset
from tuneforge.data.lengths import lengths_for_model
from tuneforge.errors import TuneforgeError
from tuneforge.models import load_model, load_tokenizer, resolve_method, resolve_model_path
from tuneforge.models.lineage import Parent, continue_adapter, merged_adapter
from tuneforge.models.methods import count_parameters, describe_parameters
from tuneforge.train.devices import build_accelerator, check_distributed_type, set_num_threads
from tuneforge.train.optimizer import balanced_class_weights, build_optimizer
from tuneforge.train.sharding import check_fsdp
from tuneforge.train.tracking import check_sinks


@dataclass
class Plan:
    """What the config asks for, checked before anything is loaded or written."""

    method: ModuleType
    options: Any
    accelerator: Any
    deepspeed: dict[str, Any] | None
    """The filled-in DeepSpeed config, or None (DDP/FSDP/one process)."""
    defaults: dict[str, Any] = field(default_factory=dict)
    """The recipe's settings for the keys the user left unset (dotted key -> value), as recorded."""
    defaults_line: str = ""
    """What to print once the run starts (after every check, so an error is still the first line)."""

    @property
    def is_main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    @property
    def full_weights(self) -> bool:
        """Checkpoints and final/ hold every weight (full fine-tuning), not an adapter."""
        return not getattr(self.method, "SAVES_ADAPTER", True)


def plan(cfg: RunConfig, source: ConfigSource) -> Plan:
    """Validate the method, loggers, accelerator and sharding (and whether they can run here)."""
    from tuneforge.train.zero import check_installed, deepspeed_config

    method, options = resolve_method(cfg.method, source, task=cfg.model.task)
    accelerator = build_accelerator(cfg)
    set_num_threads(cfg.train)
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
    check_sinks(list(cfg.train.log_to), run_dir=cfg.train.output_dir)  # last: it may open MLflow's store
    return Plan(method, options, accelerator, ds)


def load_dataset(cfg: RunConfig, source: ConfigSource, accelerator: Any) -> DatasetDir:
    """Prepare (or find) the dataset; check that it fits the task, the method and the validation settings."""
    # The main process prepares (or finds) the dataset first; the others then reuse it instead of racing it.
    with accelerator.main_process_first():
        dataset = prepare_dataset(cfg.data, model=cfg.model)
    _check_task_fits(cfg.model.task, dataset.format)
    if is_preference(cfg, dataset.format):
        _check_preference(cfg, source)
    _check_validation_settings(
        cfg,
        source,
        has_validation=bool(dataset.records("validation")),
        preference=is_preference(cfg, dataset.format),
    )
    return dataset


def is_preference(cfg: RunConfig, fmt: str) -> bool:
    """A causal LM on preference records learns with the DPO objective (models/preference.py)."""
    return cfg.model.task == "causal-lm" and fmt == "preference"


def _check_preference(cfg: RunConfig, source: ConfigSource) -> None:
    """DPO runs without sharding: its reference forward needs the whole (unwrapped) model."""
    for key, on in (("train.fsdp", cfg.train.fsdp), ("train.deepspeed", cfg.train.deepspeed is not None)):
        if on:
            raise TuneforgeError(
                "DPO (a preference dataset) does not run sharded yet: its reference forward runs on the "
                "unwrapped model (the adapter switched off, or the whole model before step 1), which "
                "sharded engines do not support",
                where=source.where(key),
                fix=f"unset {key} (several processes with DDP work)",
            )


def apply_defaults(
    cfg: RunConfig, source: ConfigSource, plan: Plan, dataset: DatasetDir, *, resume: bool
) -> tuple[RunConfig, Plan]:
    """Fill the keys the user left unset with the recipe `recommend` uses (models/recommend.py), and say so.

    A resumed run takes the values its manifest recorded, never newly derived ones, so it goes on exactly as
    it started. A config built in code (source.given None) is taken as it is.
    """
    from tuneforge.models.recommend import apply_settings, defaults_for, describe_defaults

    if source.given is None:
        return cfg, plan
    started = RunDir(Path(cfg.train.output_dir)).manifest if resume else {}
    # A run whose manifest predates recorded defaults started without any: resume it so, unchanged.
    recorded = started.get("defaults", {}) if started else None
    time_line, manifest = "", {}
    if recorded is not None:
        chosen = {k: v for k, v in recorded.items() if k not in source.given}
    else:
        # The dataset's lengths as this run's model sees them (measured again if prepared for another).
        manifest = lengths_for_model(dataset, cfg.model, cfg.data.prompt_template)
        cuda = getattr(plan.accelerator.device, "type", "cpu") == "cuda"
        procs = plan.accelerator.num_processes
        chosen = defaults_for(cfg, manifest, source.given, cuda=cuda, processes=procs)
        chosen, time_line = _fit_time(cfg, source, manifest, chosen, cuda=cuda, processes=procs)
    if not chosen:
        return cfg, plan
    cfg = apply_settings(cfg, chosen, source)
    line = describe_defaults(cfg, manifest, chosen) if plan.is_main and recorded is None else ""
    if time_line and plan.is_main:
        line += "\n" + time_line
    method, options = resolve_method(cfg.method, source, task=cfg.model.task)
    return cfg, dataclasses.replace(plan, method=method, options=options, defaults=chosen, defaults_line=line)


def _fit_time(
    cfg: RunConfig,
    source: ConfigSource,
    manifest: dict[str, Any],
    chosen: dict[str, Any],
    *,
    cuda: bool,
    processes: int,
) -> tuple[dict[str, Any], str]:
    """The defaults cut to the time budget (or, on CPU, to half an hour): models/budget.py decides, from the
    estimate of this machine; switching method takes that method's own recipe. Returns (defaults, line)."""
    from tuneforge.models.budget import fit_budget
    from tuneforge.models.estimate import detect_device, estimate
    from tuneforge.models.recommend import apply_settings, defaults_for

    given = source.given or set()
    planned = apply_settings(cfg, chosen, source)
    t = planned.train
    rows = int((manifest.get("splits") or {}).get("train") or 0)
    per_epoch = math.ceil(rows / max(t.batch_size * t.gradient_accumulation_steps * processes, 1))
    device = None

    def step_s(method: str) -> float | None:
        nonlocal device
        try:
            device = device or detect_device(measure_flops=True)
            sized = (
                apply_settings(planned, {"method.name": method}) if method != planned.method.name else planned
            )
            return estimate(sized, device=device, manifest=manifest, processes=processes).step_s
        except Exception:  # a model the estimate cannot size keeps the recipe's length (loading will tell)
            return None

    if planned.method.name == "head":
        return _fit_head_time(planned, manifest, chosen, given, cuda=cuda)
    fit = fit_budget(
        budget_s=t.time_budget,
        cuda=cuda,
        given=given,
        planned_steps=t.max_steps or math.ceil(t.epochs * per_epoch),
        steps_per_epoch=per_epoch,
        eval_every=t.eval_every,
        method=planned.method.name,
        step_s=step_s,
        can_switch_to_lora=cfg.model.task != "causal-lm",
    )
    if fit is None:
        return chosen, ""
    if fit.settings.get("method.name", planned.method.name) != planned.method.name:
        # The new method's own recipe (its learning rate, its options), then the fitted length.
        switched = apply_settings(cfg, {"method.name": fit.settings["method.name"]}, source)
        chosen = {"method.name": fit.settings["method.name"]} | defaults_for(
            switched, manifest, given | {"method.name"}, cuda=cuda, processes=processes
        )
    chosen = {k: v for k, v in chosen.items() if k != "train.epochs"} | fit.settings
    return chosen, fit.line


def _fit_head_time(
    planned: RunConfig, manifest: dict[str, Any], chosen: dict[str, Any], given: set[str], *, cuda: bool
) -> tuple[dict[str, Any], str]:
    """Method head has no steps to cut: the budget caps the training texts it embeds (models/budget.py)."""
    from tuneforge.models.budget import fit_head_budget
    from tuneforge.models.estimate import detect_device, estimate
    from tuneforge.models.shape import load_config

    try:
        sized = estimate(planned, device=detect_device(measure_flops=True), manifest=manifest)
        config, _ = load_config(planned.model)
    except Exception:  # a model the estimate cannot size embeds every text (loading will tell)
        return chosen, ""
    config = getattr(config, "text_config", None) or config
    splits = manifest.get("splits") or {}
    val_rows = int(splits.get("validation") or 0)
    if planned.train.eval_max_examples is not None:
        val_rows = min(val_rows, planned.train.eval_max_examples)
    fit = fit_head_budget(
        budget_s=planned.train.time_budget,
        cuda=cuda,
        given=given,
        embed_s=sized.epoch_s,
        train_rows=int(splits.get("train") or 0),
        val_rows=val_rows,
        width=int(getattr(config, "hidden_size", 0) or 384),
        grid=len(planned.method.options().get("regularization") or [1.0]),
    )
    if fit is None:
        return chosen, ""
    return chosen | fit.settings, fit.line


@dataclass
class Trainable:
    tokenizer: Any
    model: Any
    path: str
    """The base model's local folder."""
    parameters: dict[str, int]
    """trainable and total parameter counts."""


def load_trainable_model(
    cfg: RunConfig, plan: Plan, labels: list[str], parent: Parent | None = None, *, preference: bool = False
) -> Trainable:
    """The tokenizer and the base model with the method applied.

    From a `parent` adapter run, its adapter continues instead (and, for DPO, a frozen copy of it is the
    reference), or is merged into the base first under full fine-tuning (models/lineage.py).
    """
    from accelerate.utils import set_seed

    set_seed(cfg.train.seed)  # before the method initialises its weights
    model_path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(cfg.model, model_path)
    model = load_model(
        cfg.model,
        labels=labels,
        path=model_path,
        pad_token_id=tokenizer.pad_token_id,
        method=cfg.method,
        empty=cfg.train.fsdp and not plan.is_main,  # FSDP: only the main process loads
    )
    if parent is not None and parent.saves_adapter and not plan.full_weights:
        prepare = getattr(plan.method, "prepare", None)
        model = continue_adapter(model, parent, reference=preference, prepare=prepare)
    else:
        if parent is not None and parent.saves_adapter:
            model = merged_adapter(model, parent)
        model = plan.method.apply(model, plan.options, cfg.model.task)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    trainable, total = count_parameters(model)
    if plan.is_main:
        print(describe_parameters(trainable, total), file=sys.stderr, flush=True)
    return Trainable(tokenizer, model, model_path, {"trainable": trainable, "total": total})


@dataclass
class Examples:
    train: Sequence[Any]
    validation: list[Any]
    train_records: list[dict[str, Any]]


def encode_examples(cfg: RunConfig, source: ConfigSource, dataset: DatasetDir, tokenizer: Any) -> Examples:
    """Training examples (encoded lazily, on first use) and the validation examples (encoded now)."""
    from tuneforge.models.encode import LazyExamples, encode_for_task, encoder, has_targets

    task, fmt = cfg.model.task, dataset.format
    encode: dict[str, Any] = {
        "tok": tokenizer,
        "task": task,
        "fmt": fmt,
        "labels": dataset.labels,
        "max_length": cfg.model.max_length,
        "template": cfg.data.prompt_template,
        "truncation": cfg.data.truncation,
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
    return Examples(train_examples, val_examples, train_records)


@dataclass
class Distributed:
    """The model as each process trains it, its optimizer, and how a step and a checkpoint reach them."""

    model: Any
    unwrapped: Any
    optimizer: Any
    engine: Any
    """An engine.StepEngine."""
    training: Any
    """A checkpoint.TrainingState."""


def distribute(cfg: RunConfig, plan: Plan, model: Any) -> Distributed:
    """Wrap the model for DDP, FSDP or DeepSpeed and build the optimizer over what each process holds."""
    from tuneforge.train.checkpoint import TorchState
    from tuneforge.train.engine import TorchEngine
    from tuneforge.train.sharding import shard_from_main
    from tuneforge.train.zero import ZeroEngine, ZeroState, ensure_process_group, initialize

    acc = plan.accelerator
    if plan.deepspeed is not None:
        # DeepSpeed replaces DDP: its engine partitions the optimizer built here; the scheduler stays ours.
        ensure_process_group()
        optimizer = build_optimizer(model, cfg)
        engine = initialize(model, optimizer, plan.deepspeed)
        return Distributed(
            engine, engine.module, optimizer, ZeroEngine(engine), ZeroState(engine, is_main=plan.is_main)
        )
    if cfg.train.fsdp:
        # FSDP replaces DDP: shard first, then build the optimizer over the shards.
        model = shard_from_main(
            model,
            bf16=acc.mixed_precision == "bf16",
            cpu_offload=cfg.train.fsdp_cpu_offload,
            device=acc.device,
            is_main=plan.is_main,
        )
        optimizer = acc.prepare(build_optimizer(model, cfg))
    else:
        model, optimizer = acc.prepare(model, build_optimizer(model, cfg))
    unwrapped = acc.unwrap_model(model)
    training = TorchState(unwrapped, getattr(optimizer, "optimizer", optimizer))  # torch's, not accelerate's
    return Distributed(
        model, unwrapped, optimizer, TorchEngine(acc, model, optimizer, cfg.train.max_grad_norm), training
    )


def build_loop(
    cfg: RunConfig,
    plan: Plan,
    dist: Distributed,
    examples: Examples,
    dataset: DatasetDir,
    tokenizer: Any,
    reference_tables: dict[str, Any] | None = None,
) -> tuple[Any, Any, int]:
    """The learning-rate schedule over the run's steps and the loop that takes them; and the step count."""
    from tuneforge.train.batches import steps_per_epoch
    from tuneforge.train.loop import Loop
    from tuneforge.train.schedule import build_scheduler

    acc, settings = plan.accelerator, cfg.train
    per_epoch = steps_per_epoch(
        len(examples.train), settings.batch_size, settings.gradient_accumulation_steps, acc.num_processes
    )
    total_steps = settings.max_steps or math.ceil(settings.epochs * per_epoch)
    scheduler = build_scheduler(dist.optimizer, settings, total_steps)
    weights = None
    if cfg.model.task == "classification" and settings.class_weights == "balanced":
        weights = balanced_class_weights(examples.train_records, dataset.labels).to(acc.device)
    loop = Loop(
        accelerator=acc,
        model=dist.model,
        engine=dist.engine,
        scheduler=scheduler,
        train_examples=examples.train,
        task=cfg.model.task,
        batch_size=settings.batch_size,
        accumulation=settings.gradient_accumulation_steps,
        seed=settings.seed,
        pad_id=int(tokenizer.pad_token_id),
        class_weights=weights,
        pack_examples=settings.pack_examples,
        group_by_length=settings.group_by_length,
        dpo_beta=settings.dpo_beta if is_preference(cfg, dataset.format) else None,
        reference_tables=reference_tables,
    )
    return loop, scheduler, total_steps


def _check_validation_settings(
    cfg: RunConfig, source: ConfigSource, *, has_validation: bool, preference: bool
) -> None:
    from tuneforge.train.loop import validation_metrics

    names = validation_metrics(cfg.model.task, preference)
    if cfg.train.metric_for_best not in names:
        what = "DPO run (a preference dataset)" if preference else f"{cfg.model.task} model"
        raise TuneforgeError(
            f"validation of a {what} has no metric {cfg.train.metric_for_best!r}",
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
