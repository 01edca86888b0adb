"""Several processes (DDP over gloo on CPU) train exactly what one process does with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.tiny import sentiment_rows, write_csv

ACCELERATE_CONFIGS = ROOT / "configs" / "accelerate"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one(tmp_path: Path, tiny_llama: Path, cli) -> None:
    import torch
    from safetensors.torch import load_file

    write_csv(tmp_path / "data.csv", sentiment_rows(60))
    config = {
        "data": {"path": "data.csv", "format": "classification", "output_dir": "ds"},
        "model": {"name": str(tiny_llama), "task": "causal-lm", "max_length": 128},
        # No dropout: its random masks are drawn per process, so they could not match a single process.
        "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "train": {
            "max_steps": 3,
            "gradient_accumulation_steps": 2,
            "learning_rate": 0.05,
            "warmup_ratio": 0.0,
            "eval_every": 2,
            "eval_max_examples": 8,
            "save_every": 2,
            "progress": False,
        },
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")

    # Global batch: 4 examples x 2 micro-batches in one process; 2 each x 2 processes x 2 micro-batches.
    one = cli("train", "cfg.yaml", "train.output_dir=one", "train.batch_size=4")
    assert one.returncode == 0, one.stderr
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()),
        "-m", "tuneforge", "train", "cfg.yaml", "train.output_dir=two", "train.batch_size=2",
    ]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    two = subprocess.run(launch, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]

    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    assert json.loads((two_dir / "manifest.json").read_text())["environment"]["processes"] == 2
    assert json.loads((one_dir / "manifest.json").read_text())["environment"]["processes"] == 1

    rows1, rows2 = metrics(one_dir), metrics(two_dir)
    assert [(r["step"], r.get("split")) for r in rows2] == [(r["step"], r.get("split")) for r in rows1]
    assert [r["step"] for r in rows1 if r.get("split") == "validation"] == [2, 3]
    for a, b in zip(rows1, rows2, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)
        if "grad_norm" in a:
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
            assert b["tokens"] == a["tokens"]  # the whole global batch, counted over both processes
    # The run learned something, so equal losses are not just two untouched models.
    assert rows1[-1]["loss"] < rows1[0]["loss"] - 0.05

    w1 = load_file(one_dir / "final" / "adapter_model.safetensors")
    w2 = load_file(two_dir / "final" / "adapter_model.safetensors")
    assert sorted(w1) == sorted(w2)
    assert max(float(w1[k].abs().max()) for k in w1 if "lora_B" in k) > 0.01
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6)

    # Files are written once, by the main process: the same checkpoints, no leftovers of a second writer.
    assert sorted(p.name for p in (two_dir / "checkpoints").iterdir()) == sorted(
        p.name for p in (one_dir / "checkpoints").iterdir()
    )
    assert not [p.name for p in two_dir.iterdir() if p.name.startswith(".")]


EXPECTED_ENV: dict[str, dict[str, str]] = {"ddp.yaml": {}}
EXPECTED_TYPE = {"ddp.yaml": "MULTI_GPU"}


def test_sharded_training_is_refused_with_a_way_out() -> None:
    """FSDP and DeepSpeed shard the optimizer state, which tuneforge's exact checkpoints cannot hold yet."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from tuneforge.errors import TuneforgeError
    from tuneforge.train.devices import check_distributed_type

    check_distributed_type(SimpleNamespace(distributed_type=DistributedType.MULTI_GPU))
    for kind in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        with pytest.raises(TuneforgeError, match=r"ddp\.yaml") as err:
            check_distributed_type(SimpleNamespace(distributed_type=kind))
        assert kind.value in str(err.value)


def test_every_accelerate_config_is_covered() -> None:
    assert sorted(p.name for p in ACCELERATE_CONFIGS.glob("*.yaml")) == sorted(EXPECTED_ENV)


@pytest.mark.parametrize("name", sorted(EXPECTED_ENV))
def test_accelerate_config_parses(name: str) -> None:
    """accelerate's own reader accepts the file, and `accelerate launch` makes the expected settings of it."""
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    path = ACCELERATE_CONFIGS / name
    assert path.read_text().startswith("# "), "each file starts with a comment on when to use it"
    cluster = ClusterConfig.from_yaml_file(str(path))  # raises on keys accelerate does not know
    assert cluster.distributed_type.value == EXPECTED_TYPE[name]
    assert cluster.num_processes == 2
    assert cluster.mixed_precision == "bf16"

    args = launch_command_parser().parse_args(
        ["--config_file", str(path), "-m", "tuneforge", "train", "x.yaml"]
    )
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        # What `accelerate launch` sets before building the DeepSpeed environment.
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
        assert env["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"] == "1"  # tuneforge accumulates by itself
    else:
        env = prepare_multi_gpu_env(args)
        assert args.multi_gpu or args.use_fsdp
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    for key, value in EXPECTED_ENV[name].items():
        assert env[key] == value, key
