"""Training speed and memory: tuneforge against transformers.Trainer + PEFT on the same batches, in one run.

Workload: SmolLM2-135M-Instruct (the built-in), LoRA r=16 on all linear layers, batch 8, fp32, seeded
generated chats whose lengths follow a skewed (log-normal) distribution up to 512 tokens. Both sides see the
same examples in the same order (the order tuneforge's seeded data order gives), the same learning rate,
clipping and schedule, no LoRA dropout (so the losses are comparable step by step).

Baseline: `transformers.Trainer` + PEFT with a pad-to-longest collator (`DataCollatorForSeq2Seq`, labels -100
on the prompt and the padding), reading the batches in order. tuneforge runs through `tuneforge.train.train`.
Every variant runs in its own subprocess (so its peak RSS is its own), A/B/A/B for `--rounds` rounds; the
first step of each run is a warm-up and is not timed; medians over rounds.

Printed for each: useful tokens/s (target tokens, the ones that carry a loss), real (non-padding) tokens/s,
the ratio to the baseline, peak RSS and its ratio, and the per-step losses next to the baseline's. Then each
lever on its own, measured as tuneforge with only that lever changed (`--levers`):

    python bench/train_speed.py [--steps 3] [--rounds 2] [--threads 1] [--levers all|none|a,b]

`--rounds 0` measures only the levers (against one tuneforge run, without the baseline).

Goal (CPU): >= 2.5x the baseline's useful tokens/s at <= 1/3 of its peak memory, same losses.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODEL = "builtin:smollm2-135m-instruct"
BATCH, MAX_LENGTH, SEED, LR = 8, 512, 7, 2e-4
WORDS = (
    "the",
    "model",
    "data",
    "train",
    "loss",
    "token",
    "batch",
    "answer",
    "question",
    "why",
    "because",
    "small",
    "large",
    "fast",
    "slow",
    "memory",
    "paper",
    "river",
    "mountain",
    "city",
    "light",
    "dark",
    "music",
    "number",
    "letter",
    "window",
    "garden",
    "kitchen",
    "table",
    "story",
    "simple",
)

# Lever name -> what changes against full tuneforge (child-side switches, see `run_tuneforge`).
LEVERS: dict[str, dict[str, Any]] = {
    "padded, full logits (no lever)": {"pack": False, "target_only": False},
    "target-only projection alone": {"pack": False},
    "packed, block-diagonal mask alone": {"target_only": False, "block_diagonal": True},
    "packed, per-example attention alone": {"target_only": False},
    "tuneforge + LoRA dropout 0.05": {"dropout": 0.05},
    "tuneforge + gradient checkpointing": {"checkpointing": True},
    "tuneforge + 2 threads": {"threads": 2},
    "tuneforge + torch.compile (layers)": {"compile": True},
}


def chats(n: int, seed: int = SEED) -> list[dict[str, Any]]:
    """Chats whose word counts are log-normal (median 50 words, a long tail cut at 470), up to 512 tokens.

    With batches of 8, pad-to-longest then spends ~55-60% of its positions on padding (printed by the bench),
    like the chat workload this bench was written for.
    """
    rng = random.Random(seed)
    out = []
    for i in range(n):
        total = min(470, max(8, int(rng.lognormvariate(math.log(50), 1.0))))
        user = max(3, int(total * rng.uniform(0.3, 0.7)))
        say = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
        out.append(
            {
                "messages": [
                    {"role": "user", "content": f"question {i}: {say(user)}?"},
                    {"role": "assistant", "content": say(total - user) + "."},
                ]
            }
        )
    return out


def run_config(work: Path, variant: dict[str, Any], steps: int, name: str) -> dict[str, Any]:
    return {
        "data": {
            "path": str(work / "chats.jsonl"),
            "format": "chat",
            "output_dir": str(work / "dataset"),
            "splits": [1.0, 0.0, 0.0],
            "dedup": "none",
        },
        "model": {"name": MODEL, "max_length": MAX_LENGTH},
        "method": {"name": "lora", "r": 16, "alpha": 32, "dropout": variant.get("dropout", 0.0)},
        "train": {
            "output_dir": str(work / name),
            "max_steps": steps + 1,
            "batch_size": BATCH,
            "learning_rate": LR,
            "scheduler": "constant",
            "warmup_steps": 0,
            "eval_every": 0,
            "save_every": 0,
            "seed": SEED,
            "progress": False,
            "mixed_precision": "no",
            "pack_examples": variant.get("pack", True),
            "gradient_checkpointing": variant.get("checkpointing", False),
        },
    }


def run_tuneforge(work: Path, variant: dict[str, Any], steps: int, name: str) -> dict[str, Any]:
    """Child: one tuneforge run; step times and losses from its metrics.jsonl."""
    from tuneforge.config import config_from_dict
    from tuneforge.models import lm_loss
    from tuneforge.train import loop, train

    if not variant.get("target_only", True):
        lm_loss.decoder_and_head = lambda model: None  # type: ignore[assignment]
    if variant.get("block_diagonal"):
        # transformers' own packed path: SDPA under a block-diagonal mask over the whole row.
        loop.enable_packed_attention = lambda model: None  # type: ignore[attr-defined]
    if variant.get("compile"):
        real_init = loop.Loop.__init__

        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            real_init(self, *args, **kwargs)
            for layer in self.acc.unwrap_model(self.model).get_base_model().model.layers:
                layer.compile(dynamic=True)

        loop.Loop.__init__ = init  # type: ignore[method-assign]
    run = train(config_from_dict(run_config(work, variant, steps, name)))
    rows = [r for r in run.metrics() if "loss" in r and "split" not in r]
    return {"times": [r["time_s"] for r in rows], "losses": [r["loss"] for r in rows]}


def run_hf(work: Path, steps: int) -> dict[str, Any]:
    """Child: transformers.Trainer + PEFT, pad-to-longest, the batches in tuneforge's order."""
    import time

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    examples = json.loads((work / "ordered.json").read_text())
    path = json.loads((work / "model.json").read_text())["path"]
    tok = AutoTokenizer.from_pretrained(path)
    set_seed(SEED)
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(
        model,
        LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    times: list[float] = []
    losses: list[float] = []

    class Clock(TrainerCallback):
        start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            times.append(time.perf_counter() - self.start)

    class InOrder(Trainer):
        def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
            return torch.utils.data.SequentialSampler(self.train_dataset)  # type: ignore[arg-type]

        def compute_loss(self, *args: Any, **kwargs: Any) -> Any:
            loss = super().compute_loss(*args, **kwargs)  # the step's mean loss per target token
            losses.append(float((loss[0] if isinstance(loss, tuple) else loss).detach()))
            return loss

    args = TrainingArguments(
        output_dir=str(work / "hf"),
        per_device_train_batch_size=BATCH,
        max_steps=steps + 1,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        seed=SEED,
        disable_tqdm=True,
    )
    collator = DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100)
    InOrder(
        model=model, args=args, train_dataset=examples, data_collator=collator, callbacks=[Clock()]
    ).train()
    return {"times": times, "losses": losses}


def child(args: argparse.Namespace) -> None:
    import resource

    import torch

    variant = json.loads(args.variant)
    torch.set_num_threads(variant.get("threads", args.threads))
    work = Path(args.work)
    if variant.get("hf"):
        result = run_hf(work, args.steps)
    else:
        result = run_tuneforge(work, variant, args.steps, args.name)
    result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("RESULT " + json.dumps(result), flush=True)


def prepare(work: Path, steps: int) -> dict[str, Any]:
    """The chats, the prepared dataset, and the examples of each timed step in tuneforge's order."""
    from transformers import AutoTokenizer

    from tuneforge import builtin
    from tuneforge.config import config_from_dict
    from tuneforge.data import prepare_dataset
    from tuneforge.models.encode import IGNORE, encode_chat
    from tuneforge.train.batches import epoch_order

    n = BATCH * (steps + 1)
    (work / "chats.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats(n)), encoding="utf-8")
    path = builtin.resolve(MODEL)
    (work / "model.json").write_text(json.dumps({"path": str(path)}))
    cfg = config_from_dict(run_config(work, {}, steps, "probe"))
    dataset = prepare_dataset(cfg.data, model=cfg.model)
    tok = AutoTokenizer.from_pretrained(path)
    records = dataset.records("train")
    encoded = [encode_chat(tok, r["messages"], MAX_LENGTH) for r in records]
    ordered = [encoded[i] for i in epoch_order(len(encoded), SEED, 0)]
    (work / "ordered.json").write_text(json.dumps(ordered))
    per_step = []
    for s in range(steps + 1):
        batch = ordered[s * BATCH : (s + 1) * BATCH]
        targets = sum(sum(1 for x in e["labels"][1:] if x != IGNORE) for e in batch)
        real = sum(len(e["input_ids"]) for e in batch)
        padded = max(len(e["input_ids"]) for e in batch) * len(batch)
        per_step.append({"targets": targets, "real": real, "padded": padded})
    return {"per_step": per_step, "lengths": sorted(len(e["input_ids"]) for e in encoded)}


def measure(
    work: Path, variant: dict[str, Any], name: str, steps: int, threads: int, fatal: bool = True
) -> dict[str, Any] | None:
    cmd = [sys.executable, __file__, "--child", "--work", str(work), "--name", name]
    cmd += ["--variant", json.dumps(variant), "--steps", str(steps), "--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.update({"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)})
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=1200)
    except subprocess.TimeoutExpired:
        if fatal:
            raise
        print(f"  {name}: no result within 20 minutes", flush=True)
        return None
    lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        if fatal:
            sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
        print(f"  {name} failed: {(out.stderr.strip().splitlines() or ['?'])[-1][:200]}", flush=True)
        return None
    return dict(json.loads(lines[-1][len("RESULT ") :]))


def rates(result: dict[str, Any], per_step: list[dict[str, int]]) -> tuple[float, float]:
    """Useful (target) and real tokens per second over the timed steps (all but the first)."""
    seconds = result["times"][-1] - result["times"][0]
    timed = per_step[1 : len(result["times"])]
    return sum(s["targets"] for s in timed) / seconds, sum(s["real"] for s in timed) / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3, help="timed steps per run (one more runs as a warm-up)")
    p.add_argument(
        "--rounds", type=int, default=2, help="A/B alternations of baseline and tuneforge (0: levers only)"
    )
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of every run")
    p.add_argument("--levers", default="all", help="all, none, or comma-separated lever names (substrings)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--name", default="run", help=argparse.SUPPRESS)
    p.add_argument("--variant", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    sys.path.insert(0, str(ROOT / "src"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        info = prepare(work, args.steps)
        steps = info["per_step"]
        padding = 1 - sum(s["real"] for s in steps) / sum(s["padded"] for s in steps)
        lengths = info["lengths"]
        print(
            f"{len(lengths)} chats, tokens median {lengths[len(lengths) // 2]}, max {lengths[-1]}; "
            f"padding in pad-to-longest batches {padding:.0%}; {args.steps} timed steps x {args.rounds} "
            f"rounds, {args.threads} thread(s)",
            flush=True,
        )
        results: dict[str, list[dict[str, Any]]] = {"hf": [], "tuneforge": []}
        for r in range(args.rounds):
            for name, variant in (("hf", {"hf": True}), ("tuneforge", {})):
                result = measure(work, variant, f"{name}-{r}", args.steps, args.threads)
                assert result is not None
                results[name].append(result)
                print(f"  round {r + 1}: {name} done", file=sys.stderr, flush=True)
        if args.rounds:
            report(results, steps)
        else:  # levers only: one tuneforge run as their reference, no baseline
            ref = measure(work, {}, "tuneforge", args.steps, args.threads)
            assert ref is not None
            results["tuneforge"].append(ref)
        chosen = {} if args.levers == "none" else LEVERS
        if args.levers not in ("all", "none"):
            wanted = args.levers.split(",")
            chosen = {k: v for k, v in LEVERS.items() if any(w in k for w in wanted)}
        if chosen:
            base = statistics.median(rates(x, steps)[0] for x in results["hf"]) if args.rounds else math.nan
            mine = statistics.median(rates(x, steps)[0] for x in results["tuneforge"])
            print(f"\nlevers, one run each ({'useful tokens/s':>15}, x HF, x tuneforge, peak RSS):")
            for i, (label, variant) in enumerate(chosen.items()):
                res = measure(work, variant, f"lever-{i}", args.steps, args.threads, fatal=False)
                if res is None:
                    continue
                useful = rates(res, steps)[0]
                print(
                    f"  {label:<38} {useful:>10.1f} {useful / base:>6.2f}x {useful / mine:>6.2f}x"
                    f" {res['peak_rss'] / 2**30:>6.2f} GiB",
                    flush=True,
                )


def report(results: dict[str, list[dict[str, Any]]], steps: list[dict[str, int]]) -> None:
    table = {}
    for name, runs in results.items():
        useful = statistics.median(rates(x, steps)[0] for x in runs)
        real = statistics.median(rates(x, steps)[1] for x in runs)
        rss = statistics.median(x["peak_rss"] for x in runs)
        table[name] = (useful, real, rss)
    hf = table["hf"]
    print(f"\n{'':<10} {'useful tok/s':>12} {'real tok/s':>11} {'x HF':>6} {'peak RSS':>9} {'x HF':>6}")
    for name, (useful, real, rss) in table.items():
        print(
            f"{name:<10} {useful:>12.1f} {real:>11.1f} {useful / hf[0]:>5.2f}x {rss / 2**30:>6.2f}GiB "
            f"{rss / hf[2]:>5.2f}x"
        )
    a, b = results["hf"][0]["losses"], results["tuneforge"][0]["losses"]
    print("per-step loss (HF | tuneforge | relative difference):")
    for i, (x, y) in enumerate(zip(a, b, strict=False), start=1):
        print(f"  step {i}: {x:.6f} | {y:.6f} | {abs(x - y) / abs(x):.1e}")


if __name__ == "__main__":
    main()
