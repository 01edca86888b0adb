"""The report's evaluation of one split: base vs tuned with intervals, tests, baselines and examples."""

from __future__ import annotations

from typing import Any

from tuneforge.artifacts import RunDir, read_jsonl
from tuneforge.evaluation.evals import describe, predictions_path
from tuneforge.evaluation.metric_table import METRICS
from tuneforge.evaluation.metrics import perplexity
from tuneforge.evaluation.report.groups import group_blocks, threshold_blocks
from tuneforge.evaluation.report.ratings import judge_blocks
from tuneforge.evaluation.report.render import Block, num, plot_png, visible, with_ci
from tuneforge.evaluation.stats import sig

#: Metrics shown in the comparison table, in this order, when present: which way is better, and the scale, so
#: no number stands without its unit.
SHOWN: dict[str, tuple[str, str]] = {m.name: (m.better, m.scale) for m in METRICS.values() if m.in_table}
# The per-example score that ranks the examples where base and tuned differ, in order of preference.
RANKING = ("correct", "token_f1", "chrf", "abs_error", "loss")


def intervals(r: dict[str, Any], side: str) -> dict[str, Any]:
    """A side's intervals by metric name; perplexity's is exp of the per-token loss's (exp is monotone)."""
    ci = dict(r.get("ci", {}).get(side, {}))
    loss = ci.get("loss")
    if loss and loss.get("lo") is not None and "perplexity" not in ci:
        ci["perplexity"] = {k: perplexity(loss[k]) for k in ("lo", "hi")}
    return ci


def comparison_table(r: dict[str, Any]) -> Block:
    tuned, base = r["tuned"], r.get("base")
    baselines = r.get("baselines", {})
    header = ["metric", *(["base"] if base else []), "tuned", *baselines, "better", "scale"]
    ci_t, ci_b = intervals(r, "tuned"), intervals(r, "base")
    rows = []
    for key, (better, scale) in SHOWN.items():
        if key not in tuned:
            continue
        row = [key]
        if base:
            row.append(with_ci(base.get(key), ci_b.get(key)))
        row.append(with_ci(tuned.get(key), ci_t.get(key)))
        row += [with_ci(b["metrics"].get(key, ""), b.get("ci", {}).get(key)) for b in baselines.values()]
        rows.append([*row, better, scale])
    # Cards: on a phone each metric becomes a card, so no column (the verdict's "better") hides off-screen.
    return ("cards", (header, rows))


def confusion(label: str, m: dict[str, Any]) -> Block:
    """Gold by predicted counts; answers that named no label get their own column instead of vanishing."""
    cm = m["confusion_matrix"]
    support = {k: v.get("support") for k, v in (m.get("per_class") or {}).items()}
    missing = [
        (support.get(g) or sum(row)) - sum(row)
        for g, row in zip(cm["labels"], cm["rows_gold_cols_pred"], strict=True)
    ]
    extra = ["no label"] if any(missing) else []
    rows = [
        [f"gold {g}", *row, *([n] if extra else [])]
        for g, row, n in zip(cm["labels"], cm["rows_gold_cols_pred"], missing, strict=True)
    ]
    return ("table", ([f"{label}: gold \\ predicted", *cm["labels"], *extra], rows))


def reliability_blocks(r: dict[str, Any]) -> list[Block]:
    """Calibration: per confidence bin, how often the predicted label was right (the diagonal is perfect)."""
    sides = [
        (side, r[side]["reliability"]) for side in ("base", "tuned") if (r.get(side) or {}).get("reliability")
    ]

    def draw(ax: Any) -> None:
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
        for side, bins in sides:
            full = [b for b in bins if b["n"]]
            ax.plot([b["confidence"] for b in full], [b["accuracy"] for b in full], marker="o", label=side)
        ax.set_xlim(0, 1.03)  # room for a point at confidence 1
        ax.set_ylim(0, 1.03)
        ax.set_xlabel("confidence (probability of the predicted label)")
        ax.set_ylabel("share right")
        ax.grid(alpha=0.3)
        ax.legend()

    rows = [
        [side, f"({b['lo']:.1f}, {b['hi']:.1f}]", b["n"], num(b["confidence"]), num(b["accuracy"])]
        for side, bins in sides
        for b in bins
        if b["n"]
    ]
    return [
        ("p", "Calibration: how often the predicted label was right, per confidence bin."),
        ("img", ("reliability diagram", plot_png(draw, size=(5, 4)))),
        ("table", (["model", "confidence bin", "n", "mean confidence", "share right"], rows)),
    ]


def ranking_key(row: dict[str, Any]) -> str | None:
    t, b = row["scores"].get("tuned", {}), row["scores"].get("base", {})
    for key in RANKING:
        if isinstance(t.get(key), float) and isinstance(b.get(key), float):
            return key
    return None


def name_of(r: dict[str, Any]) -> str:
    """The evaluation's name (its files' stem); an eval JSON from before names existed is its split's."""
    return str(r.get("evaluation") or r["split"])


def most_different(run: RunDir, name: str, k: int = 10) -> list[dict[str, Any]]:
    """The k predictions rows where base and tuned differ most (by the main per-example score)."""
    path = predictions_path(run, name)
    if not path.is_file():
        return []
    rows = [r for r in read_jsonl(path) if "base" in r.get("scores", {})]

    def gap(row: dict[str, Any]) -> float:
        key = ranking_key(row)
        if key is None:
            return 0.0
        t, b = row["scores"]["tuned"][key], row["scores"]["base"][key]
        return abs(t - b) + (0.5 if row.get("tuned") != row.get("base") else 0.0)

    ranked = sorted(rows, key=lambda r: -gap(r))
    return [r for r in ranked if gap(r) > 0][:k]


def _clip(s: Any, n: int = 300) -> str:
    """A cell of the examples table: one line, at most n characters; a predicted value at 4 digits."""
    if isinstance(s, float):
        return num(s)
    s = " ".join(visible(s if s is not None else "").split())
    return s if len(s) <= n else s[: n - 1] + "…"


def example_cards(run: RunDir, r: dict[str, Any], k: int = 10) -> list[Block]:
    """Base and tuned answers side by side: the k examples where they differ most, else the first k."""
    diff = most_different(run, name_of(r), k)
    if diff:
        key = ranking_key(diff[0]) or ""
        rows = [
            [
                d["id"],
                _clip(d.get("input")),
                _clip(d.get("reference"), 120),
                _clip(d.get("base")),
                _clip(d.get("tuned")),
                f"{num(d['scores']['base'].get(key))} → {num(d['scores']['tuned'].get(key))}",
            ]
            for d in diff
        ]
        return [
            ("p", f"The {len(diff)} examples of {name_of(r)} where base and tuned differ most (by {key}):"),
            ("cards", (["row", "input", "reference", "base", "tuned", f"{key} base → tuned"], rows)),
        ]
    path = predictions_path(run, name_of(r))
    first = read_jsonl(path)[:k] if path.is_file() else []
    if not first or not isinstance(first[0].get("tuned"), str):
        return []
    if r.get("base") is not None:
        what = f"Base and tuned scored alike on every example; the first {len(first)} side by side:"
        header = ["row", "input", "reference", "base", "tuned"]
    else:
        what = f"The tuned model's answers on the first {len(first)} examples (the base was not evaluated):"
        header = ["row", "input", "reference", "tuned"]
    rows = [
        [d["id"], _clip(d.get("input")), _clip(d.get("reference"), 120)]
        + ([_clip(d.get("base"))] if "base" in header else [])
        + [_clip(d.get("tuned"))]
        for d in first
    ]
    return [("p", what), ("cards", (header, rows))]


def _test_cells(p: dict[str, Any]) -> list[str]:
    """A paired test as table cells; the result says who is better, or that the data cannot tell."""
    shown = p.get("diff") is not None and p.get("lo") is not None
    diff = f"{sig(p['diff'], True)} [{sig(p['lo'], True)}, {sig(p['hi'], True)}]" if shown else ""
    verdict = str(p.get("verdict", ""))
    if " is better in " in verdict:
        result = verdict.split(" is better in ")[0] + " is better"
    else:
        result = "no evidence of a difference" if verdict.startswith("no evidence") else "they differ"
    return [diff, num(p.get("p_value")), str(p.get("test", "")), result]


def few_shot_text(r: dict[str, Any]) -> str:
    """What the few-shot baseline was (which examples, how many and why) and what it cost; '' if none ran."""
    f = r.get("few_shot") or {}
    if not f.get("name"):
        return ""
    rows = ", ".join(map(str, f.get("train_rows", [])))
    return (
        f"{f['name']}: the untuned base model prompted with {f['k']} example exchanges drawn from the train "
        f"split (rows {rows}; seed {f.get('seed')}), never from the evaluated examples, deciding as the "
        f"zero-shot base does. k = {f.get('k_chosen')}. It took {num(f.get('seconds'))} s, one more pass "
        "over the examples with the k examples before each question (eval.few_shot: 0 turns it off)."
    )


def _guard_text(guard: dict[str, Any]) -> str:
    if guard.get("checked"):
        return (
            f"Adapter-applied guard: passed ({guard.get('how')}, largest logit change "
            f"{num(guard.get('max_abs_logit_diff'))})."
        )
    return f"Adapter-applied guard: not checked ({guard.get('reason', 'no probe')})."


def not_measured(r: dict[str, Any]) -> list[str]:
    """What this evaluation left out, and the setting that adds it, so an absent table is never a mystery."""
    fmt, out = r.get("format"), []
    generated = any(k in r["tuned"] for k in ("bleu", "token_f1"))
    if r.get("base") is None:
        out.append("the base model (`tuneforge evaluate RUN --compare-base`, or eval.compare_base: true)")
    if fmt in ("chat", "instruction") and not generated:
        out.append("generated answers and their scores (eval.generate: true)")
    classical = [n for n in r.get("baselines", {}) if not n.startswith("few_shot_k")]
    if fmt in ("classification", "regression") and not classical:
        out.append("the classical baselines (eval.baseline: true)")
    skipped = (r.get("few_shot") or {}).get("skipped")
    if skipped:
        out.append(f"the few-shot baseline (the base prompted with train examples): {skipped}")
    if fmt == "classification" and "ece" not in r["tuned"]:
        out.append("calibration (ECE, Brier): it needs label probabilities (eval.decision: score)")
    if not r.get("fairness"):
        out.append("per-group results (data.group_column or eval.group_columns)")
    if generated and not r.get("judge"):
        out.append("an LLM judge (eval.judge)")
    return out


def evaluation_blocks(run: RunDir, r: dict[str, Any]) -> list[Block]:
    boot = r.get("bootstrap", {})
    blocks: list[Block] = [
        (
            "p",
            f"From {describe(r)}; 95% bootstrap intervals in brackets "
            f"({boot.get('resamples', '?')} resamples of the examples, seed {boot.get('seed', '?')}; corpus "
            "scores such as BLEU are recomputed on each resample).",
        ),
        comparison_table(r),
    ]
    paired = r.get("paired", {})
    if paired:
        rows = [[m, *_test_cells(p)] for m, p in paired.items()]
        blocks += [
            ("p", "Paired tests, base vs tuned on the same examples (difference = tuned - base):"),
            ("cards", (["metric", "difference [95% CI]", "p", "test", "result"], rows)),
        ]
    vs = {name: b["vs_tuned"] for name, b in r.get("baselines", {}).items() if "vs_tuned" in b}
    if vs:
        rows = [[name, p.get("metric", ""), *_test_cells(p)] for name, p in vs.items()]
        blocks += [
            (
                "p",
                "Tuned vs the baselines, each made from the train split only "
                "(difference = tuned - baseline):",
            ),
            ("cards", (["baseline", "metric", "difference [95% CI]", "p", "test", "result"], rows)),
        ]
    if few_shot_text(r):
        blocks.append(("p", few_shot_text(r)))
    if "confusion_matrix" in r["tuned"]:
        if r.get("base"):
            blocks.append(confusion("base", r["base"]))
        blocks.append(confusion("tuned", r["tuned"]))
    if r["tuned"].get("reliability"):
        blocks += reliability_blocks(r)
    if r.get("fairness"):
        blocks += group_blocks(r["fairness"])
    if r.get("threshold_optimizer"):
        blocks += threshold_blocks(r["threshold_optimizer"])
    if r.get("judge"):
        blocks += judge_blocks(r["judge"])
    if r.get("answers"):  # a DPO run: what it did to answers, beside the reward margin
        from tuneforge.evaluation.report.answers import answers_blocks

        blocks += answers_blocks(r["answers"], r["tuned"].get("reward_margin"))
    blocks.append(("p", _guard_text(r.get("guard", {}))))
    blocks += example_cards(run, r)
    missing = not_measured(r)
    if missing:
        blocks += [("p", "Not in this evaluation (and how to add it):"), ("list", missing)]
    return blocks


#: The metric that decides, per kind of evaluation, in order of preference (perplexity before answer overlap:
#: a chat model's references are one answer of many, its likelihood of them is what training moved).
DECIDING = ("accuracy", "mse", "perplexity", "token_f1", "chrf", "loss")


def headline_metric(r: dict[str, Any]) -> str | None:
    """The evaluation's deciding metric: the first of DECIDING the tuned model has a number for."""
    tuned = r.get("tuned") or {}
    return next((m for m in DECIDING if isinstance(tuned.get(m), int | float)), None)


def headline(r: dict[str, Any]) -> str:
    """One sentence per evaluation: the deciding metric, base vs tuned with its verdict, the baselines."""
    tuned, paired = r["tuned"], r.get("paired", {})
    metric = headline_metric(r)
    name = name_of(r)
    if metric is None:
        return f"{name} ({r['n']} examples): no headline metric."
    ci_t = intervals(r, "tuned")
    text = f"{name} ({r['n']} examples): {metric} tuned {with_ci(tuned[metric], ci_t.get(metric))}"
    if r.get("base"):
        text += f", base {with_ci(r['base'].get(metric), intervals(r, 'base').get(metric))}"
        test = paired.get(metric)
        text += f"; {test['verdict']}" if test else ""
    text += "."
    for bname, b in r.get("baselines", {}).items():
        if "vs_tuned" in b:
            text += f" Against the {bname} baseline: {b['vs_tuned']['verdict']}."
    return text
