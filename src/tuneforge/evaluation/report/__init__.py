"""`tuneforge report RUN`: the whole fine-tuning process written down (report.html, report.md, model card).

Everything comes from the run's on-disk artifacts (dataset manifest, run manifest, config.yaml, metrics.jsonl,
eval/*.json and predictions), never from memory, so the report can be regenerated at any time. The sections
live in run_sections.py (what went in), evaluation.py (the evaluation of a split), answers.py (what DPO did to
answers), groups.py and ratings.py (per-group results, judge and human ratings); render.py writes Markdown and
HTML, model_card.py the Hugging Face model card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.artifacts import RunDir, read_json, write_text_atomic
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation.evals import describe, evaluations
from tuneforge.evaluation.report.evaluation import evaluation_blocks, example_cards, headline, most_different
from tuneforge.evaluation.report.ratings import human_blocks
from tuneforge.evaluation.report.render import Block, Section, num, to_html, to_markdown, with_ci
from tuneforge.evaluation.report.run_sections import (
    data_section,
    environment_section,
    model_section,
    training_section,
)

__all__ = [
    "build_sections",
    "describe",
    "eval_results",
    "most_different",
    "num",
    "with_ci",
    "write_report",
]


def eval_results(run: RunDir) -> dict[str, dict[str, Any]]:
    """Every evaluation of a run by its name (`test`, `test-first12`): whole splits first."""
    return evaluations(run)


def limitations(results: dict[str, dict[str, Any]], run: RunDir) -> list[str]:
    """What the numbers cannot tell, said plainly."""
    out = []
    for split, r in results.items():  # split: the evaluation's name
        if r["n"] < 100:
            out.append(f"{split}: only {r['n']} examples, so the intervals are wide.")
        if "base" not in r:
            out.append(
                f"{split}: the base model was not evaluated (run `tuneforge evaluate --compare-base`)."
            )
        for name, b in r.get("baselines", {}).items():
            if b.get("vs_tuned", {}).get("verdict", "").startswith(name):
                out.append(
                    f"{split}: the baseline {name} beats the tuned model ({b['vs_tuned']['verdict']})."
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
    status = run.manifest.get("status")
    if status != "completed":
        out.append(
            f"The run's status is {status or 'unknown'}: it did not finish, so final/ may be missing and the "
            "curves stop where it stopped (`tuneforge train CONFIG --resume` continues it)."
        )
    out.append(
        "Metrics measure agreement with the references of this dataset; they do not measure safety, "
        "factuality beyond the references, or behaviour on other data."
    )
    return out


def summary_section(run: RunDir, results: dict[str, dict[str, Any]]) -> Section:
    """The answer first: what decides (the main metric's verdict, the judge, the human raters), then the rest,
    then three base-vs-tuned answers side by side; each evaluation named by the file it comes from."""
    m = run.manifest
    items = [
        f"{m.get('method')} on {m.get('base_model')} ({m.get('task')}), {m.get('step')} optimizer steps, "
        f"status {m.get('status', 'unknown')}."
    ]
    if not results:
        items.append("Not evaluated yet: run `tuneforge evaluate RUN` for the numbers.")
    human = run.eval_dir / "human.json"
    for r in results.values():
        items.append(headline(r))
        judge = r.get("judge") or {}
        if judge.get("pairwise"):
            items.append(f"LLM judge on {r['evaluation']}, tuned vs base: {_rates(judge['pairwise'])}.")
        if judge.get("single_paired"):
            items.append(f"LLM judge ratings 1-10 on {r['evaluation']}: {judge['single_paired']['verdict']}.")
    if human.is_file():
        o = read_json(human)["overall"]
        rated = _human_source(run)
        items.append(
            f"Human raters ({o['n']} blind ratings{rated}), tuned vs base: {_rates(o)}; "
            f"sign test p = {num(o['p_value'])}."
        )
    for r in results.values():
        items += secondary(r)
    warnings = sum(
        len(f.get("warnings", [])) for r in results.values() for f in r.get("fairness", {}).values()
    )
    if warnings:
        items.append(f"{warnings} per-group warnings: see the evaluation and the known limitations.")
    blocks: list[Any] = [("list", items)]
    first = next(iter(results.values()), None)
    if first is not None:
        blocks += example_cards(run, first, k=3)
    return ("Summary", blocks)


def _human_source(run: RunDir) -> str:
    """' of eval/test.json' when the human-eval key names the evaluation its sheets came from."""
    key = run.path / "human-eval" / "key.json"
    try:
        name = read_json(key).get("split") if key.is_file() else None
    except (OSError, ValueError, AttributeError):
        name = None
    return f" of the answers in eval/{name}.json" if name else ""


def secondary(r: dict[str, Any]) -> list[str]:
    """The other paired verdicts of a chat evaluation (answer overlap with the references), after the deciding
    ones: each says which model is better, or that the data cannot tell."""
    if r.get("format") not in ("chat", "instruction") or not r.get("paired"):
        return []
    shown = [m for m in ("token_f1", "chrf", "bleu", "rougeL", "length_ratio") if m in r["paired"]]
    if not shown:
        return []
    verdicts = "; ".join(str(r["paired"][m]["verdict"]) for m in shown)
    return [f"Overlap with the reference answers on {r['evaluation']}: {verdicts}."]


def _rates(d: dict[str, Any]) -> str:
    """Win (with its interval), tie and loss rates of the tuned model's side of an A/B comparison."""
    win, tie, loss = d["win"], d["tie"]["value"], d["loss"]["value"]
    return f"win {with_ci(win['value'], win)}, tie {num(tie)}, loss {num(loss)}"


def monitor_section(run: RunDir, most: int = 30) -> Section | None:
    """Links to the run's monitor reports (RUN/monitor/<window>/), newest window first."""
    found = sorted((run.path / "monitor").glob("*/report.json"), reverse=True)  # names start with `since`
    if not found:
        return None
    links = []
    for path in found[:most]:
        try:
            r = read_json(path)
            verdict = (
                "not enough data"
                if not r.get("enough_data", True)
                else f"{len(r.get('alerts') or [])} alert(s)"
            )
        except (OSError, ValueError):
            verdict = "report.json unreadable"
        window = path.parent.name
        links.append((f"{window}: {verdict}", f"monitor/{window}/report.html", f"monitor/{window}/report.md"))
    note = f"The {most} newest of {len(found)} windows." if len(found) > most else ""
    blocks: list[Block] = [("p", "Live traffic judged by `tuneforge monitor`, by window. " + note)]
    return ("Monitoring", [*blocks, ("links", links)])


def build_sections(run: RunDir) -> list[Section]:
    results = eval_results(run)
    sections: list[Section] = [
        (f"Evaluation ({name})", evaluation_blocks(run, r)) for name, r in results.items()
    ]
    human = run.eval_dir / "human.json"
    if human.is_file():
        sections.append(("Human ratings", human_blocks(read_json(human))))
    return [
        summary_section(run, results),
        ("Data", data_section(run, results)),
        ("Model and method", model_section(run)),
        ("Training", training_section(run)),
        *sections,
        *([m] if (m := monitor_section(run)) else []),
        ("Known limitations", [("list", limitations(results, run))]),
        ("Environment", environment_section(run)),
        (
            "Resolved config",
            [("fold", ("config.yaml as the run used it", run.config_path.read_text(encoding="utf-8")))],
        ),
    ]


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
        from tuneforge.evaluation.report.model_card import write_model_card

        write_model_card(run, eval_results(run))
    return run.path / "report.html"
