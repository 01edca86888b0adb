"""GPU-only training paths: QLoRA on a 4-bit base, bf16 mixed precision, 8-bit AdamW (skipped without CUDA).

Run them on a CUDA machine with `pytest -m gpu tests/gpu`. Exact losses are not asserted here: GPU kernels and
bf16 make them depend on the card, so these tests check what each path must guarantee instead.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.unit.train.test_methods_train import config, make_data, step_losses
from tuneforge.config import RunConfig
from tuneforge.models import load_model
from tuneforge.train import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_data(tmp_path_factory.mktemp("data"))


def _causal(
    data: dict[str, Path], tmp_path: Path, model: Path, method: dict[str, Any], **train_kw: Any
) -> RunConfig:
    return config(data, tmp_path, model, "causal-lm", "classification", method, **train_kw)


def test_qlora_loads_a_4bit_nf4_base_and_trains_lora_on_it(
    data: dict[str, Path], tmp_path: Path, tiny_llama: Path
) -> None:
    pytest.importorskip("bitsandbytes")
    cfg = _causal(data, tmp_path, tiny_llama, {"name": "qlora", "r": 8, "alpha": 16})

    base = load_model(cfg.model, method=cfg.method)
    linear4 = [n for n, m in base.named_modules() if type(m).__name__ == "Linear4bit"]
    assert len(linear4) == 14  # q k v o gate up down in both layers; the LM head stays in full precision
    assert base.config.quantization_config.bnb_4bit_quant_type == "nf4"
    del base

    run = train(cfg)
    losses = step_losses(run)
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert losses[1:] != losses[:1] * 2  # the adapter was updated
    assert (run.final / "adapter_model.safetensors").is_file()
    assert run.manifest["parameters"]["trainable"] == 2 * 8 * (64 + 48 + 48 + 64 + 96 + 96 + 96)


def test_bf16_mixed_precision_trains_and_is_recorded(
    data: dict[str, Path], tmp_path: Path, tiny_llama: Path
) -> None:
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    run = train(_causal(data, tmp_path, tiny_llama, {"name": "lora"}, mixed_precision="bf16"))
    losses = step_losses(run)
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert run.manifest["environment"]["mixed_precision"] == "bf16"


def test_adamw_8bit_starts_like_adamw_and_updates(
    data: dict[str, Path], tmp_path: Path, tiny_llama: Path
) -> None:
    pytest.importorskip("bitsandbytes")
    runs = {
        opt: step_losses(train(_causal(data, tmp_path / opt, tiny_llama, {"name": "lora"}, optimizer=opt)))
        for opt in ("adamw", "adamw-8bit")
    }
    eight = runs["adamw-8bit"]
    assert len(eight) == 3 and all(math.isfinite(x) for x in eight)
    # Step 1 runs before any update, so both optimizers see the same model and batch.
    assert eight[0] == pytest.approx(runs["adamw"][0], rel=1e-3)
    assert eight[1:] != [eight[0]] * 2


def test_adamw_8bit_state_survives_a_resume(data: dict[str, Path], tmp_path: Path, tiny_llama: Path) -> None:
    """The 8-bit optimizer's quantized state goes through the safetensors checkpoint and back."""
    import shutil

    from safetensors.torch import load_file

    pytest.importorskip("bitsandbytes")
    cfg = _causal(
        data, tmp_path, tiny_llama, {"name": "lora"}, optimizer="adamw-8bit", max_steps=4, save_every=2
    )
    whole = train(cfg)
    assert any(
        k.endswith(".state1")
        for k in load_file(whole.checkpoints / "step-00000002" / "optimizer.safetensors")
    )
    copy = tmp_path / "resumed"
    shutil.copytree(whole.path, copy)
    shutil.rmtree(copy / "checkpoints" / "step-00000004")
    shutil.rmtree(copy / "final")
    resumed = train(
        cfg.model_copy(update={"train": cfg.train.model_copy(update={"output_dir": str(copy)})}), resume=True
    )
    assert step_losses(resumed) == pytest.approx(step_losses(whole), rel=1e-4)
    a = load_file(whole.final / "adapter_model.safetensors")
    b = load_file(resumed.final / "adapter_model.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_fsdp_on_two_gpus_matches_ddp(tmp_path: Path, tiny_llama: Path) -> None:
    """The sharded path on NCCL (and with CPU offload, over NCCL + gloo): DDP's losses within bf16 noise."""
    from safetensors.torch import load_file

    from tests.integration.test_distributed import LORA, launch_two, metrics, write_config

    write_config(tmp_path, tiny_llama, LORA, max_steps=4, eval_max_examples=5)
    runs = {}
    offload = ["train.fsdp=true", "train.fsdp_cpu_offload=true"]
    for name, extra in {"ddp": [], "fsdp": ["train.fsdp=true"], "offload": offload}.items():
        r = launch_two(tmp_path, f"train.output_dir={name}", "train.batch_size=2", *extra, gpus=True)
        assert r.returncode == 0, r.stderr[-3000:]
        runs[name] = tmp_path / name
    ddp, fsdp = metrics(runs["ddp"]), metrics(runs["fsdp"])
    assert [r["loss"] for r in fsdp] == pytest.approx([r["loss"] for r in ddp], rel=2e-2)
    assert [r["loss"] for r in metrics(runs["offload"])] == pytest.approx([r["loss"] for r in ddp], rel=2e-2)
    a = load_file(runs["ddp"] / "final" / "adapter_model.safetensors")
    b = load_file(runs["fsdp"] / "final" / "adapter_model.safetensors")
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_deepspeed_on_two_gpus_matches_ddp_in_bf16_and_resumes(tmp_path: Path, tiny_llama: Path) -> None:
    """ZeRO-2 and ZeRO-3 (+ offload) on NCCL in bf16: DDP's losses within bf16 noise, and an exact resume
    (the fp32 master weights, not the bf16 working copy, are what a checkpoint keeps)."""
    from tests.integration.test_distributed import (
        LORA,
        assert_resumes_exactly_from_step_2,
        launch_two,
        metrics,
        write_config,
    )

    write_config(tmp_path, tiny_llama, LORA, max_steps=4, eval_max_examples=5)
    ddp = launch_two(tmp_path, "train.output_dir=ddp", "train.batch_size=2", gpus=True)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    for preset in ("zero2", "zero3", "zero3-offload"):
        r = launch_two(
            tmp_path,
            f"train.output_dir={preset}",
            "train.batch_size=2",
            f"train.deepspeed={preset}",
            gpus=True,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        losses = [row["loss"] for row in metrics(tmp_path / preset)]
        assert losses == pytest.approx([row["loss"] for row in metrics(tmp_path / "ddp")], rel=2e-2)
    assert_resumes_exactly_from_step_2(
        tmp_path, tmp_path / "zero3", "adapter_model.safetensors", "train.deepspeed=zero3", gpus=True
    )
