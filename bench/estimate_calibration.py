"""Calibrate `tuneforge estimate` on this machine: estimated vs measured peak memory of 3 real training steps.

Each grid point trains 3 steps with `tuneforge train` in a subprocess (CPU, float32) and reads the peak
resident memory from the run manifest (the process's own high-water mark, VmHWM). The measured number is the
growth above an idle process that imported what training imports (python, torch, transformers, peft,
accelerate, tuneforge), which is what the estimate predicts. Training projects only the target positions onto
the vocabulary, and the estimate follows it (`logits_mode`).

Two kinds of data: packed text, where every micro-batch is exactly batch x max_length tokens, and chat, the
shape real data has: conversations of spread-out lengths (prompts short, answers long-tailed, a fifth with two
turns) rendered by the chat template, loss on the answers only, each micro-batch packed into one row of its
examples' real lengths. Three steps meet smaller micro-batches than an epoch's largest, so a chat row is
estimated at the largest micro-batch its steps ran (from metrics.jsonl, as `tuneforge estimate --measure`
does); the epoch's own peak estimate is shown beside it.

    python bench/estimate_calibration.py [--out results.json] [--reuse results.json] [--only smollm2]
        [--data chat]

Goal: every estimate within 20% of the measured growth.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "tests" / "assets" / "tiny-tokenizer"
SMOLLM2 = "builtin:smollm2-135m-instruct"

# (model, data, method, batch size, max_length): a small grid, 3 steps each (the machine is shared).
GRID: list[tuple[str, str, str, int, int]] = [
    ("smollm2", "text", "lora", 2, 128),
    ("smollm2", "text", "lora", 4, 128),
    ("smollm2", "text", "lora", 2, 256),
    ("smollm2", "text", "lora", 4, 256),
    ("smollm2", "text", "full", 2, 128),
    ("small-llama", "text", "lora", 4, 256),
    ("small-llama", "text", "lora", 8, 512),
    ("small-llama", "text", "full", 2, 256),
    ("small-llama", "text", "full", 4, 256),
    ("small-llama", "text", "full", 8, 256),
    ("small-llama", "text", "full", 8, 512),
    ("smollm2", "chat", "lora", 8, 512),
    ("smollm2", "chat", "lora", 16, 512),
    ("small-llama", "chat", "lora", 8, 512),
    ("small-llama", "chat", "lora", 16, 512),
    ("small-llama", "chat", "full", 16, 512),
]
VOCABULARY = (
    "the of and to in is was for on that with as by at from his her an were are which this be or have had "
    "not but all one their they there been has who more will would can if its also into after other only new "
    "time first two some these may over such like when most years about many made then any well where three "
    "river market winter garden station engine letter memory doctor village silver country mountain window"
)
WORDS = VOCABULARY.split()


def make_small_llama(out: Path) -> Path:
    """A random 4-layer Llama (hidden 256) with the committed tiny tokenizer: the grid's tiny model."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def write_corpus(path: Path, paragraphs: int = 400) -> Path:
    rng = random.Random(0)
    text = "\n\n".join(" ".join(rng.choices(WORDS, k=60)) for _ in range(paragraphs))
    path.write_text(text + "\n", encoding="utf-8")
    return path


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choices(WORDS, k=max(1, words))).capitalize() + "."


def write_chat(path: Path, rows: int = 500) -> Path:
    """Chit-chat shaped conversations: a short question, an answer of a few sentences with a long tail (the
    lengths of real chat sets: mean ~110 SmolLM2 tokens, 90th percentile ~180, a few past 512), one in five
    with a second exchange."""
    rng = random.Random(0)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(rows):
            messages = []
            for _ in range(1 if rng.random() < 0.8 else 2):
                messages.append({"role": "user", "content": sentence(rng, int(rng.lognormvariate(2.5, 0.6)))})
                count = max(1, int(rng.lognormvariate(1.2, 0.8)))
                answer = " ".join(sentence(rng, int(rng.lognormvariate(2.3, 0.5))) for _ in range(count))
                messages.append({"role": "assistant", "content": answer})
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def run_config(model: str, method: str, batch: int, length: int, data: Path, out: Path) -> dict[str, Any]:
    return {
        "data": {"path": str(data)},
        "model": {"name": model, "task": "causal-lm", "max_length": length, "dtype": "float32"},
        "method": {"name": method},
        "train": {
            "output_dir": str(out),
            "max_steps": 3,
            "batch_size": batch,
            "eval_every": 0,
            "eval_max_examples": 2,
            "save_every": 0,
            "progress": False,
        },
    }


def baseline_rss() -> int:
    """Peak RSS of a process that only imports what a training process imports."""
    code = (
        "import torch, transformers, peft, accelerate, tuneforge.train.run;"
        "from transformers import LlamaForCausalLM;"
        "from tuneforge.models.estimate import resident_peak_bytes; print(resident_peak_bytes())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_env()
    )
    return int(done.stdout.strip().splitlines()[-1])


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    return {
        **os.environ,
        "PYTHONPATH": path,
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }


def prepare(work: Path, model: str, kind: str = "text") -> Path:
    raw = write_corpus(work / "corpus.txt") if kind == "text" else write_chat(work / "chat.jsonl")
    out = work / f"ds-{kind}-{abs(hash(model)) % 10_000}"
    cfg = {
        "data": {
            "path": str(raw),
            "format": kind,
            "output_dir": str(out),
            "dedup": "none",
            "splits": [0.9, 0.05, 0.05] if kind == "text" else [0.7, 0.15, 0.15],
        },
        "model": {"name": model, "max_length": 512},
    }
    (work / "prep.yaml").write_text(yaml.safe_dump(cfg))
    subprocess.run(
        [sys.executable, "-m", "tuneforge", "prepare", str(work / "prep.yaml")],
        check=True,
        capture_output=True,
        env=_env(),
    )
    return out


def measure(cfg: dict[str, Any], work: Path, name: str) -> dict[str, Any]:
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    done = subprocess.run(
        [sys.executable, "-m", "tuneforge", "train", str(path)], capture_output=True, text=True, env=_env()
    )
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    from tuneforge.models.estimate import largest_micro_batch

    run = Path(cfg["train"]["output_dir"])
    m = json.loads((run / "manifest.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {
        "peak_bytes": m["peak_memory_bytes"],
        "train_time_s": m["train_time_s"],
        "steps": m["step"],
        "micro_batch_tokens": largest_micro_batch(metrics, 1),
    }


def measure_grid(only: str | None, kind: str | None = None) -> list[dict[str, Any]]:
    rows = []
    grid = [g for g in GRID if only in (None, g[0]) and kind in (None, g[1])]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = {"smollm2": SMOLLM2, "small-llama": str(make_small_llama(work / "small-llama"))}
        data = {(m, d): prepare(work, models[m], d) for m, d in {(g[0], g[1]) for g in grid}}
        base = baseline_rss()
        for key, kind_, method, batch, length in grid:
            name = f"{key}-{method}-b{batch}-t{length}" + ("" if kind_ == "text" else f"-{kind_}")
            cfg = run_config(models[key], method, batch, length, data[key, kind_], work / name)
            result = measure(cfg, work, name)
            row = {"name": name, "model": key, "config": cfg, "baseline_bytes": base, **result}
            if kind_ != "text":  # the dataset folder goes with the temporary directory: keep its lengths
                row["dataset_manifest"] = json.loads((data[key, kind_] / "manifest.json").read_text())
            rows.append(row)
            print(f"measured {name}: {(result['peak_bytes'] - base) / 2**20:,.0f} MiB", flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Estimate vs measured, as a markdown table (what the README shows)."""
    from tuneforge.config import config_from_dict
    from tuneforge.models.estimate import estimate, measured_shape

    lines = [
        "| run | micro-batch measured | measured MiB | estimated MiB | error | epoch's peak estimated MiB "
        "| biggest terms (MiB) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        cfg = config_from_dict(r["config"])
        manifest = r.get("dataset_manifest")  # chat rows: the lengths the epoch's peak is estimated from
        with tempfile.TemporaryDirectory() as tmp:
            if r["model"] != "smollm2":
                # The small model was built in a temporary folder: size it from the same architecture again
                # (the same model whose tokenizer measured the lengths).
                cfg.model.name = str(make_small_llama(Path(tmp) / "m"))
                if manifest:
                    lengths = {**manifest["token_lengths"], "tokenizer": cfg.model.name}
                    manifest = {**manifest, "token_lengths": lengths}
            epoch = estimate(cfg, device="cpu", manifest=manifest)
            shape = measured_shape(epoch, int(r.get("micro_batch_tokens") or 0))
            est = (
                epoch if shape is None else estimate(cfg, device="cpu", manifest=manifest, micro_batch=shape)
            )
        measured = (r["peak_bytes"] - r["baseline_bytes"]) / 2**20
        predicted = est.peak / 2**20
        top = sorted(est.breakdown.items(), key=lambda kv: -kv[1])[:3]
        terms = ", ".join(f"{k} {v / 2**20:,.0f}" for k, v in top)
        err = (predicted - measured) / measured
        batch = cfg.train.batch_size
        met = f"{batch} x {cfg.model.max_length}" if shape is None else f"{batch} packed, {shape[1]:,} tokens"
        lines.append(
            f"| {r['name']} | {met} | {measured:,.0f} | {predicted:,.0f} | {err:+.0%} | "
            f"{epoch.peak / 2**20:,.0f} | {terms} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the measurements as JSON")
    parser.add_argument("--reuse", type=Path, help="read measurements written by --out instead of training")
    parser.add_argument("--only", choices=["smollm2", "small-llama"], help="measure one model only")
    parser.add_argument("--data", choices=["text", "chat"], help="measure one kind of data only")
    parser.add_argument("--no-table", action="store_true", help="only measure")
    args = parser.parse_args()
    rows = json.loads(args.reuse.read_text()) if args.reuse else measure_grid(args.only, args.data)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    if not args.no_table:
        print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
