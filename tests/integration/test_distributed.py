"""Several processes (DDP over gloo on CPU) train exactly what one process does with the same global batch."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_cli
from tests.tiny import sentiment_rows, write_csv

ACCELERATE_CONFIGS = ROOT / "configs" / "accelerate"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def write_config(tmp_path: Path, model: Path, method: dict, task: str = "causal-lm", **train: object) -> None:
    write_csv(tmp_path / "data.csv", sentiment_rows(60))
    config = {
        "data": {"path": "data.csv", "format": "classification", "output_dir": "ds"},
        "model": {"name": str(model), "task": task, "max_length": 128},
        "method": method,
        "train": {
            "max_steps": 3,
            "gradient_accumulation_steps": 2,
            "learning_rate": 0.05,
            "warmup_ratio": 0.0,
            "eval_every": 2,
            "eval_max_examples": 8,
            "save_every": 2,
            # Set, not left to the recipe's 0.01: with decay, one LoRA element in 256 ended 3x past the
            # tolerance below (Adam's steps on near-zero gradients amplify the reduction-order noise), and
            # equality across processes, not the recipe, is what these tests are about.
            "weight_decay": 0.0,
            "progress": False,
            **train,
        },
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")


def launch_two(tmp_path: Path, *args: str, gpus: bool = False) -> subprocess.CompletedProcess[str]:
    """`accelerate launch` of `tuneforge train cfg.yaml ARGS` in 2 processes: CPU (gloo) or 2 GPUs (bf16)."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "bf16" if gpus else "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()),
        "-m", "tuneforge", "train", "cfg.yaml", *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"} | ({} if gpus else {"CUDA_VISIBLE_DEVICES": ""})
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


# No dropout: its random masks are drawn per process, so they could not match a single process.
LORA = {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0}


def test_two_processes_match_one(tmp_path: Path, tiny_llama: Path, cli) -> None:
    import torch
    from safetensors.torch import load_file

    write_config(tmp_path, tiny_llama, LORA)
    # Global batch: 4 examples x 2 micro-batches in one process; 2 each x 2 processes x 2 micro-batches.
    one = cli("train", "cfg.yaml", "train.output_dir=one", "train.batch_size=4")
    assert one.returncode == 0, one.stderr
    two = launch_two(tmp_path, "train.output_dir=two", "train.batch_size=2")
    assert two.returncode == 0, two.stderr[-3000:]

    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    assert json.loads((two_dir / "manifest.json").read_text())["environment"]["processes"] == 2
    assert json.loads((one_dir / "manifest.json").read_text())["environment"]["processes"] == 1
    two_manifest = json.loads((two_dir / "manifest.json").read_text())
    peaks = two_manifest["peak_memory_bytes_per_process"]
    assert len(peaks) == 2 and min(peaks) > 100 * 2**20 and two_manifest["peak_memory_bytes"] == max(peaks)

    rows1, rows2 = metrics(one_dir), metrics(two_dir)
    assert [(r["step"], r.get("split")) for r in rows2] == [(r["step"], r.get("split")) for r in rows1]
    assert [r["step"] for r in rows1 if r.get("split") == "validation"] == [2, 3]
    for a, b in zip(rows1, rows2, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)
        if "grad_norm" in a:
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
            assert b["tokens"] == a["tokens"]  # the whole global batch, counted over both processes
    # The run learned something, so equal losses are not just two untouched models.
    # Every step changed the weights, so equal losses are not just two untouched models.
    losses = [r["loss"] for r in rows1 if "split" not in r]
    assert len(set(losses)) == len(losses) >= 3

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


def test_dpo_in_two_processes_matches_one(tmp_path: Path, tiny_llama: Path, cli) -> None:
    """Preference pairs (DPO): losses, rewards and adapter agree; each process runs its own reference."""
    from tests.unit.train.test_dpo import preference_rows

    write_config(tmp_path, tiny_llama, LORA)
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in preference_rows(60)))
    data = ["data.path=pairs.jsonl", "data.format=preference", "model.max_length=64"]
    one = cli("train", "cfg.yaml", *data, "train.output_dir=one", "train.batch_size=4")
    assert one.returncode == 0, one.stderr
    two = launch_two(tmp_path, *data, "train.output_dir=two", "train.batch_size=2")
    assert two.returncode == 0, two.stderr[-3000:]
    rows1, rows2 = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [(r["step"], r.get("split")) for r in rows2] == [(r["step"], r.get("split")) for r in rows1]
    for a, b in zip(rows1, rows2, strict=True):
        for key in ("loss", "reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    assert rows1[-1]["reward_margin"] > 0.05  # the pairs were learned, so agreement means something
    _same_adapter(tmp_path / "one", tmp_path / "two")


def _same_adapter(one_dir: Path, two_dir: Path) -> None:
    import torch
    from safetensors.torch import load_file

    w1 = load_file(one_dir / "final" / "adapter_model.safetensors")
    w2 = load_file(two_dir / "final" / "adapter_model.safetensors")
    assert sorted(w1) == sorted(w2)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6)


EXPECTED_ENV: dict[str, dict[str, str]] = {"multi-gpu.yaml": {}}
EXPECTED_TYPE = {"multi-gpu.yaml": "MULTI_GPU"}


def test_accelerate_sharding_modes_are_refused_with_a_way_out() -> None:
    """accelerate's FSDP and DeepSpeed modes would wrap the model, or step the optimizer behind the loop;
    the message points to tuneforge's own (train.deepspeed, train.fsdp)."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from tuneforge.errors import TuneforgeError
    from tuneforge.train.devices import check_distributed_type

    check_distributed_type(SimpleNamespace(distributed_type=DistributedType.MULTI_GPU))
    for kind in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        with pytest.raises(TuneforgeError, match=r"multi-gpu\.yaml and set train\.deepspeed") as err:
            check_distributed_type(SimpleNamespace(distributed_type=kind))
        assert kind.value in str(err.value) and "train.fsdp: true" in str(err.value)


def test_every_accelerate_config_is_covered() -> None:
    assert sorted(p.name for p in ACCELERATE_CONFIGS.glob("*.yaml")) == sorted(EXPECTED_ENV)


@pytest.mark.parametrize("name", sorted(EXPECTED_ENV))
def test_accelerate_config_parses(name: str) -> None:
    """accelerate's own reader accepts the file, and `accelerate launch` makes the expected settings of it."""
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    path = ACCELERATE_CONFIGS / name
    assert path.read_text().startswith("# "), "each file starts with a comment on when to use it"
    cluster = ClusterConfig.from_yaml_file(str(path))  # raises on keys accelerate does not know
    assert cluster.distributed_type.value == EXPECTED_TYPE[name]
    assert cluster.num_processes == 2
    assert cluster.mixed_precision == "bf16"

    args = launch_command_parser().parse_args(
        ["--config_file", str(path), "-m", "tuneforge", "train", "x.yaml"]
    )
    args, _, _ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    assert args.multi_gpu and not args.use_fsdp and not args.use_deepspeed
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    for key, value in EXPECTED_ENV[name].items():
        assert env[key] == value, key


def write_sharding_config(folder: Path, model: Path, task: str, method: dict) -> float:
    """The config of the FSDP/DeepSpeed equality tests; returns its learning rate."""
    lr = 0.05 if method["name"] == "lora" else 0.002
    # 5 validation examples over 2 processes of batch 2: one process has a batch fewer, and must still run it.
    write_config(folder, model, method, task, max_steps=4, eval_max_examples=5, learning_rate=lr)
    return lr


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path):
    """The one-process run each sharded run must equal, trained once per (task, method) in the whole session
    and only read after: FSDP and DeepSpeed are compared with the same three baselines, even when two xdist
    workers run them (the first trains under a lock in the session's shared folder, the other reads)."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker's folder sits in the session's own
        shared = shared.parent

    def baseline(task: str, method: dict) -> Path:
        key = hashlib.sha256(json.dumps([task, method], sort_keys=True).encode()).hexdigest()[:12]
        folder = shared / f"one-process-{key}"
        with FileLock(f"{folder}.lock"):
            if not (folder / "trained").is_file():
                shutil.rmtree(folder, ignore_errors=True)  # a worker that died half-way left it
                folder.mkdir()
                # The tiny model is made from a fixed seed: every worker's copy holds the same weights.
                write_sharding_config(folder, tiny_llama, task, method)
                one = run_cli("train", "cfg.yaml", "train.output_dir=one", "train.batch_size=4", cwd=folder)
                assert one.returncode == 0, one.stderr
                (folder / "trained").touch()
        return folder / "one"

    return baseline


class TestFSDP:
    """A class of its own, like TestDeepSpeed, so xdist (--dist loadscope) can run it on the other worker."""

    @pytest.mark.parametrize(
        ("task", "method", "final_file"),
        [
            ("causal-lm", LORA, "adapter_model.safetensors"),
            ("causal-lm", {"name": "full"}, "model.safetensors"),
            ("classification", LORA, "adapter_model.safetensors"),  # the head trains whole beside the adapter
        ],
        ids=["lora", "full", "lora-classifier"],
    )
    def test_fsdp_matches_one_process_and_resumes_exactly(
        self, tmp_path: Path, tiny_llama: Path, one_process_run, task: str, method: dict, final_file: str
    ) -> None:
        """FSDP over 2 processes trains what 1 process does (only the main one reads the model; the others get
        their shards from it); its checkpoints are whole and resume bit-exactly."""
        lr = write_sharding_config(tmp_path, tiny_llama, task, method)
        sharded = launch_two(tmp_path, "train.output_dir=fsdp", "train.batch_size=2", "train.fsdp=true")
        assert sharded.returncode == 0, sharded.stderr[-3000:]

        one_dir, fsdp_dir = one_process_run(task, method), tmp_path / "fsdp"
        assert json.loads((fsdp_dir / "manifest.json").read_text())["sharded"] is True
        assert json.loads((one_dir / "manifest.json").read_text())["sharded"] is False
        assert_trains_like_one_process(one_dir, fsdp_dir, final_file, lr)

        # Resume from step 2 under FSDP: it ends bit-identical.
        assert_resumes_exactly_from_step_2(tmp_path, fsdp_dir, final_file, "train.fsdp=true")


class TestDeepSpeed:
    """A class of its own so that xdist (--dist loadscope) runs it beside the module's other sharded tests."""

    @pytest.mark.parametrize(
        ("preset", "task", "method", "final_file"),
        [
            ("zero2", "causal-lm", LORA, "adapter_model.safetensors"),
            ("zero3", "causal-lm", {"name": "full"}, "model.safetensors"),
            ("zero3-offload", "classification", LORA, "adapter_model.safetensors"),
        ],
        ids=["zero2-lora", "zero3-full", "zero3-offload-lora-classifier"],
    )
    def test_deepspeed_matches_one_process_and_resumes_exactly(
        self,
        tmp_path: Path,
        tiny_llama: Path,
        one_process_run,
        preset: str,
        task: str,
        method: dict,
        final_file: str,
    ) -> None:
        """DeepSpeed ZeRO over 2 processes trains what 1 process does; its checkpoints are the same
        safetensors (whole tensors named as one process names them); a resume under DeepSpeed ends
        bit-identical."""
        lr = write_sharding_config(tmp_path, tiny_llama, task, method)
        zero = launch_two(
            tmp_path, "train.output_dir=zero", "train.batch_size=2", f"train.deepspeed={preset}"
        )
        assert zero.returncode == 0, zero.stderr[-3000:]

        one_dir, zero_dir = one_process_run(task, method), tmp_path / "zero"
        manifest = json.loads((zero_dir / "manifest.json").read_text())
        assert manifest["sharded"] is True
        assert manifest["deepspeed"]["zero_optimization"]["stage"] == (2 if preset == "zero2" else 3)
        # Filled in from the run config: 2 per process x 2 micro-batches x 2 processes.
        assert manifest["deepspeed"]["train_batch_size"] == 8
        assert manifest["deepspeed"]["managed_gradient_accumulation"] is False
        assert_trains_like_one_process(one_dir, zero_dir, final_file, lr)

        assert_resumes_exactly_from_step_2(tmp_path, zero_dir, final_file, f"train.deepspeed={preset}")


def assert_trains_like_one_process(one_dir: Path, other_dir: Path, final_file: str, lr: float) -> None:
    """The same metrics rows, final weights and checkpoint tensors (whole, same names) as one process."""
    import torch
    from safetensors.torch import load_file

    rows1, rows2 = metrics(one_dir), metrics(other_dir)
    assert [(r["step"], r.get("split")) for r in rows2] == [(r["step"], r.get("split")) for r in rows1]
    for a, b in zip(rows1, rows2, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)
        if "grad_norm" in a:
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
            assert b["lr"] == pytest.approx(a["lr"], rel=1e-9)
    # Every step changed the weights, so equal losses are not just two untouched models.
    losses = [r["loss"] for r in rows1 if "split" not in r]
    assert len(set(losses)) == len(losses) >= 3

    # Whole tensors (not one process's shard). Adam turns float noise in a near-zero gradient into a step of
    # up to lr: allow a thousandth of it.
    pairs = [(one_dir / "final" / final_file, other_dir / "final" / final_file)]
    for name in ("weights", "optimizer"):
        pairs.append(
            tuple(d / "checkpoints" / "step-00000002" / f"{name}.safetensors" for d in (one_dir, other_dir))
        )
    for path1, path2 in pairs:
        t1, t2 = load_file(path1), load_file(path2)
        assert {k: v.shape for k, v in t2.items()} == {k: v.shape for k, v in t1.items()}, path2
        for k in t1:
            torch.testing.assert_close(t2[k], t1[k], rtol=1e-3, atol=1e-3 * lr)


def test_two_processes_with_dropout_resume_exactly(tmp_path: Path, tiny_llama: Path) -> None:
    """Each process draws its own dropout masks; a resume gives each process its own random streams back."""
    import torch
    from safetensors.torch import load_file

    write_config(tmp_path, tiny_llama, {**LORA, "dropout": 0.2}, max_steps=4)
    first = launch_two(tmp_path, "train.output_dir=run", "train.batch_size=2", "model.dropout=0.2")
    assert first.returncode == 0, first.stderr[-3000:]
    rng = load_file(tmp_path / "run" / "checkpoints" / "step-00000002" / "rng.safetensors")
    assert not torch.equal(rng["0.torch"], rng["1.torch"])  # the processes' streams did part ways
    assert_resumes_exactly_from_step_2(
        tmp_path, tmp_path / "run", "adapter_model.safetensors", "model.dropout=0.2"
    )


def assert_resumes_exactly_from_step_2(
    tmp_path: Path, run_dir: Path, final_file: str, *args: str, gpus: bool = False
) -> None:
    """Cut a finished 4-step run back to its step-2 checkpoint, resume it, and expect the same run."""
    import torch
    from safetensors.torch import load_file

    resumed = tmp_path / "resumed"
    shutil.copytree(run_dir, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-00000004")
    shutil.rmtree(resumed / "final")
    again = launch_two(
        tmp_path, "train.output_dir=resumed", "train.batch_size=2", *args, "--resume", gpus=gpus
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr and "step-00000002" in again.stderr

    def timeless(d: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "time_s")} for r in metrics(d)]

    assert timeless(resumed) == timeless(run_dir)
    before = load_file(run_dir / "final" / final_file)
    after = load_file(resumed / "final" / final_file)
    assert sorted(after) == sorted(before)
    for k in before:
        assert torch.equal(after[k], before[k]), k
