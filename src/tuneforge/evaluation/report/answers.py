"""The report's view of a DPO run's answers (evaluation/answers.py): reference vs DPO by the reward margin."""

from __future__ import annotations

from typing import Any

from tuneforge.evaluation.metric_table import METRICS, metric_of
from tuneforge.evaluation.report.render import Block, num, with_ci

# Shown in this order when present: what preference tuning tends to break first, then the generation metrics.
ROWS = (
    "answer_words",
    "repetition_rate",
    "loss",
    "perplexity",
    "token_f1",
    "chrf",
    "bleu",
    "rougeL",
    "length_ratio",
)
#: Scales that read differently here: the loss is on the reference answers of a chat split.
SCALE = {"loss": "cross-entropy on the reference answers, nats per token"}


def answer_lines(answers: dict[str, Any], reward_margin: float | None) -> list[str]:
    """The few lines the terminal prints: where the answers come from and the verdicts that matter."""
    if "skipped" in answers:
        return [f"answers: not evaluated ({answers['skipped']})"]
    ref, dpo = answers["reference"], answers["dpo"]
    lines = [
        f"answers on {answers['n']} prompts of {answers['dataset']} ({answers['split']}), "
        f"reference = {answers['reference_model']}:",
        f"  answer words {num(ref['answer_words'])} -> {num(dpo['answer_words'])}, repetition rate "
        f"{num(ref['repetition_rate'])} -> {num(dpo['repetition_rate'])}"
        + (f", reward margin {num(reward_margin)}" if reward_margin is not None else ""),
    ]
    for metric in ("answer_words", "repetition_rate", "token_f1", "loss_per_example"):
        test = answers.get("paired", {}).get(metric)
        if test:
            lines.append(f"  {test['verdict']}")
    return lines


def answers_blocks(answers: dict[str, Any], reward_margin: float | None) -> list[Block]:
    if "skipped" in answers:
        return [("p", f"Answers on a chat split: not evaluated ({answers['skipped']}).")]
    ci = answers.get("ci", {})
    rows = []
    for key in ROWS:
        if key not in answers["dpo"]:
            continue
        scale = SCALE.get(key, METRICS[key].scale)
        mean_of = metric_of(key)  # the loss row's interval is that of its per-example mean
        rows.append(
            [
                key,
                with_ci(answers["reference"][key], ci.get("reference", {}).get(mean_of)),
                with_ci(answers["dpo"][key], ci.get("dpo", {}).get(mean_of)),
                scale,
            ]
        )
    blocks: list[Block] = [
        (
            "p",
            f"What DPO did to answers: {answers['n']} prompts of the {answers['split']} split of "
            f"{answers['dataset']}, answered by the reference ({answers['reference_model']}) and the DPO "
            "model"
            + (
                f"; reward margin on the preference pairs {num(reward_margin)}"
                if reward_margin is not None
                else ""
            )
            + f". A repeat loop: one piece of text {answers['repetition']['times']} or more times in a row, "
            f"over at least {answers['repetition']['min_chars']} characters. "
            f"Answers: eval/{answers.get('predictions')}.",
        ),
        ("table", (["metric", "reference", "dpo", "scale"], rows)),
    ]
    paired = answers.get("paired", {})
    if paired:
        tests = [
            [m, f"{p['diff']:+.4g} [{p['lo']:+.4g}, {p['hi']:+.4g}]", num(p["p_value"]), p["verdict"]]
            for m, p in paired.items()
        ]
        blocks += [
            ("p", "Paired tests on the same prompts (difference = dpo - reference):"),
            ("table", (["metric", "difference [95% CI]", "p", "result"], tests)),
        ]
    return blocks
