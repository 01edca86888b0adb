"""Batched generation (models/generate.py) vs a per-example `model.generate` loop, same prompts and settings.

Greedy decoding of chat prompts with the built-in SmolLM2 (or any model folder) on the CPU; prints tokens/s of
each side, their ratio, and whether every answer is token for token the same.

    python bench/generate.py [--model builtin:smollm2-135m-instruct] [--prompts 16] [--max-new-tokens 48]
"""

from __future__ import annotations

import argparse
import time

QUESTIONS = [
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "Name three colours.",
    "How do I boil an egg?",
    "Give me a short tip for learning Python.",
    "What is 12 times 7?",
    "Describe a cat in a few words.",
    "Why is the sky blue? Answer briefly.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    import torch

    from tuneforge.config import ModelConfig
    from tuneforge.models import load_model, load_tokenizer
    from tuneforge.models.encode import encode_prompt
    from tuneforge.models.generate import GenerationSettings, eos_token_ids, generate

    torch.manual_seed(0)
    cfg = ModelConfig(name=args.model, task="causal-lm", dtype="float32")
    tok = load_tokenizer(cfg)
    model = load_model(cfg, pad_token_id=tok.pad_token_id).eval()
    questions = [QUESTIONS[i % len(QUESTIONS)] + f" ({i})" for i in range(args.prompts)]
    prompts = [encode_prompt(tok, [{"role": "user", "content": q}]) for q in questions]
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    eos = sorted(eos_token_ids(model, tok))

    # Warm-up of both paths (first-call allocations and kernel choices are not what is measured).
    generate(model, tok, prompts[:1], GenerationSettings(max_new_tokens=2))
    with torch.inference_mode():
        model.generate(
            input_ids=torch.tensor(prompts[:1]),
            max_new_tokens=2,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )

    start = time.perf_counter()
    ours = generate(model, tok, prompts, settings, batch_size=args.batch_size)
    ours_s = time.perf_counter() - start

    start = time.perf_counter()
    loop = []
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([p])
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=tok.pad_token_id,
            )
            new = out[0, len(p) :].tolist()
            loop.append([t for t in new if t not in eos])
    loop_s = time.perf_counter() - start

    ours_tokens = sum(g.completion_tokens for g in ours)
    loop_tokens = sum(len(x) for x in loop) + sum(1 for x in loop if len(x) < args.max_new_tokens)
    same = sum(g.token_ids == x for g, x in zip(ours, loop, strict=True))
    print(
        f"prompts {len(prompts)}, max_new_tokens {args.max_new_tokens}, batch {args.batch_size}, {args.model}"
    )
    print(f"batched generate:        {ours_tokens / ours_s:8.1f} tokens/s ({ours_s:.1f} s)")
    print(f"model.generate per row:  {loop_tokens / loop_s:8.1f} tokens/s ({loop_s:.1f} s)")
    print(
        f"ratio: {(ours_tokens / ours_s) / (loop_tokens / loop_s):.2f}x; identical greedy answers: "
        f"{same}/{len(prompts)}"
    )


if __name__ == "__main__":
    main()
