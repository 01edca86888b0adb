"""Chat-template lengths: `tuneforge prepare` of the demo tweets as a causal LM sees them, timed in one run.

Prepares the quickstart's data section (38k tweets, SmolLM2's tokenizer) twice, each in a fresh process: as a
classification head sees the rows (each text tokenized once: the cost of counting content alone) and as the
quickstart's causal LM sees them (every row rendered with the chat template, its default system prompt and
data.prompt_template, about three times the tokens). Repeated parts of the renderings are counted once.

    python bench/prepare_lengths.py [--repeats 2]

Goal: the chat-template preparation takes less than twice the time of the text-only one (printed as a ratio).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from typing import Any


def _worker(task: str, out: str, queue: Any) -> None:
    from tuneforge.data import prepare_dataset
    from tuneforge.quickstart import quickstart_config

    cfg = quickstart_config(False, [])
    cfg.data.output_dir = out
    model = cfg.model.model_copy(update={"task": task})
    start = time.perf_counter()
    ds = prepare_dataset(cfg.data, force=True, model=model)
    queue.put((time.perf_counter() - start, ds.manifest["token_lengths"]["all"]["mean"]))


def timed(task: str, out: Path) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(task, str(out), queue))
    proc.start()
    result: tuple[float, float] = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        times: dict[str, list[float]] = {"classification": [], "causal-lm": []}
        means: dict[str, float] = {}
        for r in range(args.repeats):  # interleaved, so a busy machine slows both alike
            for task in times:
                seconds, means[task] = timed(task, Path(tmp) / f"{task}-{r}")
                times[task].append(seconds)
    text, chat = min(times["classification"]), min(times["causal-lm"])
    print(f"text only (head):       {text:6.1f} s  mean {means['classification']:.1f} tokens per row")
    print(f"chat template (causal): {chat:6.1f} s  mean {means['causal-lm']:.1f} tokens per row")
    print(f"ratio: {chat / text:.2f}x (goal < 2x)")


if __name__ == "__main__":
    main()
