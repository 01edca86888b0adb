"""Checkpoints in safe formats only (safetensors + JSON): weights, optimizer, scheduler, RNG, loop position.

Layout of `checkpoints/step-00000050/`:
    weights.safetensors     trainable parameters (all parameters for full fine-tuning)
    optimizer.safetensors   optimizer tensors, keyed `<parameter name>.<state key>`
    rng.safetensors         torch CPU (and CUDA) generator states of every process
    state.json              step, optimizer param groups, scheduler, grad scaler, python/numpy RNG, counters
    COMPLETE                written last; a folder without it is ignored
Each checkpoint is staged in a temporary sibling (`.step-00000050.<random>.tmp`), fsynced and renamed into
place, so a crash mid-write leaves at most a stray temporary folder (removed by the next save), never a broken
checkpoint.
The data position needs no saving: it is a pure function of the step (see loop.py).
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tuneforge.artifacts import atomic_dir, read_json, write_json_atomic
from tuneforge.errors import TuneforgeError
from tuneforge.train.sharding import is_sharded

COMPLETE = "COMPLETE"
PREFIX = "step-"
# 2: optimizer tensors keyed by parameter name (1 keyed them by position), random streams per process.
FORMAT = 2
# Fault-injection point for the crash-safety tests: "STEP:SECONDS" pauses the write of that step's checkpoint
# after its weights are on disk, so a test can `kill -9` the process in the middle of a checkpoint.
PAUSE_ENV = "TUNEFORGE_TEST_CHECKPOINT_PAUSE"


@dataclass
class TrainState:
    """The loop's progress that is not a tensor (the epoch and the data position follow from the step)."""

    step: int = 0
    tokens: int = 0
    bad_steps: int = 0
    skipped_steps: int = 0
    evals_without_improvement: int = 0
    best_value: float | None = None
    best_step: int | None = None
    stopped_early: bool = False
    elapsed_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def _full(**options: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **options)


def model_state(model: torch.nn.Module, *, adapter_only: bool) -> dict[str, torch.Tensor]:
    """The whole (unsharded) CPU state dict, buffers and tied names included, as `save_pretrained` takes it.

    torch's distributed state-dict API gathers FSDP shards and passes plain and DDP models through, so one
    checkpoint format serves every way of training. With FSDP every process must call it (gathering is
    collective) and only the main process gets the tensors back.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state: Any = get_model_state_dict(
        model, options=_full(cpu_offload=True, ignore_frozen_params=adapter_only)
    )
    return cast(dict[str, torch.Tensor], state)


def model_weights(model: torch.nn.Module, *, everything: bool) -> dict[str, torch.Tensor]:
    """What a checkpoint keeps of `model_state`: the trainable parameters (all for full fine-tuning)."""
    names = [n for n, p in model.named_parameters() if everything or p.requires_grad]  # tied weights once
    state = model_state(model, adapter_only=not everything)
    return {n: state[n].contiguous() for n in names if n in state}


def check_weights_fit(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: Path) -> None:
    """Refuse a checkpoint whose weights are not this model's trainable parameters."""
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    unknown = [n for n in weights if n not in params]
    if missing or unknown:
        raise TuneforgeError(
            f"checkpoint {source} does not fit this model (missing {missing[:3]}, unexpected {unknown[:3]})",
            where="method",
            fix="resume with the model and method the run started with",
        )


def set_model_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: Path) -> None:
    """Load whole weights (every process passes the same ones; FSDP keeps each process's shard)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    check_weights_fit(model, weights, source)
    set_model_state_dict(model, cast(Any, weights), options=_full(strict=False))


def _optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Whole optimizer state keyed by parameter name (`<name>.<state key>`), like `model_weights`."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    sd: Any = get_optimizer_state_dict(model, optimizer, options=_full(cpu_offload=True))
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for name, st in sd.get("state", {}).items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{name}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(name, {})[key] = value
    return tensors, {"param_groups": sd.get("param_groups", []), "scalars": scalars}


def _load_optimizer(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    state: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        name, item = key.rsplit(".", 1)
        state.setdefault(name, {})[item] = value
    for name, values in meta["scalars"].items():
        state.setdefault(name, {}).update(values)
    groups = meta["param_groups"]
    # JSON turns tuples (AdamW's betas) into lists; give them back the type the optimizer was built with.
    for saved, current in zip(groups, optimizer.param_groups, strict=True):
        for key, value in current.items():
            if isinstance(value, tuple) and isinstance(saved.get(key), list):
                saved[key] = tuple(saved[key])
    whole: Any = {"state": state, "param_groups": groups}
    set_optimizer_state_dict(model, optimizer, whole, options=_full())


class TrainingState(Protocol):
    """How checkpoints read and write a model's trainable state and its optimizer's.

    `TorchState` serves single-process, DDP and FSDP runs through torch's distributed state-dict API;
    `zero.ZeroState` serves DeepSpeed. Both write the same checkpoint: whole tensors keyed by parameter name.
    """

    collective: bool
    """Every process must take part in reading the state (it is sharded), not only the main one."""

    def weights(self, *, everything: bool) -> dict[str, torch.Tensor]:
        """The trainable parameters (all of them when `everything`), whole, on the CPU."""
        ...

    def set_weights(self, weights: dict[str, torch.Tensor], source: Path) -> None: ...

    def optimizer_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors keyed `<parameter name>.<state key>`, and JSON-able param groups and scalars."""
        ...

    def set_optimizer_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None: ...

    def final_state(self, *, adapter_only: bool) -> dict[str, torch.Tensor] | None:
        """The state dict `save_pretrained` should write (None: the model's own state dict will do)."""
        ...


class TorchState:
    """A plain, DDP or FSDP model and its torch optimizer."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.optimizer = optimizer
        self.collective = is_sharded(model)

    def weights(self, *, everything: bool) -> dict[str, torch.Tensor]:
        return model_weights(self.model, everything=everything)

    def set_weights(self, weights: dict[str, torch.Tensor], source: Path) -> None:
        set_model_weights(self.model, weights, source)

    def optimizer_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return _optimizer_state(self.model, self.optimizer)

    def set_optimizer_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        _load_optimizer(self.model, self.optimizer, tensors, meta)

    def final_state(self, *, adapter_only: bool) -> dict[str, torch.Tensor] | None:
        # A sharded model is gathered by every process; an unsharded one saves its own state dict.
        return model_state(self.model, adapter_only=adapter_only) if self.collective else None


def _local_rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    py = random.getstate()
    np_state = cast(tuple[Any, ...], np.random.get_state(legacy=True))
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    return tensors, meta


def rng_states() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every process's random streams (keyed `<process>.torch`, ...): dropout draws differ per process.

    Every process must call it; all get the same result.
    """
    import torch.distributed as dist

    local = _local_rng_state()
    every = [local]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # Plain lists and byte tensors between our own processes (no file is unpickled).
        every = [local] * dist.get_world_size()
        dist.all_gather_object(every, local)
    tensors = {f"{rank}.{key}": t for rank, (ts, _) in enumerate(every) for key, t in ts.items()}
    return tensors, {"processes": [meta for _, meta in every]}


def restore_rng(path: Path, process: int = 0) -> None:
    """Put this process's python, numpy and torch random streams back where they were when `path` was saved.

    A resume forced onto more processes than saved reuses the saved streams in turn.
    """
    tensors = load_file(str(path / "rng.safetensors"))
    saved = read_json(path / "state.json")["rng"]["processes"]
    rank = process % len(saved)
    mine = {k.split(".", 1)[1]: t for k, t in tensors.items() if k.split(".", 1)[0] == str(rank)}
    torch.set_rng_state(mine["torch"])
    cuda = [mine[k] for k in sorted((k for k in mine if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    py = saved[rank]["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = saved[rank]["numpy"]
    np.random.set_state((npy[0], np.array(npy[1], dtype=np.uint32), *npy[2:]))


def _pause_for_tests(step: int) -> None:
    spec = os.environ.get(PAUSE_ENV)
    if spec and int(spec.split(":")[0]) == step:
        print(f"checkpoint {step}: pausing mid-write ({PAUSE_ENV})", file=sys.stderr, flush=True)
        time.sleep(float(spec.split(":")[1]))


def save_checkpoint(
    root: Path,
    *,
    weights: dict[str, torch.Tensor],
    optimizer: tuple[dict[str, torch.Tensor], dict[str, Any]],
    rng: tuple[dict[str, torch.Tensor], dict[str, Any]],
    scheduler: Any,
    state: TrainState,
    scaler: Any = None,
) -> Path:
    """Write one complete checkpoint for `state.step` atomically and return its folder.

    `weights`, `optimizer` and `rng` come from `model_weights`, `_optimizer_state` and `rng_states`, which
    every process calls.
    """
    target = root / checkpoint_name(state.step)
    opt_tensors, opt_meta = optimizer
    rng_tensors, rng_meta = rng
    with atomic_dir(target, kind="tuneforge.checkpoint") as tmp:
        save_file(weights, str(tmp / "weights.safetensors"))
        _pause_for_tests(state.step)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        write_json_atomic(
            tmp / "state.json",
            {
                "format": FORMAT,
                "train": asdict(state),
                "optimizer": opt_meta,
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": rng_meta,
            },
        )
        (tmp / COMPLETE).write_text("ok\n")
    return target


def complete_checkpoints(root: Path) -> list[Path]:
    """Finished checkpoints, oldest first; half-written or foreign folders are ignored."""
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.name.startswith(PREFIX) and p.name.removeprefix(PREFIX).isdigit() and (p / COMPLETE).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name.removeprefix(PREFIX)))


def load_checkpoint(
    path: Path,
    *,
    training: TrainingState,
    scheduler: Any,
    scaler: Any = None,
) -> TrainState:
    """Restore weights, optimizer, scheduler and grad scaler from `path` (the RNG: see `restore_rng`)."""
    meta = read_json(path / "state.json")
    if meta.get("format") != FORMAT:
        raise TuneforgeError(
            f"checkpoint {path} was written by an earlier tuneforge in checkpoint format "
            f"{meta.get('format', 1)}; this one reads format {FORMAT}",
            where="train.output_dir",
            fix="start the run again (without --resume), or resume it with the tuneforge that started it",
        )
    training.set_weights(load_file(str(path / "weights.safetensors")), path)
    training.set_optimizer_state(load_file(str(path / "optimizer.safetensors")), meta["optimizer"])
    scheduler.load_state_dict(meta["scheduler"])
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    return TrainState(**meta["train"])


def load_weights(path: Path, training: TrainingState) -> None:
    """Load only the weights of a checkpoint (to restore the best one at the end)."""
    training.set_weights(load_file(str(path / "weights.safetensors")), path)


def rotate(root: Path, keep: int, best_step: int | None) -> list[Path]:
    """Keep the latest `keep` (at least one) complete checkpoints and the best; drop stale temporary folders.

    Returns the deleted checkpoints. Incomplete `step-*` folders are not ours to judge and are left alone.
    """
    done = complete_checkpoints(root)
    protected = set(done[-max(keep, 1) :])
    if best_step is not None:
        protected |= {p for p in done if p.name == checkpoint_name(best_step)}
    deleted = [p for p in done if p not in protected]
    for p in deleted:
        shutil.rmtree(p, ignore_errors=True)
    for p in root.iterdir():
        if p.name.startswith(f".{PREFIX}") and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
    return deleted


def check_finite(tensors: list[torch.Tensor], *, what: str) -> None:
    """Refuse to save NaN/inf weights: a checkpoint or final/ must always be something worth loading."""
    from tuneforge.train.engine import weights_finite

    if not weights_finite(tensors):
        raise TuneforgeError(
            f"refusing to save {what}: they hold NaN/inf values",
            where="train.learning_rate",
            fix="lower train.learning_rate (or set train.max_grad_norm) and resume an earlier checkpoint",
        )


class Checkpointer:
    """Saves the run's checkpoints (once per step, main process only) and rotates them."""

    @classmethod
    def for_run(
        cls,
        run: Any,
        training: TrainingState,
        scheduler: Any,
        settings: Any,
        full_weights: bool,
        accelerator: Any,
    ) -> Checkpointer:
        """The checkpointer of a run directory, as the run's config and accelerator say."""
        return cls(
            run.checkpoints,
            training=training,
            scheduler=scheduler,
            full_weights=full_weights,
            keep=settings.keep_checkpoints,
            scaler=getattr(accelerator, "scaler", None),
            is_main=accelerator.is_main_process,
            barrier=accelerator.wait_for_everyone,
        )

    def __init__(
        self,
        root: Path,
        *,
        training: TrainingState,
        scheduler: Any,
        full_weights: bool,
        keep: int,
        scaler: Any = None,
        is_main: bool = True,
        barrier: Callable[[], None] = lambda: None,
    ) -> None:
        self.root = root
        self.training = training
        self.scheduler = scheduler
        self.full_weights = full_weights
        self.keep = keep
        self.scaler = scaler
        self.is_main = is_main
        self.barrier = barrier
        self.saved_step: int | None = None
        self.resumed_from: Path | None = None

    def latest(self) -> Path | None:
        done = complete_checkpoints(self.root)
        return done[-1] if done else None

    def resume(self) -> TrainState | None:
        """Load the latest complete checkpoint (None when there is none yet)."""
        latest = self.latest()
        if latest is None:
            return None
        state = load_checkpoint(latest, training=self.training, scheduler=self.scheduler, scaler=self.scaler)
        self.saved_step = state.step
        self.resumed_from = latest
        return state

    def save(self, state: TrainState) -> None:
        if self.saved_step == state.step:
            return
        self.saved_step = state.step
        # Written by the main process. Sharded state (FSDP, DeepSpeed) is gathered by every process; an
        # unsharded model's state is whole already, so the other processes do not copy it.
        weights: dict[str, torch.Tensor] = {}
        optimizer: tuple[dict[str, torch.Tensor], dict[str, Any]] = ({}, {})
        if self.is_main or self.training.collective:
            weights = self.training.weights(everything=self.full_weights)
            optimizer = self.training.optimizer_state()
        rng = rng_states()  # every process's own streams
        self.barrier()
        if self.is_main:
            check_finite(list(weights.values()), what=f"the checkpoint of step {state.step}")
            save_checkpoint(
                self.root,
                weights=weights,
                optimizer=optimizer,
                rng=rng,
                scheduler=self.scheduler,
                state=state,
                scaler=self.scaler,
            )
            rotate(self.root, self.keep, state.best_step)
        self.barrier()
