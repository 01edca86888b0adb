"""The monitor report: RUN/monitor/<window>/report.html, report.md and report.json, in the run report's style.

The three files are published together by one rename (`atomic_dir`), so a reader never sees a half-written
window, and a window judged again replaces its folder.
"""

from __future__ import annotations

import json
from typing import Any

from tuneforge.artifacts import RunDir, atomic_dir, write_json_atomic, write_text_atomic
from tuneforge.evaluation.report.render import Section, num, to_html, to_markdown
from tuneforge.monitor.run import NAMES, alert_line
from tuneforge.monitor.text import NO_LABEL

KIND = "tuneforge.monitor-report"


def _pct(x: Any) -> str:
    return "" if x is None else f"{100 * x:.2f}%"


def _p(x: Any) -> str:
    return "" if x is None else f"{x:.4g}"


def tests_table(tests: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    header = ["what", "test", "statistic", "p-value", "threshold", "n reference", "n live", "verdict"]
    rows = [
        [
            t["name"],
            t["test"],
            "" if t["statistic"] is None else f"{t['statistic_name']} {num(t['statistic'])}",
            _p(t["p_value"]),
            t["threshold"],
            t["n_reference"],
            t["n_live"],
            t["verdict"],
        ]
        for t in tests.values()
    ]
    return header, rows


def _spread(d: dict[str, Any]) -> list[Any]:
    return [d["n"], num(d["mean"]), num(d["p50"]), num(d["p95"])]


def build_sections(r: dict[str, Any]) -> list[Section]:
    w, traffic, ref = r["window"], r["traffic"], r["reference"]
    intro = (
        f"Live traffic from {w['since']} to {w['until']} (UTC) in {r['log']}"
        + (f" (model {r['model']}; feedback rows name no model, so they count for all)" if r["model"] else "")
        + f", compared with the training split of {ref['dataset']} ({ref['train_size']} examples, "
        f"{ref['inputs_sampled']} sampled)."
    )
    verdict = (
        [f"not enough data (n = {r['n']}, need ≥ {r['need']}): nothing in this window is judged"]
        if not r["enough_data"]
        else [alert_line(a) for a in r["alerts"]] or ["no alert fired"]
    )
    summary: list[Any] = [
        ("p", intro),
        ("list", verdict),
        (
            "table",
            (
                None,
                [
                    ["requests", traffic["requests"]],
                    [
                        "inputs (sampled for the text tests)",
                        f"{traffic['inputs']} ({traffic['inputs_sampled']})",
                    ],
                    ["models in the window", ", ".join(f"{m}: {n}" for m, n in traffic["models"].items())],
                    ["endpoints", ", ".join(f"{e}: {n}" for e, n in traffic["endpoints"].items())],
                ],
            ),
        ),
    ]
    tests = (
        "Drift tests",
        [
            ("table", tests_table(r["tests"])),
            (
                "p",
                "Each test is chosen by data type and sample size: up to 1000 live values a significance "
                "test (Kolmogorov-Smirnov for numbers, chi-squared for label mixes), above that an effect "
                "size with a threshold (Wasserstein distance / reference std, Jensen-Shannon distance), "
                "since on large samples every trivial difference is significant. Prompt embeddings: can a "
                "classifier tell live inputs from training inputs better than with shuffled labels?",
            ),
        ],
    )
    inp = r["input"]
    input_blocks: list[Any] = [
        (
            "table",
            (
                ["prompt length (tokens)", "n", "mean", "p50", "p95"],
                [
                    ["training", *_spread(inp["prompt_tokens"]["reference"])],
                    ["live", *_spread(inp["prompt_tokens"]["live"])],
                ],
            ),
        ),
        (
            "table",
            (
                ["unseen in the training sample", "live", "validation split (same distribution)"],
                [
                    [
                        "characters",
                        _pct(inp["unseen_characters"]["live"]),
                        _pct(inp["unseen_characters"]["held_out"]),
                    ],
                    ["tokens", _pct(inp["unseen_tokens"]["live"]), _pct(inp["unseen_tokens"]["held_out"])],
                ],
            ),
        ),
    ]
    if "scripts" in inp:  # reports written before the script mix was added lack it
        input_blocks.append(("table", mix_table("script (most letters of a prompt)", inp["scripts"])))
    if "languages" in inp:
        what = "language (py3langid, ISO 639-1; und: not sure)"
        input_blocks.append(("table", mix_table(what, inp["languages"])))
    sections: list[Section] = [("Summary", summary), tests, ("Input drift", input_blocks)]
    if inp["farthest"]:
        rows = [[f["live"], f["nearest_training"], num(f["similarity"])] for f in inp["farthest"]]
        sections.append(
            (
                "What is new",
                [
                    ("p", "The live inputs least like any training input, each beside its nearest one."),
                    ("cards", (["live input", "nearest training input", "cosine similarity"], rows)),
                ],
            )
        )
    sections.append(("Output drift", output_blocks(r["output"])))
    sections.append(("Quality and service", service_blocks(r["service"])))
    if r.get("shadow"):
        sections.append(("Shadow comparison", shadow_blocks(r["shadow"])))
    return sections


def mix_table(what: str, mix: dict[str, dict[str, int]]) -> tuple[list[str], list[list[Any]]]:
    """Shares of each category in the training sample and in the live window."""
    ref, live = mix["reference"], mix["live"]
    n_ref, n_live = sum(ref.values()) or 1, sum(live.values()) or 1
    rows = [
        [c, _pct(ref.get(c, 0) / n_ref), _pct(live.get(c, 0) / n_live)] for c in sorted(set(ref) | set(live))
    ]
    return [what, "training", "live"], rows


def shadow_blocks(shadow: list[dict[str, Any]]) -> list[Any]:
    rows = [
        [
            s["shadow"],
            s["n"],
            s["failed"],
            f"{_pct(s['label_agreement'])} (n = {s['labels']})" if s["labels"] else "",
            f"{_pct(s['exact_match'])} (n = {s['answers']})" if s["answers"] else "",
            num(s["champion_mean_chars"]),
            num(s["shadow_mean_chars"]),
        ]
        for s in shadow
    ]
    header = [
        "shadow model",
        "n",
        "shadow failed",
        "label agreement",
        "exact match",
        "champion mean length (chars)",
        "shadow mean length (chars)",
    ]
    return [
        ("p", "serve.shadow: the shadow model's answers beside the champion's, on the same requests."),
        ("table", (header, rows)),
    ]


def output_blocks(out: dict[str, Any]) -> list[Any]:
    blocks: list[Any] = []
    if "labels" in out:
        ref, live = out["labels"]["reference"], out["labels"]["live"]
        n_ref, n_live = sum(ref.values()) or 1, sum(live.values()) or 1
        rows = [
            [c, _pct(ref.get(c, 0) / n_ref), _pct(live.get(c, 0) / n_live)]
            for c in sorted(set(ref) | set(live))
        ]
        blocks.append(("table", (["label", "training", "live (predicted)"], rows)))
        if "read_from_answers" in out["labels"]:
            blocks.append(
                (
                    "p",
                    f"live labels read from {out['labels']['read_from_answers']:,} generated answers (a "
                    f"uniform sample of the window) as evaluation reads them: the whole answer or the one "
                    f"label it names; {NO_LABEL} where it names none or several",
                )
            )
        else:
            blocks.append(("p", f"mean confidence of the live predictions: {num(out['mean_confidence'])}"))
    if "answer_tokens" in out:
        a = out["answer_tokens"]
        blocks.append(
            (
                "table",
                (
                    ["answer length (tokens)", "n", "mean", "p50", "p95"],
                    [["training", *_spread(a["reference"])], ["live", *_spread(a["live"])]],
                ),
            )
        )
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(out["finish_reasons"].items())) or "none logged"
        refusals = out.get("refusal_rate") or {}
        blocks.append(
            (
                "list",
                [
                    f"empty answers: {_pct(out['empty_rate'])}",
                    "refusals (answer opens like one in en, de, fr or es; a heuristic): "
                    f"{_pct(refusals.get('live'))} "
                    f"(training answers: {_pct(refusals.get('reference'))})",
                    f"finish reasons: {reasons}",
                ],
            )
        )
    return blocks or [("p", "No outputs were logged in this window.")]


def service_blocks(s: dict[str, Any]) -> list[Any]:
    days = [
        [
            d["day"],
            d["requests"],
            d["answered"],
            d["errors"],
            d["feedback"],
            _pct(d["feedback_rate"]),
            num(d["mean_rating"]),
        ]
        for d in s["per_day"]
    ]
    latency = [[e, *_spread(v)] for e, v in s["latency_ms"].items()]
    if s["ttft_ms"]["n"]:
        latency.append(["time to first token", *_spread(s["ttft_ms"])])
    return [
        (
            "table",
            (
                None,
                [
                    [NAMES["error_rate"], _pct(s["error_rate"])],
                    ["status codes", ", ".join(f"{k}: {v}" for k, v in s["statuses"].items())],
                    ["feedback", s["feedback"]],
                    [NAMES["mean_rating"], num(s["mean_rating"])],
                    [
                        "accuracy on corrected labels (rated classify answers needing no correction)",
                        f"{_pct(s['accuracy_on_corrected_labels'])} (n = {s['rated_labels']})",
                    ],
                ],
            ),
        ),
        (
            "table",
            (["day", "requests", "answered", "errors", "feedback", "feedback rate", "mean rating"], days),
        ),
        ("table", (["latency (ms)", "n", "mean", "p50", "p95"], latency)),
    ]


def write_report(run: RunDir, result: dict[str, Any]) -> Any:
    """Publish RUN/monitor/<window>/ with the three reports; returns the HTML path."""
    title = f"Monitor report: {run.path.name}, {result['window']['name']}"
    sections = build_sections(result)
    final = run.path / "monitor" / result["window"]["name"]
    with atomic_dir(final, kind=KIND) as tmp:
        write_text_atomic(tmp / "report.md", to_markdown(title, sections))
        write_text_atomic(tmp / "report.html", to_html(title, sections))
        write_json_atomic(tmp / "report.json", json.loads(json.dumps(result, allow_nan=False)))
    return final / "report.html"
