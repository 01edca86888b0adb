"""DeepSpeed ZeRO (`train.deepspeed`): optimizer state, gradients and (stage 3) weights split over processes.

Why we drive the engine ourselves instead of through accelerate's DeepSpeed mode: accelerate steps the
optimizer inside `backward` and counts accumulation itself. We call `deepspeed.initialize` and use
DeepSpeed's caller-owned accumulation (`managed_gradient_accumulation: false`), so the loop keeps its exact
accumulation over micro-batches and its NaN guard (DeepSpeed's overflow check skips the update, the loop
counts the step as bad). Checkpoints are read and written per parameter through DeepSpeed's
tensor-fragment API into the same safetensors checkpoint every other way of training writes (DeepSpeed's own
checkpoints are pickles), so they stay safe to load and exact.

The run config stays the one source of truth: batch size, accumulation, clipping and precision are filled in
from `train.*` where the DeepSpeed config says "auto" (or nothing), and a different value there is refused.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tuneforge.config import RunConfig
from tuneforge.errors import TuneforgeError
from tuneforge.train.engine import Update, weights_finite

_ZERO_DEFAULTS = {"overlap_comm": True, "contiguous_gradients": True}
_OFFLOAD = {"device": "cpu", "pin_memory": True}
PRESETS: dict[str, dict[str, Any]] = {
    "zero1": {"zero_optimization": {"stage": 1}},
    "zero2": {"zero_optimization": {"stage": 2, **_ZERO_DEFAULTS}},
    "zero3": {"zero_optimization": {"stage": 3, **_ZERO_DEFAULTS}},
    "zero3-offload": {
        "zero_optimization": {
            "stage": 3,
            **_ZERO_DEFAULTS,
            "offload_optimizer": _OFFLOAD,
            "offload_param": _OFFLOAD,
        }
    },
}
for _preset in PRESETS.values():
    _preset.update(
        {
            "train_batch_size": "auto",
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto",
            "bf16": {"enabled": "auto"},
        }
    )

# DeepSpeed sections that tuneforge decides, and the train.* keys that decide them instead.
OWNED_SECTIONS = {
    "optimizer": "train.learning_rate and train.weight_decay (tuneforge builds AdamW)",
    "scheduler": "train.scheduler and train.warmup_ratio",
    "fp16": "train.mixed_precision (fp16 is not supported with DeepSpeed here; use bf16)",
}


def _where_file(path: Path | None, key: str) -> str:
    return f"{path} ({key})" if path is not None else f"train.deepspeed preset ({key})"


def read_deepspeed_config(value: str, where: Callable[[str], str]) -> tuple[dict[str, Any], Path | None]:
    """A preset name or a JSON file → the DeepSpeed config as written (and the file it came from)."""
    if value in PRESETS:
        return copy.deepcopy(PRESETS[value]), None
    path = Path(value).expanduser()
    if not path.is_file():
        raise TuneforgeError(
            f"train.deepspeed is {value!r}: neither a preset nor an existing file",
            where=where("train.deepspeed"),
            fix="use a preset (" + ", ".join(PRESETS) + ") or the path of a DeepSpeed JSON config, e.g. "
            "configs/deepspeed/zero2.json",
        )
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise TuneforgeError(
            f"DeepSpeed config {path} is not valid JSON: {err.msg}",
            where=f"{path}:{err.lineno}:{err.colno}",
            fix="fix the JSON (DeepSpeed configs are plain JSON, without comments)",
        ) from None
    if not isinstance(loaded, dict):
        raise TuneforgeError(f"DeepSpeed config {path} is not a JSON object", where=str(path))
    return loaded, path


def zero_stage(ds: dict[str, Any]) -> int:
    return int((ds.get("zero_optimization") or {}).get("stage", 0))


def deepspeed_config(
    cfg: RunConfig, *, processes: int, precision: str, where: Callable[[str], str]
) -> dict[str, Any]:
    """The DeepSpeed config a run uses: train.deepspeed with what the run config decides filled in.

    Refuses, before anything is loaded, what this integration cannot honour.
    """
    assert cfg.train.deepspeed is not None
    ds, path = read_deepspeed_config(cfg.train.deepspeed, where)
    here = where("train.deepspeed")
    for section, owner in OWNED_SECTIONS.items():
        if section in ds and not (section == "fp16" and not (ds["fp16"] or {}).get("enabled", False)):
            raise TuneforgeError(
                f"the DeepSpeed config sets {section!r}, which tuneforge decides from {owner}",
                where=_where_file(path, section),
                fix=f"remove {section!r} from the DeepSpeed config",
            )
    stage = zero_stage(ds)
    if stage not in (1, 2, 3):
        raise TuneforgeError(
            f"zero_optimization.stage is {stage}; tuneforge uses DeepSpeed for ZeRO stages 1, 2 and 3",
            where=_where_file(path, "zero_optimization.stage"),
            fix="set zero_optimization.stage to 1, 2 or 3 (or unset train.deepspeed: DDP, no sharding)",
        )
    _check_method(cfg, stage, here)
    accumulation = cfg.train.gradient_accumulation_steps
    wanted = {
        "train_micro_batch_size_per_gpu": (cfg.train.batch_size, "train.batch_size"),
        "gradient_accumulation_steps": (accumulation, "train.gradient_accumulation_steps"),
        "train_batch_size": (
            cfg.train.batch_size * accumulation * processes,
            "train.batch_size x train.gradient_accumulation_steps x processes",
        ),
        "gradient_clipping": (cfg.train.max_grad_norm or 0.0, "train.max_grad_norm"),
    }
    for key, (value, owner) in wanted.items():
        given = ds.get(key, "auto")
        if given != "auto" and not _same_number(given, value):
            raise TuneforgeError(
                f"the DeepSpeed config sets {key} to {given!r}, and the run config makes it {value!r} "
                f"({owner})",
                where=_where_file(path, key),
                fix=f'set {key} to "auto" in the DeepSpeed config (or change {owner})',
            )
        ds[key] = value
    bf16 = dict(ds.get("bf16") or {})
    if bf16.get("enabled", "auto") not in ("auto", precision == "bf16"):
        raise TuneforgeError(
            f"the DeepSpeed config has bf16.enabled {bf16['enabled']}, and train.mixed_precision resolves "
            f"to {precision}",
            where=_where_file(path, "bf16.enabled"),
            fix='set bf16.enabled to "auto" in the DeepSpeed config',
        )
    # The overflow check is the loop's NaN guard: an inf/NaN gradient skips the update.
    ds["bf16"] = {**bf16, "enabled": precision == "bf16", "check_grad_overflow": True}
    zero = dict(ds["zero_optimization"])
    if zero.get("compute_grad_norm") is False:
        raise TuneforgeError(
            "zero_optimization.compute_grad_norm is false; the loop logs the gradient norm and needs it to "
            "spot inf/NaN gradients",
            where=_where_file(path, "zero_optimization.compute_grad_norm"),
            fix="remove compute_grad_norm from the DeepSpeed config",
        )
    for part in ("offload_optimizer", "offload_param"):
        if str((zero.get(part) or {}).get("device", "none")) == "nvme":
            raise TuneforgeError(
                f"zero_optimization.{part} to nvme (ZeRO-Infinity) is not supported by tuneforge's "
                "checkpoints",
                where=_where_file(path, f"zero_optimization.{part}.device"),
                fix='offload to "cpu" instead (the zero3-offload preset)',
            )
    ds["zero_optimization"] = zero
    if offloads_optimizer(ds):
        # torch's AdamW on the offloaded state, not DeepSpeed's faster CPU Adam: that one caches beta^step in
        # its C++ state and recomputes it differently after a resume, so a resumed run would not be exact.
        ds["zero_force_ds_cpu_optimizer"] = False
    # The loop owns accumulation: it calls backward per micro-batch and step once per optimizer step.
    ds["managed_gradient_accumulation"] = False
    ds.setdefault("steps_per_print", 2**31 - 1)  # the loop logs; DeepSpeed's own prints are noise
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def _same_number(given: Any, value: float) -> bool:
    return isinstance(given, int | float) and not isinstance(given, bool) and math.isclose(given, value)


def _check_method(cfg: RunConfig, stage: int, where: str) -> None:
    if cfg.train.fsdp:
        raise TuneforgeError(
            "train.deepspeed and train.fsdp both shard the model; choose one",
            where=where,
            fix="unset train.fsdp (or train.deepspeed)",
        )
    from tuneforge.models.methods import METHODS
    from tuneforge.train.sharding import not_shardable

    no_deepspeed = getattr(METHODS.get(cfg.method.name), "NOT_DEEPSPEED", None)
    if no_deepspeed is not None:
        raise TuneforgeError(
            f"method {cfg.method.name} cannot train under DeepSpeed here: {no_deepspeed}",
            where=where,
            fix="unset train.deepspeed",
        )
    no_sharding = not_shardable(cfg.method.name)
    if stage == 3 and no_sharding is not None:
        raise TuneforgeError(
            f"method {cfg.method.name} cannot train under ZeRO stage 3: {no_sharding}",
            where=where,
            fix="use ZeRO stage 1 or 2 (train.deepspeed: zero2), or unset train.deepspeed",
        )
    if cfg.train.mixed_precision == "fp16":
        raise TuneforgeError(
            "fp16 is not supported with train.deepspeed",
            where="train.mixed_precision",
            fix="use bf16 or auto",
        )
    if cfg.train.optimizer != "adamw":
        raise TuneforgeError(
            f"train.optimizer {cfg.train.optimizer} cannot be used with train.deepspeed (ZeRO partitions the "
            "optimizer state itself)",
            where="train.optimizer",
            fix="use adamw",
        )


def check_installed() -> None:
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise TuneforgeError(
            "train.deepspeed needs the deepspeed package", fix="pip install 'tuneforge[deepspeed]'"
        ) from None


def ensure_process_group() -> None:
    """DeepSpeed needs a process group even for one process (ZeRO-Offload on one GPU): make one if none.

    It lasts as long as the Python process, as the group of a launcher would.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def initialize(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ds: dict[str, Any]) -> Any:
    """Wrap `model` and `optimizer` in a DeepSpeed engine (the scheduler stays ours, on `optimizer`)."""
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    # DeepSpeed asks for LOCAL_RANK, which a launcher sets; one process started without one gets it for the
    # call only, so it does not leak into processes this one starts later.
    own_rank = "LOCAL_RANK" not in os.environ
    if own_rank:
        os.environ["LOCAL_RANK"] = "0"
    try:
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=copy.deepcopy(ds))
    finally:
        if own_rank:
            del os.environ["LOCAL_RANK"]
    managed = getattr(engine, "managed_gradient_accumulation", None)
    if managed is None or managed():
        raise TuneforgeError(
            f"deepspeed {deepspeed.__version__} cannot leave gradient accumulation to tuneforge's loop",
            where="train.deepspeed",
            fix="pip install 'deepspeed>=0.19'",
        )
    return engine


def offloads_optimizer(ds: dict[str, Any]) -> bool:
    device = ((ds.get("zero_optimization") or {}).get("offload_optimizer") or {}).get("device", "none")
    return str(device) != "none"


class ZeroEngine:
    """The loop's step under DeepSpeed (an `engine.StepEngine`): backward per micro-batch, one engine step."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def backward(self, loss: torch.Tensor) -> None:
        # The loss is already divided by the step's target count (loop.py), so no division by accumulation.
        self.engine.backward(loss, scale_wrt_gas=False)

    def no_sync(self, last: bool) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()  # DeepSpeed reduces gradients in its step, not in backward

    def update(self, loss: float) -> Update:
        """Reduce, clip, check for inf/NaN (DeepSpeed's overflow check skips the update) and step."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        grad_norm = math.nan if norm is None else float(norm)
        skipped = not bool(self.engine.was_step_applied())
        broke = not skipped and not self._master_weights_finite()
        return Update(grad_norm, skipped, skipped or not math.isfinite(loss), broke)

    def _master_weights_finite(self) -> bool:
        """The fp32 master partitions the update wrote (each process checks its own; all agree)."""
        import torch.distributed as dist

        zero_opt = self.engine.optimizer
        flats = (
            getattr(zero_opt, "single_partition_of_fp32_groups", None)  # ZeRO 1/2
            or getattr(zero_opt, "fp32_partitioned_groups_flat", None)  # ZeRO 3
            or [p for g in zero_opt.optimizer.param_groups for p in g["params"]]
        )
        ok = torch.tensor(int(weights_finite(flats)), device=self.engine.device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item())


class ZeroState:
    """Whole, named weights and optimizer state of a DeepSpeed engine (see checkpoint.TrainingState).

    Every process takes part (the fragments live on different processes); only the main one keeps the result,
    so the other processes never hold a whole copy.
    """

    collective = True

    def __init__(self, engine: Any, *, is_main: bool) -> None:
        self.engine = engine
        self.module: torch.nn.Module = engine.module
        self.is_main = is_main
        zero_opt = engine.optimizer
        self.base: torch.optim.Optimizer = zero_opt.optimizer  # torch's AdamW, over flat partitions
        names = {id(p): n for n, p in self.module.named_parameters()}
        self.group_names = [[names[id(p)] for p in g] for g in _original_groups(zero_opt)]

    def _trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]

    def weights(self, *, everything: bool) -> dict[str, torch.Tensor]:
        from deepspeed import zero
        from deepspeed.utils import safe_get_full_fp32_param

        out: dict[str, torch.Tensor] = {}
        for name, p in self.module.named_parameters():
            if p.requires_grad:
                full = safe_get_full_fp32_param(p)  # the fp32 master copy, gathered (collective)
            elif everything:
                with zero.GatheredParameters([p]):
                    full = p.detach().clone()
            else:
                continue
            if self.is_main:
                out[name] = full.detach().cpu().contiguous()
        return out

    def set_weights(self, weights: dict[str, torch.Tensor], source: Path) -> None:
        from deepspeed import zero
        from deepspeed.utils import safe_set_full_fp32_param

        from tuneforge.train.checkpoint import check_weights_fit

        check_weights_fit(self.module, weights, source)
        for name, p in self.module.named_parameters():
            if name not in weights:
                continue
            value = weights[name]
            if p.requires_grad:
                safe_set_full_fp32_param(p, value.to(torch.float32))  # the master copy
            # The working copy the forward pass uses (bf16 under bf16); ZeRO-3 re-partitions it on exit.
            with torch.no_grad(), zero.GatheredParameters([p], modifier_rank=0):
                p.data.copy_(value.to(p.device))

    def optimizer_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        from deepspeed.utils import safe_get_full_optimizer_state

        keys, step = self._state_keys_and_step()
        tensors: dict[str, torch.Tensor] = {}
        for name, p in self._trainable():
            for key in keys:
                full = safe_get_full_optimizer_state(p, key)
                if self.is_main:
                    tensors[f"{name}.{key}"] = full.detach().cpu().contiguous()
            if keys and self.is_main:
                tensors[f"{name}.step"] = torch.tensor(float(step))
        groups = [
            {**{k: v for k, v in g.items() if k != "params"}, "params": names}
            for g, names in zip(self.base.param_groups, self.group_names, strict=True)
        ]
        return tensors, {"param_groups": json.loads(json.dumps(groups, default=list)), "scalars": {}}

    def set_optimizer_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        from deepspeed.utils import safe_set_full_optimizer_state

        for saved, group in zip(meta["param_groups"], self.base.param_groups, strict=True):
            for key, value in saved.items():
                if key != "params":
                    group[key] = tuple(value) if isinstance(group.get(key), tuple) else value
        keys = sorted({k.rsplit(".", 1)[1] for k in tensors} - {"step"})
        if not keys:
            return  # saved before any update was applied
        step = next(float(v) for k, v in tensors.items() if k.endswith(".step"))
        self._create_state(keys)
        for name, p in self._trainable():
            for key in keys:
                safe_set_full_optimizer_state(p, tensors[f"{name}.{key}"].to(torch.float32), key)
        for state in self.base.state.values():
            if "step" in state:
                state["step"] = torch.tensor(step, dtype=state["step"].dtype)

    def final_state(self, *, adapter_only: bool) -> dict[str, torch.Tensor] | None:
        """Every name of the model's state dict (tied and buffer names too), from the fp32 master weights."""
        weights = self.weights(everything=not adapter_only)
        if not self.is_main:
            return {}
        if adapter_only:
            return weights
        canonical = {id(p): n for n, p in self.module.named_parameters()}
        every = dict(self.module.named_parameters(remove_duplicate=False))
        out: dict[str, torch.Tensor] = {}
        for key, value in self.module.state_dict(keep_vars=True).items():
            param = every.get(key)
            out[key] = weights[canonical[id(param)]] if param is not None else value.detach().cpu()
        return out

    def _state_keys_and_step(self) -> tuple[list[str], float]:
        """The optimizer's per-parameter tensors (exp_avg, exp_avg_sq) and step count; none before a step."""
        for flat, state in self.base.state.items():
            keys = [k for k, v in state.items() if torch.is_tensor(v) and v.shape == flat.shape]
            return sorted(keys), float(state.get("step", 0))
        return [], 0.0

    def _create_state(self, keys: list[str]) -> None:
        """Give every flat partition its optimizer state before the first step (torch creates it lazily), so
        the saved values have somewhere to go."""
        zero_opt = self.engine.optimizer
        flats = (
            getattr(zero_opt, "single_partition_of_fp32_groups", None)  # ZeRO 1/2
            or getattr(zero_opt, "fp32_partitioned_groups_flat", None)  # ZeRO 3
            or [p for g in self.base.param_groups for p in g["params"]]
        )
        created = False
        for flat in flats:
            state = self.base.state[flat]  # ZeRO 3 starts every state as {}
            if all(k in state for k in keys):
                continue
            state.setdefault("step", torch.tensor(0.0))  # torch's AdamW counts in a float tensor
            for k in keys:
                state.setdefault(k, torch.zeros_like(flat))
            created = True
        # ZeRO 1/2 link each parameter's fragment to the state after the first step; do it now. This is a
        # private method of DeepSpeed's (the tensor-fragment API has no public way to create the state).
        link = getattr(zero_opt, "_lazy_init_hp_params_optimizer_state", None)
        if created and link is not None:
            link()


def _original_groups(zero_opt: Any) -> list[list[torch.nn.Parameter]]:
    """The model's parameters of each optimizer group, in the order the optimizer was built with."""
    for attr in ("bit16_groups", "fp16_groups"):  # ZeRO 1/2, ZeRO 3
        groups = getattr(zero_opt, attr, None)
        if groups is not None:
            if attr == "fp16_groups" and hasattr(zero_opt, "sub_group_to_group_id"):
                merged: dict[int, list[torch.nn.Parameter]] = {}
                for sub, params in enumerate(groups):
                    merged.setdefault(zero_opt.sub_group_to_group_id[sub], []).extend(params)
                return [merged.get(i, []) for i in range(len(zero_opt.optimizer.param_groups))]
            return [list(g) for g in groups]
    raise TuneforgeError("this DeepSpeed optimizer is not one of ZeRO stages 1-3", where="train.deepspeed")
