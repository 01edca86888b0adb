"""final/README.md: a Hugging Face model card (YAML metadata, model-index results): final/ uploads as is."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tuneforge.artifacts import RunDir, write_text_into
from tuneforge.evaluation.metric_table import METRICS
from tuneforge.evaluation.report.evaluation import few_shot_text, intervals
from tuneforge.evaluation.report.render import with_ci
from tuneforge.evaluation.report.run_sections import cost_line

#: Eval JSON metric → (Hub metric id, display name, args), from the metric table: model-index wants the metric
#: ids of huggingface.co/metrics, so macro-F1 is `f1` with its averaging and ROUGE-L is `rouge`.
CARD_METRICS: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    m.name: (m.hub.id, m.hub.display, m.hub.args) for m in METRICS.values() if m.hub
}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _task_type(fmt: Any) -> str:
    return "text-classification" if fmt in ("classification", "regression") else "text-generation"


def hub_base_model(run: RunDir) -> str | None:
    """The base as the Hub names it (a built-in's hub id, as adapter_config.json records it), or None for a
    local folder: the Hub rejects a `base_model` that is not a model id."""
    name = str(run.manifest.get("base_model") or "")
    adapter = run.final / "adapter_config.json"
    if adapter.is_file():
        name = str(json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path") or name)
    elif name.startswith("builtin:"):
        from tuneforge import builtin

        name = builtin.model_info(name).hub_id
    return name if HUB_ID.fullmatch(name) and not Path(name).expanduser().exists() else None


def card_data(run: RunDir, results: dict[str, dict[str, Any]]) -> Any:
    from huggingface_hub import EvalResult, ModelCardData

    m = run.manifest
    dataset = str(m.get("dataset", {}).get("path", "dataset")).rstrip("/").split("/")[-1]
    evals = [
        EvalResult(
            task_type=_task_type(r.get("format")),
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split=split,
            metric_type=hub_id,
            metric_name=display,
            metric_args=args,
            metric_value=float(r["tuned"][name]),
        )
        for split, r in results.items()
        for name, (hub_id, display, args) in CARD_METRICS.items()
        if isinstance(r["tuned"].get(name), int | float)
    ]
    adapter = m.get("saves_adapter", True)
    # No `license` and no `datasets`: tuneforge knows neither the base's license nor a Hub id for a local
    # dataset, and a guessed value on an upload is worse than the blank the card's text points out.
    return ModelCardData(
        base_model=hub_base_model(run),
        library_name="peft" if adapter else "transformers",
        tags=["tuneforge", str(m.get("method")), str(m.get("task"))],
        pipeline_tag="text-generation" if m.get("task") == "causal-lm" else "text-classification",
        model_name=run.path.name,
        eval_results=evals or None,
    )


def _results_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for split, r in results.items():
        lines += [f"{split} split, {r['n']} examples (95% bootstrap intervals in brackets):", ""]
        lines += ["| metric | base | tuned |", "|---|---|---|"]
        ci_t, ci_b = intervals(r, "tuned"), intervals(r, "base")
        for name in CARD_METRICS:
            if name in r["tuned"]:
                base = with_ci(r["base"].get(name), ci_b.get(name)) if r.get("base") else ""
                lines.append(f"| {name} | {base} | {with_ci(r['tuned'][name], ci_t.get(name))} |")
        lines += [""] + [f"- {p['verdict']}" for p in r.get("paired", {}).values()] + [""]
        for bname, b in r.get("baselines", {}).items():
            key = next((k for k in ("accuracy", "mse", "token_f1") if k in b["metrics"]), "accuracy")
            test = b.get("vs_tuned", {}).get("verdict")
            lines.append(
                f"- baseline {bname}: {key} {with_ci(b['metrics'].get(key), b.get('ci', {}).get(key))}"
                + (f"; {test}" if test else "")
            )
        if few_shot_text(r):
            lines.append(f"- {few_shot_text(r)}")
        lines.append("")
    return lines or ["Not evaluated yet.", ""]


def _training_lines(run: RunDir) -> list[str]:
    """The data and the hyperparameters a reader of the card needs to judge or redo the training."""
    import yaml

    m = run.manifest
    cfg = yaml.safe_load(run.config_path.read_text(encoding="utf-8")) if run.config_path.is_file() else {}
    method, train, model = (
        (cfg or {}).get("method") or {},
        (cfg or {}).get("train") or {},
        (cfg or {}).get("model") or {},
    )
    data, examples = m.get("dataset") or {}, m.get("examples") or {}
    settings = ", ".join(f"{k} {v}" for k, v in method.items() if k != "name")
    counts = ", ".join(f"{n:,} {split}" for split, n in examples.items())
    keys = ("max_steps", "epochs", "batch_size", "gradient_accumulation_steps", "learning_rate", "scheduler")
    hyper = ", ".join(
        f"{k} {train[k]}" for k in (*keys, "warmup_ratio", "weight_decay", "seed") if k in train
    )
    return [
        "## Training",
        "",
        f"- data: a {data.get('format', '?')} dataset (fingerprint {str(data.get('fingerprint', ''))[:16]}), "
        f"examples: {counts or 'not recorded'}",
        f"- method: {m.get('method')}" + (f" ({settings})" if settings else ""),
        f"- model: task {m.get('task')}, max_length {model.get('max_length', '?')}",
        f"- training: {hyper or 'not recorded'}; {m.get('step')} optimizer steps",
        f"- cost: {cost_line(m) or 'not recorded'}",
        "",
    ]


def render_card(run: RunDir, results: dict[str, dict[str, Any]]) -> str:
    """The card's text: metadata, how it was made (data, hyperparameters), results with intervals, use."""
    from huggingface_hub import ModelCard

    data = card_data(run, results)
    m = run.manifest
    params = m.get("parameters") or {}
    made = f"Fine-tuned from `{data.base_model or m.get('base_model')}` with {m.get('method')} by tuneforge"
    if params:
        made += f" ({params.get('trainable', 0):,} of {params.get('total', 0):,} parameters trained"
        made += f", {m.get('step')} steps)"
    lines = [f"# {run.path.name}", "", made + ".", ""]
    if data.base_model is None:
        lines += [
            f"The base `{m.get('base_model')}` is a local folder, so the metadata names no base_model.",
            "",
        ]
    lines += [
        "Before uploading, add `license:` (the base model's and the training data's terms decide it) and, "
        "if the data is on the Hub, `datasets:` to the metadata above.",
        "",
        *_training_lines(run),
        "## Evaluation",
        "",
        *_results_lines(results),
        "See report.html in the run directory for the data, training curves and per-group results.",
        "",
    ]
    if m.get("saves_adapter", True):
        lines += use_lines(run, data.base_model)
    elif m.get("method") == "head":
        lines += head_use_lines(run)
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def use_lines(run: RunDir, hub_id: str | None) -> list[str]:
    """How to load the adapter without the Hub: the base from where it is on this machine (a built-in through
    tuneforge's own resolution), then the adapter on top. AutoPeft alone would fetch the base from the Hub."""
    m = run.manifest
    causal = m.get("task") == "causal-lm"
    auto = "AutoModelForCausalLM" if causal else "AutoModelForSequenceClassification"
    name = str(m.get("base_model") or "")
    labels = list(m.get("labels") or [])
    head = "" if causal else f", num_labels={len(labels) or 2}"
    code = ["from peft import PeftModel", f"from transformers import {auto}", ""]
    if name.startswith("builtin:"):
        code += [
            "from tuneforge.builtin import resolve  # the built-in base ships as a package: no download",
            "",
            f"base = {auto}.from_pretrained(resolve({name!r}){head})",
        ]
    else:
        local = str(m.get("base_model_path") or name)
        code += [f"base = {auto}.from_pretrained({local!r}{head})  # the base this run was trained from"]
    code += ["model = PeftModel.from_pretrained(base, 'path/to/final')"]
    lines = ["## Use", "", "```python", *code, "```", ""]
    if hub_id:
        peft_auto = "AutoPeftModelForCausalLM" if causal else "AutoPeftModelForSequenceClassification"
        lines += [
            f"Online, `{peft_auto}.from_pretrained('path/to/final')` also works: it downloads the base "
            f"`{hub_id}` from the Hub.",
            "",
        ]
    return lines


def head_use_lines(run: RunDir) -> list[str]:
    """How to use a head run: its linear head reads the base model's mean-pooled embeddings."""
    base = str(run.manifest.get("base_model") or "")
    return [
        "## Use",
        "",
        "This run is a linear head (`head.safetensors`: `coef`, `intercept`, `classes`) over the "
        f"mean-pooled last hidden states of the frozen base model `{base}`, which it does not contain. "
        f"Serve it with `tuneforge serve {run.path}` (`/v1/classify`), or export a self-contained folder "
        f"with `tuneforge export-model {run.path} --out DIR`. A text longer than the window is read in "
        "overlapping windows whose token-weighted mean is its embedding; "
        "`logits = embedding @ coef.T + intercept`.",
        "",
    ]


def write_model_card(run: RunDir, results: dict[str, dict[str, Any]]) -> None:
    write_text_into(run.final, "README.md", render_card(run, results))
