"""Calibrate `tuneforge estimate` on this machine: estimated vs measured peak memory of 3 real training steps.

Each grid point trains 3 steps with `tuneforge train` in a subprocess (packed text, so every micro-batch is
exactly batch x max_length tokens; CPU, float32) and reads the peak resident memory from the run manifest. The
measured number is the growth above an idle process that imported what training imports (python, torch,
transformers, peft, accelerate, tuneforge), which is what the estimate predicts. Training projects only the
target positions onto the vocabulary, and the estimate follows it (`logits_mode`).

    python bench/estimate_calibration.py [--out results.json] [--reuse results.json] [--only smollm2]

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

# (model, method, batch size, max_length): a small grid, 3 steps each (the machine is shared).
GRID: list[tuple[str, str, int, int]] = [
    ("smollm2", "lora", 2, 128),
    ("smollm2", "lora", 4, 128),
    ("smollm2", "lora", 2, 256),
    ("smollm2", "lora", 4, 256),
    ("smollm2", "full", 2, 128),
    ("small-llama", "lora", 4, 256),
    ("small-llama", "lora", 8, 512),
    ("small-llama", "full", 2, 256),
    ("small-llama", "full", 4, 256),
    ("small-llama", "full", 8, 256),
    ("small-llama", "full", 8, 512),
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
        "import resource, torch, transformers, peft, accelerate, tuneforge.train.run;"
        "from transformers import LlamaForCausalLM;"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"
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


def prepare(work: Path, model: str) -> Path:
    corpus = write_corpus(work / "corpus.txt")
    out = work / f"ds-{abs(hash(model)) % 10_000}"
    cfg = {
        "data": {
            "path": str(corpus),
            "format": "text",
            "output_dir": str(out),
            "dedup": "none",
            "splits": [0.9, 0.05, 0.05],
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
    m = json.loads((Path(cfg["train"]["output_dir"]) / "manifest.json").read_text())
    return {"peak_bytes": m["peak_memory_bytes"], "train_time_s": m["train_time_s"], "steps": m["step"]}


def measure_grid(only: str | None) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = {"smollm2": SMOLLM2, "small-llama": str(make_small_llama(work / "small-llama"))}
        data = {key: prepare(work, name) for key, name in models.items() if only in (None, key)}
        base = baseline_rss()
        for key, method, batch, length in GRID:
            if only not in (None, key):
                continue
            name = f"{key}-{method}-b{batch}-t{length}"
            cfg = run_config(models[key], method, batch, length, data[key], work / name)
            result = measure(cfg, work, name)
            rows.append({"name": name, "model": key, "config": cfg, "baseline_bytes": base, **result})
            print(f"measured {name}: {(result['peak_bytes'] - base) / 2**20:,.0f} MiB", flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Estimate vs measured, as a markdown table (what the README shows)."""
    from tuneforge.config import config_from_dict
    from tuneforge.models.estimate import estimate

    lines = [
        "| run | measured MiB | estimated MiB | error | biggest terms (MiB) |",
        "|---|---:|---:|---:|---|",
    ]
    for r in rows:
        cfg = config_from_dict(r["config"])
        if r["model"] != "smollm2":
            # The small model was built in a temporary folder: size it from the same architecture again.
            with tempfile.TemporaryDirectory() as tmp:
                cfg.model.name = str(make_small_llama(Path(tmp) / "m"))
                est = estimate(cfg, device="cpu")
        else:
            est = estimate(cfg, device="cpu")
        measured = (r["peak_bytes"] - r["baseline_bytes"]) / 2**20
        predicted = est.peak / 2**20
        top = sorted(est.breakdown.items(), key=lambda kv: -kv[1])[:3]
        terms = ", ".join(f"{k} {v / 2**20:,.0f}" for k, v in top)
        err = (predicted - measured) / measured
        lines.append(f"| {r['name']} | {measured:,.0f} | {predicted:,.0f} | {err:+.0%} | {terms} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the measurements as JSON")
    parser.add_argument("--reuse", type=Path, help="read measurements written by --out instead of training")
    parser.add_argument("--only", choices=["smollm2", "small-llama"], help="measure one model only")
    parser.add_argument("--no-table", action="store_true", help="only measure")
    args = parser.parse_args()
    rows = json.loads(args.reuse.read_text()) if args.reuse else measure_grid(args.only)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    if not args.no_table:
        print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
