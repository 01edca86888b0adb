"""retrain.json and retrain.md in the challenger's run: both models' numbers, the test, the decision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.artifacts import write_json_atomic, write_text_atomic
from tuneforge.evaluation.stats import sig

#: Metrics shown side by side in retrain.md when the evaluation has them (the deciding one always).
SHOWN = (
    "accuracy",
    "macro_f1",
    "brier",
    "ece",
    "mse",
    "mae",
    "loss",
    "perplexity",
    "token_f1",
    "chrf",
    "bleu",
)


def _num(x: Any) -> str:
    return sig(float(x)) if isinstance(x, int | float) and not isinstance(x, bool) else "n/a"


def render_markdown(report: dict[str, Any]) -> str:
    d, ev = report["decision"], report["evaluation"]
    title = "promoted" if d["promote"] else "not promoted"
    lines = [
        f"# Retrain of {report['registry']}: challenger {title}",
        "",
        f"**Decision:** {d['reason']}.",
        "",
        f"Champion: version {report['champion']['version']} ({report['champion']['run']}).  ",
        f"Challenger: {report['challenger']['run']}"
        + (
            f", registered as version {report['challenger']['version']}."
            if report["challenger"].get("version")
            else "."
        ),
        "",
        f"Both evaluated on the champion's frozen test split: {ev['n']} examples, fingerprint "
        f"`{report['frozen_test']['fingerprint'][:16]}`.",
        "",
        "| metric | champion | challenger | challenger − champion [95% CI] | p |",
        "|---|---|---|---|---|",
    ]
    metrics = [d["metric"], *(m for m in SHOWN if m != d["metric"])]
    for m in metrics:
        if m not in ev["champion"] and m not in ev["challenger"]:
            continue
        t = ev["paired"].get(m)
        diff = f"{_num(t['diff'])} [{_num(t['lo'])}, {_num(t['hi'])}]" if t else ""
        p = f"{t['p_value']:.3g}" if t and t.get("p_value") is not None else ""
        name = f"**{m}**" if m == d["metric"] else m
        lines.append(
            f"| {name} | {_num(ev['champion'].get(m))} | {_num(ev['challenger'].get(m))} | {diff} | {p} |"
        )
    lines += [
        "",
        f"Test: {d['test'].get('test', 'paired-bootstrap')} over {d['test'].get('n')} paired examples "
        f"({ev['bootstrap']['resamples']} resamples, seed {ev['bootstrap']['seed']}): "
        f"{d['test']['verdict']}.",
        f"Rule: promote when the challenger is better in {d['metric']} by at least retrain.min_gain "
        f"({report['rule']['min_gain']:g}) with p < retrain.alpha ({report['rule']['alpha']:g}).",
        "",
        "## Training data",
        "",
        "| source | split | rows read |",
        "|---|---|---|",
    ]
    lines += [f"| {s['name']} | {s['split']} | {s['rows']} |" for s in report["sources"]]
    counts = report["dataset"].get("counts") or {}
    splits = report["dataset"].get("splits") or {}
    shown = ", ".join(f"{n} {name}" for name, n in splits.items())
    lines += [
        "",
        f"Prepared dataset: {report['dataset']['path']} ({shown}). Deduplication removed "
        f"{counts.get('exact_duplicates', 0)} exact and {counts.get('near_duplicates', 0)} near duplicates "
        "(a duplicate of a test row keeps its test copy); the leakage check dropped "
        f"{counts.get('leakage_dropped', 0)} more training rows too close to a test or validation row.",
        "",
    ]
    return "\n".join(lines)


def write_report(run_dir: Path, report: dict[str, Any]) -> None:
    write_json_atomic(run_dir / "retrain.json", report)
    write_text_atomic(run_dir / "retrain.md", render_markdown(report))
