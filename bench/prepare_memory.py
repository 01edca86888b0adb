"""Streaming: `tuneforge prepare`'s peak memory as the input grows, against the input's own size, in one run.

Prepares a generated classification JSONL of N rows and of `--factor` x N rows (near-dedup on, the default),
each in a fresh process, and reports each one's peak heap (anonymous) memory and peak RSS above where it
started (Linux). A preparation that held its rows in memory would grow its heap as fast as the input; one that
streams grows it by the compact per-row facts only (offsets, labels, token counts, exact-dup keys, LSH band
hashes), while rows and MinHash signatures live in files on disk.

    python bench/prepare_memory.py [--rows 100000] [--factor 4]

Goal: the heap grows by less than half the input's growth (printed as a ratio).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import string
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def write_rows(path: Path, n: int, seed: int = 0) -> int:
    """`n` rows of ~100 random words with one of three labels; returns the file size in bytes."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(20000)]
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            text = " ".join(rng.choices(vocab, k=rng.randint(60, 140)))
            f.write(json.dumps({"text": text, "label": rng.choice(("a", "b", "c"))}) + "\n")
    return path.stat().st_size


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _worker(source: str, out: str, queue: Any) -> None:
    from tuneforge.config import DataConfig
    from tuneforge.data import prepare_dataset

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak mark: measure the preparation, not the imports
    before, anon_before = _status_kib("VmRSS"), _status_kib("RssAnon")
    # The kernel keeps a peak only for the whole RSS, which includes the memory-mapped signature file (page
    # cache the kernel can drop). Heap memory, what actually runs out, is sampled here.
    anon_peak = [anon_before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            anon_peak[0] = max(anon_peak[0], _status_kib("RssAnon"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    prepare_dataset(DataConfig(path=source, output_dir=out, format="classification"))
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    queue.put(
        {
            "seconds": seconds,
            "peak_mib": (_status_kib("VmHWM") - before) / 1024,
            "heap_mib": (anon_peak[0] - anon_before) / 1024,
        }
    )


def measure(source: Path, out: Path) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(str(source), str(out), queue))
    proc.start()
    result = dict(queue.get())
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--factor", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = []
        for n in (args.rows, args.rows * args.factor):
            source = Path(tmp) / f"rows-{n}.jsonl"
            size_mib = write_rows(source, n) / 2**20
            results.append({"rows": n, "input_mib": size_mib, **measure(source, Path(tmp) / f"out-{n}")})
    print(f"{'rows':>9} {'input MiB':>10} {'heap MiB':>9} {'RSS MiB':>8} {'seconds':>8} {'rows/s':>8}")
    for r in results:
        print(
            f"{r['rows']:>9,} {r['input_mib']:>10.1f} {r['heap_mib']:>9.1f} {r['peak_mib']:>8.1f} "
            f"{r['seconds']:>8.1f} {r['rows'] / r['seconds']:>8,.0f}"
        )
    small, big = results
    extra_rows, extra_input = big["rows"] - small["rows"], big["input_mib"] - small["input_mib"]
    heap = (big["heap_mib"] - small["heap_mib"]) * 2**20
    print(
        f"heap grew by {heap / extra_rows:.0f} bytes per extra row, "
        f"{heap / 2**20 / extra_input:.2f} MiB per MiB of extra input "
        "(goal: < 0.5; holding the rows would be >= 1)"
    )
    print(
        "RSS also counts the memory-mapped MinHash signatures (512 bytes per row): page cache the kernel "
        "reclaims under pressure"
    )


if __name__ == "__main__":
    main()
