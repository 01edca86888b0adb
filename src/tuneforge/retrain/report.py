"""retrain.json and retrain.md in the challenger's run: both models' numbers on the frozen test split and on
the live held-out data, the tests, the decision."""

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


def _table(ev: dict[str, Any], metric: str) -> list[str]:
    lines = [
        "| metric | champion | challenger | challenger − champion [95% CI] | p |",
        "|---|---|---|---|---|",
    ]
    for m in [metric, *(m for m in SHOWN if m != metric)]:
        if m not in ev["champion"] and m not in ev["challenger"]:
            continue
        t = ev["paired"].get(m)
        diff = f"{_num(t['diff'])} [{_num(t['lo'])}, {_num(t['hi'])}]" if t else ""
        p = f"{t['p_value']:.3g}" if t and t.get("p_value") is not None else ""
        name = f"**{m}**" if m == metric else m
        lines.append(
            f"| {name} | {_num(ev['champion'].get(m))} | {_num(ev['challenger'].get(m))} | {diff} | {p} |"
        )
    return lines


def _live_lines(report: dict[str, Any], live: dict[str, Any] | None, d: dict[str, Any]) -> list[str]:
    """The live held-out comparison: the same table, or why there is none."""
    head = ["## Live held-out data", ""]
    if live is None:
        return [*head, "No live corrections (a `tuneforge feedback export`) among retrain.data.", ""]
    share = f"{report['live']['holdout']:.0%}"
    where = ", ".join(report["live"]["sources"])
    intro = (
        f"{share} of the corrections in {where}, held out (seeded, stratified by label) and kept in the "
        f"test split: {live['n']} examples after deduplication and the leakage check."
    )
    if not live.get("judged"):
        return [
            *head,
            intro,
            "",
            f"Live comparison: {live['reason']}; the frozen test split alone decides.",
            "",
        ]
    verdict = (d.get("live") or {}).get("verdict", "")
    return [*head, intro, "", *_table(live, d["metric"]), "", f"Live test: {verdict}.", ""]


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
        *_table(ev, d["metric"]),
        "",
        f"Test: {d['test'].get('test', 'paired-bootstrap')} over {d['test'].get('n')} paired examples "
        f"({ev['bootstrap']['resamples']} resamples, seed {ev['bootstrap']['seed']}): "
        f"{d['test']['verdict']}.",
        "",
        *_live_lines(report, ev.get("live"), d),
        f"Rule: promote when the challenger is better on the frozen test split in {d['metric']} by at least "
        f"retrain.min_gain ({report['rule']['min_gain']:g}) with p < retrain.alpha "
        f"({report['rule']['alpha']:g}), and not significantly worse (p < retrain.alpha) on the live "
        f"held-out data when there are at least retrain.live_min_n ({report['live']['min_n']}) examples "
        "of it.",
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
