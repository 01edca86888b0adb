"""final/README.md: a Hugging Face model card (YAML metadata, model-index results): final/ uploads as is."""

from __future__ import annotations

from typing import Any

from tuneforge.artifacts import RunDir, write_text_atomic

CARD_METRICS = (
    "accuracy",
    "macro_f1",
    "mse",
    "mae",
    "loss",
    "perplexity",
    "bleu",
    "chrf",
    "rougeL",
    "token_f1",
)


def _task_type(result: dict[str, Any]) -> str:
    return (
        "text-classification"
        if result.get("format") in ("classification", "regression")
        else "text-generation"
    )


def card_data(run: RunDir, results: dict[str, dict[str, Any]]) -> Any:
    from huggingface_hub import EvalResult, ModelCardData

    m = run.manifest
    dataset = str(m.get("dataset", {}).get("path", "dataset")).rstrip("/").split("/")[-1]
    evals = [
        EvalResult(
            task_type=_task_type(r),
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split=split,
            metric_type=name,
            metric_name=name,
            metric_value=float(r["tuned"][name]),
        )
        for split, r in results.items()
        for name in CARD_METRICS
        if isinstance(r["tuned"].get(name), int | float)
    ]
    adapter = m.get("saves_adapter", True)
    return ModelCardData(
        base_model=str(m.get("base_model")),
        library_name="peft" if adapter else "transformers",
        license=m.get("license") or "other",
        datasets=[dataset],
        tags=["tuneforge", str(m.get("method")), str(m.get("task"))],
        pipeline_tag=_task_type(next(iter(results.values()))) if results else None,
        model_name=run.path.name,
        eval_results=evals or None,
    )


def render_card(run: RunDir, results: dict[str, dict[str, Any]]) -> str:
    """The card's text: metadata, how it was made, the results with intervals, how to load it."""
    from huggingface_hub import ModelCard

    from tuneforge.evaluation.render import num, with_ci

    data = card_data(run, results)
    m = run.manifest
    params = m.get("parameters") or {}
    lines = [
        f"# {run.path.name}",
        "",
        f"Fine-tuned from `{m.get('base_model')}` with {m.get('method')} by tuneforge "
        f"({params.get('trainable', 0):,} of {params.get('total', 0):,} parameters trained, "
        f"{m.get('step')} steps)."
        if params
        else f"Fine-tuned from `{m.get('base_model')}` with {m.get('method')} by tuneforge.",
        "",
        "## Evaluation",
        "",
    ]
    for split, r in results.items():
        lines += [f"{split} split, {r['n']} examples (95% bootstrap intervals):", ""]
        lines += ["| metric | base | tuned |", "|---|---|---|"]
        for name in CARD_METRICS:
            if name in r["tuned"]:
                ci = r.get("ci", {})
                key = name
                base = with_ci(r["base"][name], ci.get("base", {}).get(key)) if r.get("base") else ""
                lines.append(
                    f"| {name} | {base} | {with_ci(r['tuned'][name], ci.get('tuned', {}).get(key))} |"
                )
        lines += [""] + [f"- {p['verdict']}" for p in r.get("paired", {}).values()] + [""]
        for bname, b in r.get("baselines", {}).items():
            acc = b["metrics"].get("accuracy", b["metrics"].get("mse"))
            lines.append(f"- baseline {bname}: {num(acc)}")
        lines.append("")
    if not results:
        lines += ["Not evaluated yet.", ""]
    lines += ["See report.html in the run directory for the data, training curves and per-group results.", ""]
    if m.get("saves_adapter", True):
        auto = (
            "AutoPeftModelForCausalLM"
            if m.get("task") == "causal-lm"
            else "AutoPeftModelForSequenceClassification"
        )
        lines += [
            "## Use",
            "",
            "```python",
            f"from peft import {auto}",
            f"model = {auto}.from_pretrained('path/to/final')",
            "```",
            "",
        ]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def write_model_card(run: RunDir, results: dict[str, dict[str, Any]]) -> None:
    write_text_atomic(run.final / "README.md", render_card(run, results))
