"""Checkpoints in safe formats only (safetensors + JSON): weights, optimizer, scheduler, RNG and loop position.

Layout of `checkpoints/step-00000050/`:
    weights.safetensors     trainable parameters (all parameters for full fine-tuning)
    optimizer.safetensors   optimizer tensors, keyed `<param index>.<name>`
    rng.safetensors         torch CPU (and CUDA) generator states
    state.json              step, optimizer param groups, scheduler, python/numpy RNG, best metric, counters
    COMPLETE                written last; a folder without it is ignored
Each checkpoint is staged in a temporary sibling and renamed into place, so a crash mid-write leaves at most a
stray temporary folder, never a broken checkpoint.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tuneforge.artifacts import atomic_dir, read_json, write_json_atomic

COMPLETE = "COMPLETE"
PREFIX = "step-"


@dataclass
class TrainState:
    """Everything about the loop's progress that is not a tensor."""

    step: int = 0
    tokens: int = 0
    bad_steps: int = 0
    skipped_steps: int = 0
    evals_without_improvement: int = 0
    best_value: float | None = None
    best_step: int | None = None
    elapsed_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def trainable_state(model: torch.nn.Module, *, everything: bool) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().cpu().contiguous()
        for name, p in model.named_parameters()
        if everything or p.requires_grad
    }


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    np_state = np.random.get_state()
    meta = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    return tensors, meta


def _restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = meta["numpy"]
    np.random.set_state((npy[0], np.array(npy[1], dtype=np.uint32), *npy[2:]))


def save_checkpoint(
    root: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainState,
    full_weights: bool,
) -> Path:
    target = root / f"{PREFIX}{state.step:08d}"
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    rng_tensors, rng_meta = _rng_state()
    with atomic_dir(target) as tmp:
        save_file(trainable_state(model, everything=full_weights), str(tmp / "weights.safetensors"))
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        write_json_atomic(
            tmp / "state.json",
            {
                "train": asdict(state),
                "optimizer": opt_meta,
                "scheduler": scheduler.state_dict(),
                "rng": rng_meta,
            },
        )
        (tmp / COMPLETE).write_text("ok\n")
    return target


def complete_checkpoints(root: Path) -> list[Path]:
    """Finished checkpoints, oldest first; half-written or foreign folders are ignored."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / COMPLETE).is_file()]
    return sorted(found, key=lambda p: int(p.name.removeprefix(PREFIX)))


def load_checkpoint(
    path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> TrainState:
    """Restore everything saved by `save_checkpoint`; the RNG last, so nothing after it disturbs the streams."""
    meta = read_json(path / "state.json")
    weights = load_file(str(path / "weights.safetensors"))
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in weights]
    if missing:
        raise RuntimeError(f"checkpoint {path} lacks trainable parameters: {missing[:5]}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    _load_optimizer(optimizer, load_file(str(path / "optimizer.safetensors")), meta["optimizer"])
    scheduler.load_state_dict(meta["scheduler"])
    _restore_rng(load_file(str(path / "rng.safetensors")), meta["rng"])
    return TrainState(**meta["train"])


def load_weights(path: Path, model: torch.nn.Module) -> None:
    """Load only the weights of a checkpoint (to restore the best one at the end)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in load_file(str(path / "weights.safetensors")).items():
            params[name].copy_(value)


def rotate(root: Path, keep: int, best_step: int | None) -> None:
    """Keep the latest `keep` complete checkpoints and the best one; drop stale temporary folders."""
    done = complete_checkpoints(root)
    protected = {p for p in done[-keep:]}
    if best_step is not None:
        protected |= {p for p in done if p.name == f"{PREFIX}{best_step:08d}"}
    for p in done:
        if p not in protected:
            shutil.rmtree(p, ignore_errors=True)
    for p in root.iterdir():
        if p.name.startswith(f".{PREFIX}") and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
