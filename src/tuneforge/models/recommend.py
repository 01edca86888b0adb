"""Which model, which method, which settings: ranked, estimated run configs from a dataset and a device.

The rules are plain functions of the dataset manifest (format, size, token lengths, labels) and the
device; each recommendation carries the reasons it was made, and the README's "Choosing a model" section lists
the rules with their sources. `defaults_for` applies the same rules to the keys a user left unset.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.artifacts import MANIFEST, atomic_dir, check_replaceable, read_json, sha256_file
from tuneforge.config import RunConfig, config_from_dict
from tuneforge.errors import TuneforgeError
from tuneforge.models.catalog import CatalogModel, catalog, find
from tuneforge.models.estimate import GIB, Device, Estimate, estimate

SMALL_DATA = 10_000  # below this many examples: adapters, not full fine-tuning (LoRA, QLoRA papers)
LARGE_DATA = 100_000  # from here full fine-tuning can pay off (Biderman et al. 2024), memory permitting
MEMORY_MARGIN = 0.85  # plan for 85% of the device: fragmentation, evaluation, longer-than-seen rows
EFFECTIVE_BATCH = 16
CPU_DECODER = "builtin:smollm2-135m-instruct"
CPU_ENCODER = "builtin:minilm-l6"
HEAD_WINDOW = 512  # method head reads longer texts in several windows of this many tokens, not one long one


@dataclass
class Recommendation:
    model: str
    method: str
    config: dict[str, Any]
    estimate: Estimate
    reasons: list[str] = field(default_factory=list)

    @property
    def hours(self) -> float | None:
        epoch = self.estimate.epoch_s
        # Method head reads the data once: no epochs.
        return None if epoch is None else epoch * float(self.config["train"].get("epochs", 1)) / 3600

    def settings(self) -> str:
        """The chosen settings in a few words, for `recommend`'s table."""
        t, m = self.config["train"], self.config["method"]
        length = self.config["model"].get("max_length")
        if m["name"] == "head":  # no optimizer: texts embedded once in batches, a linear head fitted after
            from tuneforge.models.methods import resolve_method

            _, options = resolve_method(config_from_dict(self.config).method)
            batch = getattr(options, "batch_size", None)
            return f"frozen encoder, linear head; embed batch {batch}" + (
                f", window {length}" if length else ""
            )
        accumulation = t.get("gradient_accumulation_steps", 1)
        out = f"lr {t['learning_rate']:g}, batch {t['batch_size']}x{accumulation}, {t['epochs']} epochs"
        out += f", max_length {length}" if length else ""
        return out + (f", r {m['r']}" if "r" in m else "")


def epochs_for(rows: int, task: str) -> int:
    """Small sets need more passes (Mosbach et al. 2021); large ones one or two (QLoRA: 1 epoch on OASST1)."""
    if task != "causal-lm":
        return 10 if rows < 1_000 else 5 if rows < SMALL_DATA else 3
    return 3 if rows < SMALL_DATA else 2 if rows < LARGE_DATA else 1


def max_length_for(manifest: dict[str, Any], task: str, context: int) -> int:
    """The 99th percentile of the training lengths plus the template, rounded up to 64, within the context."""
    stats = (manifest.get("token_lengths") or {}).get("train") or {}
    p99 = int(stats.get("p99", stats.get("max", 448)))
    extra = 32 if task == "causal-lm" else 2
    return int(min(context, 4096, max(64, math.ceil((p99 + extra) / 64) * 64)))


SMALL_ENCODER = 100e6  # below this, compact encoders (MiniLM, BERT-small) fine-tune best at a higher rate


def learning_rate(method: str, task: str, params: int) -> float:
    """Full head fine-tuning 5e-5 (BERT), 1e-4 below 100M parameters (Turc et al. 2019); adapters 2e-4, 1e-4
    beyond 20B (QLoRA); adapters with a head 5e-4."""
    if method == "full":
        if task != "causal-lm":
            return 1e-4 if params < SMALL_ENCODER else 5e-5
        return 1e-5
    if task != "causal-lm":
        return 5e-4
    return 1e-4 if params > 20e9 else 2e-4


def head_method(rows: int, *, cuda: bool, manifest: dict[str, Any] | None = None) -> str:
    """An encoder with a head: on a GPU full fine-tuning; on a CPU `head` (frozen encoder, linear head: one
    forward pass over the data) from 10,000 examples or for documents (`long_documents`), where full
    fine-tuning takes hours and pooled embeddings are strong (topics), else full fine-tuning."""
    if cuda:
        return "full"
    if rows >= SMALL_DATA or long_documents(manifest or {}):
        return "head"
    return "full"


HEAD_LONG_TEXT = 256
"""Tokens at the training split's 90th percentile from which texts count as documents, not sentences."""


def long_documents(manifest: dict[str, Any]) -> bool:
    stats = (manifest.get("token_lengths") or {}).get("train") or {}
    return int(stats.get("p90", 0) or 0) > HEAD_LONG_TEXT


def head_reason(rows: int, manifest: dict[str, Any]) -> str:
    """Why the CPU defaults chose method head, for the defaults line and `recommend`."""
    if long_documents(manifest):
        p90 = int(manifest["token_lengths"]["train"]["p90"])
        why = f"documents ({p90:,} tokens at the 90th percentile)"
    else:
        why = f"{rows:,} examples"
    return (
        f"{why} on a CPU: method head (the encoder frozen, each text embedded once, long ones in windows, "
        "then a linear head fitted in seconds), strong on topic-like labels; set method.name=full or lora "
        "to fine-tune the encoder (hours here)"
    )


LORA_LIKE = ("lora", "qlora", "dora")  # the methods with a rank r and a scale alpha


def recipe(
    *,
    task: str,
    method: str,
    rows: int,
    params: int,
    manifest: dict[str, Any],
    context: int,
    steps_per_epoch: int,
) -> dict[str, Any]:
    """The settings the rules choose for one task, method and dataset, as dotted config keys.

    `recommend` writes them into its configs and `defaults_for` fills a user's unset keys with them, so the
    two never disagree.
    """
    if method == "head":  # no steps, no learning rate: only how long a window is (long texts are chunked)
        if not manifest.get("token_lengths"):
            return {}
        return {"model.max_length": min(HEAD_WINDOW, max_length_for(manifest, task, context))}
    chosen: dict[str, Any] = {
        "train.epochs": epochs_for(rows, task),
        "train.learning_rate": learning_rate(method, task, params),
    }
    if method in LORA_LIKE:
        r = 16 if task == "causal-lm" else 8
        chosen |= {"method.r": r, "method.alpha": 2 * r}
    if task != "causal-lm":
        chosen |= {"train.warmup_ratio": 0.06, "train.weight_decay": 0.01}
        if (manifest.get("splits") or {}).get("validation"):
            # Validate once an epoch: early stopping's patience of 3 is then 3 epochs at any size, enough for
            # a head that starts at the majority class to leave it (Mosbach et al. 2021: train long enough).
            chosen |= {"train.eval_every": max(10, steps_per_epoch)}
            chosen |= {"train.early_stopping_patience": 3}
            if task == "classification":
                chosen |= {"train.metric_for_best": "accuracy"}
    if manifest.get("token_lengths") and manifest.get("format") != "text":  # packed text fills max_length
        chosen["model.max_length"] = max_length_for(manifest, task, context)
    return chosen


def _nest(dotted: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in dotted.items():
        section, name = key.split(".", 1)
        tree.setdefault(section, {})[name] = value
    return tree


def build_config(
    dataset: str, model: str, method: str, task: str, manifest: dict[str, Any], context: int, params: int
) -> dict[str, Any]:
    """A complete run config for one recommendation (what the user can `tuneforge train`)."""
    rows = int((manifest.get("splits") or {}).get("train") or 0)
    chosen = _nest(
        recipe(
            task=task,
            method=method,
            rows=rows,
            params=params,
            manifest=manifest,
            context=context,
            steps_per_epoch=math.ceil(rows / EFFECTIVE_BATCH),
        )
    )
    train = {
        "output_dir": f"runs/{model.split('/')[-1].removeprefix('builtin:')}-{method}",
        "batch_size": 8,
    }
    return {
        "data": {"path": dataset},
        "model": {"name": model, "task": task, **chosen.get("model", {})},
        "method": {"name": method, **chosen.get("method", {})},
        "train": {**train, **chosen.get("train", {})},
    }


def fit_batch(cfg: RunConfig, device: Device, manifest: dict[str, Any]) -> Estimate | None:
    """The largest micro-batch (a power of two up to 8; accumulation keeps the effective batch) that fits.

    The transient terms grow linearly with the micro-batch, so two estimates (1 and 8 rows) locate it;
    a third confirms it. Gradient checkpointing is switched on when even one row does not fit.
    """
    budget = int(device.memory * MEMORY_MARGIN)

    def at(batch: int) -> Estimate:
        cfg.train.batch_size = batch
        cfg.train.gradient_accumulation_steps = max(1, EFFECTIVE_BATCH // batch)
        return estimate(cfg, device=device, manifest=manifest)

    one = at(1)
    if one.peak > budget:
        cfg.train.gradient_checkpointing = True
        one = at(1)
        if one.peak > budget:
            return None
    per_row = (at(8).peak - one.peak) / 7
    batch = 8
    while batch > 1 and one.peak + (batch - 1) * per_row > budget:
        batch //= 2
    return one if batch == 1 else at(batch)


def _candidates(task: str, device: Device, commercial: bool) -> list[CatalogModel]:
    kind = "decoder" if task == "causal-lm" else "encoder"
    pool = [m for m in catalog() if m.kind == kind and (m.commercial or not commercial)]
    if device.kind == "cpu":  # beyond a few hundred million parameters a CPU step takes minutes
        pool = [m for m in pool if m.params <= 4e8]
    return sorted(pool, key=lambda m: -m.params)


def _model_id(m: CatalogModel) -> str:
    return m.builtin or m.hub_id


def recommend(
    dataset: str,
    manifest: dict[str, Any],
    device: Device,
    *,
    budget_hours: float | None = None,
    commercial: bool = False,
    limit: int = 3,
) -> list[Recommendation]:
    """A ranked short list for this dataset on this device (best first), each estimated and explained."""
    fmt = manifest.get("format")
    rows = int((manifest.get("splits") or {}).get("train") or 0)
    labels = manifest.get("labels") or []
    task = {"classification": "classification", "regression": "regression"}.get(str(fmt), "causal-lm")
    out: list[Recommendation] = []
    if task != "causal-lm":
        out += _heads(dataset, manifest, device, task, rows, labels, commercial, budget_hours)
    heads = len(out)
    out += _decoders(dataset, manifest, device, task, rows, commercial, budget_hours, limit)
    if 0 < heads < len(out):
        ratio = out[heads].estimate.step_s / out[0].estimate.step_s
        out[0].reasons.append(f"{ratio:.0f}x less compute per step than {out[heads].model} with a head")
    return out[:limit]


KIND = "tuneforge.recommended"


def config_name(rank: int, rec: Recommendation) -> str:
    return f"{rank}-{rec.model.split('/')[-1].removeprefix('builtin:')}-{rec.method}.yaml"


def write_configs(out: Path, recs: list[Recommendation]) -> list[Path]:
    """Each recommendation as a run config in `out`, a folder of its own, published at once.

    `prepare`'s folder rule: `out` is absent, empty, or a folder an earlier `recommend` wrote holding nothing
    else (never the current folder or one above it); a config edited since it was written is left alone.
    """
    import yaml

    out = Path(out)
    check_out(out)
    names = [config_name(i, r) for i, r in enumerate(recs, 1)]
    with atomic_dir(out, kind=KIND) as tmp:
        for name, r in zip(names, recs, strict=True):
            (tmp / name).write_text(yaml.safe_dump(r.config, sort_keys=False), encoding="utf-8")
        digests = {name: sha256_file(tmp / name) for name in names}
        (tmp / MANIFEST).write_text(json.dumps({"kind": KIND, "sha256": digests}, indent=2) + "\n")
        _check_unedited(out)  # again just before the rename: an edit made while we estimated counts too
    return [out / name for name in names]


def check_out(out: Path) -> None:
    """Refuse an --out folder `write_configs` would not replace, before any estimate is made."""
    check_replaceable(out, KIND)
    _check_unedited(out)


def _check_unedited(out: Path) -> None:
    """Refuse to replace a config of an earlier `recommend` that someone has edited since."""
    manifest = out / MANIFEST
    if not manifest.is_file() or out.is_symlink():
        return  # nothing of ours to compare; atomic_dir refuses folders tuneforge did not make
    data = read_json(manifest)
    written = data.get("sha256") if isinstance(data, dict) and data.get("kind") == KIND else None
    edited = sorted(
        name
        for name, digest in (written if isinstance(written, dict) else {}).items()
        if (out / str(name)).is_file() and sha256_file(out / str(name)) != digest
    )
    if edited:
        raise TuneforgeError(
            f"{out} holds configs edited since `recommend` wrote them ({', '.join(edited)}); "
            "they are left as they are",
            where="--out",
            fix="choose another --out folder, or move the edited configs elsewhere first",
        )


def _within_budget(rec: Recommendation, budget_hours: float | None) -> bool:
    if budget_hours is None or rec.hours is None or rec.hours <= budget_hours:
        return True
    # Fewer epochs first: the budget decides how many passes the data gets.
    epochs = math.floor(budget_hours / rec.hours * float(rec.config["train"]["epochs"]))
    if epochs < 1:
        return False
    rec.config["train"]["epochs"] = epochs
    rec.reasons.append(f"{epochs} epoch(s) to stay within the {budget_hours:g} h budget")
    return True


def sized_for(dataset: str, model: str, task: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """`manifest` with the token lengths `model` sees (data.lengths.lengths_for_model), when `dataset` is a
    prepared folder: a dataset prepared for the chat-rendering SmolLM2 sized MiniLM's bare tweets 2.5x over
    (an 8-minute head, a 128-token window). A model whose tokenizer is not on this machine keeps them."""
    from tuneforge.artifacts import DatasetDir
    from tuneforge.config import DataConfig, ModelConfig
    from tuneforge.data.lengths import lengths_for_model

    if not DatasetDir.is_dataset(Path(dataset)):
        return manifest
    return lengths_for_model(
        DatasetDir(Path(dataset)), ModelConfig(name=model, task=task), DataConfig().prompt_template
    )


def _try(
    dataset: str, m: CatalogModel, method: str, task: str, manifest: dict[str, Any], device: Device
) -> Recommendation | None:
    per_weight = {"full": 16, "qlora": 0.6}.get(method, 2)  # a lower bound, before the (slower) estimate
    if m.params * per_weight > device.memory:
        return None
    manifest = sized_for(dataset, _model_id(m), task, manifest)
    raw = build_config(dataset, _model_id(m), method, task, manifest, m.context, m.params)
    cfg = config_from_dict(raw)
    est = fit_batch(cfg, device, manifest)
    if est is None:
        return None
    raw["train"] |= {"batch_size": cfg.train.batch_size}
    raw["train"] |= {"gradient_accumulation_steps": cfg.train.gradient_accumulation_steps}
    if cfg.train.gradient_checkpointing:
        raw["train"]["gradient_checkpointing"] = True
    return Recommendation(_model_id(m), method, raw, est)


def _heads(
    dataset: str,
    manifest: dict[str, Any],
    device: Device,
    task: str,
    rows: int,
    labels: list[str],
    commercial: bool,
    budget: float | None,
) -> list[Recommendation]:
    """Encoders with a head: the first choice for classification and regression."""
    names = ["minilm-l6"] if device.kind == "cpu" else ["deberta-v3-base", "modernbert-base", "minilm-l12"]
    out = []
    for name in names:
        m = find(name)
        if m is None or (commercial and not m.commercial):
            continue
        sized = sized_for(dataset, _model_id(m), task, manifest)
        method = head_method(rows, cuda=device.kind == "cuda", manifest=sized)
        rec = _try(dataset, m, method, task, manifest, device)
        if rec is None or not _within_budget(rec, budget):
            continue
        what = f"classification with {len(labels)} labels" if task == "classification" else "regression"
        rec.reasons.append(
            f"{what}: an encoder with a head ({m.params / 1e6:.0f}M parameters) is the cheap, "
            "accurate choice; fine-tuned encoders match or beat LLMs on such tasks"
        )
        rec.reasons.append(
            f"{rows:,} examples: full fine-tuning of a small encoder at lr "
            f"{rec.config['train']['learning_rate']:g} with early stopping"
            if method == "full"
            else head_reason(rows, sized)
        )
        out.append(rec)
    return out


def _decoders(
    dataset: str,
    manifest: dict[str, Any],
    device: Device,
    task: str,
    rows: int,
    commercial: bool,
    budget: float | None,
    limit: int,
) -> list[Recommendation]:
    """The largest decoders that fit (LoRA, else QLoRA on a GPU), then full fine-tuning for large sets."""
    out: list[Recommendation] = []
    pool = _candidates("causal-lm", device, commercial)
    if device.kind == "cpu":
        # The built-in first (offline, small), then the other small ones this machine can train: one
        # candidate alone leaves a user with a roomy CPU machine nothing to weigh.
        pool = sorted(pool, key=lambda m: not m.builtin)
    for m in pool:
        methods = ["lora"] + (["qlora"] if device.kind == "cuda" else [])
        for method in methods:
            rec = _try(dataset, m, method, task, manifest, device)
            if rec is None or not _within_budget(rec, budget):
                continue
            size = f"{rows:,} examples"
            rec.reasons.append(
                f"{size}: LoRA, not full fine-tuning (matches full fine-tuning with far fewer trainable "
                "parameters and does not overfit a small set)"
                if rows < LARGE_DATA
                else f"{size}: adapters train fast; full fine-tuning may gain a little at this size"
            )
            if method == "qlora":
                rec.reasons.append(
                    f"{device.memory / GIB:.0f} GiB {device.name}: QLoRA (4-bit base) is what makes "
                    f"{m.params / 1e9:.1f}B fit"
                )
            elif device.kind == "cpu" and m.builtin:
                rec.reasons.append("built in: trains offline, and small enough for a CPU")
            else:
                rec.reasons.append(f"the largest catalog model whose LoRA run fits {device.name}")
            if not m.builtin:
                rec.reasons.append(
                    f"not built in: {m.hub_id} downloads from the Hugging Face Hub on first use"
                )
            if task != "causal-lm":
                rec.reasons.append(
                    "a decoder with a head: more knowledge, many times the compute of an encoder"
                )
            out.append(rec)
            break
        if len(out) >= (1 if task != "causal-lm" else limit - 1):
            break
    if task == "causal-lm" and rows >= LARGE_DATA and out:
        small = find("qwen2.5-0.5b") if device.kind == "cuda" else find("smollm2-135m")
        if small is not None:
            rec = _try(dataset, small, "full", task, manifest, device)
            if rec is not None and _within_budget(rec, budget):
                rec.reasons.append(f"{rows:,} examples: enough data for full fine-tuning of a small model")
                out.append(rec)
    return out


def model_kind(cfg: RunConfig) -> str:
    """encoder or decoder: the catalog's word for it, else its config.json's (no weights are read)."""
    if cfg.model.task == "causal-lm":
        return "decoder"
    entry = find(cfg.model.name)
    if entry is not None:
        return entry.kind
    from tuneforge.errors import TuneforgeError
    from tuneforge.models.shape import is_encoder, load_config

    try:
        config, _ = load_config(cfg.model)
    except TuneforgeError:
        return "encoder"  # not sizeable offline: the loader will say so; heads are mostly encoders
    return "encoder" if is_encoder(getattr(config, "text_config", None) or config) else "decoder"


def defaults_for(
    cfg: RunConfig, manifest: dict[str, Any], given: set[str], *, cuda: bool = False, processes: int = 1
) -> dict[str, Any]:
    """Settings the rules above choose for this task, model and dataset, for the dotted keys not in `given`.

    `given` holds the keys the user set (a ConfigSource's `given`). Applied before training (and printed),
    they give a user who wrote only data, model.name and model.task the recipe `recommend` would write: an
    encoder with a head is fully fine-tuned (MiniLM at lr 1e-4, head included) for 10 epochs below 1,000
    examples, validated once an epoch, stopped early on validation accuracy and ended on its best checkpoint.
    """
    task = cfg.model.task
    rows = int((manifest.get("splits") or {}).get("train") or 0)
    entry = find(cfg.model.name)
    method = cfg.method.name
    chosen: dict[str, Any] = {}
    method_given = any(k == "method" or k.startswith("method.") for k in given)
    if task != "causal-lm" and not method_given and model_kind(cfg) == "encoder":
        method = head_method(rows, cuda=cuda, manifest=manifest)
        chosen["method.name"] = method
    per_step = cfg.train.batch_size * cfg.train.gradient_accumulation_steps * processes
    params, context = (entry.params, entry.context) if entry is not None else _size_from_config(cfg)
    chosen |= recipe(
        task=task,
        method=method,
        rows=rows,
        params=params,
        manifest=manifest,
        context=context,
        steps_per_epoch=math.ceil(rows / per_step),
    )
    if any(k.startswith("method.") and k != "method.name" for k in given):
        chosen = {k: v for k, v in chosen.items() if not k.startswith("method.")}  # the user's own options
    if "train.max_steps" in given:  # epochs would not count
        chosen.pop("train.epochs", None)
    chosen = {k: v for k, v in chosen.items() if k not in given}
    return {k: v for k, v in chosen.items() if _differs(cfg, method, k, v)}


def _size_from_config(cfg: RunConfig) -> tuple[int, int]:
    """Parameters and context of a model outside the catalog, from its config.json on the meta device (no
    weights read); a model that cannot be sized offline counts as large (the cautious learning rate)."""
    from tuneforge.config import MethodConfig
    from tuneforge.errors import TuneforgeError
    from tuneforge.models.shape import build_meta, load_config

    try:
        config, _ = load_config(cfg.model)
        shape = build_meta(cfg.model, MethodConfig(name="full"))
    except (TuneforgeError, OSError, ValueError, TypeError, RuntimeError):
        return int(1e9), 4096
    config = getattr(config, "text_config", None) or config
    return shape.total, int(getattr(config, "max_position_embeddings", None) or 4096)


def _differs(cfg: RunConfig, method: str, key: str, value: Any) -> bool:
    """Whether `key=value` changes the config (a default equal to the field's own is not worth printing)."""
    from tuneforge.config import MethodConfig
    from tuneforge.models.methods import resolve_method

    section, name = key.split(".", 1)
    if section == "method" and name != "name":  # the option's default in the method's own Options
        _, options = resolve_method(MethodConfig(name=method, **cfg.method.options()))
        return bool(getattr(options, name, None) != value)
    return bool(getattr(getattr(cfg, section), name) != value)


def apply_settings(cfg: RunConfig, settings: dict[str, Any], source: Any = None) -> RunConfig:
    """`cfg` with dotted `settings` set, validated again (method options by the method, later, as always)."""
    raw = cfg.to_dict()
    for key, value in settings.items():
        section, name = key.split(".", 1)
        raw.setdefault(section, {})[name] = value
    return config_from_dict(raw, source)


def describe_defaults(cfg: RunConfig, manifest: dict[str, Any], chosen: dict[str, Any]) -> str:
    """The lines printed at the start of a run: which defaults were chosen, for what, and how to override."""
    rows = int((manifest.get("splits") or {}).get("train") or 0)
    kind = model_kind(cfg)
    what = "causal LM" if cfg.model.task == "causal-lm" else f"{kind} {cfg.model.task}"
    settings = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in chosen.items())
    line = f"defaults for {what}, {rows:,} examples: {settings} (set any of these keys to override)"
    if chosen.get("method.name") == "head":
        line += f"\n  why method head: {head_reason(rows, manifest)}"
    return line
