"""`tuneforge report RUN`: the whole fine-tuning process written down (report.html, report.md, model card).

Everything comes from the run's on-disk artifacts (dataset manifest, run manifest, config.yaml, metrics.jsonl,
eval/*.json and predictions), never from memory, so the report can be regenerated at any time.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tuneforge.artifacts import DatasetDir, RunDir, read_json, read_jsonl, write_text_atomic
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation.render import Block, Section, plot_png, to_html, to_markdown

# Metrics shown in the comparison table, in this order, when present.
SHOWN = (
    "accuracy",
    "macro_f1",
    "weighted_f1",
    "ece",
    "brier",
    "unparseable_rate",
    "mse",
    "mae",
    "r2",
    "loss",
    "perplexity",
    "bleu",
    "chrf",
    "ter",
    "rouge1",
    "rouge2",
    "rougeL",
    "exact_match",
    "token_f1",
    "length_ratio",
    "semantic_similarity",
)
CI_NAME: dict[str, str] = {}  # metric → its interval's name in the eval JSON, where they differ


def num(x: Any) -> str:
    if isinstance(x, bool) or x is None:
        return "" if x is None else str(x)
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.4g}"
    return str(x)


def with_ci(value: Any, ci: dict[str, Any] | None) -> str:
    if ci is None or ci.get("lo") is None:
        return num(value)
    return f"{num(value)} [{num(ci['lo'])}, {num(ci['hi'])}]"


def eval_results(run: RunDir) -> dict[str, dict[str, Any]]:
    """Every split's eval JSON of a run, by split name."""
    if not run.eval_dir.is_dir():
        return {}
    out = {}
    for p in sorted(run.eval_dir.glob("*.json")):
        data = read_json(p)
        if isinstance(data, dict) and "tuned" in data and "split" in data:
            out[str(data["split"])] = data
    return out


def _data_section(run: RunDir) -> list[Block]:
    path = run.manifest.get("dataset", {}).get("path")
    if not path or not DatasetDir.is_dataset(Path(path)):
        return [("p", f"The dataset directory {path} is no longer there; nothing to say about the data.")]
    m = DatasetDir(Path(path)).manifest
    blocks: list[Block] = [
        (
            "p",
            f"Prepared dataset {path}: format {m.get('format')}, fingerprint "
            f"{str(m.get('fingerprint', ''))[:16]}.",
        )
    ]
    files = m.get("source_files") or []
    if files:
        blocks.append(
            ("table", (["source file", "sha256"], [[f["path"], f.get("sha256", "")] for f in files]))
        )
    steps = m.get("steps") or []
    if steps:
        rows = []
        for s in steps:
            dropped = s.get("dropped") or {}
            rows.append(
                [
                    s.get("step"),
                    num(s.get("in", "")),
                    num(s.get("out"))
                    if not isinstance(s.get("out"), dict)
                    else ", ".join(f"{k} {v}" for k, v in s["out"].items()),
                    ", ".join(f"{k} {v}" for k, v in dropped.items() if v) or "-",
                ]
            )
        blocks.append(("table", (["cleaning step", "in", "out", "dropped"], rows)))
    for key, what in (("label_distribution", "label"), ("group_distribution", "group")):
        dist = m.get(key) or {}
        if dist:
            names = sorted({k for split in dist.values() for k in split})
            rows = [[split, *[num(dist[split].get(n, 0)) for n in names]] for split in dist]
            blocks.append(("table", ([f"split \\ {what}", *names], rows)))
    return blocks


def _model_section(run: RunDir) -> list[Block]:
    m = run.manifest
    params = m.get("parameters") or {}
    trainable, total = params.get("trainable"), params.get("total")
    share = f" ({100 * trainable / total:.2f}%)" if trainable and total else ""
    rows: list[tuple[str, Any]] = [
        ("base model", m.get("base_model")),
        ("task", m.get("task")),
        ("method", m.get("method")),
        ("parameters trainable / total", f"{trainable:,} / {total:,}{share}" if trainable and total else ""),
        ("steps", m.get("step")),
        ("training tokens", m.get("tokens")),
        ("training time (s)", m.get("train_time_s")),
        ("best", ", ".join(f"{k} {num(v)}" for k, v in dict(m.get("best") or {}).items())),
        ("result", "PEFT adapter" if m.get("saves_adapter", True) else "full weights"),
    ]
    return [("table", (["", ""], [[k, num(v)] for k, v in rows]))]


def _training_section(run: RunDir) -> list[Block]:
    metrics = run.metrics()
    train = [(r["step"], r["loss"]) for r in metrics if "split" not in r and "loss" in r]
    val = [(r["step"], r["loss"]) for r in metrics if r.get("split") == "validation" and "loss" in r]
    if not train:
        return [("p", "No training metrics were logged.")]

    def draw(ax: Any) -> None:
        ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1)
        if val:
            ax.plot(*zip(*val, strict=True), marker="o", label="validation loss")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend()

    text = f"{len(train)} logged steps; train loss {num(train[0][1])} → {num(train[-1][1])}"
    if val:
        text += f"; validation loss {num(val[0][1])} → {num(val[-1][1])}"
    return [("p", text + "."), ("img", ("training curves", plot_png(draw)))]


def _comparison_table(r: dict[str, Any]) -> Block:
    tuned, base, ci = r["tuned"], r.get("base"), r.get("ci", {})
    baselines = r.get("baselines", {})
    header = ["metric", *(["base"] if base else []), "tuned", *baselines]
    rows = []
    for key in SHOWN:
        if key not in tuned:
            continue
        ci_key = CI_NAME.get(key, key)
        row = [key]
        if base:
            row.append(with_ci(base.get(key), ci.get("base", {}).get(ci_key)))
        row.append(with_ci(tuned.get(key), ci.get("tuned", {}).get(ci_key)))
        row += [num(b["metrics"].get(key, "")) for b in baselines.values()]
        rows.append(row)
    return ("table", (header, rows))


def _confusion(label: str, m: dict[str, Any]) -> Block:
    cm = m["confusion_matrix"]
    rows = [[f"gold {g}", *row] for g, row in zip(cm["labels"], cm["rows_gold_cols_pred"], strict=True)]
    return ("table", ([f"{label}: gold \\ predicted", *cm["labels"]], rows))


def _group_blocks(fairness: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = []
    for column, entry in fairness.items():
        tuned, base = entry["tuned"], entry.get("base")
        if tuned.get("note"):
            blocks.append(("p", f"{column}: {tuned['note']}."))
        rows = []
        for metric, t in tuned.get("metrics", {}).items():
            b = (base or {}).get("metrics", {}).get(metric)
            for g, v in t["by_group"].items():
                bv = b["by_group"].get(g) if b else None
                rows.append(
                    [
                        metric,
                        g,
                        tuned["counts"].get(g, ""),
                        *([with_ci(bv["value"], bv) if bv else ""] if base else []),
                        with_ci(v["value"], v),
                    ]
                )
            rows.append(
                [metric, "largest gap", "", *([num(b["gap"]) if b else ""] if base else []), num(t["gap"])]
            )
        if rows:
            header = ["metric", f"{column}", "n", *(["base"] if base else []), "tuned"]
            blocks.append(("table", (header, rows)))
        if tuned.get("too_small"):
            blocks.append(
                (
                    "p",
                    f"Too few examples to rank (under {tuned['min_group_size']}): "
                    + ", ".join(f"{g} ({tuned['counts'][g]})" for g in tuned["too_small"])
                    + ".",
                )
            )
        for label, par in tuned.get("parity", {}).items():
            blocks.append(
                (
                    "p",
                    f"{column}, '{label}': demographic-parity difference "
                    f"{num(par['demographic_parity_difference'])}, equalized-odds difference "
                    f"{num(par['equalized_odds_difference'])} (tuned).",
                )
            )
        if entry.get("warnings"):
            blocks.append(("list", [f"WARNING: {w}" for w in entry["warnings"]]))
    return blocks


def most_different(run: RunDir, split: str, k: int = 10) -> list[dict[str, Any]]:
    """The k predictions rows where base and tuned differ most (by the split's main per-example score)."""
    path = run.eval_dir / f"{split}.predictions.jsonl"
    if not path.is_file():
        return []
    rows = [r for r in read_jsonl(path) if "base" in r.get("scores", {})]

    def gap(row: dict[str, Any]) -> float:
        t, b = row["scores"]["tuned"], row["scores"]["base"]
        for key in ("correct", "token_f1", "chrf", "abs_error", "loss"):
            if isinstance(t.get(key), float) and isinstance(b.get(key), float):
                return abs(t[key] - b[key]) + (0.5 if row.get("tuned") != row.get("base") else 0.0)
        return 0.0

    ranked = sorted(rows, key=lambda r: -gap(r))
    return [r for r in ranked if gap(r) > 0][:k]


def _clip(s: Any, n: int = 300) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def _evaluation_blocks(run: RunDir, r: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = [
        (
            "p",
            f"{r['n']} examples of the {r['split']} split; 95% bootstrap intervals in "
            f"brackets ({r.get('bootstrap', {}).get('resamples', '?')} resamples).",
        )
    ]
    blocks.append(_comparison_table(r))
    verdicts = [f"{m}: {p['verdict']}" for m, p in r.get("paired", {}).items()]
    if verdicts:
        blocks.append(("p", "Paired tests, base vs tuned on the same examples:"))
        blocks.append(("list", verdicts))
    vs = [
        f"{name}: {b['vs_tuned']['verdict']}" for name, b in r.get("baselines", {}).items() if "vs_tuned" in b
    ]
    if vs:
        blocks.append(("p", "Tuned vs the classical baselines (fitted on the train split):"))
        blocks.append(("list", vs))
    if "confusion_matrix" in r["tuned"]:
        if r.get("base"):
            blocks.append(_confusion("base", r["base"]))
        blocks.append(_confusion("tuned", r["tuned"]))
    if r.get("fairness"):
        blocks += _group_blocks(r["fairness"])
    if r.get("threshold_optimizer"):
        blocks += _threshold_blocks(r["threshold_optimizer"])
    if r.get("judge"):
        blocks += _judge_blocks(r["judge"])
    guard = r.get("guard", {})
    blocks.append(
        (
            "p",
            "Adapter-applied guard: "
            + (
                f"passed ({guard.get('how')}, largest logit change {num(guard.get('max_abs_logit_diff'))})."
                if guard.get("checked")
                else f"not checked ({guard.get('reason', 'no probe')})."
            ),
        )
    )
    diff = most_different(run, r["split"])
    if diff:
        blocks.append(("p", f"The {len(diff)} examples where base and tuned differ most:"))
        rows = [
            [
                d["id"],
                _clip(d.get("input")),
                _clip(d.get("reference"), 120),
                _clip(d.get("base")),
                _clip(d.get("tuned")),
            ]
            for d in diff
        ]
        blocks.append(("table", (["row", "input", "reference", "base", "tuned"], rows)))
    return blocks


def _threshold_blocks(t: dict[str, Any]) -> list[Block]:
    """The plain 0.5 threshold beside Fairlearn's per-group thresholds (fitted on validation)."""
    before, after = t["before"]["groups"], t["after"]["groups"]
    rows = [["accuracy (all)", num(t["before"]["accuracy"]), num(t["after"]["accuracy"])]]
    for g, v in before.get("metrics", {}).get("accuracy", {}).get("by_group", {}).items():
        a = after["metrics"]["accuracy"]["by_group"].get(g, {})
        rows.append([f"accuracy ({g})", num(v["value"]), num(a.get("value"))])
    for label, par in before.get("parity", {}).items():
        for key, value in par.items():
            rows.append([f"{key.replace('_', ' ')} ({label})", num(value), num(after["parity"][label][key])])
    return [
        (
            "p",
            f"ThresholdOptimizer ({t['constraint']}, per {t['group_column']}, fitted on the {t['fitted_on']} "
            "split) beside the plain decision:",
        ),
        ("table", (["tuned", "plain threshold", "per-group thresholds"], rows)),
    ]


def _judge_blocks(j: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = [
        (
            "p",
            f"LLM judge {j['model']} ({j['rubric']} rubric) on {j['examples']} examples; "
            f"{j['errors']} failed requests or answers without a verdict "
            f"({j['examples_with_errors']} examples).",
        )
    ]
    rows = [
        [f"rating 1-10, {side}", with_ci(j[f"single_{side}"]["value"], j[f"single_{side}"])]
        for side in ("base", "tuned")
        if f"single_{side}" in j
    ]
    if "pairwise" in j:
        rows += [
            [f"pairwise {w} (tuned)", with_ci(j["pairwise"][w]["value"], j["pairwise"][w])]
            for w in ("win", "tie", "loss")
        ]
        rows.append(["verdicts that survive swapping the order", num(j["pairwise"]["order_consistent_rate"])])
    if rows:
        blocks.append(("table", (["judge", "value [95% CI]"], rows)))
    if "single_paired" in j:
        blocks.append(("p", j["single_paired"]["verdict"]))
    if j.get("first_error"):
        blocks.append(("p", f"First judge error: {j['first_error']}"))
    return blocks


def _human_blocks(h: dict[str, Any]) -> list[Block]:
    o = h["overall"]
    rows = [[what, with_ci(o[what]["value"], o[what])] for what in ("win", "tie", "loss")]
    blocks: list[Block] = [
        (
            "p",
            f"Blind A/B ratings of the {h['split']} answers, from the tuned model's side ({o['n']} ratings; "
            f"sign test over decided ratings p = {num(o['p_value'])}).",
        ),
        ("table", (["tuned vs base", "rate [95% CI]"], rows)),
    ]
    per = [
        [name, r.get("n"), r.get("win", 0), r.get("tie", 0), r.get("loss", 0)]
        for name, r in h["per_rater"].items()
    ]
    blocks.append(("table", (["rater", "ratings", "win", "tie", "loss"], per)))
    agree = h.get("agreement", {})
    stats = [
        f"{k} {num(agree[k])}" for k in ("cohen_kappa", "krippendorff_alpha") if agree.get(k) is not None
    ]
    if stats:
        blocks.append(("p", "Agreement between raters: " + ", ".join(stats) + "."))
    for rater, j in (h.get("judge_agreement") or {}).items():
        blocks.append(
            ("p", f"LLM judge vs {rater}: Cohen's kappa {num(j['cohen_kappa'])} over {j['n']} examples.")
        )
    if h.get("preference_dataset"):
        blocks.append(
            ("p", f"{h['preference_pairs']} preference pairs written to {h['preference_dataset']}.")
        )
    return blocks


def limitations(results: dict[str, dict[str, Any]], run: RunDir) -> list[str]:
    """What the numbers cannot tell, said plainly."""
    out = []
    for split, r in results.items():
        if r["n"] < 100:
            out.append(f"{split}: only {r['n']} examples, so the intervals are wide.")
        if "base" not in r:
            out.append(
                f"{split}: the base model was not evaluated (run `tuneforge evaluate --compare-base`)."
            )
        for name, b in r.get("baselines", {}).items():
            if b.get("vs_tuned", {}).get("verdict", "").startswith(name):
                out.append(
                    f"{split}: the classical baseline {name} beats the tuned model "
                    f"({b['vs_tuned']['verdict']})."
                )
        rate = r["tuned"].get("unparseable_rate")
        if rate:
            out.append(f"{split}: {100 * rate:.1f}% of the tuned model's answers named no label.")
        for column, f in r.get("fairness", {}).items():
            out += [f"{split}, {column}: {w}" for w in f.get("warnings", [])]
            if f["tuned"].get("too_small"):
                out.append(
                    f"{split}, {column}: groups too small to judge: {', '.join(f['tuned']['too_small'])}."
                )
        if not r.get("guard", {}).get("checked"):
            out.append(
                f"{split}: the adapter-applied guard could not run ({r.get('guard', {}).get('reason')})."
            )
    if not results:
        out.append("The run has not been evaluated (run `tuneforge evaluate RUN`).")
    out.append(
        "Metrics measure agreement with the references of this dataset; they do not measure safety, "
        "factuality beyond the references, or behaviour on other data."
    )
    return out


def build_sections(run: RunDir) -> list[Section]:
    results = eval_results(run)
    sections: list[Section] = []
    for split, r in results.items():
        sections.append((f"Evaluation ({split})", _evaluation_blocks(run, r)))
    human = run.eval_dir / "human.json"
    if human.is_file():
        sections.append(("Human ratings", _human_blocks(read_json(human))))
    env = run.manifest.get("environment") or {}
    env_rows = [[k, num(v) if not isinstance(v, dict | list) else str(v)] for k, v in env.items()]
    sections = [
        ("Data", _data_section(run)),
        ("Model and method", _model_section(run)),
        ("Training", _training_section(run)),
        *sections,
        ("Known limitations", [("list", limitations(results, run))]),
        ("Environment", [("table", (["", ""], env_rows))] if env_rows else [("p", "not recorded")]),
        ("Resolved config", [("pre", run.config_path.read_text(encoding="utf-8"))]),
    ]
    return sections


def write_report(run: RunDir | str | Path) -> Path:
    """Write RUN/report.html, RUN/report.md and final/README.md (the model card); returns the HTML path."""
    run = run if isinstance(run, RunDir) else RunDir.open(run)
    if not run.manifest:
        raise TuneforgeError(f"run {run.path} has no manifest.json", fix="train it with `tuneforge train`")
    title = f"Fine-tuning report: {run.path.name}"
    sections = build_sections(run)
    write_text_atomic(run.path / "report.md", to_markdown(title, sections))
    write_text_atomic(run.path / "report.html", to_html(title, sections))
    if run.final.is_dir():
        from tuneforge.evaluation.model_card import write_model_card

        write_model_card(run, eval_results(run))
    return run.path / "report.html"
