"""Batched generation (tuneforge.models.generate) vs a per-example `model.generate` loop, in one run.

SmolLM2-135M-Instruct on CPU, the same chat prompts and greedy settings for both; prints generated tokens/s
of each, their ratio (goal ≥ 4×) and whether every answer is identical token for token.

    OMP_NUM_THREADS=1 python bench/generate.py [--prompts 16] [--max-new-tokens 32] [--batch-size 16]

One thread on a shared machine: multi-threaded CPU GEMMs stall when their threads are descheduled.
"""

from __future__ import annotations

import argparse
import time

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "How do I reset my password?",
    "Explain photosynthesis in one sentence.",
    "My order arrived damaged. What should I do?",
    "Give me three tips for sleeping better.",
    "What is 17 times 3?",
    "Translate 'good morning' into Spanish.",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge import builtin
    from tuneforge.models.encode import encode_prompt
    from tuneforge.models.generate import GenerationSettings, generate

    path = builtin.resolve("builtin:smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    questions = [f"{QUESTIONS[i % len(QUESTIONS)]} (#{i})" for i in range(args.prompts)]
    prompts = [encode_prompt(tok, [{"role": "user", "content": q}]) for q in questions]
    eos = model.generation_config.eos_token_id
    eos = {eos} if isinstance(eos, int) else set(eos or [])

    t0 = time.perf_counter()
    baseline = []
    with torch.inference_mode():
        for p in prompts:
            out = model.generate(
                torch.tensor([p]),
                attention_mask=torch.ones(1, len(p), dtype=torch.long),
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )[0, len(p) :].tolist()
            cut = next((i for i, t in enumerate(out) if t in eos), len(out))
            baseline.append(out[:cut])
    t_base = time.perf_counter() - t0

    t0 = time.perf_counter()
    ours = generate(
        model,
        tok,
        prompts,
        GenerationSettings(max_new_tokens=args.max_new_tokens),
        batch_size=args.batch_size,
    )
    t_ours = time.perf_counter() - t0

    n_base = sum(len(b) for b in baseline)
    n_ours = sum(len(g.token_ids) for g in ours)
    same = sum(g.token_ids == b for g, b in zip(ours, baseline, strict=True))
    print(f"prompts {len(prompts)}, max_new_tokens {args.max_new_tokens}, batch {args.batch_size}, CPU fp32")
    print(f"model.generate one by one: {n_base} tokens in {t_base:.1f} s = {n_base / t_base:.1f} tok/s")
    print(f"tuneforge generate:        {n_ours} tokens in {t_ours:.1f} s = {n_ours / t_ours:.1f} tok/s")
    print(
        f"speed-up {(n_ours / t_ours) / (n_base / t_base):.2f}x; "
        f"identical greedy answers {same}/{len(prompts)}"
    )


if __name__ == "__main__":
    main()
