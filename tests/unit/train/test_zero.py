"""DeepSpeed settings: the run config fills DeepSpeed's "auto" values; what cannot work is refused early."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tuneforge.config import RunConfig, config_from_dict
from tuneforge.errors import TuneforgeError
from tuneforge.train.zero import PRESETS, deepspeed_config

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "deepspeed"


def run_config(deepspeed: str, method: str = "lora", **train: object) -> RunConfig:
    return config_from_dict(
        {
            "data": {"path": "d.csv"},
            "model": {"name": "m"},
            "method": {"name": method},
            "train": {"deepspeed": deepspeed, "batch_size": 4, "gradient_accumulation_steps": 3, **train},
        }
    )


def fill(cfg: RunConfig, processes: int = 2, precision: str = "no") -> dict:
    return deepspeed_config(cfg, processes=processes, precision=precision, where=lambda k: f"cfg.yaml ({k})")


def write(tmp_path: Path, ds: dict) -> str:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds))
    return str(path)


def test_the_run_config_fills_auto_values() -> None:
    ds = fill(run_config("zero2", max_grad_norm=0.5), processes=2, precision="bf16")
    assert ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 3
    assert ds["train_batch_size"] == 4 * 3 * 2
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"] == {"enabled": True, "check_grad_overflow": True}
    assert ds["managed_gradient_accumulation"] is False
    assert ds["zero_optimization"]["stage"] == 2
    assert fill(run_config("zero3", max_grad_norm=None))["gradient_clipping"] == 0.0
    assert fill(run_config("zero3"), precision="no")["bf16"]["enabled"] is False
    # The preset itself is not changed by filling it in.
    assert PRESETS["zero2"]["train_batch_size"] == "auto"


def test_offloading_uses_torch_adamw() -> None:
    assert fill(run_config("zero3-offload"))["zero_force_ds_cpu_optimizer"] is False
    assert "zero_force_ds_cpu_optimizer" not in fill(run_config("zero3"))


def test_a_file_with_matching_numbers_is_accepted(tmp_path: Path) -> None:
    ds = {"zero_optimization": {"stage": 1}, "train_micro_batch_size_per_gpu": 4, "gradient_clipping": 1.0}
    assert fill(run_config(write(tmp_path, ds)))["train_batch_size"] == 24


Z2 = {"zero_optimization": {"stage": 2}}
CONFLICTS = {
    "micro-batch": (
        {**Z2, "train_micro_batch_size_per_gpu": 8},
        "to 8, and the run config makes it 4 (train.batch_size)",
        "train_micro_batch_size_per_gpu",
    ),
    "accumulation": (
        {**Z2, "gradient_accumulation_steps": 1},
        "train.gradient_accumulation_steps",
        "gradient_accumulation_steps",
    ),
    "global-batch": ({**Z2, "train_batch_size": 16}, "processes", "train_batch_size"),
    "optimizer": ({**Z2, "optimizer": {"type": "AdamW"}}, "sets 'optimizer'", "optimizer"),
    "scheduler": ({**Z2, "scheduler": {"type": "WarmupLR"}}, "train.scheduler", "scheduler"),
    "fp16": ({**Z2, "fp16": {"enabled": True}}, "fp16", "fp16"),
    "stage-0": ({"zero_optimization": {"stage": 0}}, "stage is 0", "zero_optimization.stage"),
    "no-stage": ({}, "stage is 0", "zero_optimization.stage"),
    "bf16": ({**Z2, "bf16": {"enabled": True}}, "resolves to no", "bf16.enabled"),
    "grad-norm": (
        {"zero_optimization": {"stage": 2, "compute_grad_norm": False}},
        "gradient norm",
        "zero_optimization.compute_grad_norm",
    ),
    "nvme": (
        {"zero_optimization": {"stage": 3, "offload_param": {"device": "nvme"}}},
        "nvme",
        "zero_optimization.offload_param.device",
    ),
}


@pytest.mark.parametrize(("ds", "message", "key"), CONFLICTS.values(), ids=CONFLICTS.keys())
def test_conflicts_name_the_file_and_key(tmp_path: Path, ds: dict, message: str, key: str) -> None:
    path = write(tmp_path, ds)
    with pytest.raises(TuneforgeError, match=re.escape(message)) as err:
        fill(run_config(path))
    assert f"{path} ({key})" in str(err.value)


def test_an_fp16_section_that_is_off_is_fine(tmp_path: Path) -> None:
    fill(run_config(write(tmp_path, {"zero_optimization": {"stage": 2}, "fp16": {"enabled": False}})))


def test_a_missing_file_lists_the_presets(tmp_path: Path) -> None:
    with pytest.raises(TuneforgeError, match="neither a preset nor an existing file") as err:
        fill(run_config(str(tmp_path / "nope.json")))
    assert "zero2, zero3, zero3-offload" in str(err.value) and "cfg.yaml (train.deepspeed)" in str(err.value)


def test_bad_json_points_at_the_line(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text('{\n  "zero_optimization": {"stage": 2},\n  // a comment\n}\n')
    with pytest.raises(TuneforgeError, match="not valid JSON") as err:
        fill(run_config(str(path)))
    assert f"{path}:3:" in str(err.value)


@pytest.mark.parametrize(
    ("preset", "method", "train", "message"),
    [
        ("zero2", "qlora", {}, "qlora cannot train under DeepSpeed"),
        ("zero3", "prompt-tuning", {}, "cannot train under ZeRO stage 3"),
        ("zero3", "prefix-tuning", {}, "cannot train under ZeRO stage 3"),
        ("zero2", "lora", {"fsdp": True}, "both shard the model"),
        ("zero2", "lora", {"mixed_precision": "fp16"}, "fp16 is not supported"),
        ("zero2", "lora", {"optimizer": "adamw-8bit"}, "adamw-8bit cannot be used"),
    ],
)
def test_what_cannot_work_is_refused(preset: str, method: str, train: dict, message: str) -> None:
    with pytest.raises(TuneforgeError, match=message):
        fill(run_config(preset, method, **train))


def test_prompt_tuning_is_fine_below_stage_3() -> None:
    assert fill(run_config("zero2", "prompt-tuning"))["zero_optimization"]["stage"] == 2


def test_the_shipped_files_are_the_presets() -> None:
    shipped = {p.stem: json.loads(p.read_text()) for p in CONFIGS.glob("*.json")}
    assert shipped == PRESETS
    for path in CONFIGS.glob("*.json"):
        assert (
            fill(run_config(str(path)))["zero_optimization"]
            == fill(run_config(path.stem))["zero_optimization"]
        )
