"""method head against LoRA on the built-in MiniLM, demo tweets (3 sentiments): wall time and test macro-F1.

Both start from the same prepared dataset (ROWS random rows, 3,000 by default); LoRA uses
configs/classify-minilm.yaml's recipe (r=8, batch 32, lr 5e-4) for STEPS steps (100 by default), head
configs/method-head.yaml's (C chosen on validation). Embeddings go to a fresh cache, so the
head's time includes embedding every text. Run: `nice python bench/head_vs_lora.py OUT_DIR [ROWS] [STEPS]`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tuneforge(*args: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "tuneforge", *args], check=True, env=env)


def sample_tweets(out: Path, rows: int, seed: int = 0) -> Path:
    """`rows` random rows of the demo tweets (the file is ordered by sentiment: its first rows are one class).

    Read and written as latin-1, which maps every byte to itself, so the invalid UTF-8 of some tweets reaches
    `prepare` unchanged (and is dropped there, as in the full set).
    """
    import csv
    import random

    from tuneforge.builtin import demo_csv

    with open(demo_csv(), encoding="latin-1", newline="") as f:
        header, *body = list(csv.reader(f))
    picked = random.Random(seed).sample(body, min(rows, len(body)))
    path = out / f"tweets-{rows}.csv"
    with open(path, "w", encoding="latin-1", newline="") as f:
        csv.writer(f).writerows([header, *picked])
    return path


def main(out: Path, rows: int, lora_steps: int) -> None:
    import os

    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TUNEFORGE_CACHE": str(out / "cache")}
    data = [f"data.path={sample_tweets(out, rows)}", f"data.output_dir={out / 'tweets.ds'}"]
    # Prepared once, first, so neither run's time includes preparing the data.
    tuneforge("prepare", str(ROOT / "configs" / "method-head.yaml"), *data, env=env)
    table = []
    for name, config in (("head", "method-head.yaml"), ("lora", "classify-minilm.yaml")):
        run = out / name
        keys = [*data, f"train.output_dir={run}", "train.progress=false"]
        if name == "lora":
            keys.append(f"train.max_steps={lora_steps}")
        start = time.perf_counter()
        tuneforge("train", str(ROOT / "configs" / config), *keys, env=env)
        train_s = time.perf_counter() - start
        tuneforge("evaluate", str(run), "eval.compare_base=false", "--split", "test", env=env)
        result = json.loads((run / "eval" / "test.json").read_text())
        table.append((name, train_s, result["tuned"]["accuracy"], result["tuned"]["macro_f1"], result["n"]))
    print("| method | train wall time | test accuracy | test macro-F1 | test examples |")
    print("|---|---|---|---|---|")
    for name, s, acc, f1, n in table:
        print(f"| {name} | {s:.0f} s | {acc:.3f} | {f1:.3f} | {n} |")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(
        Path(args[0] if args else "bench-head-vs-lora"),
        rows=int(args[1]) if len(args) > 1 else 3000,  # a small set, as on a laptop
        lora_steps=int(args[2]) if len(args) > 2 else 100,
    )
