"""FSDP (`train.fsdp`): each process's peak memory against DDP, full fine-tuning, 2 processes, in one run.

Builds a random Llama of about `--params` million parameters, then trains it for 2 steps with
`accelerate launch` in 2 CPU processes (gloo) twice: DDP (a whole copy of weights, gradients and AdamW state
per process, about 16 bytes per parameter) and FSDP (each process holds half of all that; only the main
process reads the model from disk). Reports each process's peak resident memory from the run manifests, and
the same above an idle process's baseline (python + torch + transformers imported).

    python bench/fsdp_memory.py [--params 100]

Goal: the second process's peak above baseline under FSDP at most 0.6x that of DDP (half of the model state,
plus activations, which FSDP does not shard). On GPUs the same split applies to GPU memory.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "tests" / "assets" / "tiny-tokenizer"


def make_model(out: Path, millions: int) -> int:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    hidden, layers = 768, max(1, round(millions * 1e6 / (12 * 768 * 768)))
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=12,
        num_key_value_heads=12,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def baseline_rss() -> int:
    """Peak RSS of a process that only imports what a training process imports."""
    code = (
        "import resource, torch, transformers, peft, accelerate;"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"
    )
    return int(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def train(work: Path, name: str, *extra: str) -> list[int]:
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()),
        "-m", "tuneforge", "train", "cfg.yaml", f"train.output_dir={name}", *extra,
    ]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return list(json.loads((work / name / "manifest.json").read_text())["peak_memory_bytes_per_process"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=100, help="model size in millions of parameters")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        n = make_model(work / "model", args.params)
        rows = [{"text": f"row {i} " + "word " * (i % 20), "label": "ab"[i % 2]} for i in range(40)]
        (work / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        config = {
            "data": {"path": "data.jsonl", "format": "classification", "output_dir": "ds"},
            "model": {"name": str(work / "model"), "task": "causal-lm", "max_length": 64},
            "method": {"name": "full"},
            "train": {"max_steps": 2, "batch_size": 1, "save_every": 0, "eval_every": 0, "progress": False},
        }
        (work / "cfg.yaml").write_text(yaml.safe_dump(config))
        base = baseline_rss()
        ddp = train(work, "ddp")
        fsdp = train(work, "fsdp", "train.fsdp=true")

    mib = 2**20
    state = 16 * n / mib
    print(f"model: {n / 1e6:.0f}M parameters, full fine-tuning with AdamW (about {state:,.0f} MiB of state)")
    print(f"idle process baseline: {base / mib:,.0f} MiB")
    print(f"{'process':<10}{'DDP MiB':>10}{'FSDP MiB':>10}{'ratio':>8}{'above baseline: ratio':>24}")
    for rank, (d, f) in enumerate(zip(ddp, fsdp, strict=True)):
        print(f"{rank:<10}{d / mib:>10,.0f}{f / mib:>10,.0f}{f / d:>8.2f}{(f - base) / (d - base):>24.2f}")
    ratio = (fsdp[1] - base) / (ddp[1] - base)
    print(f"goal: process 1 above baseline <= 0.6x DDP: {'met' if ratio <= 0.6 else 'NOT met'} ({ratio:.2f})")


if __name__ == "__main__":
    main()
