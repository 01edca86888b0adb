"""`tuneforge serve` with 16 concurrent streaming clients vs the same requests answered one at a time.

Baseline: `model.generate` on each request in turn in this process (what a naive server does). Server: the
real `tuneforge serve builtin:smollm2-135m-instruct` process, driven by the official `openai` client from 16
threads at once. Prints generated tokens/s of each and their ratio (goal ≥ 4×), p50/p95 time to first token,
and the server's peak RSS (VmHWM).

    OMP_NUM_THREADS=1 python bench/serve.py [--clients 16] [--max-new-tokens 32]

One thread per process on a shared machine: multi-threaded CPU GEMMs stall when their threads are descheduled.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

MODEL = "builtin:smollm2-135m-instruct"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def baseline(questions: list[str], max_new: int) -> tuple[int, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge import builtin
    from tuneforge.models.encode import encode_prompt

    path = builtin.resolve(MODEL)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokens, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        for q in questions:
            p = encode_prompt(tok, [{"role": "user", "content": q}])
            out = model.generate(
                torch.tensor([p]),
                attention_mask=torch.ones(1, len(p), dtype=torch.long),
                max_new_tokens=max_new,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
            tokens += out.shape[1] - len(p)
    return tokens, time.perf_counter() - t0


def served(questions: list[str], max_new: int) -> tuple[int, float, list[float], float]:
    import openai

    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [
        sys.executable,
        "-m",
        "tuneforge",
        "serve",
        MODEL,
        "--port",
        str(port),
        "--set",
        "serve.log_db=null",
    ]
    limits = [f"serve.max_concurrent_per_key={len(questions)}", f"serve.max_queue={len(questions)}"]
    cmd += [arg for limit in limits for arg in ("--set", limit)]  # every client admitted at once
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()  # "serving ..." once the model is loaded
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
    ttft: list[float] = []
    counts: list[int] = []
    barrier = threading.Barrier(len(questions) + 1)

    def one(q: str) -> None:
        barrier.wait()
        start = time.perf_counter()
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": q}],
            max_tokens=max_new,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        first = None
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - start
            if chunk.usage is not None:
                counts.append(chunk.usage.completion_tokens)
        ttft.append(first if first is not None else time.perf_counter() - start)

    threads = [threading.Thread(target=one, args=(q,)) for q in questions]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    rss = peak_rss_mb(proc.pid)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    return sum(counts), elapsed, ttft, rss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args()
    questions = [f"Tell me one fact about the number {i}." for i in range(args.clients)]
    n_base, t_base = baseline(questions, args.max_new_tokens)
    n_srv, t_srv, ttft, rss = served(questions, args.max_new_tokens)
    ttft.sort()
    p95 = ttft[min(len(ttft) - 1, round(0.95 * (len(ttft) - 1)))]
    print(f"{args.clients} requests, max_tokens {args.max_new_tokens}, {MODEL}, CPU")
    print(f"one at a time (model.generate): {n_base} tokens in {t_base:.1f} s = {n_base / t_base:.1f} tok/s")
    print(f"tuneforge serve, concurrent:    {n_srv} tokens in {t_srv:.1f} s = {n_srv / t_srv:.1f} tok/s")
    print(f"speed-up {(n_srv / t_srv) / (n_base / t_base):.2f}x")
    print(
        f"time to first token p50 {statistics.median(ttft):.2f} s, p95 {p95:.2f} s; "
        f"server peak RSS {rss:.0f} MB"
    )


if __name__ == "__main__":
    main()
