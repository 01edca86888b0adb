"""Will it fit, and how long will it take? Peak memory and step/epoch time of a run, before anything loads.

Memory per process, in bytes (the terms are printed, so a user sees what to shrink):
    weights      frozen parameters in the model dtype (4-bit NF4 linear layers for qlora: ~0.5625 byte each)
    trainable    trainable parameters (PEFT keeps adapters in float32)
    optimizer    AdamW: 2 states per trainable parameter, in its dtype (adamw-8bit: 2 bytes)
    gradients    one per trainable parameter; they grow while activations are freed during backward, so the
                 peak holds the larger of the two, not their sum (measured: see README, Choosing a model)
    activations  what autograd saves in forward, counted on the meta device (shape.py) for the largest
                 micro-batch (`peak_micro_batch`: padded, batch x the longest example; packed examples,
                 one row of their real lengths), LoRA dropout copies and attention included, plus the
                 gradients of BACKWARD_BLOCKS blocks' activations during backward; with gradient
                 checkpointing only each block's input plus one block being recomputed
    logits       causal LM, as training computes them (models/lm_loss.py): only the positions with a target
                 go through the output layer, CHUNK of them at a time, so (min(N, CHUNK), vocab) logits with
                 their float32 log-softmax and gradients ("targets"); where that is not exact (prompt/prefix
                 tuning, logit soft-capping, DDP/FSDP/DeepSpeed wrappers) every position's (B, T, vocab)
                 logits in LOGITS_FULL_COPIES copies ("full"), often the largest term
    overhead     CPU: a fixed part (tokenizer, data, Python objects) and the allocator's slack on the
                 transient terms (ALLOCATOR_SLACK, fitted on CPU: larger for adapters, whose forward and
                 backward make more short-lived copies than they save); GPU: the caching allocator (~10%)
Full fine-tuning keeps each gradient until the optimizer step, so the output layer's gradient, made first in
backward, coexists with all the activations; the other blocks' gradients replace activations as they go.
FSDP divides weights, gradients and optimizer state by the process count; DeepSpeed ZeRO-1/2/3 the optimizer
state / also gradients / also weights.

Time per step = training FLOPs / (device throughput x utilisation). FLOPs per token: 2 x N (forward) for
every matmul parameter N, x3 for full fine-tuning (gradients for inputs and weights), x2 for frozen weights
(LoRA: no weight gradients) plus the adapter's own 6 x trainable; attention adds 4 x layers x T x width.
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, field, replace
from typing import Any

from tuneforge.config import RunConfig
from tuneforge.errors import TuneforgeError
from tuneforge.models.runs import PROMPT_LEARNING

GIB = 2**30
LABEL_TOKENS = 8  # target tokens of a label answer (a causal LM learning a classification set), EOS included
LOGITS_FULL_COPIES = 6  # (B,T,V) logits + the gathered rows' log-softmax, its two grads, two scattered grads
BACKWARD_BLOCKS = (
    1.5  # block-activation gradients alive at once during backward, in units of one block's saved
)
# Peak RSS growth over the live bytes counted, fitted with bench/estimate_calibration.py on CPU (slope of
# measured vs counted over the grid): adapters 1.3 (dropout copies, base + adapter sums and their gradients
# are short-lived but not saved), full fine-tuning 1.05. GPU: the caching allocator, not yet calibrated.
ALLOCATOR_SLACK = {("cpu", "adapter"): 1.3, ("cpu", "full"): 1.05, ("cuda", "adapter"): 1.1}
ALLOCATOR_SLACK[("cuda", "full")] = ALLOCATOR_SLACK[("cuda", "adapter")]
CPU_FIXED_OVERHEAD = 15 * 2**20  # tokenizer, records, Python objects: the grid's intercept
UTILISATION = {"cpu": 0.5, "cuda": 0.4}
OPTIMIZER_BYTES_PER_PARAM = 112
"""Memory traffic of AdamW's step, gradient clipping and zero_grad per float32 trainable parameter, in bytes
at the bandwidth cpu_bandwidth() measures: the three took 0.116 s for 22.7M parameters at a measured
22 GB/s on the 2-core machine (2026-12-07). Param, gradient and two moments read and written are 28 bytes;
the foreach temporaries and the cache misses of many tensors make the rest."""
TEMPLATE_TOKENS = 32  # a chat template's role markers and system prompt, not in the dataset's content lengths


@dataclass(frozen=True)
class Device:
    name: str
    kind: str
    """cpu or cuda."""
    memory: int
    """Bytes one process may use."""
    flops: float
    """Dense matmul throughput in FLOP/s (bf16 on GPUs, float32 on the CPU)."""
    bf16: bool = True
    bandwidth: float | None = None
    """Memory bandwidth in bytes/s (measured on the CPU), which prices the optimizer update; None: not
    counted (on a GPU it is a sliver of a step)."""


# Dense (no sparsity) bf16/fp16 tensor-core peaks from the vendors' data sheets; memory as sold.
GPUS: dict[str, tuple[float, float, bool]] = {
    "H200": (141, 989e12, True),
    "H100": (80, 989e12, True),
    "A100-80GB": (80, 312e12, True),
    "A100": (40, 312e12, True),
    "L40S": (48, 362e12, True),
    "A10G": (24, 125e12, True),
    "L4": (24, 121e12, True),
    "RTX 4090": (24, 165e12, True),
    "RTX 3090": (24, 71e12, True),
    "V100": (32, 125e12, False),
    "T4": (16, 65e12, False),
}


def parse_gpu(text: str) -> Device:
    """A declared GPU: a name from GPUS (H100, L4, ...) or a memory size like 24GB (A10G-class speed)."""
    key = text.strip().upper().replace("_", " ")
    for name, (gb, flops, bf16) in GPUS.items():
        if key == name.upper() or key == name.upper().replace(" ", ""):
            return Device(name, "cuda", int(gb * 1e9), flops, bf16)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(GB|GIB|G)?", key)
    if m is None:
        raise TuneforgeError(
            f"unknown GPU {text!r}",
            where="--gpu",
            fix="give a memory size (24GB) or one of: " + ", ".join(GPUS),
        )
    if not float(m.group(1)) > 0:
        raise TuneforgeError(
            f"a GPU of {text!r} has no memory to train in",
            where="--gpu",
            fix="give its memory, e.g. --gpu 24GB",
        )
    return Device(f"{m.group(1)} GB GPU", "cuda", int(float(m.group(1)) * 1e9), GPUS["A10G"][1], True)


def available_cpu_memory() -> int:
    """Memory a new allocation can get now: psutil's `available` (MemAvailable on Linux)."""
    import psutil

    return int(psutil.virtual_memory().available)


def resident_peak_bytes() -> int:
    """This process's own peak resident memory: VmHWM on Linux, else ru_maxrss.

    On Linux ru_maxrss also keeps the resident size of the parent at the fork that started this process (it
    survives exec), so a child of a large process reads the parent's size: `estimate --measure` right after
    converting a built-in model (1.5 GiB in the parent) read its idle baseline as 1.5 GiB, not 0.4.
    """
    import resource
    from pathlib import Path

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


_MEASURED: dict[tuple[str, int], float] = {}
"""Rates measured in this process, by (what, torch thread count)."""


def _best_rate(what: str, op: Any, units: float, seconds: float, windows: int) -> float:
    """`units` per second of `op`, the best of `windows` short windows, measured once per process and thread
    count: the defaults' sizing and the time printed before the first step then read the same figure (two
    separate 0.2 s measurements once differed by 30% in one run). The best window, because one that another
    process or a frequency change slowed says less about what a whole run gets than the fastest one."""
    import time

    import torch

    key = (what, torch.get_num_threads())
    if key not in _MEASURED:
        op()
        best = 0.0
        for _ in range(windows):
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                op()
                done += 1
            best = max(best, units * done / (time.perf_counter() - start))
        _MEASURED[key] = best
    return _MEASURED[key]


def cpu_flops(seconds: float = 0.1, windows: int = 3) -> float:
    """Float32 matmul FLOP/s of this CPU with torch's current thread count (a short measurement)."""
    import torch

    n = 512
    a, b = torch.randn(n, n), torch.randn(n, n)
    return _best_rate("flops", lambda: torch.mm(a, b), 2 * n**3, seconds, windows)


def cpu_bandwidth(seconds: float = 0.1, windows: int = 3) -> float:
    """Bytes/s this CPU streams through an elementwise op (c = a + b on 32 MB tensors)."""
    import torch

    n = 8 * 1024 * 1024
    a, b, c = torch.randn(n), torch.randn(n), torch.empty(n)
    return _best_rate("bandwidth", lambda: torch.add(a, b, out=c), 3 * 4 * n, seconds, windows)


def detect_device(*, measure_flops: bool = True) -> Device:
    """This machine's device: the first CUDA GPU (its total memory), else the CPU (its available memory)."""
    import torch

    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        known = next((v for k, v in GPUS.items() if k.upper().replace(" ", "") in p.name.upper()), None)
        flops = known[1] if known else GPUS["A10G"][1]
        return Device(p.name, "cuda", int(p.total_memory), flops, torch.cuda.is_bf16_supported())
    if not measure_flops:
        return Device("CPU", "cpu", available_cpu_memory(), 1e10)
    return Device("CPU", "cpu", available_cpu_memory(), cpu_flops(), bandwidth=cpu_bandwidth())


@dataclass
class Estimate:
    model: str
    method: str
    device: Device
    total_params: int
    trainable_params: int
    batch: int
    length: int
    """Tokens of the longest example (padded: per row of the largest micro-batch)."""
    breakdown: dict[str, int]
    peak: int
    step_s: float
    steps_per_epoch: int | None
    notes: list[str] = field(default_factory=list)
    packed: int | None = None
    """Tokens of the one row the largest micro-batch is packed into (train.pack_examples); None: padded."""

    @property
    def fits(self) -> bool:
        return self.peak <= self.device.memory

    @property
    def epoch_s(self) -> float | None:
        return None if self.steps_per_epoch is None else self.step_s * self.steps_per_epoch

    def lines(self) -> list[str]:
        """The estimate for people: the terms, the peak against the device, the time."""
        shape = f"{self.batch} x {self.length} tokens"
        if self.packed is not None:
            shape = f"{self.batch} x up to {self.length} tokens, packed into one row of {self.packed:,} "
            shape += "at the peak"
        out = [
            f"{self.model} + {self.method}: {self.trainable_params:,} of {self.total_params:,} parameters "
            f"train; micro-batch {shape}",
        ]
        for name, value in sorted(self.breakdown.items(), key=lambda kv: -kv[1]):
            out.append(f"  {name:<12}{value / GIB:>9.2f} GiB")
        verdict = "fits" if self.fits else "does NOT fit"
        out.append(
            f"  {'peak':<12}{self.peak / GIB:>9.2f} GiB of {self.device.memory / GIB:.1f} GiB on "
            f"{self.device.name}: {verdict}"
        )
        epoch = (
            f", {fmt_seconds(self.epoch_s)} per epoch ({self.steps_per_epoch:,} steps)"
            if self.epoch_s
            else ""
        )
        if self.method == "head":
            out.append(
                f"  time: {fmt_seconds(self.epoch_s)} to embed every text once "
                f"({self.steps_per_epoch or 0:,} forward passes of {self.batch} windows), then seconds to "
                "fit the head (rough: FLOPs / throughput)"
            )
        else:
            out.append(f"  time: {fmt_seconds(self.step_s)} per step{epoch} (rough: FLOPs / throughput)")
        out += [f"  note: {n}" for n in self.notes]
        return out


def fmt_duration(seconds: float) -> str:
    """A wall time in the words of the progress lines: "45 s", "29 min", "4 h 31 min"."""
    minutes = round(seconds / 60)
    if minutes < 1:
        return f"{seconds:.0f} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    if s < 120:
        return f"{s:.2g} s" if s < 10 else f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def sequence_lengths(cfg: RunConfig, manifest: dict[str, Any] | None) -> tuple[int, int, int | None]:
    """(tokens per row for memory, tokens per row for time, training rows) from the dataset's real lengths.

    Packed text fills every row to model.max_length. Otherwise the longest row sets the peak and a high
    percentile the typical padded width; unknown lengths (a raw file not prepared yet) mean max_length.
    """
    cap = cfg.model.max_length
    if manifest is None:
        return cap, cap, None
    stats = (manifest.get("token_lengths") or {}).get("train") or {}
    fmt = manifest.get("format")
    rows = (manifest.get("splits") or {}).get("train")
    if cfg.model.task == "causal-lm" and fmt == "text" and cfg.train.packing and stats.get("total"):
        return cap, cap, max(1, int(stats["total"]) // cap)
    if not stats.get("count"):
        return cap, cap, rows
    extra = _unseen_tokens(cfg, manifest)
    peak = min(cap, int(stats["max"]) + extra)
    typical = min(cap, int(stats.get("p90", stats["max"])) + extra)
    if packs_examples(cfg) and stats.get("total"):  # one row of whole examples: no padding is computed
        typical = min(cap, math.ceil(int(stats["total"]) / int(stats["count"])) + extra)
    return peak, typical, rows


def _unseen_tokens(cfg: RunConfig, manifest: dict[str, Any]) -> int:
    """Tokens a row has beyond the manifest's lengths: none where prepare counted what this model sees."""
    from tuneforge.data.lengths import tokenizer_name

    lengths = manifest.get("token_lengths") or {}
    basis = str(lengths.get("measured_as") or "")
    rendered = ("conversation rendered by the chat template", "text with the tokenizer's special")
    if basis.startswith(rendered) and lengths.get("tokenizer") in (cfg.model.name, tokenizer_name(cfg.model)):
        return 0  # data/lengths.py rendered the template (and data.prompt_template) or added [CLS]/[SEP]
    if cfg.model.task != "causal-lm":
        return 2  # [CLS]/[SEP]
    classification = manifest.get("format") == "classification"
    return TEMPLATE_TOKENS + (32 if classification else 0)  # chat template, and the prompt template


def peak_micro_batch(cfg: RunConfig, manifest: dict[str, Any] | None, longest: int) -> tuple[int, int]:
    """(rows, tokens per row) of the largest micro-batch of an epoch: the shape the peak is computed at.

    Padded rows are batch x the longest example. Packed examples (train.pack_examples) are one row of whole
    examples, so the peak follows the largest *sum* of batch lengths: the longest example lands in some
    micro-batch beside batch - 1 others, taken at the 90th percentile so that a batch of several long rows is
    covered too. On a real chat set (mean 112, p90 180, longest 512 tokens) the largest micro-batch of an
    epoch, over 200 data orders, stayed within this for batches of 4, 8 and 16 (1,776 of 1,772 tokens at 8,
    where batch x longest said 4,096). Packed text fills every row to model.max_length.
    """
    b, cap = cfg.train.batch_size, cfg.model.max_length
    stats = ((manifest or {}).get("token_lengths") or {}).get("train") or {}
    fmt = (manifest or {}).get("format")
    if not packs_examples(cfg) or fmt == "text" or not stats.get("count") or b == 1:
        return b, longest
    extra = _unseen_tokens(cfg, manifest or {})
    typical = min(cap, int(stats.get("p90", stats["max"])) + extra)
    return 1, min(b * longest, longest + (b - 1) * typical)


def packs_examples(cfg: RunConfig) -> bool:
    """Whether training runs each micro-batch as one packed row (train.pack_examples, where it is exact)."""
    prompt_learning = cfg.method.name in PROMPT_LEARNING
    return cfg.model.task == "causal-lm" and cfg.train.pack_examples and not prompt_learning


def logits_mode(cfg: RunConfig, model_config: Any, processes: int) -> str:
    """How training computes causal-LM logits (models/lm_loss.py): "targets" or, where not exact, "full"."""
    from tuneforge.models.lm_loss import LOGIT_POSTPROCESSING

    if cfg.method.name in PROMPT_LEARNING:  # virtual tokens: the model's own forward
        return "full"
    if processes > 1 or cfg.train.fsdp or cfg.train.deepspeed:  # wrappers whose hooks need their forward
        return "full"
    if any(getattr(model_config, k, None) not in (None, 1, 1.0) for k in LOGIT_POSTPROCESSING):
        return "full"
    return "targets"


def target_positions(cfg: RunConfig, manifest: dict[str, Any] | None, batch: int, positions: int) -> int:
    """Positions of a micro-batch (`batch` examples, `positions` in all) that carry a target: a label's few
    tokens per example, else (at most) every position."""
    if cfg.model.task == "causal-lm" and (manifest or {}).get("format") == "classification":
        return min(batch * LABEL_TOKENS, positions)
    return positions  # text: every position; chat/instruction: the answers, which may fill a row


def _dtype_bytes(cfg: RunConfig, device: Device) -> tuple[int, str]:
    """Bytes per weight of the model dtype as tuneforge loads it (auto: bf16 on GPUs that have it)."""
    name = cfg.model.dtype
    if name == "auto":
        name = "bfloat16" if device.kind == "cuda" and device.bf16 else "float32"
    return (4 if name == "float32" else 2), name


def estimate(
    cfg: RunConfig,
    *,
    device: Device | str | None = None,
    manifest: dict[str, Any] | None = None,
    processes: int = 1,
    logits: str | None = None,
    micro_batch: tuple[int, int] | None = None,
) -> Estimate:
    """Peak memory per process and time of the run `cfg` describes (no weights read, nothing allocated).

    `device`: a Device, "cpu", a GPU name or size ("H100", "24GB"), or None for this machine's.
    `manifest`: the prepared dataset's manifest (real token lengths); read from data.path when it is one.
    `logits`: "targets" or "full" to override how training is taken to compute the logits (`logits_mode`).
    `micro_batch`: (rows, tokens per row) to compute the peak at instead of the epoch's largest micro-batch
    (`peak_micro_batch`); `measure` compares at the shape its few steps really ran.
    """
    import torch

    from tuneforge.models.shape import build_meta, saved_activation_bytes

    dev = resolve_device(device)
    if manifest is None:
        manifest = _dataset_manifest(cfg)
    width, bytes_name = _dtype_bytes(cfg, dev)
    labels = len(manifest.get("labels") or []) if manifest else 0
    shape = build_meta(cfg.model, cfg.method, labels=max(labels, 2), dtype=getattr(torch, bytes_name))
    b, accum = cfg.train.batch_size, cfg.train.gradient_accumulation_steps
    length, typical, rows = sequence_lengths(cfg, manifest)
    peak_rows, peak_tokens = micro_batch or peak_micro_batch(cfg, manifest, length)
    packed = peak_tokens if peak_rows == 1 and b > 1 else None
    notes: list[str] = []
    if shape.source == "catalog":
        notes.append("sized from the catalog's architecture numbers (the model is not on disk)")

    if cfg.method.name == "head":
        return _head_estimate(cfg, shape, dev, width, manifest, notes)
    full = cfg.method.name == "full"
    frozen = shape.total - shape.trainable
    weights = frozen * width
    if cfg.method.name == "qlora":
        weights = int(min(shape.linear, frozen) * 0.5625 + max(frozen - shape.linear, 0) * width)
    train_width = width if full else 4  # PEFT casts adapters to float32
    trainable = shape.trainable * train_width
    grads = shape.trainable * train_width
    per_state = 1 if cfg.train.optimizer == "adamw-8bit" else train_width
    optimizer = 2 * shape.trainable * per_state

    try:
        inside, outside = saved_activation_bytes(shape, peak_rows, peak_tokens)
    except Exception as err:  # an architecture whose forward needs real values: fall back to a formula
        per_token_layer = 4 * (16 * shape.hidden) if width == 4 else 2 * (16 * shape.hidden)
        inside, outside = per_token_layer * shape.layers * peak_rows * peak_tokens, 0
        notes.append(f"activations from a formula ({type(err).__name__} on the meta device)")
    if cfg.train.gradient_checkpointing:
        # Only each block's input stays; one block's activations exist again while it is recomputed.
        inside = shape.layers * peak_rows * peak_tokens * shape.hidden * width + inside // max(
            shape.layers, 1
        )
    # Backward of a block holds the gradients of its activations while its saved tensors are still alive.
    backward = int(BACKWARD_BLOCKS * inside / max(shape.layers, 1))
    logit_bytes = 0
    if cfg.model.task == "causal-lm":
        from tuneforge.models.lm_loss import CHUNK

        mode = logits or logits_mode(cfg, getattr(shape.model, "config", None), processes)
        if mode == "targets":
            # One chunk's logits, their float32 log-softmax and its two gradients exist at once.
            projected = min(target_positions(cfg, manifest, b, peak_rows * peak_tokens), CHUNK)
            logit_bytes = projected * shape.vocab * (width + 3 * 4)
        else:
            full_copies = 3 * width + (LOGITS_FULL_COPIES - 3) * 4
            logit_bytes = peak_rows * peak_tokens * shape.vocab * full_copies
    transient = inside + outside + backward + logit_bytes

    # Sharding (per process).
    n = max(processes, 1)
    stage = _zero_stage(cfg)
    if cfg.train.fsdp or stage == 3:
        weights, trainable, grads, optimizer = weights // n, trainable // n, grads // n, optimizer // n
    elif stage in (1, 2):
        optimizer //= n
        grads = grads // n if stage == 2 else grads
    if cfg.train.fsdp_cpu_offload or (cfg.train.deepspeed or "").endswith("offload"):
        notes.append("optimizer state (and shards) offloaded to CPU memory: not counted on the GPU")
        optimizer = 0

    slack = ALLOCATOR_SLACK[(dev.kind, "full" if full else "adapter")]
    # Gradients replace activations block by block during backward, but the output layer's (made first,
    # kept until the step) is there with all of them: tied to the input embeddings in most small models.
    head_grads = 0
    if full and cfg.model.task == "causal-lm":
        head_grads = min(grads, shape.vocab * shape.hidden * train_width // n)
    peak_transient = max(transient, grads - head_grads) + head_grads
    overhead = int((slack - 1) * peak_transient) + (CPU_FIXED_OVERHEAD if dev.kind == "cpu" else 0)
    breakdown = {
        "weights": int(weights),
        "trainable": int(trainable),
        "optimizer": int(optimizer),
        "gradients": int(grads),
        "activations": int(inside + outside + backward),
        "logits": int(logit_bytes),
        "overhead": overhead,
    }
    peak = weights + trainable + optimizer + peak_transient + overhead
    if grads > transient:
        notes.append("gradients outweigh activations: the peak holds gradients, not both")

    tokens_step = b * typical * accum * n
    step_s = _flops_per_token(shape, cfg, typical) * tokens_step / (dev.flops * UTILISATION[dev.kind] * n)
    if dev.bandwidth and cfg.method.name != "head":
        # The optimizer update, clipping and zeroing stream every trainable parameter's tensors through
        # memory once a step, whatever the batch: on the CPU a full fine-tune of short texts spends a
        # fifth of its step there, which FLOPs alone missed (an SMS-spam run took 1.5x its estimate).
        shard = n if (cfg.train.fsdp or stage == 3) else 1
        step_s += OPTIMIZER_BYTES_PER_PARAM * shape.trainable / shard / dev.bandwidth
    steps = None
    if rows is not None:
        passes = cfg.train.max_steps or None
        per_epoch = max(1, math.ceil(rows / (b * accum * n)))
        steps = per_epoch if passes is None else min(per_epoch, passes)
    return Estimate(
        model=cfg.model.name,
        method=cfg.method.name,
        device=dev,
        total_params=shape.total,
        trainable_params=shape.trainable,
        batch=b,
        length=length,
        breakdown=breakdown,
        peak=int(peak),
        step_s=step_s,
        steps_per_epoch=steps,
        notes=notes,
        packed=packed,
    )


def head_work(cfg: RunConfig, manifest: dict[str, Any] | None) -> tuple[int, int]:
    """(windows, tokens) method head reads: every training text (or method.max_train_examples of them) and
    train.eval_max_examples validation texts once, a long one in windows of model.max_length overlapping by
    method.stride (models/features.py)."""
    stride = int(cfg.method.options().get("stride", 64))
    sample = cfg.method.options().get("max_train_examples")  # a seeded sample of the training texts
    window = cfg.model.max_length
    step = max(1, window - 2 - stride)  # the tokenizer's [CLS]/[SEP] (or BOS) in every window
    lengths = (manifest or {}).get("token_lengths") or {}
    splits = (manifest or {}).get("splits") or {}
    windows = tokens = 0
    for split in ("train", "validation"):
        stats = lengths.get(split) or {}
        rows = int(stats.get("count") or splits.get(split) or 0)
        total = int(stats.get("total") or rows * window)
        cap = cfg.train.eval_max_examples if split == "validation" else sample
        if cap is not None and rows > cap:  # only the first train.eval_max_examples choose the head
            total, rows = total * cap // rows, cap
        longest = int(stats.get("max") or window)
        # Texts within one window cost their length; the tokens beyond it, a window per `step` more.
        beyond = max(0, total - rows * (window - 2)) if longest > window - 2 else 0
        extra = math.ceil(beyond / step) if beyond else 0
        windows += rows + extra
        tokens += min(total, rows * (window - 2)) + 2 * (rows + extra) + extra * stride + beyond
    return windows, tokens


HEAD_UTILISATION = ((32, 0.70), (128, 0.50))
"""(tokens per window, share of the measured matmul speed) of a frozen encoder's forward pass on CPU,
interpolated between the points and held beyond them. Measured with MiniLM-L6 on the 2-core machine
(2026-12-07, 153 GFLOP/s measured in the same process): 3,000 tweets (31 tokens a window) embedded at
109 GFLOP/s, 120 news-length texts in 128-token windows at 81. Training's 0.5 fits long windows (the news
bench ran at 0.95 of its estimate) but put short texts 1.45x over (tweets: 0.0099 s a text estimated,
0.0066 measured), so a time budget sampled texts when all of them fitted."""


def head_utilisation(kind: str, per_window: int) -> float:
    """HEAD_UTILISATION at `per_window` tokens on CPU; the training utilisation elsewhere (not measured)."""
    if kind != "cpu":
        return UTILISATION[kind]
    (short, high), (long, low) = HEAD_UTILISATION
    at = min(max(per_window, short), long)
    return high + (low - high) * (at - short) / (long - short)


def _head_estimate(
    cfg: RunConfig, shape: Any, dev: Device, width: int, manifest: dict[str, Any] | None, notes: list[str]
) -> Estimate:
    """Method head: one forward pass (no gradients) over every text, then seconds of scikit-learn."""
    from tuneforge.models.methods import resolve_method
    from tuneforge.models.shape import saved_activation_bytes

    batch = int(getattr(resolve_method(cfg.method)[1], "batch_size", 32))
    length = cfg.model.max_length
    windows, tokens = head_work(cfg, manifest)
    try:
        inside, outside = saved_activation_bytes(shape, batch, length)
        live = (inside + outside) // max(shape.layers, 1)  # inference keeps one block's tensors at a time
    except Exception:
        live = 4 * 16 * shape.hidden * batch * length
    overhead = CPU_FIXED_OVERHEAD if dev.kind == "cpu" else 0
    # The embeddings themselves (float32, kept for the fit) and the solver's copy of them.
    features = 3 * windows * shape.hidden * 4
    breakdown = {
        "weights": int(shape.total * width),
        "trainable": 0,
        "optimizer": 0,
        "gradients": 0,
        "activations": int(live),
        "logits": 0,
        "overhead": int(overhead + features),
    }
    per_window = min(length, max(1, tokens // max(windows, 1)))
    forward = _flops_per_token(shape, cfg, per_window)
    total_s = forward * tokens / (dev.flops * head_utilisation(dev.kind, per_window))
    steps = max(1, math.ceil(windows / batch)) if windows else None
    notes.append("forward passes only: each text once (cached texts cost nothing), then a scikit-learn fit")
    return Estimate(
        model=cfg.model.name,
        method=cfg.method.name,
        device=dev,
        total_params=shape.total,
        trainable_params=shape.trainable,
        batch=batch,
        length=length,
        breakdown=breakdown,
        peak=int(sum(breakdown.values())),
        step_s=total_s / steps if steps else 0.0,
        steps_per_epoch=steps,
        notes=notes,
    )


def _flops_per_token(shape: Any, cfg: RunConfig, length: int) -> float:
    matmul = shape.total - shape.embedding - (shape.trainable if cfg.method.name != "full" else 0)
    if cfg.model.task != "causal-lm":
        matmul -= shape.vocab * shape.hidden if shape.kind == "decoder" else 0
    attention = 4 * shape.layers * length * shape.heads * shape.head_dim / 2  # causal: half the scores
    forward = 2 * matmul + attention
    if cfg.method.name == "head":  # forward only, through a frozen model
        return forward
    passes = 3.0 if cfg.method.name == "full" else 2.0
    if cfg.train.gradient_checkpointing:
        passes += 1
    adapter = 0.0 if cfg.method.name == "full" else 6.0 * shape.trainable
    return forward * passes + adapter


def _zero_stage(cfg: RunConfig) -> int | None:
    ds = cfg.train.deepspeed
    if ds is None:
        return None
    m = re.match(r"zero(\d)", ds)
    return int(m.group(1)) if m else None


def check_data_path(cfg: RunConfig) -> None:
    """An estimate needs the data it is for: sizes and lengths come from it (`tuneforge estimate`)."""
    from pathlib import Path

    if not cfg.data.path:
        raise TuneforgeError(
            "data.path is not set: the estimate needs the data's size and token lengths",
            where="data.path",
            fix="set data.path to the prepared dataset (or the raw file) the run will train on",
        )
    from tuneforge import builtin

    if not builtin.is_builtin(cfg.data.path) and not Path(cfg.data.path).exists():
        raise TuneforgeError(
            f"{cfg.data.path} does not exist",
            where="data.path",
            fix="point data.path at the prepared dataset (tuneforge prepare) or the raw file",
        )


def model_context(cfg: RunConfig) -> int | None:
    """The longest input the model's positions allow (max_position_embeddings), None if it does not say."""
    from tuneforge.models.shape import load_config

    config, _ = load_config(cfg.model)
    text = getattr(config, "text_config", None) or config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(text, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_max_length(cfg: RunConfig) -> None:
    """Refuse a model.max_length beyond the model's context: such rows cannot run (or run past training)."""
    context = model_context(cfg)
    if context is not None and cfg.model.max_length > context:
        raise TuneforgeError(
            f"model.max_length={cfg.model.max_length} is beyond {cfg.model.name}'s context of "
            f"{context} tokens",
            where="model.max_length",
            fix=f"set model.max_length to at most {context}",
        )


def resolve_device(device: Device | str | None) -> Device:
    if isinstance(device, Device):
        return device
    if device is None:
        return detect_device()
    if device == "cpu":
        return Device("CPU", "cpu", available_cpu_memory(), cpu_flops(), bandwidth=cpu_bandwidth())
    return parse_gpu(device)


def _dataset_manifest(cfg: RunConfig) -> dict[str, Any] | None:
    from tuneforge.data.lengths import lengths_for_model
    from tuneforge.data.prepare import already_prepared

    dataset = already_prepared(cfg.data, cfg.model) if cfg.data.path else None
    if dataset is not None:
        return lengths_for_model(dataset, cfg.model, cfg.data.prompt_template)
    return None


def check_fits(
    cfg: RunConfig,
    manifest: dict[str, Any] | None = None,
    *,
    processes: int = 1,
    where: str = "memory check",
    measure_flops: bool = False,
) -> Estimate | None:
    """Refuse, before the model loads, a run whose estimated peak exceeds this machine's memory.

    Returns the estimate (None when the model cannot be sized offline: loading will say why). The message
    holds the numbers and what to change; `tuneforge train --ignore-memory-check` tries anyway.
    """
    try:
        device = detect_device(measure_flops=measure_flops)
        est = estimate(cfg, device=device, manifest=manifest, processes=processes)
    except TuneforgeError:
        return None
    except Exception as err:  # a model the estimate cannot size must not stop a run that may well fit
        print(f"memory check skipped: {type(err).__name__}: {str(err)[:200]}", file=sys.stderr)
        return None
    dev = est.device
    if dev.kind == "cpu":
        # The processes of one machine share its memory.
        dev = replace(dev, memory=dev.memory // max(processes, 1))
        est.device = dev
    if est.fits:
        return est
    raise TuneforgeError(
        "this run is estimated to need more memory than this machine has:\n  " + "\n  ".join(est.lines()),
        where=where,
        fix="; ".join(suggestions(cfg, est))
        + " (see `tuneforge estimate CONFIG`; `tuneforge train --ignore-memory-check` tries anyway)",
    )


def time_line(est: Estimate, steps: int, *, early_stopping: bool = False) -> str:
    """The wall time this estimate gives a run of `steps` steps, said as the rough figure it is.

    With early stopping on, that is the most it takes: the run may stop sooner, which no estimate knows.
    """
    sooner = "; early stopping may end it sooner" if early_stopping else ""
    return (
        f"estimated time: about {fmt_seconds(est.step_s * steps)} for {steps:,} steps on {est.device.name} "
        f"(rough: FLOPs / measured throughput; re-estimated after the first steps{sooner})"
    )


def suggestions(cfg: RunConfig, est: Estimate) -> list[str]:
    """What would shrink the largest terms of this estimate, biggest first."""
    out = []
    t = cfg.train
    big = est.breakdown["activations"] + est.breakdown["logits"]
    if big > est.breakdown["gradients"] and t.batch_size > 1:
        out.append(
            f"a smaller micro-batch: train.batch_size={max(1, t.batch_size // 2)} "
            f"train.gradient_accumulation_steps={t.gradient_accumulation_steps * 2} (same effective batch)"
        )
    if est.breakdown["activations"] > est.breakdown["weights"] / 4 and not t.gradient_checkpointing:
        out.append("train.gradient_checkpointing=true")
    if est.length > 256:
        out.append(f"a shorter model.max_length (now {cfg.model.max_length}, peak rows {est.length} tokens)")
    if cfg.method.name == "full":
        out.append("method.name=lora (no gradients or optimizer state for the frozen weights)")
    if cfg.method.name in ("lora", "dora") and est.device.kind == "cuda":
        out.append("method.name=qlora (4-bit base weights)")
    if t.optimizer == "adamw" and est.device.kind == "cuda" and est.breakdown["optimizer"] > GIB:
        out.append("train.optimizer=adamw-8bit")
    return out or ["a smaller model"]


def measure(cfg: RunConfig, steps: int = 3, timeout: float = 3600) -> dict[str, Any]:
    """Train `steps` real steps in a subprocess (temporary output dir) and read its peak memory and time.

    On CPU the peak is the growth of resident memory above an idle process that imported the same libraries,
    which is what the estimate predicts; on CUDA `torch.cuda.max_memory_allocated`, from the run manifest.
    """
    import json
    import subprocess
    import tempfile
    from pathlib import Path

    import yaml

    with tempfile.TemporaryDirectory(prefix="tuneforge-measure-") as tmp:
        raw = cfg.to_dict()
        raw["train"] |= {"output_dir": str(Path(tmp) / "run"), "max_steps": steps, "eval_every": 0}
        raw["train"] |= {"save_every": 0, "progress": False, "eval_max_examples": 1, "log_to": []}
        path = Path(tmp) / "measure.yaml"
        path.write_text(yaml.safe_dump(raw), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        command = [sys.executable, "-m", "tuneforge", "train", str(path), "--ignore-memory-check"]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
        if done.returncode:
            raise TuneforgeError(f"the measuring run failed:\n{done.stderr[-2000:]}", where="--measure")
        m = json.loads((Path(tmp) / "run" / "manifest.json").read_text(encoding="utf-8"))
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    base = 0
    import torch

    if not torch.cuda.is_available():
        code = (
            "import torch, transformers, peft, accelerate, tuneforge.train.run;"
            "from tuneforge.models.estimate import resident_peak_bytes; print(resident_peak_bytes())"
        )
        idle = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        base = int(idle.stdout.strip().splitlines()[-1])
    return {
        "peak": int(m["peak_memory_bytes"]) - base,
        "step_s": float(m["train_time_s"]) / max(int(m["step"]), 1),
        "baseline": base,
        "micro_batch_tokens": largest_micro_batch(rows, cfg.train.gradient_accumulation_steps),
    }


def largest_micro_batch(metrics: list[dict[str, Any]], accumulation: int) -> int:
    """Real tokens of the largest micro-batch a run's metrics.jsonl shows (per step: cumulative tokens).

    A few steps rarely meet the epoch's largest micro-batch, and the peak follows the one they met, so
    `measure` is compared with the estimate at this size (the steps' mean micro-batch where they accumulate).
    """
    seen, largest = 0, 0
    for row in metrics:
        if "split" in row or "tokens" not in row:
            continue
        largest, seen = max(largest, int(row["tokens"]) - seen), int(row["tokens"])
    return math.ceil(largest / max(accumulation, 1))


def measured_shape(est: Estimate, tokens: int) -> tuple[int, int] | None:
    """The (rows, tokens per row) micro-batch a measurement ran, where its tokens say it: packed examples
    are one row of exactly those tokens; padded rows hide their padding (None: the estimate's own shape)."""
    return (1, tokens) if est.packed is not None and tokens > 0 else None
